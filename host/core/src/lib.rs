//! Themis' pure core: what a runbook, a grant, a plan, a policy and an agent's state machine are,
//! and the rules over them. See `docs/ARCHITECTURE.md` for the map.
//!
//! Invariants: no wasmtime, no async runtime, no network. The only reads of the file system are
//! the bounded, regular-file-only loaders in [`files`] (used by [`manifest`], [`trust`] and the
//! definition loaders above this crate).

pub mod bounded;
pub mod capability;
pub mod clock;
pub mod conditions;
pub mod files;
pub mod fsm;
pub mod grant;
pub mod graph;
pub mod guard;
pub mod identity;
pub mod label_map;
pub mod loopback;
pub mod manifest;
pub mod matchers;
pub mod policy;
pub mod redact;
pub mod rules;
pub mod trust;
pub mod types;
pub mod verify;
pub mod yaml;

/// `sha256:<hex>` of some bytes: how components, manifests and plans are named.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
