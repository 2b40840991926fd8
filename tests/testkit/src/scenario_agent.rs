//! Agent scenarios: hand a scenario's alert to an agent, with the scenario's mocks as its world,
//! answer its escalation as the scenario's `human:` says, and check what happened.

use crate::mock::ScenarioMock;
use crate::provider::ScenarioProvider;
use crate::scenario::{AgentRun, Notification, Scenario, ScenarioError, ScenarioRun, check};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use themis_agent::audit::{AuditLog, Redactor};
use themis_agent::escalation::{Channels, Escalation};
use themis_agent::store::{Incident, IncidentStore, JsonStore};
use themis_agent::triage::Selection;
use themis_agent::{AlertOutcome, Runtime, RuntimeObserver, RuntimeOptions, RuntimeParts};
use themis_core::clock::Clock;
use themis_core::fsm::{AgentState, Event, StateKind};
use themis_core::identity::Identity;
use themis_sandbox::Sandbox;
use themis_sandbox::executor::ExecutionReport;

/// The decision an alert for another domain gets: no agent takes it.
pub const UNROUTED: &str = "unrouted";

/// Collects what the runtime shows.
#[derive(Default)]
pub struct Recorder {
    pub states: Mutex<Vec<String>>,
    pub decisions: Mutex<Vec<String>>,
    pub escalations: Mutex<Vec<Escalation>>,
    /// The first selection (the triage's; follow-ups come later).
    pub selection: Mutex<Option<Selection>>,
    /// When the agent first left `triaging` (the decision was made), and for which state.
    pub decided_at: Mutex<Option<Instant>>,
    pub decided_to: Mutex<Option<StateKind>>,
    /// Every execution, probes included, in order.
    pub reports: Mutex<Vec<ExecutionReport>>,
    /// The guard rails that held a run back, in order.
    pub rails: Mutex<Vec<String>>,
    /// Incidents seen in transitions, in order of first appearance (a timeline's re-fired alert
    /// may open another).
    pub incidents: Mutex<Vec<String>>,
}

impl RuntimeObserver for Recorder {
    fn selection(&self, _agent: &str, selection: &Selection) {
        if let Ok(mut s) = self.selection.lock()
            && s.is_none()
        {
            *s = Some(selection.clone());
        }
    }

    fn transition(&self, _agent: &str, from: &AgentState, event: &Event, to: &AgentState) {
        if from.kind() == StateKind::Triaging
            && to.kind() != StateKind::Triaging
            && let Ok(mut d) = self.decided_at.lock()
            && d.is_none()
        {
            *d = Some(Instant::now());
            if let Ok(mut k) = self.decided_to.lock() {
                *k = Some(to.kind());
            }
        }
        if let Some(id) = to.incident().filter(|i| !i.is_empty())
            && let Ok(mut list) = self.incidents.lock()
            && !list.iter().any(|i| i == id)
        {
            list.push(id.to_owned());
        }
        if let Ok(mut s) = self.states.lock() {
            let kind = to.kind().to_string();
            if s.last() != Some(&kind) {
                s.push(kind);
            }
        }
        if let (Event::RunbookChosen { runbook, .. }, Ok(mut d)) = (event, self.decisions.lock()) {
            d.push(runbook.clone());
        }
    }
    fn escalation(&self, e: &Escalation) {
        if let Ok(mut list) = self.escalations.lock() {
            list.push(e.clone());
        }
    }
    fn execution(&self, _agent: &str, report: &ExecutionReport) {
        if let Ok(mut list) = self.reports.lock() {
            list.push(report.clone());
        }
    }
    fn guard_blocked(&self, _agent: &str, blocked: &themis_core::guard::Blocked) {
        if let Ok(mut list) = self.rails.lock() {
            list.push(blocked.rail.as_str().to_owned());
        }
    }
}

