//! The WebAssembly sandbox: one wasmtime `Engine` per process, each component compiled once per
//! digest and pre-instantiated against its domain's linker, a fresh `Store` per phase call with a
//! memory limit, an epoch deadline, an empty WASI context and bounded host-side bookkeeping; and
//! the executor that walks a runbook's graph through it.
//!
//! Invariants: only this crate talks to guests; a guest never sees ambient authority; every
//! capability call goes through `StepState::invoke` (grant, phase, plan, approval, budget,
//! journal); the generated WIT types never leave the crate.

pub mod cache;
mod convert;
mod epoch;
pub mod executor;
mod host_impl;
pub mod imports;
pub mod journal;
pub mod limits;
pub mod loaded;
mod record;
mod state;
mod wit;

pub use host_impl::JournalFailed;
pub use limits::{LimitExceeded, PhaseLimits};
pub use record::{CallMode, CallOutcome, CapabilityCall, LogLine};
pub use state::{ExecutionCounts, MemoryLimitHit, PhaseEnv};

use convert::Conv;
use serde::Serialize;
use state::StepState;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use themis_caps::Backends;
use themis_core::capability::Domain;
use themis_core::types::{Alert, Pair, Param, Phase, StepOutput};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};
use wit::{RunbookHostPre, k8s, kafka, log, metrics, postgres, types};

/// Limits and sizes of the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Linear memory a step may grow to, per call.
    pub memory_limit: usize,
    /// How long one capability call may take before the guest gets `unavailable`.
    pub call_timeout: Duration,
    /// Granularity of wall-clock deadlines.
    pub epoch_tick: Duration,
    /// Step instances alive at once (pooling allocator slots).
    pub max_instances: u32,
    /// Where compiled components are cached across starts; `None` compiles on every start.
    pub cache_dir: Option<PathBuf>,
    /// What one phase may cost the host.
    pub limits: PhaseLimits,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            memory_limit: 64 << 20,
            call_timeout: Duration::from_secs(10),
            epoch_tick: Duration::from_millis(5),
            max_instances: 64,
            cache_dir: None,
            limits: PhaseLimits::default(),
        }
    }
}

/// What a phase is told: the step context, in plain types.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseContext {
    pub execution_id: String,
    pub runbook_id: String,
    pub runbook_version: String,
    pub step_id: String,
    pub alert: Alert,
    pub params: Vec<Param>,
    pub outputs: Vec<StepOutput>,
    pub dry_run: bool,
}

impl PhaseContext {
    fn to_guest(&self) -> types::StepContext {
        types::StepContext {
            execution_id: self.execution_id.clone(),
            runbook_id: self.runbook_id.clone(),
            runbook_version: self.runbook_version.clone(),
            step_id: self.step_id.clone(),
            alert: self.alert.clone().conv(),
            params: self.params.clone().conv(),
            outputs: self.outputs.clone().conv(),
            dry_run: self.dry_run,
        }
    }
}

/// A precondition's, postcondition's or rollback's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    pub passed: bool,
    pub summary: String,
    pub evidence: Vec<Pair>,
    pub outputs: Vec<Pair>,
}

/// An action's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionResult {
    pub ok: bool,
    pub summary: String,
    pub evidence: Vec<Pair>,
    pub outputs: Vec<Pair>,
    pub branch: String,
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{component}: not a valid WebAssembly component: {message}")]
    Compile { component: String, message: String },
    #[error("{component}: {refused}")]
    ImportRefused {
        component: String,
        refused: imports::RefusedImport,
    },
    #[error("{component}: cannot be linked: {message}")]
    Link { component: String, message: String },
}

