//! Push a signed bundle folder to a registry; pull one into a folder, verified before it lands.

use crate::artifact::{self, LayoutError, PackError};
use crate::auth::{self, Credentials};
use crate::reference::BundleRef;
use crate::session::{Fetched, Session};
use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciImageManifest};
use std::path::{Path, PathBuf};
use std::time::Duration;
use themis_core::manifest::{MANIFEST_FILE, Runbook};
use themis_core::trust::bundle::SIGNATURE_FILE;
use themis_core::trust::{self, Refusal, TrustPolicy};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// A manifest bigger than this is not one of ours (a bundle's is a few KiB).
const MAX_MANIFEST: usize = 256 << 10;
/// A whole pull's bound: `READ_TIMEOUT` starts again with every read, so a registry that
/// drips its bytes would otherwise hold an agent's start for ever.
pub const PULL_DEADLINE: Duration = Duration::from_secs(300);
/// What of a registry's own words an error keeps: they reach the audit and the terminal.
const REGISTRY_TEXT: usize = 512;

/// A registry's text as an error shows it: bounded, one line, control characters escaped.
pub(crate) fn registry_text(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if out.len() >= REGISTRY_TEXT {
            out.push_str("… (cut)");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// What a registry said, in the words an operator acts on.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "cannot reach the registry {registry}: {why} (is it running, and is the address right?)"
    )]
    Unreachable { registry: String, why: String },
    #[error(
        "the registry {registry} refused the credentials from {from}: log in (`docker login {registry}`) or set {}/{}",
        auth::USERNAME_ENV,
        auth::PASSWORD_ENV
    )]
    Unauthorized { registry: String, from: String },
    /// The token service answered anything but a token, and the client keeps only its words
    /// (not its status): bad credentials and a token service that is down read the same, so
    /// both are named rather than one guessed.
    #[error(
        "the registry {registry}'s token service gave no token ({why}): if it says the credentials from {from} are wrong, log in (`docker login {registry}`) or set {}/{}; otherwise the token service is failing — try again once it answers",
        auth::USERNAME_ENV,
        auth::PASSWORD_ENV
    )]
    NoToken {
        registry: String,
        from: String,
        why: String,
    },
    #[error("{reference} does not exist in the registry")]
    NotFound { reference: String },
    #[error(
        "a blob does not match its digest ({0}): the registry or the path to it altered the content; nothing was kept"
    )]
    Tampered(String),
    #[error("the registry {registry} answered: {why}")]
    Other { registry: String, why: String },
}

/// Whether a token service's answer refuses the credentials. The client keeps its body, not its
/// status, so the words decide: the distribution spec's error codes (`UNAUTHORIZED`, `DENIED`,
/// in an error envelope) and the phrases registries and proxies in front of them use. Anything
/// else — a proxy's "upstream connect error", an empty 503 — is a failing service.
pub(crate) fn refuses_credentials(body: &str) -> bool {
    const SAID: [&str; 9] = [
        "unauthorized",
        "denied",
        "authentication required",
        "authorization required",
        "incorrect username",
        "invalid username",
        "invalid credentials",
        "bad credentials",
        "password",
    ];
    let body = body.to_ascii_lowercase();
    SAID.iter().any(|s| body.contains(s))
}

/// A request that could not be made, or got no answer in time.
pub(crate) fn not_asked(registry: String, e: &reqwest::Error) -> RegistryError {
    RegistryError::Unreachable {
        registry,
        why: if e.is_timeout() {
            "timed out".into()
        } else {
            "connection refused or failed".into()
        },
    }
}

