//! Host bindings generated from `wit/`. The `runbook-host` world is the union of the domain
//! worlds; it gives one set of Rust types and `Host` traits. Which of them a component may
//! actually link is decided per domain by the sandbox. These types never leave this crate:
//! `convert` turns them into the plain types of `themis-core` and `themis-caps`.
//!
//! Imports are `trappable`: a host function can end the guest (a phase over its call budget)
//! instead of answering it.

#![allow(missing_docs, clippy::all)]

wasmtime::component::bindgen!({
    world: "runbook-host",
    path: "../../wit",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::themis::runbook::{k8s, kafka, log, metrics, postgres, types};