/// Why a phase call produced no verdict. The host survives every one of these.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(rename_all = "kebab-case", tag = "fault")]
pub enum Fault {
    #[error("deadline hit: the step ran longer than {limit_ms} ms and was stopped")]
    DeadlineExceeded { limit_ms: u64 },
    #[error(
        "memory limit hit: the step asked for {desired} bytes of linear memory, the limit is {limit}"
    )]
    MemoryLimit { desired: usize, limit: usize },
    #[error("the step trapped: {message}")]
    Trap { message: String },
    #[error("the step could not be instantiated: {message}")]
    Instantiate { message: String },
    #[error("{message}")]
    LimitExceeded { message: String },
    /// A mutating call could not be journalled: the host stopped the step (fail closed).
    #[error("{message}")]
    Journal { message: String },
}

/// What the phase returned, when it returned.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Verdict {
    Check(CheckResult),
    Action(ActionResult),
}

/// Everything one phase call produced: the verdict or fault, the capability calls it made, its
/// log lines (and how many were dropped or cut) and whatever it wrote to stderr (a panic
/// message, typically).
#[derive(Debug, Clone)]
pub struct PhaseCall {
    pub result: Result<Verdict, Fault>,
    pub calls: Vec<CapabilityCall>,
    pub logs: Vec<LogLine>,
    pub logs_dropped: u64,
    pub logs_truncated: u64,
    pub calls_refused: u64,
    pub stderr: String,
    pub duration: Duration,
}

/// A loaded, checked, pre-instantiated step component.
#[derive(Clone)]
pub struct StepComponent {
    pub digest: String,
    pub domain: Domain,
    pre: RunbookHostPre<StepState>,
}

impl std::fmt::Debug for StepComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepComponent")
            .field("digest", &self.digest)
            .field("domain", &self.domain)
            .finish()
    }
}

pub struct Sandbox {
    engine: Engine,
    linkers: BTreeMap<Domain, Linker<StepState>>,
    compiled: Mutex<HashMap<String, Component>>,
    cache: Option<cache::CompiledCache>,
    counters: Counters,
    config: SandboxConfig,
    _ticker: epoch::Ticker,
}

#[derive(Default)]
struct Counters {
    compiles: AtomicU64,
    cache_hits: AtomicU64,
    cache_rejected: AtomicU64,
}

/// How components reached native code since the sandbox started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct SandboxStats {
    /// Calls into the compiler (`Component::new`).
    pub compiles: u64,
    /// Components loaded from the on-disk cache.
    pub cache_hits: u64,
    /// Cache entries refused (not written by this host, corrupted, stale) and recompiled.
    pub cache_rejected: u64,
}

/// The most a guest may transfer to the host in one call.
const HOSTCALL_BYTES: usize = 32 << 20;

