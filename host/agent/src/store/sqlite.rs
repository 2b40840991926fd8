//! The embedded store: the state directory's `themis.db`, SQLite through sqlx in WAL mode, its
//! schema by versioned migrations (`host/agent/migrations/sqlite`). A state write is one
//! transaction and one fsync of the WAL — no file created, renamed or indexed per write, which
//! is what the JSON-file store spends most of a decision on. Every row carries a MAC under the
//! host key over its table, its key and its JSON, so a row changed or moved by hand is refused
//! as the JSON store refuses a file. The directory is locked for the life of a writing store.

use super::mac::HostKey;
use super::rows::{Row, Sealer, millis, open_statuses, status_name};
use super::{Answer, ClaimError, Incident, IncidentStatus, IncidentStore, StoreError};
use crate::lock::{self, Held};
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use themis_core::fsm::AgentState;
use themis_core::guard::GuardBook;

/// The database's file name in the state directory.
pub const FILE: &str = "themis.db";

pub struct SqliteStore {
    rows: std::sync::Arc<Sealer>,
    /// Durable writes: one connection (SQLite has one writer), `synchronous = FULL`, so a
    /// commit is on disk when it returns.
    writer: Option<Kept>,
    /// Writes nobody waits on the disk for: the staged incident and the agent-state hints,
    /// `synchronous = NORMAL`, made durable by the next durable commit (the WAL is one
    /// sequence).
    hints: Option<std::sync::Arc<Kept>>,
    /// The agent-state hints, rewritten on every move, written behind the moves (see
    /// [`HintWriter`]).
    hint_writer: Option<HintWriter>,
    /// Moves the WAL into the database behind the writes (see [`Checkpointer`]).
    _checkpointer: Option<Checkpointer>,
    /// Incident and hint writes so far: the checkpointer's measure of what the WAL holds.
    written: std::sync::Arc<AtomicU64>,
    reader: Readers,
    /// Statements that met a connection whose thread had ended (see [`Kept`]).
    crashes: Crashes,
    /// Serialises read-modify-write sequences (the claim) within the process.
    claims: tokio::sync::Mutex<()>,
    _lock: Option<Held>,
}

