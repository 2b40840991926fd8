//! The on-disk cache of compiled components.
//!
//! Deserialising a compiled artifact maps native code into the process without validating it,
//! so an entry is only ever loaded if this host wrote it: each entry carries an HMAC-SHA256 tag
//! under a key that lives in the cache folder with mode 0600 and never leaves the host. The tag
//! covers the entry's name — the component digest and the engine fingerprint — and its bytes, so
//! a planted file, a corrupted one, or a valid entry moved under another component's name fails
//! the check and the component is compiled again (and the entry rewritten).
//!
//! The key only proves authorship if nobody else can write the folder or plant the key: the
//! cache is refused (the host then compiles every start) unless the folder and `host.key` belong
//! to this user and nobody else can write the folder or read the key. A fresh folder is created
//! with mode 0700.
//!
//! The folder is opened once through cap-std; every later access stays inside it.

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

const KEY_FILE: &str = "host.key";
const TAG_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
#[error("compiled-component cache {path}: {problem}")]
pub struct CacheError {
    pub path: PathBuf,
    pub problem: String,
}

/// What a lookup found.
pub enum Lookup {
    Hit(Component),
    Miss,
    /// An entry was there but this host did not write it, or it no longer deserialises.
    Rejected(String),
}

pub struct CompiledCache {
    dir: Dir,
    path: PathBuf,
    key: [u8; 32],
    engine_fingerprint: String,
}

impl CompiledCache {
    pub fn open(path: &Path, engine: &Engine) -> Result<CompiledCache, CacheError> {
        let err = |problem: String| CacheError {
            path: path.to_path_buf(),
            problem,
        };
        create_private_dir(path).map_err(|e| err(format!("cannot create: {e}")))?;
        let dir = Dir::open_ambient_dir(path, ambient_authority())
            .map_err(|e| err(format!("cannot open: {e}")))?;
        check_private(&dir, None).map_err(&err)?;
        let key = host_key(&dir).map_err(&err)?;
        check_private(&dir, Some(KEY_FILE)).map_err(&err)?;
        Ok(CompiledCache {
            dir,
            path: path.to_path_buf(),
            key,
            engine_fingerprint: engine_fingerprint(engine),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entry file name for a component digest under this engine's configuration.
    pub fn entry_name(&self, component_digest: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.engine_fingerprint.as_bytes());
        h.update(b"\n");
        h.update(component_digest.as_bytes());
        format!("{}.cwasm", hex::encode(h.finalize()))
    }

    fn tag(&self, name: &str, bytes: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(name.as_bytes());
        mac.update(b"\n");
        mac.update(bytes);
        mac
    }

    pub fn get(&self, engine: &Engine, component_digest: &str) -> Lookup {
        let name = self.entry_name(component_digest);
        let mut file = match self.dir.open(&name) {
            Ok(f) => f,
            Err(_) => return Lookup::Miss,
        };
        let mut data = Vec::new();
        if let Err(e) = file.read_to_end(&mut data) {
            return Lookup::Rejected(format!("unreadable: {e}"));
        }
        if data.len() < TAG_LEN {
            return Lookup::Rejected("too short to carry a tag".into());
        }
        let (tag, bytes) = data.split_at(TAG_LEN);
        if self.tag(&name, bytes).verify_slice(tag).is_err() {
            return Lookup::Rejected("its tag does not verify: this host did not write it".into());
        }
        // SAFETY: the bytes are exactly what `put` stored from `Component::serialize` on an
        // engine with this fingerprint: the HMAC under the host-only key proves it.
        match unsafe { Component::deserialize(engine, bytes) } {
            Ok(component) => Lookup::Hit(component),
            Err(e) => Lookup::Rejected(format!("does not deserialise: {e}")),
        }
    }

    /// Store a compiled component. Failure to cache is not failure to load: the caller logs it.
    pub fn put(&self, component_digest: &str, component: &Component) -> Result<(), String> {
        let name = self.entry_name(component_digest);
        let bytes = component
            .serialize()
            .map_err(|e| format!("cannot serialise: {e}"))?;
        let tag = self.tag(&name, &bytes).finalize().into_bytes();
        let tmp = format!("{name}.tmp-{}", std::process::id());
        let mut file = self
            .dir
            .create(&tmp)
            .map_err(|e| format!("cannot write {tmp}: {e}"))?;
        file.write_all(&tag)
            .and_then(|()| file.write_all(&bytes))
            .map_err(|e| format!("cannot write {tmp}: {e}"))?;
        drop(file);
        // Rename is atomic: a reader sees the old entry or the new one, never half of one.
        self.dir
            .rename(&tmp, &self.dir, &name)
            .map_err(|e| format!("cannot move {tmp} into place: {e}"))
    }
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

/// The folder (`None`) or a file in it must be this user's, and not writable (folder) or
/// readable (key) by anyone else.
#[cfg(unix)]
fn check_private(dir: &Dir, file: Option<&str>) -> Result<(), String> {
    use cap_std::fs::MetadataExt;
    let (what, meta, forbidden) = match file {
        None => ("the folder", dir.dir_metadata(), 0o022),
        Some(name) => (name, dir.metadata(name), 0o077),
    };
    let meta = meta.map_err(|e| format!("cannot inspect {what}: {e}"))?;
    let me = rustix::process::getuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "{what} belongs to uid {}, not to this user (uid {me}): refusing a cache someone else could have filled",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o777;
    if mode & forbidden != 0 {
        return Err(format!(
            "{what} has mode {mode:o}; others could plant entries or read the key (chmod {} it, or delete the cache folder)",
            if file.is_none() { "700" } else { "600" }
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_dir: &Dir, _file: Option<&str>) -> Result<(), String> {
    Ok(())
}

/// The host's cache key: read it, or create it (0600) on first use. The new key is written to a
/// private temporary file and hard-linked into place, so two hosts starting together agree on
/// one key and neither ever reads a half-written one.
fn host_key(dir: &Dir) -> Result<[u8; 32], String> {
    let read = || -> Result<[u8; 32], String> {
        let bytes = dir
            .read(KEY_FILE)
            .map_err(|e| format!("cannot read {KEY_FILE}: {e}"))?;
        bytes.try_into().map_err(|_| {
            format!("{KEY_FILE} is not a 32-byte key; delete the cache folder to start afresh")
        })
    };
    if dir.exists(KEY_FILE) {
        return read();
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| format!("no secure random source: {e}"))?;
    let tmp = format!(
        "{KEY_FILE}.tmp-{}-{}",
        std::process::id(),
        hex::encode(&key[..4])
    );
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    let written = dir.open_with(&tmp, &options).and_then(|mut file| {
        file.write_all(&key)?;
        file.sync_all()
    });
    let linked = written.and_then(|()| dir.hard_link(&tmp, dir, KEY_FILE));
    let _ = dir.remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(),
        Err(e) => Err(format!("cannot create {KEY_FILE}: {e}")),
    }
}

/// wasmtime's version and everything in the engine's configuration that affects compiled code.
fn engine_fingerprint(engine: &Engine) -> String {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(hasher.0.finalize())
}
