//! The agent runtime: a small facade over one serial worker per agent.
//!
//! [`Runtime::start`] loads and verifies every agent's catalog, asks the backend provider for each
//! agent's backends, recovers what a crash left unfinished, and starts the workers. Alerts are
//! routed to the agent that owns them and queued (bounded); approve, reject and adjust are
//! messages to the owning agent's worker, which claims the approval exactly once. Only a worker
//! changes its agent's state machine and incidents.
//!
//! The worker's code is split by phase: `intake` (alert → incident), `triage` (probes and the
//! selector), `plan` (a selection becomes a plan; policy judges it), `execute` (the runbook and
//! its follow-ups), `escalate` (a human is told), `answers` (approve, reject, adjust),
//! `recovery` (at start and after a failed command), `fsm` (every move audited), `journal`
//! (intents of mutating calls), `load` (agent definitions and catalogs).

mod answers;
pub mod audit_retention;
mod backlog;
mod ctx;
mod escalate;
mod execute;
mod fsm;
mod guard;
mod intake;
mod journal;
mod load;
mod notices;
mod plan;
mod recovery;
pub(crate) mod replay;
mod restore;
mod resume;
mod retention;
mod triage;
mod verify;
mod withdraw;
mod worker;

pub use load::{Agent, SelectorChoice, check_catalog};
pub use resume::{Started, resume_point};

use crate::audit::{self, AuditError, AuditLog};
use crate::def::AgentDef;
use crate::escalation::Channels;
use crate::observe::RuntimeObserver;
use crate::store::{ClaimError, Incident, IncidentStore, StoreError};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use themis_caps::provider::{BackendProvider, ProviderError};
use themis_core::clock::Clock;
use themis_core::fsm::{AgentState, IllegalTransition};
use themis_core::identity::Identity;
use themis_core::policy::ApprovalError;
use themis_core::types::Alert;
use themis_sandbox::Sandbox;
use tokio::sync::{mpsc, oneshot, watch};
use worker::{Command, Worker};

/// How the audit marks every record of a runtime started with `--allow-unsigned`.
pub const UNSIGNED_MODE: &str = "allow-unsigned";
/// Alerts waiting for a busy agent, per agent, before new ones are refused.
pub const DEFAULT_QUEUE_CAPACITY: usize = 100_000;

/// Commands (answers, verification ticks, the CLI's alerts) waiting per agent; a human's answer
/// waits for a place rather than being dropped.
const COMMANDS: usize = 64;

/// The refused alerts one `alert-refused` record lists (it counts them all).
const MAX_REFUSED_LISTED: usize = 100;
/// How often each agent looks at the fixes it is verifying (reads metrics, closes windows).
pub const DEFAULT_VERIFY_TICK: std::time::Duration = std::time::Duration::from_secs(15);

/// How a runtime starts.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Development only: load bundles without a signature (warned, and marked on every record).
    pub allow_unsigned: bool,
    pub selector: SelectorChoice,
    /// The service's accepted alerts waiting per agent (on disk, in its backlog) before the
    /// intake refuses more with a 429.
    pub queue_capacity: usize,
    /// What time it is (the system's, or a hand-moved one in scenario tests).
    pub clock: Clock,
    /// How often fixes being verified are looked at; `None`: only when asked
    /// ([`Runtime::verify_due`]), as scenario tests do.
    pub verify_tick: Option<std::time::Duration>,
    /// Where catalog bundles named by OCI reference are pulled to and kept (`None`: an agent
    /// naming one cannot load).
    pub bundle_cache: Option<PathBuf>,
    /// Closed incidents unchanged this long leave the store (the audit keeps them), looked at
    /// on the verify tick; `None` keeps every one.
    pub keep_closed: Option<std::time::Duration>,
    /// The audit's budget on disk: past it the oldest segments nothing open needs are removed
    /// (see `audit_retention`); `None` keeps every segment.
    pub audit_budget: Option<AuditBudget>,
}

/// How much audit the host keeps, and how often it looks.
#[derive(Debug, Clone, Copy)]
pub struct AuditBudget {
    pub max_bytes: u64,
    pub every: std::time::Duration,
}

