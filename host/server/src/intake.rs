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

/// Authenticated, open, parsed, checked, taken: every intake endpoint's path.
async fn receive<T: serde::de::DeserializeOwned>(
    state: &Arc<AppState>,
    via: &'static str,
    headers: &HeaderMap,
    raw: Result<Bytes, BytesRejection>,
    alerts: impl FnOnce(T) -> Result<Vec<Incoming>, ApiError>,
) -> Result<Json<IntakeResponse>, ApiError> {
    auth::intake(state, headers)?;
    open(state)?;
    let bytes = match body(raw) {
        Ok(bytes) => bytes,
        Err(refusal) => {
            refused(state, via, &refusal).await;
            return Err(refusal);
        }
    };
    let incoming = match parse_json::<T>(&bytes).and_then(alerts) {
        Ok(incoming) => incoming,
        Err(refusal) => {
            let recorded = record_refused(state, refusal_data_of(via, &refusal, &bytes)).await;
            if !recorded {
                tracing::error!(
                    via,
                    error = refusal.error,
                    "an authenticated notification was refused and the refusal could not be recorded"
                );
            }
            return Err(refusal);
        }
    };
    let waiting = crate::inbox::stored_first(state, &incoming).await?;
    let Some(why) = waiting.values().next() else {
        return Ok(Json(take(state, incoming).await?));
    };
    // The alerts an earlier stored notification of which waits are not taken before it; the
    // others are.
    let held = incoming
        .iter()
        .filter(|i| waiting.contains_key(&i.alert.fingerprint))
        .count();
    let free: Vec<Incoming> = incoming
        .into_iter()
        .filter(|i| !waiting.contains_key(&i.alert.fingerprint))
        .collect();
    let taken = if free.is_empty() {
        0
    } else {
        let taken = take(state, free).await?;
        taken.accepted + taken.unrouted
    };
    Err(ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "queue-full",
        format!(
            "{held} alerts of this notification have an earlier notification, stored by a host standing by, that is taken up first ({why}); the other {taken} were taken; retry (duplicates are absorbed)"
        ),
    )
    .retry_after(5))
}

/// An authenticated sender's notification that could not be taken (over the body limit, not
/// JSON, a wrong version) is alerts lost — Alertmanager does not retry a 4xx — so it is on the
/// record and counted, never only answered. Whether it is on the record.
pub(crate) async fn refused(state: &AppState, via: &'static str, refusal: &ApiError) -> bool {
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

/// The most alerts a refusal's record names one by one.
const MAX_LOST_NAMED: usize = 100;

/// [`refusal_data`] naming the alerts the refused notification `body` held (its alertname and
/// fingerprint, each bounded; the first [`MAX_LOST_NAMED`] and how many in all): a notification
/// refused whole for one bad alert loses its good ones too, and the record says which.
pub(crate) fn refusal_data_of(via: &str, refusal: &ApiError, body: &[u8]) -> serde_json::Value {
    let mut data = refusal_data(via, refusal);
    let alerts = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| match v {
            serde_json::Value::Object(mut map) => match map.remove("alerts") {
                Some(serde_json::Value::Array(alerts)) => Some(alerts),
                // Themis' own JSON: the one alert is the body.
                _ if via == "own-json" => Some(vec![serde_json::Value::Object(map)]),
                _ => None,
            },
            _ => None,
        });
    if let Some(alerts) = alerts {
        let text = |v: Option<&serde_json::Value>, max: usize| {
            v.and_then(|v| v.as_str())
                .map(|s| s.chars().take(max).collect::<String>())
        };
        let named: Vec<serde_json::Value> = alerts
            .iter()
            .take(MAX_LOST_NAMED)
            .map(|a| {
                let name = text(a.pointer("/labels/alertname"), 256).or_else(|| text(a.get("name"), 256));
                serde_json::json!({ "alertname": name, "fingerprint": text(a.get("fingerprint"), 128) })
            })
            .collect();
        data["lost"] = serde_json::json!({ "count": alerts.len(), "alerts": named });
    }
    data
}

/// An `alert-refused` record with `data`, counted; whether it is on the record.
pub(crate) async fn record_refused(state: &AppState, data: serde_json::Value) -> bool {
    state.metrics.alert(None, AlertOutcome::Refused);
    let audit = state.runtime.audit().clone();
    let written =
        tokio::task::spawn_blocking(move || audit.append("intake", None, "alert-refused", data))
            .await;
    matches!(written, Ok(Ok(_)))
}

/// Take `incoming` onto the record and into the agents' backlogs: what was taken, and the
/// alerts a full backlog refused (on the record too), in order, each with its agent.
pub(crate) async fn take_what_fits(
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
    let truncated = std::sync::atomic::AtomicU64::new(0);
    let answer = receive(&state, "alertmanager", &headers, raw, |n: Notification| {
        truncated.store(n.truncated(), std::sync::atomic::Ordering::Relaxed);
        n.into_incoming_with(usize::MAX, redactor)
    })
    .await;
    // Alerts Alertmanager held back (its receiver's `max_alerts`) never reach any record of
    // their own: the notification that says so is on the record, or nobody would know.
    // Only for a notification taken (its count checked; a refused or retried one is not
    // recorded twice).
    let held_back = truncated.load(std::sync::atomic::Ordering::Relaxed);
    if held_back > 0 && answer.is_ok() {
        let audit = state.runtime.audit().clone();
        let data = serde_json::json!({
            "via": "alertmanager",
            "count": held_back,
            "message": "Alertmanager held these alerts back from the notification (the receiver's max_alerts); they were never sent here: raise max_alerts or lower the group's size",
        });
        let written = tokio::task::spawn_blocking(move || {
            audit.append("intake", None, "alerts-truncated", data)
        })
        .await;
        if !matches!(written, Ok(Ok(_))) {
            tracing::error!(
                held_back,
                "a notification's held-back alerts could not be recorded"
            );
        }
    }
    answer
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
