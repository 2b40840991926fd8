//! Recovery: what the host does with work it finds unfinished — at start (a crash or a kill
//! mid-incident) and before each command (a command that failed half-way). An incident cut off
//! while `triaging` is triaged again at start: its probes only read, so repeating them is safe,
//! and the alert was accepted, so dropping it would lose it. It never guesses where a runbook
//! stood and never resumes one blindly: an incident cut off while `executing` becomes
//! `interrupted`, a human is told what was running, and the agent returns to `idle` through legal
//! moves. (Resuming a runbook with postcondition checks is the durability work's.)

use super::RuntimeError;
use super::worker::Worker;
use crate::audit::{AuditLog, Newest};
use crate::escalation::Escalation;
use crate::store::{Incident, IncidentStatus};
use serde_json::json;
use themis_core::fsm::{AgentState, Event, StateKind};

impl Worker {
    /// At start: every incident of this agent still `triaging` or `executing`, and whatever
    /// the saved state names, was interrupted.
    pub(crate) async fn recover(&mut self) -> Result<(), RuntimeError> {
        let ctx = self.ctx.clone();
        let agent = &ctx.agent.def.name;
        let (incidents, problems) = ctx.store.scan().await?;
        for problem in problems {
            // A state file this host cannot trust is reported, never acted on.
            tracing::error!(agent = %agent, error = %problem, "a state file cannot be trusted");
            ctx.audit.append(
                agent,
                None,
                "state-tampered",
                serde_json::json!({ "error": problem.to_string() }),
            )?;
        }
        // Fixes being verified go on being verified: their watch is on the incident.
        self.watching = incidents
            .iter()
            .filter(|i| &i.agent == agent && i.status == IncidentStatus::Verifying)
            .map(|i| i.id.clone())
            .take(super::verify::MAX_WATCHED)
            .collect();
        for pending in incidents.iter().filter(|i| &i.agent == agent) {
            self.track_expiry(pending);
        }
        // A stop between recording a `resolved` on a waiting proposal and withdrawing it
        // leaves a plan that can still be approved for an alert that is gone: withdrawn now.
        let resolved_pending: Vec<Incident> = incidents
            .iter()
            .filter(|i| {
                &i.agent == agent
                    && i.status == IncidentStatus::PendingApproval
                    // Resolved after this proposal was made (an earlier episode's resolve,
                    // before a human adjusted the incident into a plan, is no reason).
                    && matches!(
                        (i.source_resolved_at, i.proposed_at),
                        (Some(resolved), Some(proposed)) if resolved >= proposed
                    )
            })
            .cloned()
            .collect();
        // A withdrawal a failure cut off after its claim: the proposal is used up, but nobody
        // was told and its record is missing. Finished now (the claim is not made again).
        let half_withdrawn: Vec<Incident> = incidents
            .iter()
            .filter(|i| &i.agent == agent && super::withdraw::half_withdrawn(i))
            .cloned()
            .collect();
        // A human's rejection cut off after its claim: finished on the record.
        let half_rejected: Vec<Incident> = incidents
            .iter()
            .filter(|i| &i.agent == agent && super::withdraw::half_rejected(i))
            .cloned()
            .collect();
        let unfinished: Vec<Incident> = incidents
            .into_iter()
            .filter(|i| &i.agent == agent)
            .filter(|i| {
                matches!(
                    i.status,
                    IncidentStatus::Triaging | IncidentStatus::Executing
                )
            })
            .collect();
        let was = self.fsm.state.clone();
        // The hint is written behind the moves (a kill can leave it a move or two behind): one
        // naming an incident that is not unfinished says nothing about those that are.
        let hint_stale = was
            .incident()
            .is_some_and(|named| !unfinished.iter().any(|i| i.id == named));
        for incident in unfinished {
            let same = was.incident() == Some(incident.id.as_str());
            let can_retriage = incident.status == IncidentStatus::Triaging
                && (hint_stale
                    || match was.kind() {
                        StateKind::Idle => true,
                        // Cut off between deciding to escalate and saving the proposal: nothing
                        // acted, and triage only reads.
                        StateKind::Triaging | StateKind::EscalatingHuman => same,
                        _ => false,
                    });
            if can_retriage && self.fsm.state == was {
                if hint_stale {
                    // Back to idle on the record first, from wherever the hint left it.
                    self.ensure_idle().await?;
                }
                self.retriage(incident).await?;
                continue;
            }
            let mut incident = incident;
            let not_resumed = if incident.status == IncidentStatus::Executing {
                match self.try_resume(&mut incident).await? {
                    None => continue,
                    Some(why) => Some(why),
                }
            } else {
                None
            };
            let last = self.fsm.state.clone();
            self.interrupt(incident, &last, not_resumed).await?;
        }
        self.ensure_idle().await?;
        for incident in resolved_pending {
            let why = super::withdraw::resolved_before_answered(&incident);
            self.withdraw(&incident, why).await?;
        }
        for incident in half_withdrawn {
            let why = "the host withdrew this proposal (its alert resolved, or it expired unanswered) and a failure cut the withdrawal off before it was recorded and told; finished now".to_owned();
            self.withdraw(&incident, why).await?;
        }
        for incident in half_rejected {
            self.finish_rejection(incident).await?;
        }
        // What recovery decided is durable before the host takes anything new.
        self.ctx.audit.commit()?;
        Ok(())
    }

