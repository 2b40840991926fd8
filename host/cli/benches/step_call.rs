//! One step call — fresh Store, instantiate from InstancePre, call `precondition` of a trivial
//! step, through `Sandbox::call` with its grant checks and records — next to a fork+exec of
//! `/bin/true` measured in the same run. Prints the ratio (target: the step call costs at most
//! 1/100 of the fork+exec), the first-load compile time of each shipped component, and the memory
//! a live instance holds.

use criterion::Criterion;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use themis_caps::Backends;
use themis_core::capability::Domain;
use themis_core::grant::Grant;
use themis_core::policy::DestructiveList;
use themis_core::trust::TrustPolicy;
use themis_core::trust::keys::read_public_keys;
use themis_core::types::{Alert, Phase};
use themis_sandbox::journal::MemoryJournal;
use themis_sandbox::loaded::LoadedRunbook;
use themis_sandbox::{PhaseContext, PhaseEnv, Sandbox, SandboxConfig, Verdict};
use themis_testkit::mock::ScenarioMock;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ctx() -> PhaseContext {
    PhaseContext {
        execution_id: "bench".into(),
        runbook_id: "misbehaving".into(),
        runbook_version: "0.1.0".into(),
        step_id: "trivial".into(),
        alert: Alert::named("Bench", "f"),
        params: vec![],
        outputs: vec![],
        dry_run: false,
    }
}

fn env(backends: &Backends, journal: &Arc<MemoryJournal>) -> PhaseEnv {
    PhaseEnv {
        grant: Grant {
            runbook_id: "misbehaving".into(),
            step_id: "trivial".into(),
            execution_id: "bench".into(),
            phase: Phase::Precondition,
            capabilities: Default::default(),
            scopes: Default::default(),
            destructive: Arc::new(DestructiveList::catalogue()),
            approval: None,
        },
        backends: backends.clone(),
        journal: journal.clone(),
        counts: Arc::default(),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Criterion's point estimate (ns) of a benchmark measured in this run.
fn estimate_ns(id: &str) -> Option<f64> {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target"));
    let text =
        std::fs::read_to_string(target.join("criterion").join(id).join("new/estimates.json"))
            .ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let sandbox = Sandbox::new(SandboxConfig::default()).expect("sandbox");
    let trust = TrustPolicy::trusting(
        read_public_keys(&repo().join("keys/demo/demo-test-fixtures.pub")).expect("demo key"),
    );
    let loaded = LoadedRunbook::load(&sandbox, &repo().join("tests/runbooks/misbehaving"), &trust)
        .expect("components built and signed: run scripts/build-runbooks");
    let trivial = loaded.components[0].clone();
    let mock = Arc::new(ScenarioMock::new(Default::default()).expect("mock"));
    let backends = Backends::all(mock);
    let journal = Arc::new(MemoryJournal::default());
    let context = ctx();

    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    c.bench_function("step_call/trivial_precondition", |b| {
        b.to_async(&rt).iter(|| async {
            let call = sandbox
                .call(
                    &trivial,
                    Phase::Precondition,
                    &context,
                    env(&backends, &journal),
                    Duration::from_secs(5),
                )
                .await;
            assert!(matches!(call.result, Ok(Verdict::Check(ref c)) if c.passed));
        })
    });
    c.bench_function("baseline/fork_exec_bin_true", |b| {
        b.iter(|| {
            let status = std::process::Command::new("/bin/true")
                .status()
                .expect("/bin/true runs");
            assert!(status.success());
        })
    });
    c.final_summary();

    println!();
    println!("| measurement | value |");
    println!("|---|---|");
    if let (Some(step), Some(fork)) = (
        estimate_ns("step_call_trivial_precondition"),
        estimate_ns("baseline_fork_exec_bin_true"),
    ) {
        println!("| step call (median) | {:.1} µs |", step / 1000.0);
        println!("| fork+exec /bin/true (median) | {:.1} µs |", fork / 1000.0);
        println!(
            "| step call / fork+exec | 1/{:.0} (target ≤ 1/100: {}) |",
            fork / step,
            if fork / step >= 100.0 {
                "met"
            } else {
                "NOT met"
            }
        );
    }

    // First-load compile time: a fresh engine per sample so nothing is cached.
    let mut components: Vec<PathBuf> = Vec::new();
    for runbook in [
        "check-broker-health",
        "restart-consumer-group",
        "scale-consumer",
    ] {
        let dir = repo()
            .join("runbooks/kafka")
            .join(runbook)
            .join("components");
        for entry in std::fs::read_dir(&dir).expect("components built").flatten() {
            components.push(entry.path());
        }
    }
    components.sort();
    for path in &components {
        let bytes = std::fs::read(path).expect("read component");
        let samples: Vec<Duration> = (0..5)
            .map(|_| {
                let fresh = Sandbox::new(SandboxConfig::default()).expect("sandbox");
                let t = Instant::now();
                fresh.load(Domain::Kafka, "bench", &bytes).expect("loads");
                t.elapsed()
            })
            .collect();
        println!(
            "| first-load compile {} ({} KiB) | {:.1} ms |",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            bytes.len() / 1024,
            median(samples).as_secs_f64() * 1000.0
        );
    }

    // Memory per live instance: hold N instantiated stores, compare RSS.
    let n = 48;
    let before = rss_bytes();
    let live = rt.block_on(async {
        let mut live = Vec::new();
        for _ in 0..n {
            live.push(
                sandbox
                    .instantiate_for_measurement(&trivial)
                    .await
                    .expect("instantiates"),
            );
        }
        live
    });
    let after = rss_bytes();
    println!(
        "| memory per live instance (RSS delta / {n}) | {:.0} KiB |",
        (after.saturating_sub(before)) as f64 / n as f64 / 1024.0
    );
    drop(live);
}
