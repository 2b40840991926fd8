//! From a selection to a plan, and policy's verdict on it: within policy it runs; below the
//! agent's confidence, or granted a destructive capability, a human is asked. A selection that
//! cannot become a plan (no runbook, one outside the catalog, parameters that do not bind)
//! escalates: never a guess. A model's plan below the suggestion floor, or with a parameter value
//! the agent never saw, is shown as a suggestion only.

use super::RuntimeError;
use super::load::Agent;
use super::worker::Worker;
use crate::store::Incident;
use crate::triage::Selection;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use themis_core::conditions::Facts;
use themis_core::fsm::Event;
use themis_core::guard::RunKey;
use themis_core::manifest::{bind_params, parse_param_text};
use themis_core::policy::{Grounds, Plan, Verdict, ungrounded};
use themis_sandbox::loaded::LoadedRunbook;

impl Worker {
    /// Judge a selection and act on the verdict.
    pub(crate) async fn decide(
        &mut self,
        incident: &mut Incident,
        selection: Selection,
        evidence: Vec<String>,
        facts: &Facts,
    ) -> Result<(), RuntimeError> {
        let ctx = self.ctx.clone();
        let agent = &ctx.agent;
        let name = &agent.def.name;
        let (loaded, params) = match catalog_plan(agent, &selection) {
            Ok(found) => found,
            Err(reason) => {
                self.fsm
                    .fire(
                        &ctx,
                        &incident.id,
                        Event::ConfidenceTooLow {
                            reason: reason.clone(),
                        },
                    )
                    .await?;
                return self
                    .escalate(incident, &reason, &selection, evidence, None)
                    .await;
            }
        };
        let plan = plan_for(loaded, params, &incident.fingerprint);
        let granted = granted(loaded);
        let verdict = if selection.selector == "llm" {
            let missing = ungrounded(&plan.params, &grounding(facts), &defaults(loaded));
            agent
                .def
                .policy
                .judge_model(selection.confidence, &granted, &missing)
        } else {
            agent.def.policy.judge(selection.confidence, &granted)
        };
        let opted_out = ctx.destructive.opt_outs_among(&granted);
        ctx.audit.append_deferred(name, Some(&incident.id), "decision", json!({ "plan": plan, "plan_digest": plan.digest(), "provenance": loaded.provenance(), "verdict": verdict, "reason": verdict.reason(), "confidence": selection.confidence, "destructive_opt_out": opted_out }))?;
        match verdict {
            Verdict::Execute => {
                // Within policy, but not automatically on a target the rails hold: the plan
                // goes to a human with the rail's reason, approvable as it stands.
                if let Some(target) = loaded.runbook.target(&plan.params) {
                    let key = RunKey {
                        agent: name.clone(),
                        incident: incident.id.clone(),
                        runbook: plan.runbook_id.clone(),
                        target,
                        fingerprint: incident.fingerprint.clone(),
                    };
                    if let Err(blocked) = ctx.guard.check(&agent.def.guard, &key).await {
                        super::execute::guard_blocked(&ctx, incident, &key, &blocked)?;
                        let reason = format!(
                            "a guard rail ({}) holds the automatic run back: {}",
                            blocked.rail.as_str(),
                            blocked.why
                        );
                        self.fsm
                            .fire(
                                &ctx,
                                &incident.id,
                                Event::ApprovalRequired {
                                    reason: reason.clone(),
                                },
                            )
                            .await?;
                        return self
                            .escalate(incident, &reason, &selection, evidence, Some(plan))
                            .await;
                    }
                }
                let first = loaded.runbook.steps[0].id.clone();
                self.fsm
                    .fire(
                        &ctx,
                        &incident.id,
                        Event::RunbookChosen {
                            runbook: loaded.runbook.id.clone(),
                            step: first,
                        },
                    )
                    .await?;
                Box::pin(self.run_plan(incident, plan, None, facts)).await
            }
            Verdict::SuggestionOnly { .. } => {
                let reason = verdict.reason();
                self.fsm
                    .fire(
                        &ctx,
                        &incident.id,
                        Event::ConfidenceTooLow {
                            reason: reason.clone(),
                        },
                    )
                    .await?;
                // No plan: the escalation shows the selection as a suggestion, not approvable.
                self.escalate(incident, &reason, &selection, evidence, None)
                    .await
            }
            Verdict::ConfidenceTooLow { .. }
            | Verdict::SelectorEscalated { .. }
            | Verdict::NeedsApproval { .. } => {
                let mut reason = verdict.reason();
                // A human decides, but not blind: a rail that would hold this run back were it
                // automatic (the same target changed moments ago by another incident's run, a
                // breaker open) is said in the proposal, so N alerts of one outage do not get
                // the same fix approved N times unknowingly.
                if let Some(key) = super::execute::run_key(name, incident, &plan, loaded)
                    && let Err(blocked) = ctx.guard.check(&agent.def.guard, &key).await
                {
                    reason = format!(
                        "{reason}. Note — a guard rail ({}) would hold this run back were it automatic: {}",
                        blocked.rail.as_str(),
                        blocked.why
                    );
                }
                let event = if matches!(verdict, Verdict::NeedsApproval { .. }) {
                    Event::ApprovalRequired {
                        reason: reason.clone(),
                    }
                } else {
                    Event::ConfidenceTooLow {
                        reason: reason.clone(),
                    }
                };
                self.fsm.fire(&ctx, &incident.id, event).await?;
                self.escalate(incident, &reason, &selection, evidence, Some(plan))
                    .await
            }
        }
    }
}

