//! A host standing by for a shared state database another host holds. It acts on nothing and
//! writes no audit of its own, but every host of a deployment serves:
//! - alerts: a notification is authenticated and checked as the holder checks it, then stored
//!   in the database's inbox (durable before the 200), where the holder takes it up
//!   (`intake::drain_inbox`) — so Alertmanager may send to every host and lose nothing, even
//!   while the holder is away;
//! - everything else (answers, reads, the page, the event stream) is passed on to the holder at
//!   the address it advertised (sealed under the deployment's host key, so no row edited by hand
//!   sends a token elsewhere), and its answer passed back; with no holder to reach, 503 saying
//!   why — until this host holds the state and serves the whole API itself.

use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::intake::{IntakeResponse, Taken, body, incoming_of};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use themis_agent::audit::Redactor;
use themis_agent::store::pg_inbox::{Holder, InboxError, PgInbox};

pub struct Standby {
    pub config: Arc<ServeConfig>,
    pub inbox: Arc<PgInbox>,
    pub redactor: Redactor,
    pub http: reqwest::Client,
    /// The holder as last read, and when: read again after `HOLDER_FRESH`, so passing requests
    /// on costs the database one query a second, not one per request.
    pub holder: tokio::sync::Mutex<Option<(std::time::Instant, Option<Holder>)>>,
}

const HOLDER_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Headers the `Connection` header names: of this hop only.
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(axum::http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

/// The inbox's `via` of a refusal a standby stored for the holder's record.
pub const REFUSED: &str = "refused";

/// The inbox row kind of alerts a host standing by checked and accepted (`Incoming`, as JSON).
pub const CHECKED: &str = "checked";

/// Marks a request a standby passed on: one never passes it on again (two hosts that advertise
/// each other's address would otherwise bounce it between them).
const FORWARDED: &str = "x-themis-forwarded-by";

/// Headers of one hop, not passed on.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

impl Standby {
    /// Who holds the state, read at most once a second.
    async fn holder(&self) -> Result<Option<Holder>, themis_agent::store::StoreError> {
        let mut cached = self.holder.lock().await;
        if let Some((at, holder)) = cached.as_ref()
            && at.elapsed() < HOLDER_FRESH
        {
            return Ok(holder.clone());
        }
        let holder = self.inbox.holder().await?;
        *cached = Some((std::time::Instant::now(), holder.clone()));
        Ok(holder)
    }

    /// A client for passing requests on: a connection refused or hung is said quickly; a
    /// response may stream for as long as it sends (the event stream's keep-alives).
    pub fn client() -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(3))
            .read_timeout(std::time::Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
    }
}

pub fn router(state: Arc<Standby>) -> Router {
    let limit = state.config.body_limit;
    Router::new()
        .route("/api/v1/alerts/alertmanager", post(alertmanager))
        .route("/api/v1/alerts", post(own))
        // The sender is known before a byte of its body is read, as on the holder.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            intake_auth,
        ))
        .route("/healthz", get(crate::read::healthz))
        // This host's own: a standby is ready for what it serves (alerts, passing requests
        // on), and its metrics are not the holder's (scraped per host, they would count twice).
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(forward)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(crate::deadline::body_deadline))
        .with_state(state)
}

async fn intake_auth(
    State(state): State<Arc<Standby>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    crate::auth::intake_by(&state.config, request.headers())?;
    Ok(next.run(request).await)
}

async fn ready() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "ready": true,
        "standing_by": true,
        "reason": "another host holds the shared state: this one takes alerts for it and passes everything else on",
    }))
}

/// This host's own metrics: that it stands by, and which host leads (holds the state).
async fn metrics(
    State(state): State<Arc<Standby>>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let mut text = String::from(
        "# HELP themis_standing_by 1 while this host stands by for a shared state another host holds\n# TYPE themis_standing_by gauge\nthemis_standing_by 1\n",
    );
    if let Ok(Some(holder)) = state.holder().await {
        // A label value escapes backslashes, quotes and newlines (the text format's rule).
        let host = holder
            .host
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        text.push_str(&format!(
            "# HELP themis_state_holder 1 for the host that holds the shared state and leads every agent\n# TYPE themis_state_holder gauge\nthemis_state_holder{{host=\"{host}\"}} 1\n"
        ));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// This machine's name, as the lease names a holder's (`<machine> pid <pid> (<dir>)`).
fn this_machine() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Whether `url`, advertised by the holder `holder` (as the lease names it), is a loopback
/// address on another machine than `machine`: passed on there, a request would reach this
/// machine (this host itself, or nothing), never the holder.
fn loopback_elsewhere(url: &str, holder: &str, machine: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    let loopback = themis_core::loopback::is_loopback(parsed.host_str().unwrap_or_default());
    loopback && holder.split_whitespace().next() != Some(machine)
}

fn standing_by(why: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "standing-by",
        format!(
            "this host stands by while another holds the shared state, and cannot pass this request on: {why}; retry — this host takes over when the holder stops"
        ),
    )
    .retry_after(5)
}

/// Pass a request on to the holder and its answer back.
async fn forward(
    State(state): State<Arc<Standby>>,
    request: axum::extract::Request,
) -> Result<axum::response::Response, ApiError> {
    if request.headers().contains_key(FORWARDED) {
        return Err(standing_by(
            "it was passed on to this host by another standing by (two hosts advertise each other's address?)",
        ));
    }
    let holder = match state.holder().await {
        Ok(Some(holder)) => holder,
        Ok(None) => return Err(standing_by("no host holds the state yet")),
        Err(e) => return Err(standing_by(e)),
    };
    let Some(base) = holder.url else {
        return Err(standing_by(format!(
            "the holder, {}, has not said where it serves yet (it may be starting or recovering; if this lasts, set `advertise:` on every host)",
            holder.host
        )));
    };
    if loopback_elsewhere(&base, &holder.host, &this_machine()) {
        return Err(standing_by(format!(
            "the holder, {}, advertised a loopback address ({base}), which from this machine is this machine: set `advertise:` on every host to an address the others reach",
            holder.host
        )));
    }
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    // Streamed, not gathered here: the holder authenticates the request and bounds its body,
    // and a standby holds no more of it than a chunk in flight.
    let mut out = state
        .http
        .request(parts.method.clone(), format!("{base}{path}"))
        .body(reqwest::Body::wrap_stream(body.into_data_stream()));
    let named = connection_named(&parts.headers);
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) && !named.contains(&name.as_str().to_owned()) {
            out = out.header(name, value);
        }
    }
    if let Some(host) = parts.headers.get(axum::http::header::HOST)
        && !parts.headers.contains_key("x-forwarded-host")
    {
        // The page's cross-site check compares a form's origin with the host it was sent to.
        out = out.header("x-forwarded-host", host);
    }
    out = out.header(FORWARDED, "standby");
    let answer = out.send().await.map_err(|e| {
        standing_by(format!(
            "the holder, {}, at {base} did not answer: {e}",
            holder.host
        ))
    })?;
    let mut response = axum::response::Response::builder().status(answer.status());
    let named = connection_named(answer.headers());
    for (name, value) in answer.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) && !named.contains(&name.as_str().to_owned()) {
            response = response.header(name, value);
        }
    }
    response
        .body(axum::body::Body::from_stream(answer.bytes_stream()))
        .map_err(|e| {
            ApiError::unavailable(format!("the holder's answer could not be passed back: {e}"))
        })
}

