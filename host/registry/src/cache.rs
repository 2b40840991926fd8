//! The local cache of catalog bundles named by OCI reference: pulled once per digest, verified on
//! the way in, and loaded from disk afterwards — so a host restarts with its catalog while the
//! registry is down, and a registry cannot swap what a pinned digest means.

use crate::client::{OCI_MANIFEST_FILE, PullError, check_pulled, pull};
use crate::reference::BundleRef;
use std::path::{Path, PathBuf};
use themis_core::trust::TrustPolicy;

/// Where a catalog entry came from this start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogFetch {
    /// Already in the cache (it is verified again when loaded, like any bundle).
    Cached(PathBuf),
    /// Pulled and verified now.
    Pulled(PathBuf),
    /// The cached copy was not what the pin names (`why`): removed, pulled and verified now.
    Replaced { dir: PathBuf, why: String },
}

impl CatalogFetch {
    pub fn dir(&self) -> &Path {
        match self {
            CatalogFetch::Cached(d)
            | CatalogFetch::Pulled(d)
            | CatalogFetch::Replaced { dir: d, .. } => d,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "catalog entry {0} is not pinned: name it as oci://HOST/REPOSITORY@sha256:DIGEST (`themis runbook push` prints it) so the registry cannot change what runs"
    )]
    NotPinned(String),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(
        "the cached bundle was not what its pin names ({why}) and was removed; pulling it again failed: {pull}"
    )]
    CacheReplaced { why: String, pull: PullError },
}

impl FetchError {
    /// The registry could not be asked: the runbook is unavailable, the host still starts
    /// ([`PullError::leaves_unavailable`]).
    pub fn leaves_unavailable(&self) -> bool {
        match self {
            FetchError::Pull(e) | FetchError::CacheReplaced { pull: e, .. } => {
                e.leaves_unavailable()
            }
            FetchError::NotPinned(_) => false,
        }
    }
}

/// Where the bundle a pinned reference names is kept in `cache` (`None`: not pinned).
pub fn cache_dir(r: &BundleRef, cache: &Path) -> Option<PathBuf> {
    let hex = r.digest()?.trim_start_matches("sha256:");
    Some(cache.join("oci").join(format!("{}-{hex}", r.runbook_id())))
}

/// The folder holding the bundle `r` pins, pulling it into `cache` if it is not there yet.
pub async fn fetch_pinned(
    r: &BundleRef,
    cache: &Path,
    policy: &TrustPolicy,
) -> Result<CatalogFetch, FetchError> {
    let dir = cache_dir(r, cache).ok_or_else(|| FetchError::NotPinned(r.to_string()))?;
    if !dir.is_dir() {
        return match pull(r, &dir, policy).await {
            Ok(_) => Ok(CatalogFetch::Pulled(dir)),
            // Another process sharing the cache put it there first (the pull's own rename
            // found the folder taken): checked against the pin like any cached bundle.
            Err(PullError::DestExists(_) | PullError::Local { .. }) if dir.is_dir() => {
                match check_pulled(r, &dir) {
                    Ok(()) => Ok(CatalogFetch::Cached(dir)),
                    Err(why) => Err(FetchError::CacheReplaced {
                        why,
                        pull: PullError::DestExists(dir.display().to_string()),
                    }),
                }
            }
            Err(e) => Err(e.into()),
        };
    }
    // Whoever can write the cache must not be able to swap what the pin names (an older signed
    // version, another runbook): checked again at every start.
    let why = match check_pulled(r, &dir) {
        Ok(()) => return Ok(CatalogFetch::Cached(dir)),
        Err(why) => why,
    };
    // Pulled by a version that did not keep the registry's manifest: nothing says it differs
    // from the pin, and it is verified against the trust when it loads, like any bundle.
    let legacy = !dir.join(OCI_MANIFEST_FILE).exists();
    tracing::warn!(reference = %r, dir = %dir.display(), %why, "a cached bundle cannot be shown to be what its pin names; it is pulled again");
    // The replacement is pulled beside it first: the cached copy goes only once it is in hand
    // (or is known not to be what the pin names), and a process sharing the cache never finds
    // the folder half-gone.
    let fresh = sibling(&dir, "new");
    match pull(r, &fresh, policy).await {
        Ok(_) => {
            swap_in(&fresh, &dir)?;
            Ok(CatalogFetch::Replaced { dir, why })
        }
        Err(e) if legacy && e.is_unreachable() => {
            tracing::warn!(reference = %r, dir = %dir.display(), "the registry cannot be reached: the cached bundle, pulled before its registry manifest was kept, is used as it is");
            Ok(CatalogFetch::Cached(dir))
        }
        Err(pull) => {
            set_aside(&dir)?;
            Err(FetchError::CacheReplaced { why, pull })
        }
    }
}

/// A fresh name next to `dir` for a folder on its way in or out.
fn sibling(dir: &Path, what: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unique = format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    dir.with_file_name(format!(
        "{}{what}-{name}-{unique}",
        crate::client::REPLACING_PREFIX
    ))
}

/// Move `dir` out of the way and remove it; one another process moved first is gone already.
fn set_aside(dir: &Path) -> Result<(), PullError> {
    let stale = sibling(dir, "stale");
    match std::fs::rename(dir, &stale) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(PullError::Local {
                dir: dir.display().to_string(),
                why: format!(
                    "the cached bundle is not what its pin names and cannot be moved away: {e}"
                ),
            });
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&stale) {
        tracing::warn!(dir = %stale.display(), error = %e, "a replaced cached bundle could not be removed");
    }
    Ok(())
}

/// Put the verified `fresh` pull where `dir` was.
fn swap_in(fresh: &Path, dir: &Path) -> Result<(), PullError> {
    set_aside(dir)?;
    match std::fs::rename(fresh, dir) {
        Ok(()) => Ok(()),
        // Another process put its own verified pull there meanwhile: ours is not needed.
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(fresh);
            Ok(())
        }
        Err(e) => Err(PullError::Local {
            dir: dir.display().to_string(),
            why: format!("the pulled bundle cannot be put in place: {e}"),
        }),
    }
}
