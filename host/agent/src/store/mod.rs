//! Where incidents and agent states live: the [`IncidentStore`] trait and its stores — a JSON
//! file per incident (the one-shot CLI's), SQLite (the service's default) and PostgreSQL (a
//! database shared by hosts, held by one at a time). Every durable write of the runtime goes
//! through it.
//!
//! The store is written by one agent worker per agent, within one process per state directory
//! (the directory's lock); answering an approval is a compare-and-swap on its stored status, so
//! it is claimed exactly once whoever asks and however often.

mod audit_first;
mod json;
mod mac;
mod migrations;
mod pg_audit;
pub mod pg_inbox;
pub mod postgres;
mod rows;
pub mod sqlite;

pub use audit_first::AuditFirst;
pub use json::JsonStore;
pub use postgres::{PasswordSource, PgProbe, PgStore, PgTarget};
pub(crate) use rows::status_name;
pub use sqlite::SqliteStore;

#[cfg(test)]
mod contract_tests;
pub use mac::HostKey;

use crate::audit::RecordRef;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;
use std::time::SystemTime;
use themis_core::fsm::AgentState;
use themis_core::guard::GuardBook;
use themis_core::identity::Identity;
use themis_core::policy::{ApprovalRequest, Plan};
use themis_core::types::Alert;
use themis_core::verify::Watch;

/// Which incidents [`IncidentStore::recent`] lists.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub status: Option<IncidentStatus>,
    pub agent: Option<String>,
}

impl Filter {
    pub fn keeps(&self, incident: &Incident) -> bool {
        self.status.is_none_or(|s| incident.status == s)
            && self.agent.as_deref().is_none_or(|a| incident.agent == a)
    }
}

/// Which store a state directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// `themis.db`: SQLite, one transaction and one fsync per state write (the service's
    /// default).
    Sqlite,
    /// A JSON file per incident (the one-shot CLI's default on a new directory).
    Json,
    /// A PostgreSQL database, named by the directory's `store.postgres.json`.
    Postgres,
}

/// The store a host is asked to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    Sqlite,
    Json,
    Postgres(PgTarget),
}

impl StoreChoice {
    pub fn kind(&self) -> StoreKind {
        match self {
            StoreChoice::Sqlite => StoreKind::Sqlite,
            StoreChoice::Json => StoreKind::Json,
            StoreChoice::Postgres(_) => StoreKind::Postgres,
        }
    }
}

