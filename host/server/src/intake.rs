//! Alert intake: Alertmanager's webhook and Themis' own JSON. Authenticated before anything is
//! read; every accepted alert is on the audit (fsynced) before the 200; a full agent queue is a
//! 429 with `Retry-After`. Alertmanager's webhook notifier retries only a 5xx at once; after a
//! 429 it logs the failure, and since the notification was not marked sent it notifies the
//! group again at its next `group_interval`, when deduplication by fingerprint absorbs the
//! alerts of it that were already taken. Other senders honour `Retry-After`.

use crate::alertmanager::{Incoming, Notification, OwnAlert};
use crate::app::{AppState, runtime_error};
use crate::auth;
use crate::error::{ApiError, parse_json};
use crate::metrics::AlertOutcome;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use std::sync::Arc;
use themis_agent::{AlertStatus, Submitted};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Taken {
    pub fingerprint: String,
    pub alertname: String,
    /// `queued` (on the record, in its agent's queue), `unrouted` (on the record; no agent
    /// owns it), or `stored` (a host standing by stored it for the host that holds the state).
    #[schema(value_type = String, example = "queued")]
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IntakeResponse {
    pub accepted: usize,
    pub unrouted: usize,
    pub alerts: Vec<Taken>,
}

/// The body, or the reason it cannot be read (413 over the limit) as a JSON error.
pub fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "payload-too-large",
                "the body is over the configured limit (limits.body_bytes); lower the receiver's max_alerts",
            )
        } else {
            ApiError::new(status, "bad-body", r.body_text())
        }
    })
}

fn open(state: &AppState) -> Result<(), ApiError> {
    if let Some(why) = state.runtime.store().lost() {
        // Taken here, the alert would wait on this host's audit for a worker that can no
        // longer write: the sender retries against the host that holds the state.
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-lost",
            format!("{why}; send alerts to the host that holds it"),
        )
        .retry_after(5));
    }
    if state.draining() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            "the host is shutting down; retry against its replacement",
        )
        .retry_after(5));
    }
    Ok(())
}

/// The alerts of a notification that came in `via` an intake endpoint (`alertmanager`,
/// `own-json`), parsed and checked as that endpoint does it.
pub fn incoming_of(
    via: &str,
    body: &[u8],
    redactor: &themis_agent::audit::Redactor,
) -> Result<Vec<Incoming>, ApiError> {
    match via {
        "alertmanager" => {
            parse_json::<Notification>(body)?.into_incoming_with(usize::MAX, redactor)
        }
        "own-json" => Ok(vec![
            parse_json::<OwnAlert>(body)?.into_incoming_with(redactor)?,
        ]),
        other => Err(ApiError::bad_request(
            "via",
            format!("no intake endpoint `{other}`"),
        )),
    }
}

/// How often the holder looks at the shared inbox, how many it takes per look, and its longest
/// pause after a failure.
const INBOX_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
const INBOX_PAGE: i64 = 64;
const INBOX_MOST: std::time::Duration = std::time::Duration::from_secs(60);

/// The holder's side of the shared inbox (`PgInbox`): what hosts standing by accepted, and the
/// turn to take it up — one taker at a time (the look every half second, or an alert that
/// came in directly), so that what waits is taken in order and once.
pub struct SharedInbox {
    inbox: Arc<themis_agent::store::pg_inbox::PgInbox>,
    turn: tokio::sync::Mutex<()>,
}

impl SharedInbox {
    pub fn new(inbox: Arc<themis_agent::store::pg_inbox::PgInbox>) -> SharedInbox {
        SharedInbox {
            inbox,
            turn: tokio::sync::Mutex::new(()),
        }
    }
}

