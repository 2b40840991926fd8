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
use crate::escalation::Escalation;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use themis_core::types::Alert;

/// The fewest accepted-and-not-taken alerts one start replays per agent. A start replays as
/// many as the agent's backlog holds (`limits.queue`), so every alert the intake answered 200
/// is taken up; this floor covers a backlog made smaller since the alerts were accepted.
const MIN_REPLAY: usize = 10_000;

/// How many accepted-and-not-taken alerts a start replays per agent, for a backlog of
/// `queue_capacity`: never fewer than the backlog could hold.
pub(crate) fn replay_bound(queue_capacity: usize) -> usize {
    queue_capacity.max(MIN_REPLAY)
}

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
    /// Accepted alerts the replay's bound made the scan let go of (the oldest) that no later
    /// record took up: how many, and the first and last seq of the range they are in.
    dropped: Option<(u64, u64, u64)>,
    /// The last accepted alert the agent took up onto an incident: the only one a stop can
    /// have cut off between its record and the incident's save (the worker is serial).
    last_taken: Option<LastTaken>,
    /// Escalations on the record that no delivery record followed (a stop between the two):
    /// incident → the escalation's seq. Bounded: the newest are kept.
    undelivered: BTreeMap<String, u64>,
    /// The newest first-state escalations, for the start to check against the store.
    pub(crate) first_states: super::restore::FirstStates,
}

#[derive(Debug)]
struct LastTaken {
    /// Its `alert-accepted` record.
    intake: u64,
    incident: String,
    /// It opened the incident (else it was attached to one, or resolved it).
    opened: bool,
}

/// The most undelivered escalations one start's scan keeps per agent.
const MAX_UNDELIVERED: usize = 1024;
/// The most of them one start sends again per agent (the newest).
const MAX_REDELIVERED: usize = 16;

/// Send the escalation recorded at `seq` again, if its incident still waits for a human and
/// nothing after it on the record delivered or replaced it (recovery may have escalated the
/// incident anew since the start's scan).
async fn redeliver(
    ctx: &super::ctx::AgentCtx,
    incident: &str,
    seq: u64,
) -> Result<(), RuntimeError> {
    match ctx.store.get(incident).await {
        Ok(i) if i.status.awaits_human() => {}
        _ => return Ok(()),
    }
    // Reading the audit from the escalation on, and the fsync of the record below, are off
    // the async threads: this runs on the service's runtime while it takes alerts.
    let off_runtime = |e: tokio::task::JoinError| RuntimeError::Agent {
        agent: ctx.agent.def.name.clone(),
        message: format!("reading the audit for a cut-off escalation failed: {e}"),
    };
    let (audit, wanted) = (ctx.audit.clone(), incident.to_owned());
    let (found, superseded) = tokio::task::spawn_blocking(move || {
        let mut found = None;
        let mut superseded = false;
        audit.scan_from(seq, |r| {
            if r.seq == seq {
                found = Some(r);
                return true;
            }
            if r.incident.as_deref() == Some(wanted.as_str())
                && matches!(r.kind.as_str(), "escalation" | "escalation-delivery")
            {
                superseded = true;
                return false;
            }
            true
        })?;
        Ok::<_, crate::audit::AuditError>((found, superseded))
    })
    .await
    .map_err(off_runtime)??;
    if superseded {
        return Ok(());
    }
    let Some(escalation) =
        found.and_then(|r| serde_json::from_value::<Escalation>(r.data["escalation"].clone()).ok())
    else {
        tracing::warn!(agent = %ctx.agent.def.name, incident, seq, "an undelivered escalation cannot be read back; not sent again");
        return Ok(());
    };
    let (audit, agent, wanted) = (
        ctx.audit.clone(),
        ctx.agent.def.name.clone(),
        incident.to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        audit.append(
            &agent,
            Some(&wanted),
            "recovered",
            json!({ "action": "deliver the escalation", "escalation_seq": seq, "reason": "the host stopped after recording this escalation and before delivering it" }),
        )
    })
    .await
    .map_err(off_runtime)??;
    super::escalate::deliver(ctx, &escalation, incident).await
}