impl Recorder {
    pub fn reports(&self) -> Vec<ExecutionReport> {
        self.reports.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// What an agent scenario did, before any expectation is checked.
pub struct Observation {
    pub runtime: Runtime,
    pub recorder: Arc<Recorder>,
    /// `None`: no route of the agent matched the alert.
    pub incident: Option<Incident>,
    /// From handing over the alert to the decision (leaving `triaging`).
    pub decision_latency: Option<Duration>,
    pub audit_path: PathBuf,
    _state: tempfile::TempDir,
}

/// Hand the scenario's alert to the agent, and (when `answer_human`) give the scenario's human
/// answer. `force_dry_run` records mutations instead of sending them, whatever the file says.
pub async fn observe(
    sandbox: &Arc<Sandbox>,
    file: &Path,
    scenario: &Scenario,
    agent: &Path,
    options: RuntimeOptions,
    force_dry_run: bool,
    answer_human: bool,
) -> Result<Observation, ScenarioError> {
    let invalid = |message: String| ScenarioError::Invalid {
        file: file.into(),
        message,
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let state =
        tempfile::tempdir().map_err(|e| invalid(format!("cannot make a state directory: {e}")))?;
    let audit_path = state.path().join("audit.jsonl");
    let audit = Arc::new(
        AuditLog::open(&audit_path, Redactor::default()).map_err(|e| invalid(e.to_string()))?,
    );
    let store = Arc::new(JsonStore::open(state.path()).map_err(|e| invalid(e.to_string()))?);
    let recorder = Arc::new(Recorder::default());
    // The scenario's own clock: its timeline walks a verification window in no time, and the
    // mocks' `series` and the guard rails see the same time as the host.
    let clock = Clock::manual(SystemTime::now());
    let options = RuntimeOptions {
        clock: clock.clone(),
        verify_tick: None,
        ..options
    };
    let mock = Arc::new(
        ScenarioMock::new(scenario.mocks.clone())
            .map_err(|e| invalid(e.to_string()))?
            .clocked(clock.clone()),
    );
    let provider = ScenarioProvider::new(mock, scenario.dry_run || force_dry_run);
    let runtime = Runtime::start(
        RuntimeParts {
            sandbox: sandbox.clone(),
            agent_files: vec![base.join(agent)],
            audit,
            store: store.clone(),
            channels: Channels::default(),
            observer: recorder.clone(),
            provider: Arc::new(provider),
        },
        options,
    )
    .await
    .map_err(|e| invalid(e.to_string()))?;
    let started = Instant::now();
    let outcome = runtime
        .handle_alert(scenario.alert.to_alert())
        .await
        .map_err(|e| invalid(e.to_string()))?;
    let decision_latency = recorder
        .decided_at
        .lock()
        .ok()
        .and_then(|d| *d)
        .map(|at| at.saturating_duration_since(started));
    let mut incident = match outcome {
        AlertOutcome::Handled(i) | AlertOutcome::Attached(i) => i,
        AlertOutcome::QueueFull { agent } => {
            return Err(invalid(format!("agent {agent}'s queue is full")));
        }
        AlertOutcome::Unrouted => {
            return Ok(Observation {
                runtime,
                recorder,
                incident: None,
                decision_latency,
                audit_path,
                _state: state,
            });
        }
    };
    // The rest of the notification's group, as the service hands it over: right after.
    for other in &scenario.group {
        let alert = other.to_alert();
        let done = if other.is_firing() {
            runtime.handle_alert(alert).await.map(|_| ())
        } else {
            runtime.handle_resolved(alert).await.map(|_| ())
        };
        done.map_err(|e| invalid(format!("notification: {e}")))?;
    }
    if answer_human && let Some(human) = &scenario.human {
        let pending = incident
            .proposal
            .as_ref()
            .map(|p| p.id.clone())
            .unwrap_or_else(|| incident.id.clone());
        let shown = incident.proposal.as_ref().map(|p| p.plan_digest.clone());
        let result = match (&human.approve, &human.reject, &human.adjust) {
            (Some(a), None, None) => {
                runtime
                    .approve(&pending, Identity::scenario(&a.who), shown)
                    .await
            }
            (None, Some(r), None) => {
                runtime
                    .reject(
                        &pending,
                        Identity::scenario(&r.who),
                        r.reason.as_deref().unwrap_or("rejected"),
                    )
                    .await
            }
            (None, None, Some(a)) => match &a.runbook {
                Some(rb) => {
                    runtime
                        .adjust(&pending, Identity::scenario(&a.who), rb, &a.params)
                        .await
                }
                None => return Err(invalid("human.adjust needs a runbook".into())),
            },
            _ => {
                return Err(invalid(
                    "human: give exactly one of approve, reject or adjust".into(),
                ));
            }
        };
        incident = result.map_err(|e| invalid(format!("human: {e}")))?;
    }
    let start = clock.now();
    let offsets = scenario.timeline_offsets().map_err(invalid)?;
    for (moment, after) in scenario.timeline.iter().zip(offsets) {
        clock.advance_to(start + after);
        let mut alert = scenario.alert.with_labels(&moment.labels);
        match moment.alert {
            Some(Notification::Firing) => {
                runtime
                    .handle_alert(alert)
                    .await
                    .map_err(|e| invalid(format!("timeline (after {}): {e}", moment.after)))?;
            }
            Some(Notification::Resolved) => {
                if let Some(source) = alert.source.as_mut() {
                    source.status = "resolved".into();
                }
                runtime
                    .handle_resolved(alert)
                    .await
                    .map_err(|e| invalid(format!("timeline (after {}): {e}", moment.after)))?;
            }
            None => {}
        }
        runtime
            .verify_due()
            .await
            .map_err(|e| invalid(format!("timeline (after {}): {e}", moment.after)))?;
    }
    let incident = store.get(&incident.id).await.unwrap_or(incident);
    Ok(Observation {
        runtime,
        recorder,
        incident: Some(incident),
        decision_latency,
        audit_path,
        _state: state,
    })
}

pub async fn run(
    sandbox: &Arc<Sandbox>,
    file: &Path,
    scenario: &Scenario,
    agent: PathBuf,
    options: RuntimeOptions,
) -> Result<ScenarioRun, ScenarioError> {
    let invalid = |message: String| ScenarioError::Invalid {
        file: file.into(),
        message,
    };
    let observed = observe(sandbox, file, scenario, &agent, options, false, true).await?;
    let expect = scenario.expect.clone().unwrap_or_default();
    let Some(incident) = observed.incident.clone() else {
        // An alert the agent does not own: only `decision: unrouted` can be expected of it.
        let mut failures = Vec::new();
        match expect.decision.as_deref() {
            Some(UNROUTED) => {}
            Some(other) => failures.push(format!("decision: expected {other}, got {UNROUTED}")),
            None => {
                return Err(invalid(format!(
                    "no route of {} matches alert {} (write `expect: {{ decision: unrouted }}` if that is the point)",
                    agent.display(),
                    scenario.alert.name()
                )));
            }
        }
        return Ok(ScenarioRun {
            scenario: scenario.name.clone(),
            file: file.into(),
            report: None,
            reports: Vec::new(),
            agent: None,
            would_do: Vec::new(),
            expectations_checked: 1,
            failures,
        });
    };
    let Observation {
        runtime,
        recorder,
        audit_path,
        ..
    } = observed;
    let view = runtime.states().into_iter().next();
    let name = view.as_ref().map(|v| v.name.clone()).unwrap_or_default();
    let final_state = view.map(|v| v.state.kind().to_string()).unwrap_or_default();
    let status = serde_json::to_value(incident.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let audit_records = match themis_agent::audit::verify::verify(&audit_path) {
        Ok(Ok(intact)) => intact.records,
        Ok(Err(broken)) => return Err(invalid(format!("the audit chain broke: {broken}"))),
        Err(e) => return Err(invalid(format!("cannot read the audit: {e}"))),
    };
    let escalations = recorder
        .escalations
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    let run = AgentRun {
        agent: name,
        incident: incident.id.clone(),
        decision: recorder
            .decisions
            .lock()
            .ok()
            .and_then(|d| d.first().cloned())
            .unwrap_or_else(|| "escalate".into()),
        proposals: escalations
            .iter()
            .filter_map(|e| e.proposal.as_ref().map(|p| p.plan.runbook_id.clone()))
            .collect(),
        states: recorder
            .states
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default(),
        final_state,
        incident_status: status,
        audit_records,
        escalations: escalations.iter().map(|e| e.reason.clone()).collect(),
    };
    let reports = recorder.reports();
    let executed: Vec<_> = reports
        .iter()
        .filter(|r| !is_probe(&runtime, r))
        .cloned()
        .collect();
    let mut checked = 0;
    let mut failures = Vec::new();
    // Call expectations look at every execution, probes included.
    let calls_only = crate::scenario::Expect {
        called: expect.called.clone(),
        not_called: expect.not_called.clone(),
        denied: expect.denied.clone(),
        ..Default::default()
    };
    let (c, f) = check(&calls_only, &reports);
    checked += c;
    failures.extend(f);
    let runbook_only = crate::scenario::Expect {
        outcome: expect.outcome.clone(),
        step: expect.step.clone(),
        path: expect.path.clone(),
        outputs: expect.outputs.clone(),
        phases: expect.phases.clone(),
        ..Default::default()
    };
    if runbook_only.outcome.is_some()
        || runbook_only.step.is_some()
        || runbook_only.path.is_some()
        || !runbook_only.outputs.is_empty()
        || runbook_only.phases.is_some()
    {
        let (c, f) = check(&runbook_only, &executed);
        checked += c;
        failures.extend(f);
    }
    let mut want = |label: &str, want: &Option<String>, got: &str| {
        if let Some(w) = want {
            checked += 1;
            if w != got {
                failures.push(format!("{label}: expected {w}, got {got}"));
            }
        }
    };
    want("decision", &expect.decision, &run.decision);
    want(
        "proposal",
        &expect.proposal,
        run.proposals.first().map(String::as_str).unwrap_or("none"),
    );
    want("final_state", &expect.final_state, &run.final_state);
    want(
        "incident_status",
        &expect.incident_status,
        &run.incident_status,
    );
    if !expect.proposal_params.is_empty() {
        checked += 1;
        let got: BTreeMap<String, String> = escalations
            .iter()
            .find_map(|e| e.proposal.as_ref())
            .map(|p| p.plan.params_as_text())
            .unwrap_or_default();
        if got != expect.proposal_params {
            failures.push(format!(
                "proposal_params: expected {:?}, got {got:?}",
                expect.proposal_params
            ));
        }
    }
    let texts: Vec<String> = escalations.iter().map(|e| e.to_text()).collect();
    for needle in &expect.escalation_says {
        checked += 1;
        if !texts.iter().any(|t| t.contains(needle.as_str())) {
            failures.push(format!(
                "escalation_says: no escalation shows {needle:?}; they read:\n{}",
                texts.join("\n")
            ));
        }
    }
    let verification = match &incident.verification {
        None => "none".to_owned(),
        Some(w) => w
            .verdict
            .as_ref()
            .map(|v| v.effect.to_string())
            .unwrap_or_else(|| "pending".into()),
    };
    if let Some(w) = &expect.verification {
        checked += 1;
        if *w != verification {
            failures.push(format!("verification: expected {w}, got {verification}"));
        }
    }
    let why = incident
        .verification
        .as_ref()
        .and_then(|w| w.verdict.as_ref())
        .map(|v| v.why.clone())
        .unwrap_or_default();
    if let Some(rails) = &expect.guard_blocked {
        checked += 1;
        let got = recorder.rails.lock().map(|r| r.clone()).unwrap_or_default();
        if *rails != got {
            failures.push(format!(
                "guard_blocked: expected {rails:?}, the rails held back {got:?}"
            ));
        }
    }
    if let Some(want) = &expect.last_incident_status {
        checked += 1;
        let last = recorder
            .incidents
            .lock()
            .ok()
            .and_then(|l| l.last().cloned())
            .unwrap_or_else(|| incident.id.clone());
        let got = match runtime.store().get(&last).await {
            Ok(i) => serde_json::to_value(i.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            Err(e) => format!("unreadable ({e})"),
        };
        if *want != got {
            failures.push(format!(
                "last_incident_status: expected {want}, got {got} ({last})"
            ));
        }
    }
    for needle in &expect.verification_says {
        checked += 1;
        if !why.contains(needle.as_str()) {
            failures.push(format!(
                "verification_says: the verdict does not say {needle:?}; it reads: {why:?}"
            ));
        }
    }
    if let Some(states) = &expect.states {
        checked += 1;
        if states != &run.states {
            failures.push(format!(
                "states: expected {states:?}, went through {:?}",
                run.states
            ));
        }
    }
    Ok(ScenarioRun {
        scenario: scenario.name.clone(),
        file: file.into(),
        report: executed.last().cloned(),
        reports,
        agent: Some(run),
        would_do: Vec::new(),
        expectations_checked: checked,
        failures,
    })
}

/// Was this execution one of the agent's probes?
fn is_probe(runtime: &Runtime, report: &ExecutionReport) -> bool {
    runtime
        .agents()
        .iter()
        .any(|a| a.probes.iter().any(|p| p.runbook.id == report.runbook_id))
}
