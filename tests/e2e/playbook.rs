//! The lock-wait playbook on real parts, everything on loopback: a real PostgreSQL with a real
//! blocked session; Debian's postgres_exporter scraping it with the queries shipped in
//! deploy/prometheus/; Debian's Prometheus evaluating the shipped alert rule; Debian's
//! Alertmanager routing the alert to `themis serve`; the PostgreSQL agent probing the real
//! database, proposing `terminate-blocker` (destructive, so it waits for a human); the approval
//! over HTTP; the blocker really terminated, the waiting query completing; and Alertmanager's
//! `resolved` reaching the incident.

use crate::common::repo;
use crate::serve::{INTAKE, ONCALL, ServeSpec, Served};
use serde_json::{Value, json};
use sqlx::Executor;
use std::time::{Duration, Instant};
use themis_testkit::postgres::{APP_ROLE, THEMIS_ROLE, TestDb};
use themis_testkit::services::{self, Service};

/// The whole trial must finish within this (the budget: < 90 s).
pub(crate) const BUDGET: Duration = Duration::from_secs(90);

/// `probe` again every 200 ms until it gives a value; the trial fails, naming `what`, once it
/// has run past the budget.
pub(crate) async fn until<T, F, Fut>(what: &str, started: Instant, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            started.elapsed() < BUDGET,
            "timed out ({} s into the trial) waiting for {what}",
            started.elapsed().as_secs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The PostgreSQL agent's incident once it waits for an approval.
async fn proposed(s: &Served, started: Instant) -> Value {
    until("the PostgreSQL agent's proposal", started, || async {
        let (_, body) = s.get("/api/v1/incidents?agent=postgres", ONCALL).await;
        body["incidents"].as_array().and_then(|l| {
            l.iter()
                .find(|i| i["status"] == "pending-approval")
                .cloned()
        })
    })
    .await
}

/// When Prometheus started firing `alertname`, as it says (`activeAt`).
async fn fired_at(prom: &Service, alertname: &str) -> Option<String> {
    let body: Value = reqwest::get(format!("{}/api/v1/alerts", prom.url))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["data"]["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == alertname && a["state"] == "firing")
        .and_then(|a| a["activeAt"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lock_wait_playbook_runs_on_real_parts() {
    let Some(db) = TestDb::create("playbook").await else {
        return;
    };
    let deploy = repo().join("deploy/prometheus");
    let Some(exporter) = services::postgres_exporter(
        &format!("{}?sslmode=disable", db.url("postgres")),
        &deploy.join("postgres-exporter-queries.yaml"),
    )
    .await
    else {
        return;
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ServeSpec::new(dir.path());
    // Prometheus is started after the service (it needs Alertmanager, which needs the
    // service's URL), so the agent's metrics backend is left out: its probe reads PostgreSQL.
    spec.real_backends = format!(
        "  postgres:\n    postgres: {{ url: \"{}\", tls: disable, statement_timeout: 5s }}\n",
        db.url(THEMIS_ROLE)
    );
    let s = spec.start();
    let Some(am) = crate::serve::alertmanager(&s.url).await else {
        return;
    };
    let host = |url: &str| url.trim_start_matches("http://").to_owned();
    let Some(prom) = services::prometheus(
        &format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             rule_files: [postgres-alerts.yml]\n\
             alerting:\n  alertmanagers: [ {{ static_configs: [ {{ targets: ['{}'] }} ] }} ]\n\
             scrape_configs:\n  - job_name: postgres\n    static_configs: [ {{ targets: ['{}'] }} ]\n",
            host(&am.url),
            host(&exporter.url)
        ),
        &[&deploy.join("postgres-alerts.yml")],
    )
    .await
    else {
        return;
    };

    // The situation: a session updates a row and stays idle in its transaction; another
    // session's update of the same row queues behind it.
    let (holder, holder_pid, waiting) = lock_queue(&db).await;
    let started = Instant::now();

    // Prometheus fires, Alertmanager notifies, the agent probes and proposes.
    let incident = proposed(&s, started).await;
    let proposed_after = started.elapsed();
    let fired = fired_at(&prom, "PostgresLockWaits").await;
    let seconds = |t: Option<&str>| {
        t.and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64())
    };
    let fired_to_proposal = match (
        seconds(fired.as_deref()),
        seconds(incident["approval"]["requested_at"].as_str()),
    ) {
        (Some(f), Some(p)) => format!("{:.1} s", p - f),
        _ => "?".into(),
    };
    assert_eq!(incident["alertname"], "PostgresLockWaits", "{incident}");
    let approval = &incident["approval"];
    assert_eq!(approval["runbook"], "terminate-blocker", "{incident}");
    assert_eq!(
        approval["params"]["pid"],
        json!(holder_pid),
        "the probe named the real blocker: {incident}"
    );
    assert!(
        db.alive(holder_pid).await,
        "nothing is terminated before the approval"
    );

    // A human approves over HTTP; the blocker is terminated; the waiter's update completes.
    s.approve(approval).await;
    let done = tokio::time::timeout(BUDGET.saturating_sub(started.elapsed()), waiting)
        .await
        .expect("the waiting update completes once its blocker is gone");
    assert!(matches!(done, Ok(Ok(1))), "{done:?}");
    assert!(!db.alive(holder_pid).await, "the blocker's backend is gone");
    let incident_id = incident["id"].as_str().expect("incident id").to_owned();
    let resolved = until("the incident to resolve", started, || async {
        let (_, i) = s
            .get(&format!("/api/v1/incidents/{incident_id}"), ONCALL)
            .await;
        (i["status"] == "resolved").then_some(i)
    })
    .await;
    // Resolved because the fix was verified: Alertmanager's `resolved`, and no re-fire within
    // the runbook's settle time.
    assert_eq!(
        resolved["verification"]["outcome"], "effective",
        "{resolved}"
    );
    assert!(
        resolved["verification"]["resolved_at"].is_string(),
        "{resolved}"
    );

    // Alertmanager's `resolved` notification reaches the incident.
    let source = until("Alertmanager's resolved notification", started, || async {
        let (_, i) = s
            .get(&format!("/api/v1/incidents/{incident_id}"), ONCALL)
            .await;
        i["source_resolved_at"].as_str().map(str::to_owned)
    })
    .await;
    // Exactly one terminate, of exactly the approved pid.
    let intents: Vec<Value> = s
        .audit()
        .into_iter()
        .filter(|r| {
            r["kind"] == "capability-intent"
                && r["data"]["intent"]["capability"] == "postgres.terminate-backend"
        })
        .collect();
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(
        intents[0]["data"]["intent"]["args"]["pid"],
        json!(holder_pid)
    );
    println!(
        "playbook on real parts: alert fired → proposal {fired_to_proposal} (the playbook's budget: 90 s); \
         lock → proposal {:.1} s (the rule fires on a 5 s wait); whole trial {:.1} s; \
         incident {} {}, Alertmanager's resolved at {source}",
        proposed_after.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        incident_id,
        resolved["status"],
    );
    drop(holder);
}

type Waiter = tokio::task::JoinHandle<Result<u64, sqlx::Error>>;

/// A real blocker and a waiter on it, in a fresh database with an `accounts` table.
async fn lock_queue(db: &TestDb) -> (sqlx::PgConnection, i32, Waiter) {
    db.admin
        .execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
             INSERT INTO accounts VALUES (1, 100);
             GRANT ALL ON accounts TO app;",
        )
        .await
        .expect("setup");
    let (mut holder, holder_pid) = db.session(APP_ROLE).await;
    holder
        .execute("BEGIN; UPDATE accounts SET balance = balance - 10 WHERE id = 1")
        .await
        .expect("the holder takes the row lock");
    let (mut waiter, _) = db.session(APP_ROLE).await;
    let waiting = tokio::spawn(async move {
        waiter
            .execute("UPDATE accounts SET balance = balance + 10 WHERE id = 1")
            .await
            .map(|r| r.rows_affected())
    });
    (holder, holder_pid, waiting)
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_mode_reads_the_real_database_and_changes_nothing() {
    let Some(db) = TestDb::create("shadow").await else {
        return;
    };
    let (mut holder, holder_pid, waiting) = lock_queue(&db).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ServeSpec::new(dir.path());
    spec.real_backends = format!(
        "  postgres:\n    mode: dry-run\n    postgres: {{ url: \"{}\", tls: disable }}\n",
        db.url(THEMIS_ROLE)
    );
    let s = spec.start();
    let (_, agents) = s.get("/api/v1/agents", ONCALL).await;
    let mode = agents
        .as_array()
        .and_then(|l| l.iter().find(|a| a["name"] == "postgres"))
        .map(|a| a["mode"].clone());
    assert_eq!(mode, Some(json!("dry-run")), "{agents}");

    let started = Instant::now();
    // Wait for the waiter to queue, then fire the alert straight at the intake.
    until("the waiter to queue", started, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
        )
        .fetch_one(&db.admin)
        .await
        .unwrap_or(0);
        (n > 0).then_some(())
    })
    .await;
    let (status, body) = s
        .post(
            "/api/v1/alerts/alertmanager",
            INTAKE,
            &crate::serve::notification("firing", &[("PostgresLockWaits", "fp-shadow", &[])]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let incident = proposed(&s, started).await;
    let approval = &incident["approval"];
    assert_eq!(approval["params"]["pid"], json!(holder_pid), "{incident}");
    s.approve(approval).await;
    let incident_id = incident["id"].as_str().expect("id").to_owned();
    until("the dry run to finish", started, || async {
        let (_, i) = s
            .get(&format!("/api/v1/incidents/{incident_id}"), ONCALL)
            .await;
        (i["status"] == "unverified" || i["status"] == "failed").then_some(())
    })
    .await;

    // Nothing changed: the blocker lives, the waiter still waits.
    assert!(
        db.alive(holder_pid).await,
        "shadow mode terminated a session"
    );
    assert!(
        !waiting.is_finished(),
        "the waiter was freed: something acted"
    );
    // The audit marks what would have been done.
    let audit = s.audit();
    let start = audit
        .iter()
        .find(|r| r["kind"] == "execution-start")
        .expect("execution-start");
    assert_eq!(start["data"]["dry_run"], true);
    let intent = audit
        .iter()
        .find(|r| {
            r["kind"] == "capability-intent"
                && r["data"]["intent"]["capability"] == "postgres.terminate-backend"
        })
        .expect("the terminate's intent");
    assert_eq!(intent["data"]["intent"]["dry_run"], true, "{intent}");
    let result = audit
        .iter()
        .find(|r| r["kind"] == "result")
        .expect("result");
    assert_eq!(
        result["data"]["would_do"][0]["capability"], "postgres.terminate-backend",
        "{result}"
    );
    assert_eq!(
        result["data"]["would_do"][0]["args"]["pid"],
        json!(holder_pid),
        "{result}"
    );

    holder
        .execute("ROLLBACK")
        .await
        .expect("the holder lets go");
    let done = tokio::time::timeout(Duration::from_secs(10), waiting).await;
    assert!(matches!(done, Ok(Ok(Ok(1)))), "{done:?}");
}

/// `themis doctor` (and `serve --check`) with `role` for the PostgreSQL agent and a
/// Prometheus nobody answers at: (exit code, stdout).
fn doctor(db: &TestDb, role: &str, command: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ServeSpec::new(dir.path());
    spec.real_backends = format!(
        "  postgres:\n    postgres: {{ url: \"{}\", tls: disable, connect_timeout: 2s }}\n    metrics: {{ url: \"http://127.0.0.1:{}\", timeout: 1s }}\n",
        db.url(role),
        services::free_port()
    );
    let config = spec.config();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_themis"))
        .args(command)
        .arg("--config")
        .arg(&config)
        .env("TEST_INTAKE_TOKEN", INTAKE)
        .env("TEST_ONCALL_TOKEN", ONCALL)
        .output()
        .expect("runs");
    (out.status.code(), crate::common::text(&out.stdout))
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_says_per_agent_what_is_reachable_and_which_privileges_are_missing() {
    let Some(db) = TestDb::create("doctor").await else {
        return;
    };
    let (code, out) = doctor(&db, themis_testkit::postgres::BARE_ROLE, &["doctor"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(
            "missing pg_monitor, pg_signal_backend: GRANT pg_monitor, pg_signal_backend TO bare"
        ),
        "{out}"
    );
    assert!(
        out.contains("BAD  postgres     metrics   unreachable"),
        "{out}"
    );
    assert!(
        out.contains("kafka        backends  a scenario's mocked world"),
        "{out}"
    );
    assert!(
        out.contains("kubernetes   backends  none configured"),
        "{out}"
    );

    let (code, out) = doctor(&db, THEMIS_ROLE, &["doctor"]);
    assert_eq!(code, Some(1), "Prometheus is still unreachable: {out}");
    assert!(
        out.contains("ok   postgres     postgres  reachable: PostgreSQL 15")
            && out.contains("as `themis_agent`")
            && out.contains("privileges ok"),
        "{out}"
    );
    // `serve --check` reports the same, and still says the service would start.
    let (code, out) = doctor(&db, THEMIS_ROLE, &["serve", "--check"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("privileges ok") && out.contains("metrics   unreachable"),
        "{out}"
    );
}
