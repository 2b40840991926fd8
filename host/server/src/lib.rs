//! `themis serve`: the sidecar. An axum service over the agent runtime — Alertmanager's webhook
//! and Themis' own alert JSON in, approvals over HTTP and Slack, a read API with an event
//! stream, and the operator page at `/` — configured by one `themis.yaml`.
//!
//! Invariants: every request is authenticated before its body is read (except the probes);
//! an accepted alert is on the audit before the response; the service never holds more than
//! its bounds (body size — which bounds the alerts per notification —, queued alerts per agent,
//! buffered events, remembered Slack requests, page sessions); an answer's identity comes from a token or a verified Slack
//! signature, never from the request body.

pub mod alertmanager;
pub mod app;
mod approvals;
mod auth;
pub mod config;
mod deadline;
pub mod error;
pub mod events;
mod inbox;
mod intake;
pub mod metrics;
pub mod openapi;
mod page;
mod read;
mod session;
pub mod slack;
pub mod standby;
mod views;

pub use app::{serve, signal};
pub use config::{Overrides, ServeConfig};
pub use events::Events;
pub use metrics::Metrics;
pub use read::{GuardStatus, guard_status};