impl SqliteStore {
    /// Open (creating and migrating) the state directory's database, waiting up to `wait` for
    /// another process that holds the directory.
    pub async fn open_waiting(dir: &Path, wait: Duration) -> Result<SqliteStore, StoreError> {
        crate::private::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let held = lock::acquire(&dir.join("state.lock"), wait)?;
        let key = HostKey::load_or_create(&dir.join("host.key"))?;
        let db = dir.join(FILE);
        // SQLite creates its -wal and -shm files with the database's own mode: an empty file
        // made owner-only first is a valid empty database and keeps all three private.
        match crate::private::options()
            .write(true)
            .create_new(true)
            .open(&db)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(StoreError::Io {
                    path: db.clone(),
                    source,
                });
            }
        }
        let fail = |e: &dyn std::fmt::Display| StoreError::Database {
            path: db.clone(),
            message: e.to_string(),
        };
        let options = SqliteConnectOptions::new()
            .filename(&db)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        // A writer's commit checkpoints the WAL into the database when it holds 1000 pages —
        // two fsyncs and the pages' writes inside whichever write crossed the line, the tail of
        // a decision's time. `Checkpointer` does it behind the writes instead; this only stops
        // a WAL growing without a bound if that falls behind.
        let writing = options
            .clone()
            .pragma("wal_autocheckpoint", WAL_BACKSTOP_PAGES.to_string());
        // The migrator takes a pool (its `Acquire` over a borrowed connection is not `Send` in
        // every caller's future); one connection, closed before the writer's opens.
        let migrating = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(writing.clone().synchronous(SqliteSynchronous::Full))
            .await
            .map_err(|e| fail(&e))?;
        super::migrations::SQLITE
            .migrator()
            .await
            .map_err(|e| fail(&e))?
            .run(&migrating)
            .await
            .map_err(|e| {
            fail(&format!(
                "{e} (the schema could not be brought to this version; is the database from a newer Themis?)"
            ))
        })?;
        migrating.close().await;
        let crashes = Crashes::default();
        let writer = Kept::open(
            writing.clone().synchronous(SqliteSynchronous::Full),
            &crashes,
        )
        .await
        .map_err(|e| fail(&e))?;
        let hints = std::sync::Arc::new(
            Kept::open(writing.synchronous(SqliteSynchronous::Normal), &crashes)
                .await
                .map_err(|e| fail(&e))?,
        );
        let checkpoints = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(|e| fail(&e))?;
        let reader = Readers::open(options.read_only(true), &crashes)
            .await
            .map_err(|e| fail(&e))?;
        let written = std::sync::Arc::new(AtomicU64::new(0));
        let rows = std::sync::Arc::new(Sealer {
            key,
            place: db.display().to_string(),
        });
        Ok(SqliteStore {
            hint_writer: Some(HintWriter::start(
                hints.clone(),
                rows.clone(),
                written.clone(),
            )),
            _checkpointer: Some(Checkpointer::start(checkpoints, written.clone())),
            written,
            rows,
            writer: Some(writer),
            hints: Some(hints),
            reader,
            crashes,
            claims: tokio::sync::Mutex::new(()),
            _lock: Some(held),
        })
    }

    /// Open to read without taking the directory's lock (`themis agents` next to a running
    /// host): every write is refused.
    pub async fn open_read_only(dir: &Path) -> Result<SqliteStore, StoreError> {
        let key = HostKey::load_or_create(&dir.join("host.key"))?;
        let db = dir.join(FILE);
        let crashes = Crashes::default();
        let reader = Readers::open(
            SqliteConnectOptions::new()
                .filename(&db)
                .read_only(true)
                .busy_timeout(Duration::from_secs(5)),
            &crashes,
        )
        .await
        .map_err(|e| StoreError::Database {
            path: db.clone(),
            message: e.to_string(),
        })?;
        Ok(SqliteStore {
            rows: std::sync::Arc::new(Sealer {
                key,
                place: db.display().to_string(),
            }),
            writer: None,
            hint_writer: None,
            _checkpointer: None,
            written: Default::default(),
            hints: None,
            reader,
            crashes,
            claims: tokio::sync::Mutex::new(()),
            _lock: None,
        })
    }

    fn fail(&self, e: impl std::fmt::Display) -> StoreError {
        self.rows.fail(e)
    }

    /// A database error, counted first if its connection's thread had ended.
    fn sql(&self, e: sqlx::Error) -> StoreError {
        self.rows.fail(self.crashes.note(e))
    }

    fn writer(&self) -> Result<&Kept, StoreError> {
        self.writer
            .as_ref()
            .ok_or_else(|| self.fail("the store was opened read-only"))
    }

    async fn write_incident(
        &self,
        conn: &mut sqlx::SqliteConnection,
        incident: &Incident,
    ) -> Result<(), StoreError> {
        let (body, mac) = self.rows.seal("incidents", &incident.id, incident)?;
        self.written.fetch_add(1, Ordering::Relaxed);
        sqlx::query(
            "INSERT INTO incidents (id, agent, fingerprint, status, opened_ms, body, mac, changed_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (id) DO UPDATE SET status = ?4, body = ?6, mac = ?7, changed_ms = ?8",
        )
        .bind(&incident.id)
        .bind(&incident.agent)
        .bind(&incident.fingerprint)
        .bind(status_name(incident.status))
        .bind(millis(incident.opened_at))
        .bind(body)
        .bind(mac)
        .bind(millis(SystemTime::now()))
        .execute(conn)
        .await
        .map_err(|e| self.sql(e))?;
        Ok(())
    }

    async fn incident_where(
        &self,
        sql: &str,
        agent: &str,
        fingerprint: &str,
    ) -> Result<Option<Incident>, StoreError> {
        let row: Option<(String, String, String)> = sqlx::query_as(sql)
            .bind(agent)
            .bind(fingerprint)
            .fetch_optional(&mut *self.reader.lend().await.map_err(|e| self.sql(e))?)
            .await
            .map_err(|e| self.sql(e))?;
        row.map(|(id, body, mac)| self.rows.incident(&id, &body, &mac))
            .transpose()
    }

    async fn get_incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT body, mac FROM incidents WHERE id = ?1")
                .bind(id)
                .fetch_optional(&mut *self.reader.lend().await.map_err(|e| self.sql(e))?)
                .await
                .map_err(|e| self.sql(e))?;
        row.map(|(body, mac)| self.rows.incident(id, &body, &mac))
            .transpose()
    }
}

