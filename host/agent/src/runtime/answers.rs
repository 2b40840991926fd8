//! Human answers: approve, reject, adjust. Each is checked by policy against the proposal *as
//! the audit recorded it* (what the human was shown; the state file's copy is never trusted),
//! and claims the proposal exactly once through the store's compare-and-swap. An approval mints
//! a new execution id and is bound to that one execution.

use super::plan::{granted, plan_for, typed_params};
use super::worker::Worker;
use super::{RuntimeError, new_id, provenance};
use crate::store::{Answer, AnswerKind, Incident, IncidentStatus, StoreError};
use crate::triage::Selection;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::SystemTime;
use themis_core::fsm::Event;
use themis_core::grant::Approval;
use themis_core::identity::Identity;
use themis_core::policy::{ApprovalError, ApprovalRequest, Verdict};

impl Worker {
    pub(crate) async fn incident_for(&self, id: &str) -> Result<Incident, RuntimeError> {
        let store = &self.ctx.store;
        if id.starts_with("inc-") {
            return Ok(store.get(id).await?);
        }
        Ok(store
            .by_approval(id)
            .await?
            .ok_or_else(|| StoreError::UnknownIncident(id.into()))?)
    }

    /// An answer that names a proposal answers that proposal only: one answered already, or
    /// replaced since (an adjusted plan another human must approve has an id of its own), is
    /// refused — a click on an old message must not answer the plan on the table now. An
    /// answer that names the incident answers it only while no proposal waits: the form on an
    /// escalated incident's page, sent after a plan was proposed, must not answer a plan its
    /// sender never saw.
    fn stale_proposal(
        &self,
        incident: &Incident,
        id: &str,
        by: &Identity,
    ) -> Result<(), RuntimeError> {
        if id.starts_with("inc-") {
            let waiting = incident
                .proposal
                .as_ref()
                .filter(|_| incident.status == IncidentStatus::PendingApproval);
            let Some(proposal) = waiting else {
                return Ok(());
            };
            let e = crate::store::ClaimError::ProposalWaiting {
                incident: incident.id.clone(),
                approval_id: proposal.id.clone(),
            };
            self.refused(incident, id, by, &e, None)?;
            return Err(e.into());
        }
        if incident.proposal.as_ref().is_some_and(|p| p.id == id) {
            return Ok(());
        }
        let e =
            incident
                .refuses_answer(id)
                .unwrap_or_else(|| crate::store::ClaimError::NotPending {
                    approval_id: id.into(),
                    incident: incident.id.clone(),
                    status: incident.status,
                });
        self.refused(incident, id, by, &e, None)?;
        Err(e.into())
    }

