//! Themis: an agentic SRE runbook engine. See `docs/ARCHITECTURE.md` for the map.

pub mod capability;
pub mod caps;
pub mod cli;
pub mod executor;
pub mod grant;
pub mod graph;
pub mod manifest;
pub mod sandbox;
pub mod scenario;
pub mod wit;
pub mod yaml;
