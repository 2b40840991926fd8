//! Themis: an agentic SRE runbook engine. See `docs/ARCHITECTURE.md` for the map.

pub mod agent;
pub mod audit;
pub mod capability;
pub mod caps;
pub mod cli;
pub mod escalation;
pub mod eval;
pub mod executor;
pub mod fsm;
pub mod grant;
pub mod graph;
pub mod manifest;
pub mod policy;
pub mod sandbox;
pub mod scenario;
pub mod scenario_agent;
pub mod triage;
pub mod trust;
pub mod wit;
pub mod yaml;