/// One pass over the audit for every agent of the host (reading and checking every record is
/// what a start with a long audit spends its time on, so it is done once, not once per
/// agent): each agent's accepted alerts no record says were taken up, the last sequence number
/// read, and where the log ended. Nothing is accepted while the host starts (the intake is
/// not open yet), so every accepted record past `end` is new to the backlog readers.
pub(crate) fn scan_accepted(
    audit: &crate::audit::AuditLog,
    agents: &[String],
    most: usize,
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
        scanned.first_states.see(&record);
        // The incident the last alert opened is first written with its decision, so a stop
        // before it leaves an alert no incident holds, replayed at start. Its decision on the
        // record — an escalation holding its first state (which a start restores if the store
        // lacks it) or a run's start (which follows a durable save) — its removal since, or
        // the alert recorded as failed says there is nothing to replay.
        if let Some(last) = &scanned.last_taken
            && last.opened
            && ((record.incident.as_deref() == Some(last.incident.as_str())
                && (record.kind == "execution-start"
                    || (record.kind == "escalation" && record.data.get("first_state").is_some())))
                || (record.kind == "alert-take-failed"
                    && record.data.get("intake").and_then(Value::as_u64) == Some(last.intake))
                || (matches!(
                    record.kind.as_str(),
                    "incidents-pruning" | "incidents-pruned"
                ) && record
                    .data
                    .get("incidents")
                    .and_then(Value::as_array)
                    .is_some_and(|gone| {
                        gone.iter()
                            .any(|g| g.as_str() == Some(last.incident.as_str()))
                    })))
        {
            scanned.last_taken = None;
        }
        match (record.kind.as_str(), &record.incident) {
            ("escalation", Some(incident)) => {
                scanned.undelivered.insert(incident.clone(), record.seq);
                if scanned.undelivered.len() > MAX_UNDELIVERED
                    && let Some(oldest) = scanned
                        .undelivered
                        .iter()
                        .min_by_key(|(_, seq)| **seq)
                        .map(|(id, _)| id.clone())
                {
                    scanned.undelivered.remove(&oldest);
                }
            }
            ("escalation-delivery", Some(incident)) => {
                scanned.undelivered.remove(incident);
            }
            _ => {}
        }
        if record.kind == "alert-accepted" {
            if scanned.untaken.len() >= most
                && let Some(oldest) = scanned.untaken.pop_first()
            {
                // Popped oldest first, so the first popped is the first dropped.
                let (count, _, last) = scanned.dropped.get_or_insert((0, oldest, oldest));
                *count += 1;
                *last = oldest;
            }
            scanned.untaken.insert(record.seq);
        } else if TAKEN_BY.contains(&record.kind.as_str())
            && let Some(intake) = record.data.get("intake").and_then(Value::as_u64)
        {
            // Taken up again (a retry after a failure, a replay): the newer record is the one a
            // start goes by.
            let again = scanned
                .last_taken
                .as_ref()
                .is_some_and(|last| last.intake == intake);
            if !scanned.untaken.remove(&intake) && !again {
                // One the bound made the scan let go of was taken up after all.
                if let Some((count, first, last)) = &mut scanned.dropped
                    && (*first..=*last).contains(&intake)
                {
                    *count = count.saturating_sub(1);
                }
                return true;
            }
            scanned.last_taken = match (record.kind.as_str(), &record.incident) {
                ("alert" | "alert-attached" | "alert-resolved", Some(incident)) => {
                    Some(LastTaken {
                        intake,
                        incident: incident.clone(),
                        opened: record.kind == "alert",
                    })
                }
                _ => None,
            };
        }
        true
    })?;
    for scanned in found.values_mut() {
        scanned.dropped = scanned.dropped.filter(|(count, ..)| *count > 0);
    }
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
            dropped,
            last_taken,
            undelivered,
            first_states: _,
        } = scanned;
        self.deliver_cut_off(undelivered);
        if let Some((count, first, last)) = dropped {
            // Never silent: these were answered 200 and will not be worked.
            let agent = self.ctx.agent.def.name.clone();
            tracing::error!(
                agent = %agent,
                count,
                first,
                last,
                "more accepted alerts wait than this start replays; the oldest are not taken up"
            );
            self.ctx.audit.append(
                &agent,
                None,
                "alerts-not-replayed",
                json!({
                    "count": count,
                    "first_intake": first,
                    "last_intake": last,
                    "replayed": untaken.len(),
                    "message": "more accepted alerts waited than the start replays (limits.queue): the oldest were not taken up; raise limits.queue back to what it was when they were accepted",
                }),
            )?;
        }
        // The last alert's record is written before its incident is saved: a stop between the
        // two leaves an alert no incident holds (it opened one), or one the incident does not
        // know of (it was attached to it, or resolved it) — taken up again. Only a store that
        // knows nothing of the incident, or an incident whose last alert is an older one, says
        // so; a store that cannot be read says nothing either way.
        if let Some(last) = last_taken {
            match self.ctx.store.get(&last.incident).await {
                Err(crate::store::StoreError::UnknownIncident(_)) if last.opened => {
                    untaken.insert(last.intake);
                }
                Ok(incident)
                    if !last.opened && incident.last_intake.is_some_and(|n| n < last.intake) =>
                {
                    untaken.insert(last.intake);
                }
                Ok(_) | Err(crate::store::StoreError::UnknownIncident(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Replay {
            untaken,
            through,
            end,
        })
    }

    /// Escalations a stop cut off between their record and their delivery: sent again, the
    /// newest [`MAX_REDELIVERED`], if a channel is configured (without one, the page and the
    /// API are where a human looks, and they read the state). Off the start, on a task of
    /// their own: Slack may be slow or down, and the host must take alerts meanwhile.
    fn deliver_cut_off(&self, undelivered: BTreeMap<String, u64>) {
        if self.ctx.channels.slack_webhook.is_none() || undelivered.is_empty() {
            return;
        }
        let mut newest: Vec<(u64, String)> =
            undelivered.into_iter().map(|(id, seq)| (seq, id)).collect();
        newest.sort_unstable_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        newest.truncate(MAX_REDELIVERED);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            for (seq, incident) in newest {
                if let Err(e) = redeliver(&ctx, &incident, seq).await {
                    tracing::warn!(agent = %ctx.agent.def.name, incident = %incident, seq, error = %e, "a cut-off escalation could not be sent again");
                }
            }
        });
    }

    /// Take up one accepted alert as its record holds it: a firing alert opens or joins an
    /// incident, a resolved one is recorded on its incident. A failure is on the record and
    /// the agent is idle again; only a failed audit write is an error.
    pub(crate) async fn take_accepted(
        &mut self,
        accepted: Record,
        last_try: bool,
    ) -> Result<Taken, RuntimeError> {
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
            return Ok(Taken::Done);
        };
        // Kept for telling a human should the agent give up on it.
        let firing = (status == AlertStatus::Firing).then(|| alert.clone());
        let handled = match status {
            AlertStatus::Firing => self.alert(alert, Some(seq)).await.map(|_| ()),
            AlertStatus::Resolved => self.resolved(alert, Some(seq)).await.map(|_| ()),
        };
        if let Err(e) = handled {
            // The store or the audit failed: the alert is not on the record as taken, and is
            // taken up again once recovery has run (an incident it reached meanwhile knows it
            // by `last_intake`, so it is not counted twice).
            // Not for ever: an alert the store keeps failing on must not hold up every alert
            // of the agent behind it. The last try is recorded failed like any other.
            if passing(&e) && !last_try {
                return Ok(Taken::Again(e));
            }
            self.note_failure(&e);
            tracing::error!(agent = %agent, intake = seq, error = %e, "an accepted alert failed");
            // The service answered 200 for it, so its sender will not page anyone either:
            // the humans are told, after the record (the write-ahead rule) — once per alert
            // and window, within a budget, as a store that fails every alert would fail them all.
            let notice = firing.as_ref().map(|a| {
                ctx.unhandled
                    .judge(&a.name, &a.fingerprint, std::time::Instant::now())
            });
            let mut data = json!({ "intake": seq, "error": e.to_string() });
            if let Some(notice) = notice {
                data["notice"] = json!(match notice {
                    super::notices::Verdict::Tell => "told",
                    super::notices::Verdict::Repeat => "told already within the hour",
                    super::notices::Verdict::Suppressed =>
                        "over this hour's budget of not-handled messages",
                });
            }
            if let Err(e) = ctx.audit.append(&agent, None, "alert-take-failed", data) {
                // Not on the record, so not told: the next try judges it afresh.
                if let (Some(a), Some(super::notices::Verdict::Tell)) = (&firing, notice) {
                    ctx.unhandled.forget(&a.name, &a.fingerprint);
                }
                return Err(e.into());
            }
            if let Some(alert) = firing.filter(|_| notice == Some(super::notices::Verdict::Tell)) {
                let why = ctx.audit.redactor().redact_text(&e.to_string());
                tracing::error!(
                    "{}",
                    crate::escalation::unhandled_to_text(&agent, &alert, &why).trim_end()
                );
                let deliveries = ctx.channels.deliver_unhandled(&agent, &alert, &why).await;
                if !deliveries.is_empty() {
                    ctx.audit.append_deferred(
                        &agent,
                        None,
                        "alert-take-failed-escalated",
                        json!({ "intake": seq, "deliveries": deliveries }),
                    )?;
                }
            }
            self.ensure_idle().await?;
        }
        Ok(Taken::Done)
    }
}

