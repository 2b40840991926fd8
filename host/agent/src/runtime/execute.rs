//! Executing a plan: the runbook runs in the sandbox with this agent's backends, every phase
//! moving the state machine and audited (a move or a record that fails halts the runbook before
//! anything else runs); on success a follow-up rule may propose the next runbook, within the
//! agent's depth limit and never a runbook already run in this incident.

use super::ctx::AgentCtx;
use super::fsm::Fsm;
use super::plan::alert_facts;
use super::worker::Worker;
use super::{RuntimeError, provenance};
use crate::store::{Incident, IncidentStatus};
use crate::triage::rules::RuleSelector;
use crate::triage::{ProbeResult, Selection};
use async_trait::async_trait;
use serde_json::json;
use std::collections::BTreeMap;
use themis_core::conditions::Facts;
use themis_core::fsm::{Event, StateKind};
use themis_core::grant::Approval;
use themis_core::guard::{Blocked, RunKey};
use themis_core::policy::Plan;
use themis_core::types::Phase;
use themis_sandbox::executor::{
    self, ExecutionReport, Halt, Outcome, PhaseObserver, PhaseRecord, PhaseStatus,
};
use themis_sandbox::loaded::LoadedRunbook;

impl Worker {
    /// Execute a plan; on success look for a follow-up; move the FSM through every phase.
    pub(crate) async fn run_plan(
        &mut self,
        incident: &mut Incident,
        plan: Plan,
        approval: Option<Approval>,
        facts: &Facts,
    ) -> Result<(), RuntimeError> {
        let ctx = self.ctx.clone();
        let name = &ctx.agent.def.name;
        let Some(loaded) = ctx.agent.catalog.get(&plan.runbook_id) else {
            return Err(RuntimeError::Agent {
                agent: name.clone(),
                message: format!("runbook `{}` is no longer loaded", plan.runbook_id),
            });
        };
        // One run at a time per target, approved or not: held from here to the end of the run.
        let key = run_key(name, incident, &plan, loaded);
        let rails = &ctx.agent.def.guard;
        if let Some(key) = &key
            && let Err(blocked) = ctx.guard.begin(rails, key, approval.is_none()).await?
        {
            guard_blocked(&ctx, incident, key, &blocked)?;
            let reason = format!("{} did not start: {}", plan.runbook_id, blocked.why);
            let event = Event::RunbookStopped {
                reason: reason.clone(),
            };
            return self.stop_and_escalate(incident, event, reason).await;
        }
        let executed = self
            .execute_plan(incident, loaded, &plan, approval.clone())
            .await;
        self.conclude(incident, plan, key, executed, facts, None)
            .await
    }

