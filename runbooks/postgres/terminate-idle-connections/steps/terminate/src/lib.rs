//! End the named sessions that are still idle past the limit, while connection slots run short;
//! verify they are gone.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct Terminate;

/// The pids the plan names (the grant admits exactly these).
fn named(ctx: &Context) -> Vec<i32> {
    ctx.param_str("pids")
        .unwrap_or("")
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

impl Step<dyn Postgres> for Terminate {
    fn precondition(&self, ctx: &Context, pg: &dyn Postgres) -> Check {
        let (Ok(min_idle), Ok(min_used)) = (
            ctx.param_f64("min_idle_seconds"),
            ctx.param_f64("min_used_percent"),
        ) else {
            return Check::fail("min_idle_seconds and min_used_percent are required");
        };
        let pids = named(ctx);
        if pids.is_empty() {
            return Check::fail("the plan names no session to end");
        }
        let usage = match pg.connection_usage(min_idle) {
            Ok(u) => u,
            Err(e) => return Check::fail(format!("cannot read connection usage: {e:?}")),
        };
        let usable = (usage.max_connections - usage.reserved).max(1);
        let percent = f64::from(usage.used) * 100.0 / f64::from(usable);
        if percent < min_used {
            return Check::fail(format!(
                "{} of {usable} client slots used ({percent:.0}%), under {min_used:.0}%: nothing to free",
                usage.used
            ));
        }
        // Only the named sessions that are still idle, and idle long enough, are ended.
        let still: Vec<String> = usage
            .idle
            .iter()
            .filter(|b| b.state == "idle" && pids.contains(&b.pid))
            .map(|b| b.pid.to_string())
            .collect();
        if still.is_empty() {
            return Check::fail(format!(
                "none of the {} named session(s) is still idle ≥ {min_idle:.0}s",
                pids.len()
            ));
        }
        Check::pass(format!(
            "{} of {usable} slots used ({percent:.0}%); {} of the {} named session(s) still idle ≥ {min_idle:.0}s",
            usage.used,
            still.len(),
            pids.len()
        ))
        .output("pids", still.join(","))
        .evidence("used_percent", format!("{percent:.0}"))
    }

    fn action(&self, ctx: &Context, pg: &dyn Postgres) -> Outcome {
        let pids: Vec<i32> = ctx
            .output(ctx.step_id(), "pids")
            .unwrap_or("")
            .split(',')
            .filter_map(|p| p.parse().ok())
            .collect();
        let mut ended = 0;
        for pid in &pids {
            match pg.terminate_backend(*pid) {
                Ok(true) => ended += 1,
                // Gone already: its slot is free, which is what was wanted.
                Ok(false) => {}
                Err(e) => {
                    return Outcome::failed(format!(
                        "terminating {pid} failed after {ended} ended: {e:?}"
                    ));
                }
            }
        }
        Outcome::ok(format!("ended {ended} of {} idle session(s)", pids.len()))
            .evidence("ended", ended)
    }

    fn postcondition(&self, ctx: &Context, pg: &dyn Postgres) -> Check {
        if ctx.dry_run() {
            return Check::pass("dry run: no session was ended");
        }
        let ended = ctx.output(ctx.step_id(), "pids").unwrap_or("");
        // Idle for any time at all: a pid still listed is still connected.
        match pg.connection_usage(0.0) {
            Ok(usage) => {
                let still: Vec<String> = usage
                    .idle
                    .iter()
                    .map(|b| b.pid.to_string())
                    .filter(|p| ended.split(',').any(|e| e == p))
                    .collect();
                Check::from_bool(
                    still.is_empty(),
                    if still.is_empty() {
                        format!(
                            "the sessions are gone; {} client connections now",
                            usage.used
                        )
                    } else {
                        format!("still connected: {}", still.join(","))
                    },
                )
            }
            Err(e) => Check::fail(format!("cannot read connection usage: {e:?}")),
        }
    }

    fn rollback(&self, _ctx: &Context, _pg: &dyn Postgres) -> Check {
        Check::pass("an ended session is not restored; its client reconnects when it needs to")
    }
}

themis_runbook_sdk::export_postgres_step!(Terminate);

#[cfg(test)]
mod tests {
    use super::*;
    use themis_runbook_sdk::caps::postgres_types::{Backend, ConnectionSlots};
    use themis_runbook_sdk::mock::MockCaps;

    fn idle(pid: i32, state: &str) -> Backend {
        Backend {
            pid,
            user: "api".into(),
            database: "shop".into(),
            application: "pool".into(),
            state: state.into(),
            wait_event_type: Some("Client".into()),
            wait_event: Some("ClientRead".into()),
            query: "select 1".into(),
            query_seconds: 3600.0,
            xact_seconds: 0.0,
        }
    }

    fn usage(used: i32, idle: Vec<Backend>) -> ConnectionSlots {
        ConnectionSlots {
            max_connections: 100,
            reserved: 3,
            used,
            idle,
        }
    }

    fn ctx(pids: &str) -> Context {
        Context::builder("PGConnPerc")
            .param("pids", ParamValue::Text(pids.into()))
            .param("min_idle_seconds", ParamValue::Number(600.0))
            .param("min_used_percent", ParamValue::Number(80.0))
            .build()
    }

    #[test]
    fn only_named_sessions_still_idle_while_slots_are_short_are_ended() {
        let full = MockCaps::new().on(
            "postgres.connection-usage",
            Ok(usage(
                95,
                vec![idle(11, "idle"), idle(12, "idle"), idle(13, "idle")],
            )),
        );
        let check = Terminate.precondition(&ctx("11,12,99"), &full);
        assert!(check.passed(), "{}", check.summary());
        // 13 is idle but not named; 99 is named but no longer idle.
        assert_eq!(check.output_value("pids"), Some("11,12"));

        let roomy = MockCaps::new().on(
            "postgres.connection-usage",
            Ok(usage(40, vec![idle(11, "idle")])),
        );
        assert!(!Terminate.precondition(&ctx("11"), &roomy).passed());

        let busy_again = MockCaps::new().on("postgres.connection-usage", Ok(usage(95, vec![])));
        assert!(!Terminate.precondition(&ctx("11"), &busy_again).passed());
    }
}
