//! Restore at start: incidents whose first state — the escalation straight out of triage — is
//! on the audit but not in the store. That state is staged, not waited for on the disk
//! (`escalate.rs`), so a power loss can take it back; and a stop between the record and the
//! write leaves the same. The escalation record holds the whole of it (the alert, the reason,
//! the proposal a human may already hold), durable before anyone was told, so the incident is
//! rebuilt from its records and saved durably, on the record as `recovered`. Without this the
//! proposal a human was sent would name nothing, and the alert would be triaged again into a
//! second one.
//!
//! Only the newest [`WINDOW`] such escalations of each agent are looked at: a worker makes the
//! store durable after every `STAGED_RUN` staged (and a start before any), and a durable write
//! makes every staged one before it durable (the store's writes are one sequence), so none
//! older can be missing.

use super::RuntimeError;
use super::escalate::STAGED_RUN;
use super::worker::Worker;
use crate::audit::Record;
use crate::escalation::Escalation;
use crate::store::{Incident, IncidentStatus, StoreError};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::time::SystemTime;

/// How many of an agent's newest first-state escalations a start checks against the store.
pub(crate) const WINDOW: usize = 2 * STAGED_RUN;

/// A first-state escalation on the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FirstState {
    pub(crate) incident: String,
    /// The escalation record.
    pub(crate) seq: u64,
    /// The incident's `alert` record.
    pub(crate) opened_seq: u64,
}

/// The newest first-state escalations of one agent, from the start's one pass over the audit.
#[derive(Debug, Default)]
pub(crate) struct FirstStates {
    newest: VecDeque<FirstState>,
}

impl FirstStates {
    /// Look at one record of the agent, in order.
    pub(crate) fn see(&mut self, record: &Record) {
        match (record.kind.as_str(), &record.incident) {
            ("escalation", Some(incident)) => {
                if let Some(opened_seq) = record
                    .data
                    .pointer("/first_state/opened_seq")
                    .and_then(Value::as_u64)
                {
                    self.push(FirstState {
                        incident: incident.clone(),
                        seq: record.seq,
                        opened_seq,
                    });
                }
            }
            // Said already: not tried at every start.
            ("recovery-failed", Some(incident)) => self.forget(&[incident]),
            // Removed on purpose, closed long ago: not missing. The first record is written
            // durably before anything is removed.
            ("incidents-pruning" | "incidents-pruned", _) => {
                if let Some(gone) = record.data.get("incidents").and_then(Value::as_array) {
                    let gone: Vec<&str> = gone.iter().filter_map(Value::as_str).collect();
                    self.forget(&gone);
                }
            }
            // Any other record leaves it looked for: a later command's record (a refused
            // answer, an attached alert) may precede its write or have none, and a power loss
            // can take the staged state back under it.
            _ => {}
        }
    }

    /// One more, the newest; the oldest beyond [`WINDOW`] goes.
    pub(crate) fn push(&mut self, first: FirstState) {
        self.newest.push_back(first);
        if self.newest.len() > WINDOW {
            self.newest.pop_front();
        }
    }

    /// Incidents the store removed on purpose.
    pub(crate) fn forget<S: AsRef<str>>(&mut self, gone: &[S]) {
        self.newest
            .retain(|f| !gone.iter().any(|g| g.as_ref() == f.incident));
    }
}

impl Worker {
    /// Every first state on the record the store does not hold (it knows nothing of the
    /// incident, or only that it was triaging): rebuilt from the audit and saved durably. At
    /// start, and again after a failure that may have cut a first state's write off (`deliver`:
    /// then nobody was told yet, as the escalation is delivered after its state is written; a
    /// start sends cut-off escalations again itself). Returns how many were restored.
    pub(crate) async fn restore_first_states(
        &mut self,
        deliver: bool,
    ) -> Result<usize, RuntimeError> {
        let mut restored = 0;
        let newest: Vec<FirstState> = self.first_states.newest.iter().cloned().collect();
        for first in &newest {
            match self.ctx.store.get(&first.incident).await {
                Ok(held) if held.status != IncidentStatus::Triaging => continue,
                Ok(_) | Err(StoreError::UnknownIncident(_)) => {}
                // Held but changed outside Themis or unreadable: never written over; recovery
                // reports it.
                Err(StoreError::Tampered { .. } | StoreError::Corrupt { .. }) => continue,
                // The store failing: tried again at the next settle or start.
                Err(e) => return Err(e.into()),
            }
            if self.restore(first, deliver).await? {
                restored += 1;
            }
        }
        Ok(restored)
    }

