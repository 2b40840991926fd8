//! The `postgres.*` capabilities against a real PostgreSQL server, through a small sqlx pool.
//!
//! Every query is a constant statement with bound parameters: a pid or a threshold is never
//! spliced into SQL. Each statement runs under the server-side `statement_timeout` *and* a
//! client-side deadline, so a dead network is an `unavailable` error, never a hang. Reads are
//! retried with backoff on connection errors; mutations never are (a retried terminate could act
//! on a reused pid).
//!
//! Least privilege: the role Themis connects as needs `pg_monitor` (to see every session's query
//! and the replication view) and `pg_signal_backend` (to cancel and terminate), nothing else.
//! [`PostgresBackend::doctor`] says which of them is missing.

pub mod queries;
mod settings;

pub use settings::{PostgresSettings, TlsMode, url_has_password};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Row};
use std::future::Future;
use std::time::Duration;
use themis_caps::PostgresCaps;
use themis_caps::types::{Backend, CapError, CapResult, ConnectionSlots, LockWait, Replica};

/// The `application_name` prefix of every Themis connection: its own sessions are never listed
/// as activity and never cancelled or terminated, by this process or another Themis.
pub const APPLICATION_PREFIX: &str = "themis:";

/// How often a read is tried when the connection fails (the first try included).
const READ_ATTEMPTS: u32 = 3;
/// The first backoff between read attempts; it doubles.
const READ_BACKOFF: Duration = Duration::from_millis(100);

/// The PostgreSQL backend of one agent.
pub struct PostgresBackend {
    pool: PgPool,
    settings: PostgresSettings,
    /// Client-side deadline for one statement: the server's timeout plus a margin for the
    /// round trip, so the server's own error normally wins.
    deadline: Duration,
}

/// What a pid is, as far as signalling it goes.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// A client backend of the configured database that may be signalled.
    Allowed,
    /// No such backend: it ended (or never was).
    Gone,
    Refused(String),
}