    /// After a run (fresh or resumed): the target released and the run on its history, then
    /// what the outcome calls for — a follow-up, verifying the fix, or a human. `interrupted`
    /// says where a stop cut off a resumed run: rolled back, it goes to a human as well.
    pub(crate) async fn conclude(
        &mut self,
        incident: &mut Incident,
        plan: Plan,
        key: Option<RunKey>,
        executed: Result<ExecutionReport, RuntimeError>,
        facts: &Facts,
        interrupted: Option<&str>,
    ) -> Result<(), RuntimeError> {
        let ctx = self.ctx.clone();
        let name = &ctx.agent.def.name;
        let rails = &ctx.agent.def.guard;
        if let Some(key) = &key {
            let ok = matches!(&executed, Ok(r) if r.outcome == Outcome::Succeeded);
            if let Some(breaker) = ctx.guard.end(rails, key, ok).await? {
                ctx.audit.append(name, Some(&incident.id), "guard-breaker-opened", json!({ "target": breaker.target, "runbook": breaker.runbook, "until": breaker.until, "why": breaker.why }))?;
                ctx.observer.breaker_opened(name, &breaker);
            }
        }
        let report = executed?;
        let Some(loaded) = ctx.agent.catalog.get(&plan.runbook_id) else {
            return Err(RuntimeError::Agent {
                agent: name.clone(),
                message: format!("runbook `{}` is no longer loaded", plan.runbook_id),
            });
        };
        let outcome = report.outcome.clone();
        let outputs = probe_result(&report).outputs;
        match outcome {
            Outcome::Succeeded => {
                let mut facts = facts.clone();
                for (k, v) in &outputs {
                    facts.insert(format!("outputs.{k}"), v.clone());
                }
                let follow: Vec<_> = ctx
                    .agent
                    .def
                    .follow_ups
                    .iter()
                    .filter(|f| f.after == plan.runbook_id)
                    .map(|f| f.rule.clone())
                    .collect();
                let next = RuleSelector::choose(&follow, &facts);
                if let Some(next_runbook) = next.runbook.clone() {
                    ctx.audit.append_deferred(name, Some(&incident.id), "selection", json!({ "selector": "rules", "follow_up_of": plan.runbook_id, "output": next, "provenance": provenance(&ctx.agent, next.runbook.as_deref()) }))?;
                    if let Some(why) = self.follow_up_refused(incident, &next_runbook) {
                        let event = Event::RunbookStopped {
                            reason: why.clone(),
                        };
                        return self.stop_and_escalate(incident, event, why).await;
                    }
                    let evidence = outputs
                        .iter()
                        .map(|(k, v)| format!("{}: {k}={v}", plan.runbook_id))
                        .collect();
                    return Box::pin(self.decide(incident, next, evidence, &facts)).await;
                }
                self.start_verification(incident, &plan, loaded).await
            }
            Outcome::PreconditionFailed { step } => {
                let reason = format!(
                    "runbook {} stopped: the precondition of step `{step}` did not hold",
                    plan.runbook_id
                );
                let event = Event::RunbookStopped {
                    reason: reason.clone(),
                };
                self.stop_and_escalate(incident, event, reason).await
            }
            Outcome::RolledBack { step, reason, .. } if interrupted.is_some() => {
                // A stop cut this run off; resumed, it could not go on and was undone. The
                // system went through a change and its undoing nobody watched: a human hears.
                let why = format!(
                    "runbook {} was cut off by a stop of the host and resumed {}; it failed at step `{step}` ({reason}) and the steps that acted were rolled back — check the system",
                    plan.runbook_id,
                    interrupted.unwrap_or_default()
                );
                let event = if self.fsm.state.kind() == StateKind::RollingBack {
                    Event::Interrupted {
                        incident: incident.id.clone(),
                        reason: why.clone(),
                    }
                } else {
                    Event::RunbookStopped {
                        reason: why.clone(),
                    }
                };
                self.stop_and_escalate(incident, event, why).await
            }
            Outcome::RolledBack { step, reason, .. } => {
                self.fsm
                    .fire(&ctx, &incident.id, Event::RollbackDone)
                    .await?;
                incident.status = IncidentStatus::Failed;
                incident.reason = Some(format!(
                    "runbook {} failed at step `{step}` ({reason}) and was rolled back",
                    plan.runbook_id
                ));
                ctx.store.save(incident).await?;
                Ok(())
            }
            Outcome::RollbackFailed {
                step,
                rollback_step,
                reason,
            } => {
                let why = format!(
                    "runbook {} failed at `{step}` and the rollback of `{rollback_step}` failed too: {reason}",
                    plan.runbook_id
                );
                let event = Event::RollbackFailed {
                    reason: why.clone(),
                };
                self.stop_and_escalate(incident, event, why).await?;
                incident.status = IncidentStatus::Failed;
                ctx.store.save(incident).await?;
                Ok(())
            }
            Outcome::Halted {
                step,
                phase,
                reason,
                acted,
            } => {
                let why = format!(
                    "runbook {} was halted before `{step}` {phase}: {reason}. Steps that acted: {}; nothing was rolled back — a human must check them",
                    plan.runbook_id,
                    if acted.is_empty() {
                        "none".to_string()
                    } else {
                        acted.join(", ")
                    }
                );
                let event = if self.fsm.state.kind() == StateKind::RollingBack {
                    Event::RollbackFailed {
                        reason: why.clone(),
                    }
                } else {
                    Event::RunbookStopped {
                        reason: why.clone(),
                    }
                };
                self.stop_and_escalate(incident, event, why).await
            }
        }
    }

    /// Why a follow-up may not run in this incident, if it may not.
    fn follow_up_refused(&self, incident: &Incident, next: &str) -> Option<String> {
        let depth = self.ctx.agent.def.policy.follow_up_depth;
        let follow_ups = incident.chain.len().saturating_sub(1);
        if incident.chain.iter().any(|r| r == next) {
            return Some(format!(
                "a follow-up proposed {next}, which already ran in this incident (chain: {}); the agent does not loop",
                incident.chain.join(" → ")
            ));
        }
        if follow_ups >= depth {
            return Some(format!(
                "a follow-up proposed {next}, but this incident already chained {follow_ups} follow-up(s), the agent's limit (policy.follow_up_depth: {depth}); chain: {}",
                incident.chain.join(" → ")
            ));
        }
        None
    }

