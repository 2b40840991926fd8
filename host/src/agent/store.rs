//! Durable agent state: each agent's FSM state and every incident, as JSON files in the state
//! directory, replaced atomically (write, fsync, rename) so a crash never leaves half a file.

use crate::fsm::AgentState;
use crate::policy::{ApprovalRequest, Plan};
use crate::wit::types::Alert;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IncidentStatus {
    Triaging,
    Executing,
    /// A plan waits for a human: approve, reject or adjust.
    PendingApproval,
    /// Escalated without a plan (nothing fitted): a human may adjust it into one.
    Escalated,
    Resolved,
    /// The runbook failed and was rolled back, or its rollback failed.
    Failed,
    Rejected,
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
        )
    }
}

/// Where an incident's capabilities come from, so an approval given later (perhaps from another
/// process) resumes against the same systems.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum BackendSpec {
    /// A scenario file's mocks (demo, CI).
    Scenario { file: PathBuf, dry_run: bool },
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
    pub backend: BackendSpec,
    /// The selector's answer, as audited.
    #[serde(default)]
    pub selection: Option<Value>,
    /// The plan waiting for a human, if any.
    #[serde(default)]
    pub proposal: Option<ApprovalRequest>,
    /// The plan last executed.
    #[serde(default)]
    pub executed: Option<Plan>,
    /// Why it is escalated, failed or rejected.
    #[serde(default)]
    pub reason: Option<String>,
    /// When the alert arrived and when the proposal was made, for alert→proposal time.
    #[serde(default)]
    pub proposed_at: Option<SystemTime>,
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
        "no incident or approval `{0}` in the state directory; `themis agents` lists what is pending"
    )]
    UnknownIncident(String),
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        for sub in ["incidents", "agents", "open"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|source| StoreError::Io { path, source })?;
        }
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write_json<T: Serialize>(&self, path: PathBuf, value: &T) -> Result<(), StoreError> {
        self.write_json_with(path, value, true)
    }

    /// `durable`: fsync before the rename. Without it the replace is still atomic, but a crash
    /// may lose the newest version (fine where the audit log holds the same fact durably).
    fn write_json_with<T: Serialize>(
        &self,
        path: PathBuf,
        value: &T,
        durable: bool,
    ) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        if durable {
            f.sync_data().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, StoreError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn save_incident(&self, incident: &Incident) -> Result<(), StoreError> {
        let path = self
            .dir
            .join("incidents")
            .join(format!("{}.json", incident.id));
        self.write_json(path, incident)?;
        // The open-incident index: one small file per (agent, fingerprint) while open, so a new
        // alert finds its incident without reading every incident.
        let marker = self.open_marker(&incident.agent, &incident.fingerprint);
        if incident.status.is_open() {
            if !marker.exists() {
                self.write_json_with(marker, &incident.id, false)?;
            }
        } else if let Err(e) = std::fs::remove_file(&marker)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(StoreError::Io {
                path: marker,
                source: e,
            });
        }
        Ok(())
    }

    fn open_marker(&self, agent: &str, fingerprint: &str) -> PathBuf {
        use sha2::{Digest, Sha256};
        let key = hex::encode(&Sha256::digest(format!("{agent}\0{fingerprint}"))[..12]);
        self.dir.join("open").join(format!("{key}.json"))
    }

    pub fn incident(&self, id: &str) -> Result<Incident, StoreError> {
        if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(StoreError::UnknownIncident(id.into()));
        }
        self.read_json(&self.dir.join("incidents").join(format!("{id}.json")))?
            .ok_or_else(|| StoreError::UnknownIncident(id.into()))
    }

    pub fn incidents(&self) -> Result<Vec<Incident>, StoreError> {
        let dir = self.dir.join("incidents");
        let entries = std::fs::read_dir(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json")
                && let Some(i) = self.read_json::<Incident>(&path)?
            {
                out.push(i);
            }
        }
        out.sort_by_key(|i| i.opened_at);
        Ok(out)
    }

    /// The open incident of `agent` for `fingerprint`, if any.
    pub fn open_incident(
        &self,
        agent: &str,
        fingerprint: &str,
    ) -> Result<Option<Incident>, StoreError> {
        let Some(id) = self.read_json::<String>(&self.open_marker(agent, fingerprint))? else {
            return Ok(None);
        };
        let incident = self.incident(&id)?;
        Ok((incident.status.is_open() && incident.fingerprint == fingerprint).then_some(incident))
    }

    /// Where a mocked world's sequences stand, by backend key.
    pub fn save_mock_cursors(
        &self,
        key: &str,
        cursors: &std::collections::BTreeMap<String, usize>,
    ) -> Result<(), StoreError> {
        self.write_json(self.dir.join(format!("mock-{key}.json")), cursors)
    }

    pub fn mock_cursors(
        &self,
        key: &str,
    ) -> Result<std::collections::BTreeMap<String, usize>, StoreError> {
        Ok(self
            .read_json(&self.dir.join(format!("mock-{key}.json")))?
            .unwrap_or_default())
    }

    pub fn save_agent_state(&self, agent: &str, state: &AgentState) -> Result<(), StoreError> {
        // The audit log records every transition durably; this file is the fast answer to
        // "what is the agent doing now".
        self.write_json_with(
            self.dir.join("agents").join(format!("{agent}.json")),
            state,
            false,
        )
    }

    pub fn agent_state(&self, agent: &str) -> Result<AgentState, StoreError> {
        Ok(self
            .read_json(&self.dir.join("agents").join(format!("{agent}.json")))?
            .unwrap_or(AgentState::Idle))
    }
}
