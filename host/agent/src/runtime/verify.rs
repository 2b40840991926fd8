//! Fix verification at run time: after a runbook succeeds the incident is `verifying`, and the
//! agent watches for the signals `themis_core::verify` judges by — the alert source's `resolved`
//! (and a re-fire), the runbook's metric after the settle time — until a verdict: `effective`
//! resolves the incident, `unknown` leaves it `unverified`, `ineffective` goes to a human. Every
//! verdict is audited, counted, and written on the run's history in the guard rails (an
//! ineffective run counts as a failure there).
//!
//! The watch lives on the incident in the store, so a restart loses nothing: recovery picks the
//! `verifying` incidents up again and the window keeps counting from the run.

use super::RuntimeError;
use super::worker::Command;
use super::worker::Worker;
use crate::store::{Incident, IncidentStatus};
use crate::triage::Selection;
use serde_json::json;
use std::time::Duration;
use themis_core::fsm::{Event, StateKind};
use themis_core::policy::Plan;
use themis_core::verify::{Effect, Expectation, Reading, Verdict, Watch};
use themis_sandbox::loaded::LoadedRunbook;
use tokio::sync::{mpsc, oneshot};

/// Fixes one agent verifies at once; past it a new one is judged `unknown` at once (said so).
pub const MAX_WATCHED: usize = 1024;

impl Worker {
    /// A runbook succeeded: the incident is `verifying` (saved before the machine moves, so a
    /// crash in between leaves a watch, not a lost fix), then judged at once if there is nothing
    /// to wait for, or parked until its signals arrive.
    pub(crate) async fn start_verification(
        &mut self,
        incident: &mut Incident,
        plan: &Plan,
        loaded: &LoadedRunbook,
    ) -> Result<(), RuntimeError> {
        let ctx = self.ctx.clone();
        let name = &ctx.agent.def.name;
        let spec = loaded.runbook.verify.clone();
        let (metric, unbound) = match spec.bound_metric(&plan.params) {
            Ok(m) => (m, None),
            Err(why) => (None, Some(why)),
        };
        let watch = Watch {
            runbook: plan.runbook_id.clone(),
            target: loaded.runbook.target(&plan.params),
            started: ctx.clock.secs(),
            spec,
            metric,
            alert_tracked: incident.alert.source.is_some(),
            resolved_at: None,
            refired_at: None,
            readings: Vec::new(),
            verdict: None,
        };
        ctx.audit.append(name, Some(&incident.id), "verification-start", json!({ "runbook": watch.runbook, "target": watch.target, "window_secs": watch.spec.window_secs, "settle_secs": watch.spec.settle_secs, "metric": watch.metric, "expect": watch.spec.expect.map(|e| e.to_string()), "alert_tracked": watch.alert_tracked, "metric_unbound": unbound }))?;
        incident.status = IncidentStatus::Verifying;
        incident.reason = None;
        incident.verification = Some(watch);
        ctx.store.save(incident).await?;
        self.fsm
            .fire(&ctx, &incident.id, Event::RunbookSucceeded)
            .await?;
        // Shadow mode changed nothing: there is no fix whose effect could be watched. And the
        // watches one agent keeps are bounded.
        let not_watched = if ctx.backends.is_dry_run() {
            Some(format!(
                "{} ran as a dry run (its changes recorded, not made): there is no fix to verify",
                plan.runbook_id
            ))
        } else if self.watching.len() >= MAX_WATCHED {
            Some(format!(
                "{} fixes are being verified already (the most one agent watches): not verified",
                self.watching.len()
            ))
        } else {
            None
        };
        if let Some(why) = not_watched {
            let verdict = Verdict {
                effect: Effect::Unknown,
                why,
            };
            return self.finish(incident, verdict).await;
        }
        self.check(incident).await?;
        if self.fsm.state.kind() == StateKind::Verifying {
            self.fsm.fire(&ctx, &incident.id, Event::Parked).await?;
        }
        Ok(())
    }

    /// Read the metric if it is due and judge; a verdict closes the watch.
    async fn check(&mut self, incident: &mut Incident) -> Result<bool, RuntimeError> {
        let ctx = self.ctx.clone();
        let now = ctx.clock.secs();
        let Some(watch) = incident.verification.as_mut() else {
            return Ok(false);
        };
        if let Some(promql) = watch.metric.clone().filter(|_| watch.wants_reading(now)) {
            let reading = read_metric(&ctx, &promql, watch.spec.expect, now).await;
            watch.record(reading);
            ctx.store.save(incident).await?;
        }
        let Some(verdict) = incident.verification.as_ref().and_then(|w| w.judge(now)) else {
            self.watching.insert(incident.id.clone());
            return Ok(false);
        };
        self.finish(incident, verdict).await?;
        Ok(true)
    }

