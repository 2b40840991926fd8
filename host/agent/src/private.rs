//! Files and folders only the host's own user can read: the audit and the state say which
//! sessions were killed, which plans were approved and by whom, and the state carries MACs a
//! reader could use to test guesses. Created owner-only whatever the process' umask; files that
//! already exist keep the mode their operator gave them.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// `create_dir_all`, new folders `0700`.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Options that create a file `0600`.
pub fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(0o600);
    options
}

/// `File::create`, a new file `0600`.
pub fn create(path: &Path) -> std::io::Result<File> {
    options().write(true).create(true).truncate(true).open(path)
}
