//! What an agent's worker acts with: its loaded agent and the shared parts of the host.

use super::load::Agent;
use crate::audit::AuditLog;
use crate::escalation::Channels;
use crate::observe::RuntimeObserver;
use crate::store::IncidentStore;
use std::sync::Arc;
use themis_caps::Backends;
use themis_core::policy::DestructiveList;
use themis_sandbox::Sandbox;

/// What a worker acts with: shared, read-only while it runs.
pub(crate) struct AgentCtx {
    pub(crate) agent: Arc<Agent>,
    pub(crate) sandbox: Arc<Sandbox>,
    pub(crate) audit: Arc<AuditLog>,
    pub(crate) store: Arc<dyn IncidentStore>,
    pub(crate) channels: Channels,
    pub(crate) observer: Arc<dyn RuntimeObserver>,
    pub(crate) backends: Backends,
    pub(crate) destructive: Arc<DestructiveList>,
    /// The host's guard rails, shared by every agent.
    pub(crate) guard: Arc<super::guard::Guard>,
    /// The agent's own budget of messages about alerts it gave up on: one agent failing every
    /// alert cannot use up another's.
    pub(crate) unhandled: super::notices::Notices,
    pub(crate) clock: themis_core::clock::Clock,
}