/// A connection kept for one role while the store is open, lent under a lock. Not sqlx's pool:
/// a pool takes a connection back through a task it spawns, which pings the connection first —
/// a task on the runtime and a round trip to SQLite's thread after every statement, three of
/// them on a decision's path. A statement cut off half-way leaves nothing behind: SQLite's
/// thread runs each to its end, and a transaction dropped unfinished is rolled back before
/// the connection's next statement.
///
/// A connection whose SQLite thread has ended is replaced rather than kept failing: once any
/// statement of the store meets one ([`Crashes`]), each kept connection is pinged at its next
/// lending and connected again if it does not answer.
struct Kept {
    options: SqliteConnectOptions,
    slot: tokio::sync::Mutex<Slot>,
    crashes: Crashes,
}

struct Slot {
    /// None once found dead and not yet connected again.
    conn: Option<SqliteConnection>,
    /// The [`Crashes`] count this connection was last known alive at.
    seen: u64,
}

type Lent<'a> = tokio::sync::MappedMutexGuard<'a, SqliteConnection>;

/// How many times a statement of the store met a connection whose SQLite thread had ended
/// (`sqlx::Error::WorkerCrashed`): a change tells every kept connection to check its own.
#[derive(Clone, Default)]
struct Crashes(std::sync::Arc<AtomicU64>);

impl Crashes {
    /// Count `e` if it is a crashed connection's; `e` itself, to be reported.
    fn note(&self, e: sqlx::Error) -> sqlx::Error {
        if matches!(e, sqlx::Error::WorkerCrashed) {
            self.0.fetch_add(1, Ordering::AcqRel);
        }
        e
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

impl Kept {
    async fn open(options: SqliteConnectOptions, crashes: &Crashes) -> Result<Kept, sqlx::Error> {
        let seen = crashes.count();
        let conn = options.connect().await?;
        Ok(Kept {
            options,
            slot: tokio::sync::Mutex::new(Slot {
                conn: Some(conn),
                seen,
            }),
            crashes: crashes.clone(),
        })
    }

    async fn lend(&self) -> Result<Lent<'_>, sqlx::Error> {
        let slot = self.slot.lock().await;
        self.ready(slot).await
    }

    /// Lent at once, or None when it is lent already.
    async fn try_lend(&self) -> Option<Result<Lent<'_>, sqlx::Error>> {
        let slot = self.slot.try_lock().ok()?;
        Some(self.ready(slot).await)
    }

    /// The connection, checked after a crash was met and connected again if it is gone.
    async fn ready<'a>(
        &self,
        mut slot: tokio::sync::MutexGuard<'a, Slot>,
    ) -> Result<Lent<'a>, sqlx::Error> {
        let crashes = self.crashes.count();
        if slot.seen != crashes {
            if let Some(conn) = slot.conn.as_mut()
                && conn.ping().await.is_err()
            {
                slot.conn = None;
            }
            slot.seen = crashes;
        }
        if slot.conn.is_none() {
            slot.conn = Some(self.options.connect().await?);
            tracing::warn!(
                "a database connection whose SQLite thread had ended was connected again"
            );
        }
        tokio::sync::MutexGuard::try_map(slot, |s| s.conn.as_mut())
            .map_err(|_| sqlx::Error::WorkerCrashed)
    }

    /// Forget the connection, as if its thread had ended: the next lending connects again.
    #[cfg(test)]
    async fn lose(&self) {
        self.slot.lock().await.conn = None;
    }
}

/// Two reading connections, so the API's reads go on beside a worker's.
struct Readers([Kept; 2]);

impl Readers {
    async fn open(
        options: SqliteConnectOptions,
        crashes: &Crashes,
    ) -> Result<Readers, sqlx::Error> {
        Ok(Readers([
            Kept::open(options.clone(), crashes).await?,
            Kept::open(options, crashes).await?,
        ]))
    }

    /// A free one if there is; else the first busy one, once free (a free one that could not
    /// be readied — its thread ended, connecting again failed — is waited on only when every
    /// one failed, and then tried again).
    async fn lend(&self) -> Result<Lent<'_>, sqlx::Error> {
        let mut busy = None;
        for kept in &self.0 {
            match kept.try_lend().await {
                Some(Ok(lent)) => return Ok(lent),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "a reading connection could not be readied")
                }
                None => busy = busy.or(Some(kept)),
            }
        }
        busy.unwrap_or(&self.0[0]).lend().await
    }
}

