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
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use themis_agent::audit::Record;
use themis_agent::store::{Filter, IncidentStatus};
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};

/// The most incidents one list returns, and the most timeline records.
pub const MAX_LIST: usize = 1000;
pub const DEFAULT_LIST: usize = 100;
pub const MAX_TIMELINE: usize = 2000;

/// What a timeline shows: the newest `MAX_TIMELINE` records within 16 MiB of their data.
pub const TIMELINE: themis_agent::audit::Newest = themis_agent::audit::Newest {
    records: MAX_TIMELINE,
    bytes: 16 << 20,
};

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentStatus {
    pub name: String,
    pub domain: String,
    /// `live`, or `dry-run`: shadow mode, every mutation recorded as "would do" and not done.
    pub mode: &'static str,
    /// The state machine's state: `{"state": "idle"}`, `{"state": "executing-runbook", "incident": …, "runbook": …, "step": …, "phase": …}`, …
    #[schema(value_type = Object)]
    pub state: Value,
    /// When it entered this state, if it moved since the service started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Catalog runbooks this start could not fetch (an OCI bundle with the registry down and
    /// nothing cached): id → why. Choosing one escalates.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub unavailable: BTreeMap<String, String>,
    /// Accepted alerts waiting (on disk) for the agent to take them up.
    pub backlog: u64,
    /// The host that leads this agent when hosts share the state (host name, pid, state
    /// directory): this one — a host standing by passes reads on to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub led_by: Option<String>,
}

/// Each agent's state now and since when.
/// A target one run holds now.
#[derive(Debug, Serialize, ToSchema)]
pub struct BusyTarget {
    pub target: String,
    pub agent: String,
    pub incident: String,
    pub runbook: String,
    pub since: String,
}

/// An open circuit breaker: automatic runs of `runbook` on `target` wait for a human.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenBreaker {
    pub target: String,
    pub runbook: String,
    pub opened: String,
    pub until: String,
    pub why: String,
}

/// A (target, runbook) pair's recent runs, newest last.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecentRuns {
    pub target: String,
    pub runbook: String,
    /// `ok` or `failed` per run, oldest first.
    pub outcomes: Vec<String>,
    pub last: String,
}

/// What the guard rails hold now.
#[derive(Debug, Serialize, ToSchema)]
pub struct GuardStatus {
    pub busy: Vec<BusyTarget>,
    pub breakers: Vec<OpenBreaker>,
    pub recent: Vec<RecentRuns>,
}

fn at(secs: u64) -> String {
    time(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// The guard rails' book as the API shows it: busy targets, open breakers, recent runs.
pub fn guard_status(book: &themis_core::guard::GuardBook, now: u64) -> GuardStatus {
    let split = |key: &str| -> (String, String) {
        match key.split_once(" · ") {
            Some((t, r)) => (t.to_owned(), r.to_owned()),
            None => (key.to_owned(), String::new()),
        }
    };
    GuardStatus {
        busy: book
            .busy
            .iter()
            .map(|(target, b)| BusyTarget {
                target: target.clone(),
                agent: b.agent.clone(),
                incident: b.incident.clone(),
                runbook: b.runbook.clone(),
                since: at(b.since),
            })
            .collect(),
        breakers: book
            .breakers
            .values()
            .filter(|b| b.until > now)
            .map(|b| OpenBreaker {
                target: b.target.clone(),
                runbook: b.runbook.clone(),
                opened: at(b.opened),
                until: at(b.until),
                why: b.why.clone(),
            })
            .collect(),
        recent: book
            .history
            .iter()
            .filter_map(|(key, runs)| {
                let (target, runbook) = split(key);
                runs.back().map(|last| RecentRuns {
                    target,
                    runbook,
                    outcomes: runs
                        .iter()
                        .map(|r| if r.ok { "ok" } else { "failed" }.to_owned())
                        .collect(),
                    last: at(last.at),
                })
            })
            .collect(),
    }
}

#[utoipa::path(get, path = "/api/v1/guard", tag = "read",
    security(("approver_token" = []), ("intake_token" = [])),
    responses((status = 200, body = GuardStatus), (status = 401, description = "no or unknown token", body = ApiError),))]
