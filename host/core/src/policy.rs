//! Policy: when an agent may act on its own and what a human answer must satisfy. Pure. The
//! approver rules (who may approve or adjust, never the requester, not after expiry, only the
//! plan that was shown) live here and nowhere else.

use crate::capability::{self, Destructive};
use crate::identity::Identity;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

pub const DEFAULT_APPROVAL_TTL: Duration = Duration::from_secs(30 * 60);
/// How many runbooks one incident may chain through follow-ups after the first.
pub const DEFAULT_FOLLOW_UP_DEPTH: usize = 3;

/// An agent's policy, from its definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Below this confidence the agent escalates before acting.
    pub min_confidence: f64,
    /// Below this a model's plan is not offered for approval at all: the human gets a plain
    /// escalation with the model's suggestion marked as one. Default half of `min_confidence`.
    pub suggestion_floor: f64,
    /// Capabilities that always need a human approval, whatever the confidence.
    pub destructive: DestructiveList,
    /// Who may approve; empty means anyone but the requester.
    pub approvers: BTreeSet<String>,
    pub approval_ttl: Duration,
    /// Follow-up runbooks one incident may chain after its first runbook.
    pub follow_up_depth: usize,
}

/// What needs a human: the catalogue's destructive capabilities, plus the agent's additions,
/// minus named opt-outs. Fail closed: an agent that says nothing gets the catalogue's list.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DestructiveList {
    /// Capabilities the agent adds to the catalogue's.
    pub added: BTreeSet<String>,
    /// Catalogue-destructive capabilities this agent runs without a human, each with the reason
    /// its file gives. Warned about at start; recorded on every audit record it affects.
    pub opted_out: BTreeMap<String, String>,
}

impl DestructiveList {
    /// The catalogue's list, nothing added, nothing removed.
    pub fn catalogue() -> Self {
        DestructiveList::default()
    }

    pub fn adding(added: impl IntoIterator<Item = String>) -> Self {
        DestructiveList {
            added: added.into_iter().collect(),
            opted_out: BTreeMap::new(),
        }
    }

    /// Is this call destructive, with these arguments? (Call time: `k8s.scale-deployment` to zero
    /// is, to three is not.)
    pub fn call_is_destructive(&self, capability: &str, args: &Value) -> bool {
        if self.opted_out.contains_key(capability) {
            return false;
        }
        self.added.contains(capability)
            || capability::lookup(capability).is_some_and(|c| c.destroys(args))
    }

    /// The granted capabilities that make a plan need a human at planning time: those destructive
    /// whatever their arguments.
    pub fn plan_needs_approval(&self, granted: &BTreeSet<String>) -> Vec<String> {
        granted
            .iter()
            .filter(|c| !self.opted_out.contains_key(*c))
            .filter(|c| {
                self.added.contains(*c)
                    || capability::lookup(c).is_some_and(|c| c.destructive == Destructive::Always)
            })
            .cloned()
            .collect()
    }

    /// Every capability that may need a human: the catalogue's (always or by argument) and the
    /// agent's, minus opt-outs.
    pub fn names(&self) -> BTreeSet<String> {
        capability::inherently_destructive()
            .map(|c| c.name.to_owned())
            .chain(self.added.iter().cloned())
            .filter(|c| !self.opted_out.contains_key(c))
            .collect()
    }

    /// The opt-outs among `capabilities`, for the audit records they affect.
    pub fn opt_outs_among<'a>(
        &'a self,
        capabilities: impl IntoIterator<Item = &'a String>,
    ) -> BTreeMap<String, String> {
        capabilities
            .into_iter()
            .filter_map(|c| self.opted_out.get(c).map(|why| (c.clone(), why.clone())))
            .collect()
    }
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
    /// The parameters as a human types them (`--param key=value`, the page's form, a scenario's
    /// `proposal_params`): a string as it is, any other value as its JSON.
    pub fn params_as_text(&self) -> BTreeMap<String, String> {
        self.params
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect()
    }

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
    /// A model's plan too unsure, or not grounded in what the agent saw, to be offered: shown
    /// to the human as a suggestion, never approvable as it stands.
    SuggestionOnly {
        why: String,
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
            Verdict::SuggestionOnly { why } => {
                format!("the model's plan is only a suggestion, not offered for approval: {why}")
            }
        }
    }
}

/// The floor below which a model's plan is only a suggestion, when the agent names none.
pub fn default_suggestion_floor(min_confidence: f64) -> f64 {
    min_confidence / 2.0
}

/// What a model's parameter values may be grounded in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grounds {
    /// Values any parameter may take: what the agent's probes found.
    pub any: BTreeSet<String>,
    /// Values one parameter may take: what the agent's label map found for it. A label the map
    /// does not name grounds nothing — an alert's `hint: "50"` must not make `replicas: 50` a
    /// value the agent saw.
    pub by_param: BTreeMap<String, BTreeSet<String>>,
}

