//! The shared store: the state in a PostgreSQL database through sqlx (`store: postgres://…`),
//! its schema by versioned migrations (`host/agent/migrations/postgres`). Rows are sealed as
//! SQLite's are. One host holds the database at a time: it takes the database's advisory lock
//! on a connection of its own, then raises the fencing token in `holder`; every write checks
//! the token in its own transaction, so a host that lost the lock — its connection dropped, the
//! process paused past a takeover — writes nothing after another host took the state over.
//!
//! The audit chain is shared too (`pg_audit`, table `audit`): the holding host's log makes
//! every commit point durable there as well as in its file, so a host that takes the state over
//! continues the same chain — it re-reads the proposals it is asked to answer and resumes the
//! runs it finds interrupted from it, as the host that wrote them would have.

use super::mac::HostKey;
use super::rows::{Row, Sealer, millis, open_statuses, status_name};
use super::{Answer, ClaimError, Incident, IncidentStatus, IncidentStore, StoreError};
use crate::lock::{self, Held};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Transaction};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use themis_core::fsm::AgentState;
use themis_core::guard::GuardBook;

/// The file in the state directory that says its state is in PostgreSQL, and where: read-only
/// commands next to a running host (`themis agents`, `themis guard list`) find it there.
pub const MARKER: &str = "store.postgres.json";

/// The advisory lock a holding host keeps (per database): "themis" in ASCII.
const LOCK_KEY: i64 = 0x7468_656d_6973;

/// A PostgreSQL database that holds the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgTarget {
    /// `postgres://user@host:port/database`, never with a password.
    pub url: String,
    /// Where the password comes from, when the server asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<PasswordSource>,
}

/// A password by reference: the name of an environment variable or a file's path — never the
/// password, which is read when the store connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PasswordSource {
    Env(String),
    File(PathBuf),
}

impl PgTarget {
    pub(super) fn options(&self) -> Result<PgConnectOptions, StoreError> {
        let fail = |message: String| StoreError::Database {
            path: PathBuf::from(&self.url),
            message,
        };
        let mut options = PgConnectOptions::from_str(&self.url)
            .map_err(|e| fail(format!("not a PostgreSQL URL: {e}")))?
            .application_name("themis-state");
        match &self.password {
            None => {}
            Some(PasswordSource::Env(name)) => {
                let value = std::env::var(name).ok().filter(|v| !v.is_empty()).ok_or_else(|| {
                    fail(format!(
                        "the password is to come from ${name}, which is not set: set it, or change `store_password`"
                    ))
                })?;
                options = options.password(&value);
            }
            Some(PasswordSource::File(path)) => {
                let value = themis_core::files::read_text(path, 4096)
                    .map_err(|e| fail(format!("the password file {}: {e}", path.display())))?;
                options = options.password(value.trim());
            }
        }
        Ok(options)
    }

    /// The target a state directory names, if it names one.
    pub fn found_in(dir: &Path) -> Result<Option<PgTarget>, StoreError> {
        let path = dir.join(MARKER);
        if !path.exists() {
            return Ok(None);
        }
        let text =
            themis_core::files::read_text(&path, 64 * 1024).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path,
                message: e.to_string(),
            })
    }

    fn write_to(&self, dir: &Path) -> Result<(), StoreError> {
        let path = dir.join(MARKER);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let body = serde_json::to_vec_pretty(self).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let temp = dir.join(format!("{MARKER}.new"));
        {
            use std::io::Write;
            let mut file = crate::private::options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp)
                .map_err(io)?;
            file.write_all(&body).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&temp, &path).map_err(io)
    }
}

/// What `themis doctor` and `themis serve --check` say of a state database, found without
/// taking it.
#[derive(Debug, Clone)]
pub struct PgProbe {
    pub server_version: String,
    pub user: String,
    pub database: String,
    /// The role may create the schema's tables (it owns the database, or was granted CREATE).
    pub can_create: bool,
    /// The schema is there already (a host started on it before).
    pub has_schema: bool,
    /// Who holds it: the host's description and its fencing token.
    pub holder: Option<(String, i64)>,
}

impl PgProbe {
    /// A host can start on it: the schema is there, or the role can make it.
    pub fn usable(&self) -> bool {
        self.has_schema || self.can_create
    }
}

