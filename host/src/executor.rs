//! The executor: walks a runbook's graph, each step precondition → action → postcondition, and
//! on a failed action or postcondition rolls back every step that acted, newest first.
//!
//! Rules:
//! - a failing precondition stops the walk before that step acts; earlier steps stay as their
//!   postconditions verified them (nothing is rolled back);
//! - an action that fails, faults (trap, deadline, memory) or takes an undeclared branch, and a
//!   postcondition that fails or faults, roll back every step that acted, this one included;
//! - a failing rollback stops the rollback walk and is reported as such: a human must look.

use crate::capability::Domain;
use crate::caps::Backends;
use crate::grant::{Approval, Grant};
use crate::graph::Target;
use crate::manifest::{ManifestError, Runbook};
use crate::sandbox::{
    CapabilityCall, Fault, LoadError, LogLine, Phase, Sandbox, StepComponent, Verdict,
};
use crate::trust::{self, Provenance, Refusal, Signer, TrustPolicy};
use crate::wit::types::{Alert, Pair, Param, StepContext, StepOutput};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A runbook whose bundle was verified, with every component checked and pre-instantiated.
#[derive(Debug, Clone)]
pub struct LoadedRunbook {
    pub runbook: Runbook,
    /// Aligned with `runbook.steps`.
    pub components: Vec<StepComponent>,
    pub signer: Signer,
}

#[derive(Debug, thiserror::Error)]
pub enum RunbookLoadError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("runbook bundle {}: refused: {reason}", bundle.display())]
    Refused { bundle: PathBuf, reason: Refusal },
    #[error("runbook `{runbook}` step `{step}`: {source}")]
    Component {
        runbook: String,
        step: String,
        source: LoadError,
    },
}

impl LoadedRunbook {
    /// Verify the bundle in `dir` against `trust`, then compile. Nothing of a refused bundle
    /// reaches the compiler.
    pub fn load(
        sandbox: &Sandbox,
        dir: &Path,
        trust: &TrustPolicy,
    ) -> Result<Self, RunbookLoadError> {
        let refused = |reason| RunbookLoadError::Refused {
            bundle: dir.to_path_buf(),
            reason,
        };
        let signature = trust::check_signature(dir, trust).map_err(refused)?;
        let runbook = Runbook::load(dir)?;
        let signer = trust::check_bundle(&runbook, signature.as_ref(), trust).map_err(refused)?;
        Self::compile(sandbox, runbook, signer)
    }

    /// Load without any signature check: for authoring tools (`themis runbook validate`), never
    /// for running.
    pub fn load_unverified(sandbox: &Sandbox, dir: &Path) -> Result<Self, RunbookLoadError> {
        Self::compile(sandbox, Runbook::load(dir)?, Signer::Unsigned)
    }

