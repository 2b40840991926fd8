//! The read API: agents, incidents (with their timeline from the audit), pending approvals, the
//! event stream, and the probes `/healthz` and `/readyz`.

use crate::app::{AppState, store_error};
use crate::auth;
use crate::error::ApiError;
use crate::events::StreamEvent;
use crate::views::{ApprovalView, IncidentView, time};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::convert::Infallible;
use std::sync::Arc;
use themis_agent::audit::Record;
use themis_agent::store::IncidentStatus;
use tokio::sync::broadcast::error::RecvError;

/// The most incidents one list returns, and the most timeline records.
pub const MAX_LIST: usize = 1000;
pub const DEFAULT_LIST: usize = 100;
pub const MAX_TIMELINE: usize = 2000;

#[derive(Debug, Serialize)]
pub struct AgentStatus {
    pub name: String,
    pub domain: String,
    pub state: Value,
    /// When it entered this state, if it moved since the service started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

pub async fn agents(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<AgentStatus>>, ApiError> {
    auth::reader(&state, &headers)?;
    Ok(Json(
        state
            .runtime
            .states()
            .into_iter()
            .map(|a| {
                let since = state
                    .events
                    .since(&a.name)
                    .filter(|s| s.state == a.state)
                    .map(|s| time(s.since))
                    .or_else(|| Some(time(state.started)));
                AgentStatus {
                    state: serde_json::to_value(&a.state).unwrap_or(Value::Null),
                    name: a.name,
                    domain: a.domain,
                    since,
                }
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentQuery {
    #[serde(default)]
    status: Option<IncidentStatus>,
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct IncidentList {
    pub incidents: Vec<IncidentView>,
    /// Incidents the store could not trust (changed outside Themis, unreadable).
    pub unreadable: usize,
}

pub async fn incidents(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<IncidentQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<IncidentList>, ApiError> {
    auth::reader(&state, &headers)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_LIST).clamp(1, MAX_LIST);
    let (all, problems) = state.runtime.store().scan().await.map_err(store_error)?;
    let incidents = all
        .iter()
        .rev()
        .filter(|i| q.status.is_none_or(|s| i.status == s))
        .filter(|i| q.agent.as_deref().is_none_or(|a| i.agent == a))
        .take(limit)
        .map(IncidentView::of)
        .collect();
    Ok(Json(IncidentList {
        incidents,
        unreadable: problems.len(),
    }))
}

#[derive(Debug, Serialize)]
pub struct IncidentDetail {
    #[serde(flatten)]
    pub incident: IncidentView,
    /// The incident's audit records, oldest first (the last MAX_TIMELINE).
    pub timeline: Vec<Record>,
    /// Records of this incident whose hash did not verify: left out, counted.
    pub altered_records: usize,
}

pub async fn incident(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<IncidentDetail>, ApiError> {
    auth::reader(&state, &headers)?;
    if !(id.starts_with("inc-")
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    {
        return Err(ApiError::not_found(format!(
            "`{id}` is not an incident id (inc-…)"
        )));
    }
    let incident = state.runtime.store().get(&id).await.map_err(store_error)?;
    let audit = state.runtime.audit().clone();
    let wanted = id.clone();
    let (timeline, altered) = tokio::task::spawn_blocking(move || {
        audit.find(
            |r| r.incident.as_deref() == Some(wanted.as_str()),
            MAX_TIMELINE,
        )
    })
    .await
    .map_err(|_| ApiError::unavailable("reading the audit failed"))?
    .map_err(|e| ApiError::unavailable(format!("reading the audit: {e}")))?;
    Ok(Json(IncidentDetail {
        incident: IncidentView::of(&incident),
        timeline,
        altered_records: altered,
    }))
}

pub async fn approvals(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<ApprovalView>>, ApiError> {
    auth::reader(&state, &headers)?;
    let (all, _) = state.runtime.store().scan().await.map_err(store_error)?;
    Ok(Json(
        all.iter()
            .filter(|i| i.status == IncidentStatus::PendingApproval)
            .filter_map(ApprovalView::of)
            .take(MAX_LIST)
            .collect(),
    ))
}

/// Server-Sent Events: every transition, phase and escalation. Ends when the host shuts down.
pub async fn events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    auth::reader(&state, &headers)?;
    let rx = state.events.subscribe();
    let stop = state.stopping.clone();
    let stream = futures_util::stream::unfold((rx, stop), |(mut rx, mut stop)| async move {
        let event = tokio::select! {
            _ = stop.wait_for(|s| *s) => None,
            got = rx.recv() => match got {
                Ok(e) => Some(sse(&e)),
                Err(RecvError::Lagged(n)) => Some(
                    Event::default()
                        .event("lagged")
                        .data(format!("{{\"missed\":{n}}}")),
                ),
                Err(RecvError::Closed) => None,
            },
        };
        event.map(|e| (Ok(e), (rx, stop)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn sse(e: &StreamEvent) -> Event {
    Event::default()
        .event(e.kind)
        .data(serde_json::to_string(e).unwrap_or_default())
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the agents are loaded, the host is not shutting down, and the audit log can be
/// written to.
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let path = state.runtime.audit().path().to_path_buf();
    let writable = std::fs::OpenOptions::new().append(true).open(&path).is_ok();
    let draining = state.draining();
    let ok = writable && !draining;
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(serde_json::json!({
            "ready": ok,
            "agents": state.runtime.states().len(),
            "audit_writable": writable,
            "shutting_down": draining,
        })),
    )
}
