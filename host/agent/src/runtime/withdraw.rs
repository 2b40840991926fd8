//! Proposals the host withdraws on its own account: one nobody answered before it expired, and
//! one whose alert its source resolved before anyone answered (running a destructive fix for an
//! alert that is gone would act on a system that no longer asks for it, and the fix would then
//! be judged against a `resolved` that came before it). A withdrawal claims the proposal like a
//! human's answer — the store's compare-and-swap — so a concurrent approval and a withdrawal
//! cannot both win; the incident closes as `rejected` with the reason, a human is told, and the
//! alert's next firing notification opens a new incident that is triaged and proposed afresh.

use super::RuntimeError;
use super::worker::Worker;
use crate::escalation::Escalation;
use crate::store::{Answer, AnswerKind, ClaimError, Incident, IncidentStatus};
use serde_json::json;
use std::time::SystemTime;
use themis_core::fsm::Event;
use themis_core::identity::Identity;

/// The most proposals one agent's worker keeps an expiry for in memory; past it, a proposal
/// still expires when its alert fires again, and the next start finds it.
pub(crate) const MAX_EXPIRING: usize = 16_384;

/// Why a proposal whose alert resolved at its source before anyone answered is withdrawn.
pub(crate) fn resolved_before_answered(incident: &Incident) -> String {
    format!(
        "the alert resolved at its source before anyone answered; the proposal {} is withdrawn — if it fires again, a new incident is triaged and proposed afresh",
        incident
            .proposal
            .as_ref()
            .map(|p| p.id.as_str())
            .unwrap_or_default()
    )
}

impl Worker {
    /// Withdraw `incident`'s pending proposal: `None` when there is none to withdraw (answered
    /// meanwhile, or none waiting).
    pub(crate) async fn withdraw(
        &mut self,
        incident: &Incident,
        why: String,
    ) -> Result<Option<Incident>, RuntimeError> {
        let ctx = self.ctx.clone();
        let name = ctx.agent.def.name.clone();
        let Some(proposal) = incident.proposal.clone() else {
            return Ok(None);
        };
        let answer = Answer {
            approval_id: proposal.id.clone(),
            kind: AnswerKind::Rejected,
            by: Identity::agent(&name),
            at: SystemTime::now(),
            execution_id: None,
        };
        let finishing = half_withdrawn(incident);
        // An earlier try may have recorded the withdrawal before the failure: its record, and
        // its reason (expired, resolved), stand; it is not recorded twice.
        let recorded = if finishing {
            recorded_withdrawal(&ctx, incident, &proposal.id)?
        } else {
            None
        };
        let why = recorded.clone().unwrap_or(why);
        let mut incident = if finishing {
            // Claimed by an earlier try that a failure cut off: never claimed twice.
            incident.clone()
        } else {
            match self.claim(incident, answer, IncidentStatus::Rejected).await {
                Ok(i) => i,
                Err(ClaimError::Store(e)) => return Err(e.into()),
                Err(_) => return Ok(None),
            }
        };
        if recorded.is_none() {
            ctx.audit.append(
                &name,
                Some(&incident.id),
                "proposal-withdrawn",
                json!({ "approval": proposal.id, "runbook_id": proposal.plan.runbook_id, "plan_digest": proposal.plan_digest, "reason": why }),
            )?;
        }
        self.fsm
            .fire(
                &ctx,
                &incident.id,
                Event::ApprovalRejected {
                    incident: incident.id.clone(),
                },
            )
            .await?;
        incident.reason = Some(why.clone());
        incident.proposal = None;
        ctx.store.save(&incident).await?;
        let notice = Escalation {
            agent: name,
            incident: incident.id.clone(),
            alert: incident.alert.clone(),
            reason: why,
            reasoning: format!(
                "the proposal {} ({} {}) was withdrawn",
                proposal.id, proposal.plan.runbook_id, proposal.plan.runbook_version
            ),
            confidence: 0.0,
            selector: "runtime".into(),
            evidence: Vec::new(),
            proposal: None,
            suggestion: None,
        };
        self.deliver(&notice, &incident.id).await?;
        Ok(Some(incident))
    }

    /// Withdraw it if its proposal expired unanswered; `Some` with the closed incident if so.
    pub(crate) async fn expire_if_due(
        &mut self,
        incident: &Incident,
    ) -> Result<Option<Incident>, RuntimeError> {
        let Some(proposal) = incident.proposal.as_ref() else {
            return Ok(None);
        };
        let now = SystemTime::now();
        if incident.status != IncidentStatus::PendingApproval || proposal.expires_at > now {
            return Ok(None);
        }
        let why = format!(
            "the proposal {} expired unanswered at {}; withdrawn — the alert's next firing notification opens a new incident and is triaged again",
            proposal.id,
            humantime::format_rfc3339_seconds(proposal.expires_at)
        );
        self.withdraw(incident, why).await
    }