/// What became of an accepted alert handed to the worker.
pub(crate) enum Taken {
    /// On the record as taken up: handled, or failed in a way trying again would repeat.
    Done,
    /// Not taken: the store or the audit failed; take it up again later.
    Again(RuntimeError),
}

/// A failure of the store or the audit that may pass (a disk, a database away) rather than of
/// the alert itself or of state that will read the same next time (changed outside Themis, a
/// store another host took over).
fn passing(e: &RuntimeError) -> bool {
    use crate::store::{ClaimError, StoreError};
    let store = |e: &StoreError| {
        matches!(
            e,
            StoreError::Io { .. }
                | StoreError::Database { .. }
                | StoreError::AuditNotDurable(_)
                | StoreError::Locked(_)
        )
    };
    match e {
        RuntimeError::Store(e) | RuntimeError::Claim(ClaimError::Store(e)) => store(e),
        RuntimeError::Audit(crate::audit::AuditError::Io { .. }) => true,
        RuntimeError::Backend(_) | RuntimeError::Stopped(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, Entry};
    use themis_core::redact::Redactor;

    /// Only failures that may pass hold an alert back; state that reads the same next time
    /// (changed outside Themis, taken over by another host) is recorded failed at once.
    #[test]
    fn only_a_failure_that_may_pass_holds_an_alert_back() {
        use crate::store::StoreError;
        let io = || std::io::Error::other("disk");
        assert!(passing(&RuntimeError::Store(StoreError::Io {
            path: "s".into(),
            source: io(),
        })));
        assert!(passing(&RuntimeError::Store(StoreError::Database {
            path: "s".into(),
            message: "connection refused".into(),
        })));
        assert!(passing(&RuntimeError::Audit(
            crate::audit::AuditError::Io {
                path: "a".into(),
                source: io(),
            }
        )));
        assert!(!passing(&RuntimeError::Store(StoreError::Tampered {
            path: "s".into(),
        })));
        assert!(!passing(&RuntimeError::Store(StoreError::UnknownIncident(
            "inc-1".into()
        ))));
        assert!(!passing(&RuntimeError::Agent {
            agent: "kafka".into(),
            message: "probe halted".into(),
        }));
    }

    fn entry(kind: &str, data: Value) -> Entry {
        Entry {
            agent: "kafka".into(),
            incident: None,
            kind: kind.into(),
            data,
        }
    }

    #[test]
    fn a_start_replays_every_untaken_alert_its_backlog_could_hold_and_counts_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = AuditLog::open(&dir.path().join("audit.jsonl"), Redactor::with_values(None))
            .expect("audit");
        let accepted: Vec<u64> = (0..6)
            .map(|n| {
                audit
                    .append("kafka", None, "alert-accepted", json!({ "n": n }))
                    .expect("append")
                    .seq
            })
            .collect();
        // The second one was taken up.
        audit
            .append_many(vec![entry("alert", json!({ "intake": accepted[1] }))])
            .expect("append");
        let agents = ["kafka".to_string()];

        // A bound the waiting alerts fit in (six waited at once): every one is replayed.
        let (found, ..) = scan_accepted(&audit, &agents, 6).expect("scan");
        let kafka = &found["kafka"];
        let mut want: BTreeSet<u64> = accepted.iter().copied().collect();
        want.remove(&accepted[1]);
        assert_eq!(kafka.untaken, want);
        assert_eq!(kafka.dropped, None);

        // A smaller one keeps the newest and counts the older ones it let go of that no record
        // took up after (the first and the third; the second was taken).
        let (found, ..) = scan_accepted(&audit, &agents, 3).expect("scan");
        let kafka = &found["kafka"];
        assert_eq!(
            kafka.untaken,
            BTreeSet::from([accepted[3], accepted[4], accepted[5]])
        );
        assert_eq!(kafka.dropped, Some((2, accepted[0], accepted[2])));

        // Let go of and then taken up, each one: nothing to report.
        for seq in [accepted[0], accepted[2]] {
            audit
                .append_many(vec![entry("alert", json!({ "intake": seq }))])
                .expect("append");
        }
        let (found, ..) = scan_accepted(&audit, &agents, 3).expect("scan");
        assert_eq!(found["kafka"].dropped, None);

        // An alert taken up twice (a retry after a failure cut the first try off before its
        // decision): the second try, decided, is what a start goes by, not the first.
        let again = audit
            .append("kafka", None, "alert-accepted", json!({ "n": 9 }))
            .expect("append")
            .seq;
        let taken = |incident: &str| Entry {
            incident: Some(incident.into()),
            ..entry("alert", json!({ "intake": again }))
        };
        audit.append_many(vec![taken("inc-first")]).expect("append");
        let (found, ..) = scan_accepted(&audit, &agents, 10).expect("scan");
        assert_eq!(
            found["kafka"]
                .last_taken
                .as_ref()
                .map(|l| l.incident.as_str()),
            Some("inc-first"),
            "cut off before its decision: replayed unless the store holds it"
        );
        audit
            .append_many(vec![taken("inc-second")])
            .expect("append");
        audit
            .append(
                "kafka",
                Some("inc-second"),
                "escalation",
                json!({ "first_state": { "opened_seq": again } }),
            )
            .expect("append");
        let (found, ..) = scan_accepted(&audit, &agents, 10).expect("scan");
        assert!(
            found["kafka"].last_taken.is_none(),
            "decided on the second try"
        );

        // The bound is never below what the backlog holds.
        assert_eq!(replay_bound(100_000), 100_000);
        assert_eq!(replay_bound(10), MIN_REPLAY);
    }
}
