//! The service: its shared state, the routes, how runtime errors become HTTP answers, and the
//! lifecycle (SIGTERM/SIGINT: refuse new alerts with 503, finish the requests in flight, let
//! every agent finish the command it is on and the alerts already queued, exit).

use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::events::Events;
use crate::{approvals, intake, read, slack};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};
use themis_agent::store::{ClaimError, StoreError};
use themis_agent::{Runtime, RuntimeError};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub struct AppState {
    pub runtime: Arc<Runtime>,
    pub config: Arc<ServeConfig>,
    pub events: Arc<Events>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub started: SystemTime,
    pub slack: Option<slack::SlackState>,
    /// The operator page's sessions and its last look at the audit.
    pub page: crate::page::PageState,
    draining: AtomicBool,
    /// Becomes true when the host shuts down: event streams end.
    pub stopping: watch::Receiver<bool>,
}

impl AppState {
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/v1/alerts/alertmanager", post(intake::alertmanager))
        .route("/api/v1/alerts", post(intake::own))
        .route("/api/v1/approvals", get(read::approvals))
        .route("/api/v1/approvals/{id}/approve", post(approvals::approve))
        .route("/api/v1/approvals/{id}/reject", post(approvals::reject))
        .route("/api/v1/approvals/{id}/adjust", post(approvals::adjust))
        .route("/api/v1/slack/interactions", post(slack::interactions))
        .route("/api/v1/agents", get(read::agents))
        .route("/api/v1/guard", get(read::guard))
        .route("/api/v1/guard/clear", post(approvals::guard_clear))
        .route("/api/v1/incidents", get(read::incidents))
        .route("/api/v1/incidents/{id}", get(read::incident))
        .route("/api/v1/events", get(read::events))
        .route(
            "/api/v1/openapi.json",
            get(|| async { axum::Json(crate::openapi::document()) }),
        )
        .route("/healthz", get(read::healthz))
        .route("/metrics", get(crate::metrics::scrape))
        .route("/readyz", get(read::readyz))
        .merge(crate::page::routes())
        .fallback(|| async {
            ApiError::not_found("no such endpoint; the API is under /api/v1 (see the README)")
        })
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .with_state(state)
}

pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::UnknownIncident(id) => {
            ApiError::not_found(format!("no incident or approval `{id}`"))
        }
        e @ StoreError::Tampered { .. } => ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "state-tampered",
            e.to_string(),
        ),
        e => ApiError::unavailable(format!("the incident store failed: {e}; nothing was done")),
    }
}

/// A runtime error as the caller should see it: what was refused and why, or that the host
/// could not keep its record (then nothing was done).
pub fn runtime_error(e: RuntimeError) -> ApiError {
    match e {
        RuntimeError::Claim(ClaimError::Store(s)) | RuntimeError::Store(s) => store_error(s),
        e @ RuntimeError::Claim(_) => ApiError::conflict(e.to_string()),
        e @ RuntimeError::Approval(_) => ApiError::forbidden(e.to_string()),
        e @ RuntimeError::Illegal { .. } => ApiError::conflict(e.to_string()),
        e @ RuntimeError::Agent { .. } => ApiError::not_found(e.to_string()),
        e @ (RuntimeError::Audit(_)
        | RuntimeError::Stopped(_)
        | RuntimeError::Backend(_)
        | RuntimeError::Definition(_)) => ApiError::unavailable(format!("{e}; nothing was done")),
    }
}

/// Serve until `shutdown` completes, then drain and stop the runtime.
pub async fn serve(
    config: ServeConfig,
    runtime: Runtime,
    events: Arc<Events>,
    metrics: Arc<crate::metrics::Metrics>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let slack = config
        .slack
        .as_ref()
        .map(|s| slack::SlackState::open(s, &config.state_dir));
    let slack = match slack.transpose() {
        Ok(s) => s,
        Err(e) => return Err(std::io::Error::other(e)),
    };
    let state = Arc::new(AppState {
        runtime: Arc::new(runtime),
        config: Arc::new(config),
        events,
        metrics,
        started: SystemTime::now(),
        slack,
        page: crate::page::PageState::default(),
        draining: AtomicBool::new(false),
        stopping: stop_rx,
    });
    let app = router(state.clone());
    let on_signal = state.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: new alerts are refused with 503");
            on_signal.draining.store(true, Ordering::SeqCst);
            let _ = stop_tx.send(true);
        })
        .await?;
    // The requests in flight are done; answers still running (Slack) hold the runtime a while.
    let runtime = state.runtime.clone();
    drop(state);
    let mut runtime = runtime;
    for _ in 0..1200 {
        match Arc::try_unwrap(runtime) {
            Ok(rt) => {
                rt.stop().await;
                tracing::info!(
                    "every agent finished the work in hand; the audit is on disk, and the alerts still waiting on it are taken up at the next start"
                );
                return Ok(());
            }
            Err(still_shared) => {
                runtime = still_shared;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::warn!("an answer still running after 60 s; stopping without waiting for it");
    Ok(())
}

/// SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