pub async fn guard(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<GuardStatus>, ApiError> {
    auth::reader(&state, &headers)?;
    let book = state.runtime.guard_book().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(Json(guard_status(&book, now)))
}

#[utoipa::path(get, path = "/api/v1/agents", tag = "read",
    security(("approver_token" = []), ("intake_token" = [])),
    responses((status = 200, body = Vec<AgentStatus>), (status = 401, description = "no or unknown token", body = ApiError),))]
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
                let unavailable = state
                    .runtime
                    .agents()
                    .iter()
                    .find(|g| g.def.name == a.name)
                    .map(|g| g.unavailable.clone())
                    .unwrap_or_default();
                AgentStatus {
                    state: serde_json::to_value(&a.state).unwrap_or(Value::Null),
                    name: a.name,
                    domain: a.domain,
                    mode: if a.dry_run { "dry-run" } else { "live" },
                    since,
                    unavailable,
                    backlog: a.backlog,
                    led_by: state.runtime.store().holder(),
                }
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct IncidentQuery {
    /// Only incidents in this status.
    #[serde(default)]
    status: Option<IncidentStatus>,
    /// Only this agent's incidents.
    #[serde(default)]
    agent: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IncidentList {
    pub incidents: Vec<IncidentView>,
    /// Incidents the store could not trust (changed outside Themis, unreadable).
    pub unreadable: usize,
}

/// Incidents, newest first.
#[utoipa::path(get, path = "/api/v1/incidents", tag = "read", params(IncidentQuery),
    security(("approver_token" = []), ("intake_token" = [])),
    responses((status = 200, body = IncidentList),
        (status = 400, description = "a query parameter does not fit", body = ApiError), (status = 401, description = "no or unknown token", body = ApiError),
        (status = 503, description = "the store could not be read", body = ApiError)))]
pub async fn incidents(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<IncidentQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<IncidentList>, ApiError> {
    auth::reader(&state, &headers)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
    let limit = match q.limit {
        None => DEFAULT_LIST,
        Some(n) if (1..=MAX_LIST as u64).contains(&n) => n as usize,
        Some(_) => {
            return Err(ApiError::bad_request(
                "limit",
                format!("between 1 and {MAX_LIST}"),
            ));
        }
    };
    let filter = Filter {
        status: q.status,
        agent: q.agent.clone(),
    };
    let (newest, problems) = state
        .runtime
        .store()
        .recent(&filter, limit)
        .await
        .map_err(store_error)?;
    let incidents = newest.iter().map(IncidentView::of).collect();
    Ok(Json(IncidentList {
        incidents,
        unreadable: problems.len(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IncidentDetail {
    #[serde(flatten)]
    pub incident: IncidentView,
    /// The incident's audit records, oldest first: the newest MAX_TIMELINE, within 16 MiB of
    /// their data.
    #[schema(value_type = Vec<Object>)]
    pub timeline: Vec<Record>,
    /// Records of this incident whose hash did not verify: left out, counted.
    pub altered_records: usize,
}

/// One incident and its timeline from the audit.
#[utoipa::path(get, path = "/api/v1/incidents/{id}", tag = "read",
    params(("id" = String, Path, description = "incident id, inc-…")),
    security(("approver_token" = []), ("intake_token" = [])),
    responses((status = 200, body = IncidentDetail), (status = 401, description = "no or unknown token", body = ApiError),
        (status = 404, description = "no such incident", body = ApiError),
        (status = 409, description = "the incident's state file was changed outside Themis", body = ApiError),
        (status = 429, description = "other incidents' records are being read; retry after `Retry-After` seconds", body = ApiError),
        (status = 503, description = "the store or the audit could not be read", body = ApiError)))]
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
    let (timeline, altered) = timeline(&state, &incident).await?;
    Ok(Json(IncidentDetail {
        incident: IncidentView::of(&incident),
        timeline,
        altered_records: altered,
    }))
}

/// Timelines read at once: each reads and checks the audit from the incident's opening on,
/// which on a large audit is seconds of CPU; any client with a token may ask, and the agents
/// share the cores.
static TIMELINES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// An incident's records from the audit (the newest [`TIMELINE`]) and how many were altered;
/// a 429 while [`TIMELINES`] are being read already.
pub(crate) async fn timeline(
    state: &AppState,
    incident: &themis_agent::store::Incident,
) -> Result<(Vec<themis_agent::audit::Record>, usize), ApiError> {
    let Ok(_reading) = TIMELINES.try_acquire() else {
        return Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "other incidents' records are being read from the audit; retry in a moment",
        )
        .retry_after(1));
    };
    let audit = state.runtime.audit().clone();
    let (wanted, from) = (incident.id.clone(), incident.opened_seq);
    tokio::task::spawn_blocking(move || audit.incident_records(&wanted, from, TIMELINE))
        .await
        .map_err(|_| ApiError::unavailable("reading the audit failed"))?
        .map_err(|e| ApiError::unavailable(format!("reading the audit: {e}")))
}

/// Plans waiting for a human, with the digest to approve.
#[utoipa::path(get, path = "/api/v1/approvals", tag = "read",
    security(("approver_token" = []), ("intake_token" = [])),
    responses((status = 200, body = Vec<ApprovalView>), (status = 401, description = "no or unknown token", body = ApiError),
        (status = 503, description = "the store could not be read", body = ApiError)))]
