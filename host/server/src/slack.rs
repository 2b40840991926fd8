//! Slack interactivity: the Approve / Reject buttons of an escalation come back here.
//!
//! A request is acted on only when Slack's signature verifies (`v0=` HMAC-SHA256 over
//! `v0:<timestamp>:<body>` with the signing secret, compared in constant time), its timestamp is
//! within five minutes, and it was never seen before — remembered durably (an fsynced file in
//! the state directory), so a replay after a restart is refused too. The Slack user must be a
//! configured approver (`slack_user`); the answer then goes through the same worker and policy
//! as any other, and the message is updated through its `response_url`.

use crate::app::{AppState, runtime_error};
use crate::config::SlackConfig;
use crate::error::ApiError;
use crate::intake::body;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How old a request may be (Slack's own recommendation).
pub const MAX_AGE_SECS: u64 = 300;

/// The largest interaction body read: Slack's payload carries the message it answers (at most
/// 50 blocks of 3000 characters), URL-encoded.
pub const MAX_BODY: usize = 512 << 10;
/// Requests remembered at most; inside five minutes this is far above what Slack sends.
pub const MAX_REMEMBERED: usize = 100_000;

use themis_agent::escalation::{APPROVE_ACTION, REJECT_ACTION};

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The requests seen within the replay window, kept in memory and in an append-only file.
struct Seen {
    path: PathBuf,
    file: File,
    /// Each request's timestamp, and whether a replay of it was audited already.
    ids: HashMap<String, (u64, bool)>,
    lines: usize,
}

/// What [`Seen::first_time`] found.
#[derive(Debug, PartialEq)]
enum Sighting {
    First,
    /// A replay; `audited` if one of this request was recorded before — a captured request
    /// replayed in a loop gets one record, not one each, so it cannot fill the audit.
    Replay {
        audited: bool,
    },
}

impl Seen {
    fn open(path: &Path) -> std::io::Result<Seen> {
        let horizon = now_secs().saturating_sub(2 * MAX_AGE_SECS);
        let mut ids = HashMap::new();
        if let Ok(f) = File::open(path) {
            for line in BufReader::new(f).lines() {
                let line = line?;
                if let Some((id, ts)) = line.split_once(' ')
                    && let Ok(ts) = ts.parse::<u64>()
                    && ts >= horizon
                    && ids.len() < MAX_REMEMBERED
                {
                    ids.insert(id.to_owned(), (ts, false));
                }
            }
        }
        let mut seen = Seen {
            path: path.to_path_buf(),
            file: OpenOptions::new().create(true).append(true).open(path)?,
            ids,
            lines: 0,
        };
        seen.compact()?;
        Ok(seen)
    }

    /// Rewrite the file with the live entries only (temp file, fsync, rename).
    fn compact(&mut self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            for (id, (ts, _)) in &self.ids {
                writeln!(f, "{id} {ts}")?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.lines = self.ids.len();
        Ok(())
    }

    /// Remember `id`, durably before it says [`Sighting::First`].
    fn first_time(&mut self, id: &str, ts: u64) -> Result<Sighting, ApiError> {
        if let Some((_, audited)) = self.ids.get_mut(id) {
            let before = *audited;
            *audited = true;
            return Ok(Sighting::Replay { audited: before });
        }
        let horizon = now_secs().saturating_sub(2 * MAX_AGE_SECS);
        if self.ids.len() >= MAX_REMEMBERED {
            self.ids.retain(|_, (t, _)| *t >= horizon);
        }
        if self.ids.len() >= MAX_REMEMBERED {
            return Err(ApiError::unavailable(
                "too many Slack requests within five minutes; refused until older ones expire",
            ));
        }
        let unavailable = |e: std::io::Error| {
            ApiError::unavailable(format!("cannot record the Slack request: {e}"))
        };
        writeln!(self.file, "{id} {ts}")
            .and_then(|()| self.file.sync_data())
            .map_err(unavailable)?;
        self.ids.insert(id.to_owned(), (ts, false));
        self.lines += 1;
        if self.lines > 2 * self.ids.len() + 1024 {
            self.ids.retain(|_, (t, _)| *t >= horizon);
            self.compact().map_err(unavailable)?;
        }
        Ok(Sighting::First)
    }
}

pub struct SlackState {
    secret: Vec<u8>,
    response_url_prefix: String,
    seen: Mutex<Seen>,
    http: reqwest::Client,
}

impl SlackState {
    pub fn open(config: &SlackConfig, state_dir: &Path) -> Result<SlackState, String> {
        std::fs::create_dir_all(state_dir).map_err(|e| format!("{}: {e}", state_dir.display()))?;
        let path = state_dir.join("slack-requests-seen");
        let seen = Seen::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(SlackState {
            secret: config.signing_secret.expose().as_bytes().to_vec(),
            response_url_prefix: config.response_url_prefix.clone(),
            seen: Mutex::new(seen),
            http,
        })
    }

    /// Check the signature and the age; returns the request's timestamp.
    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<u64, ApiError> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| ApiError::unauthorized(format!("missing {name}")))
        };
        let ts_text = header("x-slack-request-timestamp")?;
        let ts: u64 = ts_text
            .parse()
            .map_err(|_| ApiError::unauthorized("X-Slack-Request-Timestamp is not a number"))?;
        if now_secs().abs_diff(ts) > MAX_AGE_SECS {
            return Err(ApiError::unauthorized(
                "the request is more than five minutes old (or from the future): refused as a possible replay",
            ));
        }
        let signature = header("x-slack-signature")?
            .strip_prefix("v0=")
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| ApiError::unauthorized("X-Slack-Signature is not `v0=<hex>`"))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret)
            .map_err(|_| ApiError::unavailable("the Slack signing secret is unusable"))?;
        mac.update(b"v0:");
        mac.update(ts_text.as_bytes());
        mac.update(b":");
        mac.update(body);
        // verify_slice compares in constant time.
        mac.verify_slice(&signature)
            .map_err(|_| ApiError::unauthorized("the Slack signature does not verify"))?;
        Ok(ts)
    }
}

