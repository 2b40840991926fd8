//! Resuming a runbook a host stop cut off. The audit says where the walk stood: the run's start
//! (its execution id, approval and runbook digest), every phase that finished, and the intent of
//! every mutating call. From that alone — never from a guess — the walk goes on: at the next
//! check, at the postcondition after a recorded action, or, when an action may have acted but
//! its result is not on the record, at that step's postcondition first (the executor's rules:
//! a non-idempotent action never runs twice). A postcondition that did not hold yet is read
//! again (it only looks: the stop may have cut its wait short), unless a rollback had begun to
//! act. Anything else — another phase that did not pass, a rollback under way, a changed
//! runbook, a step with several branches whose cut-off action's choice is unknown — goes to a
//! human as before.

use super::RuntimeError;
use super::execute::PhaseAudit;
use super::plan::alert_facts;
use super::worker::Worker;
use crate::audit::Record;
use crate::store::{Answer, AnswerKind, Incident, IncidentStatus};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use themis_core::fsm::{Event, StateKind};
use themis_core::grant::Approval;
use themis_core::graph::Target;
use themis_core::types::{Phase, StepOutput};
use themis_sandbox::executor::{self, Resume, ResumeFrom};
use themis_sandbox::loaded::LoadedRunbook;

/// The cut-off run as its start record has it.
#[derive(Debug, Clone)]
pub struct Started {
    pub execution_id: String,
    pub approval: Option<Approval>,
    /// Whether the run began against dry-run backends (a start record without the flag, from
    /// before it was recorded, is taken as live).
    pub dry_run: bool,
}