    fn compile(
        sandbox: &Sandbox,
        runbook: Runbook,
        signer: Signer,
    ) -> Result<Self, RunbookLoadError> {
        let components = runbook
            .steps
            .iter()
            .map(|step| {
                let name = runbook.dir.join(&step.component).display().to_string();
                sandbox
                    .load(runbook.domain, &name, &step.component_bytes)
                    .map_err(|source| RunbookLoadError::Component {
                        runbook: runbook.id.clone(),
                        step: step.id.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LoadedRunbook {
            runbook,
            components,
            signer,
        })
    }

    pub fn domain(&self) -> Domain {
        self.runbook.domain
    }

    /// Id, version, digest and signer: what every audit record about this runbook carries.
    pub fn provenance(&self) -> Provenance {
        Provenance {
            runbook: self.runbook.id.clone(),
            version: self.runbook.version.to_string(),
            digest: self.runbook.digest.clone(),
            signer: self.signer.to_string(),
        }
    }
}

/// Everything one execution needs besides the runbook.
#[derive(Clone)]
pub struct ExecutionRequest {
    pub execution_id: String,
    pub alert: Alert,
    pub params: Vec<Param>,
    pub backends: Backends,
    pub destructive: Arc<BTreeSet<String>>,
    pub approval: Option<Approval>,
}

/// How a phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseStatus {
    Passed,
    Failed,
    /// Trapped, hit its deadline or memory limit, or could not be instantiated.
    Fault,
    /// Returned, but the host refused the result (an undeclared branch label).
    Refused,
}

/// One phase of one step, as the audit and the CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseRecord {
    pub step: String,
    pub phase: Phase,
    pub status: PhaseStatus,
    pub summary: String,
    pub evidence: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    pub calls: Vec<CapabilityCall>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogLine>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    pub duration_us: u64,
}

/// How the execution ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum Outcome {
    /// Every step on the walked path passed all its phases.
    Succeeded,
    /// `step`'s precondition did not hold; it did not act.
    PreconditionFailed { step: String },
    /// `step` failed in `phase`; every step that acted was rolled back.
    RolledBack {
        step: String,
        phase: Phase,
        reason: String,
    },
    /// After `step` failed, the rollback of `rollback_step` failed too: the system may be
    /// half-changed and needs a human.
    RollbackFailed {
        step: String,
        rollback_step: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct ExecutionReport {
    pub execution_id: String,
    pub runbook_id: String,
    pub runbook_version: String,
    pub runbook_digest: String,
    pub dry_run: bool,
    pub outcome: Outcome,
    pub phases: Vec<PhaseRecord>,
}

impl ExecutionReport {
    /// Every capability call of the execution, in order.
    pub fn calls(&self) -> impl Iterator<Item = &CapabilityCall> {
        self.phases.iter().flat_map(|p| p.calls.iter())
    }
}

/// Told about every phase as the walk goes: the agent moves its state machine and audits here.
pub trait PhaseObserver: Send + Sync {
    fn phase_started(&self, _step: &str, _phase: Phase) {}
    fn phase_finished(&self, _record: &PhaseRecord) {}
}

/// Observes nothing.
pub struct Unobserved;
impl PhaseObserver for Unobserved {}

struct Walk<'a> {
    observer: &'a dyn PhaseObserver,
    sandbox: &'a Sandbox,
    loaded: &'a LoadedRunbook,
    request: &'a ExecutionRequest,
    outputs: Vec<StepOutput>,
    phases: Vec<PhaseRecord>,
}

/// Run `loaded` to its end. Faults in steps are results, not errors: this always reports.
pub async fn execute(
    sandbox: &Sandbox,
    loaded: &LoadedRunbook,
    request: &ExecutionRequest,
) -> ExecutionReport {
    execute_observed(sandbox, loaded, request, &Unobserved).await
}

/// [`execute`], telling `observer` about every phase.
pub async fn execute_observed(
    sandbox: &Sandbox,
    loaded: &LoadedRunbook,
    request: &ExecutionRequest,
    observer: &dyn PhaseObserver,
) -> ExecutionReport {
    let mut walk = Walk {
        observer,
        sandbox,
        loaded,
        request,
        outputs: Vec::new(),
        phases: Vec::new(),
    };
    let outcome = walk.run().await;
    let rb = &loaded.runbook;
    tracing::info!(
        target: "themis::executor",
        execution_id = %request.execution_id,
        runbook_id = %rb.id,
        runbook_version = %rb.version,
        runbook_digest = %rb.digest,
        outcome = ?outcome,
        "execution finished"
    );
    ExecutionReport {
        execution_id: request.execution_id.clone(),
        runbook_id: rb.id.clone(),
        runbook_version: rb.version.to_string(),
        runbook_digest: rb.digest.clone(),
        dry_run: request.backends.dry_run,
        outcome,
        phases: walk.phases,
    }
}

impl Walk<'_> {
    async fn run(&mut self) -> Outcome {
        let mut acted: Vec<usize> = Vec::new();
        let mut current = 0usize;
        loop {
            let step_id = self.loaded.runbook.steps[current].id.clone();

            let pre = self.phase(current, Phase::Precondition).await;
            if pre.status != PhaseStatus::Passed {
                return Outcome::PreconditionFailed { step: step_id };
            }

            acted.push(current);
            let action = self.phase(current, Phase::Action).await;
            let next = match action.status {
                PhaseStatus::Passed => {
                    let label = action.branch.clone().unwrap_or_default();
                    self.loaded.runbook.graph.next(current, &label).cloned()
                }
                _ => None,
            };
            let Some(next) = next else {
                let reason = action.summary.clone();
                return self.roll_back(&acted, step_id, Phase::Action, reason).await;
            };

            let post = self.phase(current, Phase::Postcondition).await;
            if post.status != PhaseStatus::Passed {
                let reason = post.summary.clone();
                return self
                    .roll_back(&acted, step_id, Phase::Postcondition, reason)
                    .await;
            }

            match next {
                Target::End => return Outcome::Succeeded,
                Target::Step(j) => current = j,
            }
        }
    }

