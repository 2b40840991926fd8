//! Capability calls through the sandbox to a real PostgreSQL, against the same statements issued
//! directly with sqlx, measured in the same run. The step is the shipped `activity-probe`
//! (its action reads `postgres.activity`, `postgres.blockers` and `postgres.replication-lag`);
//! the baseline runs those three statements with the same parameters on the same pool.
//! Also measured: the backend's own three reads (no sandbox) and the probe against a backend that
//! answers at once (what the sandbox itself costs). Prints the sandbox's added cost as a ratio
//! of medians (target: < 5 % on a `pg_stat_activity` read).
//!
//!     eval "$(scripts/postgres start)"
//!     just bench pg_call                                   # PG_CALL_ROUNDS=400
//!     PG_CALL_RUNTIME=current just bench pg_call
//!
//! (`just bench` optimises the workspace's crates too: the host functions are ours, and the dev
//! profile alone would measure them as debug code.)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
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
    async fn connection_usage(
        &self,
        _: f64,
    ) -> themis_caps::CapResult<themis_caps::types::ConnectionSlots> {
        Ok(themis_caps::types::ConnectionSlots {
            max_connections: 100,
            reserved: 3,
            used: 1,
            idle: Vec::new(),
        })
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
    // PG_CALL_RUNTIME=current: everything on one thread, no cross-thread wake-ups, to tell the
    // sandbox's cost from the scheduler's.
    let current = std::env::var("PG_CALL_RUNTIME").as_deref() == Ok("current");
    let rt = if current {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
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
        alert: Alert::named("Bench", "f"),
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

    // Interleaved rounds, not one series after another: on a shared machine the load drifts
    // between series by more than the effect measured here.
    let rounds: usize = std::env::var("PG_CALL_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(400);
    let mut times: [Vec<Duration>; 4] = Default::default();
    // The probe's action in the sandbox against `backends`; it must succeed.
    let probe = |backends: &Backends| {
        let env = env(backends);
        let (sandbox, component, context) = (&sandbox, &component, &context);
        async move {
            let t = Instant::now();
            let call = sandbox
                .call(
                    component,
                    Phase::Action,
                    context,
                    env,
                    Duration::from_secs(5),
                )
                .await;
            let took = t.elapsed();
            assert!(
                matches!(call.result, Ok(Verdict::Action(ref o)) if o.ok),
                "{:?}",
                call.result
            );
            took
        }
    };
    rt.block_on(async {
        for round in 0..rounds + 20 {
            let sandboxed = probe(&backends).await;
            let own = probe(&instant).await;

            let t = Instant::now();
            {
                use themis_caps::PostgresCaps;
                let a = pg.activity(60.0).await.expect("activity");
                let w = pg.blockers().await.expect("blockers");
                let r = pg.replication_lag().await.expect("replication");
                std::hint::black_box((a, w, r));
            }
            let backend = t.elapsed();

            let t = Instant::now();
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
            let direct = t.elapsed();

            if round >= 20 {
                for (series, d) in times.iter_mut().zip([direct, backend, sandboxed, own]) {
                    series.push(d);
                }
            }
        }
    });
    let [direct, backend, sandboxed, own] = times.map(|mut v| {
        v.sort();
        (v[v.len() / 2], v[v.len() * 9 / 10])
    });
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "| measurement ({rounds} interleaved rounds, {} tokio runtime) | median | p90 |",
        if current {
            "current-thread"
        } else {
            "multi-thread"
        }
    );
    println!("|---|---|---|");
    println!(
        "| sqlx, the three statements (baseline) | {:.0} µs | {:.0} µs |",
        us(direct.0),
        us(direct.1)
    );
    println!(
        "| the backend's three reads, no sandbox | {:.0} µs | {:.0} µs |",
        us(backend.0),
        us(backend.1)
    );
    println!(
        "| the probe step in the sandbox, same three reads | {:.0} µs | {:.0} µs |",
        us(sandboxed.0),
        us(sandboxed.1)
    );
    println!(
        "| the probe step against a backend that answers at once (the sandbox's own cost) | {:.0} µs | {:.0} µs |",
        us(own.0),
        us(own.1)
    );
    let ratio = us(sandboxed.0) / us(direct.0);
    println!(
        "| sandbox / sqlx (medians) | {ratio:.3}× (+{:.1} %; target < 5 %: {}) | |",
        (ratio - 1.0) * 100.0,
        if ratio < 1.05 { "met" } else { "NOT met" }
    );
}