/// Where the walk resumes, or why it cannot: read off the incident's audit records alone.
pub fn resume_point(
    records: &[Record],
    loaded: &LoadedRunbook,
) -> Result<(Started, ResumeFrom), String> {
    let rb = &loaded.runbook;
    let Some(at) = records.iter().rposition(|r| r.kind == "execution-start") else {
        return Err("no run of it is on the record".into());
    };
    let start = &records[at].data;
    let after = &records[at + 1..];
    if after.iter().any(|r| r.kind == "result") {
        return Err("the run had ended (its result is on the record)".into());
    }
    // Declared interrupted (a human was told it would not be resumed), or answered since by an
    // adjustment whose own run never started: that run is over, whatever plan is saved now.
    if let Some(closed) = after
        .iter()
        .find(|r| matches!(r.kind.as_str(), "interrupted" | "adjustment"))
    {
        return Err(format!(
            "the last run on the record was followed by `{}` (seq {}): it is over, and nothing of a later plan acted",
            closed.kind, closed.seq
        ));
    }
    if start["runbook_digest"].as_str() != Some(rb.digest.as_str()) {
        return Err(format!(
            "{} is not the bundle that was running (its digest changed)",
            rb.id
        ));
    }
    let execution_id = start["execution_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let approval: Option<Approval> = match &start["approval"] {
        Value::Null => None,
        a => Some(
            serde_json::from_value(a.clone())
                .map_err(|e| format!("the run's approval cannot be read back: {e}"))?,
        ),
    };
    let step_index = |id: &str| rb.steps.iter().position(|s| s.id == id);
    let mut acted = Vec::new();
    let mut outputs = Vec::new();
    let mut last: Option<(usize, Phase, Option<String>)> = None;
    // The step whose postcondition did not hold on its latest reading, if that is where the
    // walk stood.
    let mut unsettled: Option<usize> = None;
    let mut branches: BTreeMap<usize, String> = BTreeMap::new();
    // Every journalled call of this run: (step, phase, capability).
    let mut intents: Vec<(&str, &str, &str)> = Vec::new();
    for r in after {
        if r.kind == "capability-intent"
            && r.data["intent"]["execution_id"].as_str() == Some(execution_id.as_str())
        {
            let field = |k: &str| r.data["intent"][k].as_str().unwrap_or_default();
            intents.push((field("step"), field("phase"), field("capability")));
        }
        // A step whose action meant to act is one that may have acted, whatever else its
        // record says: a run resumed once took it up from its postcondition, with no action
        // phase of its own on the record, and a second stop must still roll it back.
        if r.kind == "capability-intent"
            && r.data["intent"]["execution_id"].as_str() == Some(execution_id.as_str())
            && r.data["intent"]["phase"] == "action"
        {
            if let Some(i) = r.data["intent"]["step"].as_str().and_then(step_index)
                && !acted.contains(&i)
            {
                acted.push(i);
            }
            continue;
        }
        // A phase record too large to keep was replaced by its digest: which step and phase it
        // was, and how it ended, is not on the record, so neither is where the run stood.
        if r.kind == "phase" && r.data["summarised"] == true {
            return Err(
                "a phase record of this run was too large to keep whole; where the run stood cannot be read back".into(),
            );
        }
        if r.kind != "phase" || r.data["runbook"].as_str() != Some(rb.id.as_str()) {
            continue;
        }
        let rec = &r.data["record"];
        let step = rec["step"].as_str().unwrap_or_default();
        let Some(i) = step_index(step) else {
            return Err(format!("step `{step}` is not in {}", rb.id));
        };
        let phase: Phase = serde_json::from_value(rec["phase"].clone())
            .map_err(|e| format!("a phase record cannot be read back: {e}"))?;
        if rec["status"] != "passed" {
            if phase == Phase::Postcondition && branches.contains_key(&i) {
                unsettled = Some(i);
                last = Some((i, phase, None));
                continue;
            }
            return Err(format!(
                "{step} {phase} had not passed when the host stopped (a rollback may have been under way)"
            ));
        }
        unsettled = None;
        if phase == Phase::Rollback {
            return Err("a rollback was under way when the host stopped".into());
        }
        if let Some(pairs) = rec["outputs"].as_array() {
            for pair in pairs {
                if let (Some(key), Some(value)) = (pair[0].as_str(), pair[1].as_str()) {
                    outputs.push(StepOutput {
                        step: step.to_owned(),
                        key: key.to_owned(),
                        value: value.to_owned(),
                    });
                }
            }
        }
        let branch = rec["branch"].as_str().map(str::to_owned);
        if phase == Phase::Action {
            if !acted.contains(&i) {
                acted.push(i);
            }
            if let Some(b) = &branch {
                branches.insert(i, b.clone());
            }
        }
        last = Some((i, phase, branch));
    }
    let intended = |i: usize| {
        after.iter().any(|r| {
            r.kind == "capability-intent"
                && r.data["intent"]["execution_id"].as_str() == Some(execution_id.as_str())
                && r.data["intent"]["step"].as_str() == Some(rb.steps[i].id.as_str())
                && r.data["intent"]["phase"] == "action"
        })
    };
    let rolling_back = after.iter().any(|r| {
        r.kind == "capability-intent"
            && r.data["intent"]["execution_id"].as_str() == Some(execution_id.as_str())
            && r.data["intent"]["phase"] == "rollback"
    });
    let at = match last {
        Some((i, Phase::Postcondition, _)) if unsettled == Some(i) => {
            if rolling_back {
                return Err("a rollback had begun to act when the host stopped".into());
            }
            Resume::Postcondition {
                step: i,
                branch: branches.get(&i).cloned().unwrap_or_default(),
            }
        }
        None => Resume::Precondition(0),
        Some((i, Phase::Precondition, _)) if intended(i) => {
            let labels = rb.graph.labels(i);
            let [only] = labels.as_slice() else {
                return Err(format!(
                    "step `{}` was acting and has several branches; which one it took is not on the record",
                    rb.steps[i].id
                ));
            };
            Resume::ActionUnknown {
                step: i,
                branch: (*only).to_owned(),
                idempotent: rb.steps[i].idempotent,
            }
        }
        Some((i, Phase::Precondition, _)) => Resume::Precondition(i),
        Some((i, Phase::Action, Some(branch))) => Resume::Postcondition { step: i, branch },
        Some((i, Phase::Postcondition, _)) => {
            // A step a resume took up from its postcondition has no action phase (and so no
            // branch) on the record: with one branch, it is that one.
            let branch = match (branches.get(&i), rb.graph.labels(i).as_slice()) {
                (Some(b), _) => b.clone(),
                (None, [only]) => (*only).to_owned(),
                (None, _) => {
                    return Err(format!(
                        "step `{}` has several branches and which one it took is not on the record",
                        rb.steps[i].id
                    ));
                }
            };
            match rb.graph.next(i, &branch) {
                Some(Target::Step(j)) => Resume::Precondition(*j),
                _ => return Err("every step had passed; only the result was not recorded".into()),
            }
        }
        Some((_, phase, _)) => return Err(format!("the walk stood at a {phase} with no branch")),
    };
    // What `max_calls` has counted so far: every call the cut-off part journalled, but those of
    // an idempotent action about to run again whole — its retry makes the same calls anew.
    let retried = match &at {
        Resume::ActionUnknown {
            step,
            idempotent: true,
            ..
        } => Some(rb.steps[*step].id.as_str()),
        _ => None,
    };
    let mut calls: BTreeMap<String, u32> = BTreeMap::new();
    for (step, phase, capability) in &intents {
        if retried == Some(*step) && *phase == "action" {
            continue;
        }
        *calls.entry((*capability).to_owned()).or_default() += 1;
    }
    Ok((
        Started {
            execution_id,
            approval,
            dry_run: start["dry_run"].as_bool().unwrap_or(false),
        },
        ResumeFrom {
            at,
            acted,
            outputs,
            calls,
        },
    ))
}

