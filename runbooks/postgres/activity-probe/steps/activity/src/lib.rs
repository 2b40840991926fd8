//! Probe: long-running queries, who blocks whom, replication lag. Read-only.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct Activity;

impl Step<dyn Postgres> for Activity {
    fn precondition(&self, _ctx: &Context, _pg: &dyn Postgres) -> Check {
        Check::pass("nothing to check before reading")
    }

    fn action(&self, _ctx: &Context, pg: &dyn Postgres) -> Outcome {
        let long = pg.activity(60.0).unwrap_or_default();
        let blockers = pg.blockers().unwrap_or_default();
        let lag = pg.replication_lag().unwrap_or_default();
        let max_lag = lag.iter().map(|r| r.replay_lag_seconds).fold(0.0, f64::max);
        let top_blocker = blockers
            .first()
            .map(|b| b.blocking_pid.to_string())
            .unwrap_or_default();
        Outcome::ok(format!(
            "{} long queries, {} lock waits, max replica lag {max_lag:.0}s",
            long.len(),
            blockers.len()
        ))
        .output("long_queries", long.len())
        .output("lock_waits", blockers.len())
        .output("top_blocker", top_blocker)
        .output("max_replica_lag_s", format!("{max_lag:.0}"))
        .evidence("long_queries", long.len())
        .evidence("lock_waits", blockers.len())
    }

    fn postcondition(&self, _ctx: &Context, _pg: &dyn Postgres) -> Check {
        Check::pass("probe recorded")
    }

    fn rollback(&self, _ctx: &Context, _pg: &dyn Postgres) -> Check {
        Check::nothing_to_undo()
    }
}

themis_runbook_sdk::export_postgres_step!(Activity);
