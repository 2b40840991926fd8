//! Scenario files: one runbook run against mocked capabilities, with what must come of it.
//! They drive `themis run --scenario` and the data-driven test suite alike.
//!
//! ```yaml
//! name: broker with a long GC pause
//! runbook: ../../runbooks/kafka/check-broker-health   # relative to this file
//! trust: [../../keys/demo/kafka-team.pub]   # publisher keys the runbook must be signed by
//! alert:
//!   name: KafkaConsumerLag
//!   labels: { topic: orders, severity: critical }
//! params: { gc_pause_threshold_ms: 1000 }
//! dry_run: false          # true: mutations are recorded, not sent to the mocks
//! approved_by: alice      # optional: a human approval bound to this execution
//! destructive: [...]      # optional: capabilities added to the catalogue's destructive list
//! mocks: { ... }          # see caps::scenario
//! expect:
//!   outcome: rolled-back  # succeeded | precondition-failed | rolled-back | rollback-failed
//!   step: gc-pause        # the step the outcome names
//!   path: [brokers-up, gc-pause]       # steps whose action ran, in order
//!   called: [metrics.query]            # capabilities that must be called (and not denied)
//!   not_called: [kafka.broker-restart] # capabilities that must never reach a backend
//!   denied: []                         # capabilities the host must refuse
//!   outputs: { gc-pause.broker: "1" }  # step.key: value
//!   phases: ["gc-pause action passed"]  # every phase in order: step phase status (a
//!                                       # postcondition read again while it converges: once)
//! ```
//!
//! Agent scenarios (`agent:` instead of `runbook:`) follow the incident from triage to the end,
//! and may play what happens after on a clock of their own:
//!
//! ```yaml
//! timeline:                              # after the alert (and the human's answer), in order
//!   - { after: 1m, alert: resolved }     # the alert's source says it stopped firing
//!   - { after: 2m30s, alert: firing }    # ... and that it fires again
//!   - { after: 15m }                     # time passes; the agent looks at its watches
//!   - { after: 20m, alert: firing, labels: { pod: b } }   # another alert of the family
//! expect:
//!   verification: ineffective            # effective | ineffective | unknown | pending | none
//!   verification_says: ["fired again"]
//!   guard_blocked: [cooldown]            # the rails that held runs back, in order
//!   last_incident_status: pending-approval   # the newest incident a re-fire opened
//! ```
//!
//! `notification: FILE.json` (instead of `alert:`) takes an Alertmanager webhook payload as it was
//! sent: its first firing alert is the scenario's, the rest of the group is handed over after it.
//!
//! A `resolved`/`firing` notification needs an alert from a source that reports them: paste it
//! as Alertmanager sends it (`status:`, `startsAt:`, `alertname` among the labels). Mocked
//! metrics may be `series:` over the same clock (see [`crate::mock`]).