impl AuditBudget {
    pub fn new(max_bytes: u64) -> AuditBudget {
        AuditBudget {
            max_bytes,
            every: audit_retention::EVERY,
        }
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            allow_unsigned: false,
            selector: SelectorChoice::default(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            clock: Clock::system(),
            verify_tick: Some(DEFAULT_VERIFY_TICK),
            bundle_cache: None,
            keep_closed: None,
            audit_budget: None,
        }
    }
}

/// What a runtime is built from.
pub struct RuntimeParts {
    pub sandbox: Arc<Sandbox>,
    pub agent_files: Vec<PathBuf>,
    pub audit: Arc<AuditLog>,
    pub store: Arc<dyn IncidentStore>,
    pub channels: Channels,
    pub observer: Arc<dyn RuntimeObserver>,
    /// Where each agent's backends come from (real, mocked, dry-run): configuration, not code.
    pub provider: Arc<dyn BackendProvider>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Definition(#[from] crate::def::AgentDefError),
    #[error("agent `{agent}`: {message}")]
    Agent { agent: String, message: String },
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error("agent `{agent}`: {source}; the move was audited and refused")]
    Illegal {
        agent: String,
        source: IllegalTransition,
    },
    #[error("approval refused: {0}")]
    Approval(#[from] ApprovalError),
    #[error(transparent)]
    Backend(#[from] ProviderError),
    #[error("agent `{0}` has stopped; restart the host")]
    Stopped(String),
    /// An answer was claimed and is on the record, and what it set going failed after that:
    /// not "nothing was done" — the host takes the incident up again on its own.
    #[error(
        "{answered}, but then: {source}. The host takes incident {incident} up again on its own at its next command or tick (see `themis audit show {incident}`); do not change the system by hand meanwhile"
    )]
    Unfinished {
        incident: String,
        answered: String,
        source: Box<RuntimeError>,
    },
}

/// What became of an alert.
#[derive(Debug, Clone)]
pub enum AlertOutcome {
    /// No agent owns this alert (recorded).
    Unrouted,
    /// The owning agent's queue was full: refused (recorded), the sender should retry.
    QueueFull { agent: String },
    /// An open incident with the same fingerprint absorbed it.
    Attached(Incident),
    /// A new incident, in the state the alert left it.
    Handled(Incident),
}

/// Whether the source says an alert is firing or has stopped.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// What became of an alert handed over without waiting for its handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// On the record and in the owning agent's queue.
    Queued { agent: String },
    /// No agent owns it (recorded).
    Unrouted,
    /// The owning agent's queue is full: refused (recorded); the sender should retry.
    QueueFull { agent: String },
}

/// One agent as the facade sees it.
struct Handle {
    def: Arc<AgentDef>,
    dry_run: bool,
    tx: mpsc::Sender<Command>,
    backlog: Arc<backlog::Backlog>,
    state: watch::Receiver<AgentState>,
}

/// An agent's name, domain and what it is doing now.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub name: String,
    pub domain: String,
    pub state: AgentState,
    /// Shadow mode: its mutations are recorded as "would do", never performed.
    pub dry_run: bool,
    /// Accepted alerts waiting on disk for it to take them up.
    pub backlog: u64,
}

pub struct Runtime {
    handles: Vec<Handle>,
    agents: Vec<Arc<Agent>>,
    audit: Arc<AuditLog>,
    store: Arc<dyn IncidentStore>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The verification ticks: stopped first on shutdown.
    tickers: Vec<tokio::task::JoinHandle<()>>,
    channels: Channels,
    observer: Arc<dyn RuntimeObserver>,
    unowned: notices::Notices,
    guard: Arc<guard::Guard>,
    audit_retention: Option<audit_retention::AuditRetention>,
}