/// Why what waits in the shared inbox was not all taken up.
pub(crate) enum Stuck {
    /// The inbox could not be read or cleared, or the audit written: nothing after the row it
    /// stopped at was taken.
    Down(String),
    /// Rows whose agents' backlogs are full wait, with every later row that shares an alert
    /// with them (an alert's notifications are taken in order); all else was taken.
    Full {
        fingerprints: std::collections::HashSet<String>,
        why: String,
    },
}

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stuck::Down(why) | Stuck::Full { why, .. } => f.write_str(why),
        }
    }
}

/// Looks at the shared inbox every half second, taking up what waits ([`take_stored`]). After
/// a failure (the audit unwritable, the inbox not read or cleared) each next try waits twice
/// as long, up to a minute, until a pass goes through: each try may record again what it
/// could take. Rows waiting for room in a backlog are no failure.
pub async fn drain_inbox(state: Arc<AppState>, shared: Arc<SharedInbox>) {
    let mut failures = 0u32;
    let backoff = |failures: u32| (INBOX_EVERY * 2u32.pow(failures.min(7))).min(INBOX_MOST);
    let mut pause = INBOX_EVERY;
    loop {
        tokio::time::sleep(pause).await;
        if state.draining() || state.runtime.store().lost().is_some() {
            return;
        }
        match take_stored(&state, &shared).await {
            // Rows waiting for room in a backlog hold up nobody else: the next look comes as
            // soon as ever.
            Ok(()) | Err(Stuck::Full { .. }) => {
                failures = 0;
                pause = INBOX_EVERY;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the shared inbox was not taken up whole; looking again");
                failures += 1;
                pause = backoff(failures);
            }
        }
    }
}