    async fn restore(&mut self, first: &FirstState, deliver: bool) -> Result<bool, RuntimeError> {
        let ctx = self.ctx.clone();
        let agent = ctx.agent.def.name.clone();
        let records = read_first_state(&ctx.audit, &agent, first).await?;
        let Some((incident, escalation)) = rebuild(&agent, first, &records) else {
            tracing::error!(agent = %agent, incident = %first.incident, seq = first.seq, "a first-state escalation cannot be read back; its incident is not restored");
            ctx.audit.append(
                &agent,
                Some(&first.incident),
                "recovery-failed",
                json!({ "escalation_seq": first.seq, "reason": "the incident's state was not on disk at start and its escalation record cannot be read back: it is not restored; see the escalation on the record" }),
            )?;
            // Said once: reading it again will not go better.
            self.first_states.forget(&[&first.incident]);
            return Ok(false);
        };
        ctx.audit.append_deferred(
            &agent,
            Some(&incident.id),
            "recovered",
            json!({
                "action": "restore the incident from its escalation",
                "escalation_seq": first.seq,
                "status": incident.status,
                "reason": "the host stopped before the incident's state reached the disk; the escalation, recorded before anyone was told, holds it",
            }),
        )?;
        ctx.store.save(&incident).await?;
        self.track_expiry(&incident);
        if deliver {
            super::escalate::deliver(&ctx, &escalation, &incident.id).await?;
        }
        Ok(true)
    }
}

/// The incident's `alert`, `selection` and escalation records, read off the async threads.
async fn read_first_state(
    audit: &std::sync::Arc<crate::audit::AuditLog>,
    agent: &str,
    first: &FirstState,
) -> Result<Vec<Record>, RuntimeError> {
    let (audit, first) = (audit.clone(), first.clone());
    let read = tokio::task::spawn_blocking(move || {
        let mut kept = Vec::new();
        audit.scan_from(first.opened_seq, |r| {
            if r.seq > first.seq {
                return false;
            }
            let more = r.seq < first.seq;
            if r.incident.as_deref() == Some(first.incident.as_str())
                && matches!(r.kind.as_str(), "alert" | "selection" | "escalation")
            {
                kept.push(r);
            }
            more
        })?;
        Ok::<_, crate::audit::AuditError>(kept)
    })
    .await
    .map_err(|e| RuntimeError::Agent {
        agent: agent.to_owned(),
        message: format!("reading the audit to restore an incident failed: {e}"),
    })??;
    Ok(read)
}