    async fn roll_back(
        &mut self,
        acted: &[usize],
        step: String,
        phase: Phase,
        reason: String,
    ) -> Outcome {
        for &i in acted.iter().rev() {
            let record = self.phase(i, Phase::Rollback).await;
            if record.status != PhaseStatus::Passed {
                return Outcome::RollbackFailed {
                    step,
                    rollback_step: self.loaded.runbook.steps[i].id.clone(),
                    reason: record.summary.clone(),
                };
            }
        }
        Outcome::RolledBack {
            step,
            phase,
            reason,
        }
    }

    /// Call one phase, record it, keep its outputs if it passed. Returns the record.
    async fn phase(&mut self, index: usize, phase: Phase) -> PhaseRecord {
        let rb = &self.loaded.runbook;
        let step = &rb.steps[index];
        let ctx = StepContext {
            execution_id: self.request.execution_id.clone(),
            runbook_id: rb.id.clone(),
            runbook_version: rb.version.to_string(),
            step_id: step.id.clone(),
            alert: self.request.alert.clone(),
            params: self.request.params.clone(),
            outputs: self.outputs.clone(),
            dry_run: self.request.backends.dry_run,
        };
        let grant = Grant {
            runbook_id: rb.id.clone(),
            step_id: step.id.clone(),
            execution_id: self.request.execution_id.clone(),
            capabilities: step.capabilities.clone(),
            destructive: self.request.destructive.clone(),
            approval: self.request.approval.clone(),
        };
        self.observer.phase_started(&step.id, phase);
        let call = self
            .sandbox
            .call(
                &self.loaded.components[index],
                phase,
                &ctx,
                grant,
                self.request.backends.clone(),
                step.timeout,
            )
            .await;

        let mut record = PhaseRecord {
            step: step.id.clone(),
            phase,
            status: PhaseStatus::Fault,
            summary: String::new(),
            evidence: Vec::new(),
            outputs: Vec::new(),
            branch: None,
            fault: None,
            calls: call.calls,
            logs: call.logs,
            stderr: call.stderr,
            duration_us: u64::try_from(call.duration.as_micros()).unwrap_or(u64::MAX),
        };
        match call.result {
            Err(fault) => {
                record.summary = fault.to_string();
                record.fault = Some(fault);
            }
            Ok(Verdict::Check(check)) => {
                record.status = passed_or_failed(check.passed);
                record.summary = check.summary;
                record.evidence = pairs(check.evidence);
                record.outputs = pairs(check.outputs);
            }
            Ok(Verdict::Action(action)) => {
                record.status = passed_or_failed(action.ok);
                record.summary = action.summary;
                record.evidence = pairs(action.evidence);
                record.outputs = pairs(action.outputs);
                if action.ok && rb.graph.next(index, &action.branch).is_none() {
                    record.status = PhaseStatus::Refused;
                    record.summary = format!(
                        "the action took branch `{}`, which step `{}` does not declare (declared: {}); the host refuses undeclared branches",
                        action.branch,
                        step.id,
                        rb.graph.labels(index).join(", ")
                    );
                }
                record.branch = Some(action.branch);
            }
        }
        if record.status == PhaseStatus::Passed {
            self.outputs
                .extend(record.outputs.iter().map(|(key, value)| StepOutput {
                    step: step.id.clone(),
                    key: key.clone(),
                    value: value.clone(),
                }));
        }
        tracing::info!(
            target: "themis::executor",
            execution_id = %self.request.execution_id,
            runbook_id = %rb.id,
            step = %record.step,
            phase = %phase,
            status = ?record.status,
            summary = %record.summary,
            calls = record.calls.len(),
            "phase finished"
        );
        self.observer.phase_finished(&record);
        self.phases.push(record.clone());
        record
    }
}

fn passed_or_failed(ok: bool) -> PhaseStatus {
    if ok {
        PhaseStatus::Passed
    } else {
        PhaseStatus::Failed
    }
}

fn pairs(list: Vec<Pair>) -> Vec<(String, String)> {
    list.into_iter().map(|p| (p.key, p.value)).collect()
}
