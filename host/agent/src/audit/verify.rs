//! `themis audit verify`: walk the chain and name the first record that does not hold.
//!
//! What it proves: every record is byte for byte as the host wrote it (its canonical JSON: an
//! edit that keeps the same JSON value — an escape, a space, a duplicated key — is a change),
//! each links to the one before, and numbering has no gap. Given the host's public key it also
//! checks every signed checkpoint (a chain recomputed after an edit no longer matches them), and
//! given the newest checkpoint the host left beside its key, that the file still reaches it
//! (records cut from the end are missing).
//!
//! The log's sealed segments (`audit.segments/`) are read before the file named, as one chain.
//! A chain that does not start at record 1 holds only when a record on it says retention
//! removed what came before (`audit-segments-removed`, naming the exact link it starts from).

use super::checkpoint::Checkpoint;
use super::segments::{self, REMOVED_KIND, RemovedSegment};
use super::{GENESIS, Record};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use themis_core::trust::keys::PublicKey;

/// The first break in a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}line {line}: {problem}", file.as_ref().map(|f| format!("{}, ", f.display())).unwrap_or_default())]
pub struct Break {
    /// The sealed segment the break is in; `None`: the file named.
    pub file: Option<PathBuf>,
    /// The line in that file.
    pub line: usize,
    /// The record's `seq` when the line still parses.
    pub seq: Option<u64>,
    pub problem: String,
}

/// A chain that holds: how many records, and what its checkpoints showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intact {
    /// The last record's seq (the records kept when retention removed the first ones).
    pub records: u64,
    /// The first record kept: 1, unless retention removed segments before it.
    pub first: u64,
    pub last_hash: String,
    /// Checkpoint records on the chain.
    pub checkpoints: u64,
    pub last_checkpoint: Option<Checkpoint>,
    /// Were the checkpoints' signatures checked (a key was given)?
    pub signatures_checked: bool,
    /// Was the file checked against the host's newest checkpoint (a head was given)?
    pub head_checked: bool,
    /// The active file ends in a line that is not whole (this many bytes, no newline): an
    /// append under way, or one a crash cut short, which the host's next start moves aside.
    /// Never acknowledged, so not part of the chain.
    pub unfinished: Option<usize>,
}

/// Records written between a checkpoint falling due and its record (concurrent appends), on top
/// of twice the interval, before a run without checkpoints counts as checkpoints removed.
const CHECKPOINT_SLACK: u64 = 64;

/// What to check beyond the chain itself.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The host's audit public key(s): every checkpoint must be signed by one.
    pub keys: Vec<PublicKey>,
    /// The newest checkpoint as the host mirrored it beside its key: the file must reach it.
    pub head: Option<Checkpoint>,
}

/// `Ok(Ok(..))` intact, `Ok(Err(..))` broken, `Err` unreadable file.
pub fn verify(path: &Path) -> std::io::Result<Result<Intact, Break>> {
    verify_with(path, &Options::default())
}

