//! Replay at start: alerts the service accepted — each on the audit (`alert-accepted`, fsynced)
//! before its 200 — that a stop cut off before their agent took them up. Without this an alert
//! Alertmanager was told was accepted would be lost with the queue it sat in.
//!
//! Taken up means a record of the worker names the accepted record's sequence number as its
//! `intake` (`alert`, `alert-attached`, `alert-resolved`, `illegal-transition`,
//! `alert-take-failed`). The worker is
//! serial, so only its last `alert` can have been cut off between its record and the incident's
//! save; that one is replayed too when its incident was never saved. A replayed alert takes the
//! same path as a new one, so one whose incident is open attaches to it (deduplication by
//! fingerprint), never opening a second.

use super::worker::Worker;
use super::{AlertStatus, RuntimeError};
use crate::audit::Record;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use themis_core::types::Alert;

/// The most accepted-and-not-taken alerts one start replays (the newest): far more than the
/// queues hold, so only a log damaged by hand could reach it.
const MAX_REPLAY: usize = 10_000;

const TAKEN_BY: [&str; 5] = [
    "alert",
    "alert-attached",
    "alert-resolved",
    "illegal-transition",
    // Taken up and failed: on the record, not tried again at every start.
    "alert-take-failed",
];

impl Worker {
    /// Handle every accepted alert no record says was taken up; returns where the audit ended
    /// when the scan began, from which the backlog reader goes on.
    pub(crate) async fn replay_accepted(&mut self) -> Result<u64, RuntimeError> {
        let ctx = self.ctx.clone();
        let agent = ctx.agent.def.name.clone();
        // Nothing is accepted while the host starts (the intake is not open yet), so every
        // accepted record past this point is the backlog reader's.
        let end = std::fs::metadata(ctx.audit.path()).map_or(0, |m| m.len());
        let mut waiting: BTreeMap<u64, Record> = BTreeMap::new();
        // The last alert this agent opened an incident for: (its accepted record, the incident).
        let mut last_opened: Option<(Record, String)> = None;
        ctx.audit.scan(|record| {
            if record.agent != agent {
                return true;
            }
            if record.kind == "alert-accepted" {
                if waiting.len() == MAX_REPLAY {
                    waiting.pop_first();
                }
                waiting.insert(record.seq, record);
            } else if TAKEN_BY.contains(&record.kind.as_str())
                && let Some(intake) = record.data.get("intake").and_then(Value::as_u64)
                && let Some(accepted) = waiting.remove(&intake)
            {
                if record.kind == "alert" {
                    last_opened = record.incident.clone().map(|id| (accepted, id));
                } else {
                    last_opened = None;
                }
            }
            true
        })?;
        if let Some((accepted, incident)) = last_opened
            && ctx.store.get(&incident).await.is_err()
        {
            waiting.insert(accepted.seq, accepted);
        }
        for accepted in waiting.into_values() {
            ctx.audit.append(
                &agent,
                None,
                "alert-replayed",
                json!({ "intake": accepted.seq, "reason": "accepted before the host stopped and never taken up by the agent" }),
            )?;
            self.take_accepted(accepted).await?;
        }
        Ok(end)
    }

    /// Take up one accepted alert as its record holds it: a firing alert opens or joins an
    /// incident, a resolved one is recorded on its incident. A failure is on the record and
    /// the agent is idle again; only a failed audit write is an error.
    pub(crate) async fn take_accepted(&mut self, accepted: Record) -> Result<(), RuntimeError> {
        let ctx = self.ctx.clone();
        let agent = ctx.agent.def.name.clone();
        let seq = accepted.seq;
        let status: Option<AlertStatus> = accepted
            .data
            .get("status")
            .and_then(|s| serde_json::from_value(s.clone()).ok());
        let alert: Option<Alert> = accepted
            .data
            .get("alert")
            .and_then(|a| serde_json::from_value(a.clone()).ok());
        let (Some(status), Some(alert)) = (status, alert) else {
            ctx.audit.append(
                &agent,
                None,
                "alert-take-failed",
                json!({ "intake": seq, "error": "the accepted record does not hold an alert and its status" }),
            )?;
            return Ok(());
        };
        let handled = match status {
            AlertStatus::Firing => self.alert(alert, Some(seq)).await.map(|_| ()),
            AlertStatus::Resolved => self.resolved(alert, Some(seq)).await.map(|_| ()),
        };
        if let Err(e) = handled {
            tracing::error!(agent = %agent, intake = seq, error = %e, "an accepted alert failed");
            ctx.audit.append(
                &agent,
                None,
                "alert-take-failed",
                json!({ "intake": seq, "error": e.to_string() }),
            )?;
            self.ensure_idle().await?;
        }
        Ok(())
    }
}
