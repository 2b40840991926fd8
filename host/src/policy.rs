//! Policy: when an agent may act on its own and what a human approval must satisfy. Pure.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

pub const DEFAULT_APPROVAL_TTL: Duration = Duration::from_secs(30 * 60);

/// An agent's policy, from its definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Below this confidence the agent escalates before acting.
    pub min_confidence: f64,
    /// Capabilities that always need a human approval, whatever the confidence.
    pub destructive: BTreeSet<String>,
    /// Who may approve; empty means anyone but the requester.
    pub approvers: BTreeSet<String>,
    pub approval_ttl: Duration,
}

/// Exactly what an approval is for: a runbook (by digest), its parameters, and its target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub runbook_id: String,
    pub runbook_version: String,
    pub runbook_digest: String,
    pub params: BTreeMap<String, Value>,
    /// The alert fingerprint the plan acts on.
    pub target: String,
}

impl Plan {
    /// sha256 over the plan's canonical JSON: changing any of it invalidates an approval.
    pub fn digest(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }
}

/// What policy says about a proposed plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum Verdict {
    Execute,
    /// The selector itself chose to escalate.
    SelectorEscalated {
        reasoning: String,
    },
    ConfidenceTooLow {
        confidence: String,
        min: String,
    },
    /// The runbook's steps are granted destructive capabilities.
    NeedsApproval {
        destructive: Vec<String>,
    },
}

impl Verdict {
    pub fn reason(&self) -> String {
        match self {
            Verdict::Execute => "within policy".into(),
            Verdict::SelectorEscalated { reasoning } => {
                format!("the selector escalated: {reasoning}")
            }
            Verdict::ConfidenceTooLow { confidence, min } => {
                format!("confidence {confidence} is below the agent's minimum {min}")
            }
            Verdict::NeedsApproval { destructive } => format!(
                "the runbook is granted {} — on the destructive list, a human must approve",
                destructive.join(", ")
            ),
        }
    }
}

impl Policy {
    /// Judge a plan: `confidence` from the selector (a human's adjusted plan counts as 1.0),
    /// `granted` every capability the runbook's steps are granted.
    pub fn judge(&self, confidence: f64, granted: &BTreeSet<String>) -> Verdict {
        // NaN compares as nothing: it must escalate, so test for "at least" and negate.
        if confidence
            .partial_cmp(&self.min_confidence)
            .is_none_or(|o| o.is_lt())
        {
            return Verdict::ConfidenceTooLow {
                confidence: format!("{confidence:.2}"),
                min: format!("{:.2}", self.min_confidence),
            };
        }
        let destructive: Vec<String> = granted.intersection(&self.destructive).cloned().collect();
        if destructive.is_empty() {
            Verdict::Execute
        } else {
            Verdict::NeedsApproval { destructive }
        }
    }

    /// May `approver` approve `request` now, for the plan as it is now?
    pub fn check_approval(
        &self,
        request: &ApprovalRequest,
        approver: &str,
        now: SystemTime,
        current_plan: &Plan,
    ) -> Result<(), ApprovalError> {
        if approver == request.requested_by {
            return Err(ApprovalError::SelfApproval(approver.into()));
        }
        if !self.approvers.is_empty() && !self.approvers.contains(approver) {
            return Err(ApprovalError::NotAnApprover {
                who: approver.into(),
                approvers: self.approvers.iter().cloned().collect(),
            });
        }
        if now > request.expires_at {
            return Err(ApprovalError::Expired {
                expired_at: humantime::format_rfc3339_seconds(request.expires_at).to_string(),
            });
        }
        if current_plan.digest() != request.plan_digest {
            return Err(ApprovalError::PlanChanged);
        }
        Ok(())
    }
}

/// A plan waiting for a human.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub id: String,
    pub plan: Plan,
    pub plan_digest: String,
    pub requested_by: String,
    pub requested_at: SystemTime,
    pub expires_at: SystemTime,
}

