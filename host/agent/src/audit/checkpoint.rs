//! Signed checkpoints: a hash chain proves order, not completeness — a cut tail, or a chain
//! recomputed from an edited record on, still verifies. So every N records or T seconds (and at
//! shutdown) the host signs the chain's head with its own Ed25519 key, kept outside the audit's
//! folder, records the signature on the chain (`checkpoint`), and writes the newest checkpoint
//! next to the key. `themis audit verify --key host.pub --head FILE` then knows how far the
//! chain reached and that nobody without the key rewrote it.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use themis_core::trust::keys::{PublicKey, SecretKey};

/// What a checkpoint's signature covers, prefixed so it can never pass for another statement.
pub fn statement(seq: u64, head: &str) -> Vec<u8> {
    format!("themis-audit-checkpoint-v1\n{seq}\n{head}\n").into_bytes()
}

/// A signed chain head: record `seq` has hash `head`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub head: String,
    pub key_id: String,
    /// Hex Ed25519 signature over [`statement`].
    pub signature: String,
    pub at: String,
}

impl Checkpoint {
    pub fn sign(key: &SecretKey, seq: u64, head: &str) -> Checkpoint {
        Checkpoint {
            seq,
            head: head.to_owned(),
            key_id: key.id.to_string(),
            signature: hex::encode(key.sign(&statement(seq, head))),
            at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        }
    }

    /// Does one of `keys` (matched by id) sign this head?
    pub fn verifies_with(&self, keys: &[PublicKey]) -> bool {
        let Ok(signature) = hex::decode(&self.signature) else {
            return false;
        };
        keys.iter()
            .filter(|k| k.id.as_str() == self.key_id)
            .any(|k| k.verify(&statement(self.seq, &self.head), &signature))
    }

    /// The newest checkpoint as the host left it next to its key.
    pub fn read(path: &Path) -> Result<Checkpoint, String> {
        let text = themis_core::files::read_text(path, 4096)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a checkpoint ({e})", path.display()))
    }
}

/// When to checkpoint and with what.
pub struct Checkpointer {
    key: SecretKey,
    every_records: u64,
    every: Duration,
    /// Where the newest checkpoint is mirrored (outside the audit's folder, beside the key).
    head_file: PathBuf,
    last: Mutex<Last>,
}

struct Last {
    seq: u64,
    at: Instant,
}

pub const DEFAULT_EVERY_RECORDS: u64 = 1000;
pub const DEFAULT_EVERY: Duration = Duration::from_secs(60);

impl Checkpointer {
    pub fn new(key: SecretKey, head_file: PathBuf, every_records: u64, every: Duration) -> Self {
        Checkpointer {
            key,
            every_records: every_records.max(1),
            every,
            head_file,
            last: Mutex::new(Last {
                seq: 0,
                at: Instant::now(),
            }),
        }
    }

    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    pub fn head_file(&self) -> &Path {
        &self.head_file
    }

    /// Is a checkpoint due now that the chain reached `seq`? Claims it if so, so concurrent
    /// appenders make one.
    pub(super) fn due(&self, seq: u64, force: bool) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if seq <= last.seq {
            return false;
        }
        if force || seq - last.seq >= self.every_records || last.at.elapsed() >= self.every {
            last.seq = seq;
            last.at = Instant::now();
            return true;
        }
        false
    }

    /// The checkpoint went on the chain as record `seq`: count from there.
    pub(super) fn wrote(&self, seq: u64) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.seq = last.seq.max(seq);
    }

    /// The checkpoint's record was written: mirror it beside the key (atomically, durably).
    pub(super) fn mirror(&self, checkpoint: &Checkpoint) -> std::io::Result<()> {
        let dir = self
            .head_file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(
            serde_json::to_string_pretty(checkpoint)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.head_file).map_err(|e| e.error)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Before a host signs anything on a log, the log must still reach the newest checkpoint it
/// left beside its key: the exact record that checkpoint signs. Otherwise records were cut from
/// the end (or the log replaced or rewritten) while the host was down, and the next checkpoint
/// would sign over the evidence. No head file yet: nothing to reach. The head's own signature
/// must be this key's.
pub fn reaches_head(
    audit: &super::AuditLog,
    key: &SecretKey,
    head_file: &Path,
) -> Result<Option<Checkpoint>, String> {
    if !head_file.exists() {
        return Ok(None);
    }
    let head = Checkpoint::read(head_file)?;
    let fix = format!(
        "`themis audit verify {} --key <key>.pub --head {}` names the break; once a human has looked, move the head file aside to start anyway",
        audit.path().display(),
        head_file.display()
    );
    if !head.verifies_with(&[key.public("host")]) {
        return Err(format!(
            "{} is not signed by the audit signing key: it was forged, or belongs to another host or key; {fix}",
            head_file.display()
        ));
    }
    let signed = super::RecordRef {
        seq: head.seq,
        hash: head.head.clone(),
    };
    match audit.record(&signed) {
        Ok(_) => Ok(Some(head)),
        Err(e) => Err(format!(
            "the audit log {} does not reach the newest checkpoint the host left at {} (record {} signed at {}): {e}; records were cut from its end, or it was replaced or rewritten; {fix}",
            audit.path().display(),
            head_file.display(),
            signed.seq,
            head.at
        )),
    }
}

/// The host's audit signing key at `path`, created (0600, with its `.pub` beside it) on first
/// use. A key others can read is refused.
pub fn load_or_create_key(path: &Path) -> Result<SecretKey, String> {
    if path.exists() {
        return SecretKey::read(path).map_err(|e| e.to_string());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let stem = path.with_extension("");
    let key = SecretKey::generate().map_err(|e| e.to_string())?;
    let (secret, _public) = key.write_pair(&stem).map_err(|e| e.to_string())?;
    if secret != path {
        return Err(format!(
            "{}: the audit signing key's file name must end in .key (it was written to {})",
            path.display(),
            secret.display()
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_only_for_its_head_and_key() {
        let key = SecretKey::generate().expect("key");
        let other = SecretKey::generate().expect("key");
        let cp = Checkpoint::sign(&key, 7, "abc");
        assert!(cp.verifies_with(&[key.public("host")]));
        assert!(!cp.verifies_with(&[other.public("host")]));
        let moved = Checkpoint {
            seq: 8,
            ..cp.clone()
        };
        assert!(!moved.verifies_with(&[key.public("host")]));
        let recomputed = Checkpoint {
            head: "abd".into(),
            ..cp
        };
        assert!(!recomputed.verifies_with(&[key.public("host")]));
    }

    #[test]
    fn due_every_n_records_once() {
        let key = SecretKey::generate().expect("key");
        let c = Checkpointer::new(
            key,
            PathBuf::from("head.json"),
            3,
            Duration::from_secs(3600),
        );
        assert!(!c.due(1, false) && !c.due(2, false));
        assert!(c.due(3, false));
        assert!(!c.due(3, false), "claimed once");
        assert!(!c.due(5, false));
        assert!(c.due(6, false));
        assert!(c.due(7, true), "forced at shutdown");
        assert!(!c.due(7, true), "nothing new since");
    }
}