    /// Remember when a proposal expires, so the tick withdraws it then.
    pub(crate) fn track_expiry(&mut self, incident: &Incident) {
        if let Some(p) = &incident.proposal
            && incident.status == IncidentStatus::PendingApproval
        {
            if self.expiring.len() >= MAX_EXPIRING {
                tracing::warn!(agent = %self.ctx.agent.def.name, incident = %incident.id, "too many proposals waiting to expire; this one expires when its alert fires again");
                return;
            }
            self.expiring.insert(incident.id.clone(), p.expires_at);
        }
    }

    /// At the tick: withdraw every tracked proposal whose time is up. Returns how many.
    pub(crate) async fn expire_due(&mut self) -> Result<usize, RuntimeError> {
        let now = SystemTime::now();
        let due: Vec<String> = self
            .expiring
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let mut withdrawn = 0;
        for id in due {
            self.expiring.remove(&id);
            match self.ctx.store.get(&id).await {
                Ok(incident) => {
                    if self.expire_if_due(&incident).await?.is_some() {
                        withdrawn += 1;
                    }
                }
                Err(e) => {
                    tracing::warn!(incident = %id, error = %e, "a proposal due to expire cannot be read");
                }
            }
        }
        Ok(withdrawn)
    }
}

/// Claimed by the host's own withdrawal, which a failure cut off before it was finished: the
/// finished one clears the proposal in the same write that records the reason.
pub(crate) fn half_withdrawn(incident: &Incident) -> bool {
    incident.status == IncidentStatus::Rejected
        && incident.answer.as_ref().is_some_and(|a| {
            a.by.via == themis_core::identity::Via::Agent
                && incident
                    .proposal
                    .as_ref()
                    .is_some_and(|p| p.id == a.approval_id)
        })
}

/// The reason of the `proposal-withdrawn` record of `approval_id`, if one is on the audit after
/// the proposal's own record.
fn recorded_withdrawal(
    ctx: &super::ctx::AgentCtx,
    incident: &Incident,
    approval_id: &str,
) -> Result<Option<String>, RuntimeError> {
    let Some(at) = &incident.proposal_record else {
        return Ok(None);
    };
    let mut found = None;
    ctx.audit.scan_from(at.seq, |r| {
        if r.kind == "proposal-withdrawn"
            && r.incident.as_deref() == Some(incident.id.as_str())
            && r.data["approval"] == approval_id
        {
            found = Some(
                r.data["reason"]
                    .as_str()
                    .unwrap_or("withdrawn by the host")
                    .to_owned(),
            );
            return false;
        }
        true
    })?;
    Ok(found)
}

/// A human's rejection a failure cut off after its claim: the store says rejected, by a human,
/// the proposal still on the incident, and the audit may lack the `rejection` record.
pub(crate) fn half_rejected(incident: &Incident) -> bool {
    incident.status == IncidentStatus::Rejected
        && incident.answer.as_ref().is_some_and(|a| {
            a.by.via != themis_core::identity::Via::Agent
                && incident
                    .proposal
                    .as_ref()
                    .is_some_and(|p| p.id == a.approval_id)
        })
}

impl Worker {
    /// Finish a rejection [`half_rejected`] found: its record (unless one is on the audit
    /// already; the reason the human gave was in the cut-off request and is not kept), the
    /// proposal cleared, saved. Nothing is claimed again: the claim holds.
    pub(crate) async fn finish_rejection(
        &mut self,
        mut incident: Incident,
    ) -> Result<(), RuntimeError> {
        let ctx = self.ctx.clone();
        let (Some(answer), Some(proposal)) = (incident.answer.clone(), incident.proposal.clone())
        else {
            return Ok(());
        };
        let mut recorded = false;
        if let Some(at) = &incident.proposal_record {
            ctx.audit.scan_from(at.seq, |r| {
                recorded = r.kind == "rejection"
                    && r.incident.as_deref() == Some(incident.id.as_str())
                    && r.data["answers"] == proposal.id.as_str();
                !recorded
            })?;
        }
        if !recorded {
            ctx.audit.append(
                &ctx.agent.def.name,
                Some(&incident.id),
                "rejection",
                serde_json::json!({
                    "approval": proposal.id, "answers": proposal.id, "by": answer.by,
                    "reason": null,
                    "recovered": "the host stopped between claiming this rejection and recording it; finished at start (the reason given was not kept)",
                    "provenance": super::provenance(&ctx.agent, Some(&proposal.plan.runbook_id)),
                }),
            )?;
        }
        incident.reason = Some(format!(
            "rejected by {} (the host stopped before the rejection was recorded; finished at start)",
            answer.by.name
        ));
        incident.proposal = None;
        ctx.store.save(&incident).await?;
        Ok(())
    }
}
