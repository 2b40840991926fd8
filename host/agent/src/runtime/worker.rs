//! One agent's serial worker: the only code that changes the agent's state machine and
//! incidents. It takes one command at a time from its bounded queue, so an alert for a busy
//! agent waits instead of failing a transition, and two answers to one approval are handled one
//! after the other (the second finds it claimed).

use super::backlog::{Backlog, BacklogReader};
use super::ctx::AgentCtx;
use super::fsm::Fsm;
use super::load::Agent;
use super::{AlertOutcome, RuntimeError, RuntimeParts};
use crate::store::Incident;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use themis_caps::Backends;
use themis_core::fsm::AgentState;
use themis_core::identity::Identity;
use themis_core::types::Alert;
use tokio::sync::{mpsc, oneshot, watch};

type Reply<T> = oneshot::Sender<Result<T, RuntimeError>>;

pub(crate) enum Command {
    /// An alert handed over directly (the CLI); the service's alerts come through the backlog.
    Alert {
        alert: Alert,
        reply: Reply<AlertOutcome>,
    },
    /// The source says this alert stopped firing.
    Resolved {
        alert: Alert,
        reply: Reply<Option<Incident>>,
    },
    Approve {
        id: String,
        by: Identity,
        shown: Option<String>,
        reply: Reply<Incident>,
    },
    Reject {
        id: String,
        by: Identity,
        reason: String,
        reply: Reply<Incident>,
    },
    Adjust {
        id: String,
        by: Identity,
        runbook: String,
        params: BTreeMap<String, String>,
        /// When the host received it, before it waited in the queue.
        sent: std::time::SystemTime,
        /// The incident's `escalated_at` as its sender saw it, if it said.
        seen: Option<String>,
        reply: Reply<Incident>,
    },
    /// Look at the fixes being verified: read metrics, close windows. Replies with the number
    /// of verdicts reached.
    Verify { reply: Reply<usize> },
}

pub(crate) struct Worker {
    pub(crate) ctx: Arc<AgentCtx>,
    pub(crate) fsm: Fsm,
    /// Incidents whose fix is being verified (bounded: see `verify::MAX_WATCHED`).
    pub(crate) watching: BTreeSet<String>,
    /// Pending proposals and when each expires (bounded: see `withdraw::MAX_EXPIRING`).
    pub(crate) expiring: std::collections::BTreeMap<String, std::time::SystemTime>,
    /// The service's accepted alerts waiting on the audit, and where this worker reads them.
    pub(crate) backlog: Option<(Arc<Backlog>, BacklogReader)>,
    /// When and what closed incidents leave the store (`None`: every one stays).
    pub(crate) retention: Option<super::retention::Retention>,
    /// A command or an alert failed half-way (a store or audit error): an incident may be
    /// left `executing` or `triaging` with nothing running it. Between two commands nothing of
    /// this agent runs, so the start's recovery is run again before the next one (at the
    /// latest at the next tick) rather than at the next restart.
    pub(crate) unsettled: bool,
    /// An accepted alert whose taking up failed on a store or audit error: taken up again,
    /// before anything after it, once the failure may have passed. Never dropped: the intake
    /// answered 200 for it.
    pub(crate) held: Option<Held>,
    /// Escalations whose incident was only staged since the store was last made durable by
    /// this worker (a save or a sync; see `escalate::STAGED_RUN`).
    pub(crate) staged_run: usize,
    /// The newest first-state escalations on the record, which a start or a settle checks
    /// against the store (`restore.rs`).
    pub(crate) first_states: super::restore::FirstStates,
    /// Escalations of the command in hand, shown but not yet sent to the channels: sent once
    /// its reply is out (`escalate::Worker::deliver_queued`), so never more than one command's.
    pub(crate) undelivered: Vec<(crate::escalation::Escalation, String)>,
}

/// An accepted alert waiting to be taken up again, and when.
pub(crate) struct Held {
    record: crate::audit::Record,
    attempts: u32,
    due: std::time::Instant,
}

/// How many times a held alert is tried in all (about four minutes of waits) before it is
/// recorded as failed, so one alert the store keeps failing on does not hold up the rest.
const MAX_HOLDS: u32 = 8;