/// Take up everything the shared inbox holds, oldest first, as if it had come in now — onto
/// the audit, into its agent's backlog — removing each once taken. What of a notification an
/// agent's full backlog cannot take now stays in its row (rewritten to hold only that), and so
/// does every later notification sharing an alert with it; the others are taken. Anything
/// else that fails stops the pass there.
async fn take_stored(state: &AppState, shared: &SharedInbox) -> Result<(), Stuck> {
    let _turn = shared.turn.lock().await;
    let inbox = &shared.inbox;
    let mut held = std::collections::HashSet::new();
    let mut why_held = None;
    let mut after = 0;
    // One look covers at most what the inbox can hold: hosts storing faster than this one
    // takes never keep a look (and an alert sent here, waiting on it) going.
    let pages = themis_agent::store::pg_inbox::INBOX_LIMIT / INBOX_PAGE + 1;
    for _ in 0..pages {
        let waiting = inbox
            .waiting(after, INBOX_PAGE)
            .await
            .map_err(|e| Stuck::Down(format!("the shared inbox could not be read: {e}")))?;
        let full = waiting.len() as i64 == INBOX_PAGE;
        for stored in waiting {
            after = stored.id;
            let redactor = state.runtime.audit().redactor().clone();
            let checked = inbox.open(&stored).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "inbox-row-refused",
                    format!("inbox row {}: {e}", stored.id),
                )
            });
            if stored.via == crate::standby::REFUSED
                && let Ok(body) = &checked
            {
                // A refusal a standby answered: recorded here, nothing to take up.
                let mut data: serde_json::Value =
                    serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
                if let Some(map) = data.as_object_mut() {
                    map.insert("stored_by".into(), "a host standing by".into());
                }
                if !record_refused(state, data).await {
                    return Err(Stuck::Down(format!(
                        "the refusal stored as inbox row {} could not be recorded",
                        stored.id
                    )));
                }
                inbox.done(stored.id).await.map_err(|e| {
                    Stuck::Down(format!(
                        "inbox row {}, a refusal recorded, could not be removed: {e}",
                        stored.id
                    ))
                })?;
                continue;
            }
            let checked = checked.and_then(|body| {
                if stored.via == crate::standby::CHECKED {
                    serde_json::from_str::<Vec<Incoming>>(&body).map_err(|e| {
                        ApiError::bad_request("", format!("inbox row {}: {e}", stored.id))
                    })
                } else {
                    // A notification stored whole (by an earlier version): checked again.
                    incoming_of(&stored.via, body.as_bytes(), &redactor)
                }
            });
            let taken = match checked {
                // Checked by the host that stored it; a newer check refuses it on the record.
                // Removed only once the refusal is on the record: else it is tried again.
                Err(refusal) => {
                    if refused(state, "inbox", &refusal).await {
                        Ok(())
                    } else {
                        Err(ApiError::unavailable("the refusal could not be recorded"))
                    }
                }
                Ok(incoming) => {
                    let alerts: Vec<String> = incoming
                        .iter()
                        .map(|i| i.alert.fingerprint.clone())
                        .collect();
                    if alerts.iter().any(|f| held.contains(f)) {
                        // An earlier notification of one of its alerts waits: so does this.
                        held.extend(alerts);
                        continue;
                    }
                    if incoming
                        .iter()
                        .any(|i| state.runtime.backlog_room(&i.alert) == Some(0))
                    {
                        // Waits for room, without a refusal on the record at every look.
                        why_held.get_or_insert_with(|| {
                            format!(
                                "inbox row {}, a notification a host standing by stored, waits for room in its agent's backlog",
                                stored.id
                            )
                        });
                        held.extend(alerts);
                        continue;
                    }
                    match take_what_fits(state, incoming).await {
                        Ok((_, refused)) if !refused.is_empty() => {
                            // What fitted is taken; the row keeps the rest, in its place.
                            let rest: Vec<Incoming> = refused.into_iter().map(|(_, i)| i).collect();
                            let body = serde_json::to_value(&rest).map_err(|e| {
                                Stuck::Down(format!("inbox row {}: {e}", stored.id))
                            })?;
                            inbox
                                .keep_only(stored.id, crate::standby::CHECKED, &body)
                                .await
                                .map_err(|e| {
                                    Stuck::Down(format!(
                                        "inbox row {}, partly taken up, could not keep the rest: {e}",
                                        stored.id
                                    ))
                                })?;
                            why_held.get_or_insert_with(|| {
                                format!(
                                    "inbox row {}, a notification a host standing by stored, waits in part for room in its agent's backlog",
                                    stored.id
                                )
                            });
                            held.extend(rest.into_iter().map(|i| i.alert.fingerprint));
                            continue;
                        }
                        other => other.map(|_| ()),
                    }
                }
            };
            taken.map_err(|e| {
                Stuck::Down(format!(
                    "inbox row {}, a notification a host standing by stored, was not taken up: {}",
                    stored.id, e.message
                ))
            })?;
            // Taken up: if the removal fails, a second take is absorbed by deduplication.
            inbox.done(stored.id).await.map_err(|e| {
                Stuck::Down(format!(
                    "inbox row {}, taken up, could not be removed: {e}",
                    stored.id
                ))
            })?;
        }
        if !full {
            break;
        }
    }
    match why_held {
        None => Ok(()),
        Some(why) => Err(Stuck::Full {
            fingerprints: held,
            why,
        }),
    }
}

/// Whether the alerts of a notification sent to the holder directly may be taken now: what
/// hosts standing by stored before it goes first, so a firing stored there never lands after
/// its own `resolved` sent here. An alert whose earlier notification waits for a full backlog
/// is answered 429, as the backlog would answer it.
async fn stored_first(state: &AppState, incoming: &[Incoming]) -> Result<(), ApiError> {
    let Some(shared) = &state.inbox else {
        return Ok(());
    };
    match take_stored(state, shared).await {
        Ok(()) => Ok(()),
        Err(Stuck::Full { fingerprints, why })
            if incoming
                .iter()
                .any(|i| fingerprints.contains(&i.alert.fingerprint)) =>
        {
            Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue-full",
                format!(
                    "an earlier notification of an alert of this one, stored by a host standing by, waits first ({why}); retry (duplicates are absorbed)"
                ),
            )
            .retry_after(5))
        }
        Err(Stuck::Full { .. }) => Ok(()),
        Err(Stuck::Down(why)) => Err(ApiError::unavailable(format!(
            "alerts a host standing by stored earlier are taken up first, and could not be: {why}; retry"
        ))
        .retry_after(1)),
    }
}

