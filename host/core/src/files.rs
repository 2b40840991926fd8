//! Bounded reads of the files the host is handed (manifests, components, signatures, keys, agent
//! and scenario files): regular files only — a FIFO or a device is refused without blocking —
//! and never more than a stated size, checked from the open handle's metadata before reading and
//! again while reading (a file that grows meanwhile is still cut off).

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use std::io::Read;
use std::path::Path;

/// Size limits of what the host reads, by kind of file.
pub mod limits {
    /// `manifest.yaml`.
    pub const MANIFEST: u64 = 1 << 20;
    /// One step component (`.wasm`).
    pub const COMPONENT: u64 = 32 << 20;
    /// `runbook.sig`.
    pub const SIGNATURE: u64 = 64 << 10;
    /// A public or private key file.
    pub const KEY: u64 = 16 << 10;
    /// An agent definition, a scenario file, a host configuration.
    pub const DEFINITION: u64 = 4 << 20;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("no such file")]
    NotFound,
    #[error("cannot open: {0}")]
    Open(String),
    #[error("not a regular file ({0}): refusing to read it")]
    NotRegular(&'static str),
    #[error("{size} bytes is more than the {limit} bytes allowed for this kind of file")]
    TooLarge { size: u64, limit: u64 },
    #[error("cannot read: {0}")]
    Read(String),
}

/// Read `path` inside `dir` (cap-std: it cannot leave the folder), at most `limit` bytes.
pub fn read_in(dir: &Dir, path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let mut options = OpenOptions::new();
    options.read(true);
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    options.custom_flags(nonblock());
    let file = dir.open_with(path, &options).map_err(open_error)?;
    let meta = file
        .metadata()
        .map_err(|e| FileError::Read(e.to_string()))?;
    check_kind(&meta.file_type())?;
    read_limited(file.into_std(), meta.len(), limit)
}

/// Read a file named by an ordinary path, at most `limit` bytes.
pub fn read(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nonblock())
        .open(path)
        .map_err(open_error)?;
    let meta = file
        .metadata()
        .map_err(|e| FileError::Read(e.to_string()))?;
    check_kind(&meta.file_type())?;
    read_limited(file, meta.len(), limit)
}

/// [`read`] as UTF-8 text.
pub fn read_text(path: &Path, limit: u64) -> Result<String, FileError> {
    String::from_utf8(read(path, limit)?)
        .map_err(|e| FileError::Read(format!("not UTF-8 text: {e}")))
}

fn open_error(e: std::io::Error) -> FileError {
    if e.kind() == std::io::ErrorKind::NotFound {
        FileError::NotFound
    } else {
        FileError::Open(e.to_string())
    }
}

/// Is this file, or the folder it is in, writable by someone other than its owner? Then anyone
/// with that access could replace what the host trusts. (A sticky folder such as /tmp protects
/// files from other users, so only its non-sticky form counts.)
pub fn writable_by_others(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).ok().map(|m| m.permissions().mode());
    if let Some(m) = mode(path)
        && m & 0o022 != 0
    {
        return Some(format!(
            "{} is writable by others (mode {:o})",
            path.display(),
            m & 0o777
        ));
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Some(m) = mode(parent)
        && m & 0o022 != 0
        && m & 0o1000 == 0
    {
        return Some(format!(
            "its folder {} is writable by others (mode {:o})",
            parent.display(),
            m & 0o777
        ));
    }
    None
}

fn nonblock() -> i32 {
    rustix::fs::OFlags::NONBLOCK.bits() as i32
}

fn check_kind(kind: &impl FileTypeLike) -> Result<(), FileError> {
    if kind.regular() {
        Ok(())
    } else if kind.dir() {
        Err(FileError::NotRegular("a folder"))
    } else {
        Err(FileError::NotRegular("a FIFO, socket or device"))
    }
}

trait FileTypeLike {
    fn regular(&self) -> bool;
    fn dir(&self) -> bool;
}

impl FileTypeLike for std::fs::FileType {
    fn regular(&self) -> bool {
        self.is_file()
    }
    fn dir(&self) -> bool {
        self.is_dir()
    }
}

impl FileTypeLike for cap_std::fs::FileType {
    fn regular(&self) -> bool {
        self.is_file()
    }
    fn dir(&self) -> bool {
        self.is_dir()
    }
}

fn read_limited(file: std::fs::File, size: u64, limit: u64) -> Result<Vec<u8>, FileError> {
    if size > limit {
        return Err(FileError::TooLarge { size, limit });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FileError::Read(e.to_string()))?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_are_refused_without_blocking_and_sizes_are_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("runbook.sig");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .expect("mkfifo");
        assert_eq!(
            read(&fifo, 1024),
            Err(FileError::NotRegular("a FIFO, socket or device"))
        );
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 2048]).expect("write");
        assert_eq!(
            read(&big, 1024),
            Err(FileError::TooLarge {
                size: 2048,
                limit: 1024
            })
        );
        let root = Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority()).expect("dir");
        assert!(matches!(
            read_in(&root, Path::new("runbook.sig"), 1024),
            Err(FileError::NotRegular(_))
        ));
        assert_eq!(
            read_in(&root, Path::new("big"), 4096).map(|b| b.len()),
            Ok(2048)
        );
    }
}
