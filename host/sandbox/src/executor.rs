//! The executor: walks a runbook's graph, each step precondition → action → postcondition, and
//! on a failed action or postcondition rolls back every step that acted, newest first.
//!
//! Rules:
//! - a failing precondition stops the walk before that step acts; earlier steps stay as their
//!   postconditions verified them (nothing is rolled back);
//! - an action that fails, faults (trap, deadline, memory) or takes an undeclared branch, and a
//!   postcondition that fails or faults, roll back every step that acted, this one included;
//! - a failing rollback stops the rollback walk and is reported as such: a human must look;
//! - an observer that refuses to go on (the audit cannot be written, the agent's state machine
//!   refuses the move) halts the walk at once: nothing more runs, not even rollbacks, and the
//!   outcome says which steps acted so a human can take over.
//!
//! A walk a host stop cut off can be resumed ([`execute_resumed`]) from where its record says it
//! stood: at a step's precondition (checks only look, so they run again), at a postcondition
//! after an action whose result is on the record, or after an action that may have acted but
//! whose result is not: then its postcondition runs first — holding, the action counts as done;
//! not holding, the action runs again only if the step is declared idempotent, and otherwise
//! every step that acted is rolled back. A non-idempotent action never runs twice.

use crate::journal::CallJournal;
use crate::limits::{EVIDENCE_BYTES, OUTPUT_BYTES, truncate};
use crate::loaded::LoadedRunbook;
use crate::{
    CallOutcome, CapabilityCall, ExecutionCounts, Fault, LogLine, PhaseContext, PhaseEnv, Sandbox,
    Verdict,
};
use async_trait::async_trait;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use themis_caps::Backends;
use themis_core::grant::{Approval, Grant};
use themis_core::graph::Target;
use themis_core::policy::DestructiveList;
use themis_core::types::{Alert, Pair, Param, Phase, StepOutput};

/// Everything one execution needs besides the runbook.
#[derive(Clone)]
pub struct ExecutionRequest {
    /// Unique per execution (`exe-…`): an approval is bound to exactly one.
    pub execution_id: String,
    pub alert: Alert,
    pub params: Vec<Param>,
    pub backends: Backends,
    pub destructive: Arc<DestructiveList>,
    pub approval: Option<Approval>,
    /// Where intents of mutating calls are written before the calls are made.
    pub journal: Arc<dyn CallJournal>,
    /// The time a postcondition's wait is measured by (a hand-moved one in scenarios).
    pub clock: themis_core::clock::Clock,
}

/// How a phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseStatus {
    Passed,
    Failed,
    /// Trapped, hit its deadline or memory limit, or could not be instantiated.
    Fault,
    /// Returned, but the host refused the result (an undeclared branch label, outputs over
    /// what the record keeps).
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
    /// Log lines over the phase's limits: not kept.
    #[serde(skip_serializing_if = "is_zero")]
    pub logs_dropped: u64,
    /// Log lines kept but cut to the line limit.
    #[serde(skip_serializing_if = "is_zero")]
    pub logs_truncated: u64,
    /// Capability calls the host refused in this phase.
    #[serde(skip_serializing_if = "is_zero")]
    pub calls_refused: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    pub duration_us: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    /// The host stopped the walk before `step`'s `phase` (the audit could not be written, or the
    /// agent's state machine refused the move). Nothing ran after; `acted` lists the steps whose
    /// action had run, for the human who takes over.
    Halted {
        step: String,
        phase: Phase,
        reason: String,
        acted: Vec<String>,
    },
}

impl Outcome {
    /// The outcome's status word, as scenario files and the audit name it.
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::PreconditionFailed { .. } => "precondition-failed",
            Outcome::RolledBack { .. } => "rolled-back",
            Outcome::RollbackFailed { .. } => "rollback-failed",
            Outcome::Halted { .. } => "halted",
        }
    }

    /// The step the outcome names, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            Outcome::Succeeded => None,
            Outcome::PreconditionFailed { step }
            | Outcome::RolledBack { step, .. }
            | Outcome::RollbackFailed { step, .. }
            | Outcome::Halted { step, .. } => Some(step),
        }
    }
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

/// Why the walk must stop now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Halt(pub String);