use crate::mock::{Mocks, ScenarioMock};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use themis_caps::Backends;
use themis_caps::dry_run::WouldDo;
use themis_core::grant::Approval;
use themis_core::identity::Identity;
use themis_core::manifest::bind_params;
use themis_core::policy::DestructiveList;
use themis_core::trust::TrustPolicy;
use themis_core::types::{Alert, AlertSource, Pair, Phase};
use themis_sandbox::executor::{self, ExecutionReport, ExecutionRequest, Outcome, PhaseStatus};
use themis_sandbox::journal::MemoryJournal;
use themis_sandbox::loaded::{LoadedRunbook, RunbookLoadError};
use themis_sandbox::{CallMode, Sandbox};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Run this one runbook (relative to the scenario file)…
    #[serde(default)]
    pub runbook: Option<PathBuf>,
    /// …or hand the alert to this agent (its definition file), from triage to the end.
    #[serde(default)]
    pub agent: Option<PathBuf>,
    /// Runbook scenarios: the publisher keys (`.pub` files or folders, relative to this file)
    /// the runbook must be signed by. Agent scenarios use the agent's `trust:`.
    #[serde(default)]
    pub trust: Vec<PathBuf>,
    /// The alert (required unless `notification:` gives it).
    #[serde(default)]
    pub alert: AlertSpec,
    /// Agent scenarios: an Alertmanager webhook payload (version 4) as it was sent, relative to
    /// this file: its first firing alert is the scenario's alert, the others of the group are
    /// handed over right after it, as the service would.
    #[serde(default)]
    pub notification: Option<PathBuf>,
    /// The rest of the notification's group, in order (from `notification:`).
    #[serde(skip)]
    pub group: Vec<AlertSpec>,
    /// Agent scenarios: what the human answers when the agent escalates.
    #[serde(default)]
    pub human: Option<Human>,
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub approved_by: Option<String>,
    #[serde(default)]
    pub destructive: Option<Vec<String>>,
    #[serde(default)]
    pub mocks: Mocks,
    /// Agent scenarios: what happens after the alert was handled (and the human answered), in
    /// time order — the source says the alert resolved or fires again, or time just passes.
    /// After each moment the agent looks at the fixes it is verifying.
    #[serde(default)]
    pub timeline: Vec<Moment>,
    #[serde(default)]
    pub expect: Option<Expect>,
}

/// One moment of a scenario's timeline: `{ after: 90s, alert: resolved }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Moment {
    /// Since the alert arrived (a duration: 30s, 2m, 10m).
    pub after: String,
    /// The alert's source sends it again, `firing` or `resolved`; absent: time only passes.
    #[serde(default)]
    pub alert: Option<Notification>,
    /// Labels added to (or changed on) the scenario's alert for this notification: another
    /// alert of the same family, with a fingerprint of its own (another replica, another pod).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Notification {
    Firing,
    Resolved,
}

/// A human's answer to an escalation, for agent scenarios: exactly one of
/// `approve: { as }`, `reject: { as, reason }`, `adjust: { as, runbook, params }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Human {
    #[serde(default)]
    pub approve: Option<HumanAnswer>,
    #[serde(default)]
    pub reject: Option<HumanAnswer>,
    #[serde(default)]
    pub adjust: Option<HumanAnswer>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HumanAnswer {
    #[serde(rename = "as")]
    pub who: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub runbook: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// The scenario's alert: Themis' own form (`name`, `labels`, `annotations`), or one alert of an
/// Alertmanager webhook payload pasted as is (`labels` with `alertname`, `status`, `startsAt`,
/// `endsAt`, `generatorURL`, `fingerprint`), so a team can replay a real notification.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSpec {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default, rename = "startsAt")]
    starts_at: Option<String>,
    #[serde(default, rename = "endsAt")]
    ends_at: Option<String>,
    #[serde(default, rename = "generatorURL")]
    generator_url: Option<String>,
}

impl AlertSpec {
    /// `name`, or the `alertname` label: the alert's name and that label are one thing.
    pub fn name(&self) -> &str {
        self.name
            .as_deref()
            .or_else(|| self.labels.get("alertname").map(String::as_str))
            .unwrap_or_default()
    }

    /// Is there a name, and do a given name and `alertname` agree?
    pub fn check(&self) -> Result<(), String> {
        match (&self.name, self.labels.get("alertname")) {
            (None, None) => Err("the alert needs `name:` or an `alertname` label".into()),
            (Some(n), Some(a)) if n != a => Err(format!(
                "the alert's `name: {n}` and its `alertname` label `{a}` disagree"
            )),
            _ => Ok(()),
        }
    }

    /// Did its source say it is firing (a Themis-format alert always is)?
    pub fn is_firing(&self) -> bool {
        self.status.as_deref().is_none_or(|s| s == "firing")
    }