/// What a registry's answer other than a success means, whichever client got it (the push's
/// `oci-client`, the pull's [`Session`]): its HTTP status when known, the codes of the spec's
/// error envelope when it sent one, and `said` — its words, bounded — when neither decides.
pub(crate) fn answered(
    r: &BundleRef,
    creds: &Credentials,
    status: Option<u16>,
    codes: &[OciErrorCode],
    said: impl FnOnce() -> String,
) -> RegistryError {
    use OciErrorCode as Code;
    let has = |wanted: &[Code]| codes.iter().any(|c| wanted.contains(c));
    let registry = r.registry().to_owned();
    if matches!(status, Some(401 | 403)) || has(&[Code::Unauthorized, Code::Denied]) {
        RegistryError::Unauthorized {
            registry,
            from: creds.source.clone(),
        }
    } else if status == Some(404)
        || has(&[
            Code::ManifestUnknown,
            Code::NameUnknown,
            Code::BlobUnknown,
            Code::NotFound,
        ])
    {
        RegistryError::NotFound {
            reference: r.to_string(),
        }
    } else if status.is_some_and(|s| (500..600).contains(&s) || s == 429)
        || has(&[Code::Toomanyrequests])
    {
        // Down behind a proxy, overloaded, or rate-limiting this host: it could not be asked
        // now, as when it cannot be reached (the runbook is unavailable, the host still starts).
        RegistryError::Unreachable {
            registry,
            why: match status {
                Some(s) => format!("it answered HTTP {s}"),
                None => "it answered TOOMANYREQUESTS".into(),
            },
        }
    } else {
        RegistryError::Other {
            registry,
            why: said(),
        }
    }
}

fn registry_error(e: OciDistributionError, r: &BundleRef, creds: &Credentials) -> RegistryError {
    let registry = r.registry().to_owned();
    let unauthorized = || RegistryError::Unauthorized {
        registry: registry.clone(),
        from: creds.source.clone(),
    };
    match e {
        OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
            not_asked(registry, &e)
        }
        OciDistributionError::AuthenticationFailure(why) if refuses_credentials(&why) => {
            unauthorized()
        }
        OciDistributionError::AuthenticationFailure(why) => RegistryError::NoToken {
            registry,
            from: creds.source.clone(),
            why: if why.trim().is_empty() {
                "it said nothing".into()
            } else {
                registry_text(why.trim())
            },
        },
        OciDistributionError::UnauthorizedError { .. } => unauthorized(),
        OciDistributionError::ImageManifestNotFoundError(_) => RegistryError::NotFound {
            reference: r.to_string(),
        },
        OciDistributionError::ServerError { code, .. } => {
            let why = registry_text(&e.to_string());
            answered(r, creds, Some(code), &[], || why)
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let why = registry_text(&envelope.to_string());
            let codes: Vec<OciErrorCode> = envelope.errors.into_iter().map(|e| e.code).collect();
            answered(r, creds, None, &codes, || why)
        }
        OciDistributionError::DigestError(d) => RegistryError::Tampered(d.to_string()),
        other => RegistryError::Other {
            registry,
            why: registry_text(&other.to_string()),
        },
    }
}