/// Told about every phase as the walk goes: the agent moves its state machine and audits here.
/// An error halts the walk before anything else runs.
#[async_trait]
pub trait PhaseObserver: Send {
    async fn phase_started(&mut self, _step: &str, _phase: Phase) -> Result<(), Halt> {
        Ok(())
    }
    async fn phase_finished(&mut self, _record: &PhaseRecord) -> Result<(), Halt> {
        Ok(())
    }
}

/// Where a cut-off walk resumes, as its record shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// At this step's precondition (nothing of the step acted).
    Precondition(usize),
    /// At this step's postcondition: its action passed and took `branch`.
    Postcondition { step: usize, branch: String },
    /// This step's action may have acted (an intent is on the record) and its result is not:
    /// its postcondition decides. `branch` is the step's only branch (a step with several
    /// cannot be resumed here: which one the action took is unknown).
    ActionUnknown {
        step: usize,
        branch: String,
        idempotent: bool,
    },
}

/// A resumed walk's starting point and what the cut-off part left: the steps whose action ran
/// and the outputs of the phases that passed.
#[derive(Debug, Clone)]
pub struct ResumeFrom {
    pub at: Resume,
    pub acted: Vec<usize>,
    pub outputs: Vec<StepOutput>,
    /// The calls the cut-off part made, per capability (its journalled intents): the
    /// manifest's `max_calls` counts them, so a resumed run never calls past its cap.
    pub calls: BTreeMap<String, u32>,
}

/// Observes nothing.
pub struct Unobserved;
impl PhaseObserver for Unobserved {}

struct Walk<'a> {
    observer: &'a mut dyn PhaseObserver,
    sandbox: &'a Sandbox,
    loaded: &'a LoadedRunbook,
    request: &'a ExecutionRequest,
    outputs: Vec<StepOutput>,
    phases: Vec<PhaseRecord>,
    /// What `phases` holds of calls' values, log lines and stderr so far, in bytes.
    retained: usize,
    counts: Arc<ExecutionCounts>,
    acted: Vec<usize>,
    /// When the run's budget (`timeout` in the manifest) is spent: no step starts a forward
    /// phase after it, and each forward phase's timeout is cut to what is left. A rollback is
    /// never cut: leaving a system half-changed is worse than a late run.
    deadline: std::time::SystemTime,
    /// The budget ended a phase or a wait before the clock says it is spent: a phase whose
    /// timeout was cut to what was left and ran out (the sandbox's epoch ticks may stop it a
    /// tick early), or a postcondition's wait that would have run past it.
    budget_ended: bool,
}

/// What one execution keeps in memory, in all, of its phases' call arguments and results, log
/// lines and stderr: each phase is bounded, but a runbook of many steps, each reading its
/// postcondition again and again, is not. Past this the report keeps which capability was
/// called and how it ended, not what it carried — the phase's audit record, written as it
/// finished, has what the audit keeps of it.
pub const RETAINED_BYTES: usize = 8 << 20;

/// Put in place of what a phase past [`RETAINED_BYTES`] is not kept with.
const SHED: &str =
    "(not kept in memory: over the execution's budget; see the phase's audit record)";

/// Run `loaded` to its end. Faults in steps are results, not errors: this always reports.
pub async fn execute(
    sandbox: &Sandbox,
    loaded: &LoadedRunbook,
    request: &ExecutionRequest,
) -> ExecutionReport {
    execute_observed(sandbox, loaded, request, &mut Unobserved).await
}

/// [`execute`], telling `observer` about every phase.
pub async fn execute_observed(
    sandbox: &Sandbox,
    loaded: &LoadedRunbook,
    request: &ExecutionRequest,
    observer: &mut dyn PhaseObserver,
) -> ExecutionReport {
    let from = ResumeFrom {
        at: Resume::Precondition(0),
        acted: Vec::new(),
        outputs: Vec::new(),
        calls: BTreeMap::new(),
    };
    execute_resumed(sandbox, loaded, request, observer, from).await
}

/// Resume a walk the host's stop cut off (see the module's rules), telling `observer` about
/// every phase as [`execute_observed`] does (which is this from the first precondition).
pub async fn execute_resumed(
    sandbox: &Sandbox,
    loaded: &LoadedRunbook,
    request: &ExecutionRequest,
    observer: &mut dyn PhaseObserver,
    from: ResumeFrom,
) -> ExecutionReport {
    let mut walk = Walk {
        observer,
        sandbox,
        loaded,
        request,
        outputs: from.outputs,
        phases: Vec::new(),
        retained: 0,
        counts: Arc::new(ExecutionCounts::starting_at(from.calls)),
        acted: from.acted,
        deadline: request.clock.now() + loaded.runbook.timeout,
        budget_ended: false,
    };
    let outcome = walk.run(from.at).await;
    report(walk, loaded, request, outcome)
}