/// Bytes of a step's linear memory kept resident between instances: a Rust guest's 1 MiB stack
/// sits below its data and heap, so what a step touches lies in the first two MiB.
const KEEP_RESIDENT: usize = 2 << 20;

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Self, wasmtime::Error> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 8)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 4)
            // Per step too: one component defining many modules, memories or tables must not
            // take the pool's slots from every other step (a Rust step has one memory, a few
            // core instances and tables).
            .max_core_instances_per_component(8)
            .max_memories_per_component(2)
            .max_tables_per_component(4)
            .max_memory_size(config.memory_limit)
            // madvise calls are batched: each one is a syscall and, with several threads, a TLB
            // shootdown. Measured: 23 µs → 15 µs per fresh-store step call (benches/step_call).
            .decommit_batch_size(64)
            // A freed slot's memory is reset in place rather than given back to the kernel, so
            // the next instance does not page-fault its stack and heap in again; with
            // PAGEMAP_SCAN (Linux 6.7+) only the pages the guest touched are reset. What stays
            // resident is bounded by this per slot. Measured (benches/pg_call, PG_CALL_PROFILE=own):
            // 63–86 µs → 32–52 µs per activity probe.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm)?;
        let mut linkers = BTreeMap::new();
        for domain in Domain::ALL {
            linkers.insert(domain, domain_linker(&engine, domain)?);
        }
        // A cache that cannot be opened costs start-up time, not safety: run without it.
        let cache = config.cache_dir.as_ref().and_then(|dir| {
            match cache::CompiledCache::open(dir, &engine) {
                Ok(cache) => Some(cache),
                Err(e) => {
                    tracing::warn!("{e}; compiling every component on this start");
                    None
                }
            }
        });
        let ticker = epoch::Ticker::start(engine.clone(), config.epoch_tick);
        Ok(Sandbox {
            engine,
            linkers,
            compiled: Mutex::new(HashMap::new()),
            cache,
            counters: Counters::default(),
            config,
            _ticker: ticker,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    pub fn stats(&self) -> SandboxStats {
        SandboxStats {
            compiles: self.counters.compiles.load(Ordering::Relaxed),
            cache_hits: self.counters.cache_hits.load(Ordering::Relaxed),
            cache_rejected: self.counters.cache_rejected.load(Ordering::Relaxed),
        }
    }

    /// Compile (or reuse by digest), check imports against `domain`'s world, pre-instantiate.
    /// `name` identifies the component in errors (its path in the runbook).
    pub fn load(
        &self,
        domain: Domain,
        name: &str,
        bytes: &[u8],
    ) -> Result<StepComponent, LoadError> {
        let digest = themis_core::digest(bytes);
        let component = self.compile(&digest, name, bytes)?;
        let imports: Vec<String> = component
            .component_type()
            .imports(&self.engine)
            .map(|(import, _)| import.to_owned())
            .collect();
        imports::check(domain, &imports).map_err(|refused| LoadError::ImportRefused {
            component: name.into(),
            refused,
        })?;
        let linker = self.linkers.get(&domain).ok_or_else(|| LoadError::Link {
            component: name.into(),
            message: format!("no linker for domain {domain}"),
        })?;
        let link_error = |e: wasmtime::Error| LoadError::Link {
            component: name.into(),
            message: format!("{e:#}"),
        };
        let instance_pre = linker.instantiate_pre(&component).map_err(link_error)?;
        let pre = RunbookHostPre::new(instance_pre).map_err(link_error)?;
        Ok(StepComponent {
            digest,
            domain,
            pre,
        })
    }

    fn compile(&self, digest: &str, name: &str, bytes: &[u8]) -> Result<Component, LoadError> {
        let mut compiled = self
            .compiled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(component) = compiled.get(digest) {
            return Ok(component.clone());
        }
        if let Some(cache) = &self.cache {
            match cache.get(&self.engine, digest) {
                cache::Lookup::Hit(component) => {
                    self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                    compiled.insert(digest.to_owned(), component.clone());
                    return Ok(component);
                }
                cache::Lookup::Rejected(why) => {
                    self.counters.cache_rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(component = name, digest, cache = %cache.path().display(), "compiled-component cache entry refused ({why}); compiling again");
                }
                cache::Lookup::Miss => {}
            }
        }
        self.counters.compiles.fetch_add(1, Ordering::Relaxed);
        let component = Component::new(&self.engine, bytes).map_err(|e| LoadError::Compile {
            component: name.into(),
            message: format!("{e:#}"),
        })?;
        if let Some(cache) = &self.cache
            && let Err(why) = cache.put(digest, &component)
        {
            tracing::warn!(component = name, digest, cache = %cache.path().display(), "cannot cache the compiled component: {why}");
        }
        compiled.insert(digest.to_owned(), component.clone());
        Ok(component)
    }

    /// A fresh store for one phase: the step's authority, this sandbox's memory limit and
    /// phase limits, and the instant its backstop fires.
    fn store(&self, env: PhaseEnv, hard_stop: Instant) -> Store<StepState> {
        let state = StepState::new(
            env,
            self.config.memory_limit,
            self.config.call_timeout,
            hard_stop,
            self.config.limits,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        // What a guest may hand the host in one call or one verdict (strings, lists) before
        // any check of ours cuts it: room for a verdict of 20 MiB, which is cut and kept, and
        // a quarter of wasmtime's default 128 MiB; more traps the step.
        store.set_hostcall_fuel(HOSTCALL_BYTES);
        store
    }

    /// Run one phase of a step in a fresh store. Never fails: a fault is part of the result.
    pub async fn call(
        &self,
        step: &StepComponent,
        phase: Phase,
        ctx: &PhaseContext,
        env: PhaseEnv,
        deadline: Duration,
    ) -> PhaseCall {
        let started = Instant::now();
        // Host calls do not tick the epoch; this backstop bounds a phase that waits in them:
        // the deadline, one whole call and room to record it. The calls are fitted inside it
        // (see `StepState::invoke`): a change starts only within the deadline, so what the
        // backstop cuts is never a change whose result would then go unrecorded.
        let backstop =
            deadline + self.config.call_timeout + state::record_margin(self.config.call_timeout);
        let mut store = self.store(env, started + backstop);
        let ticks = deadline
            .as_nanos()
            .div_ceil(self.config.epoch_tick.as_nanos().max(1));
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX).max(1));
        store.epoch_deadline_trap();

        let guest_ctx = ctx.to_guest();
        let outcome =
            tokio::time::timeout(backstop, run_phase(&mut store, step, phase, &guest_ctx)).await;
        let result = match outcome {
            Ok(Ok(verdict)) => Ok(verdict),
            Ok(Err(error)) => Err(classify(&error, store.data(), deadline)),
            Err(_) => Err(Fault::DeadlineExceeded {
                limit_ms: millis(backstop),
            }),
        };
        let state = store.into_data();
        PhaseCall {
            result,
            calls: state.calls,
            logs: state.logs,
            logs_dropped: state.budget.logs_dropped,
            logs_truncated: state.budget.logs_truncated,
            calls_refused: state.budget.denials,
            stderr: String::from_utf8_lossy(&state.stderr.contents()).into_owned(),
            duration: started.elapsed(),
        }
    }
}

