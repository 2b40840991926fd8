//! Escalation: a human is told — the alert, why, the reasoning, the evidence and, when there is
//! one, the proposed plan with its digest and how to answer — on the console, in Slack when
//! configured, and in the audit. The record carrying the proposal is what an approval re-reads.
//! Then the incident is parked and the agent is idle again.

use super::ctx::AgentCtx;
use super::worker::Worker;
use super::{RuntimeError, new_id};

/// The most escalations in a row whose incident is staged rather than saved durably. A worker
/// that has staged this many makes the store durable after its reply (`Worker::after_reply`),
/// off the decision's path; should that fail, the next is saved durably on it. A start makes
/// the store durable first, so no more than this many are ever at risk, and restores staged
/// incidents from the newest `2 * STAGED_RUN` escalation records of each agent (`restore.rs`).
pub(crate) const STAGED_RUN: usize = 32;

/// `apr-<incident>-<random>`: an approval names its incident, so the store finds it without an
/// index of its own, and no two proposals share an id.
fn approval_id(incident: &str) -> String {
    let suffix = new_id("x");
    format!(
        "apr-{}-{}",
        incident.trim_start_matches("inc-"),
        &suffix[2..10]
    )
}
use crate::escalation::{Escalation, Suggestion};
use crate::store::{Incident, IncidentStatus};
use crate::triage::Selection;
use serde_json::json;
use std::time::SystemTime;
use themis_core::fsm::Event;
use themis_core::identity::Identity;
use themis_core::policy::{ApprovalRequest, Plan};

impl Worker {
    /// Tell a human, park the incident, send the agent back to idle. With a plan, the request
    /// is made as the agent itself.
    pub(crate) async fn escalate(
        &mut self,
        incident: &mut Incident,
        reason: &str,
        selection: &Selection,
        evidence: Vec<String>,
        plan: Option<Plan>,
    ) -> Result<(), RuntimeError> {
        let requester = Identity::agent(&self.ctx.agent.def.name);
        self.propose(
            incident,
            reason,
            selection,
            evidence,
            plan,
            requester,
            Some(Event::Parked),
        )
        .await
    }

