//! The chain's second home, shared by the hosts of one deployment (the PostgreSQL state
//! database). With a replica every commit point makes its records durable there as well as in
//! the local file, so a host that takes the agents over continues the same chain — the proposal
//! it is asked to answer, the run it resumes, the alerts another host accepted are on it — and a
//! host fenced out (another took the state over) passes no commit point at all: it announces
//! nothing and acts on nothing the chain does not hold.
//!
//! At open the local files are reconciled with the shared chain before the first append:
//! - a local chain the shared one continues is extended with its records, byte for byte;
//! - a local chain that continues the shared one (a kill after a local write, before the
//!   replica's commit; an upload cut off part-way) gives it the records it lacks, so nothing
//!   written here is dropped and nothing is moved aside;
//! - a local chain that went its own way — records the shared chain never took (a host fenced
//!   out, or killed between its fsync and the replica's commit: no commit point passed, so
//!   nothing acted on them) or another host's history altogether — is moved aside whole, for
//!   whoever investigates, and the chain is rebuilt from the shared one;
//! - a shared chain still empty (a deployment moving to a shared store) is given the local one.

use super::{AuditError, GENESIS, Record, segments};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// One record as the local file holds it: its line (no newline) and the links it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub seq: u64,
    pub hash: String,
    pub prev: String,
    pub text: String,
}

impl Line {
    /// The line of a record as the log writes it (the hash covers exactly these bytes).
    pub fn of(record: &Record) -> Line {
        Line {
            seq: record.seq,
            hash: record.hash.clone(),
            prev: record.prev.clone(),
            text: serde_json::to_string(record).unwrap_or_default(),
        }
    }