impl PostgresBackend {
    /// A backend whose pool connects lazily: an unreachable server fails calls, not the start.
    /// Must be called within a tokio runtime (the pool's maintenance task lives there).
    pub fn new(agent: &str, settings: PostgresSettings) -> Result<Self, String> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err("a PostgreSQL backend needs a running tokio runtime".into());
        }
        let options = settings.connect_options(&format!("{APPLICATION_PREFIX}{agent}"))?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.pool)
            .acquire_timeout(settings.connect_timeout)
            .connect_lazy_with(options);
        let deadline = settings.statement_timeout + Duration::from_secs(2);
        Ok(PostgresBackend {
            pool,
            settings,
            deadline,
        })
    }

    /// The pool, for checks and benches that issue their own statements.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Connect and say who Themis is on the server and which privileges it lacks.
    pub async fn doctor(&self) -> Result<Doctor, String> {
        let row = self
            .bounded(sqlx::query(queries::DOCTOR).fetch_one(&self.pool))
            .await
            .map_err(|e| e.into_cap("connect").to_string())?;
        let get = |name: &str| -> Result<bool, String> {
            row.try_get::<bool, _>(name).map_err(|e| e.to_string())
        };
        let mut missing = Vec::new();
        let superuser = get("superuser")?;
        if !superuser {
            if !get("monitor")? {
                missing.push("pg_monitor".to_owned());
            }
            if !get("signal")? {
                missing.push("pg_signal_backend".to_owned());
            }
        }
        Ok(Doctor {
            user: row.try_get("usr").map_err(|e| e.to_string())?,
            database: row.try_get("db").map_err(|e| e.to_string())?,
            server_version: row.try_get("version").map_err(|e| e.to_string())?,
            superuser,
            missing,
        })
    }

    /// One statement under the client-side deadline.
    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, CallError> {
        match tokio::time::timeout(self.deadline, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CallError::from(e)),
            Err(_) => Err(CallError::Connection(format!(
                "no answer from PostgreSQL within {} ms",
                self.deadline.as_millis()
            ))),
        }
    }

    /// A read, retried with backoff while the connection is what fails.
    async fn read<T, F, Fut>(&self, what: &str, f: F) -> CapResult<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let mut backoff = READ_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.bounded(f()).await {
                Ok(v) => return Ok(v),
                Err(CallError::Connection(why)) if attempt < READ_ATTEMPTS => {
                    tracing::warn!(capability = what, attempt, %why, "PostgreSQL read failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(e.into_cap(what)),
            }
        }
    }

    /// May `pid` be signalled? Refused: not a client backend of the configured database, a
    /// Themis connection, or (when the settings say so) a superuser's session.
    async fn target(&self, pid: i32, what: &str) -> CapResult<Target> {
        if pid <= 0 {
            return Err(CapError::InvalidArgument(format!(
                "pid {pid} is not a backend pid (it must be positive)"
            )));
        }
        let row = self
            .bounded(
                sqlx::query(queries::TARGET)
                    .bind(pid)
                    .fetch_optional(&self.pool),
            )
            .await
            .map_err(|e| e.into_cap(what))?;
        let Some(row) = row else {
            return Ok(Target::Gone);
        };
        let text = |name: &str| row.try_get::<Option<String>, _>(name).ok().flatten();
        let flag = |name: &str| {
            row.try_get::<Option<bool>, _>(name)
                .ok()
                .flatten()
                .unwrap_or(false)
        };
        let Some(backend_type) = text("backend_type") else {
            // PostgreSQL hides other roles' sessions from a role without pg_monitor.
            return Ok(Target::Refused(format!(
                "pid {pid}'s session is hidden from Themis' role: grant it pg_monitor and pg_signal_backend"
            )));
        };
        let application = text("application_name").unwrap_or_default();
        let database = text("datname");
        Ok(if backend_type != "client backend" {
            Target::Refused(format!(
                "pid {pid} is a `{backend_type}` process, not a client session"
            ))
        } else if !flag("same_db") {
            Target::Refused(format!(
                "pid {pid} is connected to database `{}`, not to the configured one",
                database.unwrap_or_default()
            ))
        } else if flag("own") || application.starts_with(APPLICATION_PREFIX) {
            Target::Refused(format!("pid {pid} is Themis' own connection"))
        } else if self.settings.refuse_superuser_sessions && flag("superuser") {
            Target::Refused(format!(
                "pid {pid} is a superuser's session (refuse_superuser_sessions: true)"
            ))
        } else {
            Target::Allowed
        })
    }

    /// Signal `pid` with `statement` once (never retried); the statement repeats the target's
    /// conditions so a pid that changed hands between the check and the signal is not touched.
    async fn signal(
        &self,
        pid: i32,
        statement: &'static str,
        wait: Option<Duration>,
        what: &str,
    ) -> CapResult<bool> {
        match self.target(pid, what).await? {
            Target::Gone => return Ok(false),
            Target::Refused(why) => return Err(CapError::Denied(why)),
            Target::Allowed => {}
        }
        let mut query = sqlx::query_scalar(statement).bind(pid);
        if let Some(wait) = wait {
            query = query.bind(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
        }
        let query = query.bind(self.settings.refuse_superuser_sessions);
        let answered: Option<bool> = self
            .bounded(query.fetch_optional(&self.pool))
            .await
            .map_err(|e| e.into_cap(what))?;
        Ok(answered.unwrap_or(false))
    }

    /// How long a terminate waits for the backend to exit: well inside the statement timeout.
    fn terminate_wait(&self) -> Duration {
        self.settings.statement_timeout / 2
    }
}

/// What [`PostgresBackend::doctor`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doctor {
    pub user: String,
    pub database: String,
    pub server_version: String,
    pub superuser: bool,
    /// Roles the connecting role should be a member of and is not.
    pub missing: Vec<String>,
}

