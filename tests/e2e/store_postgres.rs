//! `themis serve` on the shared store: incidents in a real PostgreSQL database (`store:
//! postgres://…`), found again by a restarted host, read by the CLI next to the running one.

use crate::common::{repo, text, themis};
use crate::serve::{INTAKE, ONCALL, ServeSpec};
use std::path::Path;
use themis_testkit::postgres::{APP_ROLE, THEMIS_ROLE, TestDb};

/// A host whose state is in `db`.
fn on_db<'a>(dir: &'a Path, db: &TestDb) -> ServeSpec<'a> {
    let mut spec = ServeSpec::new(dir);
    spec.env.push(("THEMIS_STORE", db.url(APP_ROLE)));
    spec
}

/// The folder of a second host of `first`'s deployment: it holds the first's host key.
fn same_deployment(first: &crate::serve::Served) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state");
    std::fs::copy(first.state.join("host.key"), state.join("host.key")).expect("key");
    dir
}

/// A first host on `db` with a proposal for `fingerprint` waiting, and a second of the same
/// deployment waiting for the state in the server's lock queue: its start (which returns once
/// it holds the state and serves) runs on a thread of its own. The folders live as long as the
/// first value.
async fn holder_and_waiting(
    db: &TestDb,
    fingerprint: &str,
) -> (
    (tempfile::TempDir, tempfile::TempDir),
    crate::serve::Served,
    std::thread::JoinHandle<crate::serve::Served>,
) {
    let first_dir = tempfile::tempdir().expect("tempdir");
    let a = on_db(first_dir.path(), db).start();
    a.proposal(fingerprint).await;
    let second_dir = same_deployment(&a);
    // The thread may outlive this borrow's scope as far as the compiler knows.
    let second_path: &'static Path = Box::leak(second_dir.path().to_path_buf().into_boxed_path());
    let second = on_db(second_path, db);
    let waiting = std::thread::spawn(move || second.start());
    ((first_dir, second_dir), a, waiting)
}

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
/// state at once, continues the first's audit chain and answers its proposal, and the first —
/// fenced — turns alerts away, reports not ready, and stops.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_lost_the_state_database_to_another_stops_and_the_other_serves() {
    let Some(db) = TestDb::create("takeover").await else {
        return;
    };
    let (_dirs, mut a, waiting) = holder_and_waiting(&db, "fp-takeover").await;
    let advisory = |granted: bool| {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted = $1 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
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
    // The chain is shared: the second host continued the first's, so it answers the first's
    // proposal — re-read from its own copy of the chain, checked by its hash — and runs it.
    let escalated = a.kinds("escalation");
    assert_eq!(escalated.len(), 1);
    let copied = b.audit();
    assert!(
        copied.iter().any(|r| r == &escalated[0]),
        "the first host's escalation is not on the second's chain"
    );
    let (status, approvals) = b.get("/api/v1/approvals", ONCALL).await;
    assert_eq!(status, 200, "{approvals}");
    b.approve(&approvals[0]).await;
    b.incidents_until("the run's end", |l| {
        l.iter()
            .any(|i| !matches!(i["status"].as_str(), Some("pending-approval" | "executing")))
    })
    .await;
    assert_eq!(b.kinds("approval").len(), 1);
    let verified = std::process::Command::new(env!("CARGO_BIN_EXE_themis"))
        .args(["audit", "verify"])
        .arg(b.state.join("audit.jsonl"))
        .output()
        .expect("themis audit verify");
    assert!(verified.status.success(), "{}", text(&verified.stdout));
    // And the database holds the same chain, up to the second host's head.
    let shared: Vec<(i64, String)> = sqlx::query_as("SELECT seq, hash FROM audit ORDER BY seq")
        .fetch_all(&db.admin)
        .await
        .expect("audit rows");
    let local: Vec<(i64, String)> = b
        .audit()
        .iter()
        .map(|r| {
            (
                r["seq"].as_i64().expect("seq"),
                r["hash"].as_str().expect("hash").to_owned(),
            )
        })
        .collect();
    assert_eq!(shared[..], local[..shared.len()]);
    let approval = &b.kinds("approval")[0];
    assert!(
        shared
            .iter()
            .any(|(seq, hash)| Some(*seq) == approval["seq"].as_i64()
                && Some(hash.as_str()) == approval["hash"].as_str()),
        "the approval is not on the shared chain"
    );

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

/// The holder's lease: a host that stops answering (paused here with SIGSTOP; hung, or cut off
/// from the database, alike) loses the state within the lease — the server ends its idle
/// session — and the host standing by takes over; woken, the old holder finds itself fenced and
/// stops without writing.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_holder_loses_the_state_to_the_host_standing_by_within_the_lease() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Some(db) = TestDb::create("lease").await else {
        return;
    };
    let (_dirs, mut a, standing_by) = holder_and_waiting(&db, "fp-lease").await;
    // The second waits in the lock queue for as long as the first holds the state.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(
        !standing_by.is_finished(),
        "the second host did not stand by"
    );

    let pid = Pid::from_raw(i32::try_from(a.child.id()).expect("pid"));
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let paused = std::time::Instant::now();
    let b =
        tokio::task::spawn_blocking(move || standing_by.join().expect("the second host starts"))
            .await
            .expect("join");
    let took = paused.elapsed();
    assert!(
        took < std::time::Duration::from_secs(25),
        "the takeover took {took:?}"
    );
    let token: i64 = sqlx::query_scalar("SELECT token FROM holder")
        .fetch_one(&db.admin)
        .await
        .expect("holder");
    assert_eq!(token, 2);
    // The second continues the first's chain: the first's proposal is answerable there.
    let (status, approvals) = b.get("/api/v1/approvals", ONCALL).await;
    assert_eq!(status, 200, "{approvals}");
    assert_eq!(approvals.as_array().map(Vec::len), Some(1), "{approvals}");
    let shared_before: i64 = sqlx::query_scalar("SELECT count(*) FROM audit")
        .fetch_one(&db.admin)
        .await
        .expect("count");

    // Woken, the first is fenced: it stops (exit 1), and the shared chain took nothing from it.
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
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
    let rows: Vec<String> = sqlx::query_scalar("SELECT line FROM audit ORDER BY seq")
        .fetch_all(&db.admin)
        .await
        .expect("audit rows");
    assert!(rows.len() as i64 >= shared_before);
    let b_chain: Vec<serde_json::Value> = b.audit();
    for line in &rows {
        let record: serde_json::Value = serde_json::from_str(line).expect("record");
        assert!(
            b_chain.contains(&record),
            "a shared record the holder never wrote: {line}"
        );
    }
    let (ready, _) = b.get("/readyz", ONCALL).await;
    assert_eq!(ready, 200);
}