/// Why a cut-off run was not resumed, and — when the incident's last plan is not the one that
/// was cut off — what was.
#[derive(Debug)]
pub(crate) struct NotResumed {
    pub(crate) why: String,
    pub(crate) cut_off: Option<String>,
}

impl From<String> for NotResumed {
    fn from(why: String) -> Self {
        NotResumed { why, cut_off: None }
    }
}

fn describe(rb: &LoadedRunbook, at: &Resume) -> String {
    let step = |i: &usize| rb.runbook.steps[*i].id.clone();
    match at {
        Resume::Precondition(i) => format!("at {}'s precondition", step(i)),
        Resume::Postcondition { step: i, .. } => format!("at {}'s postcondition", step(i)),
        Resume::ActionUnknown { step: i, .. } => format!(
            "at {}'s postcondition: its action may have acted, its result is not on the record",
            step(i)
        ),
    }
}

impl Worker {
    /// Go on with a run the host's stop cut off, if its record says exactly where it stood.
    /// `Ok(Some(why))` when it cannot (the caller tells a human instead).
    pub(crate) async fn try_resume(
        &mut self,
        incident: &mut Incident,
    ) -> Result<Option<NotResumed>, RuntimeError> {
        let ctx = self.ctx.clone();
        let name = ctx.agent.def.name.clone();
        let state = self.fsm.state.clone();
        let resumable_state = match state.kind() {
            StateKind::Idle => true,
            StateKind::ExecutingRunbook => state.incident() == Some(incident.id.as_str()),
            _ => false,
        };
        if !resumable_state {
            return Ok(Some(format!("the agent was left `{state}`").into()));
        }
        let audit = ctx.audit.clone();
        let found = audit.incident_records(
            &incident.id,
            incident.opened_seq,
            crate::audit::Newest::records(100_000),
        );
        let (records, altered) = match found {
            Ok(found) => found,
            Err(e) => return Ok(Some(format!("its record cannot be read: {e}").into())),
        };
        if altered > 0 {
            return Ok(Some(
                format!("{altered} of its records do not match their hash").into(),
            ));
        }
        // Claimed by an approval whose run has no start on the record: the stop came between
        // the answer and the run, so nothing of that run acted (and the incident's last plan
        // is an earlier one).
        if let Some(answer) = incident
            .answer
            .clone()
            .filter(|a| a.kind == AnswerKind::Approved)
            && let Some(execution) = answer.execution_id.clone()
            && !records.iter().any(|r| {
                r.kind == "execution-start"
                    && r.data["execution_id"].as_str() == Some(execution.as_str())
            })
        {
            return self
                .start_approved(incident, &records, &answer, &execution)
                .await;
        }
        let Some(plan) = incident.executed.clone() else {
            return Ok(Some("no plan of it is on the incident".to_owned().into()));
        };
        let Some(loaded) = ctx.agent.catalog.get(&plan.runbook_id) else {
            return Ok(Some(
                format!("{} is no longer loaded", plan.runbook_id).into(),
            ));
        };
        // The plan is saved before its run's start is recorded: a stop between the two leaves
        // the last start on the record an earlier run's (of an earlier plan), which must not be
        // resumed with this plan's parameters. Nothing of this plan acted.
        if let Some(start) = records.iter().rev().find(|r| r.kind == "execution-start")
            && (start.data["runbook_id"].as_str() != Some(plan.runbook_id.as_str())
                // As the record has them: redacted.
                || start.data["params"]
                    != ctx
                        .audit
                        .redactor()
                        .redact(serde_json::to_value(&plan.params).unwrap_or(Value::Null)))
        {
            return Ok(Some(
                "the last run on the record is not of the plan the incident was about to run (the host stopped between saving that plan and starting its run); nothing of that plan acted".to_owned().into(),
            ));
        }
        let (started, from) = match resume_point(&records, loaded) {
            Ok(point) => point,
            Err(why) => return Ok(Some(why.into())),
        };
        // A shadow run goes on as a shadow run and a live one as a live one: resumed in the
        // other mode, its postconditions would read a world the run never changed (or its
        // rollback would only say what it would undo).
        let dry_now = ctx.backends.is_dry_run();
        if started.dry_run != dry_now {
            let mode = |dry: bool| {
                if dry {
                    "in dry-run (shadow) mode"
                } else {
                    "live"
                }
            };
            return Ok(Some(
                format!(
                    "the run started {} and the host is now {}; a run is never finished in another mode than it began in",
                    mode(started.dry_run),
                    mode(dry_now)
                )
                .into(),
            ));
        }
        // The target again, as the stop released it (a human's run holds it too).
        let key = super::execute::run_key(&name, incident, &plan, loaded);
        if let Some(key) = &key
            && let Err(blocked) = ctx.guard.begin(&ctx.agent.def.guard, key, false).await?
        {
            return Ok(Some(blocked.why.into()));
        }
        let at = describe(loaded, &from.at);
        ctx.audit.append(&name, Some(&incident.id), "recovered", json!({ "action": "resume", "at": at, "execution_id": started.execution_id, "runbook_id": plan.runbook_id, "acted": from.acted.iter().map(|i| loaded.runbook.steps[*i].id.clone()).collect::<Vec<_>>() }))?;
        let step = match &from.at {
            Resume::Precondition(i)
            | Resume::Postcondition { step: i, .. }
            | Resume::ActionUnknown { step: i, .. } => loaded.runbook.steps[*i].id.clone(),
        };
        self.fsm
            .fire(
                &ctx,
                &incident.id,
                Event::Resumed {
                    incident: incident.id.clone(),
                    runbook: plan.runbook_id.clone(),
                    step,
                },
            )
            .await?;
        incident.status = IncidentStatus::Executing;
        ctx.store.save(incident).await?;
        let executed = match self.request(incident, loaded, plan.params.clone(), started.approval) {
            Ok(mut request) => {
                request.execution_id = started.execution_id;
                let report = {
                    let mut observer =
                        PhaseAudit::new(&ctx, Some(&mut self.fsm), &incident.id, loaded);
                    executor::execute_resumed(&ctx.sandbox, loaded, &request, &mut observer, from)
                        .await
                };
                self.record_result(incident, loaded, &report)
                    .map(|()| report)
            }
            Err(e) => Err(e),
        };
        let facts = alert_facts(&ctx.agent, &incident.alert);
        self.conclude(incident, plan, key, executed, &facts, Some(&at))
            .await?;
        Ok(None)
    }
}