/// Why one statement failed, sorted by what a caller may do about it.
enum CallError {
    /// The connection (or the pool) failed: a read may be tried again.
    Connection(String),
    Timeout(String),
    Privilege(String),
    Other(String),
}

impl From<sqlx::Error> for CallError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => CallError::Connection(e.to_string()),
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // query_canceled: our statement_timeout fired.
                Some("57014") => CallError::Timeout(db.message().to_owned()),
                Some("42501") => CallError::Privilege(db.message().to_owned()),
                // admin_shutdown, crash_shutdown, cannot_connect_now: the session is gone.
                Some("57P01" | "57P02" | "57P03") => CallError::Connection(db.message().to_owned()),
                Some(code) if code.starts_with("08") => {
                    CallError::Connection(db.message().to_owned())
                }
                _ => CallError::Other(db.message().to_owned()),
            },
            _ => CallError::Other(e.to_string()),
        }
    }
}

impl CallError {
    fn into_cap(self, what: &str) -> CapError {
        match self {
            CallError::Connection(why) => {
                CapError::Unavailable(format!("{what}: PostgreSQL unreachable: {why}"))
            }
            CallError::Timeout(why) => {
                CapError::Unavailable(format!("{what}: PostgreSQL did not finish in time: {why}"))
            }
            CallError::Privilege(why) => CapError::Denied(format!(
                "{what}: PostgreSQL refused: {why} (grant the role pg_monitor and pg_signal_backend)"
            )),
            CallError::Other(why) => CapError::Failed(format!("{what}: {why}")),
        }
    }
}

fn float(row: &sqlx::postgres::PgRow, name: &str) -> f64 {
    row.try_get::<Option<f64>, _>(name)
        .ok()
        .flatten()
        .unwrap_or(0.0)
}