pub async fn approvals(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<ApprovalView>>, ApiError> {
    auth::reader(&state, &headers)?;
    let pending = Filter {
        status: Some(IncidentStatus::PendingApproval),
        agent: None,
    };
    let (newest, _) = state
        .runtime
        .store()
        .recent(&pending, MAX_LIST)
        .await
        .map_err(store_error)?;
    Ok(Json(newest.iter().filter_map(ApprovalView::of).collect()))
}

/// Server-Sent Events: every transition, phase and escalation. Ends when the host shuts down.
#[utoipa::path(get, path = "/api/v1/events", tag = "read",
    security(("approver_token" = []), ("intake_token" = [])),
    responses((status = 200, description = "`event: transition|phase|escalation|lagged`, `data:` one JSON object", content_type = "text/event-stream", body = String), (status = 401, description = "no or unknown token", body = ApiError), (status = 429, description = "as many event streams are open as the host serves; retry after `Retry-After` seconds", body = ApiError)))]
pub async fn events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let kind = auth::reader_kind(&state, &headers)?;
    let Some(subscription) = state.events.subscribe(kind == auth::ReaderKind::Approver) else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-streams",
            match kind {
                auth::ReaderKind::Approver => format!(
                    "{} event streams are open already, the most this host serves; close one, or retry",
                    crate::events::MAX_STREAMS
                ),
                auth::ReaderKind::Reader => format!(
                    "{} event streams are open to readers already, the most this host serves them ({} more are kept for approvers); close one, or retry",
                    crate::events::MAX_STREAMS - crate::events::APPROVER_STREAMS,
                    crate::events::APPROVER_STREAMS
                ),
            },
        )
        .retry_after(5));
    };
    let stop = state.stopping.clone();
    let stream =
        futures_util::stream::unfold((subscription, stop), |(mut sub, mut stop)| async move {
            let event = tokio::select! {
                _ = stop.wait_for(|s| *s) => None,
                got = sub.rx.recv() => match got {
                    Ok(e) => Some(sse(&e)),
                    Err(RecvError::Lagged(n)) => Some(
                        Event::default()
                            .event("lagged")
                            .data(format!("{{\"missed\":{n}}}")),
                    ),
                    Err(RecvError::Closed) => None,
                },
            };
            event.map(|e| (Ok(e), (sub, stop)))
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn sse(e: &StreamEvent) -> Event {
    Event::default()
        .event(e.kind)
        .data(serde_json::to_string(e).unwrap_or_default())
}

/// Alive.
#[utoipa::path(get, path = "/healthz", tag = "probes",
    responses((status = 200, description = "alive", content_type = "text/plain", body = String)))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
    pub agents: usize,
    pub audit_writable: bool,
    pub shutting_down: bool,
    /// Why the host may no longer write its state: another host took the state database over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_lost: Option<String>,
}

/// Ready when the agents are loaded, the host is not shutting down, the audit log can be
/// written to, and no other host took its state database over.
#[utoipa::path(get, path = "/readyz", tag = "probes",
    responses((status = 200, description = "ready", body = Ready),
        (status = 503, description = "not ready: see the fields", body = Ready)))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Ready>) {
    let path = state.runtime.audit().path().to_path_buf();
    // A log that failed closed takes no record, whatever its file's permissions.
    let writable = state.runtime.audit().closed_by().is_none()
        && std::fs::OpenOptions::new().append(true).open(&path).is_ok();
    let draining = state.draining();
    let store_lost = state.runtime.store().lost();
    let ok = writable && !draining && store_lost.is_none();
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(Ready {
            ready: ok,
            agents: state.runtime.states().len(),
            audit_writable: writable,
            shutting_down: draining,
            store_lost,
        }),
    )
}
