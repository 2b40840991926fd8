//! The write-ahead rule between the audit and the state: a state file never gets ahead of the
//! durable audit. Records between commit points are written but not yet fsynced; before any
//! durable state write the audit's records are made durable, so after a power loss the state
//! can only be behind the audit (which recovery reads), never claim what the audit lost.

use super::{Answer, ClaimError, Incident, IncidentStatus, IncidentStore, StoreError};
use crate::audit::AuditLog;
use async_trait::async_trait;
use std::sync::Arc;
use themis_core::fsm::AgentState;
use themis_core::guard::GuardBook;

/// An [`IncidentStore`] whose durable writes are commit points of the audit.
pub struct AuditFirst {
    audit: Arc<AuditLog>,
    inner: Arc<dyn IncidentStore>,
}

impl AuditFirst {
    pub fn new(audit: Arc<AuditLog>, inner: Arc<dyn IncidentStore>) -> Self {
        AuditFirst { audit, inner }
    }

    fn commit(&self) -> Result<(), StoreError> {
        self.audit
            .commit()
            .map_err(|e| StoreError::AuditNotDurable(e.to_string()))
    }
}

#[async_trait]
impl IncidentStore for AuditFirst {
    fn lost(&self) -> Option<String> {
        self.inner.lost()
    }

    async fn confirm_held(&self) -> Result<(), StoreError> {
        self.inner.confirm_held().await
    }

    fn audit_replica(
        &self,
    ) -> Result<Option<std::sync::Arc<dyn crate::audit::replica::Replica>>, StoreError> {
        self.inner.audit_replica()
    }

    async fn advertise(&self, url: &str) -> Result<(), StoreError> {
        self.inner.advertise(url).await
    }

    fn holder(&self) -> Option<String> {
        self.inner.holder()
    }

    async fn save(&self, incident: &Incident) -> Result<(), StoreError> {
        self.commit()?;
        self.inner.save(incident).await
    }

    /// A commit point like any state write — the records before it (the incident's opening
    /// record among them) are durable first, so the state is never ahead of the audit, here or
    /// on a shared chain — but the state write itself is not waited for on the disk. A power
    /// loss can take it back: then the alert is the last one its agent took up and its incident
    /// was never saved, which a start replays (`replay.rs`).
    async fn stage(&self, incident: &Incident) -> Result<(), StoreError> {
        self.commit()?;
        self.inner.stage(incident).await
    }

    async fn get(&self, id: &str) -> Result<Incident, StoreError> {
        self.inner.get(id).await
    }

    async fn scan(&self) -> Result<(Vec<Incident>, Vec<StoreError>), StoreError> {
        self.inner.scan().await
    }

    async fn recent(
        &self,
        filter: &super::Filter,
        limit: usize,
    ) -> Result<(Vec<Incident>, Vec<StoreError>), StoreError> {
        self.inner.recent(filter, limit).await
    }

    async fn open_ids(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        self.inner.open_ids().await
    }

    async fn open_for(
        &self,
        agent: &str,
        fingerprint: &str,
    ) -> Result<Option<Incident>, StoreError> {
        self.inner.open_for(agent, fingerprint).await
    }

    async fn latest_for(
        &self,
        agent: &str,
        fingerprint: &str,
    ) -> Result<Option<Incident>, StoreError> {
        self.inner.latest_for(agent, fingerprint).await
    }

    async fn by_approval(&self, approval_id: &str) -> Result<Option<Incident>, StoreError> {
        self.inner.by_approval(approval_id).await
    }

    async fn claim(&self, answer: Answer, next: IncidentStatus) -> Result<Incident, ClaimError> {
        self.commit()?;
        self.inner.claim(answer, next).await
    }

    /// Removing closed incidents needs no commit first: the audit already holds their whole
    /// history durably (they were closed by a durable write), and the record of the removal
    /// follows it.
    async fn prune_closed(
        &self,
        agent: &str,
        before: std::time::SystemTime,
        limit: usize,
        announce: super::Announce<'_>,
    ) -> Result<Vec<String>, StoreError> {
        self.inner
            .prune_closed(agent, before, limit, announce)
            .await
    }

    /// A hint, rewritten in place on every move and never fsynced: recovery trusts the
    /// incidents and the audit over it, so it needs no commit of its own.
    async fn save_agent_state(&self, agent: &str, state: &AgentState) -> Result<(), StoreError> {
        self.inner.save_agent_state(agent, state).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush().await
    }

    /// Writes no incident, so it needs no commit of the audit first.
    async fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync().await
    }

    async fn agent_state(&self, agent: &str) -> Result<AgentState, StoreError> {
        self.inner.agent_state(agent).await
    }

    async fn save_guard(&self, book: &GuardBook) -> Result<(), StoreError> {
        self.commit()?;
        self.inner.save_guard(book).await
    }

    async fn guard(&self) -> Result<GuardBook, StoreError> {
        self.inner.guard().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Redactor;
    use crate::store::JsonStore;
    use std::sync::Mutex;
    use themis_core::types::Alert;

    #[tokio::test]
    async fn a_state_write_makes_the_audit_before_it_durable_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = Arc::new(
            AuditLog::open(&dir.path().join("audit.jsonl"), Redactor::default()).expect("audit"),
        );
        let durable = Arc::new(Mutex::new(Vec::new()));
        let into = durable.clone();
        audit
            .observe_records(Box::new(move |r| {
                into.lock().expect("durable").push(r.kind.clone());
            }))
            .unwrap_or_else(|_| panic!("one observer"));
        let inner: Arc<dyn IncidentStore> =
            Arc::new(JsonStore::open(&dir.path().join("state")).expect("store"));
        let store = AuditFirst::new(audit.clone(), inner.clone());
        let alert = Alert {
            name: "KafkaConsumerLag".into(),
            fingerprint: "f1".into(),
            labels: vec![],
            annotations: vec![],
            source: None,
        };
        let incident = Incident::opened(
            "inc-0123abcd".into(),
            "kafka".into(),
            alert,
            std::time::SystemTime::now(),
        );
        audit
            .append_deferred("kafka", Some(&incident.id), "alert", serde_json::json!({}))
            .expect("deferred");
        // The agent state is a hint, not a commit point.
        store
            .save_agent_state("kafka", &AgentState::Idle)
            .await
            .expect("hint");
        assert!(durable.lock().expect("durable").is_empty());
        store.save(&incident).await.expect("save");
        assert_eq!(*durable.lock().expect("durable"), ["alert"]);
        assert_eq!(
            inner.get(&incident.id).await.expect("saved").id,
            incident.id
        );
        audit
            .append_deferred("kafka", None, "guard", serde_json::json!({}))
            .expect("deferred");
        store
            .save_guard(&GuardBook::default())
            .await
            .expect("guard");
        assert_eq!(*durable.lock().expect("durable"), ["alert", "guard"]);
    }
}