fn text(row: &sqlx::postgres::PgRow, name: &str) -> String {
    row.try_get::<Option<String>, _>(name)
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn backend(row: &sqlx::postgres::PgRow) -> Result<Backend, sqlx::Error> {
    Ok(Backend {
        pid: row.try_get("pid")?,
        user: text(row, "usename"),
        database: text(row, "datname"),
        application: text(row, "application_name"),
        state: text(row, "state"),
        wait_event_type: row.try_get("wait_event_type")?,
        wait_event: row.try_get("wait_event")?,
        query: text(row, "query"),
        query_seconds: float(row, "query_seconds"),
        xact_seconds: float(row, "xact_seconds"),
    })
}

fn lock_wait(row: &sqlx::postgres::PgRow) -> Result<LockWait, sqlx::Error> {
    Ok(LockWait {
        blocked_pid: row.try_get("blocked_pid")?,
        blocking_pid: row.try_get("blocking_pid")?,
        lock_type: text(row, "lock_type"),
        relation: row.try_get("relation")?,
        blocked_query: text(row, "blocked_query"),
        blocking_query: text(row, "blocking_query"),
        waiting_seconds: float(row, "waiting_seconds"),
    })
}

fn replica(row: &sqlx::postgres::PgRow) -> Result<Replica, sqlx::Error> {
    Ok(Replica {
        application_name: text(row, "application_name"),
        client_addr: text(row, "client_addr"),
        state: text(row, "state"),
        lag_bytes: row.try_get::<Option<i64>, _>("lag_bytes")?.unwrap_or(0),
        replay_lag_seconds: float(row, "replay_lag_seconds"),
    })
}

/// Collect rows, turning the first row that does not convert into the statement's error.
fn rows<T>(
    rows: Vec<sqlx::postgres::PgRow>,
    convert: fn(&sqlx::postgres::PgRow) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, sqlx::Error> {
    rows.iter().map(convert).collect()
}

#[async_trait]
impl PostgresCaps for PostgresBackend {
    async fn activity(&self, min_query_seconds: f64) -> CapResult<Vec<Backend>> {
        if !min_query_seconds.is_finite() || min_query_seconds < 0.0 {
            return Err(CapError::InvalidArgument(format!(
                "min-query-seconds {min_query_seconds} must be a finite number ≥ 0"
            )));
        }
        self.read("postgres.activity", || async {
            let found = sqlx::query(queries::ACTIVITY)
                .bind(min_query_seconds)
                .bind(queries::MAX_ROWS)
                .fetch_all(&self.pool)
                .await?;
            rows(found, backend)
        })
        .await
    }

    async fn blockers(&self) -> CapResult<Vec<LockWait>> {
        self.read("postgres.blockers", || async {
            let found = sqlx::query(queries::BLOCKERS)
                .bind(queries::MAX_ROWS)
                .fetch_all(&self.pool)
                .await?;
            rows(found, lock_wait)
        })
        .await
    }

    async fn replication_lag(&self) -> CapResult<Vec<Replica>> {
        self.read("postgres.replication-lag", || async {
            let found = sqlx::query(queries::REPLICATION)
                .bind(queries::MAX_ROWS)
                .fetch_all(&self.pool)
                .await?;
            rows(found, replica)
        })
        .await
    }

    async fn connection_usage(&self, min_idle_seconds: f64) -> CapResult<ConnectionSlots> {
        if !min_idle_seconds.is_finite() || min_idle_seconds < 0.0 {
            return Err(CapError::InvalidArgument(format!(
                "min-idle-seconds {min_idle_seconds} must be a finite number ≥ 0"
            )));
        }
        self.read("postgres.connection-usage", || async {
            let limits = sqlx::query(queries::CONNECTION_LIMITS)
                .fetch_one(&self.pool)
                .await?;
            let idle = sqlx::query(queries::IDLE_SESSIONS)
                .bind(min_idle_seconds)
                .bind(queries::MAX_ROWS)
                .fetch_all(&self.pool)
                .await?;
            Ok(ConnectionSlots {
                max_connections: limits.try_get("max_connections")?,
                reserved: limits.try_get("reserved")?,
                used: limits.try_get("used")?,
                idle: rows(idle, backend)?,
            })
        })
        .await
    }

    async fn cancel_backend(&self, pid: i32) -> CapResult<bool> {
        self.signal(pid, queries::CANCEL, None, "postgres.cancel-backend")
            .await
    }

    async fn terminate_backend(&self, pid: i32) -> CapResult<bool> {
        let what = "postgres.terminate-backend";
        let signalled = self
            .signal(pid, queries::TERMINATE, Some(self.terminate_wait()), what)
            .await?;
        if !signalled {
            return Ok(false);
        }
        // The postcondition is the server's, not the signal's: is the session really gone?
        let still: Option<i32> = self
            .bounded(
                sqlx::query_scalar(queries::STILL_THERE)
                    .bind(pid)
                    .fetch_optional(&self.pool),
            )
            .await
            .map_err(|e| e.into_cap(what))?;
        match still {
            None => Ok(true),
            Some(_) => Err(CapError::Failed(format!(
                "pid {pid} was signalled but is still connected after {} ms",
                self.terminate_wait().as_millis()
            ))),
        }
    }
}

impl settings::PostgresSettings {
    fn connect_options(&self, application: &str) -> Result<PgConnectOptions, String> {
        let options: PgConnectOptions = self
            .url
            .parse()
            .map_err(|e| format!("url: not a PostgreSQL URL: {e}"))?;
        let mut options = options
            .application_name(application)
            .ssl_mode(self.tls.into())
            .options([(
                "statement_timeout",
                format!("{}", self.statement_timeout.as_millis()),
            )])
            .disable_statement_logging();
        if let Some(password) = &self.password {
            options = options.password(password);
        }
        if let Some(ca) = &self.ca_file {
            options = options.ssl_root_cert(ca);
        }
        Ok(options)
    }
}