    /// The proposal the escalation record carries: read back from the audit and checked against
    /// the record's hash.
    pub(crate) fn recorded_proposal(
        &self,
        incident: &Incident,
    ) -> Result<Option<ApprovalRequest>, RuntimeError> {
        let Some(at) = &incident.proposal_record else {
            return Ok(None);
        };
        let unusable = |why: &str| RuntimeError::Agent {
            agent: self.ctx.agent.def.name.clone(),
            message: format!(
                "the proposal of incident {} cannot be read back from audit record {}: {why}; propose again",
                incident.id, at.seq
            ),
        };
        let record = match self.ctx.audit.record(at) {
            Ok(record) => record,
            // Retrying cannot help: the record is not in this host's audit — cut from it, or
            // written by the host this one took the state database over from.
            Err(crate::audit::AuditError::Missing { problem, .. }) => {
                return Err(unusable(&format!(
                    "{problem} (a host that took the state over from another has not its records)"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        if record.kind != "escalation" || record.incident.as_deref() != Some(incident.id.as_str()) {
            return Err(unusable("that record is not this incident's escalation"));
        }
        if record.data["summarised"] == true {
            return Err(unusable(
                "the record was too large to keep whole (only its digest is on the audit)",
            ));
        }
        let proposal = record.data["escalation"]["proposal"].clone();
        if proposal.is_null() {
            return Ok(None);
        }
        serde_json::from_value(proposal)
            .map(Some)
            .map_err(|e| unusable(&e.to_string()))
    }

    /// An answer to `approval_id` already on the audit, after the proposal's own record: the
    /// store's compare-and-swap says who claimed a proposal, but a state rolled back to an
    /// earlier copy (a restored backup, a row put back by hand) would let it be claimed again.
    /// The audit, which the state's writers cannot rewrite, has the last word.
    fn answered_on_record(
        &self,
        incident: &Incident,
        approval_id: &str,
    ) -> Result<Option<crate::store::ClaimError>, RuntimeError> {
        let Some(at) = &incident.proposal_record else {
            return Ok(None);
        };
        let mut found = None;
        self.ctx.audit.scan_from(at.seq, |r| {
            if r.incident.as_deref() != Some(incident.id.as_str()) {
                return true;
            }
            let kind = match r.kind.as_str() {
                "approval" if r.data["approval"] == approval_id => AnswerKind::Approved,
                "rejection" if r.data["answers"] == approval_id => AnswerKind::Rejected,
                "adjustment" if r.data["answers"] == approval_id => AnswerKind::Adjusted,
                "proposal-withdrawn" if r.data["approval"] == approval_id => {
                    found = Some(crate::store::ClaimError::Withdrawn {
                        approval_id: approval_id.to_owned(),
                        why: r.data["reason"]
                            .as_str()
                            .unwrap_or("withdrawn by the host")
                            .to_owned(),
                    });
                    return false;
                }
                _ => return true,
            };
            let by = ["approver", "by"]
                .iter()
                .find_map(|k| r.data[*k]["name"].as_str())
                .unwrap_or("someone")
                .to_owned();
            found = Some(crate::store::ClaimError::AlreadyAnswered {
                approval_id: approval_id.to_owned(),
                kind,
                by,
            });
            false
        })?;
        Ok(found)
    }

    /// Claim `answer`'s proposal, unless the audit says it was answered already.
    pub(crate) async fn claim(
        &self,
        incident: &Incident,
        answer: Answer,
        next: IncidentStatus,
    ) -> Result<Incident, crate::store::ClaimError> {
        match self.answered_on_record(incident, &answer.approval_id) {
            Ok(Some(answered)) => return Err(answered),
            Ok(None) => {}
            Err(e) => {
                return Err(crate::store::ClaimError::Store(StoreError::Corrupt {
                    path: self.ctx.audit.path().to_path_buf(),
                    message: format!(
                        "whether {} was answered already cannot be read from the audit: {e}",
                        answer.approval_id
                    ),
                }));
            }
        }
        self.ctx.store.claim(answer, next).await
    }

    fn refused(
        &self,
        incident: &Incident,
        approval_id: &str,
        by: &Identity,
        error: &dyn std::fmt::Display,
        runbook: Option<&str>,
    ) -> Result<(), RuntimeError> {
        self.ctx.audit.append(
            &self.ctx.agent.def.name,
            Some(&incident.id),
            "approval-refused",
            json!({ "approval": approval_id, "by": by, "error": error.to_string(), "provenance": provenance(&self.ctx.agent, runbook) }),
        )?;
        Ok(())
    }

    pub(crate) async fn approve(
        &mut self,
        approval_id: &str,
        by: Identity,
        shown: Option<String>,
    ) -> Result<Incident, RuntimeError> {
        let ctx = self.ctx.clone();
        let agent = &ctx.agent;
        let name = agent.def.name.clone();
        let incident = self.incident_for(approval_id).await?;
        // Named by its incident: the refusal names the proposal that waits, as reject's and
        // adjust's do (an approval is always of one proposal, by its id).
        if approval_id.starts_with("inc-") {
            self.stale_proposal(&incident, approval_id, &by)?;
        }
        if let Some(e) = incident.refuses_answer(approval_id) {
            self.refused(&incident, approval_id, &by, &e, None)?;
            return Err(e.into());
        }
        let recorded = match self.recorded_proposal(&incident) {
            Ok(recorded) => recorded,
            // The proposal cannot be read back (its record cut, moved or summarised): refused,
            // and on the record like any refusal.
            Err(e) => {
                self.refused(&incident, approval_id, &by, &e, None)?;
                return Err(e);
            }
        };
        let request = match recorded {
            Some(r) if r.id == approval_id => r,
            _ => {
                let e = RuntimeError::Approval(ApprovalError::PlanChanged);
                self.refused(&incident, approval_id, &by, &e, None)?;
                return Err(e);
            }
        };
        let runbook = request.plan.runbook_id.clone();
        let checked = match agent.catalog.get(&runbook) {
            Some(loaded) => {
                let current = plan_for(loaded, request.plan.params.clone(), &request.plan.target);
                agent.def.policy.check_approval(
                    &request,
                    &by,
                    SystemTime::now(),
                    &current,
                    shown.as_deref(),
                )
            }
            None => Err(ApprovalError::PlanChanged),
        };
        if let Err(e) = checked {
            self.refused(&incident, approval_id, &by, &e, Some(&runbook))?;
            return Err(e.into());
        }
        let execution_id = new_id("exe");
        let answer = Answer {
            approval_id: approval_id.into(),
            kind: AnswerKind::Approved,
            by: by.clone(),
            at: SystemTime::now(),
            execution_id: Some(execution_id.clone()),
        };
        let mut incident = match self
            .claim(&incident, answer, IncidentStatus::Executing)
            .await
        {
            Ok(i) => i,
            Err(e) => {
                self.refused(&incident, approval_id, &by, &e, Some(&runbook))?;
                return Err(e.into());
            }
        };
        let approval = Approval {
            approval_id: approval_id.into(),
            execution_id: execution_id.clone(),
            approved_by: by.clone(),
            plan_digest: request.plan_digest.clone(),
        };
        // Claimed: from here on a failure is not a refusal. The approval may be on the record
        // and its run may start (or have acted) when the host recovers the incident; the
        // approver is told that, never "nothing was done".
        let ran: Result<(), RuntimeError> = async {
            ctx.audit.append(&name, Some(&incident.id), "approval", json!({ "approval": approval_id, "approver": by, "plan": request.plan, "plan_digest": request.plan_digest, "shown_digest": shown, "bound_to_execution": execution_id, "dry_run": ctx.backends.is_dry_run(), "provenance": provenance(agent, Some(&runbook)) }))?;
            let first = agent
                .catalog
                .get(&runbook)
                .map(|l| l.runbook.steps[0].id.clone())
                .unwrap_or_default();
            self.fsm
                .fire(
                    &ctx,
                    &incident.id,
                    Event::ApprovalGranted {
                        incident: incident.id.clone(),
                        runbook: runbook.clone(),
                        step: first,
                    },
                )
                .await?;
            incident.proposal = None;
            self.resume_plan(&mut incident, request.plan, Some(approval))
                .await
        }
        .await;
        ran.map_err(|e| RuntimeError::Unfinished {
            incident: incident.id.clone(),
            answered: format!(
                "{approval_id} was approved by {} (bound to execution {execution_id})",
                by.name
            ),
            source: Box::new(e),
        })?;
        Ok(incident)
    }

    pub(crate) async fn reject(
        &mut self,
        id: &str,
        by: Identity,
        reason: &str,
    ) -> Result<Incident, RuntimeError> {
        let ctx = self.ctx.clone();
        let agent = &ctx.agent;
        let incident = self.incident_for(id).await?;
        self.stale_proposal(&incident, id, &by)?;
        let policy = &agent.def.policy;
        if !policy.approvers.is_empty() && !policy.approvers.contains(&by.name) {
            let e = ApprovalError::NotAnApprover {
                who: by.name.clone(),
                approvers: policy.approvers.iter().cloned().collect(),
            };
            self.refused(&incident, id, &by, &e, None)?;
            return Err(e.into());
        }
        let runbook = incident
            .proposal
            .as_ref()
            .map(|p| p.plan.runbook_id.clone());
        let answers = incident
            .proposal
            .as_ref()
            .filter(|_| incident.status == IncidentStatus::PendingApproval)
            .map(|p| p.id.clone());
        let mut incident = match answers.clone() {
            Some(approval_id) => {
                let answer = Answer {
                    approval_id,
                    kind: AnswerKind::Rejected,
                    by: by.clone(),
                    at: SystemTime::now(),
                    execution_id: None,
                };
                match self
                    .claim(&incident, answer, IncidentStatus::Rejected)
                    .await
                {
                    Ok(i) => i,
                    Err(e) => {
                        self.refused(&incident, id, &by, &e, runbook.as_deref())?;
                        return Err(e.into());
                    }
                }
            }
            _ if incident.status.awaits_human() => incident,
            _ => {
                let e: RuntimeError =
                    incident
                        .refuses_answer(id)
                        .map(Into::into)
                        .unwrap_or_else(|| RuntimeError::Agent {
                            agent: agent.def.name.clone(),
                            message: format!("{id} is not waiting for an answer"),
                        });
                self.refused(&incident, id, &by, &e, None)?;
                return Err(e);
            }
        };
        ctx.audit.append(
            &agent.def.name,
            Some(&incident.id),
            "rejection",
            json!({ "approval": id, "answers": answers, "by": by, "reason": reason, "provenance": provenance(agent, runbook.as_deref()) }),
        )?;
        self.fsm
            .fire(
                &ctx,
                &incident.id,
                Event::ApprovalRejected {
                    incident: incident.id.clone(),
                },
            )
            .await?;
        incident.status = IncidentStatus::Rejected;
        incident.reason = Some(format!("rejected by {}: {reason}", by.name));
        incident.proposal = None;
        ctx.store.save(&incident).await?;
        Ok(incident)
    }

    pub(crate) async fn adjust(
        &mut self,
        id: &str,
        by: Identity,
        runbook: &str,
        params: &BTreeMap<String, String>,
        sent: SystemTime,
        seen: Option<&str>,
    ) -> Result<Incident, RuntimeError> {
        let ctx = self.ctx.clone();
        let agent = &ctx.agent;
        let name = agent.def.name.clone();
        let incident = self.incident_for(id).await?;
        self.stale_proposal(&incident, id, &by)?;
        // An escalation with no plan claims nothing an answer could use up: what binds the
        // answer to the escalation it saw is the escalation it names (`seen`: the page and an
        // API client that sends it back), else when it was sent — one that waited behind the
        // run it asked for (a retry) finds the incident escalated again since. Either way it is
        // refused, and cannot run a plan a second time unseen.
        let current = incident
            .escalated_at
            .map(|t| humantime::format_rfc3339_millis(t).to_string());
        let stale = match seen {
            Some(seen) => current.as_deref() != Some(seen),
            None => incident
                .escalated_at
                .is_some_and(|escalated| sent < escalated),
        };
        if let Some(escalated) = incident.escalated_at
            && stale
        {
            let e = crate::store::ClaimError::SentBefore {
                incident: incident.id.clone(),
                escalated: humantime::format_rfc3339_millis(escalated).to_string(),
            };
            self.refused(&incident, id, &by, &e, None)?;
            return Err(e.into());
        }
        if !incident.status.awaits_human() {
            // A conflict with the incident's state, as for an answered proposal: not a 404.
            return Err(crate::store::ClaimError::NotPending {
                approval_id: id.into(),
                incident: incident.id.clone(),
                status: incident.status,
            }
            .into());
        }
        let on_table = if incident.status == IncidentStatus::PendingApproval {
            self.recorded_proposal(&incident)?
        } else {
            None
        };
        if let Err(e) = agent.def.policy.check_answerer(&by, on_table.as_ref()) {
            self.refused(&incident, id, &by, &e, None)?;
            return Err(e.into());
        }
        // An expired proposal is answered by nobody, whatever the answer: the tick withdraws
        // it, and the alert's next firing is triaged afresh.
        if let Some(request) = &on_table
            && SystemTime::now() > request.expires_at
        {
            let e = themis_core::policy::ApprovalError::Expired {
                expired_at: humantime::format_rfc3339_seconds(request.expires_at).to_string(),
            };
            self.refused(&incident, id, &by, &e, None)?;
            return Err(e.into());
        }
        let Some(loaded) = agent.catalog.get(runbook) else {
            return Err(RuntimeError::Agent {
                agent: name,
                message: format!(
                    "`{runbook}` is not in the catalog; choose one of: {}",
                    agent.catalog.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        };
        let given: BTreeMap<String, Value> = params
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let typed = typed_params(loaded, &given).map_err(|e| RuntimeError::Agent {
            agent: name.clone(),
            message: e,
        })?;
        let plan = plan_for(loaded, typed, &incident.fingerprint);
        let verdict = agent.def.policy.judge(1.0, &granted(loaded));
        let mut incident = match &on_table {
            Some(request) => {
                let answer = Answer {
                    approval_id: request.id.clone(),
                    kind: AnswerKind::Adjusted,
                    by: by.clone(),
                    at: SystemTime::now(),
                    execution_id: None,
                };
                match self
                    .claim(&incident, answer, IncidentStatus::Executing)
                    .await
                {
                    Ok(i) => i,
                    Err(e) => {
                        self.refused(&incident, id, &by, &e, None)?;
                        return Err(e.into());
                    }
                }
            }
            None => incident,
        };
        let claimed = on_table.as_ref().map(|r| r.id.clone());
        let ran: Result<(), RuntimeError> = async {
        ctx.audit.append(&name, Some(&incident.id), "adjustment", json!({ "answers": on_table.as_ref().map(|r| &r.id), "by": by, "plan": plan, "plan_digest": plan.digest(), "provenance": loaded.provenance(), "verdict": verdict, "reason": verdict.reason() }))?;
        incident.proposal = None;
        match verdict {
            Verdict::Execute => {
                self.fsm
                    .fire(
                        &ctx,
                        &incident.id,
                        Event::ApprovalAdjusted {
                            incident: incident.id.clone(),
                            runbook: runbook.into(),
                            step: loaded.runbook.steps[0].id.clone(),
                        },
                    )
                    .await?;
                self.resume_plan(&mut incident, plan, None).await?;
            }
            _ => {
                // Another human must approve what this one proposed.
                let reason = format!("adjusted by {}: {}", by.name, verdict.reason());
                let selection = Selection::escalate("human", reason.clone());
                self.propose(
                    &mut incident,
                    &reason,
                    &selection,
                    Vec::new(),
                    Some(plan),
                    by.clone(),
                    None,
                )
                .await?;
            }
        }
        Ok(())
        }
        .await;
        if let Err(e) = ran {
            return Err(match claimed {
                // A proposal was claimed by this answer: past the point of "nothing was done".
                Some(approval_id) => RuntimeError::Unfinished {
                    incident: incident.id.clone(),
                    answered: format!("{approval_id} was adjusted by {}", by.name),
                    source: Box::new(e),
                },
                None => e,
            });
        }
        Ok(incident)
    }
}
