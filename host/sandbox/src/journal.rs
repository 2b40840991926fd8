//! The write-ahead seam of a capability call: before a mutating call reaches a backend, an intent
//! record naming the capability, its arguments and the approval must be durable; after it, the
//! result. A journal that cannot write refuses, and the call does not happen.

use crate::record::CapabilityCall;
use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use std::sync::Mutex;
use themis_core::grant::Approval;
use themis_core::types::Phase;

/// A mutating call about to be made.
#[derive(Debug, Clone, Serialize)]
pub struct CallIntent {
    pub execution_id: String,
    pub runbook: String,
    pub step: String,
    pub phase: Phase,
    pub capability: String,
    pub args: Value,
    pub destructive: bool,
    pub dry_run: bool,
    pub approval: Option<Approval>,
}

#[async_trait]
pub trait CallJournal: Send + Sync {
    /// Record the intent durably before the call; an error means the call must not be made.
    async fn intent(&self, intent: &CallIntent) -> Result<(), String>;
    /// Record what the call did.
    async fn outcome(&self, intent: &CallIntent, call: &CapabilityCall) -> Result<(), String>;
}

/// A journal in memory, for runs with no audit log (`themis run` against mocks, tests).
#[derive(Debug, Default)]
pub struct MemoryJournal {
    intents: Mutex<Vec<CallIntent>>,
}

impl MemoryJournal {
    pub fn intents(&self) -> Vec<CallIntent> {
        self.intents.lock().map(|i| i.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl CallJournal for MemoryJournal {
    async fn intent(&self, intent: &CallIntent) -> Result<(), String> {
        self.intents
            .lock()
            .map_err(|_| "the in-memory journal is poisoned".to_string())?
            .push(intent.clone());
        Ok(())
    }

    async fn outcome(&self, _: &CallIntent, _: &CapabilityCall) -> Result<(), String> {
        Ok(())
    }
}