/// Authenticated, open, parsed, checked, taken: every intake endpoint's path.
async fn receive<T: serde::de::DeserializeOwned>(
    state: &AppState,
    via: &'static str,
    headers: &HeaderMap,
    raw: Result<Bytes, BytesRejection>,
    alerts: impl FnOnce(T) -> Result<Vec<Incoming>, ApiError>,
) -> Result<Json<IntakeResponse>, ApiError> {
    auth::intake(state, headers)?;
    open(state)?;
    let incoming = match body(raw).and_then(|b| parse_json::<T>(&b)).and_then(alerts) {
        Ok(incoming) => incoming,
        Err(refusal) => {
            refused(state, via, &refusal).await;
            return Err(refusal);
        }
    };
    stored_first(state, &incoming).await?;
    Ok(Json(take(state, incoming).await?))
}

/// An authenticated sender's notification that could not be taken (over the body limit, not
/// JSON, a wrong version) is alerts lost — Alertmanager does not retry a 4xx — so it is on the
/// record and counted, never only answered. Whether it is on the record.
async fn refused(state: &AppState, via: &'static str, refusal: &ApiError) -> bool {
    let recorded = record_refused(state, refusal_data(via, refusal)).await;
    if !recorded {
        tracing::error!(
            via,
            error = refusal.error,
            "an authenticated notification was refused and the refusal could not be recorded"
        );
    }
    recorded
}

/// What an `alert-refused` record says of a refusal (a standby stores the same for the holder).
pub(crate) fn refusal_data(via: &str, refusal: &ApiError) -> serde_json::Value {
    serde_json::json!({
        "via": via,
        "status": refusal.status.as_u16(),
        "error": refusal.error,
        "field": refusal.field,
        "message": refusal.message,
    })
}

/// An `alert-refused` record with `data`, counted; whether it is on the record.
async fn record_refused(state: &AppState, data: serde_json::Value) -> bool {
    state.metrics.alert(None, AlertOutcome::Refused);
    let audit = state.runtime.audit().clone();
    let written =
        tokio::task::spawn_blocking(move || audit.append("intake", None, "alert-refused", data))
            .await;
    matches!(written, Ok(Ok(_)))
}

/// Take `incoming` onto the record and into the agents' backlogs: what was taken, and the
/// alerts a full backlog refused (on the record too), in order, each with its agent.
async fn take_what_fits(
    state: &AppState,
    incoming: Vec<Incoming>,
) -> Result<(IntakeResponse, Vec<(String, Incoming)>), ApiError> {
    let runtime = state.runtime.clone();
    let metrics = state.metrics.clone();
    // The audit fsyncs: off the async threads.
    tokio::task::spawn_blocking(move || {
        let mut response = IntakeResponse {
            accepted: 0,
            unrouted: 0,
            alerts: Vec::with_capacity(incoming.len()),
        };
        let kept = incoming.clone();
        let submitted = runtime
            .submit_many(
                incoming
                    .into_iter()
                    .map(|i| (i.alert, i.status, i.source))
                    .collect(),
            )
            .map_err(runtime_error)?;
        let mut refused = Vec::new();
        for (one, submitted) in kept.into_iter().zip(submitted) {
            let taken = if one.status == AlertStatus::Resolved {
                AlertOutcome::Resolved
            } else {
                AlertOutcome::Accepted
            };
            match submitted {
                Submitted::Queued { agent } => {
                    metrics.alert(Some(&agent), taken);
                    response.accepted += 1;
                    response.alerts.push(Taken {
                        fingerprint: one.alert.fingerprint,
                        alertname: one.alert.name,
                        outcome: "queued",
                        agent: Some(agent),
                    });
                }
                Submitted::Unrouted => {
                    metrics.alert(None, AlertOutcome::Unrouted);
                    response.unrouted += 1;
                    response.alerts.push(Taken {
                        fingerprint: one.alert.fingerprint,
                        alertname: one.alert.name,
                        outcome: "unrouted",
                        agent: None,
                    });
                }
                Submitted::QueueFull { agent } => {
                    metrics.alert(Some(&agent), AlertOutcome::QueueFull);
                    refused.push((agent, one));
                }
            }
        }
        Ok((response, refused))
    })
    .await
    .map_err(|_| {
        ApiError::unavailable("the intake task failed; nothing after the failure was taken")
    })?
}