/// Every host of a deployment serves: one standing by checks a notification as the holder
/// would, stores it in the database's inbox (durable before its 200), and the holder takes it
/// up onto its chain; answers and reads it passes on to the holder at the address the holder
/// advertised, and the holder's answer back. The holder names itself as each agent's leader.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_standing_by_takes_alerts_for_the_holder() {
    use crate::serve::{AM, INTAKE, LAG, notification};
    let Some(db) = TestDb::create("inbox").await else {
        return;
    };
    let first_dir = tempfile::tempdir().expect("tempdir");
    let first = on_db(first_dir.path(), &db);
    let a = first.start();
    let second_dir = same_deployment(&a);
    let second = on_db(second_dir.path(), &db);
    let b = second.start_standing_by();

    // Refused as the holder refuses: no token, a malformed body — nothing stored.
    let (status, _) = b
        .post(
            AM,
            "not-a-token",
            &notification("firing", &[("KafkaConsumerLag", "fp-x", LAG)]),
        )
        .await;
    assert_eq!(status, 401);
    let (status, body) = b
        .post(AM, INTAKE, &serde_json::json!({ "version": "4" }))
        .await;
    assert_eq!(status, 400, "{body}");
    // Refused, and that is on the holder's record (a 4xx is not retried: alerts lost).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !a
        .kinds("alert-refused")
        .iter()
        .any(|r| r["data"]["stored_by"].is_string() && r["data"]["status"] == 400)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the standby's refusal is not on the record"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A host whose key is not the deployment's stores nothing the holder would refuse after
    // its 200: it answers 503, naming the key.
    let foreign_dir = tempfile::tempdir().expect("tempdir");
    let c = on_db(foreign_dir.path(), &db).start_standing_by();
    let (status, body) = c
        .post(
            AM,
            INTAKE,
            &notification("firing", &[("KafkaConsumerLag", "fp-foreign", LAG)]),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(body["message"].to_string().contains("host.key"), "{body}");
    drop(c);
    let (status, body) = b
        .post(
            AM,
            INTAKE,
            &notification("firing", &[("KafkaConsumerLag", "fp-inbox", LAG)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["alerts"][0]["outcome"], "stored");
    // A firing stored by the standby, then its `resolved` sent to the holder at once (well
    // inside the holder's half-second look at the inbox): the holder takes what waits first,
    // so the firing is on its chain before the resolved, never after it.
    let (status, body) = b
        .post(
            AM,
            INTAKE,
            &notification("firing", &[("KafkaConsumerLag", "fp-order", LAG)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["alerts"][0]["outcome"], "stored");
    let (status, body) = a
        .post(
            AM,
            INTAKE,
            &notification("resolved", &[("KafkaConsumerLag", "fp-order", LAG)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let order: Vec<String> = a
        .kinds("alert-accepted")
        .iter()
        .filter(|r| r["data"]["alert"]["fingerprint"] == "fp-order")
        .map(|r| r["data"]["status"].as_str().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(order, ["firing", "resolved"], "the holder's chain");
    // A request another standby passed on is not passed on again.
    let looped = b
        .http
        .get(format!("{}/api/v1/incidents", b.url))
        .bearer_auth(ONCALL)
        .header("x-themis-forwarded-by", "standby")
        .send()
        .await
        .expect("get");
    assert_eq!(looped.status(), 503);

    // The holder takes it up: on its chain, its incident opened, the inbox empty.
    let list = a
        .incidents_until("the stored alert's incident", |l| {
            l.iter().any(|i| i["fingerprint"] == "fp-inbox")
        })
        .await;
    assert_eq!(
        list.iter()
            .filter(|i| i["fingerprint"] == "fp-inbox")
            .count(),
        1
    );
    assert!(
        a.kinds("alert-accepted")
            .iter()
            .any(|r| r["data"].to_string().contains("fp-inbox"))
    );
    assert!(
        !a.kinds("alert-accepted")
            .iter()
            .any(|r| r["data"].to_string().contains("fp-foreign"))
    );
    // An alert with no fingerprint of its own, a secret among its labels: the standby derives
    // its fingerprint from the labels as they arrived, as the holder does, so the two paths
    // give one alert one incident.
    let own = serde_json::json!({ "name": "KafkaConsumerLag", "labels": {
        "topic": "payments", "group": "payments-consumer", "severity": "critical",
        "api_token": "s3cret-for-tests" } });
    let (status, via_b) = b.post("/api/v1/alerts", INTAKE, &own).await;
    assert_eq!(status, 200, "{via_b}");
    let (status, via_a) = a.post("/api/v1/alerts", INTAKE, &own).await;
    assert_eq!(status, 200, "{via_a}");
    let fingerprint = via_a["alerts"][0]["fingerprint"].clone();
    assert_eq!(via_b["alerts"][0]["fingerprint"], fingerprint);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while a
        .kinds("alert-accepted")
        .iter()
        .filter(|r| r["data"]["alert"]["fingerprint"] == fingerprint)
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the stored alert was not taken up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let list = a
        .incidents_until("the unfingerprinted alert's incident", |l| {
            l.iter().any(|i| i["fingerprint"] == fingerprint)
        })
        .await;
    assert_eq!(
        list.iter()
            .filter(|i| i["fingerprint"] == fingerprint)
            .count(),
        1
    );
    assert!(
        !a.kinds("alert-accepted")
            .iter()
            .any(|r| r["data"].to_string().contains("s3cret-for-tests"))
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&db.admin)
        .await
        .expect("inbox");
    assert_eq!(left, 0);
    let refused: i64 = sqlx::query_scalar("SELECT count(*) FROM audit WHERE line LIKE '%fp-x%'")
        .fetch_one(&db.admin)
        .await
        .expect("audit");
    assert_eq!(refused, 0);

    // A row put in the inbox by hand (anyone with the database's credentials) is not an alert:
    // its seal does not verify, the holder refuses it on the record and takes nothing up.
    let forged = serde_json::to_string(&notification(
        "firing",
        &[("KafkaConsumerLag", "fp-forged", LAG)],
    ))
    .expect("json");
    sqlx::query("INSERT INTO inbox (via, body, mac) VALUES ('alertmanager', $1, 'forged')")
        .bind(&forged)
        .execute(&db.admin)
        .await
        .expect("insert");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !a
        .kinds("alert-refused")
        .iter()
        .any(|r| r["data"]["error"] == "inbox-row-refused")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the forged row was not refused"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        !a.kinds("alert-accepted")
            .iter()
            .any(|r| r["data"].to_string().contains("fp-forged"))
    );

    // Reads through the standby are the holder's, and name it as each agent's leader.
    let (status, through_b) = b.get("/api/v1/incidents?limit=1000", ONCALL).await;
    assert_eq!(status, 200, "{through_b}");
    let (_, from_a) = a.get("/api/v1/incidents?limit=1000", ONCALL).await;
    assert_eq!(through_b, from_a);
    let (status, agents) = b.get("/api/v1/agents", ONCALL).await;
    assert_eq!(status, 200, "{agents}");
    let leader = agents[0]["led_by"].as_str().expect("led_by").to_owned();
    assert!(
        leader.contains(&format!("pid {}", a.child.id())),
        "{leader}"
    );
    let scrape = async |s: &crate::serve::Served| {
        s.http
            .get(format!("{}/metrics", s.url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    };
    let metrics = scrape(&a).await;
    assert!(
        metrics.contains(&format!(
            "themis_agent_leader{{agent=\"kafka\",host=\"{leader}\"}} 1"
        )),
        "{metrics}"
    );
    // Each host's metrics are its own: scraped from every host, nothing counts twice.
    let metrics = scrape(&b).await;
    assert!(metrics.contains("themis_standing_by 1"), "{metrics}");
    assert!(
        metrics.contains(&format!("themis_state_holder{{host=\"{leader}\"}} 1")),
        "{metrics}"
    );
    assert!(!metrics.contains("themis_agent_leader"), "{metrics}");
    let (status, ready) = b.get("/readyz", ONCALL).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["standing_by"], true);
    // An answer through the standby is the holder's answer: the approval is on its chain once.
    a.proposal("fp-answered-via-standby").await;
    let (status, approvals) = b.get("/api/v1/approvals", ONCALL).await;
    assert_eq!(status, 200, "{approvals}");
    b.approve(&approvals[0]).await;
    assert_eq!(a.kinds("approval").len(), 1);
    // A replay through either host is refused, as the holder refuses it.
    let id = approvals[0]["id"].as_str().expect("id");
    let (status, body) = b
        .post(
            &format!("/api/v1/approvals/{id}/approve"),
            ONCALL,
            &serde_json::json!({ "plan_digest": approvals[0]["plan_digest"] }),
        )
        .await;
    assert_eq!(status, 409, "{body}");
}

/// A notification stored by a host standing by that an agent's full backlog cannot take holds
/// up its own alerts only: a later one for another agent is taken, and a later notification of
/// a held alert sent to the holder directly is answered 429, never taken before it. As room
/// comes, what fits is taken and the row keeps the rest: each alert is taken once.
#[tokio::test(flavor = "multi_thread")]
async fn a_stored_notification_a_full_backlog_cannot_take_holds_up_only_its_own_alerts() {
    use crate::serve::{AM, INTAKE, LAG, TestAlert, notification};
    let Some(db) = TestDb::create("inbox_held").await else {
        return;
    };
    let first_dir = tempfile::tempdir().expect("tempdir");
    let a = ServeSpec {
        queue: 1,
        ..on_db(first_dir.path(), &db)
    }
    .start();
    let second_dir = same_deployment(&a);
    let b = on_db(second_dir.path(), &db).start_standing_by();
    // More alerts in one notification than the kafka agent's backlog ever holds.
    let many: Vec<String> = (0..12).map(|i| format!("fp-many-{i}")).collect();
    let alerts: Vec<TestAlert> = many
        .iter()
        .map(|f| ("KafkaConsumerLag", f.as_str(), LAG))
        .collect();
    let (status, body) = b.post(AM, INTAKE, &notification("firing", &alerts)).await;
    assert_eq!(status, 200, "{body}");
    // A notification of no alerts: nothing to take, and it does not stay.
    let (status, body) = b.post(AM, INTAKE, &notification("firing", &[])).await;
    assert_eq!(status, 200, "{body}");
    let deployment: &[(&str, &str)] = &[("namespace", "shop"), ("deployment", "web")];
    let (status, body) = b
        .post(
            AM,
            INTAKE,
            &notification(
                "firing",
                &[("KubeDeploymentReplicasMismatch", "fp-other", deployment)],
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["alerts"][0]["outcome"], "stored");
    // A notification with one of the waiting alerts and another agent's: the other goes ahead.
    let (status, body) = b
        .post(
            AM,
            INTAKE,
            &notification(
                "firing",
                &[
                    ("KafkaConsumerLag", "fp-many-5", LAG),
                    ("KubeDeploymentReplicasMismatch", "fp-mixed", deployment),
                ],
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // At once, while most of the first notification waits: its last alert's `resolved`, sent
    // to the holder directly, is not taken before its stored firing.
    let (status, body) = a
        .post(
            AM,
            INTAKE,
            &notification("resolved", &[("KafkaConsumerLag", "fp-many-11", LAG)]),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert!(
        !a.kinds("alert-accepted")
            .iter()
            .any(|r| r["data"]["alert"]["fingerprint"] == "fp-many-11"
                && r["data"]["status"] == "resolved"),
        "a resolved taken before its stored firing"
    );
    // A direct notification with one waiting alert and one nobody owns: the other is taken.
    let (status, body) = a
        .post(
            AM,
            INTAKE,
            &notification(
                "firing",
                &[
                    ("KafkaConsumerLag", "fp-many-10", LAG),
                    ("NobodyOwnsThis", "fp-unowned", LAG),
                ],
            ),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("the other 1 were taken")),
        "{body}"
    );
    assert!(
        a.kinds("alert-unrouted")
            .iter()
            .any(|r| r["data"]["alert"]["fingerprint"] == "fp-unowned")
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !["fp-other", "fp-mixed"].iter().all(|f| {
        a.kinds("alert-accepted")
            .iter()
            .any(|r| r["data"]["alert"]["fingerprint"] == *f)
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "the other agent's stored alert waits behind the full backlog's"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The other agent's alert of the mixed notification went ahead of its waiting kafka alert.
    let first_seq = |f: &str| {
        a.kinds("alert-accepted")
            .iter()
            .find(|r| r["data"]["alert"]["fingerprint"] == f)
            .and_then(|r| r["seq"].as_u64())
    };
    if let Some(waiting) = first_seq("fp-many-5") {
        assert!(
            first_seq("fp-mixed").is_some_and(|mixed| mixed < waiting),
            "the mixed notification waited whole behind its kafka alert"
        );
    }
    // Rows taken after the held one leave it waiting, never refused as a row put back.
    assert!(
        !a.kinds("alert-refused")
            .iter()
            .any(|r| r["data"]["error"] == "inbox-row-refused"),
        "{:?}",
        a.kinds("alert-refused")
    );
    // An alert of another agent sent directly is taken while the kafka alerts wait: at most
    // its own agent's backlog (room for one) has it retried, never the stored notification.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = a
            .post(
                AM,
                INTAKE,
                &notification(
                    "firing",
                    &[("KubeDeploymentReplicasMismatch", "fp-direct", deployment)],
                ),
            )
            .await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429, "{body}");
        assert!(
            !body["message"].to_string().contains("standing by"),
            "{body}"
        );
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Room comes as the agent works: every held alert is taken, each once, and the row goes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let accepted = a.kinds("alert-accepted");
        let times = |f: &str| {
            accepted
                .iter()
                .filter(|r| r["data"]["alert"]["fingerprint"] == f)
                .count()
        };
        // fp-many-5 came in two notifications.
        let sent = |f: &str| if f == "fp-many-5" { 2 } else { 1 };
        if many.iter().all(|f| times(f) >= sent(f)) {
            for f in &many {
                assert_eq!(times(f), sent(f), "{f} taken more often than it came");
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the held alerts were not all taken up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM inbox")
        .fetch_one(&db.admin)
        .await
        .expect("inbox")
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the row taken up whole is still in the inbox"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