/// The WAL size, in pages, at which a writer's own commit checkpoints it: a backstop, far past
/// what [`Checkpointer`] lets it reach (4 KiB pages: 64 MiB).
const WAL_BACKSTOP_PAGES: u32 = 16_384;

/// How often the checkpointer looks at what was written.
const CHECKPOINT_LOOK: Duration = Duration::from_millis(500);
/// Writes after which it checkpoints (each a few pages: about SQLite's own 1000-page mark).
const CHECKPOINT_WRITES: u64 = 200;
/// Fewer writes than that are checkpointed once this long has passed.
const CHECKPOINT_IDLE: Duration = Duration::from_secs(10);

/// Checkpoints the WAL into the database on a connection of its own, about as often as SQLite
/// itself would (every [`CHECKPOINT_WRITES`] writes, or [`CHECKPOINT_IDLE`] after fewer):
/// `PASSIVE`, so it never waits for a writer or makes one wait, and its fsyncs are on its own
/// thread rather than inside a decision's write. Not more often: each one's fsyncs share the
/// disk with the audit's.
struct Checkpointer {
    task: tokio::task::JoinHandle<()>,
}

impl Checkpointer {
    fn start(pool: SqlitePool, written: std::sync::Arc<AtomicU64>) -> Checkpointer {
        let task = tokio::spawn(async move {
            let mut look = tokio::time::interval(CHECKPOINT_LOOK);
            look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut done, mut at) = (0, tokio::time::Instant::now());
            loop {
                look.tick().await;
                let now = written.load(Ordering::Relaxed);
                let due = now.saturating_sub(done) >= CHECKPOINT_WRITES
                    || (now != done && at.elapsed() >= CHECKPOINT_IDLE);
                if !due {
                    continue;
                }
                match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&pool)
                    .await
                {
                    Ok(_) => (done, at) = (now, tokio::time::Instant::now()),
                    // The writers' own checkpoint (`WAL_BACKSTOP_PAGES`) still bounds the WAL.
                    Err(e) => {
                        tracing::warn!(error = %e, "the store's WAL could not be checkpointed")
                    }
                }
            }
        });
        Checkpointer { task }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes the agent-state hints in order, newest per agent, behind the moves: what waits is
/// bounded by the number of agents (a newer move replaces an unwritten one), and a stop flushes
/// it ([`IncidentStore::flush`]). A kill can leave a hint a move or two behind, as it always
/// could leave one behind the incidents: recovery trusts the incidents and the audit over it.
struct HintWriter {
    queue: std::sync::Arc<HintQueue>,
    task: tokio::task::JoinHandle<()>,
}

struct HintQueue {
    pending: std::sync::Mutex<Hints>,
    wake: tokio::sync::Notify,
    /// Held while a batch is taken and written, by the task or a flush: a batch taken later
    /// holds newer hints and is written later, so an older one never lands last.
    writing: tokio::sync::Mutex<()>,
    conn: std::sync::Arc<Kept>,
    rows: std::sync::Arc<Sealer>,
    written: std::sync::Arc<AtomicU64>,
}

/// The newest hint per agent (what this process, the directory's only writer, reads back) and
/// the agents whose hint is not written yet.
#[derive(Default)]
struct Hints {
    newest: std::collections::BTreeMap<String, AgentState>,
    unwritten: std::collections::BTreeSet<String>,
}

impl HintQueue {
    /// Write what is unwritten, in one transaction.
    async fn write_pending(&self) -> Result<(), StoreError> {
        let _writing = self.writing.lock().await;
        let hints: std::collections::BTreeMap<String, AgentState> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let unwritten = std::mem::take(&mut pending.unwritten);
            unwritten
                .into_iter()
                .filter_map(|a| pending.newest.get(&a).map(|s| (a, s.clone())))
                .collect()
        };
        if hints.is_empty() {
            return Ok(());
        }
        self.written.fetch_add(1, Ordering::Relaxed);
        let written = match self.conn.lend().await {
            Ok(mut conn) => write_hints(&mut conn, &self.rows, &self.conn.crashes, &hints).await,
            Err(e) => Err(self.rows.fail(self.conn.crashes.note(e))),
        };
        if written.is_err() {
            // Still unwritten: the next write (or the stop's flush) tries them again.
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.unwritten.extend(hints.into_keys());
        }
        written
    }
}

