//! The agent's backlog: alerts the service accepted and the agent has not taken up yet. They
//! wait on disk — their `alert-accepted` records on the audit are the backlog — never in memory,
//! so an alert storm costs the intake one record per alert and the host a few counters, and a
//! stop loses nothing (what is left is replayed at the next start, see `replay.rs`).
//!
//! The worker reads the audit forward from where it stood for its own `alert-accepted` records,
//! one at a time between commands, so answers to approvals never wait behind a storm. The file
//! is read, not parsed, until a line names the agent and the kind; a record whose hash does not
//! verify is skipped and said.

use super::replay::Replay;
use crate::audit::Record;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::Notify;

/// What intake and worker share about one agent's backlog.
#[derive(Debug)]
pub(crate) struct Backlog {
    capacity: u64,
    accepted: AtomicU64,
    taken: AtomicU64,
    pub(crate) wake: Notify,
    /// The host is stopping and leaves what waits where it is: on disk, replayed at the next
    /// start. A stop then takes as long as the alert in hand, not the whole backlog.
    leave: AtomicBool,
}

impl Backlog {
    pub(crate) fn new(capacity: usize) -> Backlog {
        Backlog {
            capacity: capacity.max(1) as u64,
            accepted: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            wake: Notify::new(),
            leave: AtomicBool::new(false),
        }
    }

    /// Take up no more of it: the host is stopping (see [`Backlog::leave`]'s field).
    pub(crate) fn leave(&self) {
        self.leave.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    pub(crate) fn left(&self) -> bool {
        self.leave.load(Ordering::Acquire)
    }

    /// Alerts accepted and not yet taken up.
    pub(crate) fn depth(&self) -> u64 {
        self.accepted
            .load(Ordering::Acquire)
            .saturating_sub(self.taken.load(Ordering::Acquire))
    }

    /// Room for up to `want` more: how many were granted (counted as waiting from now on).
    pub(crate) fn reserve(&self, want: usize) -> usize {
        let mut granted = 0;
        let _ = self
            .accepted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |accepted| {
                let depth = accepted.saturating_sub(self.taken.load(Ordering::Acquire));
                granted = self.capacity.saturating_sub(depth).min(want as u64);
                Some(accepted + granted)
            });
        granted as usize
    }

    /// Places reserved and not used (their records could not be written).
    pub(crate) fn release(&self, n: usize) {
        self.taken.fetch_add(n as u64, Ordering::AcqRel);
    }

    /// Alerts a start found accepted and not taken up: waiting like any other.
    pub(crate) fn preload(&self, n: usize) {
        self.accepted.fetch_add(n as u64, Ordering::AcqRel);
    }

    /// The reserved alerts are on the audit: wake the worker.
    pub(crate) fn added(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn took_one(&self) {
        self.taken.fetch_add(1, Ordering::AcqRel);
    }
}

/// Reads the audit forward for one agent's accepted alerts.
pub(crate) struct BacklogReader {
    path: PathBuf,
    agent: String,
    /// `"agent":"<name>"` and `"kind":"alert-accepted"`: a line without both is not read on.
    agent_field: memchr::memmem::Finder<'static>,
    kind_field: memchr::memmem::Finder<'static>,
    /// Where the next unread line starts.
    offset: u64,
    reader: Option<BufReader<File>>,
    line: Vec<u8>,
    /// From the start's scan: accepted records up to `replay.through` are taken only if they
    /// are in `replay.untaken` (the rest were taken up before the stop).
    replay: Replay,
}

const KIND: &[u8] = b"\"kind\":\"alert-accepted\"";

/// No record this host writes is longer (its data is bounded to `MAX_RECORD_BYTES`).
const LONGEST_LINE: u64 = 2 * crate::audit::MAX_RECORD_BYTES as u64 + 1;

impl BacklogReader {
    /// Read from the start of the file when there is something to replay, else from where the
    /// start's scan ended.
    pub(crate) fn new(path: PathBuf, agent: &str, replay: Replay) -> BacklogReader {
        let offset = if replay.untaken.is_empty() {
            replay.end
        } else {
            0
        };
        BacklogReader {
            path,
            agent: agent.to_owned(),
            agent_field: memchr::memmem::Finder::new(
                format!(
                    "\"agent\":{}",
                    serde_json::to_string(agent).unwrap_or_default()
                )
                .as_bytes(),
            )
            .into_owned(),
            kind_field: memchr::memmem::Finder::new(KIND).into_owned(),
            offset,
            reader: None,
            line: Vec::new(),
            replay,
        }
    }

