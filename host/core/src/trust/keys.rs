//! Publisher keys: Ed25519 key pairs in one-line text files a human can read and diff.
//!
//! ```text
//! <name>.key   # mode 0600
//! themis-secret-key-v1 <key-id> <64 hex: the 32-byte seed>
//!
//! <name>.pub
//! themis-public-key-v1 <key-id> <64 hex: the 32-byte public key> <name>
//! ```
//!
//! Lines starting with `#` are comments. The key id is the first 16 hex digits of
//! `sha256("themis-key-id-v1\n" || public key)`: short enough to read aloud, derived so a file
//! cannot claim another key's id.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The ids of the committed demo keys (`keys/demo/`): their private halves are public, so
/// trusting one is flagged on every start.
pub const DEMO_KEY_IDS: &[&str] = &[
    "b7466ab0e3dab93b", // demo-kafka-team
    "56f880034457e373", // demo-kubernetes-team
    "d18d01cfeaf56101", // demo-postgres-team
    "15cb08d4c3d8dd35", // demo-test-fixtures
];

pub const SECRET_KEY_TAG: &str = "themis-secret-key-v1";
pub const PUBLIC_KEY_TAG: &str = "themis-public-key-v1";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
    #[error("no secure random source: {0}")]
    Random(String),
}

fn file_error(path: &Path, problem: impl Into<String>) -> KeyError {
    KeyError::File {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// The short, derived name of a public key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    fn of(key: &VerifyingKey) -> KeyId {
        let mut h = Sha256::new();
        h.update(b"themis-key-id-v1\n");
        h.update(key.as_bytes());
        KeyId(hex::encode(h.finalize())[..16].to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A publisher's public key, as an agent trusts it.
#[derive(Debug, Clone)]
pub struct PublicKey {
    pub id: KeyId,
    pub name: String,
    key: VerifyingKey,
}

impl PublicKey {
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let line = key_line(text)?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [tag, id, hex_key, rest @ ..] = fields.as_slice() else {
            return Err(format!(
                "expected `{PUBLIC_KEY_TAG} <key-id> <hex key> [name]`"
            ));
        };
        if *tag != PUBLIC_KEY_TAG {
            return Err(format!(
                "not a Themis public key (starts with `{tag}`, expected `{PUBLIC_KEY_TAG}`)"
            ));
        }
        let bytes = decode32(hex_key)?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|e| format!("not an Ed25519 public key: {e}"))?;
        let derived = KeyId::of(&key);
        if derived.as_str() != *id {
            return Err(format!(
                "the key id `{id}` does not belong to this key (its id is {derived})"
            ));
        }
        Ok(PublicKey {
            id: derived,
            name: rest.join(" "),
            key,
        })
    }

    pub fn read(path: &Path) -> Result<PublicKey, KeyError> {
        let text = crate::files::read_text(path, crate::files::limits::KEY)
            .map_err(|e| file_error(path, e.to_string()))?;
        PublicKey::parse(&text).map_err(|p| file_error(path, p))
    }

    pub fn to_text(&self) -> String {
        format!(
            "# Themis runbook publisher key{}. Agents that trust it list this file under `trust.keys`.\n{PUBLIC_KEY_TAG} {} {} {}\n",
            if self.name.is_empty() {
                String::new()
            } else {
                format!(" `{}`", self.name)
            },
            self.id,
            hex::encode(self.key.as_bytes()),
            self.name
        )
    }

    /// Strict verification: refuses the malleable and small-order forms plain `verify` accepts.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = Signature::from_slice(signature) else {
            return false;
        };
        self.key.verify_strict(message, &sig).is_ok() && self.key.verify(message, &sig).is_ok()
    }
}

