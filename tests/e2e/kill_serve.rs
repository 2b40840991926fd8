//! Kill -9 trials of `themis serve` (issue 14): the real service on a world whose mutations take
//! time and which remembers, durably, what was done to it (`tests/scenarios/kill-world-kafka.yaml`,
//! its ledger in the state folder). Each trial answers the plans that wait, fires new alerts
//! (groups stuck rebalancing need an approved restart; slow ones are scaled out without asking)
//! and kills the process with SIGKILL at a random moment, then starts it again on the same state.
//! Seeded and reproducible: `THEMIS_KILL_SEED` (printed), `THEMIS_SERVE_KILL_TRIALS` (CI: 10 on
//! SQLite and 5 with the state in PostgreSQL; `scripts/kill-serve` runs 60).
//!
//! After every trial: the audit chain verifies (a line the kill cut short is the host's to move
//! aside on start, and is counted), and every alert that got a 200 is on it. At the end, with
//! every plan approved: no incident is stuck, no agent is busy, the
//! world never did a mutation without its intent on the audit first, nor one mutation twice for
//! one execution, and the audit verifies with its signed checkpoints.
//!
//! A second trial kills the host while its audit is sealed into segments under a stream of
//! alerts (`THEMIS_SEAL_KILL_TRIALS`, default 6): nothing accepted is lost, the files are one
//! chain.

use crate::common::{patched_agent, text, themis};
use crate::serve::{AM, INTAKE, ONCALL, ServeSpec, Served, notification, padded_labels};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use themis_testkit::postgres::{APP_ROLE, TestDb};

/// Where a kill landed: the kind of the last record on the audit (a mutation's intent, a phase,
/// a transition…), the phase named for phase records.
fn kill_point(audit: &[Value]) -> String {
    match audit.last() {
        None => "before any record".into(),
        Some(r) => match (r["kind"].as_str(), r["data"]["record"]["phase"].as_str()) {
            (Some("phase"), Some(phase)) => format!("phase {phase}"),
            (Some(kind), _) => kind.to_owned(),
            _ => "?".into(),
        },
    }
}

/// The audit's complete lines, parsed; and whether the file ended in a cut-off line.
fn complete_records(file: &Path) -> (Vec<Value>, String, bool) {
    let bytes = std::fs::read(file).unwrap_or_default();
    let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let torn = end < bytes.len();
    let text = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let records = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a complete audit line is JSON"))
        .collect();
    (records, text, torn)
}

/// Answer every plan that waits: (approval id) → approved with a 200.
async fn approve_all(s: &Served) -> Vec<String> {
    let mut approved = Vec::new();
    let Ok(r) = s
        .http
        .get(format!("{}/api/v1/approvals", s.url))
        .bearer_auth(ONCALL)
        .send()
        .await
    else {
        return approved;
    };
    let list: Value = r.json().await.unwrap_or(Value::Null);
    for a in list.as_array().into_iter().flatten() {
        let (Some(id), Some(digest)) = (a["id"].as_str(), a["plan_digest"].as_str()) else {
            continue;
        };
        let answer = s
            .http
            .post(format!("{}/api/v1/approvals/{id}/approve", s.url))
            .bearer_auth(ONCALL)
            .json(&json!({ "plan_digest": digest }))
            .send()
            .await;
        if answer.is_ok_and(|r| r.status() == 200) {
            approved.push(id.to_owned());
        }
    }
    approved
}