fn report(
    walk: Walk<'_>,
    loaded: &LoadedRunbook,
    request: &ExecutionRequest,
    outcome: Outcome,
) -> ExecutionReport {
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
        dry_run: request.backends.is_dry_run(),
        outcome,
        phases: walk.phases,
    }
}

/// One phase, or the halt that stopped the walk before or after it.
type Step = Result<PhaseRecord, Outcome>;

impl Walk<'_> {
    async fn run(&mut self, from: Resume) -> Outcome {
        match self.walk(from).await {
            Ok(outcome) | Err(outcome) => outcome,
        }
    }

    async fn walk(&mut self, from: Resume) -> Result<Outcome, Outcome> {
        let mut from = Some(from);
        let mut current = match &from {
            Some(Resume::Precondition(i)) => *i,
            Some(Resume::Postcondition { step, .. } | Resume::ActionUnknown { step, .. }) => *step,
            None => 0,
        };
        loop {
            let step_id = self.loaded.runbook.steps[current].id.clone();
            if let Some(spent) = self.budget_spent() {
                let phase = match &from {
                    Some(Resume::Postcondition { .. } | Resume::ActionUnknown { .. }) => {
                        Phase::Postcondition
                    }
                    _ => Phase::Precondition,
                };
                return self.roll_back(step_id, phase, spent).await;
            }
            let next = match from.take() {
                Some(Resume::Postcondition { branch, .. }) => {
                    self.loaded.runbook.graph.next(current, &branch).cloned()
                }
                Some(Resume::ActionUnknown {
                    branch, idempotent, ..
                }) => {
                    // Did the cut-off action do its work? Its postcondition (which only looks)
                    // says so before anything acts again.
                    if !self.acted.contains(&current) {
                        self.acted.push(current);
                    }
                    let post = self.postcondition(current).await?;
                    if post.status == PhaseStatus::Passed {
                        match self.loaded.runbook.graph.next(current, &branch).cloned() {
                            Some(Target::End) => return Ok(Outcome::Succeeded),
                            Some(Target::Step(j)) => {
                                current = j;
                                continue;
                            }
                            None => {
                                let reason = format!("`{branch}` is not a branch of the step");
                                return self.roll_back(step_id, Phase::Action, reason).await;
                            }
                        }
                    }
                    if !idempotent {
                        let reason = format!(
                            "the host stopped during this action and its postcondition does not hold ({}); the step is not idempotent, so it is not run again",
                            post.summary
                        );
                        return self.roll_back(step_id, Phase::Action, reason).await;
                    }
                    if let Some(spent) = self.budget_spent() {
                        return self.roll_back(step_id, Phase::Action, spent).await;
                    }
                    self.act(current).await?
                }
                None | Some(Resume::Precondition(_)) => {
                    let pre = self.phase(current, Phase::Precondition).await?;
                    if pre.status != PhaseStatus::Passed {
                        // Cut off by the run's budget, not judged by the step: what acted
                        // before it is undone.
                        if let Some(spent) = self.budget_spent() {
                            let reason = format!("{spent}: {}", pre.summary);
                            return self.roll_back(step_id, Phase::Precondition, reason).await;
                        }
                        return Ok(Outcome::PreconditionFailed { step: step_id });
                    }
                    if let Some(spent) = self.budget_spent() {
                        return self.roll_back(step_id, Phase::Action, spent).await;
                    }
                    self.act(current).await?
                }
            };
            let Some(next) = next else {
                let reason = self
                    .phases
                    .iter()
                    .rev()
                    .find(|p| p.step == step_id && p.phase == Phase::Action)
                    .map(|p| p.summary.clone())
                    .unwrap_or_else(|| "the action did not pass".into());
                let reason = self.with_budget(reason);
                return self.roll_back(step_id, Phase::Action, reason).await;
            };

            if let Some(spent) = self.budget_spent() {
                return self.roll_back(step_id, Phase::Postcondition, spent).await;
            }
            let post = self.postcondition(current).await?;
            if post.status != PhaseStatus::Passed {
                let reason = self.with_budget(post.summary.clone());
                return self.roll_back(step_id, Phase::Postcondition, reason).await;
            }

            match next {
                Target::End => return Ok(Outcome::Succeeded),
                Target::Step(j) => current = j,
            }
        }
    }

    /// A step's postcondition, read again while it does not hold for as long as the step's
    /// `postcondition_wait` allows (each reading a phase of its own, on the record; 2 minutes
    /// is at most 16 readings): what the
    /// action set going converges (a rollout), and is judged when it has, or when the wait is up.
    /// A dry run reads it once: nothing was done, so nothing converges.
    async fn postcondition(&mut self, current: usize) -> Step {
        let wait = self.loaded.runbook.steps[current]
            .postcondition_wait
            .filter(|_| !self.request.backends.is_dry_run());
        let clock = self.request.clock.clone();
        let started = clock.now();
        // A quarter second first, doubling up to ten seconds: what converges at once is seen at
        // once, a slow rollout is not read a hundred times.
        let mut every = Duration::from_millis(250);
        loop {
            let post = self.phase(current, Phase::Postcondition).await?;
            let Some(wait) = wait else {
                return Ok(post);
            };
            every = every.min(Duration::from_secs(10));
            let waited = clock.now().duration_since(started).unwrap_or_default();
            // The run's budget ends the wait too: the reading that does not hold stands.
            let past_budget = clock.now() + every >= self.deadline;
            if post.status == PhaseStatus::Passed || waited + every > wait {
                return Ok(post);
            }
            if past_budget {
                self.budget_ended = true;
                return Ok(post);
            }
            if clock.is_manual() {
                clock.advance(every);
            } else {
                tokio::time::sleep(every).await;
            }
            every *= 2;
        }
    }

    /// Run a step's action; it counts as having acted once it ran, whatever it returned. The
    /// branch it took leads on, or `None` when it failed or took no declared branch.
    async fn act(&mut self, current: usize) -> Result<Option<Target>, Outcome> {
        let action = self.phase(current, Phase::Action).await?;
        if !self.acted.contains(&current) {
            self.acted.push(current);
        }
        Ok(match action.status {
            PhaseStatus::Passed => {
                let label = action.branch.clone().unwrap_or_default();
                self.loaded.runbook.graph.next(current, &label).cloned()
            }
            _ => None,
        })
    }

    async fn roll_back(
        &mut self,
        step: String,
        phase: Phase,
        reason: String,
    ) -> Result<Outcome, Outcome> {
        let acted = self.acted.clone();
        for &i in acted.iter().rev() {
            let record = self.phase(i, Phase::Rollback).await?;
            if record.status != PhaseStatus::Passed {
                return Ok(Outcome::RollbackFailed {
                    step,
                    rollback_step: self.loaded.runbook.steps[i].id.clone(),
                    reason: record.summary.clone(),
                });
            }
        }
        Ok(Outcome::RolledBack {
            step,
            phase,
            reason,
        })
    }

    /// Why no forward phase may start: the run's budget is spent.
    fn budget_spent(&self) -> Option<String> {
        let now = self.request.clock.now();
        (self.budget_ended || now >= self.deadline).then(|| {
            format!(
                "the run's time budget of {} is spent (the manifest's `timeout`); no further step starts, and what acted is rolled back",
                humantime::format_duration(self.loaded.runbook.timeout)
            )
        })
    }

    /// A phase's failure as the rollback reports it: led by the spent budget when that is what
    /// cut it short.
    fn with_budget(&self, reason: String) -> String {
        match self.budget_spent() {
            Some(spent) => format!("{spent}: {reason}"),
            None => reason,
        }
    }

    /// A forward phase's timeout: its step's, cut to what is left of the run's budget. A
    /// rollback gets its step's whole timeout.
    fn phase_timeout(&self, index: usize, phase: Phase) -> Duration {
        let timeout = self.loaded.runbook.steps[index].timeout;
        if phase == Phase::Rollback {
            return timeout;
        }
        let left = self
            .deadline
            .duration_since(self.request.clock.now())
            .unwrap_or_default();
        timeout.min(left.max(Duration::from_millis(1)))
    }

    fn halted(&self, index: usize, phase: Phase, halt: Halt) -> Outcome {
        Outcome::Halted {
            step: self.loaded.runbook.steps[index].id.clone(),
            phase,
            reason: halt.0,
            acted: self
                .acted
                .iter()
                .map(|&i| self.loaded.runbook.steps[i].id.clone())
                .collect(),
        }
    }

    /// Call one phase, record it, keep its outputs if it passed. Returns the record, or the
    /// halted outcome when the observer refused to go on.
    async fn phase(&mut self, index: usize, phase: Phase) -> Step {
        let rb = &self.loaded.runbook;
        let step = &rb.steps[index];
        let dry_run = self.request.backends.is_dry_run();
        let ctx = PhaseContext {
            execution_id: self.request.execution_id.clone(),
            runbook_id: rb.id.clone(),
            runbook_version: rb.version.to_string(),
            step_id: step.id.clone(),
            alert: self.request.alert.clone(),
            params: self.request.params.clone(),
            outputs: self.outputs.clone(),
            dry_run,
        };
        let grant = Grant {
            runbook_id: rb.id.clone(),
            step_id: step.id.clone(),
            execution_id: self.request.execution_id.clone(),
            phase,
            capabilities: step.capabilities.clone(),
            scopes: step.scopes(&self.request.params),
            destructive: self.request.destructive.clone(),
            approval: self.request.approval.clone(),
        };
        if let Err(halt) = self.observer.phase_started(&step.id, phase).await {
            return Err(self.halted(index, phase, halt));
        }
        let env = PhaseEnv {
            grant,
            backends: self.request.backends.clone(),
            journal: self.request.journal.clone(),
            counts: self.counts.clone(),
        };
        let timeout = self.phase_timeout(index, phase);
        let call = self
            .sandbox
            .call(&self.loaded.components[index], phase, &ctx, env, timeout)
            .await;
        if timeout < step.timeout && matches!(call.result, Err(Fault::DeadlineExceeded { .. })) {
            self.budget_ended = true;
        }
        let limits = self.sandbox.config().limits;
        let text = |s: String| truncate(s, limits.verdict_text_bytes).0;
        let pairs = |list: Vec<Pair>| -> Vec<(String, String)> {
            list.into_iter()
                .take(limits.verdict_pairs)
                .map(|p| (text(p.key), text(p.value)))
                .collect()
        };

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
            logs_dropped: call.logs_dropped,
            logs_truncated: call.logs_truncated,
            calls_refused: call.calls_refused,
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
                record.summary = text(check.summary);
                record.evidence = pairs(check.evidence);
                record.outputs = pairs(check.outputs);
            }
            Ok(Verdict::Action(action)) => {
                record.status = passed_or_failed(action.ok);
                record.summary = text(action.summary);
                record.evidence = pairs(action.evidence);
                record.outputs = pairs(action.outputs);
                let branch = text(action.branch);
                if action.ok && rb.graph.next(index, &branch).is_none() {
                    record.status = PhaseStatus::Refused;
                    record.summary = format!(
                        "the action took branch `{}`, which step `{}` does not declare (declared: {}); the host refuses undeclared branches",
                        branch,
                        step.id,
                        rb.graph.labels(index).join(", ")
                    );
                }
                record.branch = Some(branch);
            }
        }
        record.evidence = within_evidence_budget(std::mem::take(&mut record.evidence));
        // As the record will hold them: JSON, where a control character takes six bytes.
        let json_len = |s: &str| serde_json::to_string(s).map_or(s.len() * 6, |j| j.len());
        let output_bytes: usize = record
            .outputs
            .iter()
            .map(|(k, v)| json_len(k) + json_len(v))
            .sum();
        if output_bytes > OUTPUT_BYTES && phase == Phase::Rollback {
            // A rollback's outputs lead nowhere: dropped, never a reason to stop undoing.
            record.outputs.clear();
        } else if output_bytes > OUTPUT_BYTES {
            record.status = PhaseStatus::Refused;
            record.summary = format!(
                "step `{}` returned {} outputs of {output_bytes} bytes in all, over the host's {OUTPUT_BYTES}: outputs are kept on the record a resume and a follow-up read back, so the host refuses what it cannot keep; return fewer or shorter outputs",
                step.id,
                record.outputs.len()
            );
            record.outputs.clear();
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
        let mut kept = record.clone();
        let bytes = retained_bytes(&kept);
        if self.retained + bytes > RETAINED_BYTES {
            shed(&mut kept);
        } else {
            self.retained += bytes;
        }
        self.phases.push(kept);
        if let Err(halt) = self.observer.phase_finished(&record).await {
            return Err(self.halted(index, phase, halt));
        }
        Ok(record)
    }
}

