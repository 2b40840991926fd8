//! Alert → decision host overhead: routing, incident creation, selection (the rule selector
//! answers at once), policy, the proposal and every audit record fsynced on the way. Printed as
//! p50/p99 next to the fsync of one appended line measured in the same run (the floor: a
//! decision writes several audit records, each fsynced before it takes effect).
//! Target: p99 ≤ 2 ms, reported with its ratio to that fsync. The same decisions on a second host watched by the service's metrics
//! (its observer and the audit-append hook), alternated with the first, give the metrics' cost
//! (target: ≤ 5 % on the p50).
//!
//! The same decisions through `themis serve` (the binary): each alert POSTed to
//! `/api/v1/alerts` over a keep-alive connection, timed until its escalation arrives on
//! `/api/v1/events` — HTTP, the intake's own fsynced record, the backlog read back from the audit
//! and the event stream on top of the runtime's path, interleaved with it. And the one-shot CLI,
//! `themis alert --alertmanager` (a process per alert: start, load the agents, decide), for
//! fewer rounds. Target: the service's p99 no worse than the CLI's.
//!
//! A worker finishes a decision's work after its reply (the escalation's delivery and its
//! record's fsync): each measurement starts with every host of the run quiet — a host's worker
//! is drained through its queue, and the service given a few milliseconds — so no host's
//! decision is timed against another's leftover fsync, which one sidecar never sees. Alerts to
//! one agent back to back, each waiting behind the last one's after-reply work, are the
//! profile mode's mean (`ALERT_DECISION_PROFILE=1`). The order within a round turns every
//! round, the baseline's fsync taking its turn too: whatever goes first after the pause pays
//! for the machine waking up, and a fixed order charged it to the first host alone (its p99
//! half a millisecond above the same decisions on the second).

mod common;

/// The allocator `themis` ships with (host/cli/src/main.rs): the runtime is measured as the
/// binary runs it, not under glibc's malloc, which a profile of this bench showed at a tenth of
/// its samples.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use common::Served;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use themis_agent::audit::{AuditLog, Redactor};
use themis_agent::escalation::Channels;
use themis_agent::store::StoreChoice;
use themis_agent::{AlertOutcome, Quiet, Runtime, RuntimeParts};
use themis_core::types::{Alert, Pair};
use themis_sandbox::{Sandbox, SandboxConfig};
use themis_server::Metrics;
use themis_testkit::provider::ScenarioProvider;

const N: usize = 400;
/// One-shot CLI rounds: a process each.
const CLI_N: usize = 40;
const INTAKE: &str = "bench-intake-token";

