//! A pull's conversation with a registry — the manifest, the token service, each blob — with
//! every answer read within a bound: a registry, or what stands in its place, that sends a
//! manifest, a token or an error without end cannot make the host hold it. (The OCI client the
//! push uses reads each answer whole before anything can look at its length.)
//!
//! The distribution spec's pull: `GET /v2/<name>/manifests/<reference>`, then
//! `GET /v2/<name>/blobs/<digest>`; a `401` names how to authorize — `Basic` (the credentials
//! themselves) or `Bearer` (a token from the realm it names, asked with the credentials) — and
//! the request is made once more with it.

use crate::auth::Credentials;
use crate::client::{RegistryError, answered, not_asked, refuses_credentials, registry_text};
use crate::reference::BundleRef;
use oci_client::errors::{OciEnvelope, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderMap, WWW_AUTHENTICATE};
use std::time::Duration;

/// A token service's answer (a token is a few KiB; some carry a refresh token too).
const MAX_TOKEN_ANSWER: usize = 64 << 10;
/// What of an error answer is read: enough for the spec's error envelope.
const MAX_ERROR_ANSWER: usize = 16 << 10;

/// Why a fetch did not give the bytes.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// The registry (or its token service) said no, or could not be asked.
    Registry(RegistryError),
    /// The answer ran past the bound it is read within.
    TooLong { cap: usize },
}

impl From<RegistryError> for Fetched {
    fn from(e: RegistryError) -> Fetched {
        Fetched::Registry(e)
    }
}

enum Authorization {
    None,
    Basic(String, String),
    Bearer(String),
}

pub(crate) struct Session<'a> {
    http: reqwest::Client,
    /// `http://` only for a loopback registry, as for the push.
    base: String,
    r: &'a BundleRef,
    creds: &'a Credentials,
    authorization: Authorization,
    /// Whether a `401` is answered (once per request; a second is a refusal): not with an
    /// identity token, which is the authorization itself.
    answers_challenges: bool,
}

