//! Fix verification across incidents, on the runtime with a hand-moved clock: a runbook whose
//! success did not make the alert go away twice on one target is not run there a third time
//! without a human, and triage sees that history.

use crate::common::{HostSpec, records};
use std::time::{Duration, SystemTime};
use themis_agent::RuntimeOptions;
use themis_agent::store::IncidentStatus;
use themis_core::clock::Clock;
use themis_core::types::{Alert, AlertSource, Pair};

/// PostgreSQL's long-query world, three times over: each incident's probe and the cancel's
/// precondition see the runaway query, its postcondition sees it gone.
const WORLD: &str = r#"name: a runaway query that keeps coming back
agent: ../../agents/postgres.yaml
alert: { name: PostgresLongRunningQueries, labels: { database: orders } }
mocks:
  postgres.activity:
    - sequence:
        - &long { ok: [ { pid: 4242, user: report, database: orders, application: bi, state: active, query: "select * from events", query_seconds: 1900, xact_seconds: 1900 } ] }
        - *long
        - &gone { ok: [] }
        - *long
        - *long
        - *gone
        - *long
        - *long
        - *gone
  postgres.blockers:
    - ok: []
  postgres.replication-lag:
    - ok: []
  postgres.cancel-backend:
    - ok: true
"#;

/// The long-query alert as Alertmanager sends it, one replica's (its own fingerprint).
fn alert(replica: &str, status: &str) -> Alert {
    Alert {
        name: "PostgresLongRunningQueries".into(),
        fingerprint: format!("fp-{replica}"),
        labels: vec![
            Pair {
                key: "database".into(),
                value: "orders".into(),
            },
            Pair {
                key: "replica".into(),
                value: replica.into(),
            },
        ],
        annotations: vec![],
        source: Some(AlertSource {
            status: status.into(),
            ..AlertSource::default()
        }),
    }
}

/// The PostgreSQL agent on `world`, its time `clock`'s, verified only when asked.
fn postgres_host<'a>(dir: &'a std::path::Path, world: &'a str, clock: &Clock) -> HostSpec<'a> {
    HostSpec {
        options: RuntimeOptions {
            clock: clock.clone(),
            verify_tick: None,
            ..RuntimeOptions::default()
        },
        ..HostSpec::new(dir, "agents/postgres.yaml", world)
    }
}

/// The world above, written into `dir`.
fn world_in(dir: &std::path::Path) -> String {
    let world = dir.join("world.yaml");
    std::fs::write(&world, WORLD).expect("world");
    world.to_str().expect("utf-8").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn twice_ineffective_on_a_target_then_a_human_decides_and_triage_sees_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let world = world_in(dir.path());
    let clock = Clock::manual(SystemTime::now());
    let host = postgres_host(dir.path(), &world, &clock)
        .start()
        .await
        .expect("runtime");
    let rt = &host.runtime;

    for replica in ["a", "b"] {
        let incident = host.new_incident(alert(replica, "firing")).await;
        assert_eq!(
            incident.status,
            IncidentStatus::Verifying,
            "the cancel ran on its own and is watched: {incident:?}"
        );
        clock.advance(Duration::from_secs(30));
        rt.handle_resolved(alert(replica, "resolved"))
            .await
            .expect("resolved");
        clock.advance(Duration::from_secs(30));
        // Back inside the settle time: the cancel did not fix it.
        rt.handle_alert(alert(replica, "firing"))
            .await
            .expect("re-fired");
        let incident = rt.store().get(&incident.id).await.expect("incident");
        assert_eq!(incident.status, IncidentStatus::Escalated, "{incident:?}");
        let verdict = incident
            .verification
            .and_then(|w| w.verdict)
            .expect("a verdict");
        assert!(verdict.why.contains("fired again 30s later"), "{verdict:?}");
        // Past the cooldown before the next alert.
        clock.advance(Duration::from_secs(6 * 60));
    }

    let third = host.new_incident(alert("c", "firing")).await;
    assert_eq!(third.status, IncidentStatus::PendingApproval, "{third:?}");
    let reason = third.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("a guard rail (ineffective)")
            && reason.contains("did not fix postgres:cancel-long-queries the last 2 time(s)"),
        "{reason}"
    );
    let book = rt.guard_book().await;
    let h = book
        .history_of("postgres:cancel-long-queries", "cancel-long-queries")
        .expect("history");
    assert_eq!((h.runs, h.ineffective), (2, 2), "{h:?}");

    // Triage was shown the history with the third alert.
    let records = records(&host.audit_path);
    let selection = records
        .iter()
        .rev()
        .find(|r| r["kind"] == "selection" && r["incident"] == third.id.as_str())
        .expect("the third selection");
    let history = &selection["data"]["input"]["history"];
    assert_eq!(history[0]["runbook"], "cancel-long-queries", "{selection}");
    assert_eq!(history[0]["ineffective"], 2, "{selection}");
    assert_eq!(history[0]["last"], "ineffective", "{selection}");
    // Two verdicts on the record, each also counted as a failed run.
    let verdicts: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "verification")
        .collect();
    assert_eq!(verdicts.len(), 2);
    assert!(
        verdicts
            .iter()
            .all(|r| r["data"]["effect"] == "ineffective")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_carries_on_verifying_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let world = world_in(dir.path());
    let clock = Clock::manual(SystemTime::now());
    let host = postgres_host(dir.path(), &world, &clock)
        .start()
        .await
        .expect("runtime");
    let incident = host.new_incident(alert("a", "firing")).await;
    assert_eq!(incident.status, IncidentStatus::Verifying, "{incident:?}");
    host.runtime.shutdown().await;
    drop(host.store);

    // A new process: the watch is on the incident, the window still counts from the run.
    let host = postgres_host(dir.path(), &world, &clock)
        .start()
        .await
        .expect("restarted");
    clock.advance(Duration::from_secs(20));
    host.runtime
        .handle_resolved(alert("a", "resolved"))
        .await
        .expect("resolved");
    // Past the default settle time (2m) with no re-fire.
    clock.advance(Duration::from_secs(110));
    assert_eq!(host.runtime.verify_due().await.expect("looked"), 1);
    let incident = host
        .runtime
        .store()
        .get(&incident.id)
        .await
        .expect("incident");
    assert_eq!(incident.status, IncidentStatus::Resolved, "{incident:?}");
    let verdict = incident
        .verification
        .and_then(|w| w.verdict)
        .expect("verdict");
    assert!(
        verdict.why.contains("resolved 20s after the run"),
        "{verdict:?}"
    );
}