fn passed_or_failed(ok: bool) -> PhaseStatus {
    if ok {
        PhaseStatus::Passed
    } else {
        PhaseStatus::Failed
    }
}

/// `evidence` cut to [`EVIDENCE_BYTES`] in all, the cut said in a last pair.
fn within_evidence_budget(evidence: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut used = 0;
    let total = evidence.len();
    let mut kept = Vec::with_capacity(total);
    for (key, value) in evidence {
        used += key.len() + value.len();
        if used > EVIDENCE_BYTES {
            break;
        }
        kept.push((key, value));
    }
    if kept.len() < total {
        let cut = total - kept.len();
        kept.push((
            "…".into(),
            format!("{cut} more evidence pairs cut (over {EVIDENCE_BYTES} bytes in all)"),
        ));
    }
    kept
}

/// The bytes of `record` that [`shed`] would let go of.
fn retained_bytes(record: &PhaseRecord) -> usize {
    let value = |v: &serde_json::Value| serde_json::to_vec(v).map_or(0, |b| b.len());
    let calls: usize = record
        .calls
        .iter()
        .map(|c| {
            value(&c.args)
                + match &c.outcome {
                    CallOutcome::Ok { result } => value(result),
                    CallOutcome::Error { error } => value(error),
                    CallOutcome::Denied { reason } => reason.len(),
                }
        })
        .sum();
    let logs: usize = record
        .logs
        .iter()
        .map(|l| {
            l.message.len()
                + l.fields
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
        })
        .sum();
    calls + logs + record.stderr.len()
}

