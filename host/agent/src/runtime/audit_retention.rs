//! The audit's retention: the host keeps its audit within a budget on disk by removing the
//! oldest sealed segments, never one that open work still reads. A segment is kept while a
//! backlog reader has not finished it (alerts accepted and not taken up: a restart replays
//! them from there) and while it holds a record of an open incident (its proposal is re-read
//! from there at an approval, its run resumed from there after a stop). Each removal is a
//! record on the chain before any file goes (see `audit::segments`).
//!
//! What retention removes is gone from this host only: every record went to the observability
//! pipeline (the `themis::audit` events, OpenTelemetry) when it became durable.

use super::RuntimeError;
use super::backlog::Backlog;
use crate::audit::AuditLog;
use crate::audit::segments::{self, Segment};
use crate::store::IncidentStore;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// How often the host looks at the audit's size.
pub(crate) const EVERY: Duration = Duration::from_secs(60);

/// What one look did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Segments removed.
    pub removed: usize,
    /// Over the budget after the pass, because a segment open work needs is in the way: why.
    pub kept_over_budget: Option<String>,
}

/// What retention needs to know of the running host.
#[derive(Clone)]
pub(crate) struct AuditRetention {
    pub(crate) audit: Arc<AuditLog>,
    pub(crate) store: Arc<dyn IncidentStore>,
    pub(crate) backlogs: Vec<Arc<Backlog>>,
    pub(crate) max_bytes: u64,
    /// One pass at a time: a pass removes the segments it checked, and only those.
    pub(crate) one_at_a_time: Arc<tokio::sync::Mutex<()>>,
}

