//! The JSON-file store: each incident and each agent's state as a JSON file in the state
//! directory, replaced atomically (unique temp file, fsync, rename) so a crash never leaves half a
//! file, and carrying a MAC under the host key so a file changed by hand is refused. The
//! directory is locked for the life of the store: one process acts on it at a time.

use super::mac::HostKey;
use super::{Answer, ClaimError, Incident, IncidentStatus, IncidentStore, StoreError};
use crate::lock::{self, Held};
use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use themis_core::fsm::AgentState;
use themis_core::guard::GuardBook;

pub struct JsonStore {
    dir: PathBuf,
    key: HostKey,
    /// Serialises read-modify-write sequences (the claim) within the process.
    writes: Mutex<()>,
    temp_counter: AtomicU64,
    /// `None`: opened to read only (`themis agents` next to a running host).
    lock: Option<Held>,
    /// Agent state files, kept open and rewritten in place: a state changes on every move of
    /// every agent, and creating a new file each time costs more than the move itself.
    state_files: Mutex<BTreeMap<String, std::fs::File>>,
}

impl JsonStore {
    /// Open (creating) the state directory, waiting up to [`lock::DEFAULT_WAIT`] for another
    /// process that holds it.
    pub fn open(dir: &Path) -> Result<JsonStore, StoreError> {
        Self::open_waiting(dir, lock::DEFAULT_WAIT)
    }

