//! Intake: an alert becomes an incident (or joins the open one with its fingerprint), and the
//! agent starts triaging. The agent is idle here (the worker made sure), so `alert-received` is
//! legal; it is still checked before anything is saved, so an incident never exists that the
//! state machine did not take up.

use super::worker::Worker;
use super::{AlertOutcome, RuntimeError, new_id};
use crate::store::{Incident, IncidentStatus};
use serde_json::json;
use themis_core::fsm::{self, Event};
use themis_core::types::Alert;
use themis_core::verify::Watch;

impl Worker {
    pub(crate) async fn alert(
        &mut self,
        alert: Alert,
        intake: Option<u64>,
    ) -> Result<AlertOutcome, RuntimeError> {
        let ctx = self.ctx.clone();
        let name = ctx.agent.def.name.clone();
        let mut open = ctx.store.open_for(&name, &alert.fingerprint).await?;
        // Taken up already (an attempt a store or audit error cut off after the incident knew
        // it): not counted again.
        if let Some(known) = &open
            && intake.is_some()
            && known.last_intake == intake
        {
            return Ok(AlertOutcome::Attached(known.clone()));
        }
        if let Some(stale) = &open
            && self.expire_if_due(stale).await?.is_some()
        {
            // Its proposal expired unanswered: this firing alert is triaged afresh.
            open = None;
        }
        if let Some(mut open) = open {
            open.attached_alerts += 1;
            open.last_intake = intake.or(open.last_intake);
            ctx.audit.append_deferred(
                &name,
                Some(&open.id),
                "alert-attached",
                json!({ "alert": alert, "attached_alerts": open.attached_alerts, "intake": intake }),
            )?;
            if open.status == IncidentStatus::Verifying {
                self.verification_signal(&mut open, Watch::firing).await?;
            } else {
                ctx.store.save(&open).await?;
            }
            return Ok(AlertOutcome::Attached(open));
        }
        let id = new_id("inc");
        let received = Event::AlertReceived {
            incident: id.clone(),
        };
        if let Err(illegal) = fsm::transition(&self.fsm.state, &received) {
            // Not reachable while the worker keeps the agent idle between commands; refused, on
            // the record, and no incident is left behind.
            ctx.audit.append(
                &name,
                None,
                "illegal-transition",
                json!({ "from": self.fsm.state, "event": received, "error": illegal.to_string(), "alert": alert, "intake": intake }),
            )?;
            return Err(RuntimeError::Illegal {
                agent: name,
                source: illegal,
            });
        }
        let opened = ctx.audit.append_deferred(
            &name,
            Some(&id),
            "alert",
            json!({ "alert": alert, "fingerprint": alert.fingerprint, "intake": intake }),
        )?;
        let mut incident = Incident::opened(id.clone(), name.clone(), alert, ctx.clock.now());
        incident.opened_seq = Some(opened.seq);
        incident.last_intake = intake;
        // Not written yet: a triage that waits (probes, a model) stages it first so readers
        // see it meanwhile; one that decides at once writes it with its decision. A stop
        // before either leaves the alert on the record and no incident, which a start replays.
        self.fsm.fire(&ctx, &id, received).await?;
        self.triage(&mut incident).await?;
        Ok(AlertOutcome::Handled(incident))
    }

    /// The alert source says an alert stopped firing: recorded on its open incident (or on the
    /// record alone when none is open), never a reason to triage or act.
    pub(crate) async fn resolved(
        &mut self,
        alert: Alert,
        intake: Option<u64>,
    ) -> Result<Option<Incident>, RuntimeError> {
        let ctx = self.ctx.clone();
        let name = ctx.agent.def.name.clone();
        let open = ctx.store.open_for(&name, &alert.fingerprint).await?;
        let open_incident = open.is_some();
        // Themis may have closed the incident before the source saw the alert end (it often
        // has: the fix works, the next evaluation resolves it). The newest incident of the
        // fingerprint still learns when the source said so, once.
        let target = match open {
            Some(i) => Some(i),
            None => ctx
                .store
                .latest_for(&name, &alert.fingerprint)
                .await?
                .filter(|i| i.source_resolved_at.is_none()),
        };
        if let Some(known) = &target
            && intake.is_some()
            && known.last_intake == intake
        {
            // Recorded on it already by an attempt a failure cut off; recovery withdraws a
            // proposal that attempt could not.
            return Ok(target);
        }
        ctx.audit.append_deferred(
            &name,
            target.as_ref().map(|i| i.id.as_str()),
            "alert-resolved",
            json!({ "alert": alert, "fingerprint": alert.fingerprint, "open_incident": open_incident, "intake": intake }),
        )?;
        let Some(mut incident) = target else {
            return Ok(None);
        };

        incident.source_resolved_at = Some(ctx.clock.now());
        incident.last_intake = intake.or(incident.last_intake);
        // Escalated with no plan, or interrupted: a human was told and nothing waits on this
        // episode any more. Left open, it would take the alert's next firing — weeks later,
        // perhaps — as one more notification of this one: no triage, nobody told.
        if matches!(
            incident.status,
            IncidentStatus::Escalated | IncidentStatus::Interrupted
        ) {
            let was = incident.status;
            let why = format!(
                "the alert resolved at its source while the incident was {} (a human had been told; no plan waited): closed — if it fires again, a new incident is triaged afresh{}",
                crate::store::status_name(was),
                incident
                    .reason
                    .as_deref()
                    .map(|r| format!(". Earlier: {r}"))
                    .unwrap_or_default()
            );
            ctx.audit.append(
                &name,
                Some(&incident.id),
                "incident-closed",
                json!({ "from": was, "to": IncidentStatus::Closed, "reason": why }),
            )?;
            incident.status = IncidentStatus::Closed;
            incident.reason = Some(why);
        }
        if incident.status == IncidentStatus::Verifying {
            self.verification_signal(&mut incident, Watch::resolved)
                .await?;
        } else {
            ctx.store.save(&incident).await?;
        }
        if incident.status == IncidentStatus::PendingApproval {
            let why = super::withdraw::resolved_before_answered(&incident);
            if let Some(withdrawn) = self.withdraw(&incident, why).await? {
                incident = withdrawn;
            }
        }
        Ok(Some(incident))
    }
}
