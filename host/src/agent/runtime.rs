//! The agent runtime: alert → route → incident → probes → selection → policy → execute or
//! escalate; approvals, rejections and adjustments resume parked incidents. Every step of that is
//! one audit record, written before the action it announces; every state change goes through the
//! pure FSM, and an illegal one is audited and refused.

use super::def::{AgentDef, mutating_grants};
use super::observe::RuntimeObserver;
use super::store::{BackendSpec, Incident, IncidentStatus, Store, StoreError};
use crate::audit::{AuditError, AuditLog};
use crate::caps::Backends;
use crate::caps::scenario::ScenarioMock;
use crate::escalation::{Channels, Escalation};
use crate::executor::{
    self, ExecutionReport, ExecutionRequest, LoadedRunbook, Outcome, PhaseObserver, PhaseRecord,
    PhaseStatus, RunbookLoadError,
};
use crate::fsm::{self, AgentState, Event, IllegalTransition};
use crate::grant::Approval;
use crate::manifest::{bind_params, parse_param_text};
use crate::policy::{ApprovalError, ApprovalRequest, Plan, Verdict};
use crate::sandbox::{Phase, Sandbox};
use crate::triage::conditions::Facts;
use crate::triage::llm::LlmSelector;
use crate::triage::llm::config::LlmConfig;
use crate::triage::rules::{Rule, RuleSelector};
use crate::triage::{Candidate, ProbeResult, Selection, SelectionInput, Selector};
use crate::wit::types::Alert;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// How the audit marks every record of a runtime started with `--allow-unsigned`.
pub const UNSIGNED_MODE: &str = "allow-unsigned";

impl Agent {
    /// The provenance of a catalog runbook, for audit records that name one.
    fn provenance(&self, runbook: Option<&str>) -> Option<crate::trust::Provenance> {
        runbook
            .and_then(|id| self.catalog.get(id))
            .map(LoadedRunbook::provenance)
    }
}

/// How a runtime starts.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// Development only: load bundles without a signature (see `Runtime::new`).
    pub allow_unsigned: bool,
    pub selector: SelectorChoice,
}

/// Which selector the agents use.
#[derive(Debug, Clone, Default)]
pub enum SelectorChoice {
    /// The agent's `llm:` if it has one, else its rules.
    #[default]
    AsConfigured,
    /// The rules, whatever the agent configures.
    Rules,
    /// An LLM: this endpoint, or (`None`) the agent's own `llm:`.
    Llm(Option<LlmConfig>),
}

fn build_selector(
    def: &AgentDef,
    choice: &SelectorChoice,
) -> Result<Arc<dyn Selector>, RuntimeError> {
    let rules = RuleSelector::new(def.rules.clone());
    let llm = match choice {
        SelectorChoice::AsConfigured => def.llm.clone(),
        SelectorChoice::Rules => None,
        SelectorChoice::Llm(Some(config)) => Some(config.clone()),
        SelectorChoice::Llm(None) => Some(def.llm.clone().ok_or_else(|| RuntimeError::Agent {
            agent: def.name.clone(),
            message: "the LLM selector was asked for, but the agent has no `llm:` endpoint (configure one, or pass --llm-base-url and --llm-model)".into(),
        })?),
    };
    Ok(match llm {
        None => Arc::new(rules),
        Some(config) => {
            Arc::new(
                LlmSelector::new(config, rules).map_err(|message| RuntimeError::Agent {
                    agent: def.name.clone(),
                    message,
                })?,
            )
        }
    })
}