    pub fn open_waiting(dir: &Path, wait: Duration) -> Result<JsonStore, StoreError> {
        for sub in ["incidents", "agents", "open", "latest"] {
            let path = dir.join(sub);
            crate::private::create_dir_all(&path)
                .map_err(|source| StoreError::Io { path, source })?;
        }
        let held = lock::acquire(&dir.join("state.lock"), wait)?;
        let key = HostKey::load_or_create(&dir.join("host.key"))?;
        // A writer killed between writing a temp file and renaming it leaves the temp file
        // behind; the rename never happened, so it holds nothing that counts. Only the lock
        // holder writes here, so whatever is left now is such a leftover.
        for sub in ["incidents", "agents", "open", "latest"] {
            let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.path().extension().is_some_and(|e| e == "tmp") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(JsonStore {
            dir: dir.to_path_buf(),
            key,
            writes: Mutex::new(()),
            temp_counter: AtomicU64::new(0),
            lock: Some(held),
            state_files: Mutex::new(BTreeMap::new()),
        })
    }

    /// Open to read without taking the directory's lock: every write is refused.
    pub fn open_read_only(dir: &Path) -> Result<JsonStore, StoreError> {
        let key = HostKey::load_or_create(&dir.join("host.key"))?;
        Ok(JsonStore {
            dir: dir.to_path_buf(),
            key,
            writes: Mutex::new(()),
            temp_counter: AtomicU64::new(0),
            lock: None,
            state_files: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `value` with its MAC, as the bytes of a state file.
    fn sealed<T: Serialize>(&self, path: &Path, value: &T) -> Result<Vec<u8>, StoreError> {
        if self.lock.is_none() {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "the store was opened read-only",
                ),
            });
        }
        let data = serde_json::to_value(value).map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let canonical = serde_json::to_vec(&data).unwrap_or_default();
        let file = json!({ "mac": self.key.tag(&canonical), "data": data });
        Ok(serde_json::to_vec_pretty(&file).unwrap_or_default())
    }

    /// Write `value` with its MAC. `durable`: fsync before the rename; without it the replace is
    /// still atomic, but a crash may lose the newest version.
    fn write<T: Serialize>(&self, path: &Path, value: &T, durable: bool) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bytes = self.sealed(path, value)?;
        // Unique per process and write: two writers never share a temp file.
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("{}.{n}.tmp", std::process::id()));
        let mut f = crate::private::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        if durable {
            f.sync_data().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    fn read<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>, StoreError> {
        let bytes = match themis_core::files::read(path, themis_core::files::limits::DEFINITION) {
            Ok(bytes) => bytes,
            Err(themis_core::files::FileError::NotFound) => return Ok(None),
            Err(e) => {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                });
            }
        };
        let corrupt = |message: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            message,
        };
        let mut file: Value = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let (Some(Value::String(mac)), Some(data)) = (
            file.get("mac").cloned(),
            file.as_object_mut().and_then(|o| o.remove("data")),
        ) else {
            return Err(StoreError::Tampered {
                path: path.to_path_buf(),
            });
        };
        let canonical = serde_json::to_vec(&data).unwrap_or_default();
        if !self.key.verify(&canonical, &mac) {
            return Err(StoreError::Tampered {
                path: path.to_path_buf(),
            });
        }
        serde_json::from_value(data)
            .map(Some)
            .map_err(|e| corrupt(e.to_string()))
    }

    fn incident_path(&self, id: &str) -> Result<PathBuf, StoreError> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(StoreError::UnknownIncident(id.into()));
        }
        Ok(self.dir.join("incidents").join(format!("{id}.json")))
    }

    fn open_marker(&self, agent: &str, fingerprint: &str) -> PathBuf {
        self.marker("open", agent, fingerprint)
    }

    /// Names the newest incident of (agent, fingerprint), open or not: a source's `resolved`
    /// that arrives after Themis closed the incident still reaches it.
    fn latest_marker(&self, agent: &str, fingerprint: &str) -> PathBuf {
        self.marker("latest", agent, fingerprint)
    }

    fn marker(&self, index: &str, agent: &str, fingerprint: &str) -> PathBuf {
        use sha2::{Digest, Sha256};
        let key = hex::encode(&Sha256::digest(format!("{agent}\0{fingerprint}"))[..12]);
        self.dir.join(index).join(format!("{key}.json"))
    }

    fn save_sync(&self, incident: &Incident) -> Result<(), StoreError> {
        self.write(&self.incident_path(&incident.id)?, incident, true)?;
        // The open-incident index: one small file per (agent, fingerprint) while open, so a new
        // alert finds its incident without reading every incident.
        let marker = self.open_marker(&incident.agent, &incident.fingerprint);
        if incident.status.is_open() {
            // Written unless it already names this incident: a marker a stop left behind
            // (naming an incident since closed, or pruned) must not hide this one.
            let named = self.read::<String>(&marker).ok().flatten();
            if named.as_deref() != Some(incident.id.as_str()) {
                self.write(&marker, &incident.id, false)?;
                self.write(
                    &self.latest_marker(&incident.agent, &incident.fingerprint),
                    &incident.id,
                    false,
                )?;
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

    fn get_sync(&self, id: &str) -> Result<Incident, StoreError> {
        let path = self.incident_path(id)?;
        self.read_incident(&path, id)?
            .ok_or_else(|| StoreError::UnknownIncident(id.into()))
    }

    /// The incident in `path`, which must be the one named `id`: the MAC covers a file's data,
    /// not its name, so a file copied over another's name verifies — and is refused here.
    fn read_incident(&self, path: &Path, id: &str) -> Result<Option<Incident>, StoreError> {
        match self.read::<Incident>(path)? {
            Some(incident) if incident.id != id => Err(StoreError::Tampered {
                path: path.to_path_buf(),
            }),
            found => Ok(found),
        }
    }

    fn by_approval_sync(&self, approval_id: &str) -> Result<Option<Incident>, StoreError> {
        let Some(id) = super::approval_incident(approval_id) else {
            return Ok(None);
        };
        let incident = match self.get_sync(&id) {
            Ok(i) => i,
            Err(StoreError::UnknownIncident(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(incident.names_approval(approval_id).then_some(incident))
    }
}

#[async_trait]
impl IncidentStore for JsonStore {
    async fn save(&self, incident: &Incident) -> Result<(), StoreError> {
        let _w = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        self.save_sync(incident)
    }

    async fn get(&self, id: &str) -> Result<Incident, StoreError> {
        self.get_sync(id)
    }

    async fn scan(&self) -> Result<(Vec<Incident>, Vec<StoreError>), StoreError> {
        let dir = self.dir.join("incidents");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Read-only next to a directory no host has written incidents to yet: none.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.lock.is_none() => {
                return Ok((Vec::new(), Vec::new()));
            }
            Err(source) => {
                return Err(StoreError::Io {
                    path: dir.clone(),
                    source,
                });
            }
        };
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                let id = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                match self.read_incident(&path, &id) {
                    Ok(Some(i)) => out.push(i),
                    Ok(None) => {}
                    Err(e) => problems.push(e),
                }
            }
        }
        out.sort_by_key(|i| i.opened_at);
        Ok((out, problems))
    }

    async fn open_for(
        &self,
        agent: &str,
        fingerprint: &str,
    ) -> Result<Option<Incident>, StoreError> {
        let Some(id) = self.read::<String>(&self.open_marker(agent, fingerprint))? else {
            return Ok(None);
        };
        // A marker naming an incident retention removed since is a marker a stop left: none.
        let incident = match self.get_sync(&id) {
            Err(StoreError::UnknownIncident(_)) => return Ok(None),
            found => found?,
        };
        Ok((incident.status.is_open()
            && incident.fingerprint == fingerprint
            && incident.agent == agent)
            .then_some(incident))
    }

    async fn latest_for(
        &self,
        agent: &str,
        fingerprint: &str,
    ) -> Result<Option<Incident>, StoreError> {
        let Some(id) = self.read::<String>(&self.latest_marker(agent, fingerprint))? else {
            return Ok(None);
        };
        let incident = match self.get_sync(&id) {
            Err(StoreError::UnknownIncident(_)) => return Ok(None),
            found => found?,
        };
        Ok((incident.fingerprint == fingerprint && incident.agent == agent).then_some(incident))
    }

    async fn by_approval(&self, approval_id: &str) -> Result<Option<Incident>, StoreError> {
        self.by_approval_sync(approval_id)
    }

    async fn claim(&self, answer: Answer, next: IncidentStatus) -> Result<Incident, ClaimError> {
        let _w = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let approval_id = answer.approval_id.clone();
        let Some(mut incident) = self.by_approval_sync(&approval_id)? else {
            return Err(StoreError::UnknownIncident(approval_id).into());
        };
        if let Some(refusal) = incident.refuses_answer(&approval_id) {
            return Err(refusal);
        }
        incident.answer = Some(answer);
        incident.status = next;
        self.save_sync(&incident)?;
        Ok(incident)
    }

    async fn prune_closed(
        &self,
        agent: &str,
        before: SystemTime,
        limit: usize,
        announce: super::Announce<'_>,
    ) -> Result<Vec<String>, StoreError> {
        let (candidates, _) = self.scan().await?;
        let _w = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = Vec::new();
        for candidate in candidates {
            if due.len() >= limit {
                break;
            }
            if candidate.agent != agent || candidate.status.is_open() {
                continue;
            }
            // Read again under the write lock: what is removed is what is on disk now.
            let incident = match self.get_sync(&candidate.id) {
                Ok(i) if i.agent == agent && !i.status.is_open() => i,
                Ok(_) | Err(StoreError::UnknownIncident(_)) => continue,
                Err(e) => return Err(e),
            };
            let path = self.incident_path(&incident.id)?;
            let io = |source| StoreError::Io {
                path: path.clone(),
                source,
            };
            // The file's time is when it was last written: the incident's last change.
            let changed = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .map_err(io)?;
            if changed >= before {
                continue;
            }
            due.push((incident, path));
        }
        if due.is_empty() {
            return Ok(Vec::new());
        }
        announce(&due.iter().map(|(i, _)| i.id.clone()).collect::<Vec<_>>())?;
        let mut pruned = Vec::new();
        for (incident, path) in due {
            let io = |source| StoreError::Io {
                path: path.clone(),
                source,
            };
            // The fingerprint's newest-incident marker must not name a file that is gone.
            let latest = self.latest_marker(&incident.agent, &incident.fingerprint);
            if self.read::<String>(&latest)?.as_deref() == Some(incident.id.as_str()) {
                std::fs::remove_file(&latest).map_err(|source| StoreError::Io {
                    path: latest.clone(),
                    source,
                })?;
            }
            std::fs::remove_file(&path).map_err(io)?;
            pruned.push(incident.id);
        }
        Ok(pruned)
    }

    async fn save_agent_state(&self, agent: &str, state: &AgentState) -> Result<(), StoreError> {
        // The audit log records every transition durably; this file is the fast answer to
        // "what is the agent doing now" for other processes, and a hint for recovery. It is
        // rewritten in place: a reader that catches it half-written sees a MAC that does not
        // verify and reads again; a crash mid-write leaves a state recovery treats as unknown.
        use std::os::unix::fs::FileExt;
        let path = self.dir.join("agents").join(format!("{agent}.json"));
        let bytes = self.sealed(&path, state)?;
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let mut files = self.state_files.lock().unwrap_or_else(|p| p.into_inner());
        if !files.contains_key(agent) {
            let file = crate::private::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io)?;
            files.insert(agent.to_owned(), file);
        }
        let Some(file) = files.get(agent) else {
            return Ok(());
        };
        file.write_all_at(&bytes, 0).map_err(io)?;
        file.set_len(bytes.len() as u64).map_err(io)
    }

    async fn save_guard(&self, book: &GuardBook) -> Result<(), StoreError> {
        self.write(&self.dir.join("guard.json"), book, true)
    }

    async fn guard(&self) -> Result<GuardBook, StoreError> {
        Ok(self.read(&self.dir.join("guard.json"))?.unwrap_or_default())
    }

    async fn agent_state(&self, agent: &str) -> Result<AgentState, StoreError> {
        let path = self.dir.join("agents").join(format!("{agent}.json"));
        // Another process may be rewriting it this instant: a torn read gets a second look.
        let mut last = None;
        for _ in 0..3 {
            match self.read(&path) {
                Ok(state) => return Ok(state.unwrap_or(AgentState::Idle)),
                Err(e) if self.lock.is_none() => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(StoreError::Tampered { path }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::IncidentStatus;

    fn incident(id: &str) -> Incident {
        super::super::contract_tests::incident(id, "fp", 1)
    }

    /// A file copied over another incident's name carries a valid MAC (it covers the data, not
    /// the name): refused, by `get` and by the scan, never read as the other incident.
    #[tokio::test]
    async fn an_incident_file_copied_over_another_name_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = JsonStore::open(dir.path()).expect("store");
        store.save(&incident("inc-a")).await.expect("save");
        std::fs::copy(
            store.incident_path("inc-a").expect("path"),
            store.incident_path("inc-b").expect("path"),
        )
        .expect("copy");
        assert!(matches!(
            store.get("inc-b").await,
            Err(StoreError::Tampered { .. })
        ));
        let (found, problems) = store.scan().await.expect("scan");
        assert_eq!(
            found.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["inc-a"]
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    /// Review defect: a stop between saving an incident closed and removing its open marker
    /// left the marker; once retention removed the incident, every later alert of that
    /// fingerprint failed to find (or open) its incident — for good.
    #[tokio::test]
    async fn a_marker_a_stop_left_behind_hides_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = JsonStore::open(dir.path()).expect("store");
        store.save(&incident("inc-1")).await.expect("save");
        // Closed on disk, the marker still naming it: what the stop left.
        let mut closed = incident("inc-1");
        closed.status = IncidentStatus::Resolved;
        store
            .write(&store.incident_path("inc-1").expect("path"), &closed, true)
            .expect("write");
        assert_eq!(store.open_for("kafka", "fp").await.expect("open"), None);
        // The next incident of that fingerprint is found, not hidden by the old marker.
        store.save(&incident("inc-2")).await.expect("save");
        let found = store.open_for("kafka", "fp").await.expect("open");
        assert_eq!(found.map(|i| i.id), Some("inc-2".to_string()));
        // A marker naming an incident that is gone (pruned) is no incident, not an error.
        let gone = incident("inc-3");
        store.save(&gone).await.expect("save");
        std::fs::remove_file(store.incident_path("inc-3").expect("path")).expect("remove");
        assert_eq!(store.open_for("kafka", "fp").await.expect("open"), None);
        assert_eq!(store.latest_for("kafka", "fp").await.expect("latest"), None);
    }
}