    /// Record the escalation (with its proposal, requested by `requester`) and deliver it,
    /// moving the agent by `then` (if any) once the record is written.
    ///
    /// One commit point covers the escalation and the agent's move: durable before the state
    /// write (the store is never ahead of the audit) and before anyone is told. It is shown
    /// at once (the console, the event stream); the channels (Slack) are sent to after the
    /// command's reply ([`Worker::deliver_queued`]), so a caller waits on no webhook and no
    /// second fsync for the delivery's record. A stop before that sends it at the next start,
    /// as any escalation with no delivery after it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn propose(
        &mut self,
        incident: &mut Incident,
        reason: &str,
        selection: &Selection,
        evidence: Vec<String>,
        plan: Option<Plan>,
        requester: Identity,
        then: Option<Event>,
    ) -> Result<(), RuntimeError> {
        let ctx = self.ctx.clone();
        let agent = &ctx.agent;
        let now = SystemTime::now();
        let proposal = plan.map(|plan| {
            ApprovalRequest::new(
                approval_id(&incident.id),
                plan,
                requester,
                now,
                agent.def.policy.approval_ttl,
            )
        });
        let escalation = Escalation {
            agent: agent.def.name.clone(),
            incident: incident.id.clone(),
            alert: incident.alert.clone(),
            reason: reason.into(),
            reasoning: selection.reasoning.clone(),
            confidence: selection.confidence,
            selector: selection.selector.clone(),
            evidence,
            proposal: proposal.clone(),
            suggestion: match (&proposal, &selection.runbook) {
                (None, Some(runbook)) => Some(Suggestion {
                    runbook: runbook.clone(),
                    params: selection.params.clone().into_iter().collect(),
                }),
                _ => None,
            },
        };
        // Straight out of triage this is the incident's first state, and this record, durable
        // before any human hears of it, holds all of it with where the incident opened: a
        // start that finds no state written after it restores the incident from it
        // (`restore.rs`). So the state write need not be waited for — the decision pays one
        // fsync, not the audit's and then the store's — and is staged; after every
        // `STAGED_RUN` the store is made durable, so a start looks back a bounded way.
        let first = incident
            .opened_seq
            .filter(|_| incident.status == IncidentStatus::Triaging);
        let mut staged = first.is_some() && self.staged_run < STAGED_RUN;
        let mut data = json!({ "escalation": escalation, "message": escalation.to_text(), "provenance": super::provenance(agent, escalation.proposal.as_ref().map(|p| p.plan.runbook_id.as_str())) });
        if let Some(opened) = first {
            data["first_state"] = json!({ "opened_seq": opened, "opened_at": incident.opened_at, "escalated_at": now, "staged": staged });
        }
        let record =
            ctx.audit
                .append_deferred(&agent.def.name, Some(&incident.id), "escalation", data)?;
        let then = match then {
            Some(event) => Some(self.fsm.record(&ctx, &incident.id, event)?),
            None => None,
        };
        ctx.audit.commit()?;
        match first {
            // A record too large for the audit is kept as its digest: then it cannot restore
            // anything, and the state is saved durably.
            Some(_) if record.data.get("first_state").is_none() => staged = false,
            Some(opened_seq) => self.first_states.push(super::restore::FirstState {
                incident: incident.id.clone(),
                seq: record.seq,
                opened_seq,
            }),
            None => {}
        }
        incident.status = if proposal.is_some() {
            IncidentStatus::PendingApproval
        } else {
            IncidentStatus::Escalated
        };
        incident.proposal_record = proposal.as_ref().map(|_| record.at());
        incident.proposal = proposal;
        incident.reason = Some(reason.into());
        incident.proposed_at = Some(now);
        incident.escalated_at = Some(now);
        let written = if staged {
            ctx.store.stage(incident).await
        } else {
            ctx.store.save(incident).await
        };
        if let Err(e) = written {
            // The move is on the record: made, so the agent is not left behind it. Nobody
            // was told; the settle after this failure restores and delivers a first state.
            if let Some(planned) = then {
                self.fsm.apply(&ctx, planned).await;
            }
            return Err(e.into());
        }
        // A durable save makes every staged write before it durable (the store's writes are
        // one sequence): the next start need look back no further than this.
        self.staged_run = if staged { self.staged_run + 1 } else { 0 };
        self.track_expiry(incident);
        let escalation = escalation.redacted(ctx.audit.redactor());
        ctx.observer.escalation(&escalation);
        if let Some(planned) = then {
            self.fsm.apply(&ctx, planned).await;
        }
        self.undelivered.push((escalation, incident.id.clone()));
        Ok(())
    }

    /// Send the escalations this worker's last command made to the channels, and record each
    /// delivery: after the command's reply, before the worker takes anything else up.
    pub(crate) async fn deliver_queued(&mut self) {
        for (escalation, incident) in std::mem::take(&mut self.undelivered) {
            if let Err(e) = send(&self.ctx, &escalation, &incident).await {
                // Recorded in the escalation and not as delivered: the next start sends it.
                tracing::error!(agent = %self.ctx.agent.def.name, incident = %incident, error = %e, "an escalation's delivery could not be recorded");
            }
        }
    }

    /// Show the escalation and send it to every configured channel; deliveries are audited.
    pub(crate) async fn deliver(
        &self,
        escalation: &Escalation,
        incident: &str,
    ) -> Result<(), RuntimeError> {
        deliver(&self.ctx, escalation, incident).await
    }
}

/// [`Worker::deliver`], for whoever holds the agent's context. The delivery is on the record
/// even when no channel is configured (then it names none): a start looks for escalations no
/// delivery followed — those a stop cut off — and sends them again.
pub(crate) async fn deliver(
    ctx: &AgentCtx,
    escalation: &Escalation,
    incident: &str,
) -> Result<(), RuntimeError> {
    let escalation = &escalation.redacted(ctx.audit.redactor());
    ctx.observer.escalation(escalation);
    send(ctx, escalation, incident).await
}

/// Send a shown (and redacted) escalation to the channels and record the delivery.
async fn send(ctx: &AgentCtx, escalation: &Escalation, incident: &str) -> Result<(), RuntimeError> {
    let deliveries = ctx.channels.deliver(escalation).await;
    ctx.audit.append_deferred(
        &ctx.agent.def.name,
        Some(incident),
        "escalation-delivery",
        json!({ "deliveries": deliveries }),
    )?;
    Ok(())
}
