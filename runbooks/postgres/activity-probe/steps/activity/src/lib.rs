//! Probe: long-running queries, who blocks whom, replication lag. Read-only.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct Activity;

impl Step<dyn Postgres> for Activity {
    fn precondition(&self, _ctx: &Context, _pg: &dyn Postgres) -> Check {
        Check::pass("nothing to check before reading")
    }

    fn action(&self, _ctx: &Context, pg: &dyn Postgres) -> Outcome {
        // A read that fails leaves its output out (rules over it then do not hold, so triage
        // escalates) and says so in the evidence: "0 lock waits" must mean zero, not unknown.
        let long = pg.activity(60.0);
        let blockers = pg.blockers();
        let lag = pg.replication_lag();
        let count = |r: &Result<usize, String>| match r {
            Ok(n) => n.to_string(),
            Err(_) => "unknown".to_string(),
        };
        let long_n = long.as_ref().map(Vec::len).map_err(|e| format!("{e:?}"));
        let blockers_n = blockers
            .as_ref()
            .map(Vec::len)
            .map_err(|e| format!("{e:?}"));
        let mut out = Outcome::ok(format!(
            "{} long queries, {} lock waits",
            count(&long_n),
            count(&blockers_n)
        ));
        match &long_n {
            Ok(n) => out = out.output("long_queries", n).evidence("long_queries", n),
            Err(e) => out = out.evidence("long_queries", format!("unknown: {e}")),
        }
        match &blockers {
            Ok(list) => {
                let top = list
                    .first()
                    .map(|b| b.blocking_pid.to_string())
                    .unwrap_or_default();
                out = out
                    .output("lock_waits", list.len())
                    .output("top_blocker", top)
                    .evidence("lock_waits", list.len());
            }
            Err(e) => out = out.evidence("lock_waits", format!("unknown: {e:?}")),
        }
        match &lag {
            Ok(rows) => {
                let max = rows
                    .iter()
                    .map(|r| r.replay_lag_seconds)
                    .fold(0.0, f64::max);
                out = out.output("max_replica_lag_s", format!("{max:.0}"));
            }
            Err(e) => out = out.evidence("replica_lag", format!("unknown: {e:?}")),
        }
        out
    }

    fn postcondition(&self, _ctx: &Context, _pg: &dyn Postgres) -> Check {
        Check::pass("probe recorded")
    }

    fn rollback(&self, _ctx: &Context, _pg: &dyn Postgres) -> Check {
        Check::nothing_to_undo()
    }
}

themis_runbook_sdk::export_postgres_step!(Activity);
