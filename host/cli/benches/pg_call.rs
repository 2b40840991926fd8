//! Capability calls through the sandbox to a real PostgreSQL, against the same statements issued
//! directly with sqlx, measured in the same run.
//!
//! One capability call: the test-only `pg-reads` step reads `postgres.activity` once and
//! [`READS`] times in one action; what the extra calls add over the same extra statements issued
//! directly is a call's cost through the sandbox (lowering, the grant, the record, the crossing),
//! apart from the phase's own (a fresh instance per phase). The target is on this one: the
//! sandbox adds < 5 % to a `pg_stat_activity` read.
//!
//! A whole phase: the step is the shipped `activity-probe`
//! (its action reads `postgres.activity`, `postgres.blockers`, `postgres.connection-usage` and
//! `postgres.replication-lag`, granted as its manifest grants them); the baseline runs the same
//! five statements with the same parameters on the same pool. Also measured: the backend's own
//! four reads (no sandbox) and the probe against a backend that answers at once (what the sandbox
//! itself costs). Prints the sandbox's added cost as a ratio of medians.
//!
//!     eval "$(scripts/postgres start)"
//!     just bench pg_call                                   # PG_CALL_ROUNDS=400
//!     PG_CALL_RUNTIME=current just bench pg_call
//!     PG_CALL_PROFILE=own PG_CALL_ROUNDS=20000 perf record -g target/debug/deps/pg_call-…
//!     PG_CALL_PROFILE=own PG_CALL_GAP_US=300 …    # the same, each probe after an idle pause
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
use themis_core::types::{Alert, Param, ParamValue, Phase};
use themis_sandbox::journal::MemoryJournal;
use themis_sandbox::loaded::LoadedRunbook;
use themis_sandbox::{PhaseContext, PhaseEnv, Sandbox, SandboxConfig, StepComponent, Verdict};

/// How many `postgres.activity` reads the longer `pg-reads` action makes.
const READS: i64 = 9;

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

/// What a step's action may do here: what its manifest grants it, over `backends`.
fn env(
    context: &PhaseContext,
    capabilities: &std::collections::BTreeSet<String>,
    backends: &Backends,
    journal: Arc<MemoryJournal>,
) -> PhaseEnv {
    PhaseEnv {
        grant: Grant {
            runbook_id: context.runbook_id.clone(),
            step_id: context.step_id.clone(),
            execution_id: context.execution_id.clone(),
            phase: Phase::Action,
            capabilities: capabilities.clone(),
            scopes: Default::default(),
            destructive: Arc::new(DestructiveList::catalogue()),
            approval: None,
        },
        backends: backends.clone(),
        journal,
        counts: Arc::default(),
    }
}