impl StoreKind {
    /// The store already in `dir`, if any.
    pub fn found_in(dir: &std::path::Path) -> Option<StoreKind> {
        if dir.join(postgres::MARKER).exists() {
            Some(StoreKind::Postgres)
        } else if dir.join(sqlite::FILE).exists() {
            Some(StoreKind::Sqlite)
        } else if dir.join("incidents").is_dir() {
            Some(StoreKind::Json)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Json => "json",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// Open the state directory's store to write, waiting up to `wait` for another process that
/// holds it: the kind already there, else `wanted`, else `default`. A directory that holds the
/// other kind than `wanted` is refused: two stores of one host would disagree.
/// Told which incidents a pruning is about to remove, before any is gone: the caller records
/// them durably there, so a store without an incident the audit named can tell a removal —
/// even one a stop cut off before its outcome's record — from a write a power loss took back
/// (`runtime/restore.rs`).
pub type Announce<'a> = &'a (dyn Fn(&[String]) -> Result<(), StoreError> + Send + Sync);

pub async fn open(
    dir: &std::path::Path,
    wanted: Option<&StoreChoice>,
    default: StoreChoice,
    wait: std::time::Duration,
) -> Result<std::sync::Arc<dyn IncidentStore>, StoreError> {
    let found = StoreKind::found_in(dir);
    if let (Some(found), Some(wanted)) = (found, wanted)
        && found != wanted.kind()
    {
        return Err(StoreError::OtherKind {
            dir: dir.to_path_buf(),
            found,
            wanted: wanted.kind(),
        });
    }
    let choice = match (found, wanted) {
        (Some(StoreKind::Postgres), wanted) => {
            let named = PgTarget::found_in(dir)?.ok_or_else(|| StoreError::Corrupt {
                path: dir.join(postgres::MARKER),
                message: "unreadable".into(),
            })?;
            match wanted {
                Some(StoreChoice::Postgres(asked)) if asked.url != named.url => {
                    return Err(StoreError::Database {
                        path: PathBuf::from(&asked.url),
                        message: format!(
                            "the state directory {} keeps its state in {}, not here: point `store` back at it, or use another state directory",
                            dir.display(),
                            named.url
                        ),
                    });
                }
                Some(asked) => asked.clone(),
                None => StoreChoice::Postgres(named),
            }
        }
        (Some(StoreKind::Sqlite), _) => StoreChoice::Sqlite,
        (Some(StoreKind::Json), _) => StoreChoice::Json,
        (None, Some(wanted)) => wanted.clone(),
        (None, None) => default,
    };
    Ok(match choice {
        StoreChoice::Sqlite => std::sync::Arc::new(SqliteStore::open_waiting(dir, wait).await?),
        StoreChoice::Json => std::sync::Arc::new(JsonStore::open_waiting(dir, wait)?),
        StoreChoice::Postgres(target) => {
            std::sync::Arc::new(PgStore::open_waiting(dir, &target, wait).await?)
        }
    })
}

/// Open the state directory's store, whichever kind it holds, to read without its lock (next to
/// a running host).
pub async fn open_read_only(
    dir: &std::path::Path,
) -> Result<std::sync::Arc<dyn IncidentStore>, StoreError> {
    Ok(match StoreKind::found_in(dir) {
        Some(StoreKind::Sqlite) => std::sync::Arc::new(SqliteStore::open_read_only(dir).await?),
        Some(StoreKind::Postgres) => match PgTarget::found_in(dir)? {
            Some(target) => std::sync::Arc::new(PgStore::open_read_only(dir, &target).await?),
            None => std::sync::Arc::new(JsonStore::open_read_only(dir)?),
        },
        _ => std::sync::Arc::new(JsonStore::open_read_only(dir)?),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum IncidentStatus {
    Triaging,
    Executing,
    /// A plan waits for a human: approve, reject or adjust.
    PendingApproval,
    /// Escalated without a plan (nothing fitted): a human may adjust it into one.
    Escalated,
    /// The host stopped (crashed, was killed) while handling it; a human was told, nothing was
    /// resumed. A human may adjust it into a plan.
    Interrupted,
    /// The runbook succeeded: the host watches whether it fixed the alert (`verification`).
    Verifying,
    /// The runbook succeeded and the alert is gone: its source said so, the metric agreed.
    Resolved,
    /// The runbook succeeded, but nothing could tell whether it fixed the alert.
    Unverified,
    /// The runbook failed and was rolled back, or its rollback failed.
    Failed,
    Rejected,
    /// A human had it (escalated with no plan waiting, or interrupted) and its alert then
    /// resolved at its source: nothing more waits on this episode, and the alert's next firing
    /// is a new incident.
    Closed,
}

impl IncidentStatus {
    /// Open incidents absorb further alerts with the same fingerprint.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            IncidentStatus::Triaging
                | IncidentStatus::Executing
                | IncidentStatus::PendingApproval
                | IncidentStatus::Escalated
                | IncidentStatus::Interrupted
                | IncidentStatus::Verifying
        )
    }

    /// Statuses a human can turn into a plan with `adjust`.
    pub fn awaits_human(self) -> bool {
        matches!(
            self,
            IncidentStatus::PendingApproval
                | IncidentStatus::Escalated
                | IncidentStatus::Interrupted
        )
    }
}

/// How a human answered a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnswerKind {
    Approved,
    Rejected,
    Adjusted,
}

/// Who answered a proposal, how, and when: set once, by the compare-and-swap that claims it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub approval_id: String,
    pub kind: AnswerKind,
    pub by: Identity,
    pub at: SystemTime,
    /// The execution an approval authorises.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub agent: String,
    pub fingerprint: String,
    pub alert: Alert,
    pub status: IncidentStatus,
    pub opened_at: SystemTime,
    /// Further alerts with the same fingerprint while open.
    pub attached_alerts: u32,
    /// The selector's answer, as audited.
    #[serde(default)]
    pub selection: Option<Value>,
    /// The plan waiting for a human, if any. Informational: an approval re-reads the proposal
    /// from its audit record (`proposal_record`), never from here.
    #[serde(default)]
    pub proposal: Option<ApprovalRequest>,
    /// The audit record that carries the proposal.
    #[serde(default)]
    pub proposal_record: Option<RecordRef>,
    /// The last answer to a proposal of this incident.
    #[serde(default)]
    pub answer: Option<Answer>,
    /// Runbooks run or proposed in this incident, in order: a follow-up chain never repeats one.
    #[serde(default)]
    pub chain: Vec<String>,
    /// The plan last executed.
    #[serde(default)]
    pub executed: Option<Plan>,
    /// Why it is escalated, failed, interrupted or rejected.
    #[serde(default)]
    pub reason: Option<String>,
    /// When the proposal was made, for alert→proposal time.
    #[serde(default)]
    pub proposed_at: Option<SystemTime>,
    /// When a human was last told and asked (an escalation, with or without a plan, or an
    /// interruption): an answer sent before it did not see what it would answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated_at: Option<SystemTime>,
    /// When the alert source said the alert stopped firing (Alertmanager's `resolved`), if it
    /// did: recorded only, never a reason to act.
    #[serde(default)]
    pub source_resolved_at: Option<SystemTime>,
    /// Whether the last successful run fixed the alert: the signals and the verdict.
    #[serde(default)]
    pub verification: Option<Watch>,
    /// The seq of the audit record of the alert that opened it: its timeline is read from
    /// there on, not from the start of the audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_seq: Option<u64>,
    /// The `alert-accepted` record of the last alert taken up onto it (opened, attached,
    /// resolved): a start compares it with the audit to find one a stop cut off before this
    /// incident was saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_intake: Option<u64>,
}

impl Incident {
    /// A new incident of `agent` for `alert`, triaging, opened `at`.
    pub fn opened(id: String, agent: String, alert: Alert, at: SystemTime) -> Incident {
        Incident {
            id,
            agent,
            fingerprint: alert.fingerprint.clone(),
            alert,
            status: IncidentStatus::Triaging,
            opened_at: at,
            attached_alerts: 0,
            selection: None,
            proposal: None,
            proposal_record: None,
            answer: None,
            chain: Vec::new(),
            executed: None,
            reason: None,
            proposed_at: None,
            escalated_at: None,
            source_resolved_at: None,
            verification: None,
            opened_seq: None,
            last_intake: None,
        }
    }

    /// Whether `approval_id` is this incident's proposal, current or answered.
    pub fn names_approval(&self, approval_id: &str) -> bool {
        self.proposal.as_ref().is_some_and(|p| p.id == approval_id)
            || self
                .answer
                .as_ref()
                .is_some_and(|a| a.approval_id == approval_id)
    }

    /// Why an answer to `approval_id` cannot claim this incident's proposal now, if it cannot:
    /// someone answered it already, or it is not waiting for an answer.
    pub fn refuses_answer(&self, approval_id: &str) -> Option<ClaimError> {
        if let Some(previous) = self
            .answer
            .as_ref()
            .filter(|a| a.approval_id == approval_id)
        {
            // Claimed by the host itself: withdrawn (its alert resolved, it expired), which
            // the human answering should read as such, with the reason.
            if previous.by.via == themis_core::identity::Via::Agent {
                // The reason is saved with the finished withdrawal (which clears the proposal).
                let why = match (&self.proposal, &self.reason) {
                    (None, Some(reason)) => reason.clone(),
                    _ => "withdrawn by the host (its alert resolved, or it expired)".into(),
                };
                return Some(ClaimError::Withdrawn {
                    approval_id: approval_id.into(),
                    why,
                });
            }
            return Some(ClaimError::AlreadyAnswered {
                approval_id: approval_id.into(),
                kind: previous.kind,
                by: previous.by.to_string(),
            });
        }
        let pending = self.status == IncidentStatus::PendingApproval
            && self.proposal.as_ref().is_some_and(|p| p.id == approval_id);
        (!pending).then(|| ClaimError::NotPending {
            approval_id: approval_id.into(),
            incident: self.id.clone(),
            status: self.status,
        })
    }
}

/// The incident an approval id names (`apr-<incident>-<suffix>`).
pub(crate) fn approval_incident(approval_id: &str) -> Option<String> {
    let rest = approval_id.strip_prefix("apr-")?;
    let (incident, suffix) = rest.rsplit_once('-')?;
    let hex = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit());
    (hex(incident) && hex(suffix)).then(|| format!("inc-{incident}"))
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: unreadable state ({message}); move it aside to start over")]
    Corrupt { path: PathBuf, message: String },
    #[error(
        "{path}: the state file was changed outside Themis (its MAC does not verify under this host's key); refusing to act on it — compare it with the audit (`themis audit show`) and move it aside"
    )]
    Tampered { path: PathBuf },
    #[error(
        "no incident or approval `{0}` in the state directory; `themis agents` lists what is pending"
    )]
    UnknownIncident(String),
    #[error("{0}")]
    Key(String),
    #[error(
        "the audit could not be made durable before the state was written ({0}); nothing was saved"
    )]
    AuditNotDurable(String),
    #[error(transparent)]
    Locked(#[from] crate::lock::LockError),
    #[error("state database {path}: {message}")]
    Database { path: PathBuf, message: String },
    #[error(
        "state database {place}: another host took the state over ({now}; this host's token was {mine}): this host writes nothing more — restart it to stand by"
    )]
    Fenced {
        place: String,
        mine: i64,
        now: String,
    },
    #[error(
        "state directory {dir} holds a {} store, but a {} store was asked for: set `store: {}` or use another state directory",
        found.name(), wanted.name(), found.name()
    )]
    OtherKind {
        dir: PathBuf,
        found: StoreKind,
        wanted: StoreKind,
    },
}