/// The incident as its first escalation left it, and the escalation. The alert record gives the
/// intake it came from; without it (the audit's oldest segments removed) the escalation's
/// copy of the alert stands in.
fn rebuild(agent: &str, first: &FirstState, records: &[Record]) -> Option<(Incident, Escalation)> {
    let escalation_record = records
        .iter()
        .find(|r| r.seq == first.seq && r.kind == "escalation")?;
    let escalation: Escalation =
        serde_json::from_value(escalation_record.data.get("escalation")?.clone()).ok()?;
    if escalation.incident != first.incident || escalation.agent != agent {
        return None;
    }
    // As `propose` held them: the page and an adjustment compare `escalated_at` exactly.
    let at = |key: &str| -> Option<SystemTime> {
        serde_json::from_value(escalation_record.data.get("first_state")?.get(key)?.clone()).ok()
    };
    let escalated_at = at("escalated_at").or_else(|| time(&escalation_record.ts))?;
    let opening = records
        .iter()
        .find(|r| r.kind == "alert" && r.seq == first.opened_seq);
    let opened_at = at("opened_at")
        .or_else(|| opening.and_then(|r| time(&r.ts)))
        .unwrap_or(escalated_at);
    let mut incident = Incident::opened(
        first.incident.clone(),
        agent.to_owned(),
        escalation.alert.clone(),
        opened_at,
    );
    incident.opened_seq = Some(first.opened_seq);
    incident.last_intake = opening.and_then(|r| r.data.get("intake").and_then(Value::as_u64));
    incident.selection = records
        .iter()
        .rfind(|r| r.kind == "selection")
        .map(|r| r.data.clone());
    incident.status = if escalation.proposal.is_some() {
        IncidentStatus::PendingApproval
    } else {
        IncidentStatus::Escalated
    };
    incident.proposed_at = Some(escalated_at);
    incident.escalated_at = Some(escalated_at);
    incident.proposal_record = escalation.proposal.as_ref().map(|_| escalation_record.at());
    incident.proposal = escalation.proposal.clone();
    incident.reason = Some(escalation.reason.clone());
    Some((incident, escalation))
}

fn time(ts: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(ts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, Redactor};

    fn escalation(audit: &AuditLog, incident: &str, first_state: Option<u64>) -> Record {
        let mut data = json!({ "escalation": {} });
        if let Some(opened) = first_state {
            data["first_state"] = json!({ "opened_seq": opened, "staged": true });
        }
        audit
            .append("kafka", Some(incident), "escalation", data)
            .expect("append")
    }

    /// Only escalations that hold a first state are kept, the newest `WINDOW`; an incident the
    /// store removed on purpose is not looked for.
    #[test]
    fn a_start_looks_back_at_the_newest_first_states_but_not_at_pruned_incidents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit =
            AuditLog::open(&dir.path().join("audit.jsonl"), Redactor::default()).expect("audit");
        let mut found = FirstStates::default();
        found.see(&escalation(&audit, "inc-later", None));
        assert!(
            found.newest.is_empty(),
            "a later escalation holds no first state"
        );
        for n in 0..WINDOW + 3 {
            found.see(&escalation(&audit, &format!("inc-{n}"), Some(n as u64)));
        }
        assert_eq!(found.newest.len(), WINDOW);
        assert_eq!(found.newest[0].incident, "inc-3", "the oldest went first");
        let pruned = audit
            .append(
                "kafka",
                None,
                "incidents-pruned",
                json!({ "incidents": ["inc-3", "inc-10"] }),
            )
            .expect("append");
        found.see(&pruned);
        assert_eq!(found.newest.len(), WINDOW - 2);
        assert!(
            !found
                .newest
                .iter()
                .any(|f| f.incident == "inc-3" || f.incident == "inc-10")
        );
        // Later records of the incident leave it looked for (a refused answer writes no state;
        // an attached alert's record comes before its write); the pruning's intent does not.
        for kind in [
            "escalation-delivery",
            "transition",
            "approval-refused",
            "alert-attached",
        ] {
            found.see(
                &audit
                    .append("kafka", Some("inc-20"), kind, json!({}))
                    .expect("append"),
            );
        }
        assert!(found.newest.iter().any(|f| f.incident == "inc-20"));
        found.see(
            &audit
                .append(
                    "kafka",
                    None,
                    "incidents-pruning",
                    json!({ "incidents": ["inc-20"] }),
                )
                .expect("append"),
        );
        assert!(!found.newest.iter().any(|f| f.incident == "inc-20"));
        assert_eq!(found.newest.len(), WINDOW - 3);
        // One that could not be read back is said once, not at every start.
        found.see(
            &audit
                .append("kafka", Some("inc-21"), "recovery-failed", json!({}))
                .expect("append"),
        );
        assert!(!found.newest.iter().any(|f| f.incident == "inc-21"));
    }
}
