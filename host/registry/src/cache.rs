//! The local cache of catalog bundles named by OCI reference: pulled once per digest, verified on
//! the way in, and loaded from disk afterwards — so a host restarts with its catalog while the
//! registry is down, and a registry cannot swap what a pinned digest means.

use crate::client::{PullError, pull};
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
}

impl CatalogFetch {
    pub fn dir(&self) -> &Path {
        match self {
            CatalogFetch::Cached(d) | CatalogFetch::Pulled(d) => d,
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
    if dir.is_dir() {
        return Ok(CatalogFetch::Cached(dir));
    }
    match pull(r, &dir, policy).await {
        Ok(_) => Ok(CatalogFetch::Pulled(dir)),
        // Another process sharing the cache put it there first (the pull's own rename found the
        // folder taken): it is loaded and verified like any cached bundle.
        Err(PullError::DestExists(_) | PullError::Local { .. }) if dir.is_dir() => {
            Ok(CatalogFetch::Cached(dir))
        }
        Err(e) => Err(e.into()),
    }
}