impl ApprovalRequest {
    pub fn new(
        id: String,
        plan: Plan,
        requested_by: String,
        now: SystemTime,
        ttl: Duration,
    ) -> Self {
        ApprovalRequest {
            id,
            plan_digest: plan.digest(),
            plan,
            requested_by,
            requested_at: now,
            expires_at: now + ttl,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("{0} requested this action and cannot approve it: another person must")]
    SelfApproval(String),
    #[error("{who} is not an approver for this agent (approvers: {})", approvers.join(", "))]
    NotAnApprover { who: String, approvers: Vec<String> },
    #[error("the approval request expired at {expired_at}: the agent must propose again")]
    Expired { expired_at: String },
    #[error(
        "the plan changed since approval was requested (runbook, digest, parameters or target): approve the new plan"
    )]
    PlanChanged,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> Policy {
        Policy {
            min_confidence: 0.8,
            destructive: ["kafka.broker-restart".to_string()].into(),
            approvers: BTreeSet::new(),
            approval_ttl: DEFAULT_APPROVAL_TTL,
        }
    }

    fn plan() -> Plan {
        Plan {
            runbook_id: "adjust-broker-gc".into(),
            runbook_version: "1.0.0".into(),
            runbook_digest: "sha256:aa".into(),
            params: BTreeMap::from([("broker_id".to_string(), json!(1))]),
            target: "fp".into(),
        }
    }

    fn reads() -> BTreeSet<String> {
        ["kafka.consumer-lag".to_string()].into()
    }

    #[test]
    fn the_threshold_edge_is_inclusive() {
        assert_eq!(policy().judge(0.8, &reads()), Verdict::Execute);
        assert!(matches!(
            policy().judge(0.7999, &reads()),
            Verdict::ConfidenceTooLow { .. }
        ));
        assert!(matches!(
            policy().judge(f64::NAN, &reads()),
            Verdict::ConfidenceTooLow { .. }
        ));
    }

    #[test]
    fn destructive_always_escalates_even_at_full_confidence() {
        let granted: BTreeSet<String> = [
            "kafka.broker-restart".to_string(),
            "kafka.consumer-lag".to_string(),
        ]
        .into();
        assert_eq!(
            policy().judge(1.0, &granted),
            Verdict::NeedsApproval {
                destructive: vec!["kafka.broker-restart".into()]
            }
        );
    }

    #[test]
    fn approvals_are_bound_timed_and_not_self_given() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let req = ApprovalRequest::new(
            "apr-1".into(),
            plan(),
            "themis:kafka".into(),
            now,
            DEFAULT_APPROVAL_TTL,
        );
        let p = policy();
        assert_eq!(p.check_approval(&req, "alice", now, &plan()), Ok(()));
        assert_eq!(
            p.check_approval(&req, "themis:kafka", now, &plan()),
            Err(ApprovalError::SelfApproval("themis:kafka".into()))
        );
        let late = now + DEFAULT_APPROVAL_TTL + Duration::from_secs(1);
        assert!(matches!(
            p.check_approval(&req, "alice", late, &plan()),
            Err(ApprovalError::Expired { .. })
        ));
        let mut changed = plan();
        changed.params.insert("broker_id".into(), json!(2));
        assert_eq!(
            p.check_approval(&req, "alice", now, &changed),
            Err(ApprovalError::PlanChanged)
        );
        let mut other_digest = plan();
        other_digest.runbook_digest = "sha256:bb".into();
        assert_eq!(
            p.check_approval(&req, "alice", now, &other_digest),
            Err(ApprovalError::PlanChanged)
        );
        let strict = Policy {
            approvers: ["bob".to_string()].into(),
            ..policy()
        };
        assert!(matches!(
            strict.check_approval(&req, "alice", now, &plan()),
            Err(ApprovalError::NotAnApprover { .. })
        ));
    }

    #[test]
    fn an_adjusted_plan_is_judged_again() {
        // A human picks another runbook: confidence 1.0, but destructive still needs approval.
        let granted: BTreeSet<String> = ["kafka.broker-restart".to_string()].into();
        assert!(matches!(
            policy().judge(1.0, &granted),
            Verdict::NeedsApproval { .. }
        ));
        assert_eq!(policy().judge(1.0, &reads()), Verdict::Execute);
    }
}
