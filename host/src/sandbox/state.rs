//! The per-call store data: the guest's (empty) WASI context, its memory limiter, and the record
//! of every capability call and log line it made.

use crate::caps::Backends;
use crate::grant::Grant;
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// What became of one capability call.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum CallOutcome {
    /// The backend answered with a value.
    Ok { result: Value },
    /// The backend answered with an error (also: the call timed out).
    Error { error: Value },
    /// The host refused the call; the backend was never asked.
    Denied { reason: String },
}

/// One capability call, as the audit records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapabilityCall {
    pub capability: String,
    pub args: Value,
    #[serde(flatten)]
    pub outcome: CallOutcome,
    /// `would-do` when a dry run recorded a mutation instead of performing it.
    pub mode: CallMode,
    pub duration_us: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallMode {
    Performed,
    WouldDo,
    Refused,
}

/// A structured log line from the guest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogLine {
    pub level: String,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

/// Limits linear memory growth and remembers that the limit was hit, so a guest that dies of it
/// is reported as such whatever it does next.
pub struct MemoryLimiter {
    pub limit: usize,
    pub hit: Option<usize>,
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
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = Some(desired);
            return Err(wasmtime::Error::new(MemoryLimitHit {
                desired,
                limit: self.limit,
            }));
        }
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

pub struct StepState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    pub(super) grant: Grant,
    pub(super) backends: Backends,
    pub(super) call_timeout: Duration,
    pub(super) calls: Vec<CapabilityCall>,
    pub(super) logs: Vec<LogLine>,
    pub(super) stderr: MemoryOutputPipe,
}

impl StepState {
    pub(super) fn new(
        grant: Grant,
        backends: Backends,
        memory_limit: usize,
        call_timeout: Duration,
    ) -> Self {
        // Panic messages land here; nothing reaches the host's own stdio.
        let stderr = MemoryOutputPipe::new(16 * 1024);
        let wasi = WasiCtx::builder().stderr(stderr.clone()).build();
        StepState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: memory_limit,
                hit: None,
            },
            grant,
            backends,
            call_timeout,
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