impl Runtime {
    /// Load every agent, verify its catalog (each refused bundle audited), get its backends,
    /// recover what a previous run left unfinished, and start its worker.
    pub async fn start(
        parts: RuntimeParts,
        options: RuntimeOptions,
    ) -> Result<Runtime, RuntimeError> {
        let mut parts = parts;
        // Every state write is a commit point of the audit (the write-ahead rule).
        parts.store = Arc::new(crate::store::AuditFirst::new(
            parts.audit.clone(),
            parts.store,
        ));
        let agents = load::load_agents(&parts, &options).await?;
        let names: Vec<String> = agents.iter().map(|a| a.def.name.clone()).collect();
        let (mut scanned, through, end) = replay::scan_accepted(
            &parts.audit,
            &names,
            replay::replay_bound(options.queue_capacity),
        )?;
        let guard = Arc::new(
            guard::Guard::open(parts.store.clone(), &parts.audit, options.clock.clone()).await?,
        );
        // Whatever an earlier process staged (a kill leaves it in the OS's cache, a power
        // loss can still take it) is made durable before anything new is staged, so a crash
        // loop never adds up more than one run at risk per worker (`escalate::STAGED_RUN`).
        let staged_run = match parts.store.sync().await {
            Ok(()) => 0,
            Err(e) => {
                tracing::warn!(error = %e, "the store could not be made durable at start: each agent's next first state is saved durably");
                escalate::STAGED_RUN
            }
        };
        let mut handles = Vec::new();
        let mut tasks = Vec::new();
        let mut tickers = Vec::new();
        let mut loaded = Vec::new();
        for agent in agents {
            let agent = Arc::new(agent);
            let backends = parts.provider.backends(&agent.def.name, agent.def.domain)?;
            let dry_run = backends.is_dry_run();
            let (mut worker, state) = Worker::new(
                &parts,
                agent.clone(),
                backends,
                guard.clone(),
                options.clock.clone(),
            )
            .await?;
            worker.retention = options.keep_closed.map(retention::Retention::new);
            let mut scan = scanned.remove(&agent.def.name).unwrap_or_default();
            worker.first_states = std::mem::take(&mut scan.first_states);
            worker.staged_run = staged_run;
            // Before recovery, which then sees restored incidents as any waiting one.
            worker.restore_first_states(false).await?;
            worker.recover().await?;
            let replay = worker.replay_accepted(scan, through, end).await?;
            let backlog = Arc::new(backlog::Backlog::new(options.queue_capacity));
            backlog.preload(replay.untaken.len());
            let reader = backlog::BacklogReader::new(
                parts.audit.clone(),
                backlog.clone(),
                &agent.def.name,
                replay,
            )?;
            worker.backlog = Some((backlog.clone(), reader));
            let (tx, rx) = mpsc::channel(options.queue_capacity.clamp(1, COMMANDS));
            if let Some(every) = options.verify_tick {
                tickers.push(tokio::spawn(verify::tick(tx.downgrade(), every)));
            }
            handles.push(Handle {
                def: Arc::new(agent.def.clone()),
                dry_run,
                tx,
                backlog,
                state,
            });
            loaded.push(agent);
            // A worker writes the audit and the store synchronously (each record fsynced): it
            // runs on a thread of its own, never on the async runtime's threads, so a slow disk
            // never stalls the service's intake, answers or event streams.
            let runtime = tokio::runtime::Handle::current();
            tasks.push(tokio::task::spawn_blocking(move || {
                runtime.block_on(worker.run(rx))
            }));
        }
        let audit_retention = options.audit_budget.map(|budget| {
            let retention = audit_retention::AuditRetention {
                audit: parts.audit.clone(),
                store: parts.store.clone(),
                backlogs: handles.iter().map(|h| h.backlog.clone()).collect(),
                max_bytes: budget.max_bytes,
                one_at_a_time: Default::default(),
            };
            tickers.push(tokio::spawn(retention.clone().tick(budget.every)));
            retention
        });
        Ok(Runtime {
            audit_retention,
            handles,
            agents: loaded,
            audit: parts.audit,
            store: parts.store,
            tasks,
            tickers,
            channels: parts.channels,
            observer: parts.observer,
            unowned: notices::Notices::default(),
            guard,
        })
    }

    pub fn agents(&self) -> &[Arc<Agent>] {
        &self.agents
    }

    /// Each agent and what it is doing now.
    pub fn states(&self) -> Vec<AgentView> {
        self.handles
            .iter()
            .map(|h| AgentView {
                name: h.def.name.clone(),
                domain: h.def.domain.to_string(),
                state: h.state.borrow().clone(),
                dry_run: h.dry_run,
                backlog: h.backlog.depth(),
            })
            .collect()
    }

