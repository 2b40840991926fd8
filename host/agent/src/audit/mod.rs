//! The audit log: append-only JSON lines, each record carrying the hash of the one before it,
//! fsynced before the action it announces is taken, and emitted as a `tracing` event with stable
//! field names so it lands in the normal observability pipeline.
//!
//! One writer per file: the log holds an exclusive lock on the file for as long as it is open,
//! so two processes can never continue the same chain from the same tail (a fork). Every record
//! is redacted, then bounded in size (large values become a digest) before it is hashed.

pub mod checkpoint;
pub mod describe;
pub mod replica;
pub mod segments;
pub mod verify;

pub use themis_core::redact::Redactor;

use crate::lock::{self, Held, LockError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// The largest record the log keeps; a larger one has its data summarised with a digest.
pub const MAX_RECORD_BYTES: usize = 256 << 10;

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audited action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub seq: u64,
    /// RFC 3339, UTC, milliseconds.
    pub ts: String,
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    /// What happened: `alert`, `transition`, `illegal-transition`, `selection`, `decision`,
    /// `phase`, `capability-call`, `escalation`, `approval`, `result`, …
    pub kind: String,
    pub data: Value,
    /// Set on every record of a host running in a development mode (`allow-unsigned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    pub prev: String,
    pub hash: String,
}

impl Record {
    /// sha256 over `prev` and the record's canonical JSON without its `hash`.
    ///
    /// The canonical JSON is the record as a JSON object without `hash`, its keys (and every
    /// key of `data`, a serde_json map ordered by key) in sorted order: written straight from
    /// the fields, in that order, into the digest — every record is hashed once on its way
    /// out and once more by every reader that checks it, so no copy of it is built.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.prev.as_bytes());
        h.update(b"\n");
        let canonical = Canonical {
            agent: &self.agent,
            data: &self.data,
            incident: self.incident.as_deref(),
            kind: &self.kind,
            mode: self.mode.as_deref(),
            prev: &self.prev,
            seq: self.seq,
            ts: &self.ts,
        };
        // Writing into a digest cannot fail, and a `Value` always serialises.
        let _ = serde_json::to_writer(&mut h, &canonical);
        hex::encode(h.finalize())
    }
}

/// A record as hashed: every field but `hash`, in sorted key order (see
/// [`Record::compute_hash`]). A field added to [`Record`] goes here in its sorted place.
#[derive(Serialize)]
struct Canonical<'a> {
    agent: &'a str,
    data: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    incident: Option<&'a str>,
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'a str>,
    prev: &'a str,
    seq: u64,
    ts: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "audit log {path}: the existing chain is broken ({problem}); run `themis audit verify {path}` and move the file aside before writing to it"
    )]
    BrokenTail { path: PathBuf, problem: String },
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error("audit log {path}: no record {seq} with hash {hash}: {problem}")]
    Missing {
        path: PathBuf,
        seq: u64,
        hash: String,
        problem: String,
    },
}

/// How many of the newest matching records a search keeps: at most `records`, and — for what a
/// reader is shown — at most `bytes` of their data together, so a long incident's timeline
/// (each record up to `MAX_RECORD_BYTES`) never costs a request hundreds of megabytes.
#[derive(Debug, Clone, Copy)]
pub struct Newest {
    pub records: usize,
    pub bytes: usize,
}

impl Newest {
    /// Every matching record up to `records`, whatever their size (what recovery reads).
    pub fn records(records: usize) -> Newest {
        Newest {
            records,
            bytes: usize::MAX,
        }
    }
}

/// The newest records kept so far, oldest first, within a [`Newest`].
struct Kept {
    limit: Newest,
    out: std::collections::VecDeque<(Record, usize)>,
    bytes: usize,
}

impl Kept {
    fn new(limit: Newest) -> Kept {
        Kept {
            limit,
            out: Default::default(),
            bytes: 0,
        }
    }

    fn push(&mut self, record: Record) {
        let size = if self.limit.bytes == usize::MAX {
            0
        } else {
            serde_json::to_vec(&record.data).map_or(0, |v| v.len())
        };
        self.bytes = self.bytes.saturating_add(size);
        self.out.push_back((record, size));
        // The newest record stays even alone over the budget: a timeline is never empty.
        while self.out.len() > 1
            && (self.out.len() > self.limit.records || self.bytes > self.limit.bytes)
        {
            if let Some((_, gone)) = self.out.pop_front() {
                self.bytes -= gone;
            }
        }
        if self.limit.records == 0 {
            self.out.clear();
            self.bytes = 0;
        }
    }

    fn into_vec(self) -> Vec<Record> {
        self.out.into_iter().map(|(r, _)| r).collect()
    }
}

/// Where a record sits in the chain: enough to find it again and know it is the same one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRef {
    pub seq: u64,
    pub hash: String,
}

struct Tail {
    /// The active file, open for appending.
    file: File,
    /// The same file, for fsync without holding the tail's lock (replaced when it is sealed).
    sync_file: std::sync::Arc<File>,
    /// The active file's length: where its next record starts.
    file_len: u64,
    /// The active file's first record's seq (the next one's while it is empty): the name it
    /// gets when it is sealed.
    first_seq: u64,
    /// The active file is sealed when it reaches this length.
    seal_at: u64,
    /// Bytes written by this process since it opened the log (the active file's length then
    /// included): a position that keeps growing across sealed files, which is what the
    /// durable mark and the unannounced records count in.
    len: u64,
    seq: u64,
    prev: String,
    mode: Option<String>,
    /// Records written but not yet known durable, each with the file length after it, in
    /// chain order: announced (tracing, the record observer) once an fsync covers them.
    unannounced: std::collections::VecDeque<(u64, Record)>,
}

/// How long after the replica failed to take records a commit point fails without trying it
/// again (see `Durable::replica_failed`).
const REPLICA_RETRY: Duration = Duration::from_secs(1);

/// Deferred records a commit point has not made durable yet are bounded: past either limit the
/// next append is a commit point of its own.
const MAX_DEFERRED_RECORDS: usize = 256;
const MAX_DEFERRED_BYTES: u64 = 4 << 20;

/// What has reached the disk. Appends are written in chain order under the tail's lock and made
/// durable together: whoever finds its record not yet synced either syncs everything written so
/// far (and wakes the others) or waits for the sync under way — group commit, so concurrent
/// appenders share fsyncs instead of queueing one each.
struct Durable {
    /// Bytes of the file known to be on disk.
    synced: u64,
    syncing: bool,
    /// An fsync failed: what was written since cannot be known durable, so no later append is
    /// either. The log refuses every append from then on (fail closed) until the host restarts.
    failed: Option<String>,
    /// Bytes whose records the replica holds (with one): a record is durable once both the
    /// disk and the replica hold it.
    replicated: u64,
    /// When the replica last failed to take records: the appenders waiting then fail at once
    /// rather than each trying again in turn (each try may take the replica's whole timeout).
    replica_failed: Option<std::time::Instant>,
}

impl Durable {
    /// Where durable ends: on disk, and in the replica when there is one.
    fn mark(&self, replicated: bool) -> u64 {
        if replicated {
            self.synced.min(self.replicated)
        } else {
            self.synced
        }
    }
}

/// An open audit log. Appends are serialised; each returns after the record is on disk.
pub struct AuditLog {
    path: PathBuf,
    tail: Mutex<Tail>,
    durable: Mutex<Durable>,
    synced: Condvar,
    /// The size past which the active file is sealed (see `segments`).
    segment_bytes: std::sync::atomic::AtomicU64,
    redactor: Redactor,
    /// Told how long each append took and whether it was written (metrics); set once.
    on_append: std::sync::OnceLock<AppendObserver>,
    /// Signs the chain's head every so often, when the host has a signing key.
    checkpoints: std::sync::OnceLock<checkpoint::Checkpointer>,
    /// Told of every checkpoint (metrics); set once.
    on_checkpoint: std::sync::OnceLock<CheckpointObserver>,
    /// Told of every record once it is on disk (OpenTelemetry export); set once.
    on_record: std::sync::OnceLock<RecordObserver>,
    /// Every record a commit point (no deferral): the behaviour before commit points, kept as
    /// the benchmarks' baseline.
    every_record: std::sync::atomic::AtomicBool,
    /// The chain's shared home (see `replica`): every commit point makes its records durable
    /// there too.
    replica: Option<std::sync::Arc<dyn replica::Replica>>,
    _lock: Held,
}