/// The parameters of a plan whose values the agent never saw for them: not what the label map
/// found for that parameter, not a probe's output, not the parameter's default. Compared as
/// text, exactly; a model that invents a pid or a deployment name is caught here.
pub fn ungrounded(
    params: &BTreeMap<String, Value>,
    grounds: &Grounds,
    defaults: &BTreeMap<String, Value>,
) -> Vec<String> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    params
        .iter()
        .filter(|(name, value)| {
            let value_text = text(value);
            let seen = grounds.any.contains(&value_text)
                || grounds
                    .by_param
                    .get(*name)
                    .is_some_and(|values| values.contains(&value_text));
            !seen && defaults.get(*name) != Some(*value)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

impl Policy {
    /// Judge a plan a model stated: below the suggestion floor, or with a parameter the agent
    /// never saw (`ungrounded`), it is a suggestion only; otherwise as [`Policy::judge`].
    pub fn judge_model(
        &self,
        confidence: f64,
        granted: &BTreeSet<String>,
        ungrounded: &[String],
    ) -> Verdict {
        if confidence
            .partial_cmp(&self.suggestion_floor)
            .is_none_or(|o| o.is_lt())
        {
            return Verdict::SuggestionOnly {
                why: format!(
                    "its confidence {confidence:.2} is below the floor {:.2} for offering a plan",
                    self.suggestion_floor
                ),
            };
        }
        if !ungrounded.is_empty() {
            return Verdict::SuggestionOnly {
                why: format!(
                    "the value of {} is neither what the agent's label map found for it nor what the probes read",
                    ungrounded
                        .iter()
                        .map(|p| format!("`{p}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
        }
        self.judge(confidence, granted)
    }

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
        let destructive = self.destructive.plan_needs_approval(granted);
        if destructive.is_empty() {
            Verdict::Execute
        } else {
            Verdict::NeedsApproval { destructive }
        }
    }

    /// May `who` answer for this agent at all (approve, adjust)? Not the requester of the plan
    /// on the table, and one of the approvers when the agent names them.
    pub fn check_answerer(
        &self,
        who: &Identity,
        request: Option<&ApprovalRequest>,
    ) -> Result<(), ApprovalError> {
        if let Some(request) = request
            && who.name == request.requested_by.name
        {
            return Err(ApprovalError::SelfApproval(who.name.clone()));
        }
        if !self.approvers.is_empty() && !self.approvers.contains(&who.name) {
            return Err(ApprovalError::NotAnApprover {
                who: who.name.clone(),
                approvers: self.approvers.iter().cloned().collect(),
            });
        }
        Ok(())
    }

    /// May `approver` approve `request` now? `current_plan` is the plan the host would run now
    /// (from the catalogue as loaded), `shown` the digest the human was shown, if any.
    pub fn check_approval(
        &self,
        request: &ApprovalRequest,
        approver: &Identity,
        now: SystemTime,
        current_plan: &Plan,
        shown: Option<&str>,
    ) -> Result<(), ApprovalError> {
        self.check_answerer(approver, Some(request))?;
        if now > request.expires_at {
            return Err(ApprovalError::Expired {
                expired_at: humantime::format_rfc3339_seconds(request.expires_at).to_string(),
            });
        }
        if request.plan.digest() != request.plan_digest
            || current_plan.digest() != request.plan_digest
        {
            return Err(ApprovalError::PlanChanged);
        }
        if let Some(shown) = shown
            && shown != request.plan_digest
        {
            return Err(ApprovalError::NotWhatWasShown {
                shown: shown.to_owned(),
                plan: request.plan_digest.clone(),
            });
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
    pub requested_by: Identity,
    pub requested_at: SystemTime,
    pub expires_at: SystemTime,
}

impl ApprovalRequest {
    pub fn new(
        id: String,
        plan: Plan,
        requested_by: Identity,
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
    // Approving and adjusting are both refused to the requester: the message names both.
    #[error(
        "{0} requested this action and cannot approve or adjust it: another person must answer it"
    )]
    SelfApproval(String),
    #[error("{who} is not an approver for this agent (approvers: {})", approvers.join(", "))]
    NotAnApprover { who: String, approvers: Vec<String> },
    #[error("the approval request expired at {expired_at}: the agent must propose again")]
    Expired { expired_at: String },
    #[error(
        "the plan changed since approval was requested (runbook, digest, parameters or target): approve the new plan"
    )]
    PlanChanged,
    #[error(
        "the plan digest given ({shown}) is not the digest of the plan on the table ({plan}): read the proposal again (`themis audit show`) before approving"
    )]
    NotWhatWasShown { shown: String, plan: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> Policy {
        Policy {
            min_confidence: 0.8,
            suggestion_floor: 0.4,
            destructive: DestructiveList::catalogue(),
            approvers: BTreeSet::new(),
            approval_ttl: DEFAULT_APPROVAL_TTL,
            follow_up_depth: DEFAULT_FOLLOW_UP_DEPTH,
        }
    }

    #[test]
    fn a_model_plan_below_the_floor_or_with_an_unseen_value_is_only_a_suggestion() {
        let p = policy();
        let reads: BTreeSet<String> = ["postgres.activity".to_string()].into();
        assert_eq!(p.judge_model(0.9, &reads, &[]), Verdict::Execute);
        // Between the floor and the minimum: offered for approval, not run.
        assert!(matches!(
            p.judge_model(0.5, &reads, &[]),
            Verdict::ConfidenceTooLow { .. }
        ));
        for c in [0.39, f64::NAN] {
            assert!(matches!(
                p.judge_model(c, &reads, &[]),
                Verdict::SuggestionOnly { .. }
            ));
        }
        let known = Grounds {
            any: ["4".to_string()].into(),
            by_param: BTreeMap::from([("group".to_string(), ["orders".to_string()].into())]),
        };
        let defaults = BTreeMap::from([("max_lag".to_string(), json!(1000))]);
        let grounded = BTreeMap::from([
            ("group".to_string(), json!("orders")),
            ("replicas".to_string(), json!(4)),
            ("max_lag".to_string(), json!(1000)),
        ]);
        assert!(ungrounded(&grounded, &known, &defaults).is_empty());
        let invented = BTreeMap::from([
            ("group".to_string(), json!("payments")),
            ("replicas".to_string(), json!(12)),
        ]);
        let missing = ungrounded(&invented, &known, &defaults);
        assert_eq!(missing, vec!["group".to_string(), "replicas".to_string()]);
        // What the label map found for one parameter grounds that parameter only.
        let crossed = BTreeMap::from([("replicas".to_string(), json!("orders"))]);
        assert_eq!(
            ungrounded(&crossed, &known, &defaults),
            vec!["replicas".to_string()]
        );
        let Verdict::SuggestionOnly { why } = p.judge_model(0.99, &reads, &missing) else {
            panic!("an invented value must not be offered");
        };
        assert!(why.contains("`group`, `replicas`"), "{why}");
    }

    fn alice() -> Identity {
        Identity::scenario("alice")
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
            Identity::agent("kafka"),
            now,
            DEFAULT_APPROVAL_TTL,
        );
        let p = policy();
        assert_eq!(p.check_approval(&req, &alice(), now, &plan(), None), Ok(()));
        assert_eq!(
            p.check_approval(&req, &alice(), now, &plan(), Some(&req.plan_digest)),
            Ok(())
        );
        assert!(matches!(
            p.check_approval(&req, &alice(), now, &plan(), Some("sha256:other")),
            Err(ApprovalError::NotWhatWasShown { .. })
        ));
        assert_eq!(
            p.check_approval(&req, &Identity::agent("kafka"), now, &plan(), None),
            Err(ApprovalError::SelfApproval("themis:kafka".into()))
        );
        let late = now + DEFAULT_APPROVAL_TTL + Duration::from_secs(1);
        assert!(matches!(
            p.check_approval(&req, &alice(), late, &plan(), None),
            Err(ApprovalError::Expired { .. })
        ));
        let mut changed = plan();
        changed.params.insert("broker_id".into(), json!(2));
        assert_eq!(
            p.check_approval(&req, &alice(), now, &changed, None),
            Err(ApprovalError::PlanChanged)
        );
        let mut other_digest = plan();
        other_digest.runbook_digest = "sha256:bb".into();
        assert_eq!(
            p.check_approval(&req, &alice(), now, &other_digest, None),
            Err(ApprovalError::PlanChanged)
        );
        // A request whose plan no longer matches its own digest was edited after it was made.
        let mut edited = req.clone();
        edited.plan.params.insert("broker_id".into(), json!(3));
        assert_eq!(
            p.check_approval(&edited, &alice(), now, &plan(), None),
            Err(ApprovalError::PlanChanged)
        );
        let strict = Policy {
            approvers: ["bob".to_string()].into(),
            ..policy()
        };
        assert!(matches!(
            strict.check_approval(&req, &alice(), now, &plan(), None),
            Err(ApprovalError::NotAnApprover { .. })
        ));
    }

    #[test]
    fn an_agent_that_says_nothing_gets_the_catalogues_destructive_list() {
        // Fail closed: no `destructive:` in the agent file still means a human for these.
        let quiet = policy();
        for cap in [
            "kafka.broker-restart",
            "k8s.rollout-restart",
            "k8s.delete-pod",
            "postgres.terminate-backend",
        ] {
            let granted: BTreeSet<String> = [cap.to_string()].into();
            assert!(
                matches!(quiet.judge(1.0, &granted), Verdict::NeedsApproval { .. }),
                "{cap}"
            );
        }
        let scale = json!({ "replicas": 0 });
        assert!(
            quiet
                .destructive
                .call_is_destructive("k8s.scale-deployment", &scale)
        );
        // Only a named opt-out removes one.
        let opted = Policy {
            destructive: DestructiveList {
                added: BTreeSet::new(),
                opted_out: [(
                    "k8s.rollout-restart".to_string(),
                    "stateless tier".to_string(),
                )]
                .into(),
            },
            ..policy()
        };
        let restart: BTreeSet<String> = ["k8s.rollout-restart".to_string()].into();
        assert_eq!(opted.judge(1.0, &restart), Verdict::Execute);
        assert!(!opted.destructive.names().contains("k8s.rollout-restart"));
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