    /// The next accepted alert of this agent on the audit — and whether a start replays it — or
    /// `None` when the file has no further whole line (a line being written is left for later).
    pub(crate) fn next(&mut self) -> std::io::Result<Option<(Record, bool)>> {
        loop {
            let reader = match &mut self.reader {
                Some(r) => r,
                None => {
                    let mut file = File::open(&self.path)?;
                    file.seek(SeekFrom::Start(self.offset))?;
                    self.reader.insert(BufReader::new(file))
                }
            };
            self.line.clear();
            let read = (&mut *reader)
                .take(LONGEST_LINE)
                .read_until(b'\n', &mut self.line)?;
            if read as u64 == LONGEST_LINE && self.line.last() != Some(&b'\n') {
                // Longer than any record this host writes: not one of its records, never held
                // whole. Skip it (if it is whole).
                let mut skipped = 0u64;
                loop {
                    let buf = reader.fill_buf()?;
                    if buf.is_empty() {
                        // Not whole yet: from its start again later.
                        self.reader = None;
                        return Ok(None);
                    }
                    if let Some(i) = memchr::memchr(b'\n', buf) {
                        reader.consume(i + 1);
                        skipped += i as u64 + 1;
                        break;
                    }
                    let n = buf.len();
                    reader.consume(n);
                    skipped += n as u64;
                }
                tracing::error!(
                    offset = self.offset,
                    "a line of the audit longer than any record is skipped by the backlog reader"
                );
                self.offset += read as u64 + skipped;
                continue;
            }
            if read == 0 || self.line.last() != Some(&b'\n') {
                // The end, or a line still being written: read it again from its start later.
                self.reader = None;
                return Ok(None);
            }
            self.offset += read as u64;
            if self.kind_field.find(&self.line).is_none()
                || self.agent_field.find(&self.line).is_none()
            {
                continue;
            }
            let Ok(record) = serde_json::from_slice::<Record>(&self.line) else {
                continue;
            };
            if record.kind != "alert-accepted" || record.agent != self.agent {
                continue;
            }
            let replayed = record.seq <= self.replay.through;
            if replayed && !self.replay.untaken.remove(&record.seq) {
                continue;
            }
            if record.compute_hash() != record.hash {
                tracing::error!(
                    seq = record.seq,
                    "an accepted alert's record does not match its hash: not taken up"
                );
                continue;
            }
            return Ok(Some((record, replayed)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, Entry};
    use serde_json::json;
    use std::io::Write;
    use themis_core::redact::Redactor;

    fn entry(agent: &str, kind: &str, n: u64) -> Entry {
        Entry {
            agent: agent.into(),
            incident: None,
            kind: kind.into(),
            data: json!({ "n": n }),
        }
    }

    #[test]
    fn the_reader_takes_its_agents_accepted_alerts_in_order_and_waits_for_whole_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let audit = AuditLog::open(&path, Redactor::with_values(None)).expect("audit");
        audit
            .append_many(vec![
                entry("kafka", "alert-accepted", 1),
                entry("postgres", "alert-accepted", 2),
                entry("kafka", "alert", 3),
                entry("kafka", "alert-accepted", 4),
            ])
            .expect("append");
        let mut reader = BacklogReader::new(path.clone(), "kafka", Replay::default());
        let seen: Vec<u64> = std::iter::from_fn(|| reader.next().expect("read"))
            .map(|(r, _)| r.data["n"].as_u64().unwrap_or(0))
            .collect();
        assert_eq!(seen, [1, 4]);
        // A line being written is not read until it is whole.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        f.write_all(b"{\"seq\":99,\"agent\":\"kafka\",\"kind\":\"alert-accepted\"")
            .expect("write");
        assert!(reader.next().expect("read").is_none());
        // A whole line whose hash does not match is not taken.
        f.write_all(b",\"ts\":\"x\",\"data\":{},\"prev\":\"x\",\"hash\":\"x\"}\n")
            .expect("write");
        assert!(reader.next().expect("read").is_none());
    }

    #[test]
    fn a_line_longer_than_any_record_is_skipped_without_being_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut junk = vec![b'x'; LONGEST_LINE as usize * 3];
        junk.push(b'\n');
        let after = b"{\"not\":\"a record\"}\n";
        junk.extend_from_slice(after);
        std::fs::write(&path, &junk).expect("write");
        let mut reader = BacklogReader::new(path, "kafka", Replay::default());
        assert!(reader.next().expect("read").is_none());
        // Both lines passed over: the next read starts after them.
        assert_eq!(reader.offset, junk.len() as u64);
        assert!(reader.line.capacity() <= LONGEST_LINE as usize * 2);
    }

    #[test]
    fn the_backlog_grants_what_it_has_room_for() {
        let b = Backlog::new(3);
        assert_eq!(b.reserve(2), 2);
        assert_eq!(b.reserve(2), 1);
        assert_eq!(b.reserve(1), 0);
        b.took_one();
        assert_eq!(b.depth(), 2);
        b.release(2);
        assert_eq!(b.reserve(5), 3);
    }
}