impl AuditRetention {
    /// Look every `every` until the task is stopped.
    pub(crate) async fn tick(self, every: Duration) {
        loop {
            match self.pass().await {
                Ok(Pass {
                    kept_over_budget: Some(why),
                    ..
                }) => {
                    tracing::warn!(
                        max_bytes = self.max_bytes,
                        "the audit is over its budget: {why}"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "audit retention failed; it tries again"),
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Remove the oldest segments past the budget that nothing open needs.
    pub(crate) async fn pass(&self) -> Result<Pass, RuntimeError> {
        let _one = self.one_at_a_time.lock().await;
        let (sealed, active) = self.audit.segments()?;
        if segments::due_for_removal(&sealed, active, self.max_bytes, |_| false) == 0 {
            return Ok(Pass::default());
        }
        // Read before the segments are looked at: an incident opened later writes only to
        // files this pass does not remove (the active one, or one sealed after the listing).
        let floor = self
            .backlogs
            .iter()
            .map(|b| b.reading_from())
            .min()
            .unwrap_or(u64::MAX);
        // The ids only: while an open incident keeps the log over its budget, this runs every
        // minute, and must not read every incident each time.
        let open: HashSet<String> = self.store.open_ids().await?;
        let audit = self.audit.clone();
        let max_bytes = self.max_bytes;
        let pass = tokio::task::spawn_blocking(move || -> Result<Pass, RuntimeError> {
            let mut pinned_by = None;
            let n = segments::due_for_removal(&sealed, active, max_bytes, |s: &Segment| {
                let why = pin(s, floor, &open);
                let pinned = why.is_some();
                pinned_by = why;
                pinned
            });
            if n > 0 {
                let mut why = serde_json::Map::new();
                why.insert(
                    "reason".into(),
                    json!(format!(
                        "the audit was over its budget of {max_bytes} bytes; the removed records went to the observability pipeline when written"
                    )),
                );
                why.insert("max_bytes".into(), json!(max_bytes));
                audit.remove_oldest(n, why)?;
            }
            Ok(Pass {
                removed: n,
                kept_over_budget: pinned_by,
            })
        })
        .await
        .map_err(|e| RuntimeError::Agent {
            agent: "host".into(),
            message: format!("audit retention stopped: {e}"),
        })??;
        Ok(pass)
    }
}

/// Why `s` must stay, if it must.
fn pin(s: &Segment, floor: u64, open: &HashSet<String>) -> Option<String> {
    if s.first_seq >= floor {
        return Some(format!(
            "{} holds accepted alerts not yet taken up",
            s.path.display()
        ));
    }
    match segments::names_any(&s.path, open) {
        Ok(false) => None,
        Ok(true) => Some(format!(
            "{} holds records of an open incident",
            s.path.display()
        )),
        Err(e) => Some(format!("{} cannot be read ({e})", s.path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Incident, IncidentStatus, JsonStore};
    use themis_core::redact::Redactor;
    use themis_core::types::Alert;

    fn incident(id: &str) -> Incident {
        let alert = Alert {
            name: "KafkaConsumerLag".into(),
            fingerprint: id.into(),
            labels: Vec::new(),
            annotations: Vec::new(),
            source: None,
        };
        Incident::opened(
            id.into(),
            "kafka".into(),
            alert,
            std::time::SystemTime::now(),
        )
    }

    #[tokio::test]
    async fn retention_keeps_what_open_work_needs_and_removes_the_rest_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let audit = Arc::new(AuditLog::open(&path, Redactor::default()).expect("audit"));
        audit.set_segment_bytes(2048);
        let store: Arc<dyn IncidentStore> =
            Arc::new(JsonStore::open(&dir.path().join("state")).expect("store"));
        let mut open = incident("inc-open");
        store.save(&open).await.expect("save");
        let pad = "z".repeat(200);
        for i in 0..60 {
            let on = (i == 25).then_some("inc-open");
            audit
                .append("kafka", on, "transition", json!({ "i": i, "pad": pad }))
                .expect("append");
        }
        let backlog = Arc::new(Backlog::new(10));
        // Its reader is in the active file.
        backlog
            .reading_from
            .store(audit.end().file, std::sync::atomic::Ordering::Release);
        let retention = AuditRetention {
            audit: audit.clone(),
            store: store.clone(),
            backlogs: vec![backlog.clone()],
            max_bytes: 4096,
            one_at_a_time: Default::default(),
        };
        let holding = audit.file_holding(26).expect("file");
        let pass = retention.pass().await.expect("pass");
        let kept = audit.segments().expect("segments").0;
        assert_eq!(
            kept[0].first_seq, holding,
            "removed up to the open incident's record"
        );
        assert!(pass.removed > 0);
        assert!(
            pass.kept_over_budget
                .is_some_and(|why| why.contains("open incident"))
        );

        // Closed, it no longer holds anything: what a backlog reader is in still does.
        open.status = IncidentStatus::Resolved;
        store.save(&open).await.expect("save");
        let reading = kept[2].first_seq;
        backlog
            .reading_from
            .store(reading, std::sync::atomic::Ordering::Release);
        let pass = retention.pass().await.expect("pass");
        assert_eq!(audit.segments().expect("segments").0[0].first_seq, reading);
        assert!(
            pass.kept_over_budget
                .is_some_and(|why| why.contains("not yet taken up"))
        );

        // Nothing pinned: within budget, and the chain verifies from where it starts.
        backlog
            .reading_from
            .store(u64::MAX, std::sync::atomic::Ordering::Release);
        retention.pass().await.expect("pass");
        let (sealed, active) = audit.segments().expect("segments");
        // Within budget when the pass looked; its own record since is at most a segment more.
        assert!(sealed.iter().map(|s| s.bytes).sum::<u64>() + active <= 4096 + 2048);
        let intact = crate::audit::verify::verify(&path)
            .expect("reads")
            .expect("intact");
        assert_eq!(
            intact.first,
            sealed.first().map_or(audit.end().file, |s| s.first_seq)
        );
        // The removals are on the chain.
        let mut removals = 0;
        audit
            .scan(|r| {
                removals += usize::from(r.kind == segments::REMOVED_KIND);
                true
            })
            .expect("scan");
        assert_eq!(removals, 3);
    }
}
