//! Replay at start: alerts the service accepted — each on the audit (`alert-accepted`, fsynced)
//! before its 200 — that a stop cut off before their agent took them up. Without this an alert
//! Alertmanager was told was accepted would be lost. The scan here finds them; the backlog
//! reader takes them first, audited `alert-replayed`, while the service already listens.
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
use std::collections::BTreeSet;
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

/// What a start found on the audit: the accepted alerts of this agent no record says were taken
/// up (by sequence number), the last sequence number it read, and where the log ended.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    pub(crate) untaken: BTreeSet<u64>,
    pub(crate) through: u64,
    pub(crate) end: crate::audit::Position,
}

/// What one pass over the audit found for one agent, before its start looks at the store.
#[derive(Debug, Default)]
pub(crate) struct Scanned {
    untaken: BTreeSet<u64>,
    /// The last alert the agent opened an incident for: (its accepted record, the incident).
    last_opened: Option<(u64, String)>,
}

/// One pass over the audit for every agent of the host (reading and checking every record is
/// what a start with a long audit spends its time on, so it is done once, not once per
/// agent): each agent's accepted alerts no record says were taken up, the last sequence number
/// read, and where the log ended. Nothing is accepted while the host starts (the intake is
/// not open yet), so every accepted record past `end` is new to the backlog readers.
pub(crate) fn scan_accepted(
    audit: &crate::audit::AuditLog,
    agents: &[String],
) -> Result<
    (
        std::collections::BTreeMap<String, Scanned>,
        u64,
        crate::audit::Position,
    ),
    RuntimeError,
> {
    let end = audit.end();
    let mut found: std::collections::BTreeMap<String, Scanned> = agents
        .iter()
        .map(|a| (a.clone(), Scanned::default()))
        .collect();
    let mut through = 0;
    audit.scan(|record| {
        through = record.seq;
        let Some(scanned) = found.get_mut(&record.agent) else {
            return true;
        };
        if record.kind == "alert-accepted" {
            if scanned.untaken.len() == MAX_REPLAY {
                scanned.untaken.pop_first();
            }
            scanned.untaken.insert(record.seq);
        } else if TAKEN_BY.contains(&record.kind.as_str())
            && let Some(intake) = record.data.get("intake").and_then(Value::as_u64)
            && scanned.untaken.remove(&intake)
        {
            scanned.last_opened = if record.kind == "alert" {
                record.incident.clone().map(|id| (intake, id))
            } else {
                None
            };
        }
        true
    })?;
    Ok((found, through, end))
}

impl Worker {
    /// Every accepted alert of this agent no record says was taken up, from the host's one
    /// scan. They are not handled here: the backlog reader takes them, in order and before
    /// anything accepted later, while the service already listens.
    pub(crate) async fn replay_accepted(
        &mut self,
        scanned: Scanned,
        through: u64,
        end: crate::audit::Position,
    ) -> Result<Replay, RuntimeError> {
        let Scanned {
            mut untaken,
            last_opened,
        } = scanned;
        if let Some((intake, incident)) = last_opened
            && self.ctx.store.get(&incident).await.is_err()
        {
            untaken.insert(intake);
        }
        Ok(Replay {
            untaken,
            through,
            end,
        })
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