async fn store(
    state: &Standby,
    via: &'static str,
    headers: &HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<IntakeResponse>, ApiError> {
    crate::auth::intake_by(&state.config, headers)?;
    let bytes = body(raw);
    let incoming = match bytes
        .clone()
        .and_then(|bytes| incoming_of(via, &bytes, &state.redactor))
    {
        Ok(taken) => taken,
        Err(refusal) => {
            // An authenticated sender's alerts refused are alerts lost (a 4xx is not retried):
            // on the holder's record too, as its own intake records them.
            let data = match &bytes {
                Ok(bytes) => crate::intake::refusal_data_of(via, &refusal, bytes),
                Err(_) => crate::intake::refusal_data(via, &refusal),
            };
            if let Err(e) = state.inbox.put(REFUSED, &state.redactor.redact(data)).await {
                tracing::error!(via, error = %e, "an authenticated notification was refused and the refusal could not be stored for the holder");
            }
            return Err(refusal);
        }
    };
    // Stored as checked here (a fingerprint a sender left out is derived from the labels as
    // they arrived, as the holder's own intake derives it) and redacted, as the holder's audit
    // keeps it: no secret reaches the database.
    let value = serde_json::to_value(&incoming)
        .map_err(|e| ApiError::unavailable(format!("the alerts could not be stored: {e}")))?;
    match state.inbox.put(CHECKED, &state.redactor.redact(value)).await {
        Ok(_) => Ok(Json(IntakeResponse {
            accepted: incoming.len(),
            unrouted: 0,
            alerts: incoming
                .into_iter()
                .map(|i| Taken {
                    fingerprint: i.alert.fingerprint,
                    alertname: i.alert.name,
                    outcome: "stored",
                    agent: None,
                })
                .collect(),
        })),
        Err(InboxError::Full(_)) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "queue-full",
            "the shared inbox is full: the host that holds the state has not taken up what waits; retry",
        )
        .retry_after(5)),
        Err(InboxError::Foreign(why)) => Err(ApiError::unavailable(format!(
            "{why}; nothing was stored — send to the host that holds the state"
        ))),
        Err(InboxError::Store(e)) => Err(ApiError::unavailable(format!(
            "{e}; nothing was stored — retry, or send to the host that holds the state"
        ))
        .retry_after(5)),
    }
}

async fn alertmanager(
    State(state): State<Arc<Standby>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<IntakeResponse>, ApiError> {
    store(&state, "alertmanager", &headers, raw).await
}

async fn own(
    State(state): State<Arc<Standby>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<IntakeResponse>, ApiError> {
    store(&state, "own-json", &headers, raw).await
}

#[cfg(test)]
mod tests {
    use super::loopback_elsewhere;

    #[test]
    fn a_loopback_address_is_the_holders_only_on_the_holders_machine() {
        let holder = "db-1 pid 4242 (/var/lib/themis)";
        for url in [
            "http://127.0.0.1:8080",
            "http://127.3.4.5:8080",
            "http://[::1]:8080",
            "http://localhost:8080",
            "http://LOCALHOST:8080/",
            "http://[::ffff:127.0.0.1]:8080",
            "http://0.0.0.0:8080",
        ] {
            assert!(loopback_elsewhere(url, holder, "db-2"), "{url}");
            assert!(!loopback_elsewhere(url, holder, "db-1"), "{url}");
        }
        for url in ["http://10.0.0.7:8080", "http://db-1:8080", "not a url"] {
            assert!(!loopback_elsewhere(url, holder, "db-2"), "{url}");
        }
    }
}
