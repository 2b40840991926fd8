//! One writer per state directory and per audit log, across processes: an exclusive lock on a
//! sidecar file, held for as long as the writer lives. A second process waits a little, then is
//! told who holds it (pid, command, since when) instead of forking the audit chain or running a
//! plan twice.

use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// How long a second writer waits by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}: cannot lock: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is held by another themis process ({holder}); waited {waited_ms} ms. Wait for it to finish, or answer through the process that holds it"
    )]
    Held {
        path: PathBuf,
        holder: String,
        waited_ms: u128,
    },
}

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct Held {
    _file: File,
}

/// `<path>.lock`, next to what it guards.
pub fn sidecar(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    path.with_file_name(name)
}

/// Take the exclusive lock on `path`, waiting up to `wait`.
pub fn acquire(path: &Path, wait: Duration) -> Result<Held, LockError> {
    let io = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = crate::private::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if started.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    holder: std::fs::read_to_string(path)
                        .ok()
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "unknown holder".into()),
                    waited_ms: started.elapsed().as_millis(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
    }
    // Who holds it, for the next one who waits (the lock, not this text, is what counts).
    let since = humantime::format_rfc3339_seconds(SystemTime::now());
    let command: Vec<String> = std::env::args().take(3).collect();
    let holder = format!(
        "pid {}, `{}`, since {since}",
        std::process::id(),
        command.join(" ")
    );
    let _ = file
        .set_len(0)
        .and_then(|()| file.write_all(holder.as_bytes()));
    Ok(Held { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_then_is_told_who_holds_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.lock");
        let first = acquire(&path, Duration::ZERO).expect("first");
        let err = acquire(&path, Duration::from_millis(60)).expect_err("held");
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        assert!(acquire(&path, Duration::ZERO).is_ok());
    }
}
