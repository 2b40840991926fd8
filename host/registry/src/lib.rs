//! Runbook bundles as OCI artifacts: `themis runbook push|pull` and the agents' catalog entries
//! that name a bundle by `oci://…@sha256:…`.
//!
//! A bundle travels as one OCI image manifest of its own artifact type
//! ([`artifact::ARTIFACT_TYPE`]): a small JSON config (id, version, domain, signer), then one layer
//! per file — `manifest.yaml`, every step component (`application/wasm`, as the Wasm-in-OCI
//! conventions name a component) and `runbook.sig` — each titled with its path in the bundle
//! (`org.opencontainers.image.title`, the ORAS convention).
//!
//! Nothing pulled is trusted for what the registry says: every blob is checked against its
//! digest, a pinned manifest against its pin, every path against the bundle's layout, and then
//! the unpacked folder goes through the very checks a local bundle does (signature by a trusted
//! key, the signed digests, minimum versions) before it is moved into place — so a refused or
//! interrupted pull leaves nothing behind.

pub mod artifact;
pub mod auth;
pub mod cache;
pub mod client;
pub mod reference;
mod session;

pub use cache::{CatalogFetch, FetchError, fetch_pinned};
pub use client::{PullError, Pulled, PushError, Pushed, pull, push};
pub use reference::{BundleRef, RefError};