    /// Triage an incident again that a stop cut off while triaging: on the record, then as if
    /// the alert had just come in.
    async fn retriage(&mut self, mut incident: Incident) -> Result<(), RuntimeError> {
        let ctx = self.ctx.clone();
        let agent = ctx.agent.def.name.clone();
        let opening = opening_record(&ctx.audit, &incident);
        ctx.audit.append(
            &agent,
            Some(&incident.id),
            "recovered",
            json!({ "status": incident.status, "state": self.fsm.state, "action": "triage again", "reason": "the host stopped while triaging this alert; triage only reads, so it is repeated from the start", "opening_record": opening }),
        )?;
        if self.fsm.state.kind() == StateKind::EscalatingHuman {
            self.fsm.fire(&ctx, &incident.id, Event::Parked).await?;
        }
        if self.fsm.state.kind() == StateKind::Idle {
            self.fsm
                .fire(
                    &ctx,
                    &incident.id,
                    Event::AlertReceived {
                        incident: incident.id.clone(),
                    },
                )
                .await?;
        }
        incident.selection = None;
        self.triage(&mut incident).await
    }
}

/// Whether the record that opened a triaging incident is still on the audit. Its commit point
/// comes before the incident is written (`AuditFirst::stage`), so it is there unless the audit
/// lost its tail behind the state (a log cut or replaced while the host was down): recovery
/// still triages the incident again, and its record says the chain lacks the opening.
fn opening_record(audit: &AuditLog, incident: &Incident) -> &'static str {
    let Some(seq) = incident.opened_seq else {
        return "not kept (an incident older than the field)";
    };
    let found = audit.find_from(
        seq,
        |r| r.seq == seq && r.kind == "alert" && r.incident.as_deref() == Some(&incident.id),
        Newest::records(1),
    );
    match found {
        Ok((records, _)) if !records.is_empty() => "on the audit",
        Ok(_) => "lost: the audit no longer holds it (its tail cut or replaced behind the state)",
        Err(e) => {
            tracing::warn!(incident = %incident.id, error = %e, "the audit could not be read for an incident's opening record");
            "unknown: the audit could not be read"
        }
    }
}

impl Worker {
    /// Before a command: the agent must be idle; if not, the state names the incident a failed
    /// command left behind.
    pub(crate) async fn ensure_idle(&mut self) -> Result<(), RuntimeError> {
        let was = self.fsm.state.clone();
        if was == AgentState::Idle {
            return Ok(());
        }
        let ctx = self.ctx.clone();
        let named = was.incident().unwrap_or_default().to_owned();
        match ctx.store.get(&named).await {
            Ok(incident)
                if matches!(
                    incident.status,
                    IncidentStatus::Triaging | IncidentStatus::Executing
                ) =>
            {
                self.interrupt(incident, &was, None).await
            }
            _ => {
                // Nothing unfinished under that name (it was saved as answered, or never saved):
                // still walk the machine back to idle, on the record.
                let reason = format!(
                    "the agent was left `{was}` with nothing unfinished to show for it; back to idle"
                );
                self.fsm
                    .fire(
                        &ctx,
                        &named,
                        Event::Interrupted {
                            incident: named.clone(),
                            reason,
                        },
                    )
                    .await?;
                self.fsm.fire(&ctx, &named, Event::Parked).await?;
                Ok(())
            }
        }
    }

    async fn interrupt(
        &mut self,
        mut incident: Incident,
        was: &AgentState,
        not_resumed: Option<super::resume::NotResumed>,
    ) -> Result<(), RuntimeError> {
        let ctx = self.ctx.clone();
        let agent = ctx.agent.def.name.clone();
        let cut_off = not_resumed.as_ref().and_then(|n| n.cut_off.clone());
        let not_resumed = not_resumed.map(|n| n.why);
        let what = match (&incident.status, &incident.executed) {
            _ if cut_off.is_some() => cut_off.unwrap_or_default(),
            (IncidentStatus::Executing, Some(plan)) => format!(
                "while running {} {} (last known state: {was})",
                plan.runbook_id, plan.runbook_version
            ),
            _ => format!("while {:?} (last known state: {was})", incident.status).to_lowercase(),
        };
        let reason = format!(
            "the host stopped {what}; nothing was resumed or repeated{}. Check the system by hand: what ran is in `themis audit show {}`",
            not_resumed
                .map(|why| format!(" (it could not be resumed: {why})"))
                .unwrap_or_default(),
            incident.id
        );
        ctx.audit.append(
            &agent,
            Some(&incident.id),
            "interrupted",
            json!({ "status": incident.status, "state": was, "executed": incident.executed, "reason": reason }),
        )?;
        self.fsm
            .fire(
                &ctx,
                &incident.id,
                Event::Interrupted {
                    incident: incident.id.clone(),
                    reason: reason.clone(),
                },
            )
            .await?;
        incident.status = IncidentStatus::Interrupted;
        incident.reason = Some(reason.clone());
        incident.proposal = None;
        incident.escalated_at = Some(std::time::SystemTime::now());
        ctx.store.save(&incident).await?;
        let escalation = Escalation {
            agent: agent.clone(),
            incident: incident.id.clone(),
            alert: incident.alert.clone(),
            reason,
            reasoning: "recovery after the host stopped mid-incident".into(),
            confidence: 0.0,
            selector: "runtime".into(),
            evidence: Vec::new(),
            proposal: None,
            suggestion: None,
        };
        self.deliver(&escalation, &incident.id).await?;
        self.fsm.fire(&ctx, &incident.id, Event::Parked).await?;
        Ok(())
    }
}