impl HintWriter {
    fn start(
        conn: std::sync::Arc<Kept>,
        rows: std::sync::Arc<Sealer>,
        written: std::sync::Arc<AtomicU64>,
    ) -> HintWriter {
        let queue = std::sync::Arc::new(HintQueue {
            pending: Default::default(),
            wake: tokio::sync::Notify::new(),
            writing: tokio::sync::Mutex::new(()),
            conn,
            rows,
            written,
        });
        let writer = queue.clone();
        let task = tokio::spawn(async move {
            loop {
                writer.wake.notified().await;
                // A decision makes three moves in a millisecond: written once, after them,
                // rather than a transaction per move competing with the decision's own writes.
                tokio::time::sleep(HINT_DELAY).await;
                if let Err(e) = writer.write_pending().await {
                    // A hint, never the truth: the next move or the stop's flush writes it.
                    tracing::warn!(error = %e, "the agents' state hints could not be saved");
                }
            }
        });
        HintWriter { queue, task }
    }

    fn queue(&self, agent: &str, state: &AgentState) {
        {
            let mut pending = self.queue.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.newest.insert(agent.to_owned(), state.clone());
            pending.unwritten.insert(agent.to_owned());
        }
        self.queue.wake.notify_one();
    }

    fn queued(&self, agent: &str) -> Option<AgentState> {
        let pending = self.queue.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.newest.get(agent).cloned()
    }

    /// Write every hint queued so far, here: it does not depend on the writer's task still
    /// running (its runtime may be gone), and waits for a batch the task is writing.
    async fn flush(&self) -> Result<(), StoreError> {
        self.queue.write_pending().await
    }
}

impl Drop for HintWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long the writer lets moves gather before writing them.
const HINT_DELAY: Duration = Duration::from_millis(20);

/// One transaction for every agent's newest hint.
async fn write_hints(
    conn: &mut SqliteConnection,
    rows: &Sealer,
    crashes: &Crashes,
    hints: &std::collections::BTreeMap<String, AgentState>,
) -> Result<(), StoreError> {
    let mut tx = conn.begin().await.map_err(|e| rows.fail(crashes.note(e)))?;
    for (agent, state) in hints {
        let (body, mac) = rows.seal("agent_states", agent, state)?;
        sqlx::query(
            "INSERT INTO agent_states (agent, body, mac) VALUES (?1, ?2, ?3)
             ON CONFLICT (agent) DO UPDATE SET body = ?2, mac = ?3",
        )
        .bind(agent)
        .bind(body)
        .bind(mac)
        .execute(&mut *tx)
        .await
        .map_err(|e| rows.fail(crashes.note(e)))?;
    }
    tx.commit().await.map_err(|e| rows.fail(crashes.note(e)))?;
    Ok(())
}