    /// The alert with `labels` added or changed (and, without a pinned fingerprint, its own).
    pub fn with_labels(&self, labels: &BTreeMap<String, String>) -> Alert {
        if labels.is_empty() {
            return self.to_alert();
        }
        let mut spec = self.clone();
        spec.labels.extend(labels.clone());
        let suffix = fingerprint(spec.name(), labels);
        if let Some(f) = &mut spec.fingerprint {
            f.push_str(&format!("-{suffix}"));
        }
        spec.to_alert()
    }

    pub fn to_alert(&self) -> Alert {
        let pairs = |m: &BTreeMap<String, String>| {
            m.iter()
                .map(|(k, v)| Pair {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect()
        };
        let pasted = self.status.is_some()
            || self.starts_at.is_some()
            || self.ends_at.is_some()
            || self.generator_url.is_some();
        Alert {
            name: self.name().to_owned(),
            fingerprint: self
                .fingerprint
                .clone()
                .unwrap_or_else(|| fingerprint(self.name(), &self.labels)),
            labels: pairs(&self.labels),
            annotations: pairs(&self.annotations),
            source: pasted.then(|| AlertSource {
                status: self.status.clone().unwrap_or_else(|| "firing".into()),
                starts_at: self.starts_at.clone().unwrap_or_default(),
                ends_at: self.ends_at.clone().unwrap_or_default(),
                generator_url: self.generator_url.clone().unwrap_or_default(),
                ..AlertSource::default()
            }),
        }
    }
}

/// A stable fingerprint of an alert's identity: its name and labels (annotations excluded).
pub fn fingerprint(name: &str, labels: &BTreeMap<String, String>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    for (k, v) in labels {
        h.update([0]);
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub outcome: Option<String>,
    #[serde(default)]
    pub step: Option<String>,
    #[serde(default)]
    pub path: Option<Vec<String>>,
    #[serde(default)]
    pub called: Vec<String>,
    #[serde(default)]
    pub not_called: Vec<String>,
    #[serde(default)]
    pub denied: Vec<String>,
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// Every phase in the order it ran, as `<step> <phase> <passed|failed|fault|refused>`.
    #[serde(default)]
    pub phases: Option<Vec<String>>,
    /// Agent scenarios: the runbook triage chose, or `escalate`.
    #[serde(default)]
    pub decision: Option<String>,
    /// Agent scenarios: the runbook proposed to a human (first escalation with a plan).
    #[serde(default)]
    pub proposal: Option<String>,
    /// Agent scenarios: the states the agent went through, consecutive repeats folded.
    #[serde(default)]
    pub states: Option<Vec<String>>,
    /// Agent scenarios: the agent's state at the end (`idle`, …).
    #[serde(default)]
    pub final_state: Option<String>,
    /// Agent scenarios: the incident's status at the end.
    #[serde(default)]
    pub incident_status: Option<String>,
    /// Agent scenarios: the first proposal's parameters (values as text).
    #[serde(default)]
    pub proposal_params: BTreeMap<String, String>,
    /// Agent scenarios: texts the escalations must show the human (each found in one of them):
    /// the diagnosis, why a probe could not look, a suggestion.
    #[serde(default)]
    pub escalation_says: Vec<String>,
    /// Agent scenarios: the fix's verdict (`effective`, `ineffective`, `unknown`), `pending`
    /// while it is still watched, or `none` when nothing was verified.
    #[serde(default)]
    pub verification: Option<String>,
    /// Words the verdict's reason must contain.
    #[serde(default)]
    pub verification_says: Vec<String>,
    /// Agent scenarios: the guard rails that held runs back, in order (`[]`: none did).
    #[serde(default)]
    pub guard_blocked: Option<Vec<String>>,
    /// Agent scenarios: the status of the newest incident (a timeline may open more than one).
    #[serde(default)]
    pub last_incident_status: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: not a valid scenario: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },
    #[error("{file}: runbook: {source}")]
    Runbook {
        file: PathBuf,
        source: Box<RunbookLoadError>,
    },
}

/// What an agent scenario went through.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentRun {
    pub agent: String,
    pub incident: String,
    pub decision: String,
    pub proposals: Vec<String>,
    pub states: Vec<String>,
    pub final_state: String,
    pub incident_status: String,
    pub audit_records: u64,
    pub escalations: Vec<String>,
}

/// A scenario run: the report(s), and the expectations that failed.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioRun {
    pub scenario: String,
    pub file: PathBuf,
    /// The runbook's report (runbook scenarios) or the last execution's (agent scenarios).
    pub report: Option<ExecutionReport>,
    /// Every execution, probes included (agent scenarios).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reports: Vec<ExecutionReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentRun>,
    /// Mutations a dry run recorded instead of sending to the mocks.
    pub would_do: Vec<WouldDo>,
    pub expectations_checked: usize,
    pub failures: Vec<String>,
}