/// [`take_what_fits`], a full backlog answered 429 (what fitted was taken).
async fn take(state: &AppState, incoming: Vec<Incoming>) -> Result<IntakeResponse, ApiError> {
    let (response, refused) = take_what_fits(state, incoming).await?;
    match refused.first() {
        None => Ok(response),
        Some((agent, _)) => {
            Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue-full",
                format!(
                    "agent `{agent}`'s backlog of waiting alerts is full; the other {} alerts of this notification were taken; retry (duplicates are absorbed)",
                    response.accepted + response.unrouted
                ),
            )
            .retry_after(5))
        }
    }
}

/// Alertmanager's webhook (payload version 4). Every alert of the notification is taken,
/// however many the body limit lets in; an annotation value over the length limit is cut to it
/// (the cut marked) rather than refused, so one long description cannot lose its group.
#[utoipa::path(post, path = "/api/v1/alerts/alertmanager", tag = "intake",
    request_body = crate::alertmanager::Notification,
    security(("intake_token" = [])),
    responses(
        (status = 200, description = "every alert on the record (queued or unrouted)", body = IntakeResponse),
        (status = 400, description = "malformed body; `field` names what", body = ApiError),
        (status = 401, description = "no or unknown bearer token", body = ApiError),
        (status = 413, description = "body over the limit", body = ApiError),
        (status = 429, description = "an agent's queue is full; retry after `Retry-After` seconds", body = ApiError),
        (status = 503, description = "shutting down, or the record could not be written", body = ApiError),
    ))]
pub async fn alertmanager(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<IntakeResponse>, ApiError> {
    // No count of alerts of its own: the body limit bounds it, and refusing a large group
    // whole would lose all of it (Alertmanager does not retry a 4xx) with nothing on record.
    let redactor = state.runtime.audit().redactor();
    receive(&state, "alertmanager", &headers, raw, |n: Notification| {
        n.into_incoming_with(usize::MAX, redactor)
    })
    .await
}

/// One alert in Themis' own JSON. It is routed by its `name`; a `labels.alertname` that says
/// another name is refused (400 naming `labels.alertname`).
#[utoipa::path(post, path = "/api/v1/alerts", tag = "intake",
    request_body = crate::alertmanager::OwnAlert,
    security(("intake_token" = [])),
    responses(
        (status = 200, description = "the alert is on the record", body = IntakeResponse),
        (status = 400, description = "malformed body; `field` names what", body = ApiError),
        (status = 401, description = "no or unknown bearer token", body = ApiError),
        (status = 413, description = "body over the limit", body = ApiError),
        (status = 429, description = "an agent's queue is full; retry after `Retry-After` seconds", body = ApiError),
        (status = 503, description = "shutting down, or the record could not be written", body = ApiError),
    ))]
pub async fn own(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<IntakeResponse>, ApiError> {
    let redactor = state.runtime.audit().redactor();
    receive(&state, "own-json", &headers, raw, |a: OwnAlert| {
        Ok(vec![a.into_incoming_with(redactor)?])
    })
    .await
}
