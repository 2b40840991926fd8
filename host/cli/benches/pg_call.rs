//! Capability calls through the sandbox to a real PostgreSQL, against the same statements issued
//! directly with sqlx, measured in the same run. The step is the shipped `activity-probe`
//! (its action reads `postgres.activity`, `postgres.blockers` and `postgres.replication-lag`);
//! the baseline runs those three statements with the same parameters on the same pool.
//! Prints the sandbox's added cost as a ratio (target: < 5 % on a `pg_stat_activity` read).
//!
//!     eval "$(scripts/postgres start)"
//!     cargo bench -p themis --bench pg_call --profile dev

use criterion::Criterion;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use themis_backend_postgres::{PostgresBackend, PostgresSettings, TlsMode, queries};
use themis_caps::Backends;
use themis_caps::provider::NoBackend;
use themis_core::grant::Grant;
use themis_core::policy::DestructiveList;
use themis_core::trust::TrustPolicy;
use themis_core::trust::keys::read_public_keys;
use themis_core::types::{Alert, Phase};
use themis_sandbox::journal::MemoryJournal;
use themis_sandbox::loaded::LoadedRunbook;
use themis_sandbox::{PhaseContext, PhaseEnv, Sandbox, SandboxConfig, Verdict};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

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

/// A PostgreSQL that answers at once with nothing: what is left of a sandboxed probe is the
/// sandbox's own cost.
struct Instant0;

#[async_trait::async_trait]
impl themis_caps::PostgresCaps for Instant0 {
    async fn activity(&self, _: f64) -> themis_caps::CapResult<Vec<themis_caps::types::Backend>> {
        Ok(Vec::new())
    }
    async fn blockers(&self) -> themis_caps::CapResult<Vec<themis_caps::types::LockWait>> {
        Ok(Vec::new())
    }
    async fn replication_lag(&self) -> themis_caps::CapResult<Vec<themis_caps::types::Replica>> {
        Ok(Vec::new())
    }
    async fn cancel_backend(&self, _: i32) -> themis_caps::CapResult<bool> {
        Ok(false)
    }
    async fn terminate_backend(&self, _: i32) -> themis_caps::CapResult<bool> {
        Ok(false)
    }
}

fn main() {
    let Ok(url) = std::env::var("THEMIS_TEST_POSTGRES") else {
        eprintln!("set THEMIS_TEST_POSTGRES: eval \"$(scripts/postgres start)\"");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _runtime = rt.enter();
    let mut settings = PostgresSettings::new(url);
    settings.tls = TlsMode::Disable;
    settings.pool = 1;
    let pg = Arc::new(PostgresBackend::new("bench", settings).expect("backend"));
    let none = NoBackend::for_agent("bench");
    let backends = Backends::live(none.clone(), none.clone(), none.clone(), pg.clone());
    let instant = Backends::live(none.clone(), none.clone(), none, Arc::new(Instant0));

    let sandbox = Sandbox::new(SandboxConfig::default()).expect("sandbox");
    let trust = TrustPolicy::trusting(
        read_public_keys(&repo().join("keys/demo/demo-postgres-team.pub")).expect("demo key"),
    );
    let probe = LoadedRunbook::load(
        &sandbox,
        &repo().join("runbooks/postgres/activity-probe"),
        &trust,
    )
    .expect("components built and signed: run scripts/build-runbooks");
    let component = probe.components[0].clone();
    let journal = Arc::new(MemoryJournal::default());
    let context = PhaseContext {
        execution_id: "bench".into(),
        runbook_id: "activity-probe".into(),
        runbook_version: "1.0.0".into(),
        step_id: "activity".into(),
        alert: Alert {
            name: "Bench".into(),
            fingerprint: "f".into(),
            labels: vec![],
            annotations: vec![],
        },
        params: vec![],
        outputs: vec![],
        dry_run: false,
    };
    let env = |backends: &Backends| PhaseEnv {
        grant: Grant {
            runbook_id: "activity-probe".into(),
            step_id: "activity".into(),
            execution_id: "bench".into(),
            phase: Phase::Action,
            capabilities: [
                "postgres.activity",
                "postgres.blockers",
                "postgres.replication-lag",
            ]
            .map(String::from)
            .into(),
            scopes: Default::default(),
            destructive: Arc::new(DestructiveList::catalogue()),
            approval: None,
        },
        backends: backends.clone(),
        journal: journal.clone(),
        counts: Arc::default(),
    };

    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    c.bench_function("pg/sandbox_activity_probe", |b| {
        b.to_async(&rt).iter(|| async {
            let call = sandbox
                .call(
                    &component,
                    Phase::Action,
                    &context,
                    env(&backends),
                    Duration::from_secs(5),
                )
                .await;
            assert!(
                matches!(call.result, Ok(Verdict::Action(ref o)) if o.ok),
                "{:?}",
                call.result
            );
        })
    });
    c.bench_function("pg/sandbox_probe_instant_backend", |b| {
        b.to_async(&rt).iter(|| async {
            let call = sandbox
                .call(
                    &component,
                    Phase::Action,
                    &context,
                    env(&instant),
                    Duration::from_secs(5),
                )
                .await;
            assert!(matches!(call.result, Ok(Verdict::Action(ref o)) if o.ok));
        })
    });
    c.bench_function("pg/backend_three_reads", |b| {
        b.to_async(&rt).iter(|| async {
            use themis_caps::PostgresCaps;
            let a = pg.activity(60.0).await.expect("activity");
            let w = pg.blockers().await.expect("blockers");
            let r = pg.replication_lag().await.expect("replication");
            std::hint::black_box((a, w, r));
        })
    });
    c.bench_function("baseline/sqlx_same_three_statements", |b| {
        b.to_async(&rt).iter(|| async {
            let pool = pg.pool();
            let a = sqlx::query(queries::ACTIVITY)
                .bind(60.0_f64)
                .bind(queries::MAX_ROWS)
                .fetch_all(pool)
                .await
                .expect("activity");
            let w = sqlx::query(queries::BLOCKERS)
                .bind(queries::MAX_ROWS)
                .fetch_all(pool)
                .await
                .expect("blockers");
            let r = sqlx::query(queries::REPLICATION)
                .bind(queries::MAX_ROWS)
                .fetch_all(pool)
                .await
                .expect("replication");
            std::hint::black_box((a, w, r));
        })
    });
    c.final_summary();

    println!();
    println!("| measurement | value |");
    println!("|---|---|");
    if let (Some(sandboxed), Some(backend), Some(direct)) = (
        estimate_ns("pg_sandbox_activity_probe"),
        estimate_ns("pg_backend_three_reads"),
        estimate_ns("baseline_sqlx_same_three_statements"),
    ) {
        println!(
            "| sqlx, the three statements (median) | {:.0} µs |",
            direct / 1000.0
        );
        println!(
            "| the backend's three reads, no sandbox (median) | {:.0} µs ({:.3}×) |",
            backend / 1000.0,
            backend / direct
        );
        println!(
            "| the probe step in the sandbox, same three reads (median) | {:.0} µs |",
            sandboxed / 1000.0
        );
        if let Some(own) = estimate_ns("pg_sandbox_probe_instant_backend") {
            println!(
                "| the probe step against a backend that answers at once (the sandbox's own cost) | {:.0} µs |",
                own / 1000.0
            );
        }
        let added = sandboxed / direct - 1.0;
        println!(
            "| sandbox / sqlx | {:.3}× (+{:.1} %; target < 5 %: {}) |",
            sandboxed / direct,
            added * 100.0,
            if added < 0.05 { "met" } else { "NOT met" }
        );
    }
}
