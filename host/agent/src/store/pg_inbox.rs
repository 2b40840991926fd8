//! The shared store's inbox (table `inbox`): alerts a host standing by accepted — it holds no
//! state and writes no audit of its own — for the host that holds the state to take up. A
//! notification is stored whole, as it arrived, once its sender and its shape were checked; the
//! holder takes the oldest first onto its audit chain and then removes them. A crash between
//! the two takes a notification up twice, which deduplication by fingerprint absorbs as one
//! more notification of the same alert (Alertmanager repeats notifications anyway): at least
//! once, never lost.
//!
//! A row's seal covers its id, and ids are handed out and committed in one order (under the
//! storers' lock): a copy of a row under another id does not verify, and a row put back with
//! its own id after it was taken up is below an id the holder has seen, yet not among the rows
//! it saw waiting, and is refused.

use super::StoreError;
use super::mac::HostKey;
use super::postgres::PgTarget;
use super::rows::Sealer;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::path::PathBuf;
use std::time::Duration;

/// Notifications the inbox holds at most; past it a standby answers 429, as a full backlog does.
pub const INBOX_LIMIT: i64 = 10_000;

/// The advisory lock (two-key form, apart from the lease's one-key lock) storing takes.
const INBOX_LOCK: (i32, i32) = (0x7468_656d, 0x696e_6278);

pub struct PgInbox {
    pool: PgPool,
    place: String,
    key_file: PathBuf,
    /// Opens the holder's sealed address (the deployment's host key).
    rows: Sealer,
    /// How many notifications may wait ([`INBOX_LIMIT`]; smaller in tests).
    limit: i64,
    /// What this host has seen of the inbox (from its first look).
    seen: std::sync::Mutex<Option<Seen>>,
}

/// The highest id seen waiting whose seal verified, and the ids at or below it still waiting:
/// a row at or below it and not among them is one put back. Ids are committed in the order they are handed out, so
/// once an id is seen every lower one that will ever exist already does.
struct Seen {
    through: i64,
    waiting: std::collections::BTreeSet<i64>,
    /// The last id handed out when this host first looked: a row at or below it may have been
    /// stored by an earlier version, which sealed rows without their id.
    legacy_through: i64,
    /// The seals each waiting row this host rewrote may have ([`PgInbox::keep_only`]): the
    /// new one, and until the rewrite is known to have landed the one it replaced. An earlier
    /// version of the row put back is refused.
    rewritten: std::collections::BTreeMap<i64, Vec<String>>,
}

/// Who holds the state, as `holder` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    /// Where it serves its API, when it said so (and the seal verified).
    pub url: Option<String>,
}