/// A step instance kept alive after one call, for measuring what a live instance costs.
pub struct LiveInstance {
    _store: Store<StepState>,
}

impl Sandbox {
    /// Instantiate `step`, call its precondition once with an empty grant and no backend, and
    /// keep the instance.
    pub async fn instantiate_for_measurement(
        &self,
        step: &StepComponent,
    ) -> Result<LiveInstance, wasmtime::Error> {
        let grant = themis_core::grant::Grant {
            runbook_id: String::new(),
            step_id: String::new(),
            execution_id: String::new(),
            phase: Phase::Precondition,
            capabilities: Default::default(),
            scopes: Default::default(),
            destructive: Default::default(),
            approval: None,
        };
        let backends: Backends = themis_caps::provider::BackendProvider::backends(
            &themis_caps::provider::Unconfigured,
            "measurement",
            step.domain,
        )
        .map_err(wasmtime::Error::new)?;
        let env = PhaseEnv {
            grant,
            backends,
            journal: Arc::new(journal::MemoryJournal::default()),
            counts: Arc::default(),
        };
        let mut store = self.store(env, Instant::now() + self.config.call_timeout);
        store.set_epoch_deadline(u64::MAX / 2);
        let bindings = step.pre.instantiate_async(&mut store).await?;
        let ctx = types::StepContext {
            execution_id: String::new(),
            runbook_id: String::new(),
            runbook_version: String::new(),
            step_id: String::new(),
            alert: types::Alert {
                name: String::new(),
                fingerprint: String::new(),
                labels: Vec::new(),
                annotations: Vec::new(),
            },
            params: Vec::new(),
            outputs: Vec::new(),
            dry_run: false,
        };
        bindings
            .themis_runbook_step()
            .call_precondition(&mut store, &ctx)
            .await?;
        Ok(LiveInstance { _store: store })
    }
}

enum RunError {
    Instantiate(wasmtime::Error),
    Call(wasmtime::Error),
}