impl Worker {
    /// An approved run the host's stop cut off before it started: started now, bound to the
    /// same execution as the approval, if the approval and its proposal read back from the
    /// record and the approval has not expired; else a human is told what was approved.
    async fn start_approved(
        &mut self,
        incident: &mut Incident,
        records: &[Record],
        answer: &Answer,
        execution: &str,
    ) -> Result<Option<NotResumed>, RuntimeError> {
        let ctx = self.ctx.clone();
        let name = ctx.agent.def.name.clone();
        let proposal = self.recorded_proposal(incident).ok().flatten();
        let cut_off = |what: &str| {
            let runbook = proposal
                .as_ref()
                .filter(|p| p.id == answer.approval_id)
                .map(|p| format!("{} {}", p.plan.runbook_id, p.plan.runbook_version))
                .unwrap_or_else(|| "the proposal".into());
            Some(format!(
                "after {} approved {runbook} ({}) and before its run started{what}",
                answer.by, answer.approval_id
            ))
        };
        let not_started = |why: String| {
            Ok(Some(NotResumed {
                why,
                cut_off: cut_off(""),
            }))
        };
        let recorded = records.iter().rev().find(|r| {
            r.kind == "approval"
                && r.data["approval"].as_str() == Some(answer.approval_id.as_str())
                && r.data["bound_to_execution"].as_str() == Some(execution)
        });
        let Some(recorded) = recorded else {
            return not_started(
                "the host stopped before the approval was on the record; nothing of the plan ran"
                    .into(),
            );
        };
        // Other work on the incident after the approval (it was interrupted, adjusted into
        // another plan, escalated, another run started): the approval is not this incident's
        // latest word, and starting it now could run a plan a human has since replaced.
        if let Some(later) = records.iter().find(|r| {
            r.seq > recorded.seq
                && matches!(
                    r.kind.as_str(),
                    "execution-start" | "interrupted" | "adjustment" | "escalation"
                )
        }) {
            return not_started(format!(
                "the approval was followed on the record by `{}` (seq {}): it is not started now",
                later.kind, later.seq
            ));
        }
        // An approval given to a host in dry-run (shadow) mode approved a rehearsal: it never
        // starts live on a host restarted with its real backends, nor the other way round.
        // (Approvals recorded before the mode was kept on them were given live, the default.)
        let approved_dry = recorded.data["dry_run"].as_bool().unwrap_or(false);
        if approved_dry != ctx.backends.is_dry_run() {
            let mode = |dry: bool| {
                if dry {
                    "in dry-run (shadow) mode"
                } else {
                    "live"
                }
            };
            return not_started(format!(
                "the approval was given {} and the host is now {}; nothing of the plan ran",
                mode(approved_dry),
                mode(ctx.backends.is_dry_run())
            ));
        }
        let Some(request) = proposal.clone().filter(|p| p.id == answer.approval_id) else {
            return not_started("the approved proposal cannot be read back from the audit".into());
        };
        if recorded.data["plan_digest"].as_str() != Some(request.plan_digest.as_str())
            || request.plan.digest() != request.plan_digest
        {
            return not_started(
                "the approval's plan digest does not match the proposal on the record".into(),
            );
        }
        if std::time::SystemTime::now() > request.expires_at {
            return not_started(format!(
                "the approval expired at {} before the host was back; nothing of the plan ran",
                humantime::format_rfc3339_seconds(request.expires_at)
            ));
        }
        let Some(loaded) = ctx.agent.catalog.get(&request.plan.runbook_id) else {
            return not_started(format!("{} is no longer loaded", request.plan.runbook_id));
        };
        // What was approved is that bundle: one loaded since (a newer version, a re-signed
        // bundle) is another plan, and no one approved it.
        let current =
            super::plan::plan_for(loaded, request.plan.params.clone(), &request.plan.target);
        if current.digest() != request.plan_digest {
            return not_started(format!(
                "{} is not the bundle that was approved (the plan it makes now has another digest); nothing of the plan ran",
                request.plan.runbook_id
            ));
        }
        let first = loaded.runbook.steps[0].id.clone();
        ctx.audit.append(&name, Some(&incident.id), "recovered", json!({ "action": "start the approved run", "execution_id": execution, "approval": answer.approval_id, "runbook_id": request.plan.runbook_id, "reason": "the host stopped after the approval and before its run started, so nothing of the run had acted; it starts now, bound to the same execution" }))?;
        self.fsm
            .fire(
                &ctx,
                &incident.id,
                Event::Resumed {
                    incident: incident.id.clone(),
                    runbook: request.plan.runbook_id.clone(),
                    step: first,
                },
            )
            .await?;
        let approval = Approval {
            approval_id: answer.approval_id.clone(),
            execution_id: execution.to_owned(),
            approved_by: answer.by.clone(),
            plan_digest: request.plan_digest.clone(),
        };
        incident.proposal = None;
        self.resume_plan(incident, request.plan, Some(approval))
            .await?;
        Ok(None)
    }
}