/// One stored notification.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: i64,
    pub via: String,
    pub body: String,
    mac: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("the shared inbox holds {0} notifications the holder has not taken up")]
    Full(i64),
    /// What this host seals the holder could not open (or nobody holds the state yet to take it).
    #[error("{0}")]
    Foreign(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a holder's address is sealed under: its fencing token, so that the address of an
/// earlier holder (a host since gone, its address perhaps another machine's now) never
/// verifies for the one that holds the state.
pub(super) fn url_key(token: i64) -> String {
    format!("url@{token}")
}

impl PgInbox {
    /// The inbox of the database `target` names, for the host whose state directory is `dir`
    /// (its host key opens the holder's address); connects when first used.
    pub fn connect(target: &PgTarget, dir: &std::path::Path) -> Result<PgInbox, StoreError> {
        crate::private::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        // A host stalled inside a store (holding the inbox's lock) is cut off after 10 s.
        let options = target.options()?.options([
            ("statement_timeout", "10000"),
            ("idle_in_transaction_session_timeout", "10000"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Ok(PgInbox {
            pool,
            place: target.url.clone(),
            key_file: dir.join("host.key"),
            rows: Sealer {
                key: HostKey::load_or_create(&dir.join("host.key"))?,
                place: target.url.clone(),
            },
            limit: INBOX_LIMIT,
            seen: std::sync::Mutex::new(None),
        })
    }

    /// The same inbox holding at most `limit` (the store tests fill it).
    #[cfg(test)]
    pub(crate) fn with_limit(self, limit: i64) -> PgInbox {
        PgInbox { limit, ..self }
    }

    /// Who holds the state now, and where it serves. An address whose seal does not verify
    /// under this host's key is an error: a row edited by hand, or hosts with different keys.
    pub async fn holder(&self) -> Result<Option<Holder>, StoreError> {
        let row: Option<(String, i64, Option<String>, Option<String>)> =
            sqlx::query_as("SELECT host, token, url, url_mac FROM holder WHERE id = 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.fail(e))?;
        let Some((host, token, url, mac)) = row else {
            return Ok(None);
        };
        let url = match (url, mac) {
            (Some(body), Some(mac)) => {
                Some(
                    self.rows
                        .open::<String>("holder", &url_key(token), &body, &mac)?,
                )
            }
            _ => None,
        };
        Ok(Some(Holder { host, url }))
    }

    fn fail(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Database {
            path: PathBuf::from(&self.place),
            message: e.to_string(),
        }
    }

    /// Store a notification (its JSON, redacted by the caller), sealed under the host key;
    /// durable when this returns. Its id. Stored only while a holder with this host's key holds
    /// the state: a row sealed under another key would be refused by the holder after this
    /// host answered 200, and the alerts lost.
    pub async fn put(&self, via: &str, body: &serde_json::Value) -> Result<i64, InboxError> {
        let ours = self.rows.key_id();
        let mut tx = self.pool.begin().await.map_err(|e| self.fail(e))?;
        // One store at a time across every host standing by, counted under the lock: the limit
        // holds exactly however many store at once. An advisory lock, not a table lock: the
        // holder's reads and removals (which only lower the count) never wait on it.
        self.lock_storers(&mut tx).await?;
        // Taken under the lock, so ids are committed in the order they are handed out.
        let id: i64 = sqlx::query_scalar("SELECT nextval(pg_get_serial_sequence('inbox', 'id'))")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.fail(e))?;
        let (body, mac) = self.rows.seal("inbox", &row_key(id, via), body)?;
        let (id, theirs): (Option<i64>, Option<String>) = sqlx::query_as(
            "WITH h AS (SELECT key_id FROM holder WHERE id = 1),
                  ins AS (INSERT INTO inbox (id, via, body, mac) SELECT $6, $1, $2, $3
                          WHERE (SELECT count(*) FROM inbox) < $4
                            AND (SELECT key_id FROM h) = $5
                          RETURNING id)
             SELECT (SELECT id FROM ins), (SELECT key_id FROM h)",
        )
        .bind(via)
        .bind(&body)
        .bind(&mac)
        .bind(self.limit)
        .bind(&ours)
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| self.fail(e))?;
        tx.commit().await.map_err(|e| self.fail(e))?;
        match (id, theirs) {
            (Some(id), _) => Ok(id),
            (None, Some(theirs)) if theirs != ours => Err(InboxError::Foreign(format!(
                "this host's key ({ours}, in {}) is not the key of the host holding the state ({theirs}): the holder would refuse what this host stored. Give every host of the deployment the same host.key",
                self.key_file.display()
            ))),
            (None, None) => Err(InboxError::Foreign(
                "no host holds the state yet to take up what this host would store".into(),
            )),
            (None, Some(_)) => Err(InboxError::Full(self.limit)),
        }
    }

    /// The newest row's id (`None`: the inbox is empty).
    pub async fn newest(&self) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar("SELECT max(id) FROM inbox")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.fail(e))
    }

    /// The oldest `limit` notifications waiting after row `after` (0: from the first).
    pub async fn waiting(&self, after: i64, limit: i64) -> Result<Vec<Stored>, StoreError> {
        let known = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if !known {
            let (through, legacy_through) = self.taken_so_far().await?;
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.get_or_insert(Seen {
                through,
                legacy_through,
                waiting: Default::default(),
                rewritten: Default::default(),
            });
        }
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT id, via, body, mac FROM inbox WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.fail(e))?;
        // From the first: what waited below the oldest row left (removed by hand).
        if let Some(seen) = self.seen.lock().unwrap_or_else(|p| p.into_inner()).as_mut()
            && after == 0
        {
            let oldest = rows.first().map_or(i64::MAX, |r| r.0);
            seen.waiting.retain(|id| *id >= oldest);
            seen.rewritten.retain(|id, _| *id >= oldest);
        }
        Ok(rows
            .into_iter()
            .map(|(id, via, body, mac)| Stored { id, via, body, mac })
            .collect())
    }

    /// One storer at a time across every host, until `tx` ends.
    async fn lock_storers(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(INBOX_LOCK.0)
            .bind(INBOX_LOCK.1)
            .execute(&mut **tx)
            .await
            .map(|_| ())
            .map_err(|e| self.fail(e))
    }

    /// Where the ids taken up so far end, when this host first looks — below the oldest row
    /// waiting, or, with none waiting, the last id handed out — and that last id. Read under
    /// the storers' lock, so no row is being stored with an id handed out but not yet
    /// committed. Ids commit in the order handed out only if no session caches a block of
    /// them: a sequence altered to cache more is an error saying so.
    async fn taken_so_far(&self) -> Result<(i64, i64), StoreError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.fail(e))?;
        self.lock_storers(&mut tx).await?;
        let (oldest, last, cache): (Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT min(id) FROM inbox),
                    pg_sequence_last_value(pg_get_serial_sequence('inbox', 'id')::regclass),
                    (SELECT seqcache FROM pg_sequence
                     WHERE seqrelid = pg_get_serial_sequence('inbox', 'id')::regclass)",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| self.fail(e))?;
        tx.commit().await.map_err(|e| self.fail(e))?;
        if let Some(cache) = cache.filter(|c| *c > 1) {
            return Err(self.fail(format!(
                "the inbox's id sequence caches {cache} ids per session, so ids would not be committed in the order they are handed out and rows stored later could pass for copies: run `ALTER SEQUENCE inbox_id_seq CACHE 1`"
            )));
        }
        let last = last.unwrap_or(0);
        Ok((oldest.map_or(last, |id| id - 1), last))
    }

    /// A stored notification's body, once its seal verifies under this host's key for this
    /// row: a row added or changed by hand (or by a host with another key), a copy of a row
    /// under another id, and a row put back after it was taken up are refused.
    pub fn open(&self, stored: &Stored) -> Result<String, StoreError> {
        let (put_back, rewound, legacy_through) = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or((false, false, 0), |seen| {
                (
                    stored.id <= seen.through && !seen.waiting.contains(&stored.id),
                    seen.rewritten
                        .get(&stored.id)
                        .is_some_and(|macs| !macs.contains(&stored.mac)),
                    seen.legacy_through,
                )
            });
        if rewound {
            return Err(self.fail(format!(
                "inbox row {} is not as this host last wrote it (an earlier version put back?): refused",
                stored.id
            )));
        }
        if put_back {
            return Err(self.fail(format!(
                "inbox row {} was put back: it is not among the rows this host saw waiting, and its id is below one it saw; a copy of a notification is refused",
                stored.id
            )));
        }
        let value: serde_json::Value = self
            .rows
            .open("inbox", &row_key(stored.id, &stored.via), &stored.body, &stored.mac)
            .or_else(|e| {
                let unbound: Result<serde_json::Value, _> =
                    self.rows.open("inbox", &stored.via, &stored.body, &stored.mac);
                match unbound {
                    // Stored by an earlier version before this host first looked: taken.
                    Ok(value) if stored.id <= legacy_through => Ok(value),
                    Ok(_) => Err(self.fail(format!(
                        "inbox row {} was sealed without its id, by an earlier version of Themis, after this host first looked: refused, since a copy of such a row verifies too; upgrade the hosts standing by before the holder",
                        stored.id
                    ))),
                    Err(_) => Err(e),
                }
            })?;
        // Only a row whose seal verifies moves what this host has seen: a row with a made-up
        // id far ahead cannot make the rows stored after it pass for put back.
        if let Some(seen) = self.seen.lock().unwrap_or_else(|p| p.into_inner()).as_mut()
            && stored.id > seen.through
        {
            seen.through = stored.id;
            seen.waiting.insert(stored.id);
        }
        serde_json::to_string(&value).map_err(|e| self.fail(e))
    }

    /// Rewrite the row `stored` to hold only `body` (what of it is still to take up), sealed
    /// again for the row: the rest was taken, and is not taken again. Only the row as it was
    /// read is rewritten: one changed since (by another holder) is an error.
    pub async fn keep_only(
        &self,
        stored: &Stored,
        via: &str,
        body: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let id = stored.id;
        let (body, mac) = self.rows.seal("inbox", &row_key(id, via), body)?;
        // Either seal until the rewrite is known to have landed: an update committed but its
        // answer lost must not make the row look put back.
        let before = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .and_then(|seen| {
                seen.rewritten
                    .insert(id, vec![stored.mac.clone(), mac.clone()])
            });
        let rewritten = sqlx::query(
            "UPDATE inbox SET via = $2, body = $3, mac = $4 WHERE id = $1 AND mac = $5",
        )
        .bind(id)
        .bind(via)
        .bind(&body)
        .bind(&mac)
        .bind(&stored.mac)
        .execute(&self.pool)
        .await
        .map_err(|e| self.fail(e))?;
        if rewritten.rows_affected() != 1 {
            // Not rewritten: the seals it may have are those it had.
            if let Some(seen) = self.seen.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                match before {
                    Some(macs) => seen.rewritten.insert(id, macs),
                    None => seen.rewritten.remove(&id),
                };
            }
            return Err(self.fail(format!(
                "inbox row {id} changed or went since it was read; it is read again at the next look"
            )));
        }
        if let Some(seen) = self.seen.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            seen.rewritten.insert(id, vec![mac]);
        }
        Ok(())
    }

    /// A notification taken up: out of the inbox.
    pub async fn done(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM inbox WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.fail(e))?;
        if let Some(seen) = self.seen.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            seen.waiting.remove(&id);
            seen.rewritten.remove(&id);
        }
        Ok(())
    }
}

/// What a row's seal is over besides its table and body: its id and the way it came in.
fn row_key(id: i64, via: &str) -> String {
    format!("{id}/{via}")
}