/// Called after every checkpoint is on the chain.
pub type CheckpointObserver = Box<dyn Fn(&checkpoint::Checkpoint) + Send + Sync>;

/// Called with every record once it is durable, exactly as written (redacted).
pub type RecordObserver = Box<dyn Fn(&Record) + Send + Sync>;

/// Called after every append with its duration (fsync included) and whether it succeeded.
pub type AppendObserver = Box<dyn Fn(Duration, bool) + Send + Sync>;

impl AuditLog {
    /// Open (creating if needed) and continue the chain at its end, waiting up to `wait` for
    /// another process that has it open.
    pub fn open(path: &Path, redactor: Redactor) -> Result<Self, AuditError> {
        Self::open_waiting(path, redactor, lock::DEFAULT_WAIT)
    }

    pub fn open_waiting(
        path: &Path,
        redactor: Redactor,
        wait: Duration,
    ) -> Result<Self, AuditError> {
        Self::open_replicated(path, redactor, wait, None)
    }

    /// As [`AuditLog::open_waiting`], with the chain's shared home when the state has one (see
    /// `replica`): the local files are reconciled with it first, and every commit point makes
    /// its records durable in both.
    pub fn open_replicated(
        path: &Path,
        redactor: Redactor,
        wait: Duration,
        replica: Option<std::sync::Arc<dyn replica::Replica>>,
    ) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::private::create_dir_all(dir).map_err(io)?;
        }
        // The lock first: the tail read below must be the tail this process continues.
        let held = lock::acquire(&lock::sidecar(path), wait)?;
        if segments::finish_interrupted_seal(path).map_err(io)? {
            tracing::warn!(audit = %path.display(), "a seal of the audit's active file that a stop cut off was finished");
        }
        let (seq, prev, torn) = local_head(path)?;
        // A writer killed mid-append leaves a last line with no newline: that record's append
        // never returned, so nothing acted on it. Move it aside (a file beside the log, for
        // whoever investigates) and cut it off; the chain says so once the log is open.
        let torn = match torn {
            Some(torn) => {
                let aside = move_aside(path, torn.at).map_err(io)?;
                let f = crate::private::options()
                    .write(true)
                    .open(path)
                    .map_err(io)?;
                f.set_len(torn.at).map_err(io)?;
                f.sync_all().map_err(io)?;
                Some((torn, aside))
            }
            None => None,
        };
        let reconciled = match &replica {
            Some(replica) => {
                let done = replica::reconcile(path, (seq, prev.clone()), replica.as_ref())?;
                if done.changed() {
                    // The local files changed: the head is read again from them.
                    return Self::open_reconciled(
                        path,
                        redactor,
                        held,
                        replica.clone(),
                        torn,
                        done,
                    );
                }
                None
            }
            None => None,
        };
        Self::open_at(path, redactor, held, (seq, prev), replica, torn, reconciled)
    }

    /// The log after reconciling changed its files: their head, read again.
    fn open_reconciled(
        path: &Path,
        redactor: Redactor,
        held: Held,
        replica: std::sync::Arc<dyn replica::Replica>,
        torn: Option<(Torn, PathBuf)>,
        done: replica::Reconciled,
    ) -> Result<Self, AuditError> {
        let (seq, prev, _) = local_head(path)?;
        Self::open_at(
            path,
            redactor,
            held,
            (seq, prev),
            Some(replica),
            torn,
            Some(done),
        )
    }

    /// The log continuing the chain at `head`, its files locked (`held`) and whole.
    fn open_at(
        path: &Path,
        redactor: Redactor,
        held: Held,
        head: (u64, String),
        replica: Option<std::sync::Arc<dyn replica::Replica>>,
        torn: Option<(Torn, PathBuf)>,
        reconciled: Option<replica::Reconciled>,
    ) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        let (seq, prev) = head;
        let mut file = crate::private::options()
            .read(true)
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let first_seq = match segments::first_link(&mut file).map_err(io)? {
            Some((first, _)) => first,
            None => seq + 1,
        };
        let sync_file = std::sync::Arc::new(file.try_clone().map_err(io)?);
        let log = AuditLog {
            path: path.to_path_buf(),
            durable: Mutex::new(Durable {
                synced: len,
                syncing: false,
                failed: None,
                replicated: len,
                replica_failed: None,
            }),
            synced: Condvar::new(),
            segment_bytes: std::sync::atomic::AtomicU64::new(segments::DEFAULT_SEGMENT_BYTES),
            tail: Mutex::new(Tail {
                file,
                sync_file,
                file_len: len,
                first_seq,
                seal_at: segments::DEFAULT_SEGMENT_BYTES,
                len,
                seq,
                prev,
                mode: None,
                unannounced: Default::default(),
            }),
            redactor,
            on_append: std::sync::OnceLock::new(),
            checkpoints: std::sync::OnceLock::new(),
            on_checkpoint: std::sync::OnceLock::new(),
            on_record: std::sync::OnceLock::new(),
            every_record: std::sync::atomic::AtomicBool::new(false),
            replica,
            _lock: held,
        };
        if let Some(done) = reconciled {
            log.append(
                "host",
                None,
                "audit-reconciled",
                serde_json::json!({
                    "shared": log.replica.as_ref().map(|r| r.place()),
                    "fetched": done.fetched,
                    "uploaded": done.uploaded,
                    "moved_aside": done.moved_aside.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                    "reason": if !done.moved_aside.is_empty() { "the local audit held records the shared chain never took (no commit point passed on them) and another host went on from its head: moved aside, the chain rebuilt from the shared one" } else if done.uploaded > 0 { "the local audit continued the shared chain past its head (records written here that a stop kept from reaching it): the shared chain was given them" } else { "the local audit was brought to the shared chain's head" },
                }),
            )?;
        }
        if let Some((torn, aside)) = torn {
            log.append(
                "host",
                None,
                "torn-record-discarded",
                serde_json::json!({ "bytes": torn.bytes, "sha256": torn.sha256, "moved_to": aside.display().to_string(), "reason": "the last append was cut off by a crash before it completed; nothing acted on it" }),
            )?;
        }
        Ok(log)
    }

    /// Why the log takes no more records (a write or a sync failed, or the shared chain was
    /// lost to another host), if it does not: it stays so until the host starts again.
    pub fn closed_by(&self) -> Option<String> {
        self.failed()
    }

    fn failed(&self) -> Option<String> {
        self.durable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed
            .clone()
    }

    /// Return once the file is on disk up to `end` — and in the replica, with one: sync it
    /// (everything written so far) or wait for the sync another appender started.
    fn wait_durable(&self, end: u64) -> std::io::Result<()> {
        let replicated = self.replica.is_some();
        let mut d = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(problem) = &d.failed {
                return Err(std::io::Error::other(problem.clone()));
            }
            if d.mark(replicated) >= end {
                return Ok(());
            }
            if d.syncing {
                d = self.synced.wait(d).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            if d.synced >= end
                && let Some(at) = d.replica_failed
                && at.elapsed() < REPLICA_RETRY
            {
                return Err(std::io::Error::other(
                    "the shared audit chain did not take the records a moment ago; not durable",
                ));
            }
            d.syncing = true;
            let replicated_to = d.replicated;
            drop(d);
            // Everything written before this point is covered by the fsync below: the bytes of
            // this file, and those of a file sealed before it (a seal syncs what it seals).
            let (upto, file, lines) = {
                let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
                let lines: Vec<replica::Line> = if replicated {
                    tail.unannounced
                        .iter()
                        .filter(|(at, _)| *at > replicated_to && *at <= tail.len)
                        .map(|(_, r)| replica::Line::of(r))
                        .collect()
                } else {
                    Vec::new()
                };
                (tail.len, tail.sync_file.clone(), lines)
            };
            let result = file.sync_data();
            // On disk first, then shared: a record the replica holds is on this host's disk.
            let shared = match (&result, &self.replica) {
                (Ok(()), Some(replica)) if !lines.is_empty() => Some(replica.append(&lines)),
                _ => None,
            };
            d = self.durable.lock().unwrap_or_else(|p| p.into_inner());
            d.syncing = false;
            let outcome = match result {
                Ok(()) => {
                    d.synced = d.synced.max(upto);
                    match shared {
                        None => {
                            d.replicated = d.replicated.max(upto);
                            Ok(())
                        }
                        Some(Ok(())) => {
                            d.replicated = d.replicated.max(upto);
                            d.replica_failed = None;
                            Ok(())
                        }
                        // Another host holds the state: nothing more is durable here.
                        Some(Err(replica::ReplicaError::Lost(why))) => {
                            let problem =
                                format!("the shared audit chain refused this host: {why}");
                            d.failed = Some(problem.clone());
                            Err(std::io::Error::other(problem))
                        }
                        // The records stay on disk and pending; the next commit point tries
                        // again, and nothing waiting on them goes ahead meanwhile.
                        Some(Err(replica::ReplicaError::Failed(why))) => {
                            d.replica_failed = Some(std::time::Instant::now());
                            Err(std::io::Error::other(format!(
                                "the shared audit chain did not take the records: {why}"
                            )))
                        }
                    }
                }
                Err(e) => {
                    d.failed = Some(fsync_failed(&e));
                    Ok(())
                }
            };
            self.synced.notify_all();
            outcome?;
        }
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// The record at `at`, read back from the file and checked against its hash: what the host
    /// acts on when it must not trust a state file (an approval re-reads its proposal here).
    pub fn record(&self, at: &RecordRef) -> Result<Record, AuditError> {
        let missing = |problem: String| AuditError::Missing {
            path: self.path.clone(),
            seq: at.seq,
            hash: at.hash.clone(),
            problem,
        };
        // The file that holds the record, opened under the lock seals and removals hold: read
        // after it is released (appends are not held up; a seal meanwhile renames, never
        // changes, the open file; an unfinished last line is skipped).
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let path = if at.seq >= tail.first_seq {
            self.path.clone()
        } else {
            match segments::sealed(&self.path)
                .map_err(|e| missing(e.to_string()))?
                .into_iter()
                .rev()
                .find(|s| s.first_seq <= at.seq)
            {
                Some(s) => s.path,
                None => return Err(missing("its segment was removed by retention".into())),
            }
        };
        let file = File::open(&path).map_err(|e| missing(e.to_string()))?;
        drop(tail);
        let mut found = None;
        each_record(vec![file], |record| {
            if record.seq < at.seq {
                return true;
            }
            if record.seq == at.seq {
                found = Some(record);
            }
            false
        })
        .map_err(|e| missing(e.to_string()))?;
        if let Some(record) = found {
            if record.hash != at.hash || record.compute_hash() != at.hash {
                return Err(missing(
                    "the record there was changed after it was written".into(),
                ));
            }
            return Ok(record);
        }
        Err(missing("not in the log".into()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every file of the log in chain order, opened (see [`segments::open_all`]).
    fn files(&self) -> Result<Vec<File>, AuditError> {
        Ok(segments::open_all(&self.path)
            .map_err(|source| AuditError::Io {
                path: self.path.clone(),
                source,
            })?
            .into_iter()
            .map(|(_, f)| f)
            .collect())
    }

    /// Seal the active file once it is `bytes` long (from the next append on).
    pub fn set_segment_bytes(&self, bytes: u64) {
        let bytes = bytes.max(1);
        self.segment_bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
        self.tail.lock().unwrap_or_else(|p| p.into_inner()).seal_at = bytes;
    }

    /// Where the log ends now: the active file (by its first seq) and its length.
    pub fn end(&self) -> Position {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        Position {
            file: tail.first_seq,
            offset: tail.file_len,
        }
    }

    /// The file (by its first seq) that holds record `seq`, or the oldest one kept when
    /// retention removed it.
    pub fn file_holding(&self, seq: u64) -> Result<u64, AuditError> {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        if seq >= tail.first_seq {
            return Ok(tail.first_seq);
        }
        let sealed = self.sealed_locked()?;
        Ok(sealed
            .iter()
            .rev()
            .find(|s| s.first_seq <= seq)
            .or(sealed.first())
            .map_or(tail.first_seq, |s| s.first_seq))
    }

    /// Open the file whose first seq is `first` for reading (`NotFound` once retention removed
    /// it).
    pub fn open_file(&self, first: u64) -> std::io::Result<File> {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        if first == tail.first_seq {
            File::open(&self.path)
        } else {
            File::open(segments::dir_of(&self.path).join(segments::name_of(first)))
        }
    }

    /// The file after the one whose first seq is `first`, `None` when that one is the active
    /// file (no file follows it yet). Once this says a file has a successor, nothing more is
    /// written to it.
    pub fn next_file(&self, first: u64) -> Result<Option<u64>, AuditError> {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        if first >= tail.first_seq {
            return Ok(None);
        }
        Ok(Some(
            self.sealed_locked()?
                .iter()
                .map(|s| s.first_seq)
                .find(|&s| s > first)
                .unwrap_or(tail.first_seq),
        ))
    }

    fn sealed_locked(&self) -> Result<Vec<segments::Segment>, AuditError> {
        segments::sealed(&self.path).map_err(|source| AuditError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// The sealed segments, oldest first, and the active file's length. The folder is listed
    /// without the tail's lock (a scrape or a retention pass must not hold up appends): a
    /// file sealed meanwhile starts at or after the active file's first record as it was
    /// read, and is left out, so the answer is the log as it stood at that instant.
    pub fn segments(&self) -> Result<(Vec<segments::Segment>, u64), AuditError> {
        let (first_seq, file_len) = {
            let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            (tail.first_seq, tail.file_len)
        };
        let mut sealed = self.sealed_locked()?;
        sealed.retain(|s| s.first_seq < first_seq);
        Ok((sealed, file_len))
    }

    /// Remove the oldest `n` sealed segments (retention), announcing them on the chain first —
    /// each one's last seq and hash, where the kept chain now starts — with `why` merged into
    /// the record. Oldest first, so a stop part way leaves a chain that still starts at a
    /// segment the record names.
    pub fn remove_oldest(
        &self,
        n: usize,
        why: serde_json::Map<String, Value>,
    ) -> Result<Vec<segments::RemovedSegment>, AuditError> {
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        // The links are read under the lock seals hold: the file after the last one removed
        // is the one the listing says (a seal meanwhile would make the active file another).
        let (sealed, removed) = {
            let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            let sealed = self.sealed_locked()?;
            let n = n.min(sealed.len());
            if n == 0 {
                return Ok(Vec::new());
            }
            let next: Vec<(PathBuf, u64)> = (0..n)
                .map(|i| {
                    sealed.get(i + 1).map_or_else(
                        || (self.path.clone(), tail.first_seq),
                        |s| (s.path.clone(), s.first_seq),
                    )
                })
                .collect();
            let removed = segments::links_after(&sealed[..n], &next).map_err(io)?;
            (sealed, removed)
        };
        let n = removed.len();
        let mut data = why;
        data.insert(
            "records".into(),
            json_u64(removed.iter().map(|r| r.last_seq + 1 - r.first_seq).sum()),
        );
        data.insert(
            "bytes".into(),
            json_u64(removed.iter().map(|r| r.bytes).sum()),
        );
        data.insert(
            "segments".into(),
            serde_json::to_value(&removed).unwrap_or(Value::Null),
        );
        self.append("host", None, segments::REMOVED_KIND, Value::Object(data))?;
        {
            let _tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            for s in &sealed[..n] {
                match std::fs::remove_file(&s.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(e)),
                }
            }
            segments::sync_dir(&segments::dir_of(&self.path)).map_err(io)?;
        }
        // A database call: never under the tail's lock, which every append takes.
        if let (Some(replica), Some(last)) = (&self.replica, removed.last())
            && let Err(e) = replica.forget_before(last.last_seq + 1)
        {
            // The shared chain keeps them until the next removal asks again.
            tracing::warn!(shared = %replica.place(), error = %e, "the shared audit chain did not let go of the removed records");
        }
        Ok(removed)
    }

    /// As [`AuditLog::find`], over the records from `seq` on only: reading starts at the file
    /// that holds `seq` (an incident's timeline starts at the record that opened it).
    pub fn find_from(
        &self,
        seq: u64,
        keep: impl Fn(&Record) -> bool,
        limit: Newest,
    ) -> Result<(Vec<Record>, usize), AuditError> {
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let mut out = Kept::new(limit);
        // Only the records `keep` selects are checked and counted, as `find` does.
        let mut altered = 0;
        let mut file = self.file_holding(seq)?;
        loop {
            each_record(vec![self.open_file(file).map_err(io)?], |record| {
                if record.seq >= seq && keep(&record) {
                    if record.compute_hash() != record.hash {
                        altered += 1;
                    } else {
                        out.push(record);
                    }
                }
                true
            })
            .map_err(io)?;
            match self.next_file(file)? {
                Some(next) => file = next,
                None => break,
            }
        }
        Ok((out.into_vec(), altered))
    }

    /// An incident's last `limit` records, as [`AuditLog::find`] returns them, read from the
    /// record that opened it (`opened`) when the incident knows it — the files before it are
    /// not read — and from the whole log for one opened before incidents kept it.
    pub fn incident_records(
        &self,
        incident: &str,
        opened: Option<u64>,
        limit: Newest,
    ) -> Result<(Vec<Record>, usize), AuditError> {
        let mine = |r: &Record| r.incident.as_deref() == Some(incident);
        match opened {
            Some(seq) => self.find_from(seq, mine, limit),
            None => self.find(mine, limit),
        }
    }

    /// The last `limit` records `keep` selects, oldest first, each checked against its own hash
    /// (a record that does not match is left out and counted). Reads without blocking appends:
    /// an unfinished last line is skipped.
    pub fn find(
        &self,
        keep: impl Fn(&Record) -> bool,
        limit: Newest,
    ) -> Result<(Vec<Record>, usize), AuditError> {
        let mut out = Kept::new(limit);
        let mut altered = 0;
        each_record(self.files()?, |record| {
            if keep(&record) {
                if record.compute_hash() != record.hash {
                    altered += 1;
                    return true;
                }
                out.push(record);
            }
            true
        })
        .map_err(|source| AuditError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok((out.into_vec(), altered))
    }

    /// Visit every record in order, each checked against its own hash (one that does not match
    /// is skipped and counted), until `visit` returns false. Reads without blocking appends.
    pub fn scan(&self, mut visit: impl FnMut(Record) -> bool) -> Result<usize, AuditError> {
        let mut altered = 0;
        each_record(self.files()?, |record| {
            if record.compute_hash() != record.hash {
                altered += 1;
                return true;
            }
            visit(record)
        })
        .map_err(|source| AuditError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(altered)
    }

    /// [`AuditLog::scan`] from record `seq` on: the files wholly before it are not read.
    pub fn scan_from(
        &self,
        seq: u64,
        mut visit: impl FnMut(Record) -> bool,
    ) -> Result<usize, AuditError> {
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let mut altered = 0;
        let mut more = true;
        let mut first = self.file_holding(seq)?;
        while more {
            let file = self.open_file(first).map_err(io)?;
            each_record(vec![file], |record| {
                if record.seq < seq {
                    return true;
                }
                if record.compute_hash() != record.hash {
                    altered += 1;
                    return true;
                }
                more = visit(record);
                more
            })
            .map_err(io)?;
            match self.next_file(first)? {
                Some(next) if more => first = next,
                _ => break,
            }
        }
        Ok(altered)
    }

    /// Mark every record appended from now on with a development mode (`allow-unsigned`).
    pub fn set_mode(&self, mode: &str) {
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.mode = Some(mode.to_owned());
    }

    /// Be told of every record from now on, once it is durable (the service's OpenTelemetry
    /// export); a second observer is refused.
    pub fn observe_records(&self, observer: RecordObserver) -> Result<(), RecordObserver> {
        self.on_record.set(observer)
    }

    /// Watch every append from now on (the service's metrics); a second observer is refused.
    pub fn observe_appends(&self, observer: AppendObserver) -> Result<(), AppendObserver> {
        self.on_append.set(observer)
    }

    /// Sign the chain's head from now on, as `checkpointer` says when; `false` if it already
    /// was (the first one stays).
    pub fn enable_checkpoints(&self, checkpointer: checkpoint::Checkpointer) -> bool {
        self.checkpoints.set(checkpointer).is_ok()
    }

    /// Watch every checkpoint from now on (the service's metrics); a second is refused.
    pub fn observe_checkpoints(
        &self,
        observer: CheckpointObserver,
    ) -> Result<(), CheckpointObserver> {
        self.on_checkpoint.set(observer)
    }

    /// Sign the head now if anything was appended since the last checkpoint (at shutdown).
    pub fn checkpoint_now(&self) -> Result<Option<checkpoint::Checkpoint>, AuditError> {
        let seq = self.tail.lock().unwrap_or_else(|p| p.into_inner()).seq;
        self.checkpoint_if_due(seq, true)
    }

    /// A checkpoint record signing the head as it is when written, if one is due at `seq`;
    /// mirrored beside the key.
    fn checkpoint_if_due(
        &self,
        seq: u64,
        force: bool,
    ) -> Result<Option<checkpoint::Checkpoint>, AuditError> {
        let Some(cp) = self.checkpoints.get() else {
            return Ok(None);
        };
        if !cp.due(seq, force) {
            return Ok(None);
        }
        let record = self.write_record("host", None, "checkpoint", true, |seq, head| {
            serde_json::to_value(checkpoint::Checkpoint::sign(cp.key(), seq, head))
                .unwrap_or(Value::Null)
        })?;
        cp.wrote(record.seq);
        let signed: checkpoint::Checkpoint =
            serde_json::from_value(record.data).map_err(|e| AuditError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(e),
            })?;
        if let Err(e) = cp.mirror(&signed) {
            // The checkpoint is on the chain; only its copy beside the key is missing, so a
            // cut tail after it cannot be told from the file alone until the next one.
            tracing::error!(file = %cp.head_file().display(), error = %e, "the audit checkpoint could not be mirrored beside the key");
        }
        if let Some(observe) = self.on_checkpoint.get() {
            observe(&signed);
        }
        Ok(Some(signed))
    }

    /// Append one record; return once it is on disk (its fsync shared with concurrent appends),
    /// with every record written before it: a commit point. An error means the record cannot
    /// be trusted to be on disk: the caller must not take the action it announces. (After a
    /// failed fsync the record may still be found in the file; the action it announced was not
    /// taken, and the log takes no more records.)
    pub fn append(
        &self,
        agent: &str,
        incident: Option<&str>,
        kind: &str,
        data: Value,
    ) -> Result<Record, AuditError> {
        self.append_with(agent, incident, kind, data, true)
    }

    /// Append one record that announces nothing outside the process by itself: it is written
    /// (in chain order, so a killed process loses none of it) and made durable by the next
    /// commit point — the next [`AuditLog::append`], [`AuditLog::commit`], or the log's drop.
    /// Whoever lets anything leave the process on its strength (a reply, a message, a call, a
    /// state file) commits first. The write-ahead rule: see `docs/ARCHITECTURE.md`.
    pub fn append_deferred(
        &self,
        agent: &str,
        incident: Option<&str>,
        kind: &str,
        data: Value,
    ) -> Result<Record, AuditError> {
        self.append_with(agent, incident, kind, data, false)
    }

    /// Make every record a commit point from now on, deferred ones included: one fsync per
    /// record, as before commit points existed (the benchmarks' baseline).
    pub fn sync_every_record(&self) {
        self.every_record
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Make every record written so far durable (a commit point); a no-op when it is.
    pub fn commit(&self) -> Result<(), AuditError> {
        let end = self.tail.lock().unwrap_or_else(|p| p.into_inner()).len;
        self.wait_durable(end).map_err(|source| AuditError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.announce_durable();
        Ok(())
    }

    fn append_with(
        &self,
        agent: &str,
        incident: Option<&str>,
        kind: &str,
        data: Value,
        durable: bool,
    ) -> Result<Record, AuditError> {
        let entry = Entry {
            agent: agent.to_owned(),
            incident: incident.map(str::to_owned),
            kind: kind.to_owned(),
            data,
        };
        self.append_entries(vec![entry], durable)?
            .pop()
            .ok_or_else(|| AuditError::Io {
                path: self.path.clone(),
                source: std::io::Error::other("no record was written"),
            })
    }

    /// Append several records in one write and one wait for the disk: each is on disk when
    /// this returns, in order, with nothing of another writer between them. Each is redacted
    /// and bounded as [`AuditLog::append`] does it.
    pub fn append_many(&self, entries: Vec<Entry>) -> Result<Vec<Record>, AuditError> {
        self.append_entries(entries, true)
    }

    /// Redact and bound each entry, write them in one write (on disk at return when
    /// `durable`), tell the append observer, and checkpoint if one is due.
    fn append_entries(
        &self,
        entries: Vec<Entry>,
        durable: bool,
    ) -> Result<Vec<Record>, AuditError> {
        let started = std::time::Instant::now();
        let entries: Vec<Entry> = entries
            .into_iter()
            .map(|mut e| {
                e.data =
                    themis_core::bounded::bound(self.redactor.redact(e.data), MAX_RECORD_BYTES);
                e
            })
            .collect();
        let result = self.write_records(
            entries
                .into_iter()
                .map(|e| (e.agent, e.incident, e.kind, move |_: u64, _: &str| e.data)),
            durable,
        );
        if let Some(observe) = self.on_append.get() {
            observe(started.elapsed(), result.is_ok());
        }
        if let Ok(Some(last)) = result.as_ref().map(|r| r.last())
            && let Err(e) = self.checkpoint_if_due(last.seq, false)
        {
            // These records are written; the checkpoint is not. A failed fsync has closed the
            // log, so the next append says so; anything else is tried again at the next record.
            tracing::error!(error = %e, "the audit checkpoint could not be written");
        }
        result
    }

    /// Write one record whose data `make` builds from the head it will follow (its seq and
    /// hash), under the tail's lock; return once it is on disk when `durable`.
    fn write_record(
        &self,
        agent: &str,
        incident: Option<&str>,
        kind: &str,
        durable: bool,
        make: impl FnOnce(u64, &str) -> Value,
    ) -> Result<Record, AuditError> {
        let mut written = self.write_records(
            std::iter::once((
                agent.to_owned(),
                incident.map(str::to_owned),
                kind.to_owned(),
                make,
            )),
            durable,
        )?;
        written.pop().ok_or_else(|| AuditError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("no record was written"),
        })
    }

    /// Write records whose data each `make` builds from the head it will follow, under the
    /// tail's lock, in one write; return once they are on disk when `durable` (or when too much
    /// waits for a commit point).
    fn write_records<F: FnOnce(u64, &str) -> Value>(
        &self,
        entries: impl Iterator<Item = (String, Option<String>, String, F)>,
        durable: bool,
    ) -> Result<Vec<Record>, AuditError> {
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        if self.replica.is_some() {
            // Records the replica did not take stay pending in memory until it does: while it
            // is away, no more are written than a commit point may hold back.
            let (pending, len) = {
                let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
                (tail.unannounced.len(), tail.len)
            };
            if pending >= MAX_DEFERRED_RECORDS {
                self.wait_durable(len).map_err(io)?;
                self.announce_durable();
            }
        }
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(problem) = self.failed() {
            return Err(io(std::io::Error::other(problem)));
        }
        if tail.file_len >= tail.seal_at && tail.file_len > 0 {
            self.seal(&mut tail).map_err(io)?;
        }
        let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let (mut seq, mut prev) = (tail.seq, tail.prev.clone());
        let mut records = Vec::new();
        let mut ends = Vec::new();
        let mut bytes = Vec::new();
        for (agent, incident, kind, make) in entries {
            let data = make(seq, &prev);
            let mut record = Record {
                seq: seq + 1,
                ts: ts.clone(),
                agent,
                incident,
                kind,
                data,
                mode: tail.mode.clone(),
                prev: prev.clone(),
                hash: String::new(),
            };
            record.hash = record.compute_hash();
            bytes.extend(serde_json::to_vec(&record).unwrap_or_default());
            bytes.push(b'\n');
            ends.push(bytes.len() as u64);
            seq = record.seq;
            prev = record.hash.clone();
            records.push(record);
        }
        let before = tail.len;
        if let Err(e) = tail.file.write_all(&bytes) {
            // Leave no half line behind: the chain must stay readable for the next append.
            // Nothing was chained on these records yet (we hold the tail), so they can go.
            let _ = tail.file.set_len(tail.file_len);
            return Err(io(e));
        }
        tail.len = before + bytes.len() as u64;
        tail.file_len += bytes.len() as u64;
        tail.seq = seq;
        tail.prev = prev;
        let end = tail.len;
        for (record, at) in records.iter().zip(ends) {
            tail.unannounced.push_back((before + at, record.clone()));
        }
        let must_sync = durable
            || self.every_record.load(std::sync::atomic::Ordering::Relaxed)
            || tail.unannounced.len() > MAX_DEFERRED_RECORDS
            || {
                let synced = self
                    .durable
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .synced;
                end.saturating_sub(synced) > MAX_DEFERRED_BYTES
            };
        drop(tail);
        if must_sync {
            self.wait_durable(end).map_err(io)?;
            self.announce_durable();
        }
        Ok(records)
    }

    /// Seal the active file (under the tail's lock, before the next record is written): what
    /// it holds is durable, it becomes a segment, and an empty file takes its place. A failed
    /// fsync, of the file or of the folder after the rename, closes the log as any failed
    /// fsync does (an error: nothing is written after it). A step that fails before the rename
    /// leaves the log appending to the same file and is tried again later: a larger file loses
    /// nothing, while refusing records would stop the host for a housekeeping fault.
    fn seal(&self, tail: &mut Tail) -> std::io::Result<()> {
        let segment_bytes = self
            .segment_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = tail.file.sync_data() {
            return Err(self.fail_closed(e));
        }
        // Everything written so far is durable.
        {
            let mut d = self.durable.lock().unwrap_or_else(|p| p.into_inner());
            d.synced = d.synced.max(tail.len);
        }
        let prepared = segments::link(&self.path, &tail.file, tail.first_seq)
            .and_then(|()| segments::prepare_next(&self.path))
            .and_then(|(next, file)| {
                let sync_file = std::sync::Arc::new(file.try_clone()?);
                std::fs::rename(&next, &self.path).inspect_err(|_| {
                    let _ = std::fs::remove_file(&next);
                })?;
                Ok((file, sync_file))
            });
        let (file, sync_file) = match prepared {
            Ok(renamed) => renamed,
            Err(e) => {
                tail.seal_at = tail.file_len.saturating_add((segment_bytes / 8).max(1));
                tracing::error!(audit = %self.path.display(), error = %e, "the audit's active file could not be sealed; it keeps growing until a later try succeeds");
                return Ok(());
            }
        };
        // Renamed: the new file is the active one from here on, whatever follows.
        tail.file = file;
        tail.sync_file = sync_file;
        tail.file_len = 0;
        tail.first_seq = tail.seq + 1;
        tail.seal_at = segment_bytes;
        if let Err(e) = segments::sync_parent(&self.path) {
            return Err(self.fail_closed(e));
        }
        tracing::info!(audit = %self.path.display(), first_seq = tail.first_seq, "the audit's active file was sealed into a segment");
        Ok(())
    }

    /// An fsync failed: no record from here on can be trusted to be on disk, so the log takes
    /// no more (see `Durable::failed`).
    fn fail_closed(&self, e: std::io::Error) -> std::io::Error {
        let problem = fsync_failed(&e);
        let mut d = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        d.failed = Some(problem.clone());
        std::io::Error::other(problem)
    }

    /// Tell the pipeline (a `tracing` event with stable fields, the record observer) of every
    /// record an fsync has covered, in chain order: nothing is announced that a crash could
    /// still take back.
    fn announce_durable(&self) {
        let synced = self
            .durable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mark(self.replica.is_some());
        let durable: Vec<Record> = {
            let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            let n = tail
                .unannounced
                .iter()
                .take_while(|(end, _)| *end <= synced)
                .count();
            tail.unannounced.drain(..n).map(|(_, r)| r).collect()
        };
        for record in &durable {
            tracing::info!(
                target: "themis::audit",
                seq = record.seq,
                kind = %record.kind,
                agent = %record.agent,
                incident = record.incident.as_deref().unwrap_or(""),
                mode = record.mode.as_deref().unwrap_or(""),
                hash = %record.hash,
                prev = %record.prev,
                data = %record.data,
                "audit"
            );
            if let Some(observe) = self.on_record.get() {
                observe(record);
            }
        }
    }
}

impl Drop for AuditLog {
    /// What a commit point has not made durable yet is made durable now (one-shot commands,
    /// a host that stops): best effort, since nothing can be told of a failure here.
    fn drop(&mut self) {
        if let Err(e) = self.commit() {
            tracing::error!(error = %e, "the audit's last records could not be made durable");
        }
    }
}

/// One record to append with [`AuditLog::append_many`].
#[derive(Debug, Clone)]
pub struct Entry {
    pub agent: String,
    pub incident: Option<String>,
    pub kind: String,
    pub data: Value,
}

impl Record {
    pub fn at(&self) -> RecordRef {
        RecordRef {
            seq: self.seq,
            hash: self.hash.clone(),
        }
    }
}

/// Why the log takes no more records after a failed fsync.
fn fsync_failed(e: &std::io::Error) -> String {
    format!(
        "an fsync of the audit log failed ({e}); no record since can be trusted to be on disk, so the log takes no more: restart the host"
    )
}

/// Where a reader stands in the log: a file (by the seq its first record has or will have)
/// and a byte offset in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub file: u64,
    pub offset: u64,
}

fn json_u64(n: u64) -> Value {
    Value::from(n)
}

/// Every whole, parseable record of the files in order, until `visit` returns false. No record
/// this log writes is longer than MAX_RECORD_BYTES and its envelope: a longer line was not
/// written here and is never read whole; nor is an unfinished last line.
fn each_record(files: Vec<File>, mut visit: impl FnMut(Record) -> bool) -> std::io::Result<()> {
    for file in files {
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = (&mut reader)
                .take(MAX_RECORD_BYTES as u64 * 2)
                .read_until(b'\n', &mut line)?;
            if read == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                let mut rest = Vec::new();
                let _ = reader.read_until(b'\n', &mut rest);
                continue;
            }
            let Ok(record) = serde_json::from_slice::<Record>(&line) else {
                continue;
            };
            if !visit(record) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Copy the bytes of `path` from `at` on into a new file beside it (`<log>.torn-<n>`), durably.
fn move_aside(path: &Path, at: u64) -> std::io::Result<PathBuf> {
    use std::io::{Seek, SeekFrom};
    let mut bytes = Vec::new();
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(at))?;
    f.take(MAX_RECORD_BYTES as u64 * 4)
        .read_to_end(&mut bytes)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audit".into());
    for n in 1..1000 {
        let aside = path.with_file_name(format!("{name}.torn-{n}"));
        match OpenOptions::new().write(true).create_new(true).open(&aside) {
            Ok(mut out) => {
                out.write_all(&bytes)?;
                out.sync_all()?;
                return Ok(aside);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(
        "a thousand torn records were moved aside already: look at them before going on",
    ))
}

/// The seq and hash of the local log's last whole record — in the active file, or in the newest
/// sealed segment while the active file holds none — and an unfinished line a crash left at the
/// active file's end.
fn local_head(path: &Path) -> Result<(u64, String, Option<Torn>), AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let broken = |problem| AuditError::BrokenTail {
        path: path.to_path_buf(),
        problem,
    };
    let (mut seq, mut prev, torn) = match File::open(path) {
        Ok(f) => last_link(BufReader::new(f)).map_err(broken)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, GENESIS.to_string(), None),
        Err(e) => return Err(io(e)),
    };
    if seq == 0
        && let Some(newest) = segments::sealed(path).map_err(io)?.pop()
    {
        // The active file holds no record yet: the chain goes on from the newest segment.
        let (s, p, torn) = last_link(BufReader::new(File::open(&newest.path).map_err(io)?))
            .map_err(|problem| AuditError::BrokenTail {
                path: newest.path.clone(),
                problem,
            })?;
        if torn.is_some() || s == 0 {
            return Err(AuditError::BrokenTail {
                path: newest.path.clone(),
                problem: "a sealed segment ends without a whole record".into(),
            });
        }
        (seq, prev) = (s, p);
    }
    Ok((seq, prev, torn))
}

/// An unfinished last line: where it starts, its size and digest.
struct Torn {
    at: u64,
    bytes: usize,
    sha256: String,
}

/// The seq and hash of the last complete record, checking only that it is a record; and the
/// unfinished line after it, if a crash left one (no newline at the end of the file).
fn last_link(mut reader: impl BufRead) -> Result<(u64, String, Option<Torn>), String> {
    let mut last: Option<(usize, Vec<u8>)> = None;
    let mut offset = 0u64;
    let mut torn = None;
    let mut n = 0usize;
    loop {
        let mut line = Vec::new();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("line {}: {e}", n + 1))?;
        if read == 0 {
            break;
        }
        n += 1;
        if line.last() != Some(&b'\n') {
            torn = Some(Torn {
                at: offset,
                bytes: line.len(),
                sha256: hex::encode(Sha256::digest(&line)),
            });
            break;
        }
        offset += read as u64;
        if !line.iter().all(u8::is_ascii_whitespace) {
            last = Some((n, line));
        }
    }
    match last {
        None => Ok((0, GENESIS.to_string(), torn)),
        Some((n, line)) => {
            let r: Record = serde_json::from_slice(&line)
                .map_err(|e| format!("line {n} is not a record: {e}"))?;
            if r.compute_hash() != r.hash {
                return Err(format!("record {} does not match its hash", r.seq));
            }
            Ok((r.seq, r.hash, torn))
        }
    }
}

/// Read every record of a log, its sealed segments first (for `audit show`); lines that do not
/// parse are skipped and counted.
pub fn read_all(path: &Path) -> Result<(Vec<Record>, usize), std::io::Error> {
    let files = segments::open_all(path)?;
    if files.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such audit log",
        ));
    }
    let mut records = Vec::new();
    let mut unreadable = 0;
    for (_, file) in files {
        for line in BufReader::new(file).lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(&line) {
                Ok(r) => records.push(r),
                Err(_) => unreadable += 1,
            }
        }
    }
    Ok((records, unreadable))
}

