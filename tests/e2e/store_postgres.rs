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
