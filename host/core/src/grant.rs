//! What one step phase may call: its grant from the manifest, the phase it is in, the mutations
//! the manifest declares (with their targets bound to the plan's parameters), the agent's
//! destructive list, and the approval (if any) bound to this execution. Pure: the sandbox asks,
//! this answers.

use crate::capability::{self, Effect};
use crate::identity::Identity;
use crate::policy::DestructiveList;
use crate::types::Phase;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A human approval of one plan, bound to exactly one execution of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The approval request the human answered (`apr-…`).
    pub approval_id: String,
    /// The one execution it authorises (`exe-…`), minted when the approval was claimed.
    pub execution_id: String,
    pub approved_by: Identity,
    /// The digest of the plan the human approved.
    pub plan_digest: String,
}

/// A mutation the manifest declares for a step, bound to this execution's plan: the arguments
/// every call must carry (its target) and how many calls one execution may make.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MutationScope {
    /// Argument name → the value the call must pass (from the plan's parameters).
    pub args: BTreeMap<String, Value>,
    /// Argument name → the values one of which the call must pass (a list the plan names).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub one_of: BTreeMap<String, Vec<Value>>,
    /// Calls of this capability allowed in one execution, all steps and phases together.
    pub max_calls: Option<u32>,
}

/// The authority a step phase runs with.
#[derive(Debug, Clone)]
pub struct Grant {
    pub runbook_id: String,
    pub step_id: String,
    pub execution_id: String,
    pub phase: Phase,
    /// Capabilities the manifest grants this step.
    pub capabilities: BTreeSet<String>,
    /// Declared mutations, by capability.
    pub scopes: BTreeMap<String, MutationScope>,
    pub destructive: Arc<DestructiveList>,
    pub approval: Option<Approval>,
}

/// A call the grant allows, and what the host must know about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    pub mutates: bool,
    pub destructive: bool,
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
        "{capability} changes the system and step `{step}` called it from its {phase}: preconditions and postconditions only look; change things in `action` or `rollback`"
    )]
    ReadOnlyPhase {
        capability: String,
        step: String,
        phase: Phase,
    },
    #[error(
        "{capability} with {arg} = {got} is outside the plan: the manifest binds {arg} to {wanted} for this execution"
    )]
    OutsidePlan {
        capability: String,
        arg: String,
        wanted: String,
        got: String,
    },
    #[error(
        "{capability} was already called {max} time(s) in this execution, the most the manifest allows"
    )]
    OverCap { capability: String, max: u32 },
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

impl Denial {
    /// A stable name for the audit and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Denial::NotGranted { .. } => "refused-grant",
            Denial::ReadOnlyPhase { .. } => "refused-read-only-phase",
            Denial::OutsidePlan { .. } => "refused-outside-plan",
            Denial::OverCap { .. } => "refused-over-cap",
            Denial::NeedsApproval { .. } | Denial::ApprovalForAnotherExecution { .. } => {
                "refused-destructive"
            }
        }
    }
}

