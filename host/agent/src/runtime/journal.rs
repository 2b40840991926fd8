//! The audit as the sandbox's call journal: the intent of every mutating capability call is an
//! audit record, fsynced before the call; its result follows. A failed write refuses the call.

use crate::audit::AuditLog;
use async_trait::async_trait;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use themis_sandbox::CapabilityCall;
use themis_sandbox::journal::{CallIntent, CallJournal};

pub(crate) struct AuditJournal {
    pub(crate) audit: Arc<AuditLog>,
    /// Asked before every change whether this host still holds the state.
    pub(crate) store: Arc<dyn crate::store::IncidentStore>,
    pub(crate) agent: String,
    pub(crate) incident: String,
    /// The agent's destructive opt-outs, named on every record they affect.
    pub(crate) opted_out: BTreeMap<String, String>,
}

#[async_trait]
impl CallJournal for AuditJournal {
    async fn intent(&self, intent: &CallIntent) -> Result<(), String> {
        // A host another took the state over from must change nothing: the other resumes or
        // interrupts this incident from what it knows, and a change made here would be one it
        // does not.
        self.store.confirm_held().await.map_err(|e| {
            format!("this host may no longer hold the state, so it makes no change: {e}")
        })?;
        // The agent's state hint, written behind its moves, is written now: a stop during the
        // change finds it naming this run's step, which is what resuming it asks.
        if let Err(e) = self.store.flush().await {
            tracing::warn!(agent = %self.agent, error = %e, "the agent's state hint could not be saved before a change");
        }
        let mut data = json!({ "intent": intent });
        if let Some(why) = self.opted_out.get(&intent.capability) {
            data["destructive_opt_out"] = json!({ "capability": intent.capability, "reason": why });
        }
        self.audit
            .append(&self.agent, Some(&self.incident), "capability-intent", data)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn outcome(&self, intent: &CallIntent, call: &CapabilityCall) -> Result<(), String> {
        self.audit
            .append(
                &self.agent,
                Some(&self.incident),
                "capability-result",
                json!({ "execution_id": intent.execution_id, "step": intent.step, "phase": intent.phase, "call": call }),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
