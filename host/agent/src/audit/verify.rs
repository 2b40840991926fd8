//! `themis audit verify`: walk the chain and name the first record that does not hold.

use super::{GENESIS, Record};
use std::io::{BufRead, BufReader};
use std::path::Path;

/// The first break in a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct Break {
    pub line: usize,
    /// The record's `seq` when the line still parses.
    pub seq: Option<u64>,
    pub problem: String,
}

/// A chain that holds: how many records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intact {
    pub records: u64,
    pub last_hash: String,
}

/// `Ok(Ok(..))` intact, `Ok(Err(..))` broken, `Err` unreadable file.
pub fn verify(path: &Path) -> std::io::Result<Result<Intact, Break>> {
    let reader = BufReader::new(std::fs::File::open(path)?);
    let mut prev = GENESIS.to_string();
    let mut expected_seq = 1u64;
    for (i, line) in reader.split(b'\n').enumerate() {
        let line_no = i + 1;
        let bytes = line?;
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return Ok(Err(Break {
                line: line_no,
                seq: None,
                problem: "not UTF-8: the record was altered".into(),
            }));
        };
        if text.trim().is_empty() {
            continue;
        }
        let record: Record = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                return Ok(Err(Break {
                    line: line_no,
                    seq: None,
                    problem: format!("not a valid record ({e}): the record was altered"),
                }));
            }
        };
        let fail = |problem: String| {
            Ok(Err(Break {
                line: line_no,
                seq: Some(record.seq),
                problem,
            }))
        };
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
        prev = record.hash;
        expected_seq += 1;
    }
    Ok(Ok(Intact {
        records: expected_seq - 1,
        last_hash: prev,
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