impl Grant {
    /// May this step call `capability` with `args` now? `calls_so_far` is how many calls of it
    /// this execution has made already (the host counts across phases).
    pub fn check(
        &self,
        capability: &str,
        args: &Value,
        calls_so_far: u32,
    ) -> Result<Allowed, Denial> {
        if !self.capabilities.contains(capability) {
            return Err(Denial::NotGranted {
                capability: capability.into(),
                step: self.step_id.clone(),
                runbook: self.runbook_id.clone(),
            });
        }
        let mutates = capability::lookup(capability).is_some_and(|c| c.effect == Effect::Mutate);
        if mutates && !self.phase.may_mutate() {
            return Err(Denial::ReadOnlyPhase {
                capability: capability.into(),
                step: self.step_id.clone(),
                phase: self.phase,
            });
        }
        if let Some(scope) = self.scopes.get(capability) {
            for (arg, wanted) in &scope.args {
                let got = args.get(arg).unwrap_or(&Value::Null);
                if !same_value(got, wanted) {
                    return Err(Denial::OutsidePlan {
                        capability: capability.into(),
                        arg: arg.clone(),
                        wanted: wanted.to_string(),
                        got: got.to_string(),
                    });
                }
            }
            for (arg, allowed) in &scope.one_of {
                let got = args.get(arg).unwrap_or(&Value::Null);
                if !allowed.iter().any(|a| same_value(got, a)) {
                    return Err(Denial::OutsidePlan {
                        capability: capability.into(),
                        arg: arg.clone(),
                        wanted: format!("one of {}", Value::from(allowed.clone())),
                        got: got.to_string(),
                    });
                }
            }
            if let Some(max) = scope.max_calls
                && calls_so_far >= max
            {
                return Err(Denial::OverCap {
                    capability: capability.into(),
                    max,
                });
            }
        }
        let destructive = mutates && self.destructive.call_is_destructive(capability, args);
        if destructive {
            match &self.approval {
                None => {
                    return Err(Denial::NeedsApproval {
                        capability: capability.into(),
                        execution_id: self.execution_id.clone(),
                    });
                }
                Some(a) if a.execution_id != self.execution_id => {
                    return Err(Denial::ApprovalForAnotherExecution {
                        capability: capability.into(),
                        execution_id: self.execution_id.clone(),
                        approved_for: a.execution_id.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(Allowed {
            mutates,
            destructive,
        })
    }
}

/// JSON equality that treats 1 and 1.0 alike (an integer parameter against an `s32` argument).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn grant(caps: &[&str], phase: Phase, approval: Option<&str>) -> Grant {
        Grant {
            runbook_id: "rb".into(),
            step_id: "s".into(),
            execution_id: "exe-1".into(),
            phase,
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            scopes: BTreeMap::new(),
            destructive: Arc::new(DestructiveList::catalogue()),
            approval: approval.map(|e| Approval {
                approval_id: "apr-1".into(),
                execution_id: e.into(),
                approved_by: Identity::scenario("alice"),
                plan_digest: "sha256:aa".into(),
            }),
        }
    }

    #[test]
    fn only_granted_capabilities_pass() {
        let g = grant(&["kafka.list-topics"], Phase::Action, None);
        assert!(g.check("kafka.list-topics", &json!({}), 0).is_ok());
        assert!(matches!(
            g.check("kafka.describe-cluster", &json!({}), 0),
            Err(Denial::NotGranted { .. })
        ));
    }

    #[test]
    fn destructive_needs_an_approval_for_this_very_execution() {
        let cap = "kafka.broker-restart";
        let args = json!({ "broker_id": 1 });
        assert!(matches!(
            grant(&[cap], Phase::Action, None).check(cap, &args, 0),
            Err(Denial::NeedsApproval { .. })
        ));
        assert!(matches!(
            grant(&[cap], Phase::Action, Some("exe-2")).check(cap, &args, 0),
            Err(Denial::ApprovalForAnotherExecution { .. })
        ));
        assert_eq!(
            grant(&[cap], Phase::Action, Some("exe-1")).check(cap, &args, 0),
            Ok(Allowed {
                mutates: true,
                destructive: true
            })
        );
        // An approval never widens the grant.
        assert!(matches!(
            grant(&[], Phase::Action, Some("exe-1")).check(cap, &args, 0),
            Err(Denial::NotGranted { .. })
        ));
    }

    #[test]
    fn checks_only_look_and_mutations_stay_inside_the_plan() {
        let cap = "kafka.broker-restart";
        for phase in [Phase::Precondition, Phase::Postcondition] {
            assert!(matches!(
                grant(&[cap], phase, Some("exe-1")).check(cap, &json!({ "broker_id": 1 }), 0),
                Err(Denial::ReadOnlyPhase { .. })
            ));
        }
        let mut g = grant(&[cap], Phase::Rollback, Some("exe-1"));
        g.scopes.insert(
            cap.into(),
            MutationScope {
                args: [("broker_id".to_string(), json!(1))].into(),
                max_calls: Some(1),
                ..MutationScope::default()
            },
        );
        assert!(g.check(cap, &json!({ "broker_id": 1 }), 0).is_ok());
        assert!(matches!(
            g.check(cap, &json!({ "broker_id": 3 }), 0),
            Err(Denial::OutsidePlan { .. })
        ));
        assert!(matches!(
            g.check(cap, &json!({ "broker_id": 1 }), 1),
            Err(Denial::OverCap { max: 1, .. })
        ));
    }

    #[test]
    fn a_list_the_plan_names_admits_each_of_its_values_and_nothing_else() {
        let cap = "postgres.terminate-backend";
        let mut g = grant(&[cap], Phase::Action, Some("exe-1"));
        g.scopes.insert(
            cap.into(),
            MutationScope {
                one_of: [("pid".to_string(), vec![json!(101), json!(102)])].into(),
                max_calls: Some(2),
                ..MutationScope::default()
            },
        );
        assert!(g.check(cap, &json!({ "pid": 101 }), 0).is_ok());
        assert!(g.check(cap, &json!({ "pid": 102 }), 1).is_ok());
        assert!(matches!(
            g.check(cap, &json!({ "pid": 103 }), 0),
            Err(Denial::OutsidePlan { .. })
        ));
        assert!(matches!(
            g.check(cap, &json!({ "pid": 101 }), 2),
            Err(Denial::OverCap { max: 2, .. })
        ));
        // An empty list (a parameter that did not parse) admits nothing.
        g.scopes
            .get_mut(cap)
            .expect("scope")
            .one_of
            .insert("pid".into(), vec![]);
        assert!(matches!(
            g.check(cap, &json!({ "pid": 101 }), 0),
            Err(Denial::OutsidePlan { .. })
        ));
    }

    #[test]
    fn scaling_to_zero_is_destructive_by_its_argument() {
        let cap = "k8s.scale-deployment";
        let g = grant(&[cap], Phase::Action, None);
        assert!(g.check(cap, &json!({ "replicas": 3 }), 0).is_ok());
        assert!(matches!(
            g.check(cap, &json!({ "replicas": 0 }), 0),
            Err(Denial::NeedsApproval { .. })
        ));
    }
}