impl ScenarioRun {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

pub fn load(file: &Path) -> Result<Scenario, ScenarioError> {
    let text = themis_core::files::read_text(file, themis_core::files::limits::DEFINITION)
        .map_err(|e| ScenarioError::Read {
            file: file.into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let scenario: Scenario =
        themis_core::yaml::from_str(&text).map_err(|e| ScenarioError::Parse {
            file: file.into(),
            message: e.to_string(),
        })?;
    let invalid = |message: String| ScenarioError::Invalid {
        file: file.into(),
        message,
    };
    let mut scenario = scenario;
    if let Some(payload) = scenario.notification.clone() {
        if scenario.alert.check().is_ok() {
            return Err(invalid(
                "give `alert:` or `notification:`, not both (the notification's first firing alert is the scenario's)".into(),
            ));
        }
        let path = file.parent().unwrap_or(Path::new(".")).join(&payload);
        let mut alerts = read_notification(&path).map_err(invalid)?;
        let first = alerts
            .iter()
            .position(AlertSpec::is_firing)
            .ok_or_else(|| {
                invalid(format!(
                    "{}: no firing alert in the notification",
                    payload.display()
                ))
            })?;
        scenario.alert = alerts.remove(first);
        scenario.group = alerts;
    }
    scenario.alert.check().map_err(invalid)?;
    if scenario.notification.is_some() && scenario.agent.is_none() {
        return Err(invalid(
            "`notification:` is handed to the agents; it needs `agent:`".into(),
        ));
    }
    if !scenario.timeline.is_empty() && scenario.agent.is_none() {
        return Err(invalid(
            "`timeline:` follows an agent's incident after the alert; it needs `agent:`".into(),
        ));
    }
    scenario.timeline_offsets().map_err(invalid)?;
    Ok(scenario)
}

/// The alerts of an Alertmanager webhook payload (version 4), each as a scenario alert.
fn read_notification(path: &Path) -> Result<Vec<AlertSpec>, String> {
    #[derive(Deserialize)]
    struct Payload {
        version: String,
        alerts: Vec<AlertSpec>,
    }
    let text = themis_core::files::read_text(path, themis_core::files::limits::DEFINITION)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let payload: Payload = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: not an Alertmanager webhook payload: {e}",
            path.display()
        )
    })?;
    if payload.version != "4" {
        return Err(format!(
            "{}: webhook payload version {} (Themis reads version 4, Alertmanager 0.25+)",
            path.display(),
            payload.version
        ));
    }
    for (i, a) in payload.alerts.iter().enumerate() {
        a.check()
            .map_err(|e| format!("{}: alerts[{i}]: {e}", path.display()))?;
    }
    Ok(payload.alerts)
}

impl Scenario {
    /// Each moment's time since the alert, checked to be durations in order.
    pub fn timeline_offsets(&self) -> Result<Vec<std::time::Duration>, String> {
        let mut last = std::time::Duration::ZERO;
        self.timeline
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let after = humantime::parse_duration(&m.after).map_err(|e| {
                    format!("timeline[{i}]: `after: {}` is not a duration ({e})", m.after)
                })?;
                if after < last {
                    return Err(format!(
                        "timeline[{i}]: moments must be in time order (`after: {}` comes before the one above)",
                        m.after
                    ));
                }
                last = after;
                Ok(after)
            })
            .collect()
    }
}

