//! The per-call store data: the guest's (empty) WASI context, its memory limiter, its authority
//! (grant, backends, journal) and the bounded record of every capability call and log line it
//! made.

use crate::journal::CallJournal;
use crate::limits::{Budget, PhaseLimits};
use crate::record::{CapabilityCall, LogLine};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use themis_caps::Backends;
use themis_core::grant::Grant;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Limits linear memory growth and remembers that the limit was hit, so a guest that dies of it
/// is reported as such whatever it does next.
pub struct MemoryLimiter {
    pub limit: usize,
    pub hit: Option<usize>,
    /// Bytes of linear memory the step's memories hold together.
    pub total: usize,
}

/// The error a refused `memory.grow` traps with.
#[derive(Debug, thiserror::Error)]
#[error(
    "memory limit hit: the step asked for {desired} bytes of linear memory, the limit is {limit}"
)]
pub struct MemoryLimitHit {
    pub desired: usize,
    pub limit: usize,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The limit is the step's, over all its memories: a component may define several.
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if desired > self.limit || total > self.limit {
            self.hit = Some(total.max(desired));
            return Err(wasmtime::Error::new(MemoryLimitHit {
                desired: total.max(desired),
                limit: self.limit,
            }));
        }
        self.total = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a step needs a handful. Refuse absurd growth.
        Ok(desired <= 100_000)
    }
}

/// Calls per capability over one whole execution (all steps and phases): the manifest's
/// `max_calls` counts against it.
#[derive(Debug, Default)]
pub struct ExecutionCounts(Mutex<BTreeMap<String, u32>>);

impl ExecutionCounts {
    /// The counts a resumed execution starts from: the calls its cut-off part made.
    pub fn starting_at(calls: BTreeMap<String, u32>) -> ExecutionCounts {
        ExecutionCounts(Mutex::new(calls))
    }

    pub(crate) fn get(&self, capability: &str) -> u32 {
        self.0
            .lock()
            .map(|m| m.get(capability).copied().unwrap_or(0))
            .unwrap_or(u32::MAX)
    }

    pub(crate) fn bump(&self, capability: &str) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(capability.to_owned()).or_insert(0) += 1;
        }
    }
}

/// Room kept after a phase's last possible call for recording its result: a quarter of the
/// call timeout, at most a second (an audit append takes milliseconds).
pub(crate) fn record_margin(call_timeout: Duration) -> Duration {
    (call_timeout / 4).min(Duration::from_secs(1))
}

/// The authority and bookkeeping one phase call runs with.
pub struct PhaseEnv {
    pub grant: Grant,
    pub backends: Backends,
    pub journal: Arc<dyn CallJournal>,
    pub counts: Arc<ExecutionCounts>,
}

pub struct StepState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) env: PhaseEnv,
    pub(crate) call_timeout: Duration,
    /// When the phase's backstop drops whatever is in flight: calls are fitted inside it.
    pub(crate) hard_stop: Instant,
    pub(crate) budget: Budget,
    pub(crate) calls: Vec<CapabilityCall>,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) stderr: MemoryOutputPipe,
}

impl StepState {
    pub(crate) fn new(
        env: PhaseEnv,
        memory_limit: usize,
        call_timeout: Duration,
        hard_stop: Instant,
        limits: PhaseLimits,
    ) -> Self {
        // Panic messages land here; nothing reaches the host's own stdio.
        let stderr = MemoryOutputPipe::new(limits.stderr_bytes);
        let wasi = WasiCtx::builder().stderr(stderr.clone()).build();
        StepState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: memory_limit,
                hit: None,
                total: 0,
            },
            env,
            call_timeout,
            hard_stop,
            budget: Budget::new(limits),
            calls: Vec::new(),
            logs: Vec::new(),
            stderr,
        }
    }
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