#[derive(Debug, Deserialize)]
struct Form {
    payload: String,
}

#[derive(Debug, Deserialize)]
struct Interaction {
    #[serde(rename = "type")]
    kind: String,
    user: SlackUser,
    #[serde(default)]
    actions: Vec<Action>,
    #[serde(default)]
    response_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SlackUser {
    id: String,
}

#[derive(Debug, Deserialize)]
struct Action {
    action_id: String,
    #[serde(default)]
    value: String,
}

/// What the host does for a button.
enum Answer {
    Approve { id: String, digest: String },
    Reject { id: String },
}

fn answer_of(action: &Action) -> Result<Answer, ApiError> {
    let bad = || ApiError::bad_request("payload.actions[0].value", "not a Themis button value");
    match action.action_id.as_str() {
        APPROVE_ACTION => {
            let (id, digest) = action.value.split_once(' ').ok_or_else(bad)?;
            Ok(Answer::Approve {
                id: id.to_owned(),
                digest: digest.to_owned(),
            })
        }
        REJECT_ACTION => Ok(Answer::Reject {
            id: action.value.clone(),
        }),
        other => Err(ApiError::bad_request(
            "payload.actions[0].action_id",
            format!("`{other}` is not a Themis action"),
        )),
    }
}

/// Slack's interactivity requests (the escalation's Approve / Reject buttons), form-encoded
/// `payload=<JSON>`, signed by Slack.
#[utoipa::path(post, path = "/api/v1/slack/interactions", tag = "approvals",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "`payload=<JSON>` as Slack sends it"),
    params(
        ("x-slack-request-timestamp" = String, Header, description = "seconds since the epoch"),
        ("x-slack-signature" = String, Header, description = "`v0=` HMAC-SHA256 hex"),
    ),
    responses(
        (status = 200, description = "taken; the answer is applied and reported through response_url", body = Object),
        (status = 400, description = "not a Themis button", body = ApiError),
        (status = 401, description = "bad signature, more than five minutes old, or Slack not configured", body = ApiError),
        (status = 403, description = "the Slack user is no approver", body = ApiError),
        (status = 409, description = "a replay", body = ApiError),
        (status = 413, description = "body over the limit", body = ApiError),
        (status = 503, description = "the request could not be recorded", body = ApiError)))]
