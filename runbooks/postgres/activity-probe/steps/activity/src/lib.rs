//! Probe: long-running queries, who blocks whom, replication lag. Read-only.
//!
//! An optional `database` (from the alert's `datname`/`dbname` label through the agent's
//! `labels:` map) narrows the long queries to that database's sessions, and the evidence says when
//! the agent's connection sees none of that database: an alert about another database is not
//! this agent's to act on.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct Activity;

impl Step<dyn Postgres> for Activity {
    fn precondition(&self, _ctx: &Context, _pg: &dyn Postgres) -> Check {
        Check::pass("nothing to check before reading")
    }

    fn action(&self, ctx: &Context, pg: &dyn Postgres) -> Outcome {
        // A read that fails leaves its output out (rules over it then do not hold, so triage
        // escalates) and says so in the evidence: "0 lock waits" must mean zero, not unknown.
        let database = ctx.param_str("database").ok();
        let long = pg.activity(60.0).map(|all| match database {
            Some(db) => all.into_iter().filter(|b| b.database == db).collect(),
            None => all,
        });
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
        // Sessions idle inside an open transaction: they hold locks and snapshots doing nothing.
        if let Ok(list) = &long {
            let idle: Vec<_> = list
                .iter()
                .filter(|b| b.state.starts_with("idle in transaction"))
                .collect();
            out = out.output("idle_in_transaction", idle.len());
            let oldest = idle
                .iter()
                .max_by(|a, b| a.xact_seconds.total_cmp(&b.xact_seconds));
            if let Some(b) = oldest {
                out = out
                    .output("oldest_idle_pid", b.pid)
                    .output("oldest_idle_seconds", format!("{:.0}", b.xact_seconds))
                    .evidence(
                        "idle_in_transaction",
                        format!(
                            "{} session(s); the oldest, pid {} ({}@{}, {}), open {:.0}s after: {}",
                            idle.len(),
                            b.pid,
                            b.user,
                            b.database,
                            b.application,
                            b.xact_seconds,
                            short(&b.query)
                        ),
                    );
            }
        }
        if let (Some(db), Ok(0)) = (database, &long_n) {
            out = out.evidence(
                "database",
                format!("no long query of database {db} is visible to this agent's connection"),
            );
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
                // The head of the blocking tree, as a human would want to see it first.
                if let Some(b) = list.first() {
                    let waiters = list
                        .iter()
                        .filter(|w| w.blocking_pid == b.blocking_pid)
                        .count();
                    out = out.evidence(
                        "top_blocker",
                        format!(
                            "pid {} blocks {waiters} session(s) on {} {} for up to {:.0}s; it runs: {}",
                            b.blocking_pid,
                            b.lock_type,
                            b.relation.as_deref().unwrap_or("-"),
                            list.iter()
                                .filter(|w| w.blocking_pid == b.blocking_pid)
                                .map(|w| w.waiting_seconds)
                                .fold(0.0, f64::max),
                            short(&b.blocking_query)
                        ),
                    );
                }
            }
            Err(e) => out = out.evidence("lock_waits", format!("unknown: {e:?}")),
        }
        out = connections(out, pg, database);
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

/// Sessions idle this long hold a connection slot for nothing (ten minutes: far past any pool's
/// think time between two queries).
const IDLE_SECONDS: f64 = 600.0;
/// The most idle pids one plan names (the runbook's `pids` parameter takes at most 20).
const MAX_IDLE_PIDS: usize = 20;

/// How full the connection slots are and who holds one idle: the facts a "too many connections"
/// alert is decided on.
fn connections(out: Outcome, pg: &dyn Postgres, database: Option<&str>) -> Outcome {
    let usage = match pg.connection_usage(IDLE_SECONDS) {
        Ok(u) => u,
        Err(e) => return out.evidence("connections", format!("unknown: {e:?}")),
    };
    let usable = (usage.max_connections - usage.reserved).max(1);
    let percent = (f64::from(usage.used) * 100.0 / f64::from(usable)).round();
    let idle: Vec<_> = usage
        .idle
        .iter()
        .filter(|b| database.is_none_or(|db| b.database == db))
        .collect();
    let pids: Vec<String> = idle
        .iter()
        .take(MAX_IDLE_PIDS)
        .map(|b| b.pid.to_string())
        .collect();
    let mut out = out
        .output("connections_used_pct", format!("{percent:.0}"))
        .output("idle_sessions", idle.len())
        .evidence(
            "connections",
            format!(
                "{} of {usable} client slots used ({percent:.0}%); {} session(s) idle ≥ {:.0}m",
                usage.used,
                idle.len(),
                IDLE_SECONDS / 60.0
            ),
        );
    if let Some(longest) = idle.first() {
        out = out.output("idle_pids", pids.join(",")).evidence(
            "longest_idle",
            format!(
                "pid {} ({}@{}, {}) idle {:.0}s after: {}",
                longest.pid,
                longest.user,
                longest.database,
                longest.application,
                longest.query_seconds,
                short(&longest.query)
            ),
        );
    }
    out
}

/// A query as evidence: one line, at most 120 characters.
fn short(query: &str) -> String {
    let flat: String = query.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

themis_runbook_sdk::export_postgres_step!(Activity);

#[cfg(test)]
mod tests {
    use super::*;
    use themis_runbook_sdk::caps::postgres_types::{Backend, ConnectionSlots, LockWait, Replica};
    use themis_runbook_sdk::mock::MockCaps;

    fn backend(pid: i32, database: &str) -> Backend {
        Backend {
            pid,
            user: "app".into(),
            database: database.into(),
            application: "api".into(),
            state: "active".into(),
            wait_event_type: None,
            wait_event: None,
            query: "select pg_sleep(600)".into(),
            query_seconds: 600.0,
            xact_seconds: 600.0,
        }
    }

    fn wait(blocked: i32, blocking: i32, seconds: f64) -> LockWait {
        LockWait {
            blocked_pid: blocked,
            blocking_pid: blocking,
            lock_type: "relation".into(),
            relation: Some("orders".into()),
            blocked_query: "update orders set n = 1".into(),
            blocking_query: "alter   table orders\n add column x int".into(),
            waiting_seconds: seconds,
        }
    }

    #[test]
    fn the_head_of_the_blocking_tree_and_the_alerts_database_reach_the_evidence() {
        let caps = MockCaps::new()
            .on(
                "postgres.activity",
                Ok(vec![backend(7, "shop"), backend(8, "billing")]),
            )
            .on(
                "postgres.blockers",
                Ok(vec![wait(11, 7, 42.0), wait(12, 7, 9.0)]),
            )
            .on("postgres.replication-lag", Ok(Vec::<Replica>::new()));
        let ctx = Context::builder("PostgresqlTooManyLocksAcquired")
            .param("database", ParamValue::Text("shop".into()))
            .build();
        let out = Activity.action(&ctx, &caps);
        assert!(out.is_ok());
        assert_eq!(out.output_value("long_queries"), Some("1"));
        assert_eq!(out.output_value("idle_in_transaction"), Some("0"));
        assert_eq!(out.output_value("top_blocker"), Some("7"));
        assert_eq!(
            out.evidence_value("top_blocker"),
            Some(
                "pid 7 blocks 2 session(s) on relation orders for up to 42s; it runs: alter table orders add column x int"
            )
        );
        let other = Context::builder("PostgresqlTooManyLocksAcquired")
            .param("database", ParamValue::Text("analytics".into()))
            .build();
        let out = Activity.action(&other, &caps);
        assert_eq!(out.output_value("long_queries"), Some("0"));
        assert!(
            out.evidence_value("database")
                .is_some_and(|e| e.contains("analytics"))
        );
    }

    #[test]
    fn the_oldest_session_idle_in_a_transaction_is_named() {
        let mut young = backend(21, "shop");
        young.state = "idle in transaction".into();
        young.xact_seconds = 400.0;
        let mut old = backend(22, "shop");
        old.state = "idle in transaction (aborted)".into();
        old.xact_seconds = 1800.0;
        let caps = MockCaps::new()
            .on(
                "postgres.activity",
                Ok(vec![backend(7, "shop"), young, old]),
            )
            .on("postgres.blockers", Ok(Vec::<LockWait>::new()))
            .on("postgres.replication-lag", Ok(Vec::<Replica>::new()));
        let out = Activity.action(&Context::builder("PGIdleTxn").build(), &caps);
        assert_eq!(out.output_value("idle_in_transaction"), Some("2"));
        assert_eq!(out.output_value("oldest_idle_pid"), Some("22"));
        assert_eq!(out.output_value("oldest_idle_seconds"), Some("1800"));
    }

    #[test]
    fn connection_slots_and_the_idle_sessions_holding_them_are_read() {
        let mut idle = backend(31, "shop");
        idle.state = "idle".into();
        idle.query_seconds = 3600.0;
        let mut other = backend(32, "billing");
        other.state = "idle".into();
        let caps = MockCaps::new()
            .on("postgres.activity", Ok(Vec::<Backend>::new()))
            .on("postgres.blockers", Ok(Vec::<LockWait>::new()))
            .on("postgres.replication-lag", Ok(Vec::<Replica>::new()))
            .on(
                "postgres.connection-usage",
                Ok(ConnectionSlots {
                    max_connections: 100,
                    reserved: 3,
                    used: 90,
                    idle: vec![idle, other],
                }),
            );
        let ctx = Context::builder("PGConnPerc")
            .param("database", ParamValue::Text("shop".into()))
            .build();
        let out = Activity.action(&ctx, &caps);
        assert_eq!(out.output_value("connections_used_pct"), Some("93"));
        assert_eq!(out.output_value("idle_sessions"), Some("1"));
        assert_eq!(out.output_value("idle_pids"), Some("31"));
        // Unreadable: no output a rule could act on, and the evidence says why.
        let blind = MockCaps::new()
            .on("postgres.activity", Ok(Vec::<Backend>::new()))
            .on("postgres.blockers", Ok(Vec::<LockWait>::new()))
            .on("postgres.replication-lag", Ok(Vec::<Replica>::new()));
        let out = Activity.action(&Context::builder("PGConnPerc").build(), &blind);
        assert_eq!(out.output_value("connections_used_pct"), None);
        assert!(
            out.evidence_value("connections")
                .is_some_and(|e| e.starts_with("unknown"))
        );
    }
}
