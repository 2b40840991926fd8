//! Themis' test kit: everything that stands in for the real world, kept out of the production
//! crates. Scenario files (`tests/scenarios/*.yaml`) and their mocks, the backend provider that
//! serves a scenario's world to the agents, the recorder that watches a runtime, and the triage
//! eval. Only `themis run | eval | demo | alert` and the tests use it.

pub mod eval;
pub mod mock;
pub mod postgres;
pub mod provider;
pub mod scenario;
pub mod scenario_agent;
pub mod services;
