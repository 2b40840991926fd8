//! `themis serve` on the shared store: incidents in a real PostgreSQL database (`store:
//! postgres://…`), found again by a restarted host, read by the CLI next to the running one.

use crate::common::{repo, text, themis};
use crate::serve::{INTAKE, ONCALL, ServeSpec};
use std::path::Path;
use themis_testkit::postgres::{APP_ROLE, THEMIS_ROLE, TestDb};

/// `themis doctor` on `config` with the state database `store`: (exit code, stdout).
fn doctor(config: &Path, store: &str) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_themis"))
        .args(["doctor", "--config"])
        .arg(config)
        .env("THEMIS_STORE", store)
        .env("TEST_INTAKE_TOKEN", INTAKE)
        .env("TEST_ONCALL_TOKEN", ONCALL)
        .current_dir(repo())
        .output()
        .expect("themis doctor runs");
    (out.status.code(), text(&out.stdout))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_keeps_its_incidents_in_postgres_and_finds_them_after_a_restart() {
    let Some(db) = TestDb::create("store").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ServeSpec::new(dir.path());
    // The database's owner: it creates the schema on first start (migrations).
    spec.env.push(("THEMIS_STORE", db.url(APP_ROLE)));
    // The doctor looks before anything starts: a role that cannot make the schema is named
    // with the fix; the owner can.
    let config = spec.config();
    let (code, said) = doctor(&config, &db.url(THEMIS_ROLE));
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("BAD  (host)       store") && said.contains("OWNER TO themis_agent"),
        "{said}"
    );
    let (code, said) = doctor(&config, &db.url(APP_ROLE));
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("schema to be made at start"), "{said}");

    let served = spec.start();
    let (id, _) = served.proposal("fp-pg-1").await;
    let (status, approvals) = served.get("/api/v1/approvals", ONCALL).await;
    assert_eq!(status, 200);
    served.approve(&approvals[0]).await;
    let settled = served
        .incidents_until("the run's end", |l| {
            l.iter()
                .any(|i| !matches!(i["status"].as_str(), Some("pending-approval" | "executing")))
        })
        .await;
    let status = settled[0]["status"].as_str().expect("status").to_owned();

    // The row is in the database, sealed, with its status as its index column.
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, status FROM incidents")
        .fetch_all(&db.admin)
        .await
        .expect("incidents");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].1, status);
    assert!(id.starts_with(&format!("apr-{}", &rows[0].0["inc-".len()..])));
    let holder: (i64, String) = sqlx::query_as("SELECT token, host FROM holder")
        .fetch_one(&db.admin)
        .await
        .expect("holder");
    assert_eq!(holder.0, 1);
    assert!(
        holder.1.contains(&served.child.id().to_string()),
        "{holder:?}"
    );

    let (code, said) = doctor(&config, &db.url(APP_ROLE));
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("held last by") && said.contains(&format!("pid {} (", served.child.id())),
        "{said}"
    );

    // The CLI reads it next to the running host, by the directory's marker.
    let state_dir = served.state.to_string_lossy().into_owned();
    let out = themis(&["agents", "--state-dir", &state_dir]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = themis(&["state", "export", "--state-dir", &state_dir]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("all 1 incident(s)"),
        "{}",
        text(&out.stderr)
    );

    // Killed and started again: the same incident, from the database; the token raised.
    drop(served);
    let served = spec.start();
    let list = served
        .incidents_until("the incident", |l| !l.is_empty())
        .await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], settled[0]["id"]);
    assert_eq!(list[0]["status"], status.as_str());
    let token: i64 = sqlx::query_scalar("SELECT token FROM holder")
        .fetch_one(&db.admin)
        .await
        .expect("holder");
    assert_eq!(token, 2);
}

/// Two hosts on one state database: the second waits in the server's lock queue; when the
/// first loses its session (a cut, a pause past the server's patience) the second holds the
/// state at once, and the first — fenced — turns alerts away, reports not ready, and stops.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_lost_the_state_database_to_another_stops_and_the_other_serves() {
    let Some(db) = TestDb::create("takeover").await else {
        return;
    };
    let first_dir = tempfile::tempdir().expect("tempdir");
    let mut first = ServeSpec::new(first_dir.path());
    first.env.push(("THEMIS_STORE", db.url(APP_ROLE)));
    let mut a = first.start();
    a.proposal("fp-takeover").await;

    // The second host shares the first's key (one deployment), and waits.
    let second_dir = tempfile::tempdir().expect("tempdir");
    let state = second_dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state");
    std::fs::copy(a.state.join("host.key"), state.join("host.key")).expect("key");
    // The start blocks until the host listens, on a thread of its own: the spec borrows its
    // folder for as long as that thread may run.
    let second_path: &'static Path = Box::leak(second_dir.path().to_path_buf().into_boxed_path());
    let mut second = ServeSpec::new(second_path);
    second.env.push(("THEMIS_STORE", db.url(APP_ROLE)));
    let waiting = std::thread::spawn(move || second.start());
    let advisory = |granted: bool| {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted = $1 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .bind(granted)
        .fetch_all(&db.admin)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while advisory(false).await.expect("pg_locks").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the second host never queued"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let holder = advisory(true).await.expect("pg_locks");
    assert_eq!(holder.len(), 1);
    let cut: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(holder[0])
        .fetch_one(&db.admin)
        .await
        .expect("terminate");
    assert!(cut);
    let b = waiting.join().expect("the second host starts");

    // The second holds the state, the first's incident in it.
    let list = b
        .incidents_until("the first host's incident", |l| !l.is_empty())
        .await;
    assert_eq!(list[0]["fingerprint"], "fp-takeover");
    let token: i64 = sqlx::query_scalar("SELECT token FROM holder")
        .fetch_one(&db.admin)
        .await
        .expect("holder");
    assert_eq!(token, 2);
    // Its proposal's record is in the first host's audit, not here: an answer is refused with
    // what to do (propose again), nothing run — not a 503 to retry forever.
    let (status, approvals) = b.get("/api/v1/approvals", ONCALL).await;
    assert_eq!(status, 200, "{approvals}");
    let id = approvals[0]["id"].as_str().expect("approval id");
    let (status, body) = b
        .post(
            &format!("/api/v1/approvals/{id}/approve"),
            ONCALL,
            &serde_json::json!({ "plan_digest": approvals[0]["plan_digest"] }),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("propose again") && m.contains("took the state over")),
        "{body}"
    );
    assert!(b.kinds("capability-intent").is_empty());

    // The first knows it lost the state, and stops with the reason.
    let status = loop {
        if let Some(status) = a.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the fenced host kept running"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(1));
    let (ready, _) = b.get("/readyz", ONCALL).await;
    assert_eq!(ready, 200);
}
