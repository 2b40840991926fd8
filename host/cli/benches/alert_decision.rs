//! Alert → decision host overhead: routing, incident creation, selection (the rule selector
//! answers at once), policy, the proposal and every audit record fsynced on the way. Printed as
//! p50/p99 next to the fsync of one appended line measured in the same run (the floor: a
//! decision writes several audit records, each fsynced before it takes effect).
//! Target: p99 ≤ 5 ms. The same decisions on a second host watched by the service's metrics
//! (its observer and the audit-append hook), alternated with the first, give the metrics' cost
//! (target: ≤ 5 % on the p50).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use themis_agent::audit::{AuditLog, Redactor};
use themis_agent::escalation::Channels;
use themis_agent::store::JsonStore;
use themis_agent::{AlertOutcome, Quiet, Runtime, RuntimeParts};
use themis_core::types::{Alert, Pair};
use themis_sandbox::{Sandbox, SandboxConfig};
use themis_server::Metrics;
use themis_testkit::provider::ScenarioProvider;

const N: usize = 400;

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
    let agent = dir.path().join("bench-agent.yaml");
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
    let start = |name: &str, metrics: Option<Arc<Metrics>>| {
        let base = dir.path().join(name);
        let audit = Arc::new(
            AuditLog::open(&base.join("audit.jsonl"), Redactor::default()).expect("audit"),
        );
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
        let store = Arc::new(JsonStore::open(&base.join("state")).expect("store"));
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
    let runtime = start("plain", None);
    let watched = start("metrics", Some(metrics.clone()));

    let mut decisions = Vec::with_capacity(N);
    let mut with_metrics = Vec::with_capacity(N);
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
        for (host, times) in [(&runtime, &mut decisions), (&watched, &mut with_metrics)] {
            let t = Instant::now();
            let outcome = rt
                .block_on(host.handle_alert(alert.clone()))
                .expect("handled");
            times.push(t.elapsed());
            let AlertOutcome::Handled(incident) = outcome else {
                panic!("a new incident")
            };
            assert!(
                incident.proposal.is_some(),
                "the destructive plan is proposed"
            );
        }
    }
    with_metrics.sort();
    let scraped = metrics.encode().expect("metrics");
    let counted = format!(
        r#"themis_decisions_total{{agent="postgres",decision="runbook",selector="rules"}} {N}"#
    );
    assert!(
        scraped.contains(&counted),
        "the metrics saw every decision:\n{scraped}"
    );
    decisions.sort();

    // Baseline: append one line and fsync it, same disk, same run.
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("fsync.log"))
        .expect("open");
    let mut fsyncs: Vec<Duration> = (0..N)
        .map(|i| {
            let t = Instant::now();
            writeln!(f, "{{\"seq\":{i},\"line\":\"baseline\"}}").expect("write");
            f.sync_data().expect("fsync");
            t.elapsed()
        })
        .collect();
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
        "| same, with the service's metrics watching (interleaved) | {:.2} ms | {:.2} ms |",
        ms(percentile(&with_metrics, 0.5)),
        ms(percentile(&with_metrics, 0.99))
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
    let p99 = ms(percentile(&decisions, 0.99));
    println!(
        "\ntarget p99 ≤ 5 ms: {}",
        if p99 <= 5.0 { "met" } else { "NOT met" }
    );
}
