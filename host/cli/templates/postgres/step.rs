//! Step `{{step}}` of runbook {{id}}: cancel queries running longer than a limit.
//!
//! The host calls the four phases in order: `precondition` (read-only: is this the situation the
//! step is for?), `action` (the change), `postcondition` (read-only: did it work?), and
//! `rollback` only when the action or postcondition failed. Every call on `pg` goes through the
//! host, checked against the capabilities the manifest grants this step and audited.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct Cancel;

impl Step<dyn Postgres> for Cancel {
    fn precondition(&self, ctx: &Context, pg: &dyn Postgres) -> Check {
        let Ok(min) = ctx.param_f64("min_seconds") else {
            return Check::fail("the `min_seconds` parameter is required");
        };
        match pg.activity(min) {
            Ok(list) if list.is_empty() => Check::fail(format!("no query has run {min:.0}s")),
            // `output` values are visible to later phases and steps through `ctx.output`.
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
            return Check::fail("the `min_seconds` parameter is required");
        };
        if ctx.dry_run() {
            return Check::pass("dry run: nothing was cancelled");
        }
        let before = ctx.output(ctx.step_id(), "pids").unwrap_or("");
        match pg.activity(min) {
            Ok(list) => {
                let still = list
                    .iter()
                    .filter(|b| before.split(',').any(|p| p == b.pid.to_string()))
                    .count();
                Check::from_bool(still == 0, format!("{still} of the long queries still run"))
            }
            Err(e) => Check::fail(format!("cannot read activity: {e:?}")),
        }
    }

    fn rollback(&self, _ctx: &Context, _pg: &dyn Postgres) -> Check {
        Check::pass("a cancelled query is not resumed; its client retries or reports")
    }
}

themis_runbook_sdk::export_postgres_step!(Cancel);

#[cfg(test)]
mod tests {
    use super::*;
    use themis_runbook_sdk::caps::postgres_types::Backend;
    use themis_runbook_sdk::mock::MockCaps;

    fn ctx() -> Context {
        Context::builder("PostgresLongRunningQueries")
            .param("min_seconds", ParamValue::Number(300.0))
            .build()
    }

    #[test]
    fn nothing_to_cancel_means_the_step_does_not_run() {
        let idle = MockCaps::new().on("postgres.activity", Ok(Vec::<Backend>::new()));
        assert!(!Cancel.precondition(&ctx(), &idle).passed());
        assert!(!idle.called("postgres.cancel-backend"));
    }
}