/// A publisher's private key. Its `Debug` shows the key id only, so it cannot end up in a log.
pub struct SecretKey {
    pub id: KeyId,
    key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SecretKey::from_seed(&seed))
    }

    fn from_seed(seed: &[u8; 32]) -> SecretKey {
        let key = SigningKey::from_bytes(seed);
        SecretKey {
            id: KeyId::of(&key.verifying_key()),
            key,
        }
    }

    pub fn public(&self, name: &str) -> PublicKey {
        PublicKey {
            id: self.id.clone(),
            name: name.to_owned(),
            key: self.key.verifying_key(),
        }
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.key.sign(message).to_bytes().to_vec()
    }

    /// Read a private key, refusing one that others can read (as ssh does): a signing key
    /// readable by the group has already leaked.
    pub fn read(path: &Path) -> Result<SecretKey, KeyError> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path)
                .map_err(|e| file_error(path, format!("cannot read: {e}")))?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(file_error(
                    path,
                    format!(
                        "private key is readable by others (mode {mode:o}); run `chmod 600 {}`",
                        path.display()
                    ),
                ));
            }
        }
        let text = crate::files::read_text(path, crate::files::limits::KEY)
            .map_err(|e| file_error(path, e.to_string()))?;
        let problem = |p: String| file_error(path, p);
        let line = key_line(&text).map_err(problem)?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [tag, id, seed] = fields.as_slice() else {
            return Err(problem(format!(
                "expected `{SECRET_KEY_TAG} <key-id> <hex seed>`"
            )));
        };
        if *tag != SECRET_KEY_TAG {
            return Err(problem(format!(
                "not a Themis private key (expected `{SECRET_KEY_TAG}`; is this the .pub file?)"
            )));
        }
        let key = SecretKey::from_seed(&decode32(seed).map_err(problem)?);
        if key.id.as_str() != *id {
            return Err(problem(format!(
                "the key id `{id}` does not match the key (its id is {})",
                key.id
            )));
        }
        Ok(key)
    }

    /// Write `<out>.key` (mode 0600, never overwritten) and `<out>.pub`.
    pub fn write_pair(&self, out: &Path) -> Result<(PathBuf, PathBuf), KeyError> {
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| file_error(out, "give a file name stem, e.g. --out keys/kafka-team"))?;
        let secret_path = out.with_file_name(format!("{name}.key"));
        let public_path = out.with_file_name(format!("{name}.pub"));
        for p in [&secret_path, &public_path] {
            if p.exists() {
                return Err(file_error(
                    p,
                    "already exists; refusing to overwrite a key (choose another --out)",
                ));
            }
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(&secret_path)
            .map_err(|e| file_error(&secret_path, format!("cannot create: {e}")))?;
        let text = format!(
            "# Themis runbook signing key `{name}`. PRIVATE: never commit, log or paste it.\n{SECRET_KEY_TAG} {} {}\n",
            self.id,
            hex::encode(self.key.to_bytes())
        );
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| file_error(&secret_path, format!("cannot write: {e}")))?;
        std::fs::write(&public_path, self.public(&name).to_text())
            .map_err(|e| file_error(&public_path, format!("cannot write: {e}")))?;
        Ok((secret_path, public_path))
    }
}

/// The development override for trusted keys others can write: never set it in production.
pub const ALLOW_INSECURE_KEYS_ENV: &str = "THEMIS_DEV_ALLOW_INSECURE_KEYS";

/// Public keys from a `.pub` file or every `*.pub` in a folder. A key file or folder that
/// others can write is refused (anyone with that access could make the host trust their key),
/// unless `THEMIS_DEV_ALLOW_INSECURE_KEYS=1` is set for development, which is warned about.
pub fn read_public_keys(path: &Path) -> Result<Vec<PublicKey>, KeyError> {
    let meta =
        std::fs::metadata(path).map_err(|e| file_error(path, format!("cannot read: {e}")))?;
    if !meta.is_dir() {
        refuse_insecure(path, path)?;
        return Ok(vec![PublicKey::read(path)?]);
    }
    refuse_insecure(path, &path.join("."))?;
    let entries =
        std::fs::read_dir(path).map_err(|e| file_error(path, format!("cannot list: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pub"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(file_error(path, "holds no *.pub public keys"));
    }
    files
        .iter()
        .map(|f| {
            refuse_insecure(f, f)?;
            PublicKey::read(f)
        })
        .collect()
}

fn refuse_insecure(named: &Path, checked: &Path) -> Result<(), KeyError> {
    let Some(why) = crate::files::writable_by_others(checked) else {
        return Ok(());
    };
    if std::env::var_os(ALLOW_INSECURE_KEYS_ENV).is_some_and(|v| v == "1") {
        tracing::warn!(path = %named.display(), "trusting a key others can change ({why}) because {ALLOW_INSECURE_KEYS_ENV}=1: development only");
        return Ok(());
    }
    Err(file_error(
        named,
        format!(
            "refusing to trust it: {why}; make it writable by its owner only (chmod go-w), or set {ALLOW_INSECURE_KEYS_ENV}=1 for development"
        ),
    ))
}

fn key_line(text: &str) -> Result<&str, String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let first = lines.next().ok_or("the file holds no key")?;
    if lines.next().is_some() {
        return Err("the file holds more than one key line".into());
    }
    Ok(first)
}

fn decode32(text: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(text).map_err(|e| format!("the key is not hex: {e}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("the key is {} bytes, expected 32", b.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_round_trips_and_binds_its_id() {
        let secret = SecretKey::from_seed(&[7; 32]);
        let public = secret.public("kafka-team");
        let parsed = PublicKey::parse(&public.to_text()).expect("parses");
        assert_eq!(parsed.id, secret.id);
        assert_eq!(parsed.name, "kafka-team");
        let sig = secret.sign(b"hello");
        assert!(parsed.verify(b"hello", &sig));
        assert!(!parsed.verify(b"hellO", &sig));

        let lie = public
            .to_text()
            .replace(secret.id.as_str(), "0000000000000000");
        assert!(
            PublicKey::parse(&lie)
                .unwrap_err()
                .contains("does not belong")
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let secret = SecretKey::from_seed(&[9; 32]);
        let shown = format!("{secret:?}");
        assert!(!shown.contains(&hex::encode([9u8; 32])));
        assert!(!shown.contains(&hex::encode(secret.key.to_bytes())));
        assert!(shown.contains(secret.id.as_str()));
    }
}