/// The wait before a held alert is tried again: a second, doubling to a minute.
fn hold_for(attempts: u32) -> std::time::Duration {
    std::time::Duration::from_secs(1u64 << attempts.min(6)).min(std::time::Duration::from_secs(60))
}

impl Worker {
    pub(crate) async fn new(
        parts: &RuntimeParts,
        agent: Arc<Agent>,
        backends: Backends,
        guard: Arc<super::guard::Guard>,
        clock: themis_core::clock::Clock,
    ) -> Result<(Worker, watch::Receiver<AgentState>), RuntimeError> {
        // The saved state is a hint for recovery; a tampered or unreadable one counts as
        // "unknown", and recovery treats every unfinished incident as interrupted anyway.
        let saved = match parts.store.agent_state(&agent.def.name).await {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(agent = %agent.def.name, error = %e, "the saved agent state is unusable; recovering from the incidents");
                parts.audit.append(
                    &agent.def.name,
                    None,
                    "state-unusable",
                    serde_json::json!({ "error": e.to_string() }),
                )?;
                AgentState::EscalatingHuman {
                    incident: String::new(),
                    reason: "unknown state at start".into(),
                }
            }
        };
        let (fsm, rx) = Fsm::new(saved);
        let destructive = Arc::new(agent.def.policy.destructive.clone());
        let ctx = AgentCtx {
            agent,
            sandbox: parts.sandbox.clone(),
            audit: parts.audit.clone(),
            store: parts.store.clone(),
            channels: parts.channels.clone(),
            observer: parts.observer.clone(),
            backends,
            destructive,
            guard,
            unhandled: super::notices::Notices::default(),
            clock,
        };
        Ok((
            Worker {
                ctx: Arc::new(ctx),
                fsm,
                watching: BTreeSet::new(),
                expiring: Default::default(),
                backlog: None,
                retention: None,
                unsettled: false,
                held: None,
                staged_run: 0,
                first_states: Default::default(),
                undelivered: Vec::new(),
            },
            rx,
        ))
    }

    /// Commands first — an answer to an approval never waits behind an alert storm — then one
    /// alert of the backlog at a time; when neither has anything, wait for either. When the
    /// commands close (shutdown), what is on the backlog is taken up before the worker ends,
    /// unless the host stops leaving it on disk ([`Runtime::stop`]).
    pub(crate) async fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        let mut open = true;
        // What the start's recovery escalated.
        self.after_reply().await;
        loop {
            if open {
                match queue.try_recv() {
                    Ok(command) => {
                        self.command(command).await;
                        self.after_reply().await;
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
            }
            if self.backlog.as_ref().is_some_and(|(b, _)| b.left()) {
                break;
            }
            if self.next_from_backlog().await {
                continue;
            }
            if !open {
                break;
            }
            let wake = self.backlog.as_ref().map(|(b, _)| b.clone());
            let retry = self.held.as_ref().map(|h| h.due);
            tokio::select! {
                command = queue.recv() => match command {
                    Some(command) => {
                        self.command(command).await;
                        self.after_reply().await;
                    }
                    None => open = false,
                },
                () = async {
                    match &wake {
                        Some(b) => b.wake.notified().await,
                        None => std::future::pending().await,
                    }
                } => {}
                () = async {
                    match retry {
                        Some(due) => tokio::time::sleep_until(due.into()).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
        // Whatever the last turn left queued goes out before the worker ends.
        self.after_reply().await;
    }

    /// Take up the next accepted alert of the backlog, if there is one.
    async fn next_from_backlog(&mut self) -> bool {
        let Some((backlog, reader)) = &mut self.backlog else {
            return false;
        };
        let backlog = backlog.clone();
        // A held alert goes first, in its time: nothing after it is taken before it.
        let (record, replayed, attempts) = match self.held.take() {
            Some(held) if held.due > std::time::Instant::now() => {
                self.held = Some(held);
                return false;
            }
            Some(held) => (held.record, false, held.attempts),
            None => match reader.next() {
                Ok(Some((record, replayed))) => (record, replayed, 0),
                Ok(None) => return false,
                Err(e) => {
                    // Unreadable now; the alerts stay on the audit and a restart replays them.
                    tracing::error!(agent = %self.ctx.agent.def.name, error = %e, "the backlog cannot be read");
                    return false;
                }
            },
        };
        // Whatever way the turn ends, it ends at a commit point: what it wrote, and any
        // escalation the settle's recovery made, do not wait for the next turn.
        let taken = self.take_up(record, replayed, attempts).await;
        self.after_reply().await;
        if taken {
            backlog.took_one();
        }
        true
    }

    /// Settle, then take `record` up; false (the alert held for a later try) when it could
    /// not be.
    async fn take_up(
        &mut self,
        record: crate::audit::Record,
        replayed: bool,
        attempts: u32,
    ) -> bool {
        self.settle().await;
        if let Err(e) = self.ensure_idle().await {
            // Taking the alert up now would only record it refused by the state machine.
            tracing::error!(agent = %self.ctx.agent.def.name, error = %e, "the agent could not be made idle for the next alert; it waits");
            self.hold(record, attempts);
            return false;
        }
        if replayed
            && let Err(e) = self.ctx.audit.append(
                &self.ctx.agent.def.name,
                None,
                "alert-replayed",
                serde_json::json!({ "intake": record.seq, "reason": "accepted before the host stopped and never taken up by the agent" }),
            )
        {
            tracing::error!(agent = %self.ctx.agent.def.name, error = %e, "a replayed alert could not be recorded; it waits");
            self.hold(record, attempts);
            return false;
        }
        let seq = record.seq;
        let last_try = attempts + 1 >= MAX_HOLDS;
        let failed = match self.take_accepted(record.clone(), last_try).await {
            Ok(super::replay::Taken::Done) => None,
            Ok(super::replay::Taken::Again(e)) | Err(e) => Some(e),
        };
        if let Some(e) = failed {
            // `hold` marks the worker unsettled: recovery runs before the next try.
            tracing::error!(agent = %self.ctx.agent.def.name, intake = seq, error = %e, "an accepted alert could not be taken up; it is taken up again after recovery");
            self.hold(record, attempts);
            return false;
        }
        true
    }

    async fn command(&mut self, command: Command) {
        {
            // A command that failed half-way (a store or audit error) can leave the agent
            // mid-move: recover as at start, then return to idle before taking the next one.
            // Never wedge.
            self.settle().await;
            if let Err(e) = self.ensure_idle().await {
                reply_error(command, e);
                return;
            }
            match command {
                Command::Alert { alert, reply } => {
                    let outcome = self.alert(alert, None).await;
                    let _ = reply.send(self.settled(outcome));
                }
                Command::Resolved { alert, reply } => {
                    let outcome = self.resolved(alert, None).await;
                    let _ = reply.send(self.settled(outcome));
                }
                Command::Approve {
                    id,
                    by,
                    shown,
                    reply,
                } => {
                    let outcome = self.approve(&id, by, shown).await;
                    let outcome = self.answered(outcome, &id).await;
                    let _ = reply.send(outcome);
                }
                Command::Reject {
                    id,
                    by,
                    reason,
                    reply,
                } => {
                    let outcome = self.reject(&id, by, &reason).await;
                    let outcome = self.answered(outcome, &id).await;
                    let _ = reply.send(outcome);
                }
                Command::Adjust {
                    id,
                    by,
                    runbook,
                    params,
                    sent,
                    seen,
                    reply,
                } => {
                    let outcome = self
                        .adjust(&id, by, &runbook, &params, sent, seen.as_deref())
                        .await;
                    let outcome = self.answered(outcome, &id).await;
                    let _ = reply.send(outcome);
                }
                Command::Verify { reply } => {
                    let outcome = match self.verify_watched().await {
                        Ok(decided) => match self.expire_due().await {
                            Ok(_) => self.prune_due().await.map(|_| decided),
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(self.settled(outcome));
                }
            }
        }
    }

    /// Once a command's reply is out (or an alert of the backlog is handled): its escalations
    /// go to the channels, and what it wrote is made durable — nothing waits for the next
    /// command to become so. After a full run of staged first states the store is made
    /// durable too; should that fail, the next first state is saved durably instead.
    pub(crate) async fn after_reply(&mut self) {
        self.deliver_queued().await;
        if let Err(e) = self.ctx.audit.commit() {
            tracing::error!(agent = %self.ctx.agent.def.name, error = %e, "the audit could not be made durable");
        }
        if self.staged_run >= super::escalate::STAGED_RUN {
            match self.ctx.store.sync().await {
                Ok(()) => self.staged_run = 0,
                Err(e) => {
                    tracing::warn!(agent = %self.ctx.agent.def.name, error = %e, "the store could not be made durable: the next first state is saved durably")
                }
            }
        }
    }

    /// Keep `record` to be taken up again after a wait.
    fn hold(&mut self, record: crate::audit::Record, attempts: u32) {
        self.unsettled = true;
        self.held = Some(Held {
            record,
            attempts: attempts.saturating_add(1),
            due: std::time::Instant::now() + hold_for(attempts),
        });
    }

    /// Run the start's recovery again if a failure may have left work half-done; until it
    /// succeeds, the next command tries again (the store or the audit may still be failing).
    async fn settle(&mut self) {
        if !self.unsettled {
            return;
        }
        // A first state whose write the failure cut off is restored before recovery looks.
        let settled = match self.restore_first_states(true).await {
            Ok(_) => self.recover().await,
            Err(e) => Err(e),
        };
        match settled {
            Ok(()) => self.unsettled = false,
            Err(e) => {
                tracing::error!(agent = %self.ctx.agent.def.name, error = %e, "unfinished work could not be recovered yet; trying again before the next command");
            }
        }
    }

    /// Whether `e` may have cut a command off half-way. A refusal (policy, a proposal answered
    /// already or not waiting) is decided before anything changes.
    pub(crate) fn note_failure(&mut self, e: &RuntimeError) {
        use crate::store::ClaimError;
        let refusal = matches!(
            e,
            RuntimeError::Approval(_)
                | RuntimeError::Claim(
                    ClaimError::AlreadyAnswered { .. }
                        | ClaimError::Withdrawn { .. }
                        | ClaimError::NotPending { .. }
                        | ClaimError::ProposalWaiting { .. }
                        | ClaimError::SentBefore { .. }
                )
        );
        if !refusal {
            self.unsettled = true;
        }
    }

    /// [`Self::committed`] for an answer to `id`: a failed one that left work half-done — the
    /// agent mid-move, or its incident `executing` or `triaging` with nothing running it — is
    /// noted for [`Self::settle`]. One refused before it changed anything is not: a stream of
    /// refused answers must not make the worker reread its whole store before each command.
    async fn answered<T>(
        &mut self,
        outcome: Result<T, RuntimeError>,
        id: &str,
    ) -> Result<T, RuntimeError> {
        let outcome = self.committed(outcome);
        if outcome.is_err() {
            let unfinished = self.fsm.state != AgentState::Idle
                || match self.incident_for(id).await {
                    Ok(incident) => matches!(
                        incident.status,
                        crate::store::IncidentStatus::Triaging
                            | crate::store::IncidentStatus::Executing
                    ),
                    Err(RuntimeError::Store(crate::store::StoreError::UnknownIncident(_))) => false,
                    Err(_) => true,
                };
            self.unsettled |= unfinished;
        }
        outcome
    }

    /// [`Self::committed`], noting a failure for [`Self::settle`].
    fn settled<T>(&mut self, outcome: Result<T, RuntimeError>) -> Result<T, RuntimeError> {
        let outcome = self.committed(outcome);
        if let Err(e) = &outcome {
            self.note_failure(e);
        }
        outcome
    }
}

impl Worker {
    /// A reply leaves the worker (an HTTP answer, a CLI's output): every record behind it is
    /// made durable first, and a reply whose records cannot be is an error instead.
    fn committed<T>(&self, outcome: Result<T, RuntimeError>) -> Result<T, RuntimeError> {
        let outcome = outcome?;
        self.ctx.audit.commit()?;
        Ok(outcome)
    }
}

fn reply_error(command: Command, e: RuntimeError) {
    match command {
        Command::Alert { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Command::Resolved { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Command::Verify { reply } => {
            let _ = reply.send(Err(e));
        }
        Command::Approve { reply, .. }
        | Command::Reject { reply, .. }
        | Command::Adjust { reply, .. } => {
            let _ = reply.send(Err(e));
        }
    }
}