impl<'a> Session<'a> {
    pub(crate) fn new(
        r: &'a BundleRef,
        creds: &'a Credentials,
        connect: Duration,
        read: Duration,
    ) -> Result<Session<'a>, RegistryError> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect)
            .read_timeout(read)
            .user_agent(concat!("themis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::Other {
                registry: r.registry().to_owned(),
                why: format!("cannot set up an HTTP client: {e}"),
            })?;
        let scheme = if r.is_loopback() { "http" } else { "https" };
        // An identity token from the Docker config is a bearer token already.
        let (authorization, answers_challenges) = match &creds.auth {
            RegistryAuth::Bearer(token) => (Authorization::Bearer(token.clone()), false),
            _ => (Authorization::None, true),
        };
        Ok(Session {
            http,
            // `docker.io` is served at `index.docker.io`, as the push's client resolves it.
            base: format!(
                "{scheme}://{}/v2/{}",
                r.oci().resolve_registry(),
                r.repository()
            ),
            r,
            creds,
            authorization,
            answers_challenges,
        })
    }

    /// The manifest `reference` (a tag or a digest) names, of `media_type`, at most `cap` bytes.
    pub(crate) async fn manifest(
        &mut self,
        reference: &str,
        media_type: &str,
        cap: usize,
    ) -> Result<Vec<u8>, Fetched> {
        let url = format!("{}/manifests/{reference}", self.base);
        self.get(&url, Some(media_type), cap).await
    }

    /// The blob `digest` names, at most `cap` bytes (its declared size).
    pub(crate) async fn blob(&mut self, digest: &str, cap: usize) -> Result<Vec<u8>, Fetched> {
        let url = format!("{}/blobs/{digest}", self.base);
        self.get(&url, None, cap).await
    }

    async fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
        cap: usize,
    ) -> Result<Vec<u8>, Fetched> {
        // A token can expire within a pull: each request answers a 401 once.
        let mut answered = !self.answers_challenges;
        loop {
            let mut request = self.http.get(url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            request = match &self.authorization {
                Authorization::None => request,
                Authorization::Basic(user, password) => request.basic_auth(user, Some(password)),
                Authorization::Bearer(token) => request.bearer_auth(token),
            };
            let response = request.send().await.map_err(|e| self.transport(e))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !answered {
                answered = true;
                let challenge = challenge(response.headers());
                self.authorize(challenge.as_deref()).await?;
                continue;
            }
            if !status.is_success() {
                // The status says what it is; a body that cannot be read leaves only it.
                let body = read_capped(response, MAX_ERROR_ANSWER)
                    .await
                    .map(|b| b.bytes)
                    .unwrap_or_default();
                return Err(self.refused(status, &body).into());
            }
            let read = read_capped(response, cap)
                .await
                .map_err(|e| self.transport(e))?;
            return if read.cut {
                Err(Fetched::TooLong { cap })
            } else {
                Ok(read.bytes)
            };
        }
    }

    /// Answers a `401`'s challenge: the credentials for `Basic`, a token from the realm for
    /// `Bearer`. No credentials for a registry that asks for them is its refusal.
    async fn authorize(&mut self, challenge: Option<&str>) -> Result<(), RegistryError> {
        let refused = || RegistryError::Unauthorized {
            registry: self.r.registry().to_owned(),
            from: self.creds.source.clone(),
        };
        let Some(challenge) = challenge else {
            return Err(refused());
        };
        let challenges = http_auth::parse_challenges(challenge).map_err(|e| {
            self.other(&format!(
                "its 401 challenge `{challenge}` cannot be read ({e})"
            ))
        })?;
        let scheme = |name: &str| {
            challenges
                .iter()
                .find(|c| c.scheme.eq_ignore_ascii_case(name))
        };
        let Some(bearer) = scheme("Bearer") else {
            // The credentials themselves go only where they are asked for as such.
            return match (&self.creds.auth, scheme("Basic")) {
                (RegistryAuth::Basic(user, password), Some(_)) => {
                    self.authorization = Authorization::Basic(user.clone(), password.clone());
                    Ok(())
                }
                (RegistryAuth::Basic(..), None) => Err(self.other(&format!(
                    "it asks for an authorization Themis does not give (`{challenge}`)"
                ))),
                _ => Err(refused()),
            };
        };
        let param = |name: &str| {
            bearer
                .params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_unescaped())
        };
        let Some(realm) = param("realm") else {
            return Err(self.other("its Bearer challenge names no realm"));
        };
        // The credentials go to the realm: never in the clear, but between a loopback registry
        // and a loopback token service (as plain HTTP is for the registry itself).
        let realm_url = reqwest::Url::parse(&realm)
            .map_err(|e| self.other(&format!("its token realm `{realm}` is not a URL: {e}")))?;
        let loopback = realm_url
            .host_str()
            .is_some_and(|h| matches!(h, "localhost" | "127.0.0.1" | "[::1]"));
        if realm_url.scheme() != "https" && !(loopback && self.r.is_loopback()) {
            return Err(self.other(&format!(
                "its token realm {realm} is not HTTPS; credentials are not sent in the clear"
            )));
        }
        // The scope the registry names, else the pull's own (as the Docker client does).
        let scope =
            param("scope").unwrap_or_else(|| format!("repository:{}:pull", self.r.repository()));
        let mut query = vec![("scope", scope)];
        if let Some(service) = param("service") {
            query.push(("service", service));
        }
        let mut request = self.http.get(realm_url).query(&query);
        if let RegistryAuth::Basic(user, password) = &self.creds.auth {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        let read = match read_capped(response, MAX_TOKEN_ANSWER).await {
            Ok(read) => read,
            // An answer that says no is a refusal whether or not its words arrive.
            Err(_) if status.is_client_error() => Read {
                bytes: Vec::new(),
                cut: false,
            },
            Err(e) => return Err(self.transport(e)),
        };
        let text = String::from_utf8_lossy(&read.bytes);
        if !status.is_success() {
            // Words decide only on a 4xx: a proxy's 502 page may well say "denied".
            if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                || (status.is_client_error()
                    && status != StatusCode::TOO_MANY_REQUESTS
                    && refuses_credentials(&text))
            {
                return Err(refused());
            }
            return Err(RegistryError::NoToken {
                registry: self.r.registry().to_owned(),
                from: self.creds.source.clone(),
                why: format!("HTTP {status}: {}", said(&text)),
            });
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let token = if read.cut {
            None
        } else {
            serde_json::from_slice::<Token>(&read.bytes)
                .ok()
                .and_then(|t| t.token.or(t.access_token))
                .filter(|t| !t.is_empty())
        };
        let Some(token) = token else {
            return Err(RegistryError::NoToken {
                registry: self.r.registry().to_owned(),
                from: self.creds.source.clone(),
                why: if read.cut {
                    format!("its answer ran past {MAX_TOKEN_ANSWER} bytes")
                } else {
                    format!("its answer holds no token: {}", said(&text))
                },
            });
        };
        self.authorization = Authorization::Bearer(token);
        Ok(())
    }

    /// What a non-2xx answer means, from its status and the spec's error envelope if any.
    fn refused(&self, status: StatusCode, body: &[u8]) -> RegistryError {
        let codes: Vec<OciErrorCode> = serde_json::from_slice::<OciEnvelope>(body)
            .map(|e| e.errors.into_iter().map(|e| e.code).collect())
            .unwrap_or_default();
        answered(self.r, self.creds, Some(status.as_u16()), &codes, || {
            format!(
                "HTTP {}: {}",
                status.as_u16(),
                said(&String::from_utf8_lossy(body))
            )
        })
    }

    fn transport(&self, e: reqwest::Error) -> RegistryError {
        let registry = self.r.registry().to_owned();
        if e.is_connect() || e.is_timeout() {
            not_asked(registry, &e)
        } else {
            // Without the URL: after a redirect it may be a signed object-storage address.
            let e = e.without_url();
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                why.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            RegistryError::Other {
                registry,
                why: registry_text(&why),
            }
        }
    }

    fn other(&self, why: &str) -> RegistryError {
        RegistryError::Other {
            registry: self.r.registry().to_owned(),
            why: registry_text(why),
        }
    }
}

fn challenge(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .reduce(|a, b| format!("{a}, {b}"))
}

fn said(text: &str) -> String {
    if text.trim().is_empty() {
        "it said nothing".into()
    } else {
        registry_text(text.trim())
    }
}

struct Read {
    bytes: Vec<u8>,
    /// More came than the bound: `bytes` holds the bound's worth, the rest was not read.
    cut: bool,
}

/// At most `cap` bytes of the answer's body, chunk by chunk: a declared length past the bound
/// is not read at all, and an undeclared one is read no further than the bound.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Read, reqwest::Error> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Ok(Read {
            bytes: Vec::new(),
            cut: true,
        });
    }
    let mut bytes = Vec::with_capacity(cap.min(1 << 20));
    while let Some(chunk) = response.chunk().await? {
        if bytes.len() + chunk.len() > cap {
            let room = cap - bytes.len();
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(Read { bytes, cut: true });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Read { bytes, cut: false })
}