/// Run a scenario: a runbook against its mocks, or an agent from alert to the end.
/// Run a scenario. `allow_unsigned` is the development flag: bundles without a signature load.
pub async fn run(
    sandbox: &Arc<Sandbox>,
    file: &Path,
    allow_unsigned: bool,
) -> Result<ScenarioRun, ScenarioError> {
    let scenario = load(file)?;
    match (&scenario.runbook, &scenario.agent) {
        (Some(runbook), None) => {
            run_runbook(sandbox, file, &scenario, runbook.clone(), allow_unsigned).await
        }
        (None, Some(agent)) => {
            let options = themis_agent::RuntimeOptions {
                allow_unsigned,
                ..Default::default()
            };
            crate::scenario_agent::run(sandbox, file, &scenario, agent.clone(), options).await
        }
        _ => Err(ScenarioError::Invalid {
            file: file.into(),
            message: "give exactly one of `runbook:` (run one runbook) or `agent:` (hand the alert to an agent)".into(),
        }),
    }
}

async fn run_runbook(
    sandbox: &Sandbox,
    file: &Path,
    scenario: &Scenario,
    runbook: PathBuf,
    allow_unsigned: bool,
) -> Result<ScenarioRun, ScenarioError> {
    let invalid = |message: String| ScenarioError::Invalid {
        file: file.into(),
        message,
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let mut trust = TrustPolicy {
        allow_unsigned,
        ..TrustPolicy::default()
    };
    for path in &scenario.trust {
        trust
            .trust_keys_at(&base.join(path))
            .map_err(|e| invalid(format!("trust: {e}")))?;
    }
    let loaded = LoadedRunbook::load(sandbox, &base.join(&runbook), &trust).map_err(|source| {
        ScenarioError::Runbook {
            file: file.into(),
            source: Box::new(source),
        }
    })?;
    let params = bind_params(&loaded.runbook.parameters, &scenario.params)
        .map_err(|e| invalid(format!("params: {e}")))?;
    let mock =
        Arc::new(ScenarioMock::new(scenario.mocks.clone()).map_err(|e| invalid(e.to_string()))?);
    let mut backends = Backends::all(mock.clone());
    if scenario.dry_run {
        backends = backends.dry_run();
    }
    let execution_id = format!("scenario-{}", slug(&scenario.name));
    let destructive = DestructiveList::adding(scenario.destructive.clone().unwrap_or_default());
    let request = ExecutionRequest {
        execution_id: execution_id.clone(),
        alert: scenario.alert.to_alert(),
        params,
        backends: backends.clone(),
        destructive: Arc::new(destructive),
        approval: scenario.approved_by.clone().map(|who| Approval {
            approval_id: format!("scenario-approval-{}", slug(&scenario.name)),
            execution_id: execution_id.clone(),
            approved_by: Identity::scenario(&who),
            plan_digest: String::new(),
        }),
        journal: Arc::new(MemoryJournal::default()),
        // A postcondition's wait is walked in no time: the mocks answer each reading in turn.
        clock: themis_core::clock::Clock::manual(std::time::SystemTime::now()),
    };
    let report = executor::execute(sandbox, &loaded, &request).await;
    let expect = scenario.expect.clone().unwrap_or_default();
    let (checked, failures) = check(&expect, std::slice::from_ref(&report));
    Ok(ScenarioRun {
        scenario: scenario.name.clone(),
        file: file.into(),
        report: Some(report),
        reports: Vec::new(),
        agent: None,
        would_do: backends.would_do(),
        expectations_checked: checked,
        failures,
    })
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Compare reports (the last one is "the" report) with what the scenario expects. Pure.
/// Returns (checked, failures).
pub fn check(expect: &Expect, reports: &[ExecutionReport]) -> (usize, Vec<String>) {
    let mut checked = 0;
    let mut failures = Vec::new();
    let calls: Vec<&themis_sandbox::CapabilityCall> =
        reports.iter().flat_map(|r| r.calls()).collect();
    let Some(report) = reports.last() else {
        for cap in &expect.called {
            checked += 1;
            failures.push(format!("called: {cap} was never called (nothing ran)"));
        }
        checked += expect.not_called.len();
        return (checked, failures);
    };
    let (status, step) = outcome_parts(&report.outcome);
    if let Some(want) = &expect.outcome {
        checked += 1;
        if want != status {
            failures.push(format!("outcome: expected {want}, got {status}"));
        }
    }
    if let Some(want) = &expect.step {
        checked += 1;
        if Some(want.as_str()) != step {
            failures.push(format!(
                "step: expected the outcome to name `{want}`, it names {}",
                step.map(|s| format!("`{s}`"))
                    .unwrap_or_else(|| "no step".into())
            ));
        }
    }
    if let Some(want) = &expect.path {
        checked += 1;
        let acted: Vec<&str> = report
            .phases
            .iter()
            .filter(|p| p.phase == Phase::Action)
            .map(|p| p.step.as_str())
            .collect();
        if acted != want.iter().map(String::as_str).collect::<Vec<_>>() {
            failures.push(format!(
                "path: expected {want:?}, the steps that acted were {acted:?}"
            ));
        }
    }
    if let Some(want) = &expect.phases {
        checked += 1;
        let mut ran: Vec<String> = report
            .phases
            .iter()
            .map(|p| format!("{} {} {}", p.step, p.phase, status_word(p.status)))
            .collect();
        // A postcondition read again while it converges (`postcondition_wait`) counts once.
        ran.dedup_by(|a, b| a == b && a.contains(" postcondition "));
        if &ran != want {
            failures.push(format!("phases: expected {want:?}, ran {ran:?}"));
        }
    }
    let reached = |cap: &str| {
        calls
            .iter()
            .any(|c| c.capability == cap && c.mode != CallMode::Refused)
    };
    let performed = |cap: &str| {
        calls
            .iter()
            .any(|c| c.capability == cap && c.mode == CallMode::Performed)
    };
    for cap in &expect.called {
        checked += 1;
        if !reached(cap) {
            failures.push(format!("called: {cap} was never called (or was refused)"));
        }
    }
    for cap in &expect.not_called {
        checked += 1;
        if performed(cap) {
            failures.push(format!("not_called: {cap} reached a backend"));
        }
    }
    for cap in &expect.denied {
        checked += 1;
        if !calls
            .iter()
            .any(|c| c.capability == *cap && c.mode == CallMode::Refused)
        {
            failures.push(format!("denied: {cap} was not refused by the host"));
        }
    }
    for (key, want) in &expect.outputs {
        checked += 1;
        let (step, name) = key.split_once('.').unwrap_or((key.as_str(), ""));
        let got = report
            .phases
            .iter()
            .filter(|p| p.step == step && p.status == PhaseStatus::Passed)
            .flat_map(|p| p.outputs.iter())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        if got != Some(want.as_str()) {
            failures.push(format!("outputs: {key} expected {want:?}, got {got:?}"));
        }
    }
    (checked, failures)
}

fn status_word(status: PhaseStatus) -> &'static str {
    match status {
        PhaseStatus::Passed => "passed",
        PhaseStatus::Failed => "failed",
        PhaseStatus::Fault => "fault",
        PhaseStatus::Refused => "refused",
    }
}

/// The outcome's status word and the step it names.
pub fn outcome_parts(outcome: &Outcome) -> (&'static str, Option<&str>) {
    (outcome.status(), outcome.step())
}