    /// A runbook ended without resolving the alert: move the FSM and tell a human, no plan.
    pub(crate) async fn stop_and_escalate(
        &mut self,
        incident: &mut Incident,
        event: Event,
        reason: String,
    ) -> Result<(), RuntimeError> {
        let ctx = self.ctx.clone();
        self.fsm.fire(&ctx, &incident.id, event).await?;
        let selection = Selection::escalate("runtime", reason.clone());
        self.escalate(incident, &reason, &selection, Vec::new(), None)
            .await
    }

    /// Run a plan's runbook in the sandbox: the incident marked executing, the start and the
    /// result audited around it.
    async fn execute_plan(
        &mut self,
        incident: &mut Incident,
        loaded: &LoadedRunbook,
        plan: &Plan,
        approval: Option<Approval>,
    ) -> Result<ExecutionReport, RuntimeError> {
        let ctx = self.ctx.clone();
        let name = &ctx.agent.def.name;
        let request = self.request(incident, loaded, plan.params.clone(), approval.clone())?;
        let execution_id = request.execution_id.clone();
        incident.status = IncidentStatus::Executing;
        incident.reason = None;
        incident.executed = Some(plan.clone());
        incident.chain.push(plan.runbook_id.clone());
        ctx.store.save(incident).await?;
        ctx.audit.append(name, Some(&incident.id), "execution-start", json!({ "execution_id": execution_id, "runbook_id": plan.runbook_id, "runbook_version": loaded.runbook.version.to_string(), "runbook_digest": loaded.runbook.digest, "provenance": loaded.provenance(), "params": plan.params, "approval": approval, "dry_run": request.backends.is_dry_run() }))?;
        let report = {
            let mut observer = PhaseAudit::new(&ctx, Some(&mut self.fsm), &incident.id, loaded);
            executor::execute_observed(&ctx.sandbox, loaded, &request, &mut observer).await
        };
        self.record_result(incident, loaded, &report)?;
        Ok(report)
    }

    /// A run's end: told to the watcher and on the record.
    pub(crate) fn record_result(
        &self,
        incident: &Incident,
        loaded: &LoadedRunbook,
        report: &ExecutionReport,
    ) -> Result<(), RuntimeError> {
        let ctx = &self.ctx;
        let name = &ctx.agent.def.name;
        ctx.observer.execution(name, report);
        ctx.audit.append(name, Some(&incident.id), "result", json!({ "execution_id": report.execution_id, "runbook_id": report.runbook_id, "runbook_digest": loaded.runbook.digest, "provenance": loaded.provenance(), "outcome": report.outcome, "dry_run": report.dry_run, "would_do": would_do(report) }))?;
        Ok(())
    }

    /// Resume a plan a human approved or adjusted: the alert's facts stand in for the probes'.
    pub(crate) async fn resume_plan(
        &mut self,
        incident: &mut Incident,
        plan: Plan,
        approval: Option<Approval>,
    ) -> Result<(), RuntimeError> {
        let facts = alert_facts(&self.ctx.agent, &incident.alert);
        self.run_plan(incident, plan, approval, &facts).await
    }
}

/// What the guard rails know a run of `plan` in `incident` by; `None` when it changes nothing.
pub(crate) fn run_key(
    agent: &str,
    incident: &Incident,
    plan: &Plan,
    loaded: &LoadedRunbook,
) -> Option<RunKey> {
    loaded.runbook.target(&plan.params).map(|target| RunKey {
        agent: agent.to_owned(),
        incident: incident.id.clone(),
        runbook: plan.runbook_id.clone(),
        target,
        fingerprint: incident.fingerprint.clone(),
    })
}

/// A rail held a run back: on the record and told to the watcher.
pub(crate) fn guard_blocked(
    ctx: &AgentCtx,
    incident: &Incident,
    key: &RunKey,
    blocked: &Blocked,
) -> Result<(), RuntimeError> {
    ctx.audit.append(&ctx.agent.def.name, Some(&incident.id), "guard-blocked", json!({ "rail": blocked.rail, "why": blocked.why, "until": blocked.until, "target": key.target, "runbook": key.runbook }))?;
    ctx.observer.guard_blocked(&ctx.agent.def.name, blocked);
    Ok(())
}

