//! Terminate one session idle in an open transaction past a limit; verify it is gone.

use themis_runbook_sdk::caps::postgres_types::Backend;
use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct Terminate;

/// `idle in transaction` and `idle in transaction (aborted)`.
fn idle_in_transaction(b: &Backend) -> bool {
    b.state.starts_with("idle in transaction")
}

/// The session as the server sees it now (every non-idle client session of the database).
fn session(pg: &dyn Postgres, pid: i32) -> Result<Option<Backend>, String> {
    pg.activity(0.0)
        .map(|all| all.into_iter().find(|b| b.pid == pid))
        .map_err(|e| format!("cannot read activity: {e:?}"))
}

impl Step<dyn Postgres> for Terminate {
    fn precondition(&self, ctx: &Context, pg: &dyn Postgres) -> Check {
        let (Ok(pid), Ok(min)) = (ctx.param_i32("pid"), ctx.param_f64("min_idle_seconds")) else {
            return Check::fail("pid and min_idle_seconds are required");
        };
        match session(pg, pid) {
            Err(e) => Check::fail(e),
            Ok(None) => Check::fail(format!("pid {pid} is gone or idle: nothing to end")),
            Ok(Some(b)) if !idle_in_transaction(&b) => Check::fail(format!(
                "pid {pid} is `{}` now, not idle in a transaction: left alone",
                b.state
            )),
            Ok(Some(b)) if b.xact_seconds < min => Check::fail(format!(
                "pid {pid}'s transaction is open {:.0}s, under the {min:.0}s limit: left alone",
                b.xact_seconds
            )),
            Ok(Some(b)) => Check::pass(format!(
                "pid {pid} ({}@{}, {}) idle in a transaction open {:.0}s",
                b.user, b.database, b.application, b.xact_seconds
            ))
            .evidence("xact_seconds", format!("{:.0}", b.xact_seconds))
            .evidence("last_query", &b.query),
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
        if ctx.dry_run() {
            return Check::pass("dry run: nothing was terminated");
        }
        match session(pg, pid) {
            Err(e) => Check::fail(e),
            Ok(None) => Check::pass(format!(
                "pid {pid} is gone; its transaction was rolled back"
            )),
            Ok(Some(b)) => Check::fail(format!("pid {pid} is still there, `{}`", b.state)),
        }
    }

    fn rollback(&self, _ctx: &Context, _pg: &dyn Postgres) -> Check {
        Check::fail("a terminated session cannot be restored: its transaction was rolled back")
    }
}

themis_runbook_sdk::export_postgres_step!(Terminate);

#[cfg(test)]
mod tests {
    use super::*;
    use themis_runbook_sdk::mock::MockCaps;

    fn backend(pid: i32, state: &str, xact_seconds: f64) -> Backend {
        Backend {
            pid,
            user: "app".into(),
            database: "orders".into(),
            application: "checkout".into(),
            state: state.into(),
            wait_event_type: Some("Client".into()),
            wait_event: Some("ClientRead".into()),
            query: "update orders set paid = true where id = 7".into(),
            query_seconds: xact_seconds,
            xact_seconds,
        }
    }

    fn ctx(pid: i32) -> Context {
        Context::builder("PGIdleTxn")
            .param("pid", ParamValue::Integer(pid.into()))
            .param("min_idle_seconds", ParamValue::Number(300.0))
            .build()
    }

    #[test]
    fn only_a_session_still_idle_in_its_transaction_past_the_limit_is_ended() {
        for (session, holds, says) in [
            (backend(42, "idle in transaction", 900.0), true, "open 900s"),
            (
                backend(42, "idle in transaction (aborted)", 900.0),
                true,
                "open 900s",
            ),
            (backend(42, "active", 900.0), false, "is `active` now"),
            (
                backend(42, "idle in transaction", 12.0),
                false,
                "under the 300s limit",
            ),
            (
                backend(7, "idle in transaction", 900.0),
                false,
                "gone or idle",
            ),
        ] {
            let caps = MockCaps::new().on("postgres.activity", Ok(vec![session]));
            let check = Terminate.precondition(&ctx(42), &caps);
            assert_eq!(check.passed(), holds, "{}", check.summary());
            assert!(check.summary().contains(says), "{}", check.summary());
        }
    }

    #[test]
    fn the_postcondition_reads_the_server_again() {
        let gone = MockCaps::new().on("postgres.activity", Ok(Vec::<Backend>::new()));
        assert!(Terminate.postcondition(&ctx(42), &gone).passed());
        let still = MockCaps::new().on(
            "postgres.activity",
            Ok(vec![backend(42, "idle in transaction", 950.0)]),
        );
        assert!(!Terminate.postcondition(&ctx(42), &still).passed());
    }

    #[test]
    fn terminating_asks_for_exactly_the_planned_pid() {
        let caps = MockCaps::new().on("postgres.terminate-backend", Ok(true));
        assert!(Terminate.action(&ctx(42), &caps).is_ok());
        assert_eq!(caps.calls()[0].args, "pid=42");
    }
}