fn client_for(r: &BundleRef) -> Client {
    Client::new(ClientConfig {
        protocol: if r.is_loopback() {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..ClientConfig::default()
    })
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error(
        "push to a tag, not a digest: oci://HOST/REPOSITORY:TAG (the digest is what the push returns)"
    )]
    DigestGiven,
    #[error(
        "the repository `{repository}` must end in the runbook's id `{id}` (agents check a pulled bundle against it): push to …/{id}:{version}"
    )]
    NameMismatch {
        repository: String,
        id: String,
        version: String,
    },
    #[error("credentials: {0}")]
    Credentials(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Pushed {
    pub runbook: String,
    pub version: String,
    pub digest: String,
    /// The reference an agent's catalog should name: the repository pinned by digest.
    pub pinned: String,
}

/// Push the signed bundle in `dir` to `r` (a tag).
pub async fn push(dir: &Path, r: &BundleRef) -> Result<Pushed, PushError> {
    if r.digest().is_some() {
        return Err(PushError::DigestGiven);
    }
    let (layers, config, manifest, runbook) = artifact::pack(dir)?;
    if r.runbook_id() != runbook.id {
        return Err(PushError::NameMismatch {
            repository: r.repository().to_owned(),
            id: runbook.id.clone(),
            version: runbook.version.to_string(),
        });
    }
    let creds = auth::for_registry(r.registry()).map_err(PushError::Credentials)?;
    let client = client_for(r);
    client
        .push(r.oci(), &layers, config, &creds.auth, Some(manifest))
        .await
        .map_err(|e| registry_error(e, r, &creds))?;
    let digest = client
        .fetch_manifest_digest(r.oci(), &creds.auth)
        .await
        .map_err(|e| registry_error(e, r, &creds))?;
    tracing::info!(runbook = %runbook.id, version = %runbook.version, %digest, reference = %r, "bundle pushed");
    Ok(Pushed {
        runbook: runbook.id,
        version: runbook.version.to_string(),
        pinned: r.pinned(&digest),
        digest,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0} already exists: pull into a new folder (or remove it first)")]
    DestExists(String),
    #[error("cannot prepare {dir}: {why}")]
    Local { dir: String, why: String },
    #[error("credentials: {0}")]
    Credentials(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the manifest's digest is {found}, not the pinned {pinned}: refused")]
    PinMismatch { pinned: String, found: String },
    #[error("the artifact is not a readable bundle: {0}")]
    Layout(String),
    #[error("the pulled bundle is `{found}`, but the reference names `{expected}`: refused")]
    NameMismatch { expected: String, found: String },
    #[error("the pulled bundle is refused: {0}")]
    Refused(#[from] Refusal),
    #[error("the pulled bundle's manifest is invalid: {0}")]
    Manifest(String),
}

impl PullError {
    /// The registry could not be reached at all (as opposed to: it, or its token service,
    /// answered).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, PullError::Registry(RegistryError::Unreachable { .. }))
    }

    /// The registry could not be asked, so the runbook is unavailable (recorded, alerts that
    /// need it escalate) rather than the host refused at start: it cannot be reached, or its
    /// token service failed without refusing the credentials (refused ones are
    /// [`RegistryError::Unauthorized`] and stop the start, as a wrong login will not pass).
    pub fn leaves_unavailable(&self) -> bool {
        self.is_unreachable() || matches!(self, PullError::Registry(RegistryError::NoToken { .. }))
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Pulled {
    pub runbook: String,
    pub version: String,
    pub digest: String,
    pub signer: String,
    pub dir: PathBuf,
}

/// Pull `r` into the new folder `dest`: the manifest checked against its pin, the signature
/// and the bundle's manifest against `policy` before any component is fetched, every blob
/// against its digest and the layout, then the unpacked bundle as the host checks a local one
/// (signature by a trusted key, minimum versions) — all before `dest` exists, and within
/// [`PULL_DEADLINE`]. On any error nothing is left behind.
pub async fn pull(r: &BundleRef, dest: &Path, policy: &TrustPolicy) -> Result<Pulled, PullError> {
    match tokio::time::timeout(PULL_DEADLINE, pull_within(r, dest, policy)).await {
        Ok(pulled) => pulled,
        Err(_) => Err(PullError::Registry(RegistryError::Unreachable {
            registry: r.registry().to_owned(),
            why: format!(
                "the pull did not finish within {} s",
                PULL_DEADLINE.as_secs()
            ),
        })),
    }
}

async fn pull_within(
    r: &BundleRef,
    dest: &Path,
    policy: &TrustPolicy,
) -> Result<Pulled, PullError> {
    if dest.exists() {
        return Err(PullError::DestExists(dest.display().to_string()));
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let local = |why: String| PullError::Local {
        dir: parent.display().to_string(),
        why,
    };
    std::fs::create_dir_all(&parent).map_err(|e| local(e.to_string()))?;
    let creds = auth::for_registry(r.registry()).map_err(PullError::Credentials)?;
    let mut session = Session::new(r, &creds, CONNECT_TIMEOUT, READ_TIMEOUT)?;

    let named = r.digest().or(r.oci().tag()).unwrap_or("latest");
    let bytes = match session
        .manifest(named, OCI_IMAGE_MEDIA_TYPE, MAX_MANIFEST)
        .await
    {
        Ok(bytes) => bytes,
        Err(Fetched::Registry(e)) => return Err(e.into()),
        Err(Fetched::TooLong { cap }) => {
            return Err(PullError::Layout(format!(
                "its manifest is longer than {cap} bytes, the most a bundle's is; the rest was not read"
            )));
        }
    };
    // The digest of the bytes received, not the one the registry claims in a header.
    let digest = themis_core::digest(&bytes);
    if let Some(pinned) = r.digest()
        && pinned != digest
    {
        return Err(PullError::PinMismatch {
            pinned: pinned.to_owned(),
            found: digest,
        });
    }
    let manifest: OciImageManifest =
        serde_json::from_slice(&bytes).map_err(|e| PullError::Layout(e.to_string()))?;
    // Its words are the registry's (paths, media types, digests): bounded like any it says.
    let layers = artifact::check_layout(&manifest)
        .map_err(|e: LayoutError| PullError::Layout(registry_text(&e.to_string())))?;

    remove_stale_pulls(&parent);
    let staging = tempfile::Builder::new()
        .prefix(STAGING_PREFIX)
        .tempdir_in(&parent)
        .map_err(|e| local(e.to_string()))?;
    async fn fetch(
        session: &mut Session<'_>,
        staging: &Path,
        path: &str,
        layer: &oci_client::manifest::OciDescriptor,
    ) -> Result<(), PullError> {
        let declared = usize::try_from(layer.size).unwrap_or(usize::MAX);
        let bytes = match session.blob(&layer.digest, declared).await {
            Ok(bytes) => bytes,
            Err(Fetched::Registry(e)) => return Err(e.into()),
            Err(Fetched::TooLong { cap }) => {
                return Err(RegistryError::Tampered(format!(
                    "{}: longer than its declared {cap} bytes",
                    layer.digest
                ))
                .into());
            }
        };
        // The digest of the bytes received: nothing of a blob that is not what the manifest
        // names reaches the staging folder.
        let found = themis_core::digest(&bytes);
        if found != layer.digest {
            return Err(
                RegistryError::Tampered(format!("{} received as {found}", layer.digest)).into(),
            );
        }
        let file = staging.join(path);
        let local = |e: std::io::Error| PullError::Local {
            dir: staging.display().to_string(),
            why: e.to_string(),
        };
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(local)?;
        }
        std::fs::write(&file, bytes).map_err(local)
    }
    // The signature and the bundle's manifest first: nothing else is fetched for a bundle no
    // trusted key signed, and only the components the signature names, by their signed digest.
    let (head, components): (Vec<_>, Vec<_>) = layers
        .into_iter()
        .partition(|(path, _)| path == SIGNATURE_FILE || path == MANIFEST_FILE);
    for (path, layer) in head {
        fetch(&mut session, staging.path(), &path, &layer).await?;
    }
    let signature = trust::check_signature(staging.path(), policy)?;
    if let Some(signed) = &signature {
        // What the signature says of the runbook, before anything else is fetched for it: the
        // same checks the unpacked bundle gets after.
        if signed.runbook != r.runbook_id() {
            return Err(PullError::NameMismatch {
                expected: r.runbook_id().to_owned(),
                found: signed.runbook.clone(),
            });
        }
        if let (Some(minimum), Ok(version)) = (
            policy.min_versions.get(&signed.runbook),
            semver::Version::parse(&signed.version),
        ) && version < *minimum
        {
            return Err(PullError::Refused(Refusal::Downgrade {
                runbook: signed.runbook.clone(),
                version: signed.version.clone(),
                minimum: minimum.to_string(),
            }));
        }
        for (path, layer) in &components {
            match signed.components.get(path) {
                Some(digest) if *digest == layer.digest => {}
                Some(_) => {
                    return Err(PullError::Layout(format!(
                        "layer `{path}` is not the component that was signed (its digest is {}); nothing was fetched of it",
                        layer.digest
                    )));
                }
                None => {
                    return Err(PullError::Layout(format!(
                        "layer `{path}` is not a component the signature names; a bundle carries only what was signed"
                    )));
                }
            }
        }
    }
    for (path, layer) in components {
        fetch(&mut session, staging.path(), &path, &layer).await?;
    }
    // Kept with the bundle: a cached copy is checked against its pin again at every start.
    std::fs::write(staging.path().join(OCI_MANIFEST_FILE), &bytes)
        .map_err(|e| local(e.to_string()))?;

    // Exactly what the host does with a local bundle before compiling it.
    let runbook = Runbook::load(staging.path()).map_err(|e| PullError::Manifest(e.to_string()))?;
    let signer = trust::check_bundle(&runbook, signature.as_ref(), policy)?;
    if runbook.id != r.runbook_id() {
        return Err(PullError::NameMismatch {
            expected: r.runbook_id().to_owned(),
            found: runbook.id,
        });
    }
    std::fs::rename(staging.path(), dest).map_err(|e| local(e.to_string()))?;
    tracing::info!(runbook = %runbook.id, version = %runbook.version, %digest, reference = %r, "bundle pulled and verified");
    Ok(Pulled {
        runbook: runbook.id,
        version: runbook.version.to_string(),
        digest,
        signer: signer.to_string(),
        dir: dest.to_path_buf(),
    })
}

/// The registry's manifest of a pulled bundle, kept in its folder: what its pin is the digest of.
pub const OCI_MANIFEST_FILE: &str = ".oci-manifest.json";

/// Whether the bundle in `dir` is still what `r`'s pin names: the kept registry manifest has
/// the pinned digest, every file it lists has its layer's digest, and the runbook is the one
/// the reference names. `Err` says what differs.
pub fn check_pulled(r: &BundleRef, dir: &Path) -> Result<(), String> {
    use themis_core::files;
    let root = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority())
        .map_err(|e| format!("cannot open it: {e}"))?;
    let bytes = files::read_in(&root, Path::new(OCI_MANIFEST_FILE), MAX_MANIFEST as u64)
        .map_err(|e| format!("its {OCI_MANIFEST_FILE} cannot be read: {e}"))?;
    let digest = themis_core::digest(&bytes);
    if let Some(pinned) = r.digest()
        && pinned != digest
    {
        return Err(format!(
            "its registry manifest's digest is {digest}, not the pinned {pinned}"
        ));
    }
    let manifest: OciImageManifest =
        serde_json::from_slice(&bytes).map_err(|e| format!("{OCI_MANIFEST_FILE}: {e}"))?;
    let layers = artifact::check_layout(&manifest).map_err(|e| e.to_string())?;
    for (path, layer) in &layers {
        let held = files::read_in(&root, Path::new(path), layer.size.max(0) as u64)
            .map_err(|e| format!("`{path}` cannot be read: {e}"))?;
        if themis_core::digest(&held) != layer.digest {
            return Err(format!("`{path}` is not the file that was pulled"));
        }
    }
    let id = Runbook::load(dir).map_err(|e| e.to_string())?.id;
    if id != r.runbook_id() {
        return Err(format!(
            "it holds runbook `{id}`, but the reference names `{}`",
            r.runbook_id()
        ));
    }
    Ok(())
}

/// The name a cached bundle's replacement (`new`) or predecessor (`stale`) starts with while
/// `cache.rs` swaps them.
pub(crate) const REPLACING_PREFIX: &str = ".themis-replacing-";

/// The name a pull's staging folder starts with, next to its destination.
const STAGING_PREFIX: &str = ".themis-pull-";

/// Staging folders a killed pull left next to `parent`'s bundles: no live pull is older than
/// its deadline, so one older than twice that is removed (unverified content, never loaded).
fn remove_stale_pulls(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // A pull's staging folder, or a cached bundle's replacement or predecessor
        // (`cache.rs`) that a kill left behind.
        // Only names Themis makes: the folder may be a user's own (`runbook pull` into `.`).
        let ours = name.starts_with(STAGING_PREFIX) || name.starts_with(REPLACING_PREFIX);
        let stale = ours
            && entry
                .metadata()
                .ok()
                .filter(|m| m.is_dir())
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > PULL_DEADLINE * 2);
        if stale && let Err(e) = std::fs::remove_dir_all(entry.path()) {
            tracing::warn!(dir = %entry.path().display(), error = %e, "a killed pull's staging folder could not be removed");
        }
    }
}

#[cfg(test)]
mod stale_tests {
    use super::*;

    /// What a killed pull or cache swap left is removed once old; a folder of the user's own,
    /// beside a `runbook pull` destination, never is, whatever its name looks like.
    #[test]
    fn only_what_themis_left_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = [
            ".themis-pull-abc",
            ".themis-replacing-new-scale-consumer-1",
            ".config.new-backup",
            ".notes.stale-2024",
        ];
        let old = std::time::SystemTime::now() - PULL_DEADLINE * 3;
        for name in names {
            let path = dir.path().join(name);
            std::fs::create_dir(&path).expect("mkdir");
            std::fs::File::open(&path)
                .and_then(|f| f.set_modified(old))
                .expect("age it");
        }
        remove_stale_pulls(dir.path());
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".config.new-backup", ".notes.stale-2024"]);
    }

    /// A token service that failed is not called a refusal of the credentials: its words are
    /// passed on, with both readings, and an empty answer still says something.
    #[test]
    fn a_token_service_that_gave_no_token_is_named_with_its_words() {
        let r = BundleRef::parse("oci://registry.example:5000/sre/scale-consumer:1.2.0")
            .expect("reference");
        let creds = Credentials {
            auth: oci_client::secrets::RegistryAuth::Anonymous,
            source: "no credentials".into(),
        };
        let error = registry_error(
            OciDistributionError::AuthenticationFailure("upstream connect error\n".into()),
            &r,
            &creds,
        );
        let said = error.to_string();
        let error = PullError::Registry(error);
        assert!(error.leaves_unavailable(), "{said}");
        // Not "unreachable": a cached bundle that cannot be shown to be its pin is not used
        // on the strength of a token service that answered.
        assert!(!error.is_unreachable(), "{said}");
        let refused = RegistryError::Unauthorized {
            registry: "registry.example:5000".into(),
            from: "no credentials".into(),
        };
        assert!(!PullError::Registry(refused).leaves_unavailable());
        assert!(
            said.contains("token service gave no token (upstream connect error)"),
            "{said}"
        );
        assert!(said.contains("the token service is failing"), "{said}");
        assert!(!said.contains("refused the credentials"), "{said}");
        let said = registry_error(
            OciDistributionError::AuthenticationFailure(" ".into()),
            &r,
            &creds,
        )
        .to_string();
        assert!(said.contains("(it said nothing)"), "{said}");
    }

    /// A token service that says the credentials are wrong — in the spec's error envelope or
    /// in the words registries use — refuses them, and the start with them.
    #[test]
    fn a_token_service_refusing_the_credentials_is_a_refusal() {
        let r = BundleRef::parse("oci://registry.example:5000/sre/scale-consumer:1.2.0")
            .expect("reference");
        let creds = Credentials {
            auth: oci_client::secrets::RegistryAuth::Anonymous,
            source: "THEMIS_REGISTRY_USERNAME".into(),
        };
        for body in [
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#,
            r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#,
            r#"{"details":"incorrect username or password"}"#,
            "<html><head><title>401 Authorization Required</title></head></html>",
        ] {
            let error = registry_error(
                OciDistributionError::AuthenticationFailure(body.into()),
                &r,
                &creds,
            );
            assert!(
                matches!(error, RegistryError::Unauthorized { .. }),
                "{body}: {error}"
            );
            assert!(!PullError::Registry(error).leaves_unavailable(), "{body}");
        }
        for body in ["no healthy upstream", "<html>502 Bad Gateway</html>", ""] {
            let error = registry_error(
                OciDistributionError::AuthenticationFailure(body.into()),
                &r,
                &creds,
            );
            assert!(
                matches!(error, RegistryError::NoToken { .. }),
                "{body}: {error}"
            );
        }
    }
}