    /// A line read back: it must be a record whose hash covers it, and the links must be its own.
    pub fn checked(&self) -> Result<(), String> {
        let record: Record = serde_json::from_str(&self.text)
            .map_err(|e| format!("record {} is not a record: {e}", self.seq))?;
        if record.seq != self.seq
            || record.hash != self.hash
            || record.prev != self.prev
            || record.compute_hash() != record.hash
            || serde_json::to_string(&record).ok().as_deref() != Some(self.text.as_str())
        {
            return Err(format!(
                "record {} does not match its hash or its links",
                self.seq
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// This host may write no more (another took the state over): the log closes.
    #[error("{0}")]
    Lost(String),
    /// Unreachable or refused for now: the commit point fails, the next one tries again.
    #[error("{0}")]
    Failed(String),
}

/// The shared chain. Calls block; the log makes them from its commit points, which run off the
/// async threads.
pub trait Replica: Send + Sync {
    /// Where it names itself in messages (the database, never its password).
    fn place(&self) -> String;
    /// The newest record's seq and hash, if it holds any.
    fn head(&self) -> Result<Option<(u64, String)>, ReplicaError>;
    /// The hash of record `seq`, if it holds it.
    fn hash_at(&self, seq: u64) -> Result<Option<String>, ReplicaError>;
    /// Up to `limit` records after `seq`, oldest first (from its oldest when `seq` is 0).
    fn after(&self, seq: u64, limit: usize) -> Result<Vec<Line>, ReplicaError>;
    /// Make `lines` (in chain order, continuing its head) durable, or fail as a whole. Lines it
    /// holds already with the same hash (a retry after an answer that was lost) are no error.
    fn append(&self, lines: &[Line]) -> Result<(), ReplicaError>;
    /// Let go of every record before `seq` (the local log's retention removed them).
    fn forget_before(&self, seq: u64) -> Result<(), ReplicaError>;
}

/// What reconciling found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Records the shared chain gave the local one.
    pub fetched: u64,
    /// Local records the shared chain was given (it was empty).
    pub uploaded: u64,
    /// Local files moved aside because they went their own way.
    pub moved_aside: Vec<PathBuf>,
}

impl Reconciled {
    pub fn changed(&self) -> bool {
        self.fetched > 0 || self.uploaded > 0 || !self.moved_aside.is_empty()
    }
}

/// Records per round trip when copying between the chains.
const PAGE: usize = 500;

/// Bring the local log at `path` (locked by the caller, no torn tail, its head `local`) and the
/// shared chain to the same head. See the module's comment for the cases.
pub(super) fn reconcile(
    path: &Path,
    local: (u64, String),
    replica: &dyn Replica,
) -> Result<Reconciled, AuditError> {
    let io = |source: std::io::Error| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let shared = |e: ReplicaError| AuditError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("shared audit chain {}: {e}", replica.place())),
    };
    let (seq, prev) = local;
    let mut done = Reconciled::default();
    let Some((head_seq, head_hash)) = replica.head().map_err(shared)? else {
        if seq > 0 {
            done.uploaded = upload(path, replica, None).map_err(|e| match e {
                Upload::Io(e) => io(e),
                Upload::Replica(e) => shared(e),
                Upload::NotPrefix => io(std::io::Error::other("an empty shared chain")),
            })?;
        }
        return Ok(done);
    };
    if head_seq == seq && head_hash == prev {
        return Ok(done);
    }
    if seq > head_seq {
        match upload(path, replica, Some((head_seq, head_hash.clone()))) {
            Ok(uploaded) => {
                done.uploaded = uploaded;
                return Ok(done);
            }
            // The local record at the shared head is another: this chain went its own way.
            Err(Upload::NotPrefix) => {}
            Err(Upload::Io(e)) => return Err(io(e)),
            Err(Upload::Replica(e)) => return Err(shared(e)),
        }
    }
    let continues = seq == 0
        || (seq < head_seq && replica.hash_at(seq).map_err(shared)?.as_deref() == Some(&prev));
    let (mut at, mut link) = if continues {
        (seq, prev)
    } else {
        done.moved_aside = move_aside_all(path).map_err(io)?;
        tracing::warn!(audit = %path.display(), moved = ?done.moved_aside, "the local audit went its own way from the shared chain: moved aside, the chain is rebuilt from the shared one");
        (0, GENESIS.to_string())
    };
    let mut file = crate::private::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    loop {
        let page = replica.after(at, PAGE).map_err(shared)?;
        if page.is_empty() {
            break;
        }
        let mut bytes = Vec::new();
        for line in &page {
            line.checked().map_err(|problem| AuditError::BrokenTail {
                path: path.to_path_buf(),
                problem: format!("the shared chain {}: {problem}", replica.place()),
            })?;
            // The first record of a rebuilt chain may follow records retention let go of.
            let first_of_rebuild = at == 0;
            if !first_of_rebuild && (line.seq != at + 1 || line.prev != link) {
                return Err(AuditError::BrokenTail {
                    path: path.to_path_buf(),
                    problem: format!(
                        "the shared chain {} does not link record {} to record {at}",
                        replica.place(),
                        line.seq
                    ),
                });
            }
            bytes.extend_from_slice(line.text.as_bytes());
            bytes.push(b'\n');
            at = line.seq;
            link = line.hash.clone();
            done.fetched += 1;
        }
        file.write_all(&bytes).map_err(io)?;
    }
    file.sync_all().map_err(io)?;
    segments::sync_parent(path).map_err(io)?;
    Ok(done)
}

enum Upload {
    Io(std::io::Error),
    Replica(ReplicaError),
    /// The local chain does not hold the shared head's record: it does not continue it.
    NotPrefix,
}

/// Give the shared chain every local record after its head `after` (every one when it is
/// empty), file by file, exactly as written. With a head, the local record at its seq must be
/// that head's ([`Upload::NotPrefix`] when it is not, or is no longer here).
fn upload(path: &Path, replica: &dyn Replica, after: Option<(u64, String)>) -> Result<u64, Upload> {
    let mut sent = 0;
    let mut last: Option<(u64, String)> = None;
    let mut page = Vec::with_capacity(PAGE);
    let files = segments::open_all(path).map_err(Upload::Io)?;
    // A sealed segment whose successor starts at or before the head holds nothing after it.
    let starts: Vec<Option<u64>> = files
        .iter()
        .map(|(p, _)| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(segments::first_seq_of)
        })
        .collect();
    for (i, (_, file)) in files.into_iter().enumerate() {
        if let (Some((head, _)), Some(Some(next))) = (&after, starts.get(i + 1))
            && next <= head
        {
            continue;
        }
        for text in BufReader::new(file).lines() {
            let text = text.map_err(Upload::Io)?;
            if text.trim().is_empty() {
                continue;
            }
            let record: Record = serde_json::from_str(&text).map_err(|e| {
                Upload::Io(std::io::Error::other(format!(
                    "a local record is unreadable ({e}): run `themis audit verify` first"
                )))
            })?;
            if let Some((head, hash)) = &after {
                if record.seq < *head {
                    continue;
                }
                if last.is_none() {
                    if record.seq != *head || record.hash != *hash {
                        return Err(Upload::NotPrefix);
                    }
                    last = Some((record.seq, record.hash));
                    continue;
                }
            }
            let line = Line {
                seq: record.seq,
                hash: record.hash,
                prev: record.prev,
                text,
            };
            // What the shared chain is given must hold together: every other host rebuilds
            // from it.
            line.checked()
                .and_then(|()| match &last {
                    Some((seq, hash)) if line.seq != seq + 1 || line.prev != *hash => {
                        Err(format!("record {} does not follow record {seq}", line.seq))
                    }
                    _ => Ok(()),
                })
                .map_err(|problem| {
                    Upload::Io(std::io::Error::other(format!(
                        "the local chain cannot be shared ({problem}): run `themis audit verify`"
                    )))
                })?;
            last = Some((line.seq, line.hash.clone()));
            page.push(line);
            if page.len() == PAGE {
                replica.append(&page).map_err(Upload::Replica)?;
                sent += page.len() as u64;
                page.clear();
            }
        }
    }
    if !page.is_empty() {
        replica.append(&page).map_err(Upload::Replica)?;
        sent += page.len() as u64;
    }
    Ok(sent)
}

