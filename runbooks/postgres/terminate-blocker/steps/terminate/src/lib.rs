//! Terminate the blocking session; verify nobody waits on it any more.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct Terminate;

impl Step<dyn Postgres> for Terminate {
    fn precondition(&self, ctx: &Context, pg: &dyn Postgres) -> Check {
        let Ok(pid) = ctx.param_i32("pid") else {
            return Check::fail("pid (a 32-bit backend pid) is required");
        };
        match pg.blockers() {
            Ok(w) => {
                let blocked = w.iter().filter(|l| l.blocking_pid == pid).count();
                Check::from_bool(
                    blocked > 0,
                    format!("pid {pid} blocks {blocked} session(s)"),
                )
                .evidence("blocked", blocked)
            }
            Err(e) => Check::fail(format!("cannot read lock waits: {e:?}")),
        }
    }

    fn action(&self, ctx: &Context, pg: &dyn Postgres) -> Outcome {
        let Ok(pid) = ctx.param_i32("pid") else {
            return Outcome::failed("pid (a 32-bit backend pid) is required");
        };
        match pg.terminate_backend(pid) {
            Ok(true) => Outcome::ok(format!("terminated {pid}")),
            Ok(false) => Outcome::failed(format!("{pid} was already gone")),
            Err(e) => Outcome::failed(format!("terminate refused or failed: {e:?}")),
        }
    }

    fn postcondition(&self, ctx: &Context, pg: &dyn Postgres) -> Check {
        let Ok(pid) = ctx.param_i32("pid") else {
            return Check::fail("pid (a 32-bit backend pid) is required");
        };
        match pg.blockers() {
            Ok(_) if ctx.dry_run() => Check::pass("dry run: nothing was terminated"),
            Ok(w) => Check::from_bool(
                !w.iter().any(|l| l.blocking_pid == pid),
                format!("nobody waits on {pid} any more"),
            ),
            Err(e) => Check::fail(format!("cannot read lock waits: {e:?}")),
        }
    }

    fn rollback(&self, _ctx: &Context, _pg: &dyn Postgres) -> Check {
        Check::fail("a terminated session cannot be restored: its transaction was rolled back")
    }
}

themis_runbook_sdk::export_postgres_step!(Terminate);