/// [`verify`], with checkpoints checked against keys and the file against the newest head.
pub fn verify_with(path: &Path, options: &Options) -> std::io::Result<Result<Intact, Break>> {
    let files = segments::open_all(path)?;
    if files.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such audit log",
        ));
    }
    let mut prev = GENESIS.to_string();
    let mut expected_seq = 1u64;
    let mut checkpoints = 0u64;
    let mut last_checkpoint = None;
    let mut lines = 0usize;
    let mut where_ = None;
    // Where the chain starts when it does not start at record 1, whether a removal record
    // vouched for it, and where that first record is.
    let mut anchor: Option<(u64, String, bool, Option<PathBuf>, usize)> = None;
    let mut first_seen = false;
    let mut unfinished = None;
    // While the host said it checkpointed (every N records), the records since the last
    // checkpoint: a run far longer than N had its checkpoints removed (and the chain
    // recomputed, which only the checkpoints' signatures would have shown).
    let mut every: Option<u64> = None;
    let mut since_checkpoint = 0u64;
    if let Some(head) = &options.head
        && !options.keys.is_empty()
        && !head.verifies_with(&options.keys)
    {
        return Ok(Err(Break {
            file: None,
            line: 0,
            seq: Some(head.seq),
            problem: "the head file's checkpoint is not signed by the given key: it was forged or belongs to another host".into(),
        }));
    }
    for (file_path, file) in files {
        let file_name = (file_path != path).then_some(file_path);
        where_ = file_name.clone();
        let mut reader = BufReader::new(file);
        let mut bytes = Vec::new();
        let mut line_no = 0;
        loop {
            bytes.clear();
            if reader.read_until(b'\n', &mut bytes)? == 0 {
                break;
            }
            line_no += 1;
            lines = line_no;
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
            } else if file_name.is_none() {
                unfinished = Some(bytes.len());
                break;
            } else {
                return Ok(Err(Break {
                    file: file_name,
                    line: line_no,
                    seq: None,
                    problem: "a sealed segment whose last line is not whole: it was altered".into(),
                }));
            }
            let Ok(text) = std::str::from_utf8(&bytes) else {
                return Ok(Err(Break {
                    file: file_name,
                    line: line_no,
                    seq: None,
                    problem: "not UTF-8: the record was altered".into(),
                }));
            };
            if text.trim().is_empty() {
                return Ok(Err(Break {
                    file: file_name,
                    line: line_no,
                    seq: None,
                    problem: "a blank line, which the host never writes: lines were inserted"
                        .into(),
                }));
            }
            let record: Record = match serde_json::from_str(text) {
                Ok(r) => r,
                Err(e) => {
                    return Ok(Err(Break {
                        file: file_name,
                        line: line_no,
                        seq: None,
                        problem: format!("not a valid record ({e}): the record was altered"),
                    }));
                }
            };
            let fail = |problem: String| {
                Ok(Err(Break {
                    file: file_name.clone(),
                    line: line_no,
                    seq: Some(record.seq),
                    problem,
                }))
            };
            // A sealed segment is named by its first record: the host finds a record by that
            // name (an approval re-reads its proposal there), so one moved across files is a
            // break even where the chain still holds.
            if line_no == 1
                && let Some(named) = file_name
                    .as_deref()
                    .and_then(|f| f.file_name())
                    .and_then(|n| n.to_str())
                    .and_then(segments::first_seq_of)
                && named != record.seq
            {
                return fail(format!(
                    "the segment is named for record {named} but starts with record {}: records were moved between files",
                    record.seq
                ));
            }
            if !first_seen {
                first_seen = true;
                if record.seq > 1 {
                    expected_seq = record.seq;
                    prev = record.prev.clone();
                    anchor = Some((
                        record.seq,
                        record.prev.clone(),
                        false,
                        file_name.clone(),
                        line_no,
                    ));
                }
            }
            if record.seq != expected_seq {
                return fail(format!(
                    "record {} where record {expected_seq} was expected: records were removed, reordered or inserted",
                    record.seq
                ));
            }
            if record.prev != prev {
                return fail(format!(
                    "record {} does not link to the record before it: the chain was cut or a record was replaced",
                    record.seq
                ));
            }
            if record.compute_hash() != record.hash {
                return fail(format!(
                    "record {} does not match its hash: its content was changed",
                    record.seq
                ));
            }
            if serde_json::to_vec(&record).ok().as_deref() != Some(text.as_bytes()) {
                return fail(format!(
                    "record {} is not byte for byte as the host wrote it (an escape, a space, the order or a repeat of a key): it was altered",
                    record.seq
                ));
            }
            if record.kind == REMOVED_KIND
                && let Some((seq, link, vouched, ..)) = anchor.as_mut()
                && let Some(removed) = record
                    .data
                    .get("segments")
                    .and_then(|s| serde_json::from_value::<Vec<RemovedSegment>>(s.clone()).ok())
                && removed
                    .iter()
                    .any(|r| r.last_seq.checked_add(1) == Some(*seq) && r.last_hash == *link)
            {
                *vouched = true;
            }
            match record.kind.as_str() {
                "audit-checkpoints-on" => {
                    every = record.data["every_records"].as_u64().filter(|n| *n > 0);
                    since_checkpoint = 0;
                }
                "audit-checkpoints-off" => every = None,
                "checkpoint" => {
                    every = every.or(Some(super::checkpoint::DEFAULT_EVERY_RECORDS));
                    since_checkpoint = 0;
                }
                _ => {
                    since_checkpoint += 1;
                    if let Some(n) = every
                        && since_checkpoint > n.saturating_mul(2).saturating_add(CHECKPOINT_SLACK)
                    {
                        return fail(format!(
                            "{since_checkpoint} records without a checkpoint, where the host signed one every {n}: checkpoints were removed from the chain"
                        ));
                    }
                }
            }
            if record.kind == "checkpoint" {
                let Ok(cp) = serde_json::from_value::<Checkpoint>(record.data.clone()) else {
                    return fail(format!("record {} is not a checkpoint", record.seq));
                };
                if cp.seq.checked_add(1) != Some(record.seq) || cp.head != record.prev {
                    return fail(format!(
                        "checkpoint {} does not sign the head it follows",
                        record.seq
                    ));
                }
                if !options.keys.is_empty() && !cp.verifies_with(&options.keys) {
                    return fail(format!(
                        "checkpoint {} is not signed by the given key: the chain up to it was recomputed, or the checkpoint forged",
                        record.seq
                    ));
                }
                checkpoints += 1;
                last_checkpoint = Some(cp);
            }
            if let Some(head) = &options.head
                && head.seq == record.seq
                && head.head != record.hash
            {
                return fail(format!(
                    "record {} is not the one the host checkpointed at {}: the chain was recomputed",
                    record.seq, head.at
                ));
            }
            prev = record.hash;
            let Some(next) = expected_seq.checked_add(1) else {
                return fail("a record numbered past the largest sequence number".into());
            };
            expected_seq = next;
        }
    }
    if let Some((seq, _, false, file, line)) = anchor {
        return Ok(Err(Break {
            file,
            line,
            seq: Some(seq),
            problem: format!(
                "the log starts at record {seq}: records 1 to {} are missing and no record says retention removed them",
                seq - 1
            ),
        }));
    }
    let first = anchor.as_ref().map_or(1, |a| a.0);
    // The record the host checkpointed must be in the log: one that starts after it did not
    // lose its oldest records to retention (which never reaches the newest checkpoint), it was
    // replaced — whatever record at its start claims retention removed the rest.
    if let Some(head) = &options.head
        && first > head.seq
        && let Some((_, _, _, file, line)) = &anchor
    {
        return Ok(Err(Break {
            file: file.clone(),
            line: *line,
            seq: Some(first),
            problem: format!(
                "the log starts at record {first}, after record {} that the host checkpointed at {}: the log was replaced",
                head.seq, head.at
            ),
        }));
    }
    let records = expected_seq - 1;
    if let Some(head) = &options.head
        && records < head.seq
    {
        return Ok(Err(Break {
            file: where_,
            line: lines + 1,
            seq: None,
            problem: format!(
                "the log ends at record {records}, but the host checkpointed record {} at {}: records were cut from the end",
                head.seq, head.at
            ),
        }));
    }
    Ok(Ok(Intact {
        records,
        first,
        last_hash: prev,
        checkpoints,
        last_checkpoint,
        signatures_checked: !options.keys.is_empty(),
        head_checked: options.head.is_some(),
        unfinished,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::{AuditLog, Redactor};
    use super::*;
    use serde_json::json;

    fn log_with(n: usize) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, Redactor::default()).expect("open");
        for i in 0..n {
            log.append(
                "kafka",
                Some("inc"),
                "step",
                json!({ "i": i, "summary": "gc pause 2500 ms" }),
            )
            .expect("append");
        }
        (dir, path)
    }

    #[test]
    fn any_single_byte_change_is_caught_and_names_its_record() {
        let (_dir, path) = log_with(5);
        let original = std::fs::read(&path).expect("read");
        assert_eq!(verify(&path).expect("io").expect("intact").records, 5);
        let line_of =
            |offset: usize| original[..offset].iter().filter(|b| **b == b'\n').count() + 1;
        // Every byte, every line: flipping it must break the chain at that very line.
        for offset in 0..original.len() {
            if original[offset] == b'\n' {
                continue;
            }
            let mut changed = original.clone();
            changed[offset] ^= 0x01;
            std::fs::write(&path, &changed).expect("write");
            let broken = verify(&path).expect("io").expect_err("tamper detected");
            assert_eq!(broken.line, line_of(offset), "byte {offset}: {broken}");
        }
    }

    #[test]
    fn an_edit_that_keeps_the_json_value_is_still_an_edit() {
        let (_dir, path) = log_with(2);
        let original = std::fs::read_to_string(&path).expect("read");
        for (from, to) in [
            ("\"gc pause", "\"\\u0067c pause"),
            ("\"kind\":\"step\"", "\"kind\": \"step\""),
            ("\"i\":0", "\"i\":7,\"i\":0"),
        ] {
            std::fs::write(&path, original.replacen(from, to, 1)).expect("write");
            let broken = verify(&path).expect("io").expect_err("detected");
            assert_eq!(broken.line, 1, "{to}: {broken}");
            assert!(broken.problem.contains("byte for byte"), "{to}: {broken}");
        }
    }

    #[test]
    fn an_inserted_blank_line_is_an_edit_and_an_unfinished_last_line_is_not_a_break() {
        let (_dir, path) = log_with(3);
        let original = std::fs::read_to_string(&path).expect("read");
        for blank in ["\n", " \n", "\r\n"] {
            let at = original.find('\n').expect("a line") + 1;
            let mut edited = original.clone();
            edited.insert_str(at, blank);
            std::fs::write(&path, edited).expect("write");
            let broken = verify(&path).expect("io").expect_err("inserted");
            assert_eq!(broken.line, 2, "{blank:?}: {broken}");
        }
        // A crash mid-append (or an append under way): the chain is the whole lines before it.
        let torn = format!("{original}{{\"seq\":4,\"ts\":\"2026");
        std::fs::write(&path, &torn).expect("write");
        let intact = verify(&path).expect("io").expect("intact");
        assert_eq!(intact.records, 3);
        assert_eq!(intact.unfinished, Some(torn.len() - original.len()));
        std::fs::write(&path, &original).expect("write");
        assert_eq!(verify(&path).expect("io").expect("intact").unfinished, None);
    }

    #[test]
    fn sequence_numbers_at_the_top_of_the_range_are_a_break_not_a_panic() {
        let (_dir, path) = log_with(2);
        recompute(&path, |r| {
            if r.seq == 1 {
                r.seq = u64::MAX;
            }
        });
        let text = std::fs::read_to_string(&path).expect("read");
        let first = text.lines().next().expect("a line");
        std::fs::write(&path, format!("{first}\n")).expect("write");
        let broken = verify(&path).expect("io").expect_err("broken");
        assert_eq!(broken.seq, Some(u64::MAX), "{broken}");
    }

    /// What someone with write access but without the host's key can do: change a record and
    /// recompute every hash from it on.
    fn recompute(path: &std::path::Path, mut edit: impl FnMut(&mut Record)) {
        let text = std::fs::read_to_string(path).expect("read");
        let mut prev = GENESIS.to_string();
        let mut out = String::new();
        for line in text.lines() {
            let mut r: Record = serde_json::from_str(line).expect("record");
            edit(&mut r);
            r.prev = prev.clone();
            if r.kind == "checkpoint" {
                // The head it names can be rewritten; its signature cannot be remade.
                r.data["head"] = json!(prev);
            }
            r.hash = r.compute_hash();
            prev = r.hash.clone();
            out.push_str(&serde_json::to_string(&r).expect("json"));
            out.push('\n');
        }
        std::fs::write(path, out).expect("write");
    }

    #[test]
    fn a_chain_stripped_of_its_checkpoints_and_recomputed_is_caught() {
        use super::super::checkpoint::{Checkpointer, load_or_create_key};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit/audit.jsonl");
        let key = load_or_create_key(&dir.path().join("keys/audit.key")).expect("key");
        let log = AuditLog::open(&path, Redactor::default()).expect("open");
        log.append(
            "host",
            None,
            "audit-checkpoints-on",
            json!({ "every_records": 4 }),
        )
        .expect("append");
        assert!(log.enable_checkpoints(Checkpointer::new(
            key,
            dir.path().join("keys/audit.head.json"),
            4,
            std::time::Duration::from_secs(3600)
        )));
        for i in 0..100 {
            log.append("kafka", None, "step", json!({ "i": i }))
                .expect("append");
        }
        drop(log);
        assert!(verify(&path).expect("io").is_ok());
        // Without the key no checkpoint can be remade: the editor drops them all and
        // recomputes the chain, which then holds link by link.
        let text = std::fs::read_to_string(&path).expect("read");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("\"kind\":\"checkpoint\""))
            .collect();
        std::fs::write(&path, kept.join("\n") + "\n").expect("strip");
        let mut seq = 0;
        recompute(&path, |r| {
            seq += 1;
            r.seq = seq;
        });
        let broken = verify(&path).expect("io").expect_err("caught");
        assert!(
            broken.problem.contains("checkpoints were removed"),
            "{broken}"
        );
    }

    #[test]
    fn checkpoints_catch_a_recomputed_chain_and_a_cut_tail() {
        use super::super::checkpoint::{Checkpointer, load_or_create_key};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit/audit.jsonl");
        let keys = dir.path().join("keys");
        let key = load_or_create_key(&keys.join("audit.key")).expect("key");
        let public = key.public("host");
        let log = AuditLog::open(&path, Redactor::default()).expect("open");
        let head_file = keys.join("audit.head.json");
        assert!(log.enable_checkpoints(Checkpointer::new(
            key,
            head_file.clone(),
            4,
            std::time::Duration::from_secs(3600)
        )));
        for i in 0..10 {
            log.append("kafka", None, "step", json!({ "i": i }))
                .expect("append");
        }
        log.checkpoint_now().expect("checkpoint");
        drop(log);
        let head = Checkpoint::read(&head_file).expect("head");
        let options = Options {
            keys: vec![public],
            head: Some(head.clone()),
        };
        let intact = verify_with(&path, &options).expect("io").expect("intact");
        assert_eq!(intact.checkpoints, 3, "every 4 records, and at the end");
        assert_eq!(intact.last_checkpoint.as_ref(), Some(&head));
        assert!(intact.signatures_checked && intact.head_checked);

        // An edited record, every hash after it recomputed: the chain alone still holds...
        let original = std::fs::read(&path).expect("read");
        recompute(&path, |r| {
            if r.seq == 2 {
                r.data = json!({ "i": 99 });
            }
        });
        assert!(verify(&path).expect("io").is_ok());
        // ...but not its signed checkpoints.
        let broken = verify_with(&path, &options)
            .expect("io")
            .expect_err("caught");
        assert!(
            broken.problem.contains("not signed by the given key"),
            "{broken}"
        );

        // Records cut from the end: the chain holds, the head beside the key says otherwise.
        std::fs::write(&path, &original).expect("restore");
        let text = String::from_utf8(original).expect("utf-8");
        let kept: Vec<&str> = text.lines().take(9).collect();
        std::fs::write(&path, kept.join("\n") + "\n").expect("cut");
        assert!(verify(&path).expect("io").is_ok());
        let broken = verify_with(&path, &options)
            .expect("io")
            .expect_err("caught");
        assert!(broken.problem.contains("cut from the end"), "{broken}");

        // The whole log replaced by one that starts after the checkpointed record, its first
        // record claiming retention removed everything before it: the chain holds, and so does
        // that claim, but the record the host checkpointed is nowhere.
        let last: Record =
            serde_json::from_str(text.lines().last().expect("a record")).expect("record");
        let start = last.seq + 1;
        let claim = Record {
            seq: start,
            ts: last.ts.clone(),
            agent: "host".into(),
            incident: None,
            kind: REMOVED_KIND.into(),
            data: json!({ "segments": [ { "first_seq": 1, "last_seq": last.seq, "last_hash": last.hash, "bytes": 1 } ] }),
            mode: None,
            prev: last.hash.clone(),
            hash: String::new(),
        };
        let mut claim = claim;
        claim.hash = claim.compute_hash();
        std::fs::write(&path, serde_json::to_string(&claim).expect("json") + "\n")
            .expect("replace");
        assert!(
            verify(&path).expect("io").is_ok(),
            "the claim alone vouches"
        );
        let broken = verify_with(&path, &options)
            .expect("io")
            .expect_err("caught");
        assert!(broken.problem.contains("the log was replaced"), "{broken}");
    }

    #[test]
    fn a_removed_record_is_caught() {
        let (_dir, path) = log_with(3);
        let text = std::fs::read_to_string(&path).expect("read");
        let kept: Vec<&str> = text
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| l)
            .collect();
        std::fs::write(&path, kept.join("\n") + "\n").expect("write");
        let broken = verify(&path).expect("io").expect_err("detected");
        assert_eq!((broken.line, broken.seq), (2, Some(3)));
    }
}
