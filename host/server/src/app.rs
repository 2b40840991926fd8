//! The service: its shared state, the routes, how runtime errors become HTTP answers, and the
//! lifecycle (SIGTERM/SIGINT: refuse new alerts with 503, finish the requests in flight within
//! [`DRAIN`], let every agent finish the command it is on, exit).

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
use tokio::task::JoinSet;

/// How long the requests in flight may take to finish once the service is told to stop. A
/// connection still open after it is closed: an idle or half-sent one (anyone can open one,
/// no token needed) would otherwise hold the stop, and the audit's last checkpoint, forever.
/// An answer cut off this way is not lost: the agent finishes the command it was sent.
pub const DRAIN: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers, or leave a kept-alive connection
/// idle: hyper's own default, which it only enforces when given a timer.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// What hosts standing by stored for this one, on a shared state database.
    pub inbox: Option<Arc<crate::inbox::SharedInbox>>,
}

impl AppState {
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    // The token is checked before the body is read: a client without one never gets the host
    // to buffer a body for it (the handlers check again, and take the identity from it).
    let alerts = Router::new()
        .route("/api/v1/alerts/alertmanager", post(intake::alertmanager))
        .route("/api/v1/alerts", post(intake::own))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            intake_token_first,
        ));
    let answers = Router::new()
        .route("/api/v1/approvals/{id}/approve", post(approvals::approve))
        .route("/api/v1/approvals/{id}/reject", post(approvals::reject))
        .route("/api/v1/approvals/{id}/adjust", post(approvals::adjust))
        // Its body, too, is read only for a request whose approver token is known.
        .route("/api/v1/guard/clear", post(approvals::guard_clear))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            approver_token_first,
        ));
    Router::new()
        .merge(alerts)
        .merge(answers)
        .route("/api/v1/approvals", get(read::approvals))
        // Slack's requests are checked by their signature, which needs the whole body: read
        // no more than an interaction's payload can be before anything is checked.
        .route(
            "/api/v1/slack/interactions",
            post(slack::interactions).layer(DefaultBodyLimit::max(
                state.config.body_limit.min(crate::slack::MAX_BODY),
            )),
        )
        .route("/api/v1/agents", get(read::agents))
        .route("/api/v1/guard", get(read::guard))
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
        .layer(axum::middleware::from_fn(crate::deadline::body_deadline))
        .with_state(state)
}

async fn intake_token_first(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    crate::auth::intake(&state, request.headers())?;
    Ok(next.run(request).await)
}

async fn approver_token_first(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    crate::auth::approver(&state, request.headers())?;
    Ok(next.run(request).await)
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
        e @ RuntimeError::Unfinished { .. } => ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "answer-unfinished",
            e.to_string(),
        ),
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
    inbox: Option<Arc<themis_agent::store::pg_inbox::PgInbox>>,
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
        inbox: inbox.map(|inbox| Arc::new(crate::inbox::SharedInbox::new(inbox))),
    });
    let app = router(state.clone());
    let on_signal = state.clone();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: new alerts are refused with 503");
        on_signal.draining.store(true, Ordering::SeqCst);
        let _ = stop_tx.send(true);
    };
    // What hosts standing by stored for this one (a shared state database).
    let draining_inbox = state
        .inbox
        .clone()
        .map(|inbox| tokio::spawn(crate::inbox::drain(state.clone(), inbox)));
    serve_http(listener, app, shutdown, DRAIN, HEADER_READ_TIMEOUT).await;
    if let Some(task) = draining_inbox {
        task.abort();
        let _ = task.await;
    }
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
    runtime.stop_held().await;
    Ok(())
}