/// The baseline: one line appended and fsynced, as an audit record is.
fn fsync_line(f: &mut std::fs::File, i: usize) -> Duration {
    let t = Instant::now();
    writeln!(f, "{{\"seq\":{i},\"line\":\"baseline\"}}").expect("write");
    f.sync_data().expect("fsync");
    t.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().expect("tempdir");
    // An agent with no probes: the decision itself is what is measured.
    let agents = dir.path().join("agents");
    std::fs::create_dir(&agents).expect("agents folder");
    let agent = agents.join("postgres.yaml");
    std::fs::write(
        &agent,
        format!(
            "name: postgres\ndomain: postgres\nrunbooks: [{}]\ntrust: {{ keys: [{}] }}\nroutes: [ {{ alert: PostgresLockWaits }} ]\npolicy: {{ min_confidence: 0.8, destructive: [postgres.terminate-backend] }}\nrules:\n  - {{ runbook: terminate-blocker, params: {{ pid: \"{{labels.pid}}\" }}, confidence: 0.9, reasoning: bench }}\n",
            repo.join("runbooks/postgres/terminate-blocker").display(),
            repo.join("keys/demo/demo-postgres-team.pub").display()
        ),
    )
    .expect("write agent");
    let world = repo.join("tests/scenarios/agent-postgres-lock-waits.yaml");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).expect("sandbox"));
    // Two hosts, one watched by the service's metrics (observer + audit append hook), one by
    // nobody, fed alternately so both see the same machine.
    let start =
        |name: &str, metrics: Option<Arc<Metrics>>, every_record: bool, kind: StoreChoice| {
            let base = dir.path().join(name);
            let audit = Arc::new(
                AuditLog::open(&base.join("audit.jsonl"), Redactor::default()).expect("audit"),
            );
            if every_record {
                audit.sync_every_record();
            }
            let observer: Arc<dyn themis_agent::RuntimeObserver> = match metrics {
                Some(m) => {
                    let watching = m.clone();
                    audit
                        .observe_appends(Box::new(move |took, ok| watching.audit_append(took, ok)))
                        .unwrap_or_else(|_| panic!("one observer"));
                    m
                }
                None => Arc::new(Quiet),
            };
            let store = rt
                .block_on(themis_agent::store::open(
                    &base.join("state"),
                    Some(&kind),
                    kind.clone(),
                    Duration::from_secs(1),
                ))
                .expect("store");
            let provider = Arc::new(ScenarioProvider::from_file(&world, false).expect("world"));
            rt.block_on(Runtime::start(
                RuntimeParts {
                    sandbox: sandbox.clone(),
                    agent_files: vec![agent.clone()],
                    audit,
                    store,
                    channels: Channels::default(),
                    observer,
                    provider,
                },
                Default::default(),
            ))
            .expect("runtime")
        };
    let metrics = Arc::new(Metrics::new(&["postgres".to_owned()]));
    // The service's default store, SQLite; the JSON-file store; and the baseline before commit
    // points and SQLite: JSON files with every record fsynced.
    let runtime = start("plain", None, false, StoreChoice::Sqlite);
    let watched = start("metrics", Some(metrics.clone()), false, StoreChoice::Sqlite);
    let json = start("json", None, false, StoreChoice::Json);
    let every = start("every-record", None, true, StoreChoice::Json);

    // ALERT_DECISION_PROFILE=1: only the SQLite host's decisions, in a loop, for a profiler
    // (`perf record -g`), with nothing of the other hosts or the service in the samples.
    if std::env::var("ALERT_DECISION_PROFILE").as_deref() == Ok("1") {
        let rounds: usize = std::env::var("ALERT_DECISION_ROUNDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(2000);
        let t = Instant::now();
        for i in 0..rounds {
            let alert = Alert {
                name: "PostgresLockWaits".into(),
                fingerprint: format!("profile-{i}"),
                labels: vec![Pair {
                    key: "pid".into(),
                    value: format!("{}", 1000 + i),
                }],
                annotations: vec![],
                source: None,
            };
            let outcome = rt.block_on(runtime.handle_alert(alert)).expect("handled");
            assert!(
                matches!(outcome, AlertOutcome::Handled(_)),
                "a new incident"
            );
        }
        println!(
            "alert → decision, SQLite host alone: {:.3} ms per decision (mean of {rounds})",
            t.elapsed().as_secs_f64() * 1000.0 / rounds as f64
        );
        return;
    }
    let cache = dir.path().join("cache");
    // The one-shot CLI first: its first start compiles into the cache the service then finds.
    let cli = cli_rounds(dir.path(), &agents, &world, &cache);
    let served = serve(dir.path(), &agents, &world, &cache);
    let http = reqwest::Client::new();
    let mut events = rt
        .block_on(
            http.get(format!("{}/api/v1/events", served.url))
                .bearer_auth(INTAKE)
                .send(),
        )
        .expect("event stream");
    assert_eq!(events.status().as_u16(), 200, "the event stream");
    let mut unread = String::new();

    let mut decisions = Vec::with_capacity(N);
    let mut after_pause = Vec::with_capacity(N / 2);
    let mut with_metrics = Vec::with_capacity(N);
    let mut every_record = Vec::with_capacity(N);
    let mut json_files = Vec::with_capacity(N);
    // Baseline: append one line and fsync it, same disk, interleaved with the decisions.
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("fsync.log"))
        .expect("open");
    let mut fsyncs = Vec::with_capacity(N);
    let mut through_service = Vec::with_capacity(N);
    for i in 0..N {
        let alert = Alert {
            name: "PostgresLockWaits".into(),
            fingerprint: format!("bench-{i}"),
            labels: vec![Pair {
                key: "pid".into(),
                value: format!("{}", 1000 + i),
            }],
            annotations: vec![],
            source: None,
        };
        let mut hosts = [
            (&runtime, &mut decisions),
            (&watched, &mut with_metrics),
            (&json, &mut json_files),
            (&every, &mut every_record),
        ];
        // Each round starts after a pause (the service's after-reply work), and what comes
        // first after it pays for waking up: the order turns every round, so no measurement,
        // the baseline's fsync included, always goes first.
        let last = hosts.len();
        hosts.rotate_left(i % last);
        let fsync_at = i % (last + 1);
        for (at, (host, times)) in hosts.into_iter().enumerate() {
            if at == fsync_at {
                fsyncs.push(fsync_line(&mut f, i));
            }
            let t = Instant::now();
            let outcome = rt
                .block_on(host.handle_alert(alert.clone()))
                .expect("handled");
            let took = t.elapsed();
            times.push(took);
            // What a sidecar sees of an alert after a quiet spell: the SQLite hosts' decisions
            // that came first after the pause.
            if at == 0
                && fsync_at != 0
                && (std::ptr::eq(host, &runtime) || std::ptr::eq(host, &watched))
            {
                after_pause.push(took);
            }
            // Through the worker's queue: its after-reply work is done once this answers.
            rt.block_on(host.verify_due()).expect("the worker drained");
            let AlertOutcome::Handled(incident) = outcome else {
                panic!("a new incident")
            };
            assert!(
                incident.proposal.is_some(),
                "the destructive plan is proposed"
            );
        }
        if fsync_at == last {
            fsyncs.push(fsync_line(&mut f, i));
        }
        let alert = serde_json::json!({
            "name": "PostgresLockWaits",
            "fingerprint": format!("serve-{i}"),
            "labels": { "pid": format!("{}", 1000 + i) },
        });
        let t = Instant::now();
        rt.block_on(async {
            let posted = http
                .post(format!("{}/api/v1/alerts", served.url))
                .bearer_auth(INTAKE)
                .json(&alert)
                .send()
                .await
                .expect("post the alert");
            assert_eq!(posted.status().as_u16(), 200, "the alert is accepted");
            next_escalation(&mut events, &mut unread).await;
        });
        through_service.push(t.elapsed());
        // The service's worker finishes its after-reply work (about an fsync) before the next
        // round's first measurement.
        std::thread::sleep(Duration::from_millis(5));
    }
    through_service.sort();
    with_metrics.sort();
    every_record.sort();
    json_files.sort();
    let scraped = metrics.encode().expect("metrics");
    let counted = format!(
        r#"themis_decisions_total{{agent="postgres",decision="runbook",selector="rules"}} {N}"#
    );
    assert!(
        scraped.contains(&counted),
        "the metrics saw every decision:\n{scraped}"
    );
    decisions.sort();
    after_pause.sort();

    fsyncs.sort();

    let records = themis_agent::audit::verify::verify(&dir.path().join("plain/audit.jsonl"))
        .expect("read")
        .expect("intact")
        .records;
    println!("| measurement ({N} alerts) | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| alert → decision + proposal | {:.2} ms | {:.2} ms |",
        ms(percentile(&decisions, 0.5)),
        ms(percentile(&decisions, 0.99))
    );
    println!(
        "| same, only those first after a round's pause ({} of both SQLite hosts) | {:.2} ms | {:.2} ms |",
        after_pause.len(),
        ms(percentile(&after_pause, 0.5)),
        ms(percentile(&after_pause, 0.99))
    );
    println!(
        "| same, with the service's metrics watching (interleaved) | {:.2} ms | {:.2} ms |",
        ms(percentile(&with_metrics, 0.5)),
        ms(percentile(&with_metrics, 0.99))
    );
    println!(
        "| same, JSON-file store (interleaved) | {:.2} ms | {:.2} ms |",
        ms(percentile(&json_files, 0.5)),
        ms(percentile(&json_files, 0.99))
    );
    println!(
        "| same, JSON-file store and every record fsynced (before commit points and SQLite: the baseline, interleaved) | {:.2} ms | {:.2} ms |",
        ms(percentile(&every_record, 0.5)),
        ms(percentile(&every_record, 0.99))
    );
    println!(
        "| SQLite + commit points / baseline | {:.2}× | {:.2}× |",
        ms(percentile(&decisions, 0.5)) / ms(percentile(&every_record, 0.5)),
        ms(percentile(&decisions, 0.99)) / ms(percentile(&every_record, 0.99))
    );
    println!(
        "| JSON files + commit points / baseline | {:.2}× | {:.2}× |",
        ms(percentile(&json_files, 0.5)) / ms(percentile(&every_record, 0.5)),
        ms(percentile(&json_files, 0.99)) / ms(percentile(&every_record, 0.99))
    );
    let overhead = ms(percentile(&with_metrics, 0.5)) / ms(percentile(&decisions, 0.5));
    println!(
        "| metrics / none, p50 | {overhead:.3}× (target ≤ 1.05×: {}) | |",
        if overhead <= 1.05 { "met" } else { "NOT met" }
    );
    println!(
        "| fsync of one appended line (baseline) | {:.3} ms | {:.3} ms |",
        ms(percentile(&fsyncs, 0.5)),
        ms(percentile(&fsyncs, 0.99))
    );
    println!(
        "| ratio decision / fsync | {:.1}× | {:.1}× |",
        ms(percentile(&decisions, 0.5)) / ms(percentile(&fsyncs, 0.5)),
        ms(percentile(&decisions, 0.99)) / ms(percentile(&fsyncs, 0.99))
    );
    println!(
        "| audit records per decision | {:.1} | |",
        records as f64 / N as f64
    );
    println!(
        "| through `themis serve`: POST /api/v1/alerts → escalation on /api/v1/events (interleaved) | {:.2} ms | {:.2} ms |",
        ms(percentile(&through_service, 0.5)),
        ms(percentile(&through_service, 0.99))
    );
    println!(
        "| one-shot CLI, `themis alert --alertmanager` ({CLI_N} processes) | {:.2} ms | {:.2} ms |",
        ms(percentile(&cli, 0.5)),
        ms(percentile(&cli, 0.99))
    );
    println!(
        "| service / runtime | {:.2}× | {:.2}× |",
        ms(percentile(&through_service, 0.5)) / ms(percentile(&decisions, 0.5)),
        ms(percentile(&through_service, 0.99)) / ms(percentile(&decisions, 0.99))
    );
    let versus_cli = ms(percentile(&through_service, 0.99)) / ms(percentile(&cli, 0.99));
    println!(
        "| service / one-shot CLI | {:.3}× | {versus_cli:.3}× (target ≤ 1: {}) |",
        ms(percentile(&through_service, 0.5)) / ms(percentile(&cli, 0.5)),
        if versus_cli <= 1.0 { "met" } else { "NOT met" }
    );
    drop(served);
    let p99 = ms(percentile(&decisions, 0.99));
    println!(
        "\ntarget p99 ≤ 2 ms: {} ({p99:.2} ms; {:.1} fsyncs' worth at this run's fsync p99)",
        if p99 <= 2.0 { "met" } else { "NOT met" },
        p99 / ms(percentile(&fsyncs, 0.99))
    );
}