/// Move the active file and the sealed segments aside under one suffix; what was moved.
fn move_aside_all(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut moved = Vec::new();
    for from in [path.to_path_buf(), segments::dir_of(path)] {
        if !from.exists() {
            continue;
        }
        let mut name = from.as_os_str().to_owned();
        name.push(format!(".diverged-{stamp}"));
        let to = PathBuf::from(name);
        std::fs::rename(&from, &to)?;
        moved.push(to);
    }
    segments::sync_parent(path)?;
    match prune_diverged(path) {
        Ok(removed) if !removed.is_empty() => {
            tracing::warn!(audit = %path.display(), removed = ?removed, "older copies of a local audit moved aside were removed (the newest {KEEP_DIVERGED} are kept)");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(audit = %path.display(), error = %e, "older copies of a local audit moved aside could not be removed");
        }
    }
    Ok(moved)
}

/// How many moves aside keep their copies beside the log, for whoever investigates: a host
/// fenced out again and again must not fill its disk with them.
const KEEP_DIVERGED: usize = 3;

/// Remove the copies of every move aside but the newest [`KEEP_DIVERGED`]; what was removed.
fn prune_diverged(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefixes: Vec<String> = [path.to_path_buf(), segments::dir_of(path)]
        .iter()
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()))
        .map(|n| format!("{n}.diverged-"))
        .collect();
    let mut copies: Vec<(u128, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stamp = prefixes
            .iter()
            .find_map(|p| name.strip_prefix(p.as_str()))
            .and_then(|s| s.parse::<u128>().ok());
        if let Some(stamp) = stamp {
            copies.push((stamp, entry.path()));
        }
    }
    let mut stamps: Vec<u128> = copies.iter().map(|(s, _)| *s).collect();
    stamps.sort_unstable();
    stamps.dedup();
    let Some(&oldest_kept) = stamps.iter().rev().nth(KEEP_DIVERGED - 1) else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    for (stamp, copy) in copies {
        if stamp < oldest_kept {
            if copy.is_dir() {
                std::fs::remove_dir_all(&copy)?;
            } else {
                std::fs::remove_file(&copy)?;
            }
            removed.push(copy);
        }
    }
    Ok(removed)
}

/// Records in `lines` the shared head at `head` already holds are dropped (checked to be the
/// same); the rest must continue it. What is left to write.
pub fn continuing<'a>(
    lines: &'a [Line],
    head: Option<&(u64, String)>,
) -> Result<&'a [Line], String> {
    let Some((head_seq, head_hash)) = head else {
        return Ok(lines);
    };
    let held = lines.iter().take_while(|l| l.seq <= *head_seq).count();
    if let Some(last_held) = held.checked_sub(1).map(|i| &lines[i])
        && last_held.seq == *head_seq
        && last_held.hash != *head_hash
    {
        return Err(format!(
            "the shared chain holds another record {head_seq}: another host wrote it"
        ));
    }
    let rest = &lines[held..];
    if let Some(pair) = rest
        .windows(2)
        .find(|w| w[1].seq != w[0].seq + 1 || w[1].prev != w[0].hash)
    {
        return Err(format!(
            "record {} does not follow record {}",
            pair[1].seq, pair[0].seq
        ));
    }
    match rest.first() {
        None => Ok(rest),
        Some(first) if first.seq == head_seq + 1 && first.prev == *head_hash => Ok(rest),
        Some(first) => Err(format!(
            "record {} does not continue the shared chain's head {head_seq}: another host wrote to it",
            first.seq
        )),
    }
}