async fn fire(s: &Served, status: &str, group: &str) -> bool {
    let labels = [
        ("topic", "orders"),
        ("group", group),
        ("severity", "critical"),
    ];
    let n = notification(
        status,
        &[("KafkaConsumerLag", &format!("fp-{group}"), &labels)],
    );
    s.http
        .post(format!("{}{AM}", s.url))
        .bearer_auth(INTAKE)
        .json(&n)
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_killed_at_random_moments_loses_nothing_and_does_nothing_twice() {
    kill_trials(None, 10).await;
}

/// The same trials with the state in PostgreSQL (`store: postgres://…`) and three hosts of one
/// deployment (each its own state folder; the host key, the audit key and the world shared):
/// after each kill the next host takes the database over (a new fencing token) from the killed
/// holder, continues its audit chain from the database and resumes what it left.
#[tokio::test(flavor = "multi_thread")]
async fn serve_killed_on_the_postgres_store_loses_nothing_and_does_nothing_twice() {
    let Some(db) = TestDb::create("kill").await else {
        return;
    };
    kill_trials(Some(db.url(APP_ROLE)), 6).await;
}

/// The kill world's ledger in a host's folder.
const LEDGER: &str = "state/world-kafka.ledger.jsonl";

/// `n` hosts' folders under `dir`.
fn host_dirs(dir: &Path, n: usize) -> Vec<std::path::PathBuf> {
    (0..n)
        .map(|n| {
            let d = dir.join(format!("host-{n}"));
            std::fs::create_dir_all(d.join("state")).expect("host folder");
            d
        })
        .collect()
}

/// The hosts of one deployment on the kill world, their state in `store` when given. One
/// world, whoever acts on it: every host's ledger is the first host's.
fn deployment<'a>(
    host_dirs: &'a [std::path::PathBuf],
    agents: &Path,
    store: Option<&str>,
    queue: usize,
) -> Vec<ServeSpec<'a>> {
    for d in &host_dirs[1..] {
        std::os::unix::fs::symlink(host_dirs[0].join(LEDGER), d.join(LEDGER))
            .expect("shared ledger");
    }
    host_dirs
        .iter()
        .map(|d| ServeSpec {
            backends: &[("kafka", "kill-world-kafka.yaml")],
            agents: Some(agents.to_path_buf()),
            queue,
            env: store
                .iter()
                .map(|url| ("THEMIS_STORE", url.to_string()))
                .collect(),
            ..ServeSpec::new(d)
        })
        .collect()
}

/// One deployment: the other hosts hold the first host's keys (made at its first start).
fn share_keys(host_dirs: &[std::path::PathBuf]) {
    for d in &host_dirs[1..] {
        std::fs::create_dir_all(d.join("keys")).expect("keys");
        for key in ["keys/audit.key", "keys/audit.pub", "state/host.key"] {
            std::fs::copy(host_dirs[0].join(key), d.join(key)).expect("shared key");
        }
    }
}

