//! Themis' agent runtime: one serial worker per domain agent takes alerts and human answers
//! from a bounded queue and drives the agent's state machine — intake, triage (rules or an LLM),
//! policy, execution in the sandbox, escalation, approvals, recovery after a crash — over an
//! [`store::IncidentStore`] and a hash-chained [`audit::AuditLog`].
//!
//! Invariants: the runtime knows no scenario and no mock (its backends come from a
//! `BackendProvider` chosen by configuration); every state change goes through the pure FSM and
//! is audited before it takes effect; nothing acts without a durable record before it.

pub mod approvers;
pub mod audit;
pub mod def;
pub mod escalation;
pub mod lock;
mod observe;
pub mod private;
pub mod runtime;
pub mod store;
pub mod triage;

pub use def::AgentDef;
pub use observe::{Fanout, Quiet, RuntimeObserver};
pub use runtime::{
    AlertOutcome, AlertStatus, Runtime, RuntimeError, RuntimeOptions, RuntimeParts, SelectorChoice,
    Submitted, check_catalog,
};