    /// The agent `alert` routes to, and how many more alerts its backlog takes now (`None`:
    /// no agent owns it).
    pub fn backlog_room(&self, alert: &Alert) -> Option<(String, u64)> {
        self.route(alert)
            .map(|h| (h.def.name.clone(), h.backlog.room()))
    }

    pub fn store(&self) -> &Arc<dyn IncidentStore> {
        &self.store
    }

    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// Bring the audit within its budget now, as the host does every so often (`None`: the
    /// runtime has no budget).
    pub async fn prune_audit(&self) -> Result<Option<audit_retention::Pass>, RuntimeError> {
        match &self.audit_retention {
            Some(r) => r.pass().await.map(Some),
            None => Ok(None),
        }
    }

    /// What the guard rails hold now: busy targets, open breakers, recent runs.
    pub async fn guard_book(&self) -> themis_core::guard::GuardBook {
        self.guard.snapshot().await
    }

    /// An approver clears a target's circuit breakers and cooldown (of one runbook, or all):
    /// `who` must be allowed to answer for an agent of the target's domain. Audited.
    pub async fn clear_guard(
        &self,
        target: &str,
        runbook: Option<&str>,
        who: &Identity,
    ) -> Result<Vec<themis_core::guard::Breaker>, RuntimeError> {
        let domain = target.split(':').next().unwrap_or_default();
        let owners: Vec<&Arc<Agent>> = self
            .agents
            .iter()
            .filter(|a| a.def.domain.to_string() == domain)
            .collect();
        let Some(first) = owners.first() else {
            return Err(RuntimeError::Agent {
                agent: "host".into(),
                message: format!(
                    "no agent of this host acts on `{domain}` targets (a target reads `<domain>:<what>`, as `themis guard list` shows it)"
                ),
            });
        };
        // Allowed if any agent of the domain would take this person's answer.
        if !owners
            .iter()
            .any(|a| a.def.policy.check_answerer(who, None).is_ok())
        {
            first.def.policy.check_answerer(who, None)?;
        }
        let (cleared, unheld) = self.guard.clear(target, runbook).await?;
        self.audit.append(
            &first.def.name,
            None,
            "guard-cleared",
            json!({ "target": target, "runbook": runbook, "by": who, "breakers": cleared, "unusable_hold_lifted": unheld }),
        )?;
        Ok(cleared)
    }

    /// The agent that owns an alert, if any.
    fn route(&self, alert: &Alert) -> Option<&Handle> {
        let labels: BTreeMap<String, String> = alert
            .labels
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        self.handles
            .iter()
            .find(|h| h.def.routes(&alert.name, &labels))
    }

