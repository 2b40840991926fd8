//! The audit chain's shared home in the state database (table `audit`): what a host that takes
//! the state over continues (see `audit::replica`). Every append is fenced as every state write
//! is — the holder's token checked under a share lock in the same transaction — and must
//! continue the shared head, so a host that lost the state, however late it wakes, adds nothing.
//!
//! The log calls from its commit points, which block; the database is reached through a thread
//! of its own with a small runtime, so a call never needs (or upsets) the caller's runtime.

use crate::audit::replica::{self, Line, Replica, ReplicaError};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Job = Box<dyn FnOnce(&tokio::runtime::Runtime, &PgPool) + Send>;

/// How long one call may take before the commit point waiting on it fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

pub struct PgReplica {
    jobs: Mutex<mpsc::Sender<Job>>,
    place: String,
    mine: i64,
    lost: Arc<Mutex<Option<String>>>,
}

impl PgReplica {
    /// A replica writing as the holder of token `mine`; `lost` is the store's, told when the
    /// database says another host holds it.
    pub(super) fn start(
        options: PgConnectOptions,
        place: String,
        mine: i64,
        lost: Arc<Mutex<Option<String>>>,
    ) -> Result<PgReplica, String> {
        let (tx, rx) = mpsc::channel::<Job>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("the shared audit's runtime: {e}"))?;
        let options = options.options([
            ("statement_timeout", "10000".to_string()),
            (
                "idle_in_transaction_session_timeout",
                super::postgres::IDLE_IN_TRANSACTION.as_millis().to_string(),
            ),
        ]);
        std::thread::Builder::new()
            .name("themis-audit-replica".into())
            .spawn(move || {
                let pool = runtime.block_on(async {
                    PgPoolOptions::new()
                        .max_connections(1)
                        .acquire_timeout(Duration::from_secs(10))
                        .connect_lazy_with(options)
                });
                // Ends when the replica (the sender) is dropped.
                while let Ok(job) = rx.recv() {
                    job(&runtime, &pool);
                }
                runtime.block_on(pool.close());
            })
            .map_err(|e| format!("the shared audit's thread: {e}"))?;
        Ok(PgReplica {
            jobs: Mutex::new(tx),
            place,
            mine,
            lost,
        })
    }

    /// Run `work` on the replica's thread and wait for its answer.
    fn call<T: Send + 'static>(
        &self,
        work: impl AsyncFnOnce(&PgPool) -> Result<T, ReplicaError> + Send + 'static,
    ) -> Result<T, ReplicaError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |runtime, pool| {
            let result = runtime.block_on(async {
                tokio::time::timeout(CALL_TIMEOUT, work(pool))
                    .await
                    .unwrap_or_else(|_| {
                        Err(ReplicaError::Failed(format!(
                            "no answer within {}s",
                            CALL_TIMEOUT.as_secs()
                        )))
                    })
            });
            let _ = reply.send(result);
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| ReplicaError::Failed("the shared audit's thread stopped".into()))?;
        let result = answer
            .recv()
            .map_err(|_| ReplicaError::Failed("the shared audit's thread stopped".into()))?;
        if let Err(ReplicaError::Lost(why)) = &result {
            self.lost
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(|| why.clone());
        }
        result
    }
}

fn failed(e: sqlx::Error) -> ReplicaError {
    ReplicaError::Failed(e.to_string())
}

/// The transaction's holder check: the token is still `mine`, or this host lost the state.
async fn fence(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    mine: i64,
    place: &str,
) -> Result<(), ReplicaError> {
    let now: Option<(i64, String)> =
        sqlx::query_as("SELECT token, host FROM holder WHERE id = 1 FOR SHARE")
            .fetch_optional(&mut **tx)
            .await
            .map_err(failed)?;
    match now {
        Some((token, _)) if token == mine => Ok(()),
        now => Err(ReplicaError::Lost(format!(
            "state database {place}: another host took the state over ({}; this host's token was {mine}): this host writes nothing more — restart it to stand by",
            now.map_or_else(
                || "nobody".into(),
                |(t, host)| format!("{host} (token {t})")
            )
        ))),
    }
}

impl Replica for PgReplica {
    fn place(&self) -> String {
        self.place.clone()
    }

    fn head(&self) -> Result<Option<(u64, String)>, ReplicaError> {
        self.call(async |pool| {
            let row: Option<(i64, String)> =
                sqlx::query_as("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(pool)
                    .await
                    .map_err(failed)?;
            Ok(row.map(|(seq, hash)| (seq as u64, hash)))
        })
    }

    fn hash_at(&self, seq: u64) -> Result<Option<String>, ReplicaError> {
        self.call(async move |pool| {
            sqlx::query_scalar("SELECT hash FROM audit WHERE seq = $1")
                .bind(seq as i64)
                .fetch_optional(pool)
                .await
                .map_err(failed)
        })
    }

    fn after(&self, seq: u64, limit: usize) -> Result<Vec<Line>, ReplicaError> {
        self.call(async move |pool| {
            let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
                "SELECT seq, hash, prev, line FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(seq as i64)
            .bind(limit as i64)
            .fetch_all(pool)
            .await
            .map_err(failed)?;
            Ok(rows
                .into_iter()
                .map(|(seq, hash, prev, text)| Line {
                    seq: seq as u64,
                    hash,
                    prev,
                    text,
                })
                .collect())
        })
    }

    fn append(&self, lines: &[Line]) -> Result<(), ReplicaError> {
        let lines = lines.to_vec();
        let (mine, place) = (self.mine, self.place.clone());
        self.call(async move |pool| {
            let mut tx = pool.begin().await.map_err(failed)?;
            fence(&mut tx, mine, &place).await?;
            let head: Option<(i64, String)> =
                sqlx::query_as("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(failed)?;
            let head = head.map(|(seq, hash)| (seq as u64, hash));
            let rest = replica::continuing(&lines, head.as_ref()).map_err(ReplicaError::Lost)?;
            if rest.is_empty() {
                return Ok(());
            }
            sqlx::query(
                "INSERT INTO audit (seq, hash, prev, line)
                 SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[])",
            )
            .bind(rest.iter().map(|l| l.seq as i64).collect::<Vec<_>>())
            .bind(rest.iter().map(|l| l.hash.clone()).collect::<Vec<_>>())
            .bind(rest.iter().map(|l| l.prev.clone()).collect::<Vec<_>>())
            .bind(rest.iter().map(|l| l.text.clone()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
            tx.commit().await.map_err(failed)
        })
    }

    fn forget_before(&self, seq: u64) -> Result<(), ReplicaError> {
        let (mine, place) = (self.mine, self.place.clone());
        self.call(async move |pool| {
            let mut tx = pool.begin().await.map_err(failed)?;
            fence(&mut tx, mine, &place).await?;
            sqlx::query("DELETE FROM audit WHERE seq < $1")
                .bind(seq as i64)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            tx.commit().await.map_err(failed)
        })
    }
}