/// The values a model's parameters may be grounded in: what the agent's label map found for
/// each parameter, and what its probes found. Not any label's value, the alert's name or a
/// history count (a label the map does not name says nothing about which parameter it is),
/// and not annotations: free text is where an injected value would hide.
fn grounding(facts: &Facts) -> Grounds {
    let mut grounds = Grounds::default();
    for (key, value) in facts {
        if let Some(param) = key.strip_prefix("param.") {
            grounds
                .by_param
                .entry(param.to_owned())
                .or_default()
                .insert(value.clone());
        } else if key.starts_with("probe.") {
            grounds.any.insert(value.clone());
        }
    }
    grounds
}

/// The runbook's parameter defaults.
fn defaults(loaded: &LoadedRunbook) -> BTreeMap<String, Value> {
    loaded
        .runbook
        .parameters
        .iter()
        .filter_map(|p| p.default.clone().map(|d| (p.name.clone(), d)))
        .collect()
}

/// Every capability a runbook's steps are granted.
pub(crate) fn granted(loaded: &LoadedRunbook) -> BTreeSet<String> {
    loaded
        .runbook
        .steps
        .iter()
        .flat_map(|s| s.capabilities.iter().cloned())
        .collect()
}

/// The catalog runbook a selection names and its typed parameters, or why there is none.
pub(crate) fn catalog_plan<'a>(
    agent: &'a Agent,
    selection: &Selection,
) -> Result<(&'a LoadedRunbook, BTreeMap<String, Value>), String> {
    let Some(runbook_id) = &selection.runbook else {
        return Err(selection.reasoning.clone());
    };
    if let Some(why) = agent.unavailable.get(runbook_id) {
        return Err(format!(
            "the selector chose {runbook_id}, which is unavailable on this host: {why}; a human decides"
        ));
    }
    let Some(loaded) = agent.catalog.get(runbook_id) else {
        return Err(format!(
            "the selector named `{runbook_id}`, which is not in the catalog; nothing runs that is not a loaded runbook of the agent"
        ));
    };
    let params = typed_params(loaded, &selection.params).map_err(|why| {
        format!("the selector chose {runbook_id} but its parameters do not fit: {why}")
    })?;
    Ok((loaded, params))
}

/// Convert template output (strings) to the runbook's declared parameter types, and check they
/// bind (declared, typed, in range, matching their patterns).
pub(crate) fn typed_params(
    loaded: &LoadedRunbook,
    given: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, Value>, String> {
    let mut out = BTreeMap::new();
    for (name, value) in given {
        let decl = loaded
            .runbook
            .parameters
            .iter()
            .find(|p| &p.name == name)
            .ok_or_else(|| format!("`{name}` is not a parameter of {}", loaded.runbook.id))?;
        let v = match value {
            Value::String(s) => parse_param_text(decl.kind, s),
            other => other.clone(),
        };
        out.insert(name.clone(), v);
    }
    bind_params(&loaded.runbook.parameters, &out).map_err(|e| e.to_string())?;
    Ok(out)
}

pub(crate) fn plan_for(
    loaded: &LoadedRunbook,
    params: BTreeMap<String, Value>,
    target: &str,
) -> Plan {
    Plan {
        runbook_id: loaded.runbook.id.clone(),
        runbook_version: loaded.runbook.version.to_string(),
        runbook_digest: loaded.runbook.digest.clone(),
        params,
        target: target.into(),
    }
}

/// The facts of an alert alone (approvals resume without the probes' outputs).
pub(crate) fn alert_facts(agent: &Agent, alert: &themis_core::types::Alert) -> Facts {
    crate::triage::SelectionInput {
        agent: String::new(),
        alert: alert.clone(),
        candidates: Vec::new(),
        probes: Vec::new(),
        params: agent.def.labels.resolve(alert).values(),
        history: Vec::new(),
    }
    .facts()
}