/// `themis serve` over the bench's agent and world, as an operator would start it.
fn serve(dir: &Path, agents: &Path, world: &Path, cache: &Path) -> Served {
    let config = dir.join("themis.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nagents: {}\nstate_dir: {}\n\
             intake: {{ tokens: [ {{ env: BENCH_INTAKE }} ] }}\n\
             backends:\n  postgres: {{ scenario: {} }}\n",
            agents.display(),
            dir.join("serve-state").display(),
            world.display()
        ),
    )
    .expect("config");
    common::serve(&config, dir, &[("BENCH_INTAKE", INTAKE)], cache)
}

/// Read the event stream up to the next escalation (one alert in flight at a time: it is ours).
async fn next_escalation(events: &mut reqwest::Response, unread: &mut String) {
    loop {
        if let Some(start) = unread.find("event: escalation\n")
            && let Some(end) = unread[start..].find("\n\n")
        {
            unread.drain(..start + end + 2);
            return;
        }
        match tokio::time::timeout(Duration::from_secs(10), events.chunk()).await {
            Ok(Ok(Some(chunk))) => unread.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("no escalation on the event stream: {other:?} after {unread}"),
        }
    }
}

/// `themis alert --alertmanager` once per alert, each a new process on the same state; the first
/// (compiling into the cache) is not counted.
fn cli_rounds(dir: &Path, agents: &Path, world: &Path, cache: &Path) -> Vec<Duration> {
    let payload = dir.join("notification.json");
    let state = dir.join("cli-state");
    let mut times: Vec<Duration> = (0..=CLI_N)
        .map(|i| {
            let notification = serde_json::json!({
                "version": "4", "groupKey": "{}:{alertname=\"PostgresLockWaits\"}", "truncatedAlerts": 0,
                "status": "firing", "receiver": "themis", "groupLabels": {}, "commonLabels": {},
                "commonAnnotations": {}, "externalURL": "http://alertmanager",
                "alerts": [{
                    "status": "firing",
                    "labels": { "alertname": "PostgresLockWaits", "pid": format!("{}", 5000 + i) },
                    "annotations": {}, "startsAt": "2026-11-30T10:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus",
                    "fingerprint": format!("cli-{i}"),
                }],
            });
            std::fs::write(&payload, notification.to_string()).expect("payload");
            let t = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_themis"))
                .arg("alert")
                .arg("--scenario")
                .arg(world)
                .arg("--alertmanager")
                .arg(&payload)
                .arg("--agents")
                .arg(agents)
                .arg("--state-dir")
                .arg(&state)
                .arg("--cache-dir")
                .arg(cache)
                .output()
                .expect("themis alert");
            let took = t.elapsed();
            assert!(
                out.status.success(),
                "themis alert failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            took
        })
        .skip(1)
        .collect();
    times.sort();
    times
}