async fn run_phase(
    store: &mut Store<StepState>,
    step: &StepComponent,
    phase: Phase,
    ctx: &types::StepContext,
) -> Result<Verdict, RunError> {
    let bindings = step
        .pre
        .instantiate_async(&mut *store)
        .await
        .map_err(RunError::Instantiate)?;
    let guest = bindings.themis_runbook_step();
    let check = |c: types::CheckResult| {
        Verdict::Check(CheckResult {
            passed: c.passed,
            summary: c.summary,
            evidence: c.evidence.conv(),
            outputs: c.outputs.conv(),
        })
    };
    let verdict = match phase {
        Phase::Precondition => guest.call_precondition(&mut *store, ctx).await.map(check),
        Phase::Action => guest.call_action(&mut *store, ctx).await.map(|a| {
            Verdict::Action(ActionResult {
                ok: a.ok,
                summary: a.summary,
                evidence: a.evidence.conv(),
                outputs: a.outputs.conv(),
                branch: a.branch,
            })
        }),
        Phase::Postcondition => guest.call_postcondition(&mut *store, ctx).await.map(check),
        Phase::Rollback => guest.call_rollback(&mut *store, ctx).await.map(check),
    };
    verdict.map_err(RunError::Call)
}

fn classify(error: &RunError, state: &StepState, deadline: Duration) -> Fault {
    let (error, instantiating) = match error {
        RunError::Instantiate(e) => (e, true),
        RunError::Call(e) => (e, false),
    };
    if let Some(desired) = state.limiter.hit {
        return Fault::MemoryLimit {
            desired,
            limit: state.limiter.limit,
        };
    }
    if let Some(hit) = error.downcast_ref::<MemoryLimitHit>() {
        return Fault::MemoryLimit {
            desired: hit.desired,
            limit: hit.limit,
        };
    }
    if let Some(exceeded) = error.downcast_ref::<LimitExceeded>() {
        return Fault::LimitExceeded {
            message: fault_text(exceeded),
        };
    }
    if let Some(failed) = error.downcast_ref::<JournalFailed>() {
        return Fault::Journal {
            message: fault_text(failed),
        };
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return Fault::DeadlineExceeded {
            limit_ms: millis(deadline),
        };
    }
    let message = match error.downcast_ref::<Trap>() {
        Some(Trap::UnreachableCodeReached) => {
            "wasm `unreachable` executed (a Rust step panicked or aborted)".to_string()
        }
        // The cause first (wasmtime puts it last, after the backtrace), then the whole chain
        // with the backtrace, in what is left — bounded, as its frame names are the
        // component's to choose.
        _ => fault_text(&format_args!("{}; {error:#}", error.root_cause())),
    };
    if instantiating {
        Fault::Instantiate { message }
    } else {
        Fault::Trap { message }
    }
}

/// A fault's message as the host keeps it: at most [`limits::FAULT_MESSAGE_BYTES`].
fn fault_text(value: &dyn std::fmt::Display) -> String {
    limits::display_bounded(value, limits::FAULT_MESSAGE_BYTES)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A linker with the sandboxed WASI subset, the shared interfaces and `domain`'s capabilities —
/// and no other domain's: even a component that slipped past the import check could not link.
fn domain_linker(engine: &Engine, domain: Domain) -> Result<Linker<StepState>, wasmtime::Error> {
    let mut linker = Linker::<StepState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    types::add_to_linker::<_, HasSelf<StepState>>(&mut linker, |s| s)?;
    log::add_to_linker::<_, HasSelf<StepState>>(&mut linker, |s| s)?;
    metrics::add_to_linker::<_, HasSelf<StepState>>(&mut linker, |s| s)?;
    match domain {
        Domain::Kafka => kafka::add_to_linker::<_, HasSelf<StepState>>(&mut linker, |s| s)?,
        Domain::Kubernetes => k8s::add_to_linker::<_, HasSelf<StepState>>(&mut linker, |s| s)?,
        Domain::Postgres => postgres::add_to_linker::<_, HasSelf<StepState>>(&mut linker, |s| s)?,
    }
    Ok(linker)
}

/// Shared so executors and the CLI can hold one sandbox.
pub type SharedSandbox = Arc<Sandbox>;
