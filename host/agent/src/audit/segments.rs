//! The audit's files: the active one (`audit.jsonl`, the path the host is configured with) and
//! the sealed segments before it (`audit.segments/<first seq, 20 digits>.jsonl`). A segment is
//! what the active file was when it reached its size: the chain runs on from one file into the
//! next (the first record of a file links to the last of the one before), so the files read in
//! order are one chain.
//!
//! Sealing never leaves a moment without an active file: the active file is hard-linked into
//! the segments folder, then a new empty file is renamed over it. A crash between the two leaves
//! the same file under both names, which the next open sees (same inode) and finishes.
//!
//! Removing segments (retention) takes the oldest first and is announced on the chain before a
//! file goes: the record names each removed segment's last sequence number and hash, so
//! `themis audit verify` can tell a chain that starts where retention left it from one whose
//! beginning was cut off by someone else.

use super::GENESIS;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The active file's size past which it is sealed (at the next append).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// The record kind that announces removed segments.
pub const REMOVED_KIND: &str = "audit-segments-removed";

/// The folder of `active`'s sealed segments: `audit.jsonl` → `audit.segments`.
pub fn dir_of(active: &Path) -> PathBuf {
    let stem = active
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audit".into());
    active.with_file_name(format!("{stem}.segments"))
}

/// A segment's file name: its first sequence number, padded so names sort as numbers do.
pub fn name_of(first_seq: u64) -> String {
    format!("{first_seq:020}.jsonl")
}

/// The first seq a segment file's name gives, if the name is a segment's.
pub(super) fn first_seq_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".jsonl")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// One sealed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub first_seq: u64,
    pub path: PathBuf,
    pub bytes: u64,
}

/// `active`'s sealed segments, oldest first (none when the folder does not exist). Files in the
/// folder that are not named as segments are not the log's and are left alone. A newest
/// segment that is the active file itself (a seal between its link and its rename, or one a
/// crash or an error cut off there) is not a segment yet, and is left out.
pub fn sealed(active: &Path) -> std::io::Result<Vec<Segment>> {
    let mut all = listed(active)?;
    if let Some(newest) = all.last()
        && let (Ok(a), Ok(s)) = (std::fs::metadata(active), std::fs::metadata(&newest.path))
        && same_file(&a, &s)
    {
        all.pop();
    }
    Ok(all)
}

/// Every file of the segments folder named as a segment, oldest first.
fn listed(active: &Path) -> std::io::Result<Vec<Segment>> {
    let dir = dir_of(active);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(first_seq) = entry.file_name().to_str().and_then(first_seq_of) else {
            continue;
        };
        let meta = match entry.metadata() {
            Ok(m) => m,
            // Removed since the listing: retention, not a fault.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        out.push(Segment {
            first_seq,
            path: entry.path(),
            bytes: meta.len(),
        });
    }
    out.sort_by_key(|s| s.first_seq);
    Ok(out)
}

