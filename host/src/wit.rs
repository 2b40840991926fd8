//! Host bindings generated from `wit/`. The `runbook-host` world is the union of the domain
//! worlds; it gives one set of Rust types and `Host` traits. Which of them a component may
//! actually link is decided per domain by [`crate::sandbox`].

#![allow(missing_docs, clippy::all)]

wasmtime::component::bindgen!({
    world: "runbook-host",
    path: "../wit",
    imports: { default: async },
    exports: { default: async },
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
});

pub use self::exports::themis::runbook::step as step_export;
pub use self::themis::runbook::{k8s, kafka, log, metrics, postgres, types};