/// A step's action in the sandbox, timed; it must succeed with no call refused.
async fn action(
    sandbox: &Sandbox,
    component: &StepComponent,
    context: PhaseContext,
    env: PhaseEnv,
) -> Duration {
    let t = Instant::now();
    let call = sandbox
        .call(
            component,
            Phase::Action,
            &context,
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
    assert_eq!(call.calls_refused, 0, "{:?}", call.calls);
    took
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
    let reads_bundle = LoadedRunbook::load(
        &sandbox,
        &repo().join("tests/runbooks/pg-reads"),
        &TrustPolicy::trusting(
            read_public_keys(&repo().join("keys/demo/demo-test-fixtures.pub"))
                .expect("test fixtures key"),
        ),
    )
    .expect("components built and signed: run scripts/build-runbooks");
    let reads_component = reads_bundle.components[0].clone();
    let reads_grant = reads_bundle.runbook.steps[0].capabilities.clone();
    let reads_context = |n: i64| PhaseContext {
        execution_id: "bench".into(),
        runbook_id: "pg-reads".into(),
        runbook_version: "0.1.0".into(),
        step_id: "reads".into(),
        alert: Alert::named("Bench", "f"),
        params: vec![Param {
            name: "reads".into(),
            value: ParamValue::Integer(n),
        }],
        outputs: vec![],
        dry_run: false,
    };
    // What the shipped manifest grants the step: a call the bench did not grant would be refused
    // and cost nothing to the sandbox's side of the comparison.
    let capabilities = probe.runbook.steps[0].capabilities.clone();
    assert!(
        capabilities.contains("postgres.connection-usage") && capabilities.len() == 4,
        "the probe's grant changed ({capabilities:?}): update the baseline's statements"
    );
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

    // Interleaved rounds, not one series after another: on a shared machine the load drifts
    // between series by more than the effect measured here.
    let rounds: usize = std::env::var("PG_CALL_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(400);
    let mut times: [Vec<Duration>; 8] = Default::default();
    // The probe's action in the sandbox against `backends`; it must succeed.
    let probe = |backends: &Backends| {
        let env = env(&context, &capabilities, backends, journal.clone());
        action(&sandbox, &component, context.clone(), env)
    };
    // `pg-reads` in the sandbox, making `n` reads.
    let reads = |over: &Backends, n: i64| {
        let context = reads_context(n);
        let env = env(&context, &reads_grant, over, journal.clone());
        action(&sandbox, &reads_component, context, env)
    };
    // The same reads issued directly, `n` of them.
    let activity = |n: i64| {
        let pool = pg.pool();
        async move {
            let t = Instant::now();
            for _ in 0..n {
                let rows = sqlx::query(queries::ACTIVITY)
                    .bind(60.0_f64)
                    .bind(queries::MAX_ROWS)
                    .fetch_all(pool)
                    .await
                    .expect("activity");
                std::hint::black_box(rows);
            }
            t.elapsed()
        }
    };
    // The direct statements, issued with sqlx on the backend's own pool.
    let direct = || async {
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
        let l = sqlx::query(queries::CONNECTION_LIMITS)
            .fetch_one(pool)
            .await
            .expect("connection limits");
        let i = sqlx::query(queries::IDLE_SESSIONS)
            .bind(600.0_f64)
            .bind(queries::MAX_ROWS)
            .fetch_all(pool)
            .await
            .expect("idle sessions");
        let r = sqlx::query(queries::REPLICATION)
            .bind(queries::MAX_ROWS)
            .fetch_all(pool)
            .await
            .expect("replication");
        std::hint::black_box((a, w, l, i, r));
        t.elapsed()
    };
    let backend = || async {
        use themis_caps::PostgresCaps;
        let t = Instant::now();
        let a = pg.activity(60.0).await.expect("activity");
        let w = pg.blockers().await.expect("blockers");
        let c = pg.connection_usage(600.0).await.expect("connection usage");
        let r = pg.replication_lag().await.expect("replication");
        std::hint::black_box((a, w, c, r));
        t.elapsed()
    };
    // PG_CALL_PROFILE=own: only the sandbox's own cost, in a loop, for a profiler
    // (`perf record -g`), with nothing of PostgreSQL in the samples.
    if std::env::var("PG_CALL_PROFILE").as_deref() == Ok("own") {
        let took: Duration = rt.block_on(async {
            let mut sum = Duration::ZERO;
            // PG_CALL_GAP_US: the thread sleeps that long before each probe, as it waits on a
            // socket between the interleaved series; on a virtual machine the idle vCPU comes
            // back with cold caches, and this shows what that alone costs.
            let gap = std::env::var("PG_CALL_GAP_US")
                .ok()
                .and_then(|g| g.parse().ok())
                .map(Duration::from_micros);
            for _ in 0..rounds {
                if let Some(gap) = gap {
                    std::thread::sleep(gap);
                }
                sum += probe(&instant).await;
            }
            sum
        });
        println!(
            "the sandbox's own cost: {:.1} µs per probe (mean of {rounds})",
            took.as_secs_f64() * 1e6 / rounds as f64
        );
        return;
    }
    // PG_CALL_PROFILE=own-reads: what one more call costs the sandbox itself, against the
    // backend that answers at once (`pg-reads` making READS reads and one, back to back).
    if std::env::var("PG_CALL_PROFILE").as_deref() == Ok("own-reads") {
        let (many, one) = rt.block_on(async {
            let (mut many, mut one) = (Duration::ZERO, Duration::ZERO);
            for _ in 0..rounds {
                many += reads(&instant, READS).await;
                one += reads(&instant, 1).await;
            }
            (many, one)
        });
        println!(
            "one call's own cost: {:.2} µs (mean of {rounds} phases of {READS} and of 1); a phase of one call {:.1} µs",
            (many.as_secs_f64() - one.as_secs_f64()) * 1e6 / (rounds as f64 * (READS - 1) as f64),
            one.as_secs_f64() * 1e6 / rounds as f64
        );
        return;
    }
    // PG_CALL_PROFILE=reads / direct-reads: only `pg-reads` making READS reads, or the same
    // reads issued directly, in a loop, for `perf stat`/`perf record` side by side.
    if let Ok(which @ ("reads" | "direct-reads")) = std::env::var("PG_CALL_PROFILE").as_deref() {
        let took: Duration = rt.block_on(async {
            let mut sum = Duration::ZERO;
            for _ in 0..rounds {
                sum += if which == "reads" {
                    reads(&backends, READS).await
                } else {
                    activity(READS).await
                };
            }
            sum
        });
        println!(
            "{which}: {:.1} µs per read (mean of {rounds} × {READS})",
            took.as_secs_f64() * 1e6 / (rounds as f64 * READS as f64)
        );
        return;
    }
    // Per round, the sandbox's time over the baseline's in the same round: paired, so load that
    // drifts between rounds cancels out.
    let mut paired = Vec::with_capacity(rounds);
    let mut per_call = Vec::with_capacity(rounds);
    rt.block_on(async {
        for round in 0..rounds + 20 {
            // The three series that reach PostgreSQL take turns at going first: the server's
            // backend process is warmer for the statement right after another, and a fixed
            // order would hand that advantage to the same series every round.
            let mut took = [Duration::ZERO; 7];
            for slot in 0..7 {
                let which = (slot + round) % 7;
                took[which] = match which {
                    0 => direct().await,
                    1 => backend().await,
                    2 => probe(&backends).await,
                    3 => activity(1).await,
                    4 => activity(READS).await,
                    5 => reads(&backends, 1).await,
                    _ => reads(&backends, READS).await,
                };
            }
            let own = probe(&instant).await;
            let [direct, backend, sandboxed, d1, dn, s1, sn] = took;
            if round >= 20 {
                paired.push(sandboxed.as_secs_f64() / direct.as_secs_f64());
                // The extra reads through the sandbox over the same extra reads issued directly.
                per_call.push(
                    (sn.as_secs_f64() - s1.as_secs_f64()) / (dn.as_secs_f64() - d1.as_secs_f64()),
                );
                for (series, d) in times
                    .iter_mut()
                    .zip([direct, backend, sandboxed, own, d1, dn, s1, sn])
                {
                    series.push(d);
                }
            }
        }
    });
    let [direct, backend, sandboxed, own, d1, dn, s1, sn] = times.map(|mut v| {
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
        "| sqlx, the same five statements (baseline) | {:.0} µs | {:.0} µs |",
        us(direct.0),
        us(direct.1)
    );
    println!(
        "| the backend's four reads, no sandbox | {:.0} µs | {:.0} µs |",
        us(backend.0),
        us(backend.1)
    );
    println!(
        "| the probe step in the sandbox, same four reads | {:.0} µs | {:.0} µs |",
        us(sandboxed.0),
        us(sandboxed.1)
    );
    println!(
        "| the probe step against a backend that answers at once (the sandbox's own cost) | {:.0} µs | {:.0} µs |",
        us(own.0),
        us(own.1)
    );
    println!(
        "| one `postgres.activity` read, sqlx | {:.0} µs | {:.0} µs |",
        us(d1.0),
        us(d1.1)
    );
    println!(
        "| {READS} reads, sqlx | {:.0} µs | {:.0} µs |",
        us(dn.0),
        us(dn.1)
    );
    println!(
        "| `pg-reads` in the sandbox, one read (a fresh instance + one call) | {:.0} µs | {:.0} µs |",
        us(s1.0),
        us(s1.1)
    );
    println!(
        "| `pg-reads` in the sandbox, {READS} reads | {:.0} µs | {:.0} µs |",
        us(sn.0),
        us(sn.1)
    );
    let extra = READS as f64 - 1.0;
    let call_sandboxed = (us(sn.0) - us(s1.0)) / extra;
    let call_direct = (us(dn.0) - us(d1.0)) / extra;
    println!(
        "| one read: through the sandbox / issued directly (from the medians) | {:.0} µs / {:.0} µs = {:.3}× | |",
        call_sandboxed,
        call_direct,
        call_sandboxed / call_direct
    );
    per_call.sort_by(f64::total_cmp);
    let call_ratio = per_call[per_call.len() / 2];
    println!(
        "| one read: through the sandbox / issued directly (median of per-round ratios) | {call_ratio:.3}× (+{:.1} %; target < 5 %: {}) | |",
        (call_ratio - 1.0) * 100.0,
        if call_ratio < 1.05 { "met" } else { "NOT met" }
    );
    println!(
        "| a phase's own cost over one direct read (fresh instance, context, verdict) | {:.0} µs | |",
        us(s1.0) - us(d1.0) - (call_sandboxed - call_direct)
    );
    let ratio = us(sandboxed.0) / us(direct.0);
    println!(
        "| the probe phase / sqlx (ratio of medians) | {ratio:.3}× (+{:.1} %) | |",
        (ratio - 1.0) * 100.0,
    );
    paired.sort_by(f64::total_cmp);
    let paired = paired[paired.len() / 2];
    println!(
        "| the probe phase / sqlx (median of per-round ratios) | {paired:.3}× (+{:.1} %) | |",
        (paired - 1.0) * 100.0,
    );
}
