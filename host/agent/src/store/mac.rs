//! The host key that authenticates state files: a random 32-byte key in the state directory,
//! readable by its owner only. A state file whose MAC does not verify under it was written by
//! someone else, and the host refuses to act on it.

use super::StoreError;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub struct HostKey([u8; 32]);

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostKey(..)")
    }
}

impl HostKey {
    /// Load `path`, or create it (0600) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<HostKey, StoreError> {
        let io = |e: std::io::Error| StoreError::Key(format!("{}: {e}", path.display()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut file) => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).map_err(|e| StoreError::Key(e.to_string()))?;
                file.write_all(&hex::encode(key).into_bytes()).map_err(io)?;
                file.sync_all().map_err(io)?;
                Ok(HostKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let meta = std::fs::metadata(path).map_err(io)?;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(StoreError::Key(format!(
                        "{}: the host key is readable or writable by others (mode {mode:o}); anyone who can read it can forge state. Run `chmod 600 {}`",
                        path.display(),
                        path.display()
                    )));
                }
                let text = themis_core::files::read_text(path, 1024)
                    .map_err(|e| StoreError::Key(format!("{}: {e}", path.display())))?;
                let bytes = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        StoreError::Key(format!("{}: not a host key", path.display()))
                    })?;
                Ok(HostKey(bytes))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // A 32-byte key is always a valid HMAC key.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!())
    }

    pub fn tag(&self, bytes: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(bytes);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Constant-time check of a tag.
    pub fn verify(&self, bytes: &[u8], tag: &str) -> bool {
        let Ok(tag) = hex::decode(tag) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(bytes);
        mac.verify_slice(&tag).is_ok()
    }
}