/// Why an answer could not claim a proposal.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("{approval_id} was withdrawn by the host, not answered by anyone: {why}")]
    Withdrawn { approval_id: String, why: String },
    #[error("{approval_id} was already answered ({kind:?} by {by}); an approval is used once")]
    AlreadyAnswered {
        approval_id: String,
        kind: AnswerKind,
        by: String,
    },
    #[error("{approval_id} is not waiting for an answer (incident {incident} is {status:?})")]
    NotPending {
        approval_id: String,
        incident: String,
        status: IncidentStatus,
    },
    /// An answer that names the incident while a proposal waits: it could answer a plan its
    /// sender never saw.
    #[error(
        "incident {incident} has a proposal waiting ({approval_id}): read it and answer it by its id"
    )]
    ProposalWaiting {
        incident: String,
        approval_id: String,
    },
    /// An answer sent before the escalation it would answer: a retried request, or a form
    /// resubmitted after the plan it chose ran and failed, must not run it again unseen.
    #[error(
        "incident {incident} was escalated again at {escalated}, after the escalation this answer was sent for: look at it again and answer what it shows now"
    )]
    SentBefore { incident: String, escalated: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[async_trait]
pub trait IncidentStore: Send + Sync {
    /// Why this host may no longer write the store — another host took it over — if so. A
    /// store in the state directory is never lost.
    fn lost(&self) -> Option<String> {
        None
    }
    /// That this host still holds the store, asked of the store itself (a shared database's
    /// fencing token): what a mutating capability call checks before it acts, so a host that
    /// lost the state to another makes no change the other does not know of. A store in the
    /// state directory is always held.
    async fn confirm_held(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The audit chain's shared home, when the state is shared by hosts (a database): the
    /// host's audit log makes every commit point durable there too, and a host that takes the
    /// state over continues that chain (see `audit::replica`). `None` for a store in the state
    /// directory, whose audit is the directory's alone. Asked once, before the log opens.
    fn audit_replica(
        &self,
    ) -> Result<Option<std::sync::Arc<dyn crate::audit::replica::Replica>>, StoreError> {
        Ok(None)
    }
    /// Tell the hosts standing by where this one serves its API (a shared database), so they
    /// pass answers and reads on to it. A store in the state directory has none to tell.
    async fn advertise(&self, _url: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// Which host holds the state, as the store names it (a shared database); `None` for a
    /// store in the state directory.
    fn holder(&self) -> Option<String> {
        None
    }
    async fn save(&self, incident: &Incident) -> Result<(), StoreError>;
    /// Write `incident` now without waiting for the disk: every read sees it and a killed
    /// process keeps it, but it is durable only with the store's next durable write, and a
    /// power loss before that can take it back (then it is as if never saved). For what a start
    /// can do without: the incident opened for the alert in hand while its triage waits (a
    /// start replays the alert), and an incident's first state (a start restores it from its
    /// escalation record), so a decision's hot path waits on no state fsync. A store with no
    /// cheaper write saves it.
    async fn stage(&self, incident: &Incident) -> Result<(), StoreError> {
        self.save(incident).await
    }
    /// Make every write [`stage`](Self::stage)d before it durable, writing no incident: a
    /// worker calls it after its reply once it has staged a run of first states, and a start
    /// once, so no more than a run is ever at risk. A store whose `stage` saves has nothing to
    /// do.
    async fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn get(&self, id: &str) -> Result<Incident, StoreError>;
    /// Every incident, oldest first; the first unreadable or tampered one is an error.
    async fn list(&self) -> Result<Vec<Incident>, StoreError> {
        let (incidents, mut problems) = self.scan().await?;
        match problems.pop() {
            Some(problem) => Err(problem),
            None => Ok(incidents),
        }
    }
    /// Every readable incident, oldest first, and every one that could not be trusted (changed
    /// outside Themis, unreadable): recovery reports those and carries on with the rest.
    async fn scan(&self) -> Result<(Vec<Incident>, Vec<StoreError>), StoreError>;
    /// The newest `limit` incidents `filter` keeps, newest first, and every one among those
    /// looked at that could not be trusted. The default reads every incident; a store with an
    /// index reads only what it returns.
    async fn recent(
        &self,
        filter: &Filter,
        limit: usize,
    ) -> Result<(Vec<Incident>, Vec<StoreError>), StoreError> {
        let (all, problems) = self.scan().await?;
        let newest = all
            .into_iter()
            .rev()
            .filter(|i| filter.keeps(i))
            .take(limit)
            .collect();
        Ok((newest, problems))
    }
    /// The open incident of `agent` for `fingerprint`, if any.
    async fn open_for(
        &self,
        agent: &str,
        fingerprint: &str,
    ) -> Result<Option<Incident>, StoreError>;
    /// The newest incident of `agent` for `fingerprint`, open or closed.
    async fn latest_for(
        &self,
        agent: &str,
        fingerprint: &str,
    ) -> Result<Option<Incident>, StoreError>;
    /// The incident whose proposal (current or answered) has this approval id.
    async fn by_approval(&self, approval_id: &str) -> Result<Option<Incident>, StoreError> {
        let Some(id) = approval_incident(approval_id) else {
            return Ok(None);
        };
        match self.get(&id).await {
            Ok(incident) => Ok(incident.names_approval(approval_id).then_some(incident)),
            Err(StoreError::UnknownIncident(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
    /// Compare-and-swap: if the incident's proposal `answer.approval_id` is pending and
    /// unanswered, record `answer`, set `next` as its status and return it; else refuse.
    /// Exactly one of any number of concurrent callers wins.
    async fn claim(&self, answer: Answer, next: IncidentStatus) -> Result<Incident, ClaimError>;
    /// The ids of every open incident: what audit retention must keep the records of. The
    /// default reads every incident; a database store reads the ids by its status index, as
    /// `open_for` trusts it (an id too many only keeps more).
    async fn open_ids(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let (incidents, _) = self.scan().await?;
        Ok(incidents
            .into_iter()
            .filter(|i| i.status.is_open())
            .map(|i| i.id)
            .collect())
    }
    /// Retention: remove up to `limit` of `agent`'s closed incidents last written before
    /// `before`, and return their ids. The audit keeps their whole history; the store keeps
    /// what the host acts on, so it does not grow with every incident ever closed. `announce`
    /// is told which it is about to remove before any is, and an error from it removes none.
    async fn prune_closed(
        &self,
        agent: &str,
        before: SystemTime,
        limit: usize,
        announce: Announce<'_>,
    ) -> Result<Vec<String>, StoreError>;
    async fn save_agent_state(&self, agent: &str, state: &AgentState) -> Result<(), StoreError>;
    async fn agent_state(&self, agent: &str) -> Result<AgentState, StoreError>;
    /// Wait until every write handed off behind the caller's back (the agent-state hints) is
    /// written: a stop calls it, so the next process reads what this one left.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The guard rails' book, shared by every agent of the host: durable before a run starts.
    async fn save_guard(&self, book: &GuardBook) -> Result<(), StoreError>;
    /// The book as last saved (empty when none was).
    async fn guard(&self) -> Result<GuardBook, StoreError>;
}
