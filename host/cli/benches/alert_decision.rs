//! Alert → decision host overhead: routing, incident creation, selection (the rule selector
//! answers at once), policy, the proposal and every audit record fsynced on the way. Printed as
//! p50/p99 next to the fsync of one appended line measured in the same run (the floor: a
//! decision writes several audit records, each fsynced before it takes effect).
//! Target: p99 ≤ 5 ms.

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
    let audit = Arc::new(
        AuditLog::open(&dir.path().join("audit.jsonl"), Redactor::default()).expect("audit"),
    );
    let store = Arc::new(JsonStore::open(&dir.path().join("state")).expect("store"));
    let provider = Arc::new(ScenarioProvider::from_file(&world, false).expect("world"));
    let runtime = rt
        .block_on(Runtime::start(
            RuntimeParts {
                sandbox,
                agent_files: vec![agent],
                audit,
                store,
                channels: Channels::default(),
                observer: Arc::new(Quiet),
                provider,
            },
            Default::default(),
        ))
        .expect("runtime");

    let mut decisions = Vec::with_capacity(N);
    for i in 0..N {
        let alert = Alert {
            name: "PostgresLockWaits".into(),
            fingerprint: format!("bench-{i}"),
            labels: vec![Pair {
                key: "pid".into(),
                value: format!("{}", 1000 + i),
            }],
            annotations: vec![],
        };
        let t = Instant::now();
        let outcome = rt.block_on(runtime.handle_alert(alert)).expect("handled");
        decisions.push(t.elapsed());
        let AlertOutcome::Handled(incident) = outcome else {
            panic!("a new incident")
        };
        assert!(
            incident.proposal.is_some(),
            "the destructive plan is proposed"
        );
    }
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

    let records = themis_agent::audit::verify::verify(&dir.path().join("audit.jsonl"))
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