#[cfg(test)]
mod tests {
    /// The hash as first defined: the record made a JSON value (keys sorted), `hash` taken
    /// out, rendered. Every chain written before must verify the same.
    fn hash_as_defined(record: &Record) -> String {
        let mut body = serde_json::to_value(record).expect("a record is JSON");
        body.as_object_mut().expect("an object").remove("hash");
        let mut h = Sha256::new();
        h.update(record.prev.as_bytes());
        h.update(b"\n");
        h.update(serde_json::to_vec(&body).expect("render"));
        hex::encode(h.finalize())
    }

    #[test]
    fn the_hash_written_from_the_fields_is_the_hash_as_defined() {
        let datas = [
            json!(null),
            json!({}),
            json!({ "z": 1, "a": [1.5, -2, 18446744073709551615u64, "é\n\"\u{1}"], "m": { "y": null, "b": true } }),
            json!(["x", { "k": "v" }]),
            json!("just text"),
        ];
        for (n, data) in datas.into_iter().enumerate() {
            for incident in [None, Some("inc-1".to_owned())] {
                for mode in [None, Some("allow-unsigned".to_owned())] {
                    let record = Record {
                        seq: n as u64 * 1_000_003,
                        ts: "2026-12-04T03:10:00.123Z".into(),
                        agent: "kafka".into(),
                        incident: incident.clone(),
                        kind: "escalation".into(),
                        data: data.clone(),
                        mode,
                        prev: GENESIS.into(),
                        hash: "not hashed".into(),
                    };
                    assert_eq!(
                        record.compute_hash(),
                        hash_as_defined(&record),
                        "{record:?}"
                    );
                }
            }
        }
    }