    /// The verdict: on the incident, in the audit, in the metrics and the rails' history; an
    /// ineffective fix goes to a human.
    async fn finish(
        &mut self,
        incident: &mut Incident,
        verdict: Verdict,
    ) -> Result<(), RuntimeError> {
        let ctx = self.ctx.clone();
        let name = ctx.agent.def.name.clone();
        self.watching.remove(&incident.id);
        let Some(watch) = incident.verification.as_mut() else {
            return Ok(());
        };
        watch.verdict = Some(verdict.clone());
        let watch = watch.clone();
        ctx.audit.append(&name, Some(&incident.id), "verification", json!({ "runbook": watch.runbook, "target": watch.target, "effect": verdict.effect, "why": verdict.why, "resolved_at": watch.resolved_at, "refired_at": watch.refired_at, "readings": watch.readings }))?;
        ctx.observer
            .verification(&name, &watch.runbook, verdict.effect);
        if let Some(target) = &watch.target
            && let Some(breaker) = ctx
                .guard
                .verdict(
                    &ctx.agent.def.guard,
                    target,
                    &watch.runbook,
                    &incident.id,
                    verdict.effect,
                )
                .await?
        {
            ctx.audit.append(&name, Some(&incident.id), "guard-breaker-opened", json!({ "target": breaker.target, "runbook": breaker.runbook, "until": breaker.until, "why": breaker.why }))?;
            ctx.observer.breaker_opened(&name, &breaker);
        }
        match verdict.effect {
            Effect::Effective | Effect::Unknown => {
                incident.status = if verdict.effect == Effect::Effective {
                    IncidentStatus::Resolved
                } else {
                    IncidentStatus::Unverified
                };
                incident.reason = (verdict.effect == Effect::Unknown).then(|| verdict.why.clone());
                ctx.store.save(incident).await?;
                self.fsm
                    .fire(
                        &ctx,
                        &incident.id,
                        Event::FixVerified {
                            incident: incident.id.clone(),
                            effect: verdict.effect,
                        },
                    )
                    .await?;
                Ok(())
            }
            Effect::Ineffective => {
                let reason = format!(
                    "{} succeeded but did not fix the alert: {}. It counts as a failed run for the guard rails; a human decides what next",
                    watch.runbook, verdict.why
                );
                self.fsm
                    .fire(
                        &ctx,
                        &incident.id,
                        Event::FixIneffective {
                            incident: incident.id.clone(),
                            reason: reason.clone(),
                        },
                    )
                    .await?;
                let selection = Selection::escalate("verification", reason.clone());
                let evidence = watch
                    .readings
                    .iter()
                    .map(|r| match r.value {
                        Some(v) => format!(
                            "{} = {v} (+{}s)",
                            watch.metric.as_deref().unwrap_or(""),
                            r.at.saturating_sub(watch.started)
                        ),
                        None => format!(
                            "{}: {} (+{}s)",
                            watch.metric.as_deref().unwrap_or(""),
                            r.missing.as_deref().unwrap_or("no data"),
                            r.at.saturating_sub(watch.started)
                        ),
                    })
                    .collect();
                self.escalate(incident, &reason, &selection, evidence, None)
                    .await
            }
        }
    }

    /// The source said something of the alert whose fix is verified — it resolved
    /// ([`Watch::resolved`]), or it fires (a repeat before it resolved, a re-fire after: then
    /// the fix did not hold, [`Watch::firing`]): on the watch, saved, then judged.
    pub(crate) async fn verification_signal(
        &mut self,
        incident: &mut Incident,
        signal: fn(&mut Watch, u64),
    ) -> Result<(), RuntimeError> {
        let now = self.ctx.clock.secs();
        if let Some(w) = incident.verification.as_mut() {
            signal(w, now);
        }
        self.ctx.store.save(incident).await?;
        self.check(incident).await.map(|_| ())
    }

    /// Look at every fix being verified; the number of verdicts reached.
    pub(crate) async fn verify_watched(&mut self) -> Result<usize, RuntimeError> {
        let mut decided = 0;
        let ids: Vec<String> = self.watching.iter().cloned().collect();
        for id in ids {
            let mut incident = match self.ctx.store.get(&id).await {
                Ok(i) => i,
                Err(e) => {
                    // Unreadable or changed outside Themis: reported, never judged.
                    tracing::warn!(incident = %id, error = %e, "a fix being verified cannot be read");
                    self.watching.remove(&id);
                    continue;
                }
            };
            if incident.status != IncidentStatus::Verifying {
                self.watching.remove(&id);
                continue;
            }
            if self.check(&mut incident).await? {
                decided += 1;
            }
        }
        Ok(decided)
    }
}

/// The longest one verification read may take, whatever the metrics backend's own timeout.
const METRIC_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One read of the metric, never an error: what went wrong is the reading's `missing`. Several
/// series must all meet the expectation, so the one that does not is the value.
async fn read_metric(
    ctx: &super::ctx::AgentCtx,
    promql: &str,
    expect: Option<Expectation>,
    now: u64,
) -> Reading {
    let missing = |why: String| Reading {
        at: now,
        value: None,
        missing: Some(why),
    };
    let query = ctx.backends.metrics().query(promql);
    let Ok(answered) = tokio::time::timeout(METRIC_READ_TIMEOUT, query).await else {
        // The worker waits on this read: a backend that never answers must not hold it.
        return missing(format!(
            "the query did not answer within {} s",
            METRIC_READ_TIMEOUT.as_secs()
        ));
    };
    match answered {
        Err(e) => missing(format!("the query failed: {e}")),
        Ok(samples) if samples.is_empty() => missing("the query returned no series".into()),
        Ok(samples) => {
            let worst = samples
                .iter()
                .find(|s| expect.is_some_and(|e| !e.holds(s.value)))
                .unwrap_or(&samples[0]);
            Reading {
                at: now,
                value: Some(worst.value),
                missing: None,
            }
        }
    }
}

/// Ask the agent to look at its watches every `every`, for as long as it runs (a weak sender:
/// the tick never keeps a stopped runtime alive). A busy agent's full queue skips a tick.
pub(crate) async fn tick(tx: mpsc::WeakSender<Command>, every: Duration) {
    let mut interval = tokio::time::interval(every.max(Duration::from_millis(100)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(tx) = tx.upgrade() else { return };
        let (reply, answer) = oneshot::channel();
        match tx.try_send(Command::Verify { reply }) {
            Ok(()) => {
                drop(tx);
                if let Ok(Err(e)) = answer.await {
                    tracing::warn!(error = %e, "verifying fixes failed; the next tick tries again");
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}
