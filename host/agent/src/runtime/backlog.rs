//! The agent's backlog: alerts the service accepted and the agent has not taken up yet. They
//! wait on disk — their `alert-accepted` records on the audit are the backlog — never in memory,
//! so an alert storm costs the intake one record per alert and the host a few counters, and a
//! stop loses nothing (what is left is replayed at the next start, see `replay.rs`).
//!
//! The worker reads the audit forward from where it stood for its own `alert-accepted` records,
//! one at a time between commands, so answers to approvals never wait behind a storm. The file
//! is read, not parsed, until a line names the agent and the kind; a record whose hash does not
//! verify is skipped and said.
//!
//! The reader follows the chain from file to file as the log seals its active file into
//! segments, and says which file it is in (`Backlog::reading_from`): retention never removes
//! a segment the reader has not finished.

use super::replay::Replay;
use crate::audit::{AuditLog, Position, Record};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;
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
    /// The audit file (by its first seq) the backlog's reader is in: it and every file after
    /// it may still hold accepted alerts not taken up, so retention keeps them.
    pub(crate) reading_from: AtomicU64,
}

impl Backlog {
    pub(crate) fn new(capacity: usize) -> Backlog {
        Backlog {
            capacity: capacity.max(1) as u64,
            accepted: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            wake: Notify::new(),
            leave: AtomicBool::new(false),
            reading_from: AtomicU64::new(0),
        }
    }

