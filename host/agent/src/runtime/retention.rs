//! Retention: each worker removes its own agent's closed incidents from the store once they
//! have not changed for `keep_closed`, a bounded batch at a time on the verify tick, so the
//! store holds what the host acts on rather than every incident it ever closed. The audit keeps
//! their whole history, and each removal is a record naming what went.

use super::RuntimeError;
use super::worker::Worker;
use serde_json::json;
use std::time::{Duration, Instant, SystemTime};

/// The most incidents one pass removes: a pass never holds the worker long.
pub(crate) const BATCH: usize = 500;
/// How often a worker looks, unless the last pass was full or `keep_closed` is shorter.
const EVERY: Duration = Duration::from_secs(600);

pub(crate) struct Retention {
    keep: Duration,
    next: Instant,
}

impl Retention {
    pub(crate) fn new(keep: Duration) -> Retention {
        Retention {
            keep,
            next: Instant::now(),
        }
    }
}

impl Worker {
    /// Remove what retention says is due; returns how many incidents went.
    pub(crate) async fn prune_due(&mut self) -> Result<usize, RuntimeError> {
        let Some(retention) = self.retention.as_mut() else {
            return Ok(0);
        };
        let now = Instant::now();
        if now < retention.next {
            return Ok(0);
        }
        retention.next = now + EVERY.min(retention.keep);
        // Wall-clock time, as the store stamps each write: retention is housekeeping, not a
        // decision of the scenario's clock.
        let before = SystemTime::now()
            .checked_sub(retention.keep)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let agent = self.ctx.agent.def.name.clone();
        // Durable before anything goes: a start then knows an incident the store lacks was
        // removed on purpose, even if a stop cuts the removal off before its outcome's record.
        let audit = self.ctx.audit.clone();
        let announced = std::sync::Mutex::new(Vec::<String>::new());
        let announce = |ids: &[String]| {
            announced
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(ids.iter().cloned());
            audit
                .append(
                    &agent,
                    None,
                    "incidents-pruning",
                    json!({ "incidents": ids, "unchanged_since_before": humantime::format_rfc3339_millis(before).to_string() }),
                )
                .map(|_| ())
                .map_err(|e| crate::store::StoreError::AuditNotDurable(e.to_string()))
        };
        let pruned = self
            .ctx
            .store
            .prune_closed(&agent, before, BATCH, &announce)
            .await;
        // Announced is as good as gone, whatever the outcome: a pruning that failed part-way
        // (or whose commit's answer was lost) may have removed some, and a restore must not
        // bring those back as open.
        let announced = announced.into_inner().unwrap_or_else(|p| p.into_inner());
        self.first_states.forget(&announced);
        let pruned = pruned?;
        if pruned.len() == BATCH {
            // More may be due: the next tick goes on.
            retention.next = now;
        }
        if !pruned.is_empty() {
            self.ctx.audit.append_deferred(
                &agent,
                None,
                "incidents-pruned",
                json!({
                    "count": pruned.len(),
                    "incidents": pruned,
                    "unchanged_since_before": humantime::format_rfc3339_millis(before).to_string(),
                    "keep_closed": humantime::format_duration(retention.keep).to_string(),
                }),
            )?;
        }
        Ok(pruned.len())
    }
}