/// `record` without its calls' values, its log lines and its stderr.
fn shed(record: &mut PhaseRecord) {
    let gone = || serde_json::Value::String(SHED.into());
    for call in &mut record.calls {
        // What a mutation was asked to do stays: a dry run's report is its list of would-dos.
        let mutation = themis_core::capability::lookup(&call.capability)
            .is_some_and(|c| c.effect == themis_core::capability::Effect::Mutate);
        if !mutation {
            call.args = gone();
        }
        match &mut call.outcome {
            CallOutcome::Ok { result } => *result = gone(),
            CallOutcome::Error { error } => *error = gone(),
            CallOutcome::Denied { .. } => {}
        }
    }
    record.logs_dropped += u64::try_from(record.logs.len()).unwrap_or(u64::MAX);
    record.logs.clear();
    if !record.stderr.is_empty() {
        record.stderr = SHED.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CallMode;

    #[test]
    fn a_phase_past_the_executions_budget_keeps_its_calls_but_not_their_values() {
        let big = serde_json::Value::String("x".repeat(16 << 10));
        let mut record = PhaseRecord {
            step: "s".into(),
            phase: Phase::Postcondition,
            status: PhaseStatus::Passed,
            summary: "held".into(),
            evidence: vec![],
            outputs: vec![("k".into(), "v".into())],
            branch: None,
            fault: None,
            calls: vec![CapabilityCall {
                capability: "metrics.query".into(),
                args: big.clone(),
                outcome: CallOutcome::Ok { result: big },
                mode: CallMode::Performed,
                duration_us: 1,
            }],
            logs: vec![LogLine {
                level: "info".into(),
                message: "y".repeat(100),
                fields: vec![],
            }],
            logs_dropped: 0,
            logs_truncated: 0,
            calls_refused: 0,
            stderr: "z".into(),
            duration_us: 1,
        };
        assert!(retained_bytes(&record) > 32 << 10);
        shed(&mut record);
        // What the walk and its report read stays: the call, its capability, how it ended,
        // the outputs; what it carried goes.
        assert_eq!(record.calls.len(), 1);
        assert_eq!(record.calls[0].capability, "metrics.query");
        assert!(matches!(&record.calls[0].outcome, CallOutcome::Ok { result } if result == SHED));
        assert_eq!(record.outputs, vec![("k".to_owned(), "v".to_owned())]);
        assert!(record.logs.is_empty());
        assert_eq!(record.logs_dropped, 1);
        assert!(retained_bytes(&record) < 1024);
    }
}