impl PgTarget {
    /// Connect, look, and let go: reachable, as whom, whether the schema can be made, who holds
    /// the state.
    pub async fn probe(&self) -> Result<PgProbe, StoreError> {
        let fail = |e: &dyn std::fmt::Display| StoreError::Database {
            path: PathBuf::from(&self.url),
            message: e.to_string(),
        };
        let mut conn = PgConnection::connect_with(&self.options()?)
            .await
            .map_err(|e| fail(&e))?;
        let (server_version, user, database, can_create, has_schema): (
            String,
            String,
            String,
            bool,
            bool,
        ) = sqlx::query_as(
            "SELECT current_setting('server_version'), current_user::text, current_database()::text,
                    COALESCE(has_schema_privilege(current_schema(), 'CREATE'), false),
                    to_regclass('holder') IS NOT NULL",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(|e| fail(&e))?;
        let holder = if has_schema {
            sqlx::query_as("SELECT host, token FROM holder WHERE id = 1")
                .fetch_optional(&mut conn)
                .await
                .map_err(|e| fail(&e))?
        } else {
            None
        };
        let _ = conn.close().await;
        Ok(PgProbe {
            server_version,
            user,
            database,
            can_create,
            has_schema,
            holder,
        })
    }
}

/// A pool of `size` sessions; a session not had within 10 s is an error, not a hang.
async fn pool(options: PgConnectOptions, size: u32) -> Result<PgPool, sqlx::Error> {
    let options = options.options([(
        "idle_in_transaction_session_timeout",
        IDLE_IN_TRANSACTION.as_millis().to_string(),
    )]);
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
}

pub struct PgStore {
    rows: Sealer,
    pool: PgPool,
    /// How to reach the database again (the audit's replica connects on its own).
    options: Option<PgConnectOptions>,
    /// Keeps the connection that holds the advisory lock for the store's life, and takes the
    /// lock again when that connection drops and nobody else took it; `None` when read-only.
    _holding: Option<Holding>,
    /// The fencing token this host raised; `None` when opened read-only.
    token: Option<i64>,
    /// How this host names itself in `holder` (host name, pid, state directory).
    host: Option<String>,
    /// Why this host may no longer write, once another host took the database over.
    lost: Arc<Mutex<Option<String>>>,
    _lock: Option<Held>,
}

/// The task that holds the lock; it ends with the store, and the lock with it.
struct Holding(tokio::task::JoinHandle<()>);

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often the holding connection is looked at.
const HOLD_CHECK: Duration = Duration::from_secs(2);

/// The holder's lease: the server ends the holding session when it has been idle this long —
/// the host paused, hung, or cut off from the database — and with it the lock, so the next host
/// waiting holds the state within this time (a live holder looks every `HOLD_CHECK`). The old
/// holder, fenced by the token, writes nothing when it wakes.
pub const LEASE: Duration = Duration::from_secs(10);

/// A transaction left open this long by a host that stopped (paused, hung) is ended by the
/// server: its share lock on `holder` would otherwise keep the next host's takeover waiting
/// for ever. Below the lease, so the takeover is not held up past it.
pub(super) const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(5);

/// Make `conn`, which holds the lock, a lease (see [`LEASE`]).
async fn lease(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("SET idle_session_timeout = {}", LEASE.as_millis()))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Keep `conn` (which holds the lock) alive. When it drops — a network cut, a server restart —
/// the lock went with it: take it again on a new connection if nobody else has, and go on only
/// if the token is still this host's; otherwise say the database was lost, once, and end.
async fn hold(
    mut conn: PgConnection,
    options: PgConnectOptions,
    mine: i64,
    lost: Arc<Mutex<Option<String>>>,
    place: String,
) {
    loop {
        tokio::time::sleep(HOLD_CHECK).await;
        // A connection cut off without a word (a half-open socket) answers nothing: half the
        // lease is as long as the check waits before it takes the lock as gone.
        let alive = tokio::time::timeout(LEASE / 2, sqlx::query("SELECT 1").execute(&mut conn))
            .await
            .is_ok_and(|r| r.is_ok());
        if alive {
            continue;
        }
        let Ok(mut fresh) = PgConnection::connect_with(&options).await else {
            // Unreachable: every write fails on its own meanwhile; look again.
            continue;
        };
        if lease(&mut fresh).await.is_err() {
            continue;
        }
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut fresh)
            .await
            .unwrap_or(false);
        let now: Option<(i64, String)> =
            sqlx::query_as("SELECT token, host FROM holder WHERE id = 1")
                .fetch_optional(&mut fresh)
                .await
                .unwrap_or(None);
        match now {
            Some((token, _)) if got && token == mine => conn = fresh,
            now => {
                let who = match now {
                    Some((token, host)) if token != mine => format!("{host} (token {token})"),
                    _ => "another host".into(),
                };
                let why = format!(
                    "state database {place}: the lock was lost and {who} holds it now; this host's token was {mine}"
                );
                tracing::error!(reason = %why, "the state database was taken over");
                *lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                return;
            }
        }
    }
}

