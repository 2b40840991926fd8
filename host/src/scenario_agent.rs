//! Agent scenarios: hand a scenario's alert to an agent, with the scenario's mocks as its world,
//! answer its escalation as the scenario's `human:` says, and check what happened.

use crate::agent::store::{BackendSpec, Store};
use crate::agent::{AlertOutcome, Runtime, RuntimeObserver};
use crate::audit::{AuditLog, Redactor};
use crate::escalation::{Channels, Escalation};
use crate::fsm::{AgentState, Event};
use crate::sandbox::Sandbox;
use crate::scenario::{AgentRun, Scenario, ScenarioError, ScenarioRun, check};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Collects what the runtime shows.
#[derive(Default)]
pub struct Recorder {
    pub states: Mutex<Vec<String>>,
    pub decisions: Mutex<Vec<String>>,
    pub escalations: Mutex<Vec<Escalation>>,
}

impl RuntimeObserver for Recorder {
    fn transition(&self, _agent: &str, _from: &AgentState, event: &Event, to: &AgentState) {
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
}

pub async fn run(
    sandbox: &Arc<Sandbox>,
    file: &Path,
    scenario: &Scenario,
    agent: PathBuf,
    allow_unsigned: bool,
) -> Result<ScenarioRun, ScenarioError> {
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
    let store = Store::open(state.path()).map_err(|e| invalid(e.to_string()))?;
    let recorder = Arc::new(Recorder::default());
    let runtime = Runtime::new(
        sandbox.clone(),
        &[base.join(&agent)],
        audit,
        store,
        Channels::default(),
        recorder.clone(),
        allow_unsigned,
    )
    .map_err(|e| invalid(e.to_string()))?;
    let backend = BackendSpec::Scenario {
        file: file.to_path_buf(),
        dry_run: scenario.dry_run,
    };
    let outcome = runtime
        .handle_alert(scenario.alert.to_alert(), backend)
        .await
        .map_err(|e| invalid(e.to_string()))?;
    let mut incident = match outcome {
        AlertOutcome::Handled(i) => i,
        AlertOutcome::Attached(i) => i,
        AlertOutcome::Unrouted => {
            return Err(invalid(format!(
                "no route of {} matches alert {}",
                agent.display(),
                scenario.alert.name
            )));
        }
    };
    if let Some(human) = &scenario.human {
        let pending = incident
            .proposal
            .as_ref()
            .map(|p| p.id.clone())
            .unwrap_or_else(|| incident.id.clone());
        let result = match (&human.approve, &human.reject, &human.adjust) {
            (Some(a), None, None) => runtime.approve(&pending, &a.who).await,
            (None, Some(r), None) => {
                runtime
                    .reject(&pending, &r.who, r.reason.as_deref().unwrap_or("rejected"))
                    .await
            }
            (None, None, Some(a)) => match &a.runbook {
                Some(rb) => runtime.adjust(&pending, &a.who, rb, &a.params).await,
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
    let name = runtime
        .agents()
        .first()
        .map(|a| a.def.name.clone())
        .unwrap_or_default();
    let final_state = runtime
        .store()
        .agent_state(&name)
        .map(|s| s.kind().to_string())
        .unwrap_or_default();
    let incident = runtime.store().incident(&incident.id).unwrap_or(incident);
    let status = serde_json::to_value(incident.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let audit_records = match crate::audit::verify::verify(&audit_path) {
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
    let reports = runtime.reports();
    let expect = scenario.expect.clone().unwrap_or_default();
    let executed: Vec<_> = reports
        .iter()
        .filter(|r| !r.execution_id.contains("-probe-"))
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