/// A replica in memory: the audit's tests, and anything that needs the contract without a
/// database.
#[derive(Default)]
pub struct InMemory {
    pub lines: std::sync::Mutex<Vec<Line>>,
    /// Set: every call fails as a lost (fenced) host's would.
    pub lost: std::sync::atomic::AtomicBool,
    /// Set: every append fails as an unreachable database's would.
    pub down: std::sync::atomic::AtomicBool,
}

impl Replica for InMemory {
    fn place(&self) -> String {
        "memory".into()
    }
    fn head(&self) -> Result<Option<(u64, String)>, ReplicaError> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        Ok(lines.last().map(|l| (l.seq, l.hash.clone())))
    }
    fn hash_at(&self, seq: u64) -> Result<Option<String>, ReplicaError> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        Ok(lines.iter().find(|l| l.seq == seq).map(|l| l.hash.clone()))
    }
    fn after(&self, seq: u64, limit: usize) -> Result<Vec<Line>, ReplicaError> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        Ok(lines
            .iter()
            .filter(|l| l.seq > seq)
            .take(limit)
            .cloned()
            .collect())
    }
    fn append(&self, new: &[Line]) -> Result<(), ReplicaError> {
        use std::sync::atomic::Ordering;
        if self.lost.load(Ordering::Relaxed) {
            return Err(ReplicaError::Lost(
                "another host took the state over".into(),
            ));
        }
        if self.down.load(Ordering::Relaxed) {
            return Err(ReplicaError::Failed("the database is away".into()));
        }
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let head = lines.last().map(|l| (l.seq, l.hash.clone()));
        let rest = continuing(new, head.as_ref()).map_err(ReplicaError::Lost)?;
        lines.extend(rest.iter().cloned());
        Ok(())
    }
    fn forget_before(&self, seq: u64) -> Result<(), ReplicaError> {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.retain(|l| l.seq >= seq);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, Redactor, read_all, verify};
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    fn open(path: &Path, replica: &Arc<InMemory>) -> Result<AuditLog, AuditError> {
        AuditLog::open_replicated(
            path,
            Redactor::default(),
            Duration::from_secs(1),
            Some(replica.clone() as Arc<dyn Replica>),
        )
    }
    use std::time::Duration;

    /// The seqs the shared chain holds, oldest first.
    fn held_seqs(shared: &InMemory) -> Vec<u64> {
        shared
            .lines
            .lock()
            .expect("lines")
            .iter()
            .map(|l| l.seq)
            .collect()
    }

    /// A log on `shared` with one record both hold, then a `capability-intent` written locally
    /// whose commit point fails while `failing` is set (a fenced host's, a database away).
    fn one_shared_then_one_local(
        path: &Path,
        shared: &Arc<InMemory>,
        failing: &std::sync::atomic::AtomicBool,
    ) -> AuditLog {
        let log = open(path, shared).expect("open");
        log.append("kafka", None, "alert", serde_json::json!({}))
            .expect("append");
        failing.store(true, Ordering::Relaxed);
        assert!(
            log.append("kafka", None, "capability-intent", serde_json::json!({}))
                .is_err()
        );
        log
    }

    fn kinds(path: &Path) -> Vec<String> {
        read_all(path)
            .expect("read")
            .0
            .into_iter()
            .map(|r| r.kind)
            .collect()
    }

    #[test]
    fn a_host_taking_over_continues_the_shared_chain() {
        let shared = Arc::new(InMemory::default());
        let (a, b) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let (a_path, b_path) = (a.path().join("audit.jsonl"), b.path().join("audit.jsonl"));
        let first = open(&a_path, &shared).expect("open");
        first
            .append_deferred("kafka", Some("inc-1"), "alert", serde_json::json!({}))
            .expect("append");
        let proposal = first
            .append("kafka", Some("inc-1"), "escalation", serde_json::json!({}))
            .expect("append");
        drop(first);
        // The commit point put both in the shared chain.
        assert_eq!(
            shared.head().expect("head"),
            Some((proposal.seq, proposal.hash.clone()))
        );

        let second = open(&b_path, &shared).expect("open");
        // The other host reads the proposal back from its own files, checked by its hash.
        assert_eq!(
            second.record(&proposal.at()).expect("record").kind,
            "escalation"
        );
        let next = second
            .append("kafka", Some("inc-1"), "approval", serde_json::json!({}))
            .expect("append");
        drop(second);
        assert_eq!(
            kinds(&b_path),
            ["alert", "escalation", "audit-reconciled", "approval"]
        );
        assert_eq!(next.seq, proposal.seq + 2);
        assert!(verify::verify(&b_path).expect("read").is_ok());

        // The first host comes back behind: extended from the shared chain, not forked.
        let again = open(&a_path, &shared).expect("open");
        let last = again
            .append("kafka", None, "host-start", serde_json::json!({}))
            .expect("append");
        drop(again);
        assert_eq!(last.seq, next.seq + 2);
        // The same chain on both hosts, the first's own records after the second's.
        let (mine, theirs) = (
            read_all(&a_path).expect("read").0,
            read_all(&b_path).expect("read").0,
        );
        assert_eq!(mine[..theirs.len()], theirs[..]);
        assert!(verify::verify(&a_path).expect("read").is_ok());
        assert_eq!(shared.head().expect("head").map(|h| h.0), Some(last.seq));
    }

    #[test]
    fn local_records_the_shared_chain_never_took_are_moved_aside() {
        let shared = Arc::new(InMemory::default());
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.jsonl");
        // Fenced out: the record is written locally, the commit point fails, the log closes.
        let log = one_shared_then_one_local(&path, &shared, &shared.lost);
        assert!(
            log.append("kafka", None, "after", serde_json::json!({}))
                .is_err()
        );
        drop(log);
        shared.lost.store(false, Ordering::Relaxed);
        // Meanwhile another host went on from the shared head.
        let other = tempfile::tempdir().expect("dir");
        let theirs = open(&other.path().join("audit.jsonl"), &shared).expect("open");
        theirs
            .append("kafka", None, "approval", serde_json::json!({}))
            .expect("append");
        drop(theirs);

        let log = open(&path, &shared).expect("open");
        drop(log);
        let kept = kinds(&path);
        assert_eq!(kept[0], "alert");
        assert!(!kept.contains(&"capability-intent".to_string()), "{kept:?}");
        assert!(kept.contains(&"approval".to_string()), "{kept:?}");
        let records = read_all(&path).expect("read").0;
        let reconciled = records
            .iter()
            .rfind(|r| r.kind == "audit-reconciled")
            .expect("said");
        let aside = reconciled.data["moved_aside"][0].as_str().expect("moved");
        assert!(
            std::fs::read_to_string(aside)
                .expect("aside")
                .contains("capability-intent")
        );
        assert!(verify::verify(&path).expect("read").is_ok());
    }

    #[test]
    fn an_empty_shared_chain_is_given_the_local_one() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, Redactor::default()).expect("open");
        for n in 0..3 {
            log.append("kafka", None, "alert", serde_json::json!({ "n": n }))
                .expect("append");
        }
        drop(log);
        let shared = Arc::new(InMemory::default());
        drop(open(&path, &shared).expect("open"));
        let local = read_all(&path).expect("read").0;
        let lines = shared.lines.lock().expect("lines").clone();
        assert_eq!(lines.len(), local.len());
        assert_eq!(
            lines.iter().map(|l| l.seq).collect::<Vec<_>>(),
            local.iter().map(|r| r.seq).collect::<Vec<_>>()
        );
        assert_eq!(
            local.last().map(|r| r.kind.as_str()),
            Some("audit-reconciled")
        );
    }

    #[test]
    fn local_records_past_the_shared_head_are_given_to_it_not_moved_aside() {
        let shared = Arc::new(InMemory::default());
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.jsonl");
        // Written here, kept from the shared chain by a stop (the database away, then a kill).
        drop(one_shared_then_one_local(&path, &shared, &shared.down));
        shared.down.store(false, Ordering::Relaxed);

        drop(open(&path, &shared).expect("open"));
        assert_eq!(
            kinds(&path),
            ["alert", "capability-intent", "audit-reconciled"]
        );
        let records = read_all(&path).expect("read").0;
        let said = &records[2].data;
        assert_eq!(said["uploaded"], 1, "{said}");
        assert_eq!(said["moved_aside"], serde_json::json!([]), "{said}");
        let held: Vec<(u64, String)> = shared
            .lines
            .lock()
            .expect("lines")
            .iter()
            .map(|l| (l.seq, l.hash.clone()))
            .collect();
        let local: Vec<(u64, String)> = records.iter().map(|r| (r.seq, r.hash.clone())).collect();
        assert_eq!(held, local);
        assert!(verify::verify(&path).expect("read").is_ok());
        let beside: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("diverged"))
            .collect();
        assert!(beside.is_empty(), "nothing moved aside: {beside:?}");
    }

    #[test]
    fn an_upload_cut_off_part_way_is_finished() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, Redactor::default()).expect("open");
        for n in 0..5 {
            log.append("kafka", None, "alert", serde_json::json!({ "n": n }))
                .expect("append");
        }
        drop(log);
        // The shared chain took the first two pages of an upload, then the host stopped.
        let shared = Arc::new(InMemory::default());
        let text = std::fs::read_to_string(&path).expect("read");
        let first: Vec<Line> = read_all(&path)
            .expect("read")
            .0
            .iter()
            .zip(text.lines())
            .take(2)
            .map(|(r, line)| Line {
                seq: r.seq,
                hash: r.hash.clone(),
                prev: r.prev.clone(),
                text: line.to_string(),
            })
            .collect();
        shared.append(&first).expect("prefix");

        drop(open(&path, &shared).expect("open"));
        let local = read_all(&path).expect("read").0;
        assert_eq!(local.len(), 6, "five alerts and the reconciliation");
        let held = held_seqs(&shared);
        assert_eq!(held, [1, 2, 3, 4, 5, 6]);
        assert_eq!(local[5].data["uploaded"], 3);
    }

    #[test]
    fn only_the_newest_copies_moved_aside_are_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.jsonl");
        for stamp in 1..=5 {
            std::fs::write(
                dir.path().join(format!("audit.jsonl.diverged-{stamp}")),
                "x",
            )
            .expect("copy");
        }
        std::fs::create_dir(dir.path().join("audit.segments.diverged-1")).expect("dir");
        std::fs::create_dir(dir.path().join("audit.segments.diverged-5")).expect("dir");
        std::fs::write(dir.path().join("audit.jsonl.diverged-notes"), "kept").expect("other");
        let removed = prune_diverged(&path).expect("prune");
        assert_eq!(removed.len(), 3, "{removed:?}");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "audit.jsonl.diverged-3",
                "audit.jsonl.diverged-4",
                "audit.jsonl.diverged-5",
                "audit.jsonl.diverged-notes",
                "audit.segments.diverged-5"
            ]
        );
    }

    #[test]
    fn a_local_chain_that_does_not_hold_together_is_not_shared() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, Redactor::default()).expect("open");
        for n in 0..3 {
            log.append("kafka", None, "alert", serde_json::json!({ "n": n }))
                .expect("append");
        }
        drop(log);
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, text.replace("\"n\":1", "\"n\":7")).expect("edit");
        let shared = Arc::new(InMemory::default());
        let err = open(&path, &shared).err().expect("refused");
        assert!(err.to_string().contains("cannot be shared"), "{err}");
        assert!(shared.lines.lock().expect("lines").is_empty());
    }

    #[test]
    fn a_commit_point_waits_for_the_shared_chain_and_catches_up() {
        let shared = Arc::new(InMemory::default());
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.jsonl");
        let log = open(&path, &shared).expect("open");
        log.append("kafka", None, "alert", serde_json::json!({}))
            .expect("append");
        shared.down.store(true, Ordering::Relaxed);
        // Not durable until the shared chain has it: the caller must not act.
        assert!(
            log.append("kafka", None, "capability-intent", serde_json::json!({}))
                .is_err()
        );
        assert!(log.commit().is_err());
        shared.down.store(false, Ordering::Relaxed);
        // Back: the pending record goes first, in order, and the log goes on.
        log.append("kafka", None, "capability-call", serde_json::json!({}))
            .expect("append");
        let held = held_seqs(&shared);
        assert_eq!(held, [1, 2, 3]);
        drop(log);
        assert!(verify::verify(&path).expect("read").is_ok());
    }

    #[test]
    fn a_shared_chain_that_does_not_hold_together_is_refused() {
        let shared = Arc::new(InMemory::default());
        let a = tempfile::tempdir().expect("dir");
        let log = open(&a.path().join("audit.jsonl"), &shared).expect("open");
        log.append("kafka", None, "alert", serde_json::json!({ "n": 1 }))
            .expect("append");
        drop(log);
        // Someone with the database's credentials edits a record.
        {
            let mut lines = shared.lines.lock().expect("lines");
            lines[0].text = lines[0].text.replace("\"n\":1", "\"n\":2");
        }
        let b = tempfile::tempdir().expect("dir");
        let err = open(&b.path().join("audit.jsonl"), &shared)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("does not match its hash"), "{err}");
    }
}