/// Serve `app` on `listener` until `shutdown` completes; then stop accepting, let the requests
/// in flight finish for at most `drain`, and close the connections still open.
/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections one address may hold at once: one client (or one that never reads) cannot take
/// every slot. A reverse proxy in front is one address: it pools its connections.
pub const MAX_PER_PEER: usize = 256;
/// How long a response may make no progress (its client not reading) before the connection is
/// closed: header and body reads have their deadlines; a write needs one too, or a client that
/// sends requests and never reads the answers holds its slot for ever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections held per address, and the release of one when its task ends.
#[derive(Clone, Default)]
struct Peers(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

struct PeerSlot {
    peers: Peers,
    ip: std::net::IpAddr,
}

impl Peers {
    /// A slot for `ip`, or none when it holds [`MAX_PER_PEER`] already.
    fn take(&self, ip: std::net::IpAddr) -> Option<PeerSlot> {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(ip).or_insert(0);
        if *n >= MAX_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self.peers.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

pub async fn serve_http(
    listener: TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
    header_timeout: Duration,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let peers = Peers::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // Past the cap, new connections wait in the kernel's queue until one ends: open
            // connections cost memory whoever holds them, and most need no token to open.
            accepted = listener.accept(), if connections.len() < MAX_CONNECTIONS => match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = peers.take(peer.ip()) else {
                        // Closed at once: waiting in the queue it would hold up everyone else.
                        tracing::debug!(peer = %peer.ip(), "a connection over the per-address cap is closed");
                        continue;
                    };
                    let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
                    stream.set_write_timeout(Some(WRITE_TIMEOUT));
                    let conn = http.serve_connection(
                        TokioIo::new(Box::pin(stream)),
                        TowerToHyperService::new(app.clone()),
                    );
                    let mut stop = stop_rx.clone();
                    connections.spawn(async move {
                        let _slot = slot;
                        let mut conn = std::pin::pin!(conn);
                        tokio::select! {
                            _ = conn.as_mut() => return,
                            _ = stop.wait_for(|stop| *stop) => {}
                        }
                        // Idle connections close now, busy ones after their response.
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors, typically: let some connections end first
                    // rather than spin on the error.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Finished connections are collected as they go, or the set would grow forever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "{} connection(s) still open {} after the stop: closing them",
            connections.len(),
            humantime::format_duration(drain)
        );
        connections.shutdown().await;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Instant;

    /// A service answering `GET /` on loopback through `serve_http`; send () to stop it.
    async fn started(
        drain: Duration,
        header_timeout: Duration,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().route("/", get(|| async { "ok" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve_http(
            listener,
            app,
            async move {
                let _ = stopped.await;
            },
            drain,
            header_timeout,
        ));
        (addr, stop, served)
    }

    /// A connection that sent half a request's headers, then nothing.
    fn half_sent(addr: std::net::SocketAddr) -> std::net::TcpStream {
        let mut c = std::net::TcpStream::connect(addr).expect("connect");
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .expect("write");
        c
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_stop_waits_for_idle_and_half_sent_connections_no_longer_than_the_drain() {
        let (addr, stop, served) =
            started(Duration::from_millis(500), Duration::from_secs(600)).await;
        // A whole request is served, its connection left open and idle.
        let mut idle = std::net::TcpStream::connect(addr).expect("connect");
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut answer = [0u8; 64];
        let n = idle.read(&mut answer).expect("read");
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{answer:?}");
        let _half = half_sent(addr);
        let _silent = std::net::TcpStream::connect(addr).expect("connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let asked = Instant::now();
        stop.send(()).expect("stop");
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("stopped within the drain, whatever the clients do")
            .expect("no panic");
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "{:?}",
            asked.elapsed()
        );
    }

    /// One address holds at most `MAX_PER_PEER` connections: one more is closed at once (not
    /// queued behind the others), and a slot given back is taken again.
    #[tokio::test(flavor = "multi_thread")]
    async fn one_address_cannot_take_every_connection() {
        let (addr, _stop, _served) =
            started(Duration::from_millis(500), Duration::from_secs(600)).await;
        let held: Vec<std::net::TcpStream> = (0..MAX_PER_PEER)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        // Each is accepted before the next is judged: give the loop time to take them all.
        let ask = |addr| {
            tokio::task::spawn_blocking(move || {
                let mut c = std::net::TcpStream::connect(addr).expect("connect");
                c.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut all = Vec::new();
                let _ = c.read_to_end(&mut all);
                String::from_utf8_lossy(&all).into_owned()
            })
        };
        let mut refused = String::from("HTTP/1.1 200");
        for _ in 0..50 {
            refused = ask(addr).await.expect("asked");
            if refused.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            refused, "",
            "one connection over the cap is closed unanswered"
        );
        drop(held);
        let mut served = String::new();
        for _ in 0..50 {
            served = ask(addr).await.expect("asked");
            if served.starts_with("HTTP/1.1 200") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(served.starts_with("HTTP/1.1 200"), "{served:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_long_response_such_as_an_event_stream_outlasts_the_header_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().route(
            "/",
            get(|| async {
                let ticks = tokio_stream::StreamExt::map(
                    tokio_stream::StreamExt::take(
                        tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(
                            Duration::from_millis(100),
                        )),
                        10,
                    ),
                    |_| Ok::<_, std::convert::Infallible>("tick\n"),
                );
                axum::body::Body::from_stream(ticks)
            }),
        );
        tokio::spawn(serve_http(
            listener,
            app,
            std::future::pending(),
            Duration::from_secs(10),
            Duration::from_millis(200),
        ));
        let body = tokio::task::spawn_blocking(move || {
            let mut c = std::net::TcpStream::connect(addr).expect("connect");
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .expect("write");
            let mut all = Vec::new();
            c.read_to_end(&mut all).expect("read");
            String::from_utf8_lossy(&all).into_owned()
        })
        .await
        .expect("reader");
        assert_eq!(body.matches("tick").count(), 10, "{body}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_client_slow_to_send_its_headers_is_cut_off() {
        let (addr, _stop, _served) =
            started(Duration::from_secs(10), Duration::from_millis(300)).await;
        let mut half = half_sent(addr);
        half.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let began = Instant::now();
        let closed = tokio::task::spawn_blocking(move || {
            let mut rest = Vec::new();
            half.read_to_end(&mut rest).map(|_| rest)
        })
        .await
        .expect("reader");
        // Closed (an EOF, perhaps after a 408, or a reset), not left hanging until the read timeout.
        if let Err(e) = &closed {
            assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
        }
        assert!(
            began.elapsed() < Duration::from_secs(4),
            "{:?}",
            began.elapsed()
        );
    }
}