/// A loaded agent.
pub struct Agent {
    pub def: AgentDef,
    pub catalog: BTreeMap<String, LoadedRunbook>,
    pub probes: Vec<LoadedRunbook>,
    pub selector: Arc<dyn Selector>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Definition(#[from] super::def::AgentDefError),
    #[error("agent `{agent}`: {message}")]
    Agent { agent: String, message: String },
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("agent `{agent}`: {source}; the move was audited and refused")]
    Illegal {
        agent: String,
        source: IllegalTransition,
    },
    #[error("approval refused: {0}")]
    Approval(#[from] ApprovalError),
    #[error("{0}")]
    Backend(String),
}

/// What became of an alert.
#[derive(Debug, Clone)]
pub enum AlertOutcome {
    /// No agent owns this alert.
    Unrouted,
    /// An open incident with the same fingerprint absorbed it.
    Attached(Incident),
    /// A new incident, in the state the alert left it.
    Handled(Incident),
}

pub struct Runtime {
    sandbox: Arc<Sandbox>,
    agents: Vec<Agent>,
    audit: Arc<AuditLog>,
    store: Store,
    channels: Channels,
    observer: Arc<dyn RuntimeObserver>,
    /// Every execution report of this runtime's life, in order (scenarios check them).
    reports: Mutex<Vec<ExecutionReport>>,
    /// Backends by spec: one mocked world per scenario for the life of the runtime, so a plan
    /// approved later sees the world the triage saw.
    backends: Mutex<BTreeMap<String, Backends>>,
    /// The scenario mocks behind those backends, whose sequence positions persist in the store.
    mocks: Mutex<BTreeMap<String, Arc<ScenarioMock>>>,
}

impl Runtime {
    /// Load agent definitions and verify and load their runbooks, refusing bundles the agent's
    /// trust policy does not accept (each refusal audited) and probes that can mutate.
    ///
    /// `options.allow_unsigned` is the development escape hatch: bundles without a signature
    /// load, a warning goes out on every start and every audit record this runtime writes is
    /// marked.
    pub fn new(
        sandbox: Arc<Sandbox>,
        agent_files: &[std::path::PathBuf],
        audit: Arc<AuditLog>,
        store: Store,
        channels: Channels,
        observer: Arc<dyn RuntimeObserver>,
        options: RuntimeOptions,
    ) -> Result<Self, RuntimeError> {
        let allow_unsigned = options.allow_unsigned;
        if allow_unsigned {
            audit.set_mode(UNSIGNED_MODE);
            tracing::warn!(
                mode = UNSIGNED_MODE,
                "--allow-unsigned: runbook bundles without a signature will be loaded and run; never use this outside development"
            );
            audit.append("host", None, "unsigned-mode", json!({ "warning": "bundles without a signature are accepted; every record of this run is marked" }))?;
        }
        let mut agents = Vec::new();
        for file in agent_files {
            let mut def = AgentDef::load(file)?;
            def.trust.allow_unsigned = allow_unsigned;
            let load = |dir: &Path| match LoadedRunbook::load(&sandbox, dir, &def.trust) {
                Ok(loaded) => Ok(loaded),
                Err(e) => {
                    if let RunbookLoadError::Refused { bundle, reason } = &e {
                        audit.append(&def.name, None, "bundle-refused", json!({ "bundle": bundle, "reason": reason.code(), "message": reason.to_string() }))?;
                    }
                    Err(RuntimeError::Agent {
                        agent: def.name.clone(),
                        message: e.to_string(),
                    })
                }
            };
            let mut catalog = BTreeMap::new();
            for dir in &def.runbooks {
                let rb = load(dir)?;
                if rb.runbook.domain != def.domain {
                    return Err(RuntimeError::Agent {
                        agent: def.name.clone(),
                        message: format!(
                            "runbook `{}` is a {} runbook; a {} agent can only run its own domain's",
                            rb.runbook.id, rb.runbook.domain, def.domain
                        ),
                    });
                }
                catalog.insert(rb.runbook.id.clone(), rb);
            }
            let mut probes = Vec::new();
            for dir in &def.probes {
                let rb = load(dir)?;
                let mutating = mutating_grants(&rb.runbook);
                if !mutating.is_empty() {
                    return Err(RuntimeError::Agent {
                        agent: def.name.clone(),
                        message: format!(
                            "probe `{}` is granted {}: probes must be read-only",
                            rb.runbook.id,
                            mutating.join(", ")
                        ),
                    });
                }
                probes.push(rb);
            }
            // A pin on a name the agent does not load protects nothing: most likely a typo.
            if let Some(pinned) = def.trust.min_versions.keys().find(|id| {
                !catalog.contains_key(*id) && !probes.iter().any(|p| &p.runbook.id == *id)
            }) {
                return Err(RuntimeError::Agent {
                    agent: def.name.clone(),
                    message: format!(
                        "trust.min_versions pins `{pinned}`, which is none of the agent's runbooks or probes"
                    ),
                });
            }
            let demo: Vec<String> = def
                .trust
                .keys
                .values()
                .filter(|k| crate::trust::keys::DEMO_KEY_IDS.contains(&k.id.as_str()))
                .map(|k| format!("{} ({})", k.id, k.name))
                .collect();
            if !demo.is_empty() {
                // Logged once per process and agent (an eval starts a runtime per scenario);
                // audited on every start.
                static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
                let first = WARNED
                    .lock()
                    .map(|mut w| w.insert(def.name.clone()))
                    .unwrap_or(true);
                if first {
                    tracing::warn!(agent = %def.name, keys = %demo.join(", "), "the agent trusts a committed DEMO key whose private half is public: fine for the demo and tests, never in production");
                }
                audit.append(&def.name, None, "demo-key-trusted", json!({ "keys": demo }))?;
            }
            let rules: Vec<&Rule> = def
                .rules
                .iter()
                .chain(def.follow_ups.iter().map(|f| &f.rule))
                .collect();
            if let Some(r) = rules.iter().find(|r| !catalog.contains_key(&r.runbook)) {
                return Err(RuntimeError::Agent {
                    agent: def.name.clone(),
                    message: format!(
                        "a rule names runbook `{}`, which is not in the agent's runbooks",
                        r.runbook
                    ),
                });
            }
            let selector = build_selector(&def, &options.selector)?;
            agents.push(Agent {
                def,
                catalog,
                probes,
                selector,
            });
        }
        Ok(Runtime {
            sandbox,
            agents,
            audit,
            store,
            channels,
            observer,
            reports: Mutex::new(Vec::new()),
            backends: Mutex::new(BTreeMap::new()),
            mocks: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn agents(&self) -> &[Agent] {
        &self.agents
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn reports(&self) -> Vec<ExecutionReport> {
        self.reports.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn agent(&self, name: &str) -> Result<&Agent, RuntimeError> {
        self.agents
            .iter()
            .find(|a| a.def.name == name)
            .ok_or_else(|| RuntimeError::Agent {
                agent: name.into(),
                message: "no such agent is loaded".into(),
            })
    }

    fn fsm<'a>(&'a self, agent: &'a Agent, incident: &str) -> Result<Fsm<'a>, RuntimeError> {
        Ok(Fsm {
            agent: &agent.def.name,
            incident: incident.to_owned(),
            state: Mutex::new(self.store.agent_state(&agent.def.name)?),
            rt: self,
        })
    }

    /// Take one alert from intake to a resolution, a rollback or a parked escalation.
    pub async fn handle_alert(
        &self,
        alert: Alert,
        backend: BackendSpec,
    ) -> Result<AlertOutcome, RuntimeError> {
        let labels: BTreeMap<String, String> = alert
            .labels
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        let Some(agent) = self
            .agents
            .iter()
            .find(|a| a.def.routes(&alert.name, &labels))
        else {
            self.audit
                .append("intake", None, "alert-unrouted", json!({ "alert": alert }))?;
            return Ok(AlertOutcome::Unrouted);
        };
        let name = agent.def.name.clone();
        if let Some(mut open) = self.store.open_incident(&name, &alert.fingerprint)? {
            open.attached_alerts += 1;
            self.audit.append(
                &name,
                Some(&open.id),
                "alert-attached",
                json!({ "alert": alert, "attached_alerts": open.attached_alerts }),
            )?;
            self.store.save_incident(&open)?;
            return Ok(AlertOutcome::Attached(open));
        }
        let now = SystemTime::now();
        let id = new_id("inc", &alert.fingerprint, now);
        let mut incident = Incident {
            id: id.clone(),
            agent: name.clone(),
            fingerprint: alert.fingerprint.clone(),
            alert: alert.clone(),
            status: IncidentStatus::Triaging,
            opened_at: now,
            attached_alerts: 0,
            backend: backend.clone(),
            selection: None,
            proposal: None,
            executed: None,
            reason: None,
            proposed_at: None,
        };
        self.audit.append(
            &name,
            Some(&id),
            "alert",
            json!({ "alert": alert, "fingerprint": alert.fingerprint }),
        )?;
        self.store.save_incident(&incident)?;
        let fsm = self.fsm(agent, &id)?;
        fsm.fire(Event::AlertReceived {
            incident: id.clone(),
        })?;
        let backends = self.backends(&backend)?;

        let mut probe_results = Vec::new();
        for probe in &agent.probes {
            let request = self.request(
                agent,
                &format!("{id}-probe-{}", probe.runbook.id),
                &alert,
                probe,
                BTreeMap::new(),
                &backends,
                None,
            )?;
            let report = executor::execute_observed(
                &self.sandbox,
                probe,
                &request,
                &AuditPhases {
                    rt: self,
                    agent: &name,
                    incident: &id,
                    runbook: probe,
                    fsm: None,
                    failure: Mutex::new(None),
                },
            )
            .await;
            probe_results.push(probe_result(&report));
            self.audit.append(&name, Some(&id), "probe", json!({ "runbook": probe.runbook.id, "provenance": probe.provenance(), "outcome": report.outcome, "outputs": probe_results.last().map(|p| &p.outputs) }))?;
            self.keep(report);
        }
        let input = SelectionInput {
            agent: name.clone(),
            alert: alert.clone(),
            candidates: agent
                .catalog
                .values()
                .map(|rb| Candidate {
                    id: rb.runbook.id.clone(),
                    version: rb.runbook.version.to_string(),
                    description: rb.runbook.description.clone(),
                    parameters: rb.runbook.parameters.clone(),
                })
                .collect(),
            probes: probe_results,
        };
        let selection = match agent.selector.select(&input).await {
            Ok(s) => s,
            Err(e) => Selection::escalate(
                agent.selector.name(),
                format!("the selector failed, so the agent does not guess: {e}"),
            ),
        };
        let selection_json = json!({
            "provenance": agent.provenance(selection.runbook.as_deref()),
            "selector": selection.selector,
            "input": { "candidates": input.candidates.iter().map(|c| &c.id).collect::<Vec<_>>(), "probes": input.probes },
            "output": selection,
        });
        self.audit
            .append(&name, Some(&id), "selection", selection_json.clone())?;
        self.observer.selection(&name, &selection);
        // Kept with the incident; written with its next durable save (the audit has it already).
        incident.selection = Some(selection_json);
        let evidence = probe_evidence(&input.probes);
        self.decide(
            agent,
            &fsm,
            &mut incident,
            selection,
            evidence,
            &backends,
            &input.facts(),
        )
        .await?;
        Ok(AlertOutcome::Handled(incident))
    }

    /// Judge a selection and act on the verdict.
    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &self,
        agent: &Agent,
        fsm: &Fsm<'_>,
        incident: &mut Incident,
        selection: Selection,
        evidence: Vec<String>,
        backends: &Backends,
        facts: &Facts,
    ) -> Result<(), RuntimeError> {
        let name = &agent.def.name;
        let (loaded, params) = match catalog_plan(agent, &selection) {
            Ok(found) => found,
            Err(reason) => {
                // The selector's answer cannot become a plan: escalate, never guess.
                fsm.fire(Event::ConfidenceTooLow {
                    reason: reason.clone(),
                })?;
                return self
                    .escalate(agent, fsm, incident, &reason, &selection, evidence, None)
                    .await;
            }
        };
        let plan = plan_for(loaded, params, &incident.fingerprint);
        let verdict = agent
            .def
            .policy
            .judge(selection.confidence, &granted(loaded));
        self.audit.append(name, Some(&incident.id), "decision", json!({ "plan": plan, "plan_digest": plan.digest(), "provenance": loaded.provenance(), "verdict": verdict, "reason": verdict.reason(), "confidence": selection.confidence }))?;
        match verdict {
            Verdict::Execute => {
                let first = loaded.runbook.steps[0].id.clone();
                fsm.fire(Event::RunbookChosen {
                    runbook: loaded.runbook.id.clone(),
                    step: first,
                })?;
                Box::pin(self.run_plan(agent, fsm, incident, plan, None, backends, facts)).await
            }
            Verdict::ConfidenceTooLow { .. }
            | Verdict::SelectorEscalated { .. }
            | Verdict::NeedsApproval { .. } => {
                let reason = verdict.reason();
                let event = if matches!(verdict, Verdict::NeedsApproval { .. }) {
                    Event::ApprovalRequired {
                        reason: reason.clone(),
                    }
                } else {
                    Event::ConfidenceTooLow {
                        reason: reason.clone(),
                    }
                };
                fsm.fire(event)?;
                self.escalate(
                    agent,
                    fsm,
                    incident,
                    &reason,
                    &selection,
                    evidence,
                    Some(plan),
                )
                .await
            }
        }
    }

    /// Execute a plan; on success look for a follow-up; move the FSM through every phase.
    #[allow(clippy::too_many_arguments)]
    async fn run_plan(
        &self,
        agent: &Agent,
        fsm: &Fsm<'_>,
        incident: &mut Incident,
        plan: Plan,
        approval: Option<Approval>,
        backends: &Backends,
        facts: &Facts,
    ) -> Result<(), RuntimeError> {
        let name = &agent.def.name;
        let Some(loaded) = agent.catalog.get(&plan.runbook_id) else {
            return Err(RuntimeError::Agent {
                agent: name.clone(),
                message: format!("runbook `{}` is no longer loaded", plan.runbook_id),
            });
        };
        let execution_id = approval
            .as_ref()
            .map(|a| a.execution_id.clone())
            .unwrap_or_else(|| format!("{}-{}", incident.id, plan.runbook_id));
        incident.status = IncidentStatus::Executing;
        incident.reason = None;
        incident.executed = Some(plan.clone());
        self.store.save_incident(incident)?;
        self.audit.append(name, Some(&incident.id), "execution-start", json!({ "execution_id": execution_id, "runbook_id": plan.runbook_id, "runbook_version": loaded.runbook.version.to_string(), "runbook_digest": loaded.runbook.digest, "provenance": loaded.provenance(), "params": plan.params, "approval": approval }))?;
        let request = self.request(
            agent,
            &execution_id,
            &incident.alert,
            loaded,
            plan.params.clone(),
            backends,
            approval,
        )?;
        let observer = AuditPhases {
            rt: self,
            agent: name,
            incident: &incident.id,
            runbook: loaded,
            fsm: Some(fsm),
            failure: Mutex::new(None),
        };
        let report = executor::execute_observed(&self.sandbox, loaded, &request, &observer).await;
        let outcome = report.outcome.clone();
        let outputs = probe_result(&report).outputs;
        self.audit.append(name, Some(&incident.id), "result", json!({ "execution_id": execution_id, "runbook_id": plan.runbook_id, "runbook_digest": loaded.runbook.digest, "provenance": loaded.provenance(), "outcome": outcome, "dry_run": report.dry_run }))?;
        self.keep(report);
        match outcome {
            Outcome::Succeeded => {
                let mut facts = facts.clone();
                for (k, v) in &outputs {
                    facts.insert(format!("outputs.{k}"), v.clone());
                }
                let follow = agent
                    .def
                    .follow_ups
                    .iter()
                    .filter(|f| f.after == plan.runbook_id)
                    .map(|f| f.rule.clone())
                    .collect::<Vec<_>>();
                let next = RuleSelector::choose(&follow, &facts);
                if next.runbook.is_some() {
                    self.audit.append(name, Some(&incident.id), "selection", json!({ "selector": "rules", "follow_up_of": plan.runbook_id, "output": next, "provenance": agent.provenance(next.runbook.as_deref()) }))?;
                    let evidence = outputs
                        .iter()
                        .map(|(k, v)| format!("{}: {k}={v}", plan.runbook_id))
                        .collect();
                    return Box::pin(
                        self.decide(agent, fsm, incident, next, evidence, backends, &facts),
                    )
                    .await;
                }
                fsm.fire(Event::Resolved)?;
                incident.status = IncidentStatus::Resolved;
                self.store.save_incident(incident)?;
                Ok(())
            }
            Outcome::PreconditionFailed { step } => {
                let reason = format!(
                    "runbook {} stopped: the precondition of step `{step}` did not hold",
                    plan.runbook_id
                );
                let event = Event::RunbookStopped {
                    reason: reason.clone(),
                };
                self.stop_and_escalate(agent, fsm, incident, event, reason)
                    .await
            }
            Outcome::RolledBack { step, reason, .. } => {
                fsm.fire(Event::RollbackDone)?;
                incident.status = IncidentStatus::Failed;
                incident.reason = Some(format!(
                    "runbook {} failed at step `{step}` ({reason}) and was rolled back",
                    plan.runbook_id
                ));
                self.store.save_incident(incident)?;
                Ok(())
            }
            Outcome::RollbackFailed {
                step,
                rollback_step,
                reason,
            } => {
                let why = format!(
                    "runbook {} failed at `{step}` and the rollback of `{rollback_step}` failed too: {reason}",
                    plan.runbook_id
                );
                let event = Event::RollbackFailed {
                    reason: why.clone(),
                };
                self.stop_and_escalate(agent, fsm, incident, event, why)
                    .await?;
                incident.status = IncidentStatus::Failed;
                self.store.save_incident(incident)?;
                Ok(())
            }
        }
    }

    /// A runbook ended without resolving the alert: move the FSM and tell a human, no plan.
    async fn stop_and_escalate(
        &self,
        agent: &Agent,
        fsm: &Fsm<'_>,
        incident: &mut Incident,
        event: Event,
        reason: String,
    ) -> Result<(), RuntimeError> {
        fsm.fire(event)?;
        let selection = Selection::escalate("runtime", reason.clone());
        self.escalate(agent, fsm, incident, &reason, &selection, Vec::new(), None)
            .await
    }

    /// Tell a human (console, Slack), park the incident, send the agent back to idle.
    #[allow(clippy::too_many_arguments)]
    async fn escalate(
        &self,
        agent: &Agent,
        fsm: &Fsm<'_>,
        incident: &mut Incident,
        reason: &str,
        selection: &Selection,
        evidence: Vec<String>,
        plan: Option<Plan>,
    ) -> Result<(), RuntimeError> {
        let now = SystemTime::now();
        let proposal = plan.map(|plan| {
            ApprovalRequest::new(
                new_id("apr", &incident.id, now),
                plan,
                identity(&agent.def.name),
                now,
                agent.def.policy.approval_ttl,
            )
        });
        let escalation = Escalation {
            agent: agent.def.name.clone(),
            incident: incident.id.clone(),
            alert: incident.alert.clone(),
            reason: reason.into(),
            reasoning: selection.reasoning.clone(),
            confidence: selection.confidence,
            selector: selection.selector.clone(),
            evidence,
            proposal: proposal.clone(),
        };
        self.audit.append(
            &agent.def.name,
            Some(&incident.id),
            "escalation",
            json!({ "escalation": escalation, "message": escalation.to_text(), "provenance": agent.provenance(escalation.proposal.as_ref().map(|p| p.plan.runbook_id.as_str())) }),
        )?;
        incident.status = if proposal.is_some() {
            IncidentStatus::PendingApproval
        } else {
            IncidentStatus::Escalated
        };
        incident.proposal = proposal;
        incident.reason = Some(reason.into());
        incident.proposed_at = Some(now);
        self.store.save_incident(incident)?;
        self.observer.escalation(&escalation);
        let deliveries = self.channels.deliver(&escalation).await;
        if !deliveries.is_empty() {
            self.audit.append(
                &agent.def.name,
                Some(&incident.id),
                "escalation-delivery",
                json!({ "deliveries": deliveries }),
            )?;
        }
        fsm.fire(Event::Parked)?;
        Ok(())
    }

    fn keep(&self, report: ExecutionReport) {
        if let Ok(mut r) = self.reports.lock() {
            r.push(report);
        }
        // The mocked world moved on: an approval answered from another process continues it.
        let mocks: Vec<(String, Arc<ScenarioMock>)> = self
            .mocks
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        for (key, mock) in mocks {
            if let Err(e) = self.store.save_mock_cursors(&key, &mock.cursors()) {
                tracing::warn!(error = %e, "could not save the mocked world's position");
            }
        }
    }

    /// The capabilities an incident acts through.
    pub fn backends(&self, spec: &BackendSpec) -> Result<Backends, RuntimeError> {
        let key = hex::encode(&Sha256::digest(serde_json::to_vec(spec).unwrap_or_default())[..8]);
        if let Some(b) = self.backends.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(b);
        }
        let built = self.build_backends(&key, spec)?;
        if let Ok(mut m) = self.backends.lock() {
            m.insert(key, built.clone());
        }
        Ok(built)
    }

    fn build_backends(&self, key: &str, spec: &BackendSpec) -> Result<Backends, RuntimeError> {
        match spec {
            BackendSpec::Scenario { file, dry_run } => {
                let scenario = crate::scenario::load(file)
                    .map_err(|e| RuntimeError::Backend(e.to_string()))?;
                let mock = Arc::new(
                    ScenarioMock::new(scenario.mocks)
                        .map_err(|e| RuntimeError::Backend(format!("{}: {e}", file.display())))?,
                );
                mock.resume(&self.store.mock_cursors(key)?);
                if let Ok(mut m) = self.mocks.lock() {
                    m.insert(key.to_owned(), mock.clone());
                }
                let backends = Backends::all(mock, false);
                Ok(if *dry_run {
                    backends.into_dry_run().0
                } else {
                    backends
                })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        agent: &Agent,
        execution_id: &str,
        alert: &Alert,
        loaded: &LoadedRunbook,
        params: BTreeMap<String, Value>,
        backends: &Backends,
        approval: Option<Approval>,
    ) -> Result<ExecutionRequest, RuntimeError> {
        let params =
            bind_params(&loaded.runbook.parameters, &params).map_err(|e| RuntimeError::Agent {
                agent: agent.def.name.clone(),
                message: format!("runbook {}: {e}", loaded.runbook.id),
            })?;
        Ok(ExecutionRequest {
            execution_id: execution_id.into(),
            alert: alert.clone(),
            params,
            backends: backends.clone(),
            destructive: Arc::new(agent.def.policy.destructive.clone()),
            approval,
        })
    }

    /// Find the incident a pending approval (or an incident id) belongs to.
    fn pending(&self, id: &str) -> Result<Incident, RuntimeError> {
        if id.starts_with("inc-") {
            return Ok(self.store.incident(id)?);
        }
        self.store
            .incidents()?
            .into_iter()
            .find(|i| i.proposal.as_ref().is_some_and(|p| p.id == id))
            .ok_or_else(|| RuntimeError::Store(StoreError::UnknownIncident(id.into())))
    }

    /// A human approves a pending plan: policy checks the approver, the expiry and that the plan
    /// is still exactly what was proposed; the runbook then runs, preconditions first.
    pub async fn approve(
        &self,
        approval_id: &str,
        approver: &str,
    ) -> Result<Incident, RuntimeError> {
        let mut incident = self.pending(approval_id)?;
        let agent = self.agent(&incident.agent)?;
        let name = agent.def.name.clone();
        let request = match (&incident.proposal, incident.status) {
            (Some(p), IncidentStatus::PendingApproval) if p.id == approval_id => p.clone(),
            _ => {
                return Err(RuntimeError::Agent {
                    agent: name,
                    message: format!(
                        "{approval_id} is not waiting for an approval (incident {} is {:?})",
                        incident.id, incident.status
                    ),
                });
            }
        };
        let current = match agent.catalog.get(&request.plan.runbook_id) {
            Some(loaded) => plan_for(loaded, request.plan.params.clone(), &request.plan.target),
            None => {
                return Err(RuntimeError::Approval(ApprovalError::PlanChanged));
            }
        };
        if let Err(e) =
            agent
                .def
                .policy
                .check_approval(&request, approver, SystemTime::now(), &current)
        {
            self.audit.append(
                &name,
                Some(&incident.id),
                "approval-refused",
                json!({ "approval": approval_id, "approver": approver, "error": e.to_string(), "provenance": agent.provenance(Some(&request.plan.runbook_id)) }),
            )?;
            return Err(e.into());
        }
        let approval = Approval {
            execution_id: approval_id.into(),
            approved_by: approver.into(),
        };
        self.audit.append(&name, Some(&incident.id), "approval", json!({ "approval": approval_id, "approver": approver, "plan": request.plan, "plan_digest": request.plan_digest, "bound_to_execution": approval_id, "provenance": agent.provenance(Some(&request.plan.runbook_id)) }))?;
        let fsm = self.fsm(agent, &incident.id)?;
        let first = agent
            .catalog
            .get(&current.runbook_id)
            .map(|l| l.runbook.steps[0].id.clone())
            .unwrap_or_default();
        fsm.fire(Event::ApprovalGranted {
            incident: incident.id.clone(),
            runbook: current.runbook_id.clone(),
            step: first,
        })?;
        incident.proposal = None;
        let backends = self.backends(&incident.backend)?;
        let facts = alert_facts(&incident.alert);
        self.run_plan(
            agent,
            &fsm,
            &mut incident,
            current,
            Some(approval),
            &backends,
            &facts,
        )
        .await?;
        Ok(incident)
    }

    /// A human rejects a pending plan: nothing runs.
    pub async fn reject(
        &self,
        approval_id: &str,
        who: &str,
        reason: &str,
    ) -> Result<Incident, RuntimeError> {
        let mut incident = self.pending(approval_id)?;
        let agent = self.agent(&incident.agent)?;
        self.audit.append(
            &agent.def.name,
            Some(&incident.id),
            "rejection",
            json!({ "approval": approval_id, "by": who, "reason": reason, "provenance": agent.provenance(incident.proposal.as_ref().map(|p| p.plan.runbook_id.as_str())) }),
        )?;
        let fsm = self.fsm(agent, &incident.id)?;
        fsm.fire(Event::ApprovalRejected {
            incident: incident.id.clone(),
        })?;
        incident.status = IncidentStatus::Rejected;
        incident.reason = Some(format!("rejected by {who}: {reason}"));
        incident.proposal = None;
        self.store.save_incident(&incident)?;
        Ok(incident)
    }

    /// A human picks another runbook of the catalog or other parameters. The adjusted plan goes
    /// through the same policy: within it, it runs now; if it needs an approval, another human
    /// must give it (the adjuster becomes the requester).
    pub async fn adjust(
        &self,
        id: &str,
        who: &str,
        runbook: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<Incident, RuntimeError> {
        let mut incident = self.pending(id)?;
        let agent = self.agent(&incident.agent)?;
        let name = agent.def.name.clone();
        if !matches!(
            incident.status,
            IncidentStatus::PendingApproval | IncidentStatus::Escalated
        ) {
            return Err(RuntimeError::Agent {
                agent: name,
                message: format!(
                    "incident {} is {:?}, not waiting for a human",
                    incident.id, incident.status
                ),
            });
        }
        if let Some(p) = &incident.proposal
            && p.requested_by == who
        {
            return Err(ApprovalError::SelfApproval(who.into()).into());
        }
        if !agent.def.policy.approvers.is_empty() && !agent.def.policy.approvers.contains(who) {
            return Err(ApprovalError::NotAnApprover {
                who: who.into(),
                approvers: agent.def.policy.approvers.iter().cloned().collect(),
            }
            .into());
        }
        let Some(loaded) = agent.catalog.get(runbook) else {
            return Err(RuntimeError::Agent {
                agent: name,
                message: format!(
                    "`{runbook}` is not in the catalog; choose one of: {}",
                    agent.catalog.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        };
        let given: BTreeMap<String, Value> = params
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let typed = typed_params(loaded, &given).map_err(|e| RuntimeError::Agent {
            agent: name.clone(),
            message: e,
        })?;
        let plan = plan_for(loaded, typed, &incident.fingerprint);
        let verdict = agent.def.policy.judge(1.0, &granted(loaded));
        self.audit.append(&name, Some(&incident.id), "adjustment", json!({ "by": who, "plan": plan, "plan_digest": plan.digest(), "provenance": loaded.provenance(), "verdict": verdict, "reason": verdict.reason() }))?;
        match verdict {
            Verdict::Execute => {
                let fsm = self.fsm(agent, &incident.id)?;
                fsm.fire(Event::ApprovalAdjusted {
                    incident: incident.id.clone(),
                    runbook: runbook.into(),
                    step: loaded.runbook.steps[0].id.clone(),
                })?;
                incident.proposal = None;
                let backends = self.backends(&incident.backend)?;
                let facts = alert_facts(&incident.alert);
                self.run_plan(agent, &fsm, &mut incident, plan, None, &backends, &facts)
                    .await?;
            }
            _ => {
                let now = SystemTime::now();
                let request = ApprovalRequest::new(
                    new_id("apr", &incident.id, now),
                    plan,
                    who.into(),
                    now,
                    agent.def.policy.approval_ttl,
                );
                self.audit.append(&name, Some(&incident.id), "escalation", json!({ "reason": format!("adjusted by {who}: {}", verdict.reason()), "proposal": request, "provenance": loaded.provenance() }))?;
                incident.proposal = Some(request);
                incident.status = IncidentStatus::PendingApproval;
                self.store.save_incident(&incident)?;
            }
        }
        Ok(incident)
    }
}

fn alert_facts(alert: &Alert) -> Facts {
    SelectionInput {
        agent: String::new(),
        alert: alert.clone(),
        candidates: Vec::new(),
        probes: Vec::new(),
    }
    .facts()
}

/// The host identity an agent requests approvals as.
pub fn identity(agent: &str) -> String {
    format!("themis:{agent}")
}

fn new_id(prefix: &str, seed: &str, now: SystemTime) -> String {
    let nanos = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = Sha256::new();
    h.update(seed.as_bytes());
    h.update(nanos.to_be_bytes());
    h.update(std::process::id().to_be_bytes());
    format!("{prefix}-{}", &hex::encode(h.finalize())[..10])
}

fn granted(loaded: &LoadedRunbook) -> BTreeSet<String> {
    loaded
        .runbook
        .steps
        .iter()
        .flat_map(|s| s.capabilities.iter().cloned())
        .collect()
}

/// The catalog runbook a selection names and its typed parameters, or why there is none.
fn catalog_plan<'a>(
    agent: &'a Agent,
    selection: &Selection,
) -> Result<(&'a LoadedRunbook, BTreeMap<String, Value>), String> {
    let Some(runbook_id) = &selection.runbook else {
        return Err(selection.reasoning.clone());
    };
    let Some(loaded) = agent.catalog.get(runbook_id) else {
        return Err(format!(
            "the selector named `{runbook_id}`, which is not in the catalog; nothing runs that is not a loaded runbook of the agent"
        ));
    };
    let params = typed_params(loaded, &selection.params).map_err(|why| {
        format!("the selector chose {runbook_id} but its parameters do not fit: {why}")
    })?;
    Ok((loaded, params))
}

/// Convert template output (strings) to the runbook's declared parameter types.
fn typed_params(
    loaded: &LoadedRunbook,
    given: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, Value>, String> {
    let mut out = BTreeMap::new();
    for (name, value) in given {
        let decl = loaded
            .runbook
            .parameters
            .iter()
            .find(|p| &p.name == name)
            .ok_or_else(|| format!("`{name}` is not a parameter of {}", loaded.runbook.id))?;
        let v = match value {
            Value::String(s) => parse_param_text(decl.kind, s),
            other => other.clone(),
        };
        out.insert(name.clone(), v);
    }
    bind_params(&loaded.runbook.parameters, &out).map_err(|e| e.to_string())?;
    Ok(out)
}

fn plan_for(loaded: &LoadedRunbook, params: BTreeMap<String, Value>, target: &str) -> Plan {
    Plan {
        runbook_id: loaded.runbook.id.clone(),
        runbook_version: loaded.runbook.version.to_string(),
        runbook_digest: loaded.runbook.digest.clone(),
        params,
        target: target.into(),
    }
}

fn probe_result(report: &ExecutionReport) -> ProbeResult {
    let mut outputs = BTreeMap::new();
    let mut evidence = Vec::new();
    for p in &report.phases {
        if p.status == PhaseStatus::Passed {
            for (k, v) in &p.outputs {
                outputs.insert(format!("{}.{k}", p.step), v.clone());
            }
        }
        if p.phase == Phase::Action {
            evidence.extend(
                p.evidence
                    .iter()
                    .map(|(k, v)| (format!("{}.{k}", p.step), v.clone())),
            );
        }
    }
    ProbeResult {
        runbook: report.runbook_id.clone(),
        outcome: crate::scenario::outcome_parts(&report.outcome)
            .0
            .to_string(),
        outputs,
        evidence,
    }
}

fn probe_evidence(probes: &[ProbeResult]) -> Vec<String> {
    probes
        .iter()
        .flat_map(|p| {
            p.evidence
                .iter()
                .map(move |(k, v)| format!("{}: {k}={v}", p.runbook))
        })
        .collect()
}

/// One agent's state machine during one incident: fire events, audit every move.
struct Fsm<'a> {
    agent: &'a str,
    incident: String,
    state: Mutex<AgentState>,
    rt: &'a Runtime,
}

impl Fsm<'_> {
    fn fire(&self, event: Event) -> Result<AgentState, RuntimeError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match fsm::transition(&state, &event) {
            Ok(next) => {
                self.rt.audit.append(
                    self.agent,
                    Some(&self.incident),
                    "transition",
                    json!({ "from": *state, "event": event, "to": next }),
                )?;
                self.rt.store.save_agent_state(self.agent, &next)?;
                self.rt
                    .observer
                    .transition(self.agent, &state, &event, &next);
                *state = next.clone();
                Ok(next)
            }
            Err(illegal) => {
                self.rt.audit.append(
                    self.agent,
                    Some(&self.incident),
                    "illegal-transition",
                    json!({ "from": *state, "event": event, "error": illegal.to_string() }),
                )?;
                Err(RuntimeError::Illegal {
                    agent: self.agent.into(),
                    source: illegal,
                })
            }
        }
    }
}

/// Audits every phase (with its capability calls) and moves the FSM during execution.
struct AuditPhases<'a> {
    rt: &'a Runtime,
    agent: &'a str,
    incident: &'a str,
    runbook: &'a LoadedRunbook,
    fsm: Option<&'a Fsm<'a>>,
    /// The last phase that did not pass: why the rollback starts.
    failure: Mutex<Option<(String, String)>>,
}

impl PhaseObserver for AuditPhases<'_> {
    fn phase_started(&self, step: &str, phase: Phase) {
        let Some(fsm) = self.fsm else { return };
        let state = fsm
            .state
            .lock()
            .map(|s| s.kind())
            .unwrap_or(fsm::StateKind::Idle);
        if phase == Phase::Rollback && state == fsm::StateKind::ExecutingRunbook {
            let (failed, reason) = self
                .failure
                .lock()
                .ok()
                .and_then(|f| f.clone())
                .unwrap_or_else(|| (step.to_owned(), "a phase failed".into()));
            let _ = fsm.fire(Event::StepFailed {
                step: failed,
                reason,
            });
        }
        let _ = fsm.fire(Event::PhaseStarted {
            step: step.into(),
            phase,
        });
    }

    fn phase_finished(&self, record: &PhaseRecord) {
        if record.status != PhaseStatus::Passed
            && let Ok(mut f) = self.failure.lock()
        {
            *f = Some((record.step.clone(), record.summary.clone()));
        }
        if let Err(e) = self.rt.audit.append(
            self.agent,
            Some(self.incident),
            "phase",
            json!({ "runbook": self.runbook.runbook.id, "provenance": self.runbook.provenance(), "record": record }),
        ) {
            tracing::error!(error = %e, "could not audit a phase");
        }
        self.rt
            .observer
            .phase(self.agent, &self.runbook.runbook.id, record);
    }
}