/// Kill trials on the state directory's own store (one host, restarted), or on the PostgreSQL
/// database `store` names (three hosts, taking over from each other in turn).
async fn kill_trials(store: Option<String>, default_trials: u64) {
    let trials: u64 = std::env::var("THEMIS_SERVE_KILL_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(default_trials);
    let seed: u64 = std::env::var("THEMIS_KILL_SEED")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(14);
    eprintln!(
        "kill trials of themis serve ({} store): {trials} trials, seed {seed} (THEMIS_KILL_SEED)",
        if store.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    );
    let mut rng = fastrand::Rng::with_seed(seed);

    let dir = tempfile::tempdir().expect("tempdir");
    let agents = dir.path().join("agents");
    std::fs::create_dir_all(&agents).expect("agents");
    // Restarts need a human here, so the trials exercise approvals as much as plain runs.
    patched_agent(
        &agents,
        "agents/kafka.yaml",
        &[(
            "destructive: [kafka.broker-restart]",
            "destructive: [kafka.broker-restart, kafka.restart-consumers]",
        )],
    );
    let hosts = if store.is_some() { 3 } else { 1 };
    let host_dirs = host_dirs(dir.path(), hosts);
    let specs = deployment(&host_dirs, &agents, store.as_deref(), 256);
    let audit_of = |host: usize| host_dirs[host].join("state/audit.jsonl");
    let ledger = host_dirs[0].join(LEDGER);
    let mut host = 0;
    let spec = &specs[host];
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut approvals = 0usize;
    let mut points: BTreeMap<String, usize> = BTreeMap::new();
    let mut torn_tails = 0usize;
    let mut served = spec.start();
    share_keys(&host_dirs);

    for trial in 0..trials {
        // What this trial does until the kill: answer what waits, fire one to three alerts.
        let s = Arc::new(served);
        let work = {
            let s = s.clone();
            let accepted = accepted.clone();
            let groups: Vec<String> = (0..rng.usize(1..=3))
                .map(|k| {
                    let kind = if rng.bool() { "stuck" } else { "slow" };
                    format!("{kind}-{trial}-{k}")
                })
                .collect();
            tokio::spawn(async move {
                let approved = approve_all(&s).await.len();
                for group in groups {
                    if fire(&s, "firing", &group).await {
                        accepted.lock().expect("lock").push(group);
                    }
                }
                approved
            })
        };
        let kill_after = Duration::from_millis(rng.u64(0..2500));
        tokio::time::sleep(kill_after).await;
        let mut s = Arc::into_inner(if work.is_finished() {
            approvals += work.await.expect("trial work");
            s
        } else {
            work.abort();
            let _ = work.await;
            s
        })
        .expect("the trial's work holds no handle to the service any more");
        // SIGKILL: nothing runs after it, not even a destructor.
        s.child.kill().expect("SIGKILL");
        s.child.wait().expect("reap");

        let audit_file = audit_of(host);
        let (records, complete, torn) = complete_records(&audit_file);
        torn_tails += usize::from(torn);
        *points.entry(kill_point(&records)).or_default() += 1;
        let copy = dir.path().join("audit-at-kill.jsonl");
        std::fs::write(&copy, &complete).expect("copy");
        let verify = themis(&["audit", "verify", copy.to_str().expect("utf-8")]);
        assert!(
            verify.status.success(),
            "trial {trial} (seed {seed}): the audit does not verify after the kill: {}",
            text(&verify.stderr)
        );
        for group in accepted.lock().expect("lock").iter() {
            assert!(
                records.iter().any(|r| r["kind"] == "alert-accepted"
                    && r["data"].to_string().contains(&format!("\"{group}\""))),
                "trial {trial} (seed {seed}): the alert for {group} got a 200 but is not on the audit"
            );
        }
        drop(s);
        host = (host + 1) % hosts;
        served = specs[host].start();
    }

    // The end: approve what waits until nothing does, resolve every alert, let the work finish.
    let s = served;
    let deadline = Instant::now() + Duration::from_secs(120);
    let stuck = loop {
        approvals += approve_all(&s).await.len();
        let (_, body) = s.get("/api/v1/incidents?limit=1000", ONCALL).await;
        let incidents = body["incidents"].as_array().cloned().unwrap_or_default();
        let (_, agents) = s.get("/api/v1/agents", ONCALL).await;
        let busy = agents
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["state"]["state"] != "idle");
        let (_, waiting) = s.get("/api/v1/approvals", ONCALL).await;
        let open: Vec<&Value> = incidents
            .iter()
            .filter(|i| matches!(i["status"].as_str(), Some("triaging" | "executing")))
            .collect();
        if open.is_empty() && !busy && waiting.as_array().is_none_or(|w| w.is_empty()) {
            break Vec::new();
        }
        if Instant::now() > deadline {
            break open.into_iter().cloned().collect();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(stuck.is_empty(), "seed {seed}: incidents stuck: {stuck:#?}");
    let groups = accepted.lock().expect("lock").clone();
    let (_, body) = s.get("/api/v1/incidents?limit=1000", ONCALL).await;
    let finals = body["incidents"].as_array().cloned().unwrap_or_default();
    // Nothing accepted is lost: every alert that got a 200 has its incident, exactly one.
    for group in &groups {
        let fingerprint = format!("fp-{group}");
        let n = finals
            .iter()
            .filter(|i| i["fingerprint"] == fingerprint.as_str())
            .count();
        assert_eq!(
            n, 1,
            "seed {seed}: the alert for {group} got a 200 and has {n} incident(s)"
        );
    }
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for i in &finals {
        let status = i["status"].as_str().unwrap_or("?").to_owned();
        assert!(
            matches!(
                status.as_str(),
                "resolved"
                    | "unverified"
                    | "failed"
                    | "rejected"
                    | "escalated"
                    | "closed"
                    | "interrupted"
                    // The run succeeded; its fix is watched until the runbook's window ends.
                    | "verifying"
            ),
            "seed {seed}: incident {} ended {status}",
            i["id"]
        );
        *statuses.entry(status).or_default() += 1;
    }
    // A graceful stop signs the chain's head.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(s.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let mut s = s;
    s.child.wait().expect("stops");

    let audit_file = audit_of(host);
    let (records, _, torn) = complete_records(&audit_file);
    assert!(!torn, "a graceful stop leaves whole records");
    let key = host_dirs[host].join("keys/audit.key");
    let verify = themis(&[
        "audit",
        "verify",
        audit_file.to_str().expect("utf-8"),
        "--key",
        key.with_extension("pub").to_str().expect("utf-8"),
        "--head",
        key.with_extension("head.json").to_str().expect("utf-8"),
    ]);
    assert!(
        verify.status.success(),
        "seed {seed}: {}{}",
        text(&verify.stdout),
        text(&verify.stderr)
    );

    // What the world did, against what the audit announced: per (capability, group), never more
    // calls than executions that announced one, and every call announced.
    let ledger = std::fs::read_to_string(&ledger).unwrap_or_default();
    let mut done: BTreeMap<(String, String), usize> = BTreeMap::new();
    for line in ledger.lines() {
        let call: Value = serde_json::from_str(line).expect("ledger line");
        let key = (
            call["capability"].as_str().unwrap_or("").to_owned(),
            call["args"]["group"].as_str().unwrap_or("").to_owned(),
        );
        *done.entry(key).or_default() += 1;
    }
    let mut announced: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for r in records.iter().filter(|r| r["kind"] == "capability-intent") {
        let intent = &r["data"]["intent"];
        announced
            .entry((
                intent["capability"].as_str().unwrap_or("").to_owned(),
                intent["args"]["group"].as_str().unwrap_or("").to_owned(),
            ))
            .or_default()
            .insert(intent["execution_id"].as_str().unwrap_or("").to_owned());
    }
    for (key, n) in &done {
        let executions = announced.get(key).map_or(0, BTreeSet::len);
        assert!(
            *n <= executions,
            "seed {seed}: the world did {key:?} {n} time(s) for {executions} execution(s) that announced it"
        );
    }
    let mutations: usize = done.values().sum();
    let resumed = records
        .iter()
        .filter(|r| r["kind"] == "recovered" && r["data"]["action"] == "resume")
        .count();
    let recovered = records.iter().filter(|r| r["kind"] == "recovered").count();

    eprintln!("kill trials: {trials} (seed {seed}), violations 0");
    eprintln!(
        "  alerts accepted {}, plans approved {approvals}, mutations done {mutations}, \
         recovery decisions {recovered} ({resumed} resumed), torn tails {torn_tails}",
        groups.len()
    );
    eprintln!("  kill points (last record on the audit):");
    for (point, n) in &points {
        eprintln!("    {n:>4}  {point}");
    }
    eprintln!("  incidents by final status:");
    for (status, n) in &statuses {
        eprintln!("    {n:>4}  {status}");
    }
    assert!(
        !groups.is_empty(),
        "no alert was accepted in {trials} trials"
    );
    assert!(
        mutations > 0,
        "the world was never acted on: the trials prove nothing"
    );
}

/// The two places a stop can cut an accepted alert off, written as a kill leaves them: accepted
/// (on the audit, 200 sent) but still in the queue; and taken up (`alert` recorded) but killed
/// before its incident was saved. The next start replays both; one already handled is not.
#[tokio::test(flavor = "multi_thread")]
async fn an_accepted_alert_a_kill_cut_off_is_replayed_at_start() {
    use themis_agent::audit::{AuditLog, Redactor};
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ServeSpec {
        backends: &[("kafka", "kill-world-kafka.yaml")],
        ..ServeSpec::new(dir.path())
    };
    // A first start makes the state folder; one alert is handled normally.
    let mut s = spec.start();
    assert!(fire(&s, "firing", "slow-handled").await);
    s.incidents_until("the handled alert's incident", |l| l.len() == 1)
        .await;
    s.child.kill().expect("SIGKILL");
    s.child.wait().expect("reap");
    drop(s);

    let audit_file = dir.path().join("state/audit.jsonl");
    {
        let audit = AuditLog::open(&audit_file, Redactor::with_values(None)).expect("audit");
        let alert = |group: &str| {
            json!({
                "name": "KafkaConsumerLag", "fingerprint": format!("fp-{group}"),
                "labels": [ { "key": "alertname", "value": "KafkaConsumerLag" }, { "key": "topic", "value": "orders" }, { "key": "group", "value": group } ],
                "annotations": [],
            })
        };
        audit
            .append(
                "kafka",
                None,
                "alert-accepted",
                json!({ "alert": alert("slow-queued"), "status": "firing", "source": {} }),
            )
            .expect("append");
        let taken = audit
            .append(
                "kafka",
                None,
                "alert-accepted",
                json!({ "alert": alert("slow-unsaved"), "status": "firing", "source": {} }),
            )
            .expect("append");
        audit
            .append(
                "kafka",
                Some("inc-never-saved"),
                "alert",
                json!({ "alert": alert("slow-unsaved"), "fingerprint": "fp-slow-unsaved", "intake": taken.seq }),
            )
            .expect("append");
    }

    let s = spec.start();
    let list = s
        .incidents_until("the replayed alerts' incidents", |l| l.len() == 3)
        .await;
    for group in ["slow-handled", "slow-queued", "slow-unsaved"] {
        let fingerprint = format!("fp-{group}");
        assert_eq!(
            list.iter()
                .filter(|i| i["fingerprint"] == fingerprint.as_str())
                .count(),
            1,
            "{group}: {list:#?}"
        );
    }
    let replayed = s.kinds("alert-replayed");
    assert_eq!(replayed.len(), 2, "{replayed:#?}");
    // Started again, nothing is replayed twice.
    drop(s);
    let s = spec.start();
    assert_eq!(s.kinds("alert-replayed").len(), 2);
    let (_, body) = s.get("/api/v1/incidents?limit=1000", ONCALL).await;
    assert_eq!(body["incidents"].as_array().map(Vec::len), Some(3));
}

/// A graceful stop with a backlog: the agent finishes the alert in hand and leaves the rest on
/// disk, so the stop is not as long as the backlog; the next start takes every one of them up,
/// once.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_leaves_the_backlog_on_disk_and_the_next_start_takes_it_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ServeSpec {
        backends: &[("kafka", "kill-world-kafka.yaml")],
        ..ServeSpec::new(dir.path())
    };
    let mut s = spec.start();
    // Each scale-out takes 400 ms in this world: eight of them outlast the stop by far.
    const ALERTS: usize = 8;
    for n in 0..ALERTS {
        assert!(fire(&s, "firing", &format!("slow-backlog-{n}")).await);
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(s.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = s.child.wait().expect("stops");
    assert!(status.success(), "{status:?}");
    let accepted = s.kinds("alert-accepted").len();
    let taken = s.kinds("alert").len();
    assert_eq!(accepted, ALERTS);
    assert!(
        taken < ALERTS,
        "the stop waited for the whole backlog ({taken} of {ALERTS} taken up)"
    );
    drop(s);

    let s = spec.start();
    let list = s
        .incidents_until("every accepted alert's incident", |l| l.len() == ALERTS)
        .await;
    for n in 0..ALERTS {
        let fingerprint = format!("fp-slow-backlog-{n}");
        assert_eq!(
            list.iter()
                .filter(|i| i["fingerprint"] == fingerprint.as_str())
                .count(),
            1,
            "{fingerprint}: {list:#?}"
        );
    }
    assert_eq!(s.kinds("alert-replayed").len(), ALERTS - taken);
}

/// Kill -9 while the audit is sealed into segments under a stream of alerts: at restart a seal
/// cut off is finished, no alert that got a 200 is missing from the log's files, and the files
/// read in order are one chain. Seeded (`THEMIS_KILL_SEED`); `THEMIS_SEAL_KILL_TRIALS` trials
/// (default 6).
#[tokio::test(flavor = "multi_thread")]
async fn kills_while_the_audit_is_sealed_lose_no_accepted_alert_and_leave_one_chain() {
    let seed = std::env::var("THEMIS_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let trials: usize = std::env::var("THEMIS_SEAL_KILL_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    eprintln!("seal kill trials: THEMIS_KILL_SEED={seed}, {trials} trials");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ServeSpec::new(dir.path());
    // Small segments, and a budget that removes nothing: every record stays to be checked.
    spec.env
        .push(("THEMIS_AUDIT_SEGMENT_BYTES", (1 << 20).to_string()));
    spec.env
        .push(("THEMIS_AUDIT_MAX_BYTES", (1 << 30).to_string()));
    let pad = "p".repeat(2000);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut accepted = BTreeSet::new();
    for _ in 0..trials {
        let s = Arc::new(spec.start());
        let ok = Arc::new(Mutex::new(Vec::new()));
        let streams: Vec<_> = (0..4)
            .map(|_| {
                let (s, ok, next, pad) = (s.clone(), ok.clone(), next.clone(), pad.clone());
                tokio::spawn(async move {
                    loop {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let mark = format!("acc-{n:08}");
                        let mut labels = padded_labels(&pad);
                        labels.push(("mark", &mark));
                        let body = notification("firing", &[("NobodysAlert", "fp-seal", &labels)]);
                        let sent = s
                            .http
                            .post(format!("{}{AM}", s.url))
                            .bearer_auth(INTAKE)
                            .json(&body)
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status().as_u16() == 200 => {
                                ok.lock().expect("lock").push(mark)
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.u64(150..900))).await;
        // SIGKILL, with requests in flight.
        let pid = s.child.id();
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
        for t in streams {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        accepted.extend(ok.lock().expect("lock").drain(..));
    }
    // One more start: whatever the last kill left is dealt with at open.
    drop(spec.start());

    let state = dir.path().join("state");
    let sealed = std::fs::read_dir(state.join("audit.segments")).map_or(0, |d| d.count());
    assert!(
        sealed >= 3,
        "the trials sealed {sealed} segment(s): too few to matter"
    );
    let audit = state.join("audit.jsonl");
    let (records, unreadable) = themis_agent::audit::read_all(&audit).expect("read");
    assert_eq!(unreadable, 0);
    let unrouted: String = records
        .iter()
        .filter(|r| r.kind == "alert-unrouted")
        .map(|r| r.data.to_string())
        .collect();
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|m| !unrouted.contains(&format!("\"{m}\"")))
        .collect();
    assert!(
        lost.is_empty(),
        "alerts that got a 200 are missing from the audit (seed {seed}): {lost:?}"
    );
    let verify = themis(&["audit", "verify", audit.to_str().expect("utf-8")]);
    assert!(
        verify.status.success(),
        "seed {seed}: {}{}",
        text(&verify.stdout),
        text(&verify.stderr)
    );
    eprintln!(
        "seal kill trials: {trials} kills, {} alerts accepted, {sealed} segments, 0 lost",
        accepted.len()
    );
}

/// High availability on PostgreSQL with three processes: the leader is killed (SIGKILL) in the
/// middle of an approved runbook — its action done, its postcondition under way; one of the two
/// hosts standing by takes the state over within the lease, continues the chain, and finishes
/// the incident — the action done exactly once (the world, shared by all three, counts); the
/// other keeps standing by and passes reads on to the new leader; the chain verifies with its
/// signed checkpoints. (A kill inside the action itself is the kill trials' business.)
#[tokio::test(flavor = "multi_thread")]
async fn the_leader_killed_mid_runbook_is_taken_over_and_the_incident_finished_once() {
    let Some(db) = TestDb::create("ha").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let agents = dir.path().join("agents");
    std::fs::create_dir_all(&agents).expect("agents");
    patched_agent(
        &agents,
        "agents/kafka.yaml",
        &[(
            "destructive: [kafka.broker-restart]",
            "destructive: [kafka.broker-restart, kafka.restart-consumers]",
        )],
    );
    let host_dirs = host_dirs(dir.path(), 3);
    let specs = deployment(&host_dirs, &agents, Some(&db.url(APP_ROLE)), 64);
    let ledger = host_dirs[0].join(LEDGER);
    let mut leader = specs[0].start();
    share_keys(&host_dirs);
    let standbys: Vec<Served> = specs[1..]
        .iter()
        .map(ServeSpec::start_standing_by)
        .collect();

    // An alert through a standby (stored for the leader), its plan approved through the other
    // (the answer returns when the run ends: it is sent on its own).
    assert!(fire(&standbys[0], "firing", "stuck-ha").await);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, waiting) = standbys[1].get("/api/v1/approvals", ONCALL).await;
        if waiting.as_array().is_some_and(|w| !w.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "no plan to approve");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let approver = Served {
        child: std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("a placeholder process"),
        url: standbys[1].url.clone(),
        state: standbys[1].state.clone(),
        http: standbys[1].http.clone(),
    };
    let answering = tokio::spawn(async move { approve_all(&approver).await.len() });
    // Killed once the action's result is on the chain: the run goes on with its postcondition.
    let audit = host_dirs[0].join("state/audit.jsonl");
    while !complete_records(&audit)
        .0
        .iter()
        .any(|r| r["kind"] == "capability-result")
    {
        assert!(Instant::now() < deadline, "the approved run never acted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    leader.child.kill().expect("SIGKILL");
    leader.child.wait().expect("reap");
    let killed_at = Instant::now();
    // On a loaded machine the kill may land after the run ended; only a run it cut off needs
    // the recovery's decision.
    let cut_off = !complete_records(&audit)
        .0
        .iter()
        .any(|r| r["kind"] == "result");
    // The answer in flight was cut off with its host; the approval stands on the chain.
    let _ = answering.await;
    // The state is taken over within the lease: a new fencing token.
    loop {
        let token: i64 = sqlx::query_scalar("SELECT token FROM holder")
            .fetch_one(&db.admin)
            .await
            .expect("holder");
        if token >= 2 {
            break;
        }
        assert!(
            killed_at.elapsed() < themis_agent::store::postgres::LEASE,
            "no host took the state over within the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("state taken over {:?} after the kill", killed_at.elapsed());

    // One standby holds the state now (its readiness is the whole service's), the other not.
    // (A request cut off while the host switches its service over is "not yet".)
    let holds = async |s: &Served| -> bool {
        let Ok(r) = s.http.get(format!("{}/readyz", s.url)).send().await else {
            return false;
        };
        let status = r.status();
        let ready: Value = r.json().await.unwrap_or(Value::Null);
        status == 200 && ready["standing_by"] != true
    };
    let (new, other) = loop {
        if holds(&standbys[0]).await {
            break (&standbys[0], &standbys[1]);
        }
        if holds(&standbys[1]).await {
            break (&standbys[1], &standbys[0]);
        }
        // Recovery runs before the new leader serves the whole API.
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "the new leader never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "the new leader serves {:?} after the kill",
        killed_at.elapsed()
    );
    let settled = new
        .incidents_until("the incident's end", |l| {
            l.iter()
                .any(|i| i["fingerprint"] == "fp-stuck-ha" && i["status"] != "executing")
        })
        .await;
    let incident = settled
        .iter()
        .find(|i| i["fingerprint"] == "fp-stuck-ha")
        .expect("incident");
    assert!(
        matches!(
            incident["status"].as_str(),
            Some("verifying" | "resolved" | "interrupted" | "failed" | "escalated")
        ),
        "{incident}"
    );
    // The recovery's decision is on the chain, after the killed leader's intent.
    let chain = complete_records(&new.state.join("audit.jsonl")).0;
    assert!(
        !cut_off || chain.iter().any(|r| r["kind"] == "recovered"),
        "no recovery decision: {incident}"
    );
    assert!(chain.iter().any(|r| r["kind"] == "capability-intent"));
    // Done at most once, whoever did it.
    let done = std::fs::read_to_string(&ledger)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("kafka.restart-consumers") && l.contains("stuck-ha"))
        .count();
    assert_eq!(done, 1, "the restart was done {done} times");
    // The host still standing by passes reads on to the new leader (once it has read where
    // the new one serves: at most a second).
    let through = loop {
        let (status, through) = other.get("/api/v1/agents", ONCALL).await;
        if status == 200 {
            break through;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(90),
            "the standby never passed reads on: {through}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        through[0]["led_by"]
            .as_str()
            .is_some_and(|h| h.contains(&format!("pid {}", new.child.id()))),
        "{through}"
    );
    // The chain intact, its checkpoints signed by the deployment's key.
    let key = host_dirs[0].join("keys/audit.pub");
    let verify = themis(&[
        "audit",
        "verify",
        new.state.join("audit.jsonl").to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
    ]);
    assert!(
        verify.status.success(),
        "{}{}",
        text(&verify.stdout),
        text(&verify.stderr)
    );
}