/// Every file of the log in chain order, each opened: the sealed segments, then the active
/// file (when it exists). Taken so that a host sealing or removing segments meanwhile cannot
/// make a reader miss or repeat a file: the listing is taken again until it holds still.
pub fn open_all(active: &Path) -> std::io::Result<Vec<(PathBuf, File)>> {
    for _ in 0..10 {
        let before = sealed(active)?;
        let mut files = Vec::with_capacity(before.len() + 1);
        let mut moved = false;
        for s in &before {
            match File::open(&s.path) {
                Ok(f) => files.push((s.path.clone(), f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    moved = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if moved {
            continue;
        }
        match File::open(active) {
            Ok(f) => files.push((active.to_path_buf(), f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let after: Vec<u64> = sealed(active)?.iter().map(|s| s.first_seq).collect();
        let was: Vec<u64> = before.iter().map(|s| s.first_seq).collect();
        // A removal of the oldest meanwhile is harmless (its file is open); a new segment means
        // the file opened as active may be a later one.
        if after.last() == was.last() {
            return Ok(files);
        }
    }
    Err(std::io::Error::other(
        "the audit's segments kept changing while being listed; try again",
    ))
}

/// Whether two open files are the same file.
pub fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// The first whole line of a file parsed as a record's link: its seq and prev (`None`: no whole
/// line).
pub fn first_link(file: &mut File) -> std::io::Result<Option<(u64, String)>> {
    #[derive(serde::Deserialize)]
    struct Link {
        seq: u64,
        prev: String,
    }
    file.seek(SeekFrom::Start(0))?;
    let mut line = Vec::new();
    BufReader::new(file.take(super::MAX_RECORD_BYTES as u64 * 2 + 1))
        .read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Ok(None);
    }
    Ok(serde_json::from_slice::<Link>(&line)
        .ok()
        .map(|l| (l.seq, l.prev)))
}

/// Link the active file (synced by the caller) into the segments folder under its first
/// sequence number: the first step of a seal.
pub(super) fn link(active: &Path, file: &File, first_seq: u64) -> std::io::Result<()> {
    let dir = dir_of(active);
    crate::private::create_dir_all(&dir)?;
    let target = dir.join(name_of(first_seq));
    match std::fs::hard_link(active, &target) {
        Ok(()) => {}
        // Linked by a seal a crash interrupted, and this is the same file: go on.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if !same_file(&std::fs::metadata(&target)?, &file.metadata()?) {
                return Err(std::io::Error::other(format!(
                    "{} exists and is not the active file: a segment named for the same first record is in the way",
                    target.display()
                )));
            }
        }
        Err(e) => return Err(e),
    }
    sync_dir(&dir)
}

/// A new, empty, owner-only file beside `active`, synced and open for reading and appending:
/// the file a seal renames over the active one.
pub(super) fn prepare_next(active: &Path) -> std::io::Result<(PathBuf, File)> {
    let mut name = active
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".next");
    let next = active.with_file_name(name);
    let _ = std::fs::remove_file(&next);
    let file = crate::private::options()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&next)?;
    file.sync_all()?;
    Ok((next, file))
}

/// Make the rename of the active file durable: its folder synced.
pub(super) fn sync_parent(active: &Path) -> std::io::Result<()> {
    match active.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Rename a new, empty file over `active`, durably (finishing a seal at open).
pub(super) fn replace_with_empty(active: &Path) -> std::io::Result<()> {
    let (next, _) = prepare_next(active)?;
    std::fs::rename(&next, active)?;
    sync_parent(active)
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A seal a crash cut off between its link and its rename leaves the active file also named as
/// the newest segment: finish it (the active file becomes a new, empty one).
pub(super) fn finish_interrupted_seal(active: &Path) -> std::io::Result<bool> {
    let Some(newest) = listed(active)?.pop() else {
        return Ok(false);
    };
    let (Ok(a), Ok(s)) = (std::fs::metadata(active), std::fs::metadata(&newest.path)) else {
        return Ok(false);
    };
    if !same_file(&a, &s) {
        return Ok(false);
    }
    replace_with_empty(active)?;
    Ok(true)
}

/// What one removed segment ended with: the link the next file's first record continues.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemovedSegment {
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_hash: String,
    pub bytes: u64,
}

/// For each of the oldest segments, the link after its last record: read from the first record
/// of the file after it (`next_files[i]`: its path and the seq its first record must have).
pub(super) fn links_after(
    oldest: &[Segment],
    next_files: &[(PathBuf, u64)],
) -> std::io::Result<Vec<RemovedSegment>> {
    oldest
        .iter()
        .zip(next_files)
        .map(|(s, (next, next_first))| {
            let (seq, prev) = first_link(&mut File::open(next)?)?.ok_or_else(|| {
                std::io::Error::other(format!(
                    "{}: no whole record to continue from, so {} cannot go yet",
                    next.display(),
                    s.path.display()
                ))
            })?;
            if seq != *next_first || seq <= s.first_seq || prev == GENESIS {
                return Err(std::io::Error::other(format!(
                    "{} does not continue {}: the segments are out of order",
                    next.display(),
                    s.path.display()
                )));
            }
            Ok(RemovedSegment {
                first_seq: s.first_seq,
                last_seq: seq - 1,
                last_hash: prev,
                bytes: s.bytes,
            })
        })
        .collect()
}

/// Whether `path` holds a record of any of `incidents` (a segment retention must keep). Reads
/// each line's `"incident":"…"` field only.
pub fn names_any(
    path: &Path,
    incidents: &std::collections::HashSet<String>,
) -> std::io::Result<bool> {
    if incidents.is_empty() {
        return Ok(false);
    }
    let field = memchr::memmem::Finder::new(b"\"incident\":\"");
    let mut reader = BufReader::new(File::open(path)?);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(false);
        }
        let Some(at) = field.find(&line) else {
            continue;
        };
        let rest = &line[at + field.needle().len()..];
        let Some(end) = memchr::memchr(b'"', rest) else {
            continue;
        };
        if std::str::from_utf8(&rest[..end]).is_ok_and(|id| incidents.contains(id)) {
            return Ok(true);
        }
    }
}

/// How many of the oldest segments retention removes to bring the log within `max_bytes`:
/// oldest first, never one at or after the first that `pinned` keeps.
pub fn due_for_removal(
    segments: &[Segment],
    active_bytes: u64,
    max_bytes: u64,
    mut pinned: impl FnMut(&Segment) -> bool,
) -> usize {
    let mut total: u64 = segments.iter().map(|s| s.bytes).sum::<u64>() + active_bytes;
    let mut n = 0;
    for s in segments {
        if total <= max_bytes || pinned(s) {
            break;
        }
        total -= s.bytes;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(first_seq: u64, bytes: u64) -> Segment {
        Segment {
            first_seq,
            path: PathBuf::from(name_of(first_seq)),
            bytes,
        }
    }

    #[test]
    fn names_sort_as_numbers_and_only_segment_names_are_segments() {
        assert_eq!(name_of(42), "00000000000000000042.jsonl");
        assert!(name_of(9) < name_of(10));
        assert_eq!(first_seq_of(&name_of(7)), Some(7));
        assert_eq!(first_seq_of("7.jsonl"), None);
        assert_eq!(first_seq_of("0000000000000000000x.jsonl"), None);
        assert_eq!(
            dir_of(Path::new("/s/audit.jsonl")),
            Path::new("/s/audit.segments")
        );
    }

    #[test]
    fn retention_removes_the_oldest_until_within_budget_and_stops_at_a_pin() {
        let segs = [seg(1, 10), seg(11, 10), seg(21, 10), seg(31, 10)];
        assert_eq!(due_for_removal(&segs, 5, 100, |_| false), 0);
        assert_eq!(due_for_removal(&segs, 5, 25, |_| false), 2);
        assert_eq!(due_for_removal(&segs, 5, 0, |_| false), 4);
        // A pinned segment keeps itself and everything after it.
        assert_eq!(due_for_removal(&segs, 5, 0, |s| s.first_seq == 21), 2);
        assert_eq!(due_for_removal(&segs, 5, 0, |s| s.first_seq == 1), 0);
    }
}