pub async fn interactions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // Without a signing secret no request can verify: unauthenticated, like a bad signature.
    let Some(slack) = &state.slack else {
        return Err(ApiError::unauthorized(
            "Slack is not configured on this host (`slack:` in themis.yaml): no request can verify",
        ));
    };
    let raw = body(raw)?;
    let ts = match slack.verify(&headers, &raw) {
        Ok(ts) => ts,
        Err(e) => {
            // Not audited: anyone can send these, and the audit is not theirs to fill.
            tracing::warn!(reason = %e.message, "Slack interaction refused");
            return Err(e);
        }
    };
    let request_id = {
        let mut h = Sha256::new();
        h.update(ts.to_string().as_bytes());
        h.update(b":");
        h.update(&raw);
        hex::encode(h.finalize())
    };
    // An fsync: off the async threads' hands.
    let sighting = tokio::task::block_in_place(|| {
        let mut seen = slack.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.first_time(&request_id, ts)
    })?;
    if let Sighting::Replay { audited } = sighting {
        tracing::warn!(request = %request_id, "Slack request replayed: refused");
        if !audited {
            // An fsync, as above.
            let _ = tokio::task::block_in_place(|| {
                state.runtime.audit().append(
                    "slack",
                    None,
                    "slack-refused",
                    json!({
                        "reason": "replay",
                        "request": request_id,
                        "note": "later replays of this request are refused without a record each",
                    }),
                )
            });
        }
        return Err(ApiError::conflict(
            "this Slack request was already received: a replay is refused",
        ));
    }
    let form: Form = serde_urlencoded::from_bytes(&raw)
        .map_err(|e| ApiError::bad_request("payload", format!("not a Slack form body: {e}")))?;
    let interaction: Interaction = crate::error::parse_json(form.payload.as_bytes())?;
    if interaction.kind != "block_actions" {
        return Ok((StatusCode::OK, Json(json!({ "ignored": interaction.kind }))));
    }
    let action = interaction
        .actions
        .first()
        .ok_or_else(|| ApiError::bad_request("payload.actions", "no action"))?;
    let answer = answer_of(action)?;
    let response_url = interaction
        .response_url
        .filter(|u| u.starts_with(&slack.response_url_prefix));
    let user = interaction.user.id;
    let by = match state.config.approvers.by_slack_user(&user) {
        Ok(by) => by,
        Err(e) => {
            tokio::task::block_in_place(|| {
                state.runtime.audit().append(
                    "slack",
                    None,
                    "slack-refused",
                    json!({ "reason": "unknown-user", "slack_user": user, "request": request_id }),
                )
            })
            .map_err(|e| ApiError::unavailable(format!("{e}; nothing was done")))?;
            if let Some(url) = &response_url {
                post(
                    &slack.http,
                    url,
                    &format!("Refused: {e}. Nothing was done."),
                )
                .await;
            }
            return Err(ApiError::forbidden(e.to_string()));
        }
    };
    // Slack wants an answer within three seconds; a runbook may take longer. The answer runs on
    // its own and reports through response_url.
    let runtime = state.runtime.clone();
    let http = slack.http.clone();
    tokio::spawn(async move {
        let (verb, result) = match answer {
            Answer::Approve { id, digest } => {
                ("approved", runtime.approve(&id, by, Some(digest)).await)
            }
            Answer::Reject { id } => (
                "rejected",
                runtime
                    .reject(&id, by, &format!("rejected in Slack by {user}"))
                    .await,
            ),
        };
        let text = match result {
            Ok(incident) => format!(
                "{verb} by <@{user}> at {}: incident {} is now {:?}",
                crate::views::time(SystemTime::now()),
                incident.id,
                incident.status
            ),
            Err(e @ themis_agent::RuntimeError::Unfinished { .. }) => {
                format!("{verb} by <@{user}>: {e}")
            }
            Err(e) => format!("Refused: {}", runtime_error(e).message),
        };
        if let Some(url) = response_url {
            post(&http, &url, &text).await;
        }
    });
    Ok((StatusCode::OK, Json(json!({ "accepted": true }))))
}

async fn post(http: &reqwest::Client, url: &str, text: &str) {
    let body = json!({ "replace_original": true, "text": text });
    if let Err(e) = http.post(url).json(&body).send().await {
        tracing::warn!(error = %e.without_url(), "could not update the Slack message");
    }
}