    /// A firing alert nobody owns goes to the humans (once per window, within a budget): the
    /// log, the observer, Slack when configured; the delivery is audited.
    fn tell_unowned(&self, alert: Alert) {
        let verdict =
            self.unowned
                .judge(&alert.name, &alert.fingerprint, std::time::Instant::now());
        let record = |deliveries: Value, verdict: &str| json!({ "alertname": alert.name, "fingerprint": alert.fingerprint, "verdict": verdict, "deliveries": deliveries });
        match verdict {
            notices::Verdict::Repeat => {}
            notices::Verdict::Suppressed => {
                // Not a commit point: nothing leaves the process for it, and a storm of unowned
                // alerts must not cost one fsync each inside the intake's request.
                if let Err(e) = self.audit.append_deferred(
                    "intake",
                    None,
                    "unowned-alert-suppressed",
                    record(
                        json!([]),
                        "over this hour's budget of unowned-alert messages",
                    ),
                ) {
                    tracing::warn!("unowned alert not recorded: {e}");
                }
            }
            notices::Verdict::Tell => {
                tracing::warn!("{}", crate::escalation::unowned_to_text(&alert).trim_end());
                self.observer.unowned(&alert);
                let audit = self.audit.clone();
                let channels = self.channels.clone();
                let task = async move {
                    let deliveries = channels.deliver_unowned(&alert).await;
                    let data = json!({ "alertname": alert.name, "fingerprint": alert.fingerprint, "verdict": "told", "deliveries": deliveries });
                    if let Err(e) = audit.append("intake", None, "unowned-alert-escalated", data) {
                        tracing::warn!("unowned alert's escalation not recorded: {e}");
                    }
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(task);
                    }
                    Err(_) => tracing::warn!("no async runtime: the unowned alert was only logged"),
                }
            }
        }
    }

    /// Hand an alert to its agent without waiting for its handling (the service's intake): see
    /// [`Runtime::submit_many`].
    pub fn submit(
        &self,
        alert: Alert,
        status: AlertStatus,
        source: Value,
    ) -> Result<Submitted, RuntimeError> {
        let mut taken = self.submit_many(vec![(alert, status, source)])?;
        taken
            .pop()
            .ok_or_else(|| RuntimeError::Stopped("intake".into()))
    }

    /// Hand alerts to their agents without waiting for their handling (the service's intake):
    /// each is on the record — one write and one fsync for them all — before this returns, and
    /// waits there, in its agent's backlog on disk, until the agent takes it up (a `resolved`
    /// one is recorded on its incident and never starts triage). An agent whose backlog is full
    /// refuses them, on the record; the sender should retry. `source` says where each came
    /// from (e.g. Alertmanager's group key).
    pub fn submit_many(
        &self,
        incoming: Vec<(Alert, AlertStatus, Value)>,
    ) -> Result<Vec<Submitted>, RuntimeError> {
        let routed: Vec<(Alert, AlertStatus, Value, Option<&Handle>)> = incoming
            .into_iter()
            .map(|(alert, status, source)| {
                let alert = self.audit.redactor().redact_alert(alert);
                let handle = self.route(&alert);
                (alert, status, source, handle)
            })
            .collect();
        let mut wanted: BTreeMap<&str, usize> = BTreeMap::new();
        for (.., handle) in &routed {
            if let Some(h) = handle {
                *wanted.entry(h.def.name.as_str()).or_default() += 1;
            }
        }
        // Each agent takes what its backlog has room for, in order; the rest is refused.
        let mut room: BTreeMap<&str, (usize, usize)> = self
            .handles
            .iter()
            .filter_map(|h| {
                let n = wanted.get(h.def.name.as_str())?;
                Some((h.def.name.as_str(), (h.backlog.reserve(*n), 0)))
            })
            .collect();
        let mut entries = Vec::with_capacity(routed.len());
        let mut taken = Vec::with_capacity(routed.len());
        let mut unowned = Vec::new();
        let mut refused: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for (alert, status, source, handle) in routed {
            let Some(h) = handle else {
                if status == AlertStatus::Firing {
                    unowned.push(alert.clone());
                }
                entries.push(audit::Entry {
                    agent: "intake".into(),
                    incident: None,
                    kind: "alert-unrouted".into(),
                    data: json!({ "alert": alert, "status": status, "source": source }),
                });
                taken.push(Submitted::Unrouted);
                continue;
            };
            let agent = h.def.name.clone();
            let (granted, used) = room.entry(h.def.name.as_str()).or_default();
            if *used < *granted {
                *used += 1;
                entries.push(audit::Entry {
                    agent: agent.clone(),
                    incident: None,
                    kind: "alert-accepted".into(),
                    data: json!({ "alert": alert, "status": status, "source": source }),
                });
                taken.push(Submitted::Queued { agent });
            } else {
                refused.entry(agent.clone()).or_default().push(
                    json!({ "fingerprint": alert.fingerprint, "alertname": alert.name, "status": status }),
                );
                taken.push(Submitted::QueueFull { agent });
            }
        }
        // One record per agent for what its full backlog refused: a storm is not answered
        // with a storm of records.
        for (agent, alerts) in refused {
            let count = alerts.len();
            entries.push(audit::Entry {
                agent,
                incident: None,
                kind: "alert-refused".into(),
                data: json!({ "reason": "queue-full", "count": count, "alerts": alerts.into_iter().take(MAX_REFUSED_LISTED).collect::<Vec<_>>(), "message": "the agent's backlog of waiting alerts is full; the sender should retry" }),
            });
        }
        let written = self.audit.append_many(entries);
        for h in &self.handles {
            if let Some((granted, _)) = room.get(h.def.name.as_str()) {
                match &written {
                    Ok(_) => h.backlog.added(),
                    Err(_) => h.backlog.release(*granted),
                }
            }
        }
        written?;
        for alert in unowned {
            self.tell_unowned(alert);
        }
        Ok(taken)
    }

    /// Route an alert to its agent and wait until the agent has handled it (triaged, executed
    /// or escalated). Alerts for a busy agent wait in its queue.
    pub async fn handle_alert(&self, alert: Alert) -> Result<AlertOutcome, RuntimeError> {
        // Secrets in labels and annotations are scrubbed once, here, before anything keeps them.
        let alert = self.audit.redactor().redact_alert(alert);
        let Some(handle) = self.route(&alert) else {
            self.audit
                .append("intake", None, "alert-unrouted", json!({ "alert": alert }))?;
            return Ok(AlertOutcome::Unrouted);
        };
        let (reply, answer) = oneshot::channel();
        let name = handle.def.name.clone();
        match handle.tx.try_send(Command::Alert {
            alert: alert.clone(),
            reply,
        }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.audit.append(
                    &name,
                    None,
                    "alert-refused",
                    json!({ "alert": alert, "reason": "queue-full", "message": "the agent's queue of waiting alerts is full; the sender should retry" }),
                )?;
                return Ok(AlertOutcome::QueueFull { agent: name });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(RuntimeError::Stopped(name)),
        }
        answer.await.map_err(|_| RuntimeError::Stopped(name))?
    }

    /// The source says an alert stopped firing; wait until its agent has recorded it (and
    /// judged the fix it was verifying, if any). `None`: no incident of its agent knew it.
    pub async fn handle_resolved(&self, alert: Alert) -> Result<Option<Incident>, RuntimeError> {
        let alert = self.audit.redactor().redact_alert(alert);
        let Some(handle) = self.route(&alert) else {
            self.record_unrouted(&alert, AlertStatus::Resolved, Value::Null)?;
            return Ok(None);
        };
        self.ask(handle, |reply| Command::Resolved { alert, reply })
            .await
    }

    /// Every agent looks at the fixes it is verifying now (the tick does this on its own in a
    /// service). Returns how many verdicts were reached.
    pub async fn verify_due(&self) -> Result<usize, RuntimeError> {
        let mut decided = 0;
        for handle in &self.handles {
            decided += self.ask(handle, |reply| Command::Verify { reply }).await?;
        }
        Ok(decided)
    }

    /// A human approves a pending plan. `shown` is the plan digest the human was shown; the host
    /// refuses if it is not the digest of the plan as proposed.
    pub async fn approve(
        &self,
        approval_id: &str,
        by: Identity,
        shown: Option<String>,
    ) -> Result<Incident, RuntimeError> {
        let handle = self.owner(approval_id).await?;
        self.ask(handle, |reply| Command::Approve {
            id: approval_id.into(),
            by,
            shown,
            reply,
        })
        .await
    }

    /// A human rejects a pending plan: nothing runs.
    pub async fn reject(
        &self,
        approval_id: &str,
        by: Identity,
        reason: &str,
    ) -> Result<Incident, RuntimeError> {
        let handle = self.owner(approval_id).await?;
        self.ask(handle, |reply| Command::Reject {
            id: approval_id.into(),
            by,
            reason: reason.into(),
            reply,
        })
        .await
    }

    /// A human picks another runbook of the catalog or other parameters; the adjusted plan goes
    /// through the same policy (the adjuster becomes its requester).
    pub async fn adjust(
        &self,
        id: &str,
        by: Identity,
        runbook: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<Incident, RuntimeError> {
        self.adjust_seen(id, by, runbook, params, None).await
    }

    /// [`Runtime::adjust`] sent for the escalation the sender saw (`escalated_at`, as the
    /// read API shows it): refused if the incident was escalated again since.
    pub async fn adjust_seen(
        &self,
        id: &str,
        by: Identity,
        runbook: &str,
        params: &BTreeMap<String, String>,
        seen: Option<String>,
    ) -> Result<Incident, RuntimeError> {
        let sent = std::time::SystemTime::now();
        let handle = self.owner(id).await?;
        self.ask(handle, |reply| Command::Adjust {
            id: id.into(),
            by,
            runbook: runbook.into(),
            params: params.clone(),
            sent,
            seen,
            reply,
        })
        .await
    }

    /// The agent that owns an approval (`apr-…`) or incident (`inc-…`).
    async fn owner(&self, id: &str) -> Result<&Handle, RuntimeError> {
        let found = if id.starts_with("inc-") {
            self.store.get(id).await
        } else {
            self.store
                .by_approval(id)
                .await
                .and_then(|i| i.ok_or_else(|| StoreError::UnknownIncident(id.into())))
        };
        let incident = match found {
            Ok(i) => i,
            Err(e @ StoreError::Tampered { .. }) => {
                // Refused, and on the record: someone changed what this host wrote.
                self.audit.append(
                    "host",
                    None,
                    "state-tampered",
                    json!({ "answer_for": id, "error": e.to_string() }),
                )?;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        self.handles
            .iter()
            .find(|h| h.def.name == incident.agent)
            .ok_or_else(|| RuntimeError::Agent {
                agent: incident.agent.clone(),
                message: "no such agent is loaded".into(),
            })
    }

    /// An alert no agent owns, on the record.
    fn record_unrouted(
        &self,
        alert: &Alert,
        status: AlertStatus,
        source: Value,
    ) -> Result<(), RuntimeError> {
        self.audit.append(
            "intake",
            None,
            "alert-unrouted",
            json!({ "alert": alert, "status": status, "source": source }),
        )?;
        Ok(())
    }

    async fn ask<T>(
        &self,
        handle: &Handle,
        command: impl FnOnce(oneshot::Sender<Result<T, RuntimeError>>) -> Command,
    ) -> Result<T, RuntimeError> {
        let (reply, answer) = oneshot::channel();
        // A human's answer is never dropped for a full queue: it waits its turn.
        handle
            .tx
            .send(command(reply))
            .await
            .map_err(|_| RuntimeError::Stopped(handle.def.name.clone()))?;
        answer
            .await
            .map_err(|_| RuntimeError::Stopped(handle.def.name.clone()))?
    }

    /// Stop as a service does: each agent finishes what it has in hand (and the commands
    /// already sent) and leaves its backlog on disk, where the next start replays it. A stop
    /// takes as long as the slowest alert in hand, never the whole backlog.
    pub async fn stop(self) {
        for handle in &self.handles {
            handle.backlog.leave();
        }
        self.shutdown().await;
    }

    /// The stop of a runtime something still holds (an answer still running when the service
    /// must go): no agent takes up more of its backlog, and the agents' state hints and the
    /// audit are made durable. What still runs is cut off with the process; the next start's
    /// recovery takes it up, as after a kill.
    pub async fn stop_held(&self) {
        for ticker in &self.tickers {
            ticker.abort();
        }
        for handle in &self.handles {
            handle.backlog.leave();
        }
        if let Err(e) = self.store.flush().await {
            tracing::warn!(error = %e, "the agents' state hints could not be saved at the stop");
        }
        // The commit waits for the disk: off the async threads.
        let audit = self.audit.clone();
        match tokio::task::spawn_blocking(move || audit.commit()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the audit's last records could not be made durable at the stop");
            }
            Err(e) => {
                tracing::error!(error = %e, "the audit's last records could not be made durable at the stop");
            }
        }
    }

    /// Stop once every agent has finished its commands and taken up its whole backlog (a
    /// one-shot command's alerts are all handled before it exits).
    pub async fn shutdown(self) {
        for ticker in &self.tickers {
            ticker.abort();
        }
        drop(self.handles);
        for task in self.tasks {
            let _ = task.await;
        }
        if let Err(e) = self.store.flush().await {
            tracing::warn!(error = %e, "the agents' state hints could not be saved at the stop");
        }
    }
}

/// A new id: `<prefix>-` and 16 random hex digits, unique across processes and restarts.
fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: fall back to the clock and pid, still unique in practice.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = ((nanos as u64) ^ u64::from(std::process::id()).rotate_left(40)).to_be_bytes();
    }
    format!("{prefix}-{}", hex::encode(bytes))
}

/// A provenance value for audit records (null when the runbook is unknown).
fn provenance(agent: &Agent, runbook: Option<&str>) -> Value {
    serde_json::to_value(agent.provenance(runbook)).unwrap_or(Value::Null)
}
