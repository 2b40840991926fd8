//! Cancel long-running queries; verify they are gone.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct Cancel;

impl Step<dyn Postgres> for Cancel {
    fn precondition(&self, ctx: &Context, pg: &dyn Postgres) -> Check {
        let Ok(min) = ctx.param_f64("min_seconds") else {
            return Check::fail("min_seconds is required");
        };
        match pg.activity(min) {
            Ok(list) if list.is_empty() => {
                Check::fail(format!("no query has run {min:.0}s: nothing to cancel"))
            }
            Ok(list) => {
                let pids: Vec<String> = list.iter().map(|b| b.pid.to_string()).collect();
                Check::pass(format!("{} queries over {min:.0}s", list.len()))
                    .output("pids", pids.join(","))
            }
            Err(e) => Check::fail(format!("cannot read activity: {e:?}")),
        }
    }

    fn action(&self, ctx: &Context, pg: &dyn Postgres) -> Outcome {
        let pids: Vec<i32> = ctx
            .output(ctx.step_id(), "pids")
            .unwrap_or("")
            .split(',')
            .filter_map(|p| p.parse().ok())
            .collect();
        let mut cancelled = 0;
        for pid in &pids {
            match pg.cancel_backend(*pid) {
                Ok(true) => cancelled += 1,
                Ok(false) => {}
                Err(e) => return Outcome::failed(format!("cancel of {pid} failed: {e:?}")),
            }
        }
        Outcome::ok(format!("cancelled {cancelled} of {} queries", pids.len()))
            .evidence("cancelled", cancelled)
    }

    fn postcondition(&self, ctx: &Context, pg: &dyn Postgres) -> Check {
        let Ok(min) = ctx.param_f64("min_seconds") else {
            return Check::fail("min_seconds is required");
        };
        let before = ctx.output(ctx.step_id(), "pids").unwrap_or("");
        match pg.activity(min) {
            Ok(_) if ctx.dry_run() => Check::pass("dry run: nothing was cancelled"),
            Ok(list) => {
                let still: Vec<String> = list
                    .iter()
                    .map(|b| b.pid.to_string())
                    .filter(|p| before.split(',').any(|b| b == p))
                    .collect();
                Check::from_bool(
                    still.is_empty(),
                    if still.is_empty() {
                        "the long queries are gone".to_string()
                    } else {
                        format!("still running: {}", still.join(","))
                    },
                )
            }
            Err(e) => Check::fail(format!("cannot read activity: {e:?}")),
        }
    }

    fn rollback(&self, _ctx: &Context, _pg: &dyn Postgres) -> Check {
        Check::pass("a cancelled query is not resumed; the client retries or reports")
    }
}

themis_runbook_sdk::export_postgres_step!(Cancel);
