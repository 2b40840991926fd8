//! What one step may call: its grant from the manifest, the policy's destructive list, and the
//! approval (if any) bound to this execution. Pure: the sandbox asks, this answers.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;

/// A human approval, bound to exactly one execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub execution_id: String,
    pub approved_by: String,
}

/// The authority a step phase runs with.
#[derive(Debug, Clone)]
pub struct Grant {
    pub runbook_id: String,
    pub step_id: String,
    pub execution_id: String,
    /// Capabilities the manifest grants this step.
    pub capabilities: BTreeSet<String>,
    /// Capabilities that always need a human approval.
    pub destructive: Arc<BTreeSet<String>>,
    pub approval: Option<Approval>,
}

/// Why a call was refused. The text goes to the guest (as `cap-error::denied`) and the audit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error(
        "{capability} is not granted to step `{step}` of runbook `{runbook}`; grant it in the step's `capabilities` in the manifest if the step needs it"
    )]
    NotGranted {
        capability: String,
        step: String,
        runbook: String,
    },
    #[error(
        "{capability} is on the destructive list and needs a human approval bound to execution {execution_id}; none was given"
    )]
    NeedsApproval {
        capability: String,
        execution_id: String,
    },
    #[error(
        "{capability} is on the destructive list; the approval given was for execution {approved_for}, not this execution {execution_id}"
    )]
    ApprovalForAnotherExecution {
        capability: String,
        execution_id: String,
        approved_for: String,
    },
}

impl Grant {
    /// May this step call `capability` now?
    pub fn check(&self, capability: &str) -> Result<(), Denial> {
        if !self.capabilities.contains(capability) {
            return Err(Denial::NotGranted {
                capability: capability.into(),
                step: self.step_id.clone(),
                runbook: self.runbook_id.clone(),
            });
        }
        if !self.destructive.contains(capability) {
            return Ok(());
        }
        match &self.approval {
            None => Err(Denial::NeedsApproval {
                capability: capability.into(),
                execution_id: self.execution_id.clone(),
            }),
            Some(a) if a.execution_id != self.execution_id => {
                Err(Denial::ApprovalForAnotherExecution {
                    capability: capability.into(),
                    execution_id: self.execution_id.clone(),
                    approved_for: a.execution_id.clone(),
                })
            }
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(caps: &[&str], approval: Option<&str>) -> Grant {
        Grant {
            runbook_id: "rb".into(),
            step_id: "s".into(),
            execution_id: "exec-1".into(),
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            destructive: Arc::new(["kafka.broker-restart".to_string()].into()),
            approval: approval.map(|e| Approval {
                execution_id: e.into(),
                approved_by: "alice".into(),
            }),
        }
    }

    #[test]
    fn only_granted_capabilities_pass() {
        let g = grant(&["kafka.list-topics"], None);
        assert_eq!(g.check("kafka.list-topics"), Ok(()));
        assert!(matches!(
            g.check("kafka.describe-cluster"),
            Err(Denial::NotGranted { .. })
        ));
    }

    #[test]
    fn destructive_needs_an_approval_for_this_very_execution() {
        let cap = "kafka.broker-restart";
        assert!(matches!(
            grant(&[cap], None).check(cap),
            Err(Denial::NeedsApproval { .. })
        ));
        assert!(matches!(
            grant(&[cap], Some("exec-2")).check(cap),
            Err(Denial::ApprovalForAnotherExecution { .. })
        ));
        assert_eq!(grant(&[cap], Some("exec-1")).check(cap), Ok(()));
        // An approval never widens the grant.
        assert!(matches!(
            grant(&[], Some("exec-1")).check(cap),
            Err(Denial::NotGranted { .. })
        ));
    }
}