/// What a probe (or a finished runbook) found: outputs of passing phases, evidence of actions.
pub(crate) fn probe_result(report: &ExecutionReport) -> ProbeResult {
    let mut outputs = BTreeMap::new();
    let mut evidence = Vec::new();
    for p in &report.phases {
        if p.status == PhaseStatus::Passed {
            for (k, v) in &p.outputs {
                outputs.insert(format!("{}.{k}", p.step), v.clone());
            }
        }
        if p.phase == Phase::Action {
            evidence.extend(
                p.evidence
                    .iter()
                    .map(|(k, v)| (format!("{}.{k}", p.step), v.clone())),
            );
        }
    }
    // The first phase that did not pass says, in the step's own words, why nothing was found.
    let note = report
        .phases
        .iter()
        .find(|p| p.status != PhaseStatus::Passed)
        .map(|p| format!("{} {}: {}", p.step, p.phase, p.summary));
    ProbeResult {
        runbook: report.runbook_id.clone(),
        outcome: report.outcome.status().to_string(),
        outputs,
        evidence,
        note,
    }
}

/// The mutations this execution recorded instead of making (a dry run).
fn would_do(report: &ExecutionReport) -> Vec<serde_json::Value> {
    report
        .calls()
        .filter(|c| c.mode == themis_sandbox::CallMode::WouldDo)
        .map(|c| json!({ "capability": c.capability, "args": c.args }))
        .collect()
}

/// Audits every phase (with its capability calls) and moves the FSM during execution. A record
/// that cannot be written, or a move the FSM refuses, halts the walk.
pub(crate) struct PhaseAudit<'a> {
    ctx: &'a AgentCtx,
    fsm: Option<&'a mut Fsm>,
    incident: &'a str,
    runbook: &'a LoadedRunbook,
    /// The last phase that did not pass: why the rollback starts.
    failure: Option<(String, String)>,
}

impl<'a> PhaseAudit<'a> {
    pub(crate) fn new(
        ctx: &'a AgentCtx,
        fsm: Option<&'a mut Fsm>,
        incident: &'a str,
        runbook: &'a LoadedRunbook,
    ) -> Self {
        PhaseAudit {
            ctx,
            fsm,
            incident,
            runbook,
            failure: None,
        }
    }
}

#[async_trait]
impl PhaseObserver for PhaseAudit<'_> {
    async fn phase_started(&mut self, step: &str, phase: Phase) -> Result<(), Halt> {
        let Some(fsm) = self.fsm.as_deref_mut() else {
            return Ok(());
        };
        let halt = |e: RuntimeError| Halt(e.to_string());
        if phase == Phase::Rollback && fsm.state.kind() == StateKind::ExecutingRunbook {
            let (failed, reason) = self
                .failure
                .clone()
                .unwrap_or_else(|| (step.to_owned(), "a phase failed".into()));
            fsm.fire(
                self.ctx,
                self.incident,
                Event::StepFailed {
                    step: failed,
                    reason,
                },
            )
            .await
            .map_err(halt)?;
        }
        fsm.fire(
            self.ctx,
            self.incident,
            Event::PhaseStarted {
                step: step.into(),
                phase,
            },
        )
        .await
        .map_err(halt)?;
        Ok(())
    }

    async fn phase_finished(&mut self, record: &PhaseRecord) -> Result<(), Halt> {
        if record.status != PhaseStatus::Passed {
            self.failure = Some((record.step.clone(), record.summary.clone()));
        }
        let agent = &self.ctx.agent.def.name;
        self.ctx
            .audit
            .append(
                agent,
                Some(self.incident),
                "phase",
                json!({ "runbook": self.runbook.runbook.id, "provenance": self.runbook.provenance(), "record": phase_on_record(record) }),
            )
            .map_err(|e| Halt(format!("the phase could not be audited: {e}")))?;
        self.ctx
            .observer
            .phase(agent, &self.runbook.runbook.id, record);
        Ok(())
    }
}

/// The most one bulky part of a phase record (its calls, logs, evidence, stderr) keeps before
/// it becomes a digest: four of them stay well inside the audit's limit for one record.
const PHASE_PART_BYTES: usize = 48 * 1024;

/// A phase record as the audit keeps it. Past the audit's limit a whole record becomes a
/// digest, and with it the step, phase, status, branch and outputs a resume reads back; the
/// bulky parts are bounded on their own first, so those always stay.
fn phase_on_record(record: &PhaseRecord) -> serde_json::Value {
    let mut value = serde_json::to_value(record).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(map) = &mut value {
        for key in ["calls", "logs", "evidence", "stderr"] {
            if let Some(part) = map.remove(key) {
                map.insert(
                    key.to_owned(),
                    themis_core::bounded::bound(part, PHASE_PART_BYTES),
                );
            }
        }
    }
    value
}