    use super::*;
    use serde_json::json;

    /// An incident's timeline keeps its newest records within the byte budget (never none), and
    /// recovery's reading keeps every one up to its count.
    #[test]
    fn an_incidents_records_are_kept_newest_first_within_the_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log =
            AuditLog::open(&dir.path().join("audit.jsonl"), Redactor::default()).expect("open");
        let opened = log
            .append("kafka", Some("inc-1"), "alert", json!({ "n": 0 }))
            .expect("append");
        for n in 1..=20 {
            let big = "x".repeat(10_000);
            log.append(
                "kafka",
                Some("inc-1"),
                "alert-attached",
                json!({ "n": n, "big": big }),
            )
            .expect("append");
            log.append("kafka", Some("inc-2"), "alert", json!({ "n": n }))
                .expect("append");
        }
        let ns = |records: &[Record]| {
            records
                .iter()
                .map(|r| r.data["n"].clone())
                .collect::<Vec<_>>()
        };
        let (all, altered) = log
            .incident_records("inc-1", Some(opened.seq), Newest::records(100))
            .expect("read");
        assert_eq!((all.len(), altered), (21, 0));
        let (within, _) = log
            .incident_records(
                "inc-1",
                Some(opened.seq),
                Newest {
                    records: 100,
                    bytes: 35_000,
                },
            )
            .expect("read");
        assert_eq!(ns(&within), vec![json!(18), json!(19), json!(20)]);
        let (one, _) = log
            .incident_records(
                "inc-1",
                None,
                Newest {
                    records: 100,
                    bytes: 10,
                },
            )
            .expect("read");
        assert_eq!(
            ns(&one),
            vec![json!(20)],
            "the newest stays even over the budget"
        );
        let (counted, _) = log
            .incident_records("inc-1", None, Newest::records(2))
            .expect("read");
        assert_eq!(ns(&counted), vec![json!(19), json!(20)]);
    }

    #[test]
    fn records_chain_and_reopening_continues_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, Redactor::default()).expect("open");
        let a = log
            .append("kafka", Some("inc-1"), "alert", json!({"name": "x"}))
            .expect("append");
        let b = log
            .append("kafka", Some("inc-1"), "transition", json!({}))
            .expect("append");
        assert_eq!(a.prev, GENESIS);
        assert_eq!(b.prev, a.hash);
        drop(log);
        let log = AuditLog::open(&path, Redactor::default()).expect("reopen");
        let c = log
            .append("kafka", None, "result", json!({}))
            .expect("append");
        assert_eq!((c.seq, c.prev.as_str()), (3, b.hash.as_str()));
        assert!(verify::verify(&path).expect("reads").is_ok());
    }

    #[test]
    fn floats_read_back_to_the_same_bits_and_the_chain_verifies() {
        // Whole floats near 2^60 and a metric sample's usual digits: each must render the same
        // after a read, or the record's hash (over its canonical rendering) would not match.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, Redactor::default()).expect("open");
        let values = [
            1_554_640_994_954_953_472.0_f64,
            0.1 + 0.2,
            2.225_073_858_507_201e-308,
            123_456.789_012_345_67,
        ];
        for v in values {
            log.append("metrics", None, "sample", json!({ "value": v }))
                .expect("append");
        }
        drop(log);
        assert!(verify::verify(&path).expect("reads").is_ok());
        let log = AuditLog::open(&path, Redactor::default()).expect("reopen");
        let (found, altered) = log
            .find(|r| r.kind == "sample", Newest::records(10))
            .expect("find");
        assert_eq!(altered, 0);
        let read: Vec<f64> = found
            .iter()
            .map(|r| r.data["value"].as_f64().expect("a number"))
            .collect();
        assert_eq!(read, values);
    }

    /// What the record observer has been told, in order (only durable records reach it).
    fn told(log: &AuditLog) -> std::sync::Arc<Mutex<Vec<u64>>> {
        let told = std::sync::Arc::new(Mutex::new(Vec::new()));
        let into = told.clone();
        log.observe_records(Box::new(move |r| {
            into.lock().expect("told").push(r.seq);
        }))
        .unwrap_or_else(|_| panic!("one observer"));
        told
    }

    #[test]
    fn deferred_records_are_written_at_once_and_announced_at_the_commit_point() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, Redactor::default()).expect("open");
        let told = told(&log);
        log.append_deferred(
            "kafka",
            Some("inc-1"),
            "transition",
            json!({"to": "triaging"}),
        )
        .expect("deferred");
        log.append_deferred("kafka", Some("inc-1"), "probe", json!({"ok": true}))
            .expect("deferred");
        // In the file already (a killed process loses none of it), and in the chain.
        let (on_file, _) = read_all(&path).expect("read");
        assert_eq!(on_file.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(
            told.lock().expect("told").is_empty(),
            "nothing is announced before a commit"
        );
        // A commit point makes everything before it durable, and says so in chain order.
        log.append("kafka", Some("inc-1"), "escalation", json!({}))
            .expect("durable");
        assert_eq!(*told.lock().expect("told"), [1, 2, 3]);
        log.append_deferred("kafka", Some("inc-1"), "transition", json!({"to": "idle"}))
            .expect("deferred");
        log.commit().expect("commit");
        log.commit().expect("a second commit is a no-op");
        assert_eq!(*told.lock().expect("told"), [1, 2, 3, 4]);
        verify::verify(&path)
            .expect("read")
            .expect("the chain is intact");
    }

    #[test]
    fn the_log_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit").join("audit.jsonl");
        let log = AuditLog::open(&path, Redactor::default()).expect("open");
        log.append("kafka", None, "alert", json!({}))
            .expect("append");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("audit")), 0o700);
    }

    #[test]
    fn deferred_records_are_bounded_and_made_durable_when_the_log_closes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, Redactor::default()).expect("open");
        let told = told(&log);
        for i in 0..=MAX_DEFERRED_RECORDS {
            log.append_deferred("kafka", None, "probe", json!({ "i": i }))
                .expect("deferred");
        }
        // Past the bound the append was a commit point of its own.
        assert_eq!(told.lock().expect("told").len(), MAX_DEFERRED_RECORDS + 1);
        log.append_deferred("kafka", None, "probe", json!({ "last": true }))
            .expect("deferred");
        assert_eq!(told.lock().expect("told").len(), MAX_DEFERRED_RECORDS + 1);
        drop(log);
        assert_eq!(
            told.lock().expect("told").len(),
            MAX_DEFERRED_RECORDS + 2,
            "closing the log is a commit point"
        );
    }

    #[test]
    fn concurrent_appends_share_fsyncs_and_keep_one_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = std::sync::Arc::new(AuditLog::open(&path, Redactor::default()).expect("open"));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        log.append("kafka", None, "alert", json!({ "t": t, "i": i }))
                            .expect("append");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        // Every append returned, so everything written is covered by a sync.
        let written = log.tail.lock().expect("lock").len;
        assert_eq!(log.durable.lock().expect("lock").synced, written);
        let (records, unreadable) = read_all(&path).expect("read");
        assert_eq!((records.len(), unreadable), (400, 0));
        assert!(verify::verify(&path).expect("reads").is_ok());
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
    }

    #[test]
    fn a_record_cut_off_by_a_crash_is_discarded_on_the_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, Redactor::default()).expect("open");
        let a = log
            .append("kafka", None, "alert", json!({}))
            .expect("append");
        drop(log);
        // A kill -9 mid-write: half a record, no newline.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"seq\":2,\"ts\":\"2026").expect("write");
        drop(f);
        let log = AuditLog::open(&path, Redactor::default()).expect("reopens");
        let b = log
            .append("kafka", None, "result", json!({}))
            .expect("append");
        assert_eq!(b.seq, 3);
        let (records, unreadable) = read_all(&path).expect("read");
        assert_eq!(unreadable, 0);
        assert_eq!(records[0].hash, a.hash);
        assert_eq!(records[1].kind, "torn-record-discarded");
        assert_eq!(records[1].data["bytes"], 19);
        // Moved aside, not lost.
        let aside = dir.path().join("audit.jsonl.torn-1");
        assert_eq!(records[1].data["moved_to"], aside.display().to_string());
        assert_eq!(
            std::fs::read(&aside).expect("aside"),
            b"{\"seq\":2,\"ts\":\"2026"
        );
        assert!(verify::verify(&path).expect("reads").is_ok());
        // A broken line that did end (changed, not cut off) is still refused.
        drop(log);
        std::fs::write(&path, b"{not a record}\n").expect("write");
        assert!(matches!(
            AuditLog::open(&path, Redactor::default()),
            Err(AuditError::BrokenTail { .. })
        ));
    }

    /// A log sealing every ~1 KiB, with `n` records appended (each about 300 bytes).
    fn sealed_log(path: &Path, n: u64) -> (AuditLog, Vec<Record>) {
        let log = AuditLog::open(path, Redactor::default()).expect("open");
        log.set_segment_bytes(1024);
        let records = (1..=n)
            .map(|i| {
                log.append(
                    "kafka",
                    Some(&format!("inc-{}", i / 10)),
                    "transition",
                    json!({ "n": i, "pad": "x".repeat(100) }),
                )
                .expect("append")
            })
            .collect();
        (log, records)
    }

    #[test]
    fn a_log_sealed_into_segments_is_one_chain_across_its_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let (log, records) = sealed_log(&path, 40);
        let (sealed, active) = log.segments().expect("segments");
        assert!(sealed.len() >= 5, "{sealed:?}");
        assert!(active < 2048);
        assert_eq!(sealed[0].first_seq, 1);
        // Each file starts where the one before ended, and links to it.
        for pair in sealed.windows(2) {
            let (first, prev) = segments::first_link(&mut File::open(&pair[1].path).expect("open"))
                .expect("read")
                .expect("a record");
            assert_eq!(first, pair[1].first_seq);
            assert_eq!(prev, records[first as usize - 2].hash);
        }
        let mut seen = Vec::new();
        assert_eq!(
            log.scan(|r| {
                seen.push(r.seq);
                true
            })
            .expect("scan"),
            0
        );
        assert_eq!(seen, (1..=40).collect::<Vec<_>>());
        // Found in the file that holds it, whichever that is.
        for r in [&records[0], &records[17], &records[39]] {
            assert_eq!(&log.record(&r.at()).expect("found"), r);
        }
        let (found, _) = log
            .find(
                |r| r.incident.as_deref() == Some("inc-1"),
                Newest::records(100),
            )
            .expect("find");
        assert_eq!(
            found.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (10..=19).collect::<Vec<_>>()
        );
        assert_eq!(read_all(&path).expect("read").0, records);
        drop(log);
        let log = AuditLog::open(&path, Redactor::default()).expect("reopen");
        let next = log
            .append("kafka", None, "result", json!({}))
            .expect("append");
        assert_eq!(
            (next.seq, next.prev.as_str()),
            (41, records[39].hash.as_str())
        );
        let intact = verify::verify(&path).expect("reads").expect("intact");
        assert_eq!((intact.first, intact.records), (1, 41));
    }

    /// A record moved from the end of one sealed segment to the start of the next keeps the
    /// chain, but the host would no longer find it where the names say: a break.
    #[test]
    fn a_record_moved_between_segments_is_caught() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let (log, _) = sealed_log(&path, 40);
        let (sealed, _) = log.segments().expect("segments");
        drop(log);
        let (from, to) = (&sealed[0].path, &sealed[1].path);
        let text = std::fs::read_to_string(from).expect("read");
        let mut lines: Vec<&str> = text.lines().collect();
        let moved = lines.pop().expect("a record");
        std::fs::write(from, lines.join("\n") + "\n").expect("write");
        let next = std::fs::read_to_string(to).expect("read");
        std::fs::write(to, format!("{moved}\n{next}")).expect("write");
        let broken = verify::verify(&path).expect("reads").expect_err("caught");
        assert!(
            broken.problem.contains("records were moved between files"),
            "{broken}"
        );
    }

    #[test]
    fn a_seal_cut_off_between_its_link_and_its_rename_is_finished_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let (log, records) = sealed_log(&path, 12);
        let first = log.end().file;
        drop(log);
        // The stop came after the link: the active file is also the newest segment.
        std::fs::hard_link(
            &path,
            segments::dir_of(&path).join(segments::name_of(first)),
        )
        .expect("link");
        // Read before any host opens it again: the link is the active file, read once.
        assert_eq!(read_all(&path).expect("read").0, records);
        let intact = verify::verify(&path).expect("reads").expect("intact");
        assert_eq!(intact.records, 12);
        let log = AuditLog::open(&path, Redactor::default()).expect("reopen");
        assert_eq!(
            log.end(),
            Position {
                file: 13,
                offset: 0
            }
        );
        let next = log
            .append("kafka", None, "result", json!({}))
            .expect("append");
        assert_eq!(
            (next.seq, next.prev.as_str()),
            (13, records[11].hash.as_str())
        );
        drop(log);
        let intact = verify::verify(&path).expect("reads").expect("intact");
        assert_eq!(intact.records, 13);
        assert_eq!(
            read_all(&path).expect("read").0.len(),
            13,
            "no record read twice"
        );
    }

    #[test]
    fn retention_removes_the_oldest_segments_and_verify_knows_where_the_chain_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let (log, records) = sealed_log(&path, 40);
        let sealed = log.segments().expect("segments").0;
        // A stop part way through a removal (oldest first) leaves the second and third segments:
        // keep copies to put back.
        let second = std::fs::read(&sealed[1].path).expect("read");
        let third = std::fs::read(&sealed[2].path).expect("read");
        let removed = log
            .remove_oldest(3, serde_json::Map::new())
            .expect("removed");
        assert_eq!(removed.len(), 3);
        assert_eq!(removed[0].first_seq, 1);
        assert_eq!(
            removed[2].last_hash,
            records[removed[2].last_seq as usize - 1].hash
        );
        assert!(!sealed[0].path.exists() && !sealed[2].path.exists());
        let intact = verify::verify(&path).expect("reads").expect("intact");
        assert_eq!(intact.first, sealed[3].first_seq);
        assert!(matches!(
            log.record(&records[0].at()),
            Err(AuditError::Missing { problem, .. }) if problem.contains("retention")
        ));
        assert_eq!(&log.record(&records[39].at()).expect("kept"), &records[39]);

        std::fs::write(&sealed[1].path, &second).expect("put back");
        std::fs::write(&sealed[2].path, &third).expect("put back");
        let intact = verify::verify(&path)
            .expect("reads")
            .expect("a partial removal holds");
        assert_eq!(intact.first, sealed[1].first_seq);
        std::fs::remove_file(&sealed[1].path).expect("remove");
        std::fs::remove_file(&sealed[2].path).expect("remove");

        // Removed by hand, with no record saying so: the start of the chain is missing.
        std::fs::remove_file(&sealed[3].path).expect("remove");
        let broken = verify::verify(&path).expect("reads").expect_err("broken");
        assert!(
            broken
                .problem
                .contains("no record says retention removed them"),
            "{broken}"
        );
        assert_eq!(broken.seq, Some(sealed[4].first_seq));
    }
}