impl PgStore {
    /// Open (migrating) the database `target` names for the state directory `dir`, waiting up
    /// to `wait` for another process that holds the directory or the database.
    pub async fn open_waiting(
        dir: &Path,
        target: &PgTarget,
        wait: Duration,
    ) -> Result<PgStore, StoreError> {
        crate::private::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let deadline = Instant::now() + wait;
        // The folder is this host's own: a second process on it is a mistake, said soon.
        let held = lock::acquire(&dir.join("state.lock"), wait.min(lock::DEFAULT_WAIT))?;
        let rows = Sealer {
            key: HostKey::load_or_create(&dir.join("host.key"))?,
            place: target.url.clone(),
        };
        let options = target.options()?;
        let mut holding = PgConnection::connect_with(&options)
            .await
            .map_err(|e| rows.fail(e))?;
        // Queued in the server's lock manager rather than polled: the moment the holder's
        // session ends the lock is this host's, before the holder could take it back.
        // (The server takes at most i32::MAX ms, some 24 days: a standby waits that long.)
        let left = deadline.saturating_duration_since(Instant::now()).clamp(
            Duration::from_millis(1),
            Duration::from_millis(i32::MAX as u64),
        );
        // The lease is set before the wait (it counts idle time only, never the wait): a host
        // paused or cut off while queued holds the lock, when it is granted, no longer than it.
        lease(&mut holding).await.map_err(|e| rows.fail(e))?;
        sqlx::query(&format!("SET lock_timeout = {}", left.as_millis()))
            .execute(&mut holding)
            .await
            .map_err(|e| rows.fail(e))?;
        match sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(LOCK_KEY)
            .execute(&mut holding)
            .await
        {
            Ok(_) => {}
            // lock_not_available: the wait is over and another host still holds it.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                let who: Option<(String, i64)> =
                    sqlx::query_as("SELECT host, token FROM holder WHERE id = 1")
                        .fetch_optional(&mut holding)
                        .await
                        .unwrap_or(None);
                let who = who.map_or_else(
                    || "another host".to_string(),
                    |(host, token)| format!("{host} (token {token})"),
                );
                return Err(rows.fail(format!(
                    "held by {who}: one host acts on a state database at a time; stop it, or point `store` at another database"
                )));
            }
            Err(e) => return Err(rows.fail(e)),
        }
        sqlx::query("SET lock_timeout = 0")
            .execute(&mut holding)
            .await
            .map_err(|e| rows.fail(e))?;
        let pool = pool(options.clone(), 4).await.map_err(|e| rows.fail(e))?;
        super::migrations::POSTGRES
            .migrator()
            .await
            .map_err(|e| rows.fail(e))?
            .run(&pool)
            .await
            .map_err(|e| {
            rows.fail(format!(
                "{e} (the schema could not be brought to this version: the role must own the database — `CREATE DATABASE themis OWNER themis` — and the database must not be from a newer Themis)"
            ))
        })?;
        let (token, host) = Self::take_over(&rows, &pool, dir).await?;
        target.write_to(dir)?;
        let lost = Arc::new(Mutex::new(None));
        let options_for_replica = options.clone();
        let holding = Holding(tokio::spawn(hold(
            holding,
            options,
            token,
            lost.clone(),
            rows.place.clone(),
        )));
        Ok(PgStore {
            rows,
            pool,
            options: Some(options_for_replica),
            _holding: Some(holding),
            token: Some(token),
            host: Some(host),
            lost,
            _lock: Some(held),
        })
    }

    /// Raise the fencing token (the lock is held): from now on the previous holder's writes
    /// fail. A database sealed under another host key is refused by name.
    async fn take_over(
        rows: &Sealer,
        pool: &PgPool,
        dir: &Path,
    ) -> Result<(i64, String), StoreError> {
        let mut tx = pool.begin().await.map_err(|e| rows.fail(e))?;
        // A share lock a stopped host still holds ends within IDLE_IN_TRANSACTION; this wait
        // is bounded all the same, and a host that cannot take over says so and stops.
        sqlx::query("SET LOCAL lock_timeout = '30s'")
            .execute(&mut *tx)
            .await
            .map_err(|e| rows.fail(e))?;
        let found: Option<(i64, String)> =
            sqlx::query_as("SELECT token, key_id FROM holder WHERE id = 1 FOR UPDATE")
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| rows.fail(e))?;
        let key_id = rows.key_id();
        if let Some((_, theirs)) = found.as_ref().filter(|(_, k)| *k != key_id) {
            return Err(rows.fail(format!(
                "holds the state of a host whose key is {theirs}, and {}/host.key is {key_id}: its rows would all be refused. Use that host's key, or point `store` at another database",
                dir.display()
            )));
        }
        let host = format!(
            "{} pid {} ({})",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "?".into()),
            std::process::id(),
            dir.display()
        );
        // The previous holder's address goes with it: standing-by hosts forward nothing until
        // this one says where it serves.
        let token: i64 = sqlx::query_scalar(
            "INSERT INTO holder (id, token, key_id, host) VALUES (1, 1, $1, $2)
             ON CONFLICT (id) DO UPDATE SET token = holder.token + 1, host = $2, since = now(),
               url = NULL, url_mac = NULL
             RETURNING token",
        )
        .bind(&key_id)
        .bind(&host)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| rows.fail(e))?;
        tx.commit().await.map_err(|e| rows.fail(e))?;
        Ok((token, host))
    }

    /// Open to read without holding anything (`themis agents` next to a running host): the
    /// sessions are read-only, so every write is refused by the server as well as here.
    pub async fn open_read_only(dir: &Path, target: &PgTarget) -> Result<PgStore, StoreError> {
        let rows = Sealer {
            key: HostKey::load_or_create(&dir.join("host.key"))?,
            place: target.url.clone(),
        };
        let options = target
            .options()?
            .options([("default_transaction_read_only", "on")]);
        let pool = pool(options, 2).await.map_err(|e| rows.fail(e))?;
        Ok(PgStore {
            rows,
            pool,
            options: None,
            _holding: None,
            token: None,
            host: None,
            lost: Arc::default(),
            _lock: None,
        })
    }

    /// A transaction that may write: only while this host's token is the newest. The share
    /// lock on the holder row orders it against a takeover: it commits before the takeover's
    /// token, or sees the new one and writes nothing.
    async fn fenced(&self) -> Result<Transaction<'_, Postgres>, StoreError> {
        let Some(mine) = self.token else {
            return Err(self.rows.fail("the store was opened read-only"));
        };
        let mut tx = self.pool.begin().await.map_err(|e| self.rows.fail(e))?;
        let now: Option<(i64, String)> =
            sqlx::query_as("SELECT token, host FROM holder WHERE id = 1 FOR SHARE")
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.rows.fail(e))?;
        match now {
            Some((token, _)) if token == mine => Ok(tx),
            now => {
                let fenced = StoreError::Fenced {
                    place: self.rows.place.clone(),
                    mine,
                    now: now.map_or_else(
                        || "nobody".into(),
                        |(t, host)| format!("{host} (token {t})"),
                    ),
                };
                self.lost
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(|| fenced.to_string());
                Err(fenced)
            }
        }
    }

    async fn write_incident(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        incident: &Incident,
    ) -> Result<(), StoreError> {
        let (body, mac) = self.rows.seal("incidents", &incident.id, incident)?;
        sqlx::query(
            "INSERT INTO incidents (id, agent, fingerprint, status, opened_ms, body, mac, changed_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE SET status = $4, body = $6, mac = $7, changed_ms = $8",
        )
        .bind(&incident.id)
        .bind(&incident.agent)
        .bind(&incident.fingerprint)
        .bind(status_name(incident.status))
        .bind(millis(incident.opened_at))
        .bind(body)
        .bind(mac)
        .bind(millis(SystemTime::now()))
        .execute(&mut **tx)
        .await
        .map_err(|e| self.rows.fail(e))?;
        Ok(())
    }

    async fn get_incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT body, mac FROM incidents WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.rows.fail(e))?;
        row.map(|(body, mac)| self.rows.incident(id, &body, &mac))
            .transpose()
    }

    /// The newest incident of `agent` for `fingerprint` among `statuses` (any when `None`).
    async fn newest_for(
        &self,
        agent: &str,
        fingerprint: &str,
        statuses: Option<Vec<String>>,
    ) -> Result<Option<Incident>, StoreError> {
        let row: Option<Row> = sqlx::query_as(
            "SELECT id, body, mac FROM incidents
             WHERE agent = $1 AND fingerprint = $2 AND ($3::text[] IS NULL OR status = ANY($3))
             ORDER BY opened_ms DESC, seq DESC LIMIT 1",
        )
        .bind(agent)
        .bind(fingerprint)
        .bind(statuses)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.rows.fail(e))?;
        // The columns are an index; the sealed body is what counts.
        Ok(row
            .map(|(id, body, mac)| self.rows.incident(&id, &body, &mac))
            .transpose()?
            .filter(|i| i.agent == agent && i.fingerprint == fingerprint))
    }

    async fn one_row(
        &self,
        sql: &str,
        key: Option<&str>,
    ) -> Result<Option<(String, String)>, StoreError> {
        let mut query = sqlx::query_as(sql);
        if let Some(key) = key {
            query = query.bind(key);
        }
        query
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.rows.fail(e))
    }
}