    /// The audit file (by its first seq) the reader is in (see the field).
    pub(crate) fn reading_from(&self) -> u64 {
        self.reading_from.load(Ordering::Acquire)
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

    /// How many more alerts it takes now.
    pub(crate) fn room(&self) -> u64 {
        self.capacity.saturating_sub(self.depth())
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
    audit: Arc<AuditLog>,
    /// Told which file the reader is in.
    backlog: Arc<Backlog>,
    agent: String,
    /// `"agent":"<name>"` and `"kind":"alert-accepted"`: a line without both is not read on.
    agent_field: memchr::memmem::Finder<'static>,
    kind_field: memchr::memmem::Finder<'static>,
    /// The file being read (by its first seq).
    file: u64,
    /// Where the next unread line starts in it.
    offset: u64,
    /// The file, kept open: it is the same file when the log seals it under another name.
    open: Option<File>,
    /// The log said the file has a successor, so nothing more is written to it: at its end,
    /// the reader moves on.
    sealed: bool,
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
    /// Read from the start of the file that holds the oldest alert to replay, else from where
    /// the start's scan ended.
    pub(crate) fn new(
        audit: Arc<AuditLog>,
        backlog: Arc<Backlog>,
        agent: &str,
        replay: Replay,
    ) -> Result<BacklogReader, crate::audit::AuditError> {
        let start = match replay.untaken.first() {
            None => replay.end,
            Some(&oldest) => Position {
                file: audit.file_holding(oldest)?,
                offset: 0,
            },
        };
        backlog.reading_from.store(start.file, Ordering::Release);
        Ok(BacklogReader {
            audit,
            backlog,
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
            file: start.file,
            offset: start.offset,
            open: None,
            sealed: false,
            reader: None,
            line: Vec::new(),
            replay,
        })
    }

    /// At the end of the file being read: move to the next file if the log sealed this one
    /// (`true`: read on), after reading it to its true end.
    fn move_on(&mut self) -> std::io::Result<bool> {
        if !self.sealed {
            if self
                .audit
                .next_file(self.file)
                .map_err(std::io::Error::other)?
                .is_none()
            {
                return Ok(false);
            }
            // Sealed since the read that found its end: what was written before the seal is
            // read first.
            self.sealed = true;
            return Ok(true);
        }
        let Some(next) = self
            .audit
            .next_file(self.file)
            .map_err(std::io::Error::other)?
        else {
            return Ok(false);
        };
        self.file = next;
        self.offset = 0;
        self.open = None;
        self.sealed = false;
        self.backlog.reading_from.store(next, Ordering::Release);
        Ok(true)
    }

    /// The next accepted alert of this agent on the audit — and whether a start replays it — or
    /// `None` when the file has no further whole line (a line being written is left for later).
    pub(crate) fn next(&mut self) -> std::io::Result<Option<(Record, bool)>> {
        'lines: loop {
            let reader = match &mut self.reader {
                Some(r) => r,
                None => {
                    let file = match &self.open {
                        Some(f) => f,
                        None => match self.audit.open_file(self.file) {
                            Ok(f) => self.open.insert(f),
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                                // Removed, which retention does only to files no reader is
                                // in: read on from the oldest file there is, if it is a later
                                // one (an earlier one was read already). Otherwise the log's
                                // files are gone from under the host: say so, never spin.
                                let oldest =
                                    self.audit.file_holding(0).map_err(std::io::Error::other)?;
                                if oldest <= self.file {
                                    return Err(e);
                                }
                                tracing::error!(
                                    file = self.file,
                                    from = oldest,
                                    "the audit file the backlog reader was in is gone; it reads on from the oldest there is"
                                );
                                self.file = oldest;
                                self.offset = 0;
                                continue;
                            }
                            Err(e) => return Err(e),
                        },
                    };
                    let mut file = file.try_clone()?;
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
                        if self.sealed {
                            // Nothing more comes to a sealed file: this line stays unfinished.
                            self.offset += read as u64 + skipped;
                        }
                        if self.move_on()? {
                            continue 'lines;
                        }
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
                // The end, or a line still being written: read it again from its start later,
                // or go on in the next file once this one is sealed.
                self.reader = None;
                if self.sealed && read > 0 {
                    // Nothing more comes to a sealed file: this line stays unfinished.
                    self.offset += read as u64;
                }
                if self.move_on()? {
                    continue;
                }
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
        let audit = Arc::new(AuditLog::open(&path, Redactor::with_values(None)).expect("audit"));
        let start = audit.end();
        audit
            .append_many(vec![
                entry("kafka", "alert-accepted", 1),
                entry("postgres", "alert-accepted", 2),
                entry("kafka", "alert", 3),
                entry("kafka", "alert-accepted", 4),
            ])
            .expect("append");
        let mut reader = reader(&audit, replay_from(start));
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
        let audit = Arc::new(AuditLog::open(&path, Redactor::with_values(None)).expect("audit"));
        let start = audit.end();
        std::fs::write(&path, &junk).expect("write");
        let mut reader = reader(&audit, replay_from(start));
        assert!(reader.next().expect("read").is_none());
        // Both lines passed over: the next read starts after them.
        assert_eq!(reader.offset, junk.len() as u64);
        assert!(reader.line.capacity() <= LONGEST_LINE as usize * 2);
    }

    fn reader(audit: &Arc<AuditLog>, replay: Replay) -> BacklogReader {
        BacklogReader::new(audit.clone(), Arc::new(Backlog::new(10)), "kafka", replay)
            .expect("reader")
    }

    fn replay_from(end: Position) -> Replay {
        Replay {
            end,
            ..Replay::default()
        }
    }

    #[test]
    fn the_reader_follows_the_log_from_file_to_file_as_it_is_sealed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let audit = Arc::new(AuditLog::open(&path, Redactor::with_values(None)).expect("audit"));
        audit.set_segment_bytes(1024);
        let backlog = Arc::new(Backlog::new(10));
        let mut reader = BacklogReader::new(
            audit.clone(),
            backlog.clone(),
            "kafka",
            replay_from(audit.end()),
        )
        .expect("reader");
        let mut seen = Vec::new();
        let mut n = 0;
        for round in 0..6 {
            // Several seals between reads (and none, at times): every accepted alert of the
            // agent is read once, in order.
            for _ in 0..round * 3 {
                n += 1;
                let agent = if n % 3 == 0 { "postgres" } else { "kafka" };
                audit
                    .append("x", None, "padding", json!({ "pad": "y".repeat(200) }))
                    .expect("append");
                audit
                    .append_many(vec![entry(agent, "alert-accepted", n)])
                    .expect("append");
            }
            while let Some((r, replayed)) = reader.next().expect("read") {
                assert!(!replayed);
                seen.push(r.data["n"].as_u64().unwrap_or(0));
            }
            assert_eq!(
                backlog.reading_from(),
                audit.end().file,
                "the reader is in the active file"
            );
        }
        assert!(audit.segments().expect("segments").0.len() > 5);
        let expected: Vec<u64> = (1..=n).filter(|n| n % 3 != 0).collect();
        assert_eq!(seen, expected);

        // A start with alerts to replay reads from the file that holds the oldest of them.
        let oldest = audit.segments().expect("segments").0[2].first_seq + 1;
        let holding = audit.file_holding(oldest).expect("file");
        let replay = Replay {
            untaken: [oldest, oldest + 1, oldest + 2].into_iter().collect(),
            through: audit.end().file,
            end: audit.end(),
        };
        let backlog = Arc::new(Backlog::new(10));
        let mut replaying =
            BacklogReader::new(audit.clone(), backlog.clone(), "kafka", replay).expect("reader");
        assert_eq!(backlog.reading_from(), holding);
        let mut again = Vec::new();
        while let Some((r, replayed)) = replaying.next().expect("read") {
            assert!(replayed || r.seq > audit.end().file);
            again.push(r.seq);
        }
        assert!(
            again.iter().all(|s| (oldest..oldest + 3).contains(s)),
            "{again:?}"
        );
        assert!(!again.is_empty());
    }

    #[test]
    fn a_reader_whose_log_is_gone_says_so_rather_than_spinning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let audit = Arc::new(AuditLog::open(&path, Redactor::with_values(None)).expect("audit"));
        let mut reader = reader(&audit, replay_from(audit.end()));
        assert!(reader.next().expect("read").is_none());
        reader.open = None;
        reader.reader = None;
        std::fs::remove_file(&path).expect("remove");
        let err = reader.next().expect_err("the file is gone");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
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
