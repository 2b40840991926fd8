//! Test-only: reads `postgres.activity` `reads` times in its action — what benches/pg_call
//! measures one capability call's cost through the sandbox with, apart from the phase's own.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
struct Reads;

impl Step<dyn Postgres> for Reads {
    fn precondition(&self, _ctx: &Context, _pg: &dyn Postgres) -> Check {
        Check::pass("nothing to check before reading")
    }

    fn action(&self, ctx: &Context, pg: &dyn Postgres) -> Outcome {
        let reads = ctx.param_i64("reads").unwrap_or(1).clamp(1, 100);
        let mut rows = 0;
        for _ in 0..reads {
            match pg.activity(60.0) {
                Ok(list) => rows += list.len(),
                Err(e) => return Outcome::failed(format!("postgres.activity: {e:?}")),
            }
        }
        Outcome::ok(format!("{reads} reads, {rows} rows")).output("rows", rows)
    }

    fn postcondition(&self, _ctx: &Context, _pg: &dyn Postgres) -> Check {
        Check::pass("read only")
    }

    fn rollback(&self, _ctx: &Context, _pg: &dyn Postgres) -> Check {
        Check::nothing_to_undo()
    }
}

export_postgres_step!(Reads);