/// The statuses that absorb further alerts, as an SQL list (fixed names, nothing from outside).
fn open_statuses_sql() -> String {
    open_statuses()
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl IncidentStore for SqliteStore {
    async fn save(&self, incident: &Incident) -> Result<(), StoreError> {
        let mut conn = self.writer()?.lend().await.map_err(|e| self.sql(e))?;
        self.write_incident(&mut conn, incident).await
    }

    /// Through the hints' connection (`synchronous = NORMAL`): in the WAL at once, on disk with
    /// the next durable commit (the WAL is one sequence).
    async fn stage(&self, incident: &Incident) -> Result<(), StoreError> {
        let hints = self
            .hints
            .as_ref()
            .ok_or_else(|| self.fail("the store was opened read-only"))?;
        let mut conn = hints.lend().await.map_err(|e| self.sql(e))?;
        self.write_incident(&mut conn, incident).await
    }

    /// One durable commit through the writer (`synchronous = FULL`): the WAL is one sequence,
    /// so its fsync covers every staged write before it.
    async fn sync(&self) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sync_marks (id, n) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = n + 1",
        )
        .execute(&mut *self.writer()?.lend().await.map_err(|e| self.sql(e))?)
        .await
        .map_err(|e| self.sql(e))?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Incident, StoreError> {
        self.get_incident(id)
            .await?
            .ok_or_else(|| StoreError::UnknownIncident(id.into()))
    }

    async fn scan(&self) -> Result<(Vec<Incident>, Vec<StoreError>), StoreError> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT id, body, mac FROM incidents ORDER BY opened_ms, id")
                .fetch_all(&mut *self.reader.lend().await.map_err(|e| self.sql(e))?)
                .await
                .map_err(|e| self.sql(e))?;
        let (mut out, problems) = self.rows.incidents(rows, |_| true);
        out.sort_by_key(|i| i.opened_at);
        Ok((out, problems))
    }

    async fn recent(
        &self,
        filter: &super::Filter,
        limit: usize,
    ) -> Result<(Vec<Incident>, Vec<StoreError>), StoreError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT id, body, mac FROM incidents
             WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR agent = ?2)
             ORDER BY opened_ms DESC, rowid DESC LIMIT ?3",
        )
        .bind(filter.status.map(status_name))
        .bind(filter.agent.as_deref())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *self.reader.lend().await.map_err(|e| self.sql(e))?)
        .await
        .map_err(|e| self.sql(e))?;
        Ok(self.rows.incidents(rows, |i| filter.keeps(i)))
    }

    async fn open_ids(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let sql = format!(
            "SELECT id FROM incidents WHERE status IN ({})",
            open_statuses_sql()
        );
        let ids: Vec<String> = sqlx::query_scalar(&sql)
            .fetch_all(&mut *self.reader.lend().await.map_err(|e| self.sql(e))?)
            .await
            .map_err(|e| self.sql(e))?;
        Ok(ids.into_iter().collect())
    }

    async fn open_for(
        &self,
        agent: &str,
        fingerprint: &str,
    ) -> Result<Option<Incident>, StoreError> {
        let sql = format!(
            "SELECT id, body, mac FROM incidents WHERE agent = ?1 AND fingerprint = ?2 AND status IN ({}) ORDER BY opened_ms DESC, rowid DESC LIMIT 1",
            open_statuses_sql()
        );
        let found = self.incident_where(&sql, agent, fingerprint).await?;
        // The columns are an index; the sealed body is what counts.
        Ok(
            found
                .filter(|i| i.status.is_open() && i.agent == agent && i.fingerprint == fingerprint),
        )
    }

    async fn latest_for(
        &self,
        agent: &str,
        fingerprint: &str,
    ) -> Result<Option<Incident>, StoreError> {
        let found = self
            .incident_where(
                "SELECT id, body, mac FROM incidents WHERE agent = ?1 AND fingerprint = ?2 ORDER BY opened_ms DESC, rowid DESC LIMIT 1",
                agent,
                fingerprint,
            )
            .await?;
        Ok(found.filter(|i| i.agent == agent && i.fingerprint == fingerprint))
    }

    async fn claim(&self, answer: Answer, next: IncidentStatus) -> Result<Incident, ClaimError> {
        let _one = self.claims.lock().await;
        let mut writer = self.writer()?.lend().await.map_err(|e| self.sql(e))?;
        // Read and write in one transaction on the only writing connection: nobody writes
        // between the check and the claim, in this process or another.
        // IMMEDIATE: the write lock from the start. A deferred transaction that read first is
        // refused at once (no busy wait) when another connection — the hints' — writes.
        let mut tx = writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.sql(e))?;
        let approval_id = answer.approval_id.clone();
        let Some(id) = super::approval_incident(&approval_id) else {
            return Err(StoreError::UnknownIncident(approval_id).into());
        };
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT body, mac FROM incidents WHERE id = ?1")
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.sql(e))?;
        let incident = self.rows.claimed(&id, row, answer, next)?;
        self.write_incident(&mut tx, &incident).await?;
        tx.commit().await.map_err(|e| self.sql(e))?;
        Ok(incident)
    }

    async fn prune_closed(
        &self,
        agent: &str,
        before: SystemTime,
        limit: usize,
        announce: super::Announce<'_>,
    ) -> Result<Vec<String>, StoreError> {
        let sql = format!(
            "SELECT id, body, mac FROM incidents WHERE agent = ?1 AND changed_ms < ?2
             AND status NOT IN ({}) ORDER BY changed_ms LIMIT ?3",
            open_statuses_sql()
        );
        let mut writer = self.writer()?.lend().await.map_err(|e| self.sql(e))?;
        let mut tx = writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.sql(e))?;
        let rows: Vec<Row> = sqlx::query_as(&sql)
            .bind(agent)
            .bind(millis(before))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.sql(e))?;
        let due = self.rows.prunable(agent, rows);
        let ids: Vec<String> = due.iter().map(|(id, _)| id.clone()).collect();
        if !ids.is_empty() {
            announce(&ids)?;
        }
        let mut pruned = Vec::new();
        for (id, mac) in due {
            let gone = sqlx::query("DELETE FROM incidents WHERE id = ?1 AND mac = ?2")
                .bind(&id)
                .bind(&mac)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.sql(e))?;
            if gone.rows_affected() == 1 {
                pruned.push(id);
            }
        }
        tx.commit().await.map_err(|e| self.sql(e))?;
        Ok(pruned)
    }

    /// Handed to the hints' writer: a move never waits on the database (each write is a hop
    /// to SQLite's thread and back, a third of a decision's time when every move waited).
    async fn save_agent_state(&self, agent: &str, state: &AgentState) -> Result<(), StoreError> {
        let writer = self
            .hint_writer
            .as_ref()
            .ok_or_else(|| self.fail("the store was opened read-only"))?;
        writer.queue(agent, state);
        Ok(())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        match &self.hint_writer {
            Some(writer) => writer.flush().await,
            None => Ok(()),
        }
    }

    async fn agent_state(&self, agent: &str) -> Result<AgentState, StoreError> {
        if let Some(queued) = self.hint_writer.as_ref().and_then(|w| w.queued(agent)) {
            return Ok(queued);
        }
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT body, mac FROM agent_states WHERE agent = ?1")
                .bind(agent)
                .fetch_optional(&mut *self.reader.lend().await.map_err(|e| self.sql(e))?)
                .await
                .map_err(|e| self.sql(e))?;
        Ok(self
            .rows
            .optional("agent_states", agent, row)?
            .unwrap_or(AgentState::Idle))
    }

    async fn save_guard(&self, book: &GuardBook) -> Result<(), StoreError> {
        let (body, mac) = self.rows.seal("guard", "1", book)?;
        sqlx::query(
            "INSERT INTO guard (id, body, mac) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET body = ?1, mac = ?2",
        )
        .bind(body)
        .bind(mac)
        .execute(&mut *self.writer()?.lend().await.map_err(|e| self.sql(e))?)
        .await
        .map_err(|e| self.sql(e))?;
        Ok(())
    }

    async fn guard(&self) -> Result<GuardBook, StoreError> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT body, mac FROM guard WHERE id = 1")
                .fetch_optional(&mut *self.reader.lend().await.map_err(|e| self.sql(e))?)
                .await
                .map_err(|e| self.sql(e))?;
        Ok(self.rows.optional("guard", "1", row)?.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `kept` still lends the connection that made `temp.marker` (temporary tables
    /// belong to one connection).
    async fn same_connection(kept: &Kept) -> bool {
        let mut conn = kept.lend().await.expect("lent");
        sqlx::query("SELECT count(*) FROM temp.marker")
            .execute(&mut *conn)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_kept_connection_found_gone_is_connected_again_and_a_live_one_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open_waiting(dir.path(), Duration::from_secs(1))
            .await
            .expect("open");
        let writer = store.writer().expect("writer");
        sqlx::query("CREATE TEMP TABLE marker (x)")
            .execute(&mut *writer.lend().await.expect("lent"))
            .await
            .expect("marker");

        // A crash met elsewhere: this connection answers its ping and is kept.
        let _ = store.sql(sqlx::Error::WorkerCrashed);
        assert_eq!(store.crashes.count(), 1);
        assert!(same_connection(writer).await);
        // Any other error leaves the connections unchecked.
        let _ = store.sql(sqlx::Error::RowNotFound);
        assert_eq!(store.crashes.count(), 1);

        // Gone: the next lending connects again, and the store writes through it.
        writer.lose().await;
        assert!(!same_connection(writer).await);
        store.sync().await.expect("sync through the new connection");
        let mut conn = store.reader.lend().await.expect("reader");
        let (n,): (i64,) = sqlx::query_as("SELECT n FROM sync_marks WHERE id = 1")
            .fetch_one(&mut *conn)
            .await
            .expect("mark");
        assert_eq!(n, 1);
    }
}