#[async_trait]
impl IncidentStore for PgStore {
    fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn audit_replica(&self) -> Result<Option<Arc<dyn crate::audit::replica::Replica>>, StoreError> {
        let (Some(options), Some(mine)) = (&self.options, self.token) else {
            return Err(self.rows.fail("the store was opened read-only"));
        };
        super::pg_audit::PgReplica::start(
            options.clone(),
            self.rows.place.clone(),
            mine,
            self.lost.clone(),
        )
        .map(|r| Some(Arc::new(r) as Arc<dyn crate::audit::replica::Replica>))
        .map_err(|e| self.rows.fail(e))
    }

    async fn advertise(&self, url: &str) -> Result<(), StoreError> {
        let Some(mine) = self.token else {
            return Err(self.rows.fail("the store was opened read-only"));
        };
        // Sealed with this holder's token: an address an earlier holder advertised, put back by
        // hand, does not verify for this one.
        let (body, mac) = self
            .rows
            .seal("holder", &super::pg_inbox::url_key(mine), &url)?;
        let mut tx = self.fenced().await?;
        sqlx::query("UPDATE holder SET url = $1, url_mac = $2 WHERE id = 1")
            .bind(&body)
            .bind(&mac)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.rows.fail(e))?;
        tx.commit().await.map_err(|e| self.rows.fail(e))
    }

    fn holder(&self) -> Option<String> {
        self.host.clone()
    }

    async fn confirm_held(&self) -> Result<(), StoreError> {
        // The same fencing check every write makes; nothing is written.
        let tx = self.fenced().await?;
        tx.rollback().await.map_err(|e| self.rows.fail(e))
    }

    async fn save(&self, incident: &Incident) -> Result<(), StoreError> {
        let mut tx = self.fenced().await?;
        self.write_incident(&mut tx, incident).await?;
        tx.commit().await.map_err(|e| self.rows.fail(e))
    }

    async fn get(&self, id: &str) -> Result<Incident, StoreError> {
        self.get_incident(id)
            .await?
            .ok_or_else(|| StoreError::UnknownIncident(id.into()))
    }

    async fn scan(&self) -> Result<(Vec<Incident>, Vec<StoreError>), StoreError> {
        let rows: Vec<Row> =
            sqlx::query_as("SELECT id, body, mac FROM incidents ORDER BY opened_ms, seq")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.rows.fail(e))?;
        let (mut out, problems) = self.rows.incidents(rows, |_| true);
        out.sort_by_key(|i| i.opened_at);
        Ok((out, problems))
    }

    async fn recent(
        &self,
        filter: &super::Filter,
        limit: usize,
    ) -> Result<(Vec<Incident>, Vec<StoreError>), StoreError> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, body, mac FROM incidents
             WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR agent = $2)
             ORDER BY opened_ms DESC, seq DESC LIMIT $3",
        )
        .bind(filter.status.map(status_name))
        .bind(filter.agent.as_deref())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.rows.fail(e))?;
        Ok(self.rows.incidents(rows, |i| filter.keeps(i)))
    }

    async fn open_ids(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM incidents WHERE status = ANY($1)")
                .bind(open_statuses())
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.rows.fail(e))?;
        Ok(ids.into_iter().collect())
    }

    async fn open_for(
        &self,
        agent: &str,
        fingerprint: &str,
    ) -> Result<Option<Incident>, StoreError> {
        Ok(self
            .newest_for(agent, fingerprint, Some(open_statuses()))
            .await?
            .filter(|i| i.status.is_open()))
    }

    async fn latest_for(
        &self,
        agent: &str,
        fingerprint: &str,
    ) -> Result<Option<Incident>, StoreError> {
        self.newest_for(agent, fingerprint, None).await
    }

    async fn claim(&self, answer: Answer, next: IncidentStatus) -> Result<Incident, ClaimError> {
        let approval_id = answer.approval_id.clone();
        let Some(id) = super::approval_incident(&approval_id) else {
            return Err(StoreError::UnknownIncident(approval_id).into());
        };
        let mut tx = self.fenced().await?;
        // The row lock makes the check and the claim one step for every host and process:
        // a concurrent claim waits here, then sees the answer.
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT body, mac FROM incidents WHERE id = $1 FOR UPDATE")
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.rows.fail(e))?;
        let incident = self.rows.claimed(&id, row, answer, next)?;
        self.write_incident(&mut tx, &incident).await?;
        tx.commit().await.map_err(|e| self.rows.fail(e))?;
        Ok(incident)
    }

    async fn prune_closed(
        &self,
        agent: &str,
        before: SystemTime,
        limit: usize,
        announce: super::Announce<'_>,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.fenced().await?;
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, body, mac FROM incidents WHERE agent = $1 AND changed_ms < $2
             AND NOT (status = ANY($3)) ORDER BY changed_ms LIMIT $4 FOR UPDATE",
        )
        .bind(agent)
        .bind(millis(before))
        .bind(open_statuses())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| self.rows.fail(e))?;
        let (ids, macs): (Vec<String>, Vec<String>) =
            self.rows.prunable(agent, rows).into_iter().unzip();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        announce(&ids)?;
        let pruned: Vec<String> = sqlx::query_scalar(
            "DELETE FROM incidents i USING unnest($1::text[], $2::text[]) AS c(id, mac)
             WHERE i.id = c.id AND i.mac = c.mac RETURNING i.id",
        )
        .bind(ids)
        .bind(macs)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| self.rows.fail(e))?;
        tx.commit().await.map_err(|e| self.rows.fail(e))?;
        Ok(pruned)
    }

    async fn save_agent_state(&self, agent: &str, state: &AgentState) -> Result<(), StoreError> {
        let (body, mac) = self.rows.seal("agent_states", agent, state)?;
        let mut tx = self.fenced().await?;
        // A hint, rewritten on every move: not waited for on its own; the next durable commit
        // carries it (the WAL is one sequence).
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await
            .map_err(|e| self.rows.fail(e))?;
        sqlx::query(
            "INSERT INTO agent_states (agent, body, mac) VALUES ($1, $2, $3)
             ON CONFLICT (agent) DO UPDATE SET body = $2, mac = $3",
        )
        .bind(agent)
        .bind(body)
        .bind(mac)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.rows.fail(e))?;
        tx.commit().await.map_err(|e| self.rows.fail(e))
    }

    async fn agent_state(&self, agent: &str) -> Result<AgentState, StoreError> {
        let row = self
            .one_row(
                "SELECT body, mac FROM agent_states WHERE agent = $1",
                Some(agent),
            )
            .await?;
        Ok(self
            .rows
            .optional("agent_states", agent, row)?
            .unwrap_or(AgentState::Idle))
    }

    async fn save_guard(&self, book: &GuardBook) -> Result<(), StoreError> {
        let (body, mac) = self.rows.seal("guard", "1", book)?;
        let mut tx = self.fenced().await?;
        sqlx::query(
            "INSERT INTO guard (id, body, mac) VALUES (1, $1, $2)
             ON CONFLICT (id) DO UPDATE SET body = $1, mac = $2",
        )
        .bind(body)
        .bind(mac)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.rows.fail(e))?;
        tx.commit().await.map_err(|e| self.rows.fail(e))
    }

    async fn guard(&self) -> Result<GuardBook, StoreError> {
        let row = self
            .one_row("SELECT body, mac FROM guard WHERE id = 1", None)
            .await?;
        Ok(self.rows.optional("guard", "1", row)?.unwrap_or_default())
    }
}
