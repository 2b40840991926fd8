//! `GET /metrics`: the service's Prometheus metrics in the OpenMetrics text format, kept by the
//! `prometheus-client` crate. Fed by the runtime's observer (transitions, selections, phases,
//! executions, escalations), by the intake (what became of each alert) and by the audit log
//! (every append's duration and result).
//!
//! Every label value comes from a bounded set: agent names (the configuration), states and
//! phases (the FSM), runbook and step ids (the signed catalogs), capability names (the host's
//! catalogue), fixed outcome words. Never an incident id, an alert label or free text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use themis_agent::RuntimeObserver;
use themis_agent::escalation::Escalation;
use themis_agent::triage::Selection;
use themis_core::fsm::{AgentState, Event, StateKind};
use themis_sandbox::executor::{ExecutionReport, PhaseRecord};
use themis_sandbox::{CallMode, CallOutcome};

/// Every state an agent can be in, so each agent exports all of them (0 or 1).
const STATES: [StateKind; 6] = themis_core::fsm::STATES;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EffectLabels {
    runbook: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabel {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RailLabels {
    agent: String,
    rail: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    agent: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    agent: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    agent: String,
    decision: String,
    selector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    agent: String,
    runbook: String,
    result: String,
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    runbook: String,
    step: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    capability: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LlmLabels {
    agent: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    agent: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaderLabels {
    agent: String,
    host: String,
}

/// What became of an alert at the intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertOutcome {
    /// On the audit and in its agent's queue.
    Accepted,
    /// No agent owns it: recorded, not triaged.
    Unrouted,
    /// Its agent's queue was full: 429.
    QueueFull,
    /// A `resolved` notification, recorded on its incident.
    Resolved,
    /// An authenticated notification that could not be taken (413, 400): recorded, lost.
    Refused,
}

impl AlertOutcome {
    fn word(self) -> &'static str {
        match self {
            AlertOutcome::Accepted => "accepted",
            AlertOutcome::Unrouted => "unrouted",
            AlertOutcome::QueueFull => "queue-full",
            AlertOutcome::Resolved => "resolved",
            AlertOutcome::Refused => "refused",
        }
    }
}

/// The agent label of an alert no agent owns.
pub const NO_AGENT: &str = "none";

pub struct Metrics {
    registry: Registry,
    agent_state: Family<StateLabels, Gauge>,
    leader: Family<LeaderLabels, Gauge>,
    state_since: Family<AgentLabel, Gauge<f64, AtomicU64>>,
    alerts: Family<OutcomeLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    runs: Family<RunLabels, Counter>,
    phase_seconds: Family<PhaseLabels, Histogram>,
    calls: Family<CallLabels, Counter>,
    escalations: Family<AgentLabel, Counter>,
    guard_blocked: Family<RailLabels, Counter>,
    breakers_opened: Family<AgentLabel, Counter>,
    effectiveness: Family<EffectLabels, Counter>,
    llm_requests: Family<LlmLabels, Counter>,
    llm_tokens: Family<TokenLabels, Counter>,
    llm_seconds: Histogram,
    audit_appends: Family<ResultLabel, Counter>,
    audit_checkpoint_seq: Gauge,
    audit_bytes: Gauge,
    audit_segments: Gauge,
    audit_checkpoint_time: Gauge<f64, AtomicU64>,
    audit_append_seconds: Histogram,
    approvals_pending: Gauge,
    oldest_pending: Gauge<f64, AtomicU64>,
    approval_wait_seconds: Histogram,
    /// Pending proposals by incident: when requested, when they expire. Bounded.
    pending: Mutex<BTreeMap<String, (SystemTime, SystemTime)>>,
}

/// The most pending approvals the metrics remember (the oldest are forgotten past it).
const MAX_PENDING: usize = 10_000;

fn seconds_histogram() -> Histogram {
    // 0.1 ms … ~3.3 s: an fsynced append to a long runbook phase.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Metrics {
    /// The metrics of a service running `agents` (each starts `idle`).
    pub fn new(agents: &[String]) -> Metrics {
        let mut registry = Registry::with_prefix("themis");
        let agent_state = Family::<StateLabels, Gauge>::default();
        registry.register(
            "agent_state",
            "1 for the state each agent is in now, 0 for the others",
            agent_state.clone(),
        );
        let leader = Family::<LeaderLabels, Gauge>::default();
        registry.register(
            "agent_leader",
            "1 for each agent this host leads (holds the shared state of); absent on a host with state of its own",
            leader.clone(),
        );
        let state_since = Family::<AgentLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "agent_state_since_seconds",
            "When each agent entered its current state (unix seconds; time() minus this is the time in state)",
            state_since.clone(),
        );
        let alerts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "alerts",
            "Alerts taken in, by owning agent (none: unowned) and outcome (accepted, unrouted, queue-full, resolved, refused: an authenticated notification that could not be taken)",
            alerts.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Triage decisions for new incidents, by decision (runbook, escalate) and selector (rules, llm)",
            decisions.clone(),
        );
        let runs = Family::<RunLabels, Counter>::default();
        registry.register(
            "runbook_runs",
            "Runbook and probe executions, by result (succeeded, precondition-failed, rolled-back, rollback-failed, halted) and mode (live, dry-run)",
            runs.clone(),
        );
        let phase_seconds =
            Family::<PhaseLabels, Histogram>::new_with_constructor(seconds_histogram as fn() -> _);
        registry.register(
            "step_phase_seconds",
            "How long each step phase ran in the sandbox",
            phase_seconds.clone(),
        );
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "capability_calls",
            "Capability calls from steps, by outcome (ok, error, timeout, refused, would-do)",
            calls.clone(),
        );
        let escalations = Family::<AgentLabel, Counter>::default();
        registry.register(
            "escalations",
            "Incidents handed to a human",
            escalations.clone(),
        );
        let guard_blocked = Family::<RailLabels, Counter>::default();
        registry.register(
            "guard_blocked",
            "Runs a guard rail held back (target-busy, cooldown, circuit-breaker, backoff, rate-limit): the incident went to a human",
            guard_blocked.clone(),
        );
        let breakers_opened = Family::<AgentLabel, Counter>::default();
        registry.register(
            "guard_breakers_opened",
            "Circuit breakers opened by failed runs on one target",
            breakers_opened.clone(),
        );
        let effectiveness = Family::<EffectLabels, Counter>::default();
        registry.register(
            "runbook_effectiveness",
            "Successful runbook runs by whether they fixed the alert (effective, ineffective, unknown: no signal)",
            effectiveness.clone(),
        );
        let llm_requests = Family::<LlmLabels, Counter>::default();
        registry.register(
            "llm_requests",
            "Requests to the triage model, by result (ok, or the failure's code)",
            llm_requests.clone(),
        );
        let llm_tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "llm_tokens",
            "Tokens the triage model reported using, by kind (prompt, completion)",
            llm_tokens.clone(),
        );
        let llm_seconds = seconds_histogram();
        registry.register(
            "llm_request_seconds",
            "How long one request to the triage model took",
            llm_seconds.clone(),
        );
        let audit_checkpoint_seq = Gauge::default();
        registry.register(
            "audit_checkpoint_seq",
            "The audit record the newest signed checkpoint covers (compare with the file: a chain that ends before it was cut)",
            audit_checkpoint_seq.clone(),
        );
        let audit_bytes = Gauge::default();
        registry.register(
            "audit_bytes",
            "The audit's size on disk: its sealed segments and the active file (kept within limits.audit_max_bytes, except what open work needs)",
            audit_bytes.clone(),
        );
        let audit_segments = Gauge::default();
        registry.register(
            "audit_segments",
            "The audit's sealed segments on disk",
            audit_segments.clone(),
        );
        let audit_checkpoint_time = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "audit_checkpoint_time_seconds",
            "When the newest signed checkpoint of the audit chain was made (unix seconds)",
            audit_checkpoint_time.clone(),
        );
        let audit_appends = Family::<ResultLabel, Counter>::default();
        registry.register(
            "audit_appends",
            "Audit records appended, by result (ok, failed: nothing acts on a record not written)",
            audit_appends.clone(),
        );
        let audit_append_seconds = seconds_histogram();
        registry.register(
            "audit_append_seconds",
            "How long one audit append took, its fsync included",
            audit_append_seconds.clone(),
        );
        // A gauge of 1 rather than an OpenMetrics `info`: Prometheus-format tools read it too.
        let build = Family::<VersionLabel, Gauge>::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("build_info", "The running build (always 1)", build);
        let approvals_pending = Gauge::default();
        registry.register(
            "approvals_pending",
            "Proposals waiting for a human answer (not yet answered, not expired)",
            approvals_pending.clone(),
        );
        let oldest_pending = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "approval_oldest_pending_seconds",
            "How long the oldest pending proposal has waited (0: none waits)",
            oldest_pending.clone(),
        );
        let approval_wait_seconds = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            "approval_wait_seconds",
            "How long an answered proposal waited for its human answer",
            approval_wait_seconds.clone(),
        );
        let metrics = Metrics {
            registry,
            agent_state,
            leader,
            state_since,
            alerts,
            decisions,
            runs,
            phase_seconds,
            calls,
            escalations,
            guard_blocked,
            breakers_opened,
            effectiveness,
            llm_requests,
            llm_tokens,
            llm_seconds,
            audit_appends,
            audit_checkpoint_seq,
            audit_bytes,
            audit_segments,
            audit_checkpoint_time,
            audit_append_seconds,
            approvals_pending,
            oldest_pending,
            approval_wait_seconds,
            pending: Mutex::new(BTreeMap::new()),
        };
        for agent in agents {
            metrics.set_state(agent, StateKind::Idle);
        }
        metrics
    }

    fn set_state(&self, agent: &str, now: StateKind) {
        for kind in STATES {
            self.agent_state
                .get_or_create(&StateLabels {
                    agent: agent.to_owned(),
                    state: kind.to_string(),
                })
                .set(i64::from(kind == now));
        }
        self.state_since
            .get_or_create(&AgentLabel {
                agent: agent.to_owned(),
            })
            .set(unix_now());
    }

    /// What became of one alert at the intake.
    pub fn alert(&self, agent: Option<&str>, outcome: AlertOutcome) {
        self.alerts
            .get_or_create(&OutcomeLabels {
                agent: agent.unwrap_or(NO_AGENT).to_owned(),
                outcome: outcome.word().to_owned(),
            })
            .inc();
    }

    /// One audit append, as the audit log reports it.
    /// The audit chain was checkpointed up to record `seq`.
    pub fn audit_checkpoint(&self, seq: u64) {
        self.audit_checkpoint_seq
            .set(i64::try_from(seq).unwrap_or(i64::MAX));
        self.audit_checkpoint_time.set(unix_now());
    }

    /// The audit's size now: its sealed segments and their bytes with the active file's.
    pub fn audit_size(&self, segments: usize, bytes: u64) {
        self.audit_segments
            .set(i64::try_from(segments).unwrap_or(i64::MAX));
        self.audit_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn audit_append(&self, took: Duration, ok: bool) {
        self.audit_appends
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "failed" }.to_owned(),
            })
            .inc();
        self.audit_append_seconds.observe(took.as_secs_f64());
    }

    /// This host leads `agents`, as `host` (the shared state's holder).
    pub fn leading(&self, agents: &[String], host: &str) {
        for agent in agents {
            self.leader
                .get_or_create(&LeaderLabels {
                    agent: agent.clone(),
                    host: host.to_owned(),
                })
                .set(1);
        }
    }

    /// Proposals already waiting when the service started (read once from the store).
    pub fn pending_at_start(&self, incidents: &[themis_agent::store::Incident]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for i in incidents {
            // An adjusted plan's incident carries the answer to the proposal before it: what
            // counts is whether the current proposal is still open to an answer.
            if let Some(p) = &i.proposal
                && i.refuses_answer(&p.id).is_none()
            {
                pending.insert(i.id.clone(), (p.requested_at, p.expires_at));
            }
        }
        self.approvals_pending
            .set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
    }

    /// A proposal was answered: it is no longer pending, and how long it waited is observed.
    fn answered(&self, incident: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((requested, _)) = pending.remove(incident) {
            let waited = SystemTime::now()
                .duration_since(requested)
                .unwrap_or_default();
            self.approval_wait_seconds.observe(waited.as_secs_f64());
        }
        self.approvals_pending
            .set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        {
            // An expired proposal can no longer be answered: it is not pending.
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let now = SystemTime::now();
            pending.retain(|_, (_, expires)| *expires > now);
            self.approvals_pending
                .set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
            let oldest = pending.values().map(|(requested, _)| *requested).min();
            self.oldest_pending.set(
                oldest
                    .and_then(|t| now.duration_since(t).ok())
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
            );
        }
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The OpenMetrics text as Prometheus' older text format (0.0.4), for clients that do not ask
/// for OpenMetrics (`curl`, `promtool check metrics`): a counter's family is named with its
/// `_total` suffix, and the OpenMetrics-only `# UNIT` and `# EOF` lines go.
pub fn text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The metrics, for Prometheus to scrape: OpenMetrics when the client asks for it (Prometheus
/// does), Prometheus' text format 0.0.4 otherwise.
#[utoipa::path(get, path = "/metrics", tag = "probes",
    responses((status = 200, description = "every metric, in OpenMetrics 1.0.0 when `Accept` names it, else in the text format 0.0.4", content_type = "text/plain", body = String)))]
pub async fn scrape(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<crate::app::AppState>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if let Ok((sealed, active)) = state.runtime.audit().segments() {
        state.metrics.audit_size(
            sealed.len(),
            sealed.iter().map(|s| s.bytes).sum::<u64>() + active,
        );
    }
    match state.metrics.encode() {
        Ok(text) if openmetrics => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Ok(text) => ([(header::CONTENT_TYPE, TEXT_FORMAT)], text_format(&text)).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics could not be encoded\n",
        )
            .into_response(),
    }
}

fn call_outcome(mode: CallMode, outcome: &CallOutcome) -> &'static str {
    match (mode, outcome) {
        (CallMode::WouldDo, _) => "would-do",
        (_, CallOutcome::Denied { .. }) | (CallMode::Refused, _) => "refused",
        (_, CallOutcome::Ok { .. }) => "ok",
        (_, CallOutcome::Error { error }) => {
            // The host's own call timeout answers `unavailable: … did not answer within …`.
            if error.to_string().contains("did not answer within") {
                "timeout"
            } else {
                "error"
            }
        }
    }
}

impl RuntimeObserver for Metrics {
    fn transition(&self, agent: &str, _from: &AgentState, event: &Event, to: &AgentState) {
        self.set_state(agent, to.kind());
        match event {
            Event::ApprovalGranted { incident, .. }
            | Event::ApprovalAdjusted { incident, .. }
            | Event::ApprovalRejected { incident } => self.answered(incident),
            _ => {}
        }
    }

    fn phase(&self, _agent: &str, runbook: &str, record: &PhaseRecord) {
        self.phase_seconds
            .get_or_create(&PhaseLabels {
                runbook: runbook.to_owned(),
                step: record.step.clone(),
                phase: record.phase.to_string(),
            })
            .observe(record.duration_us as f64 / 1e6);
        for call in &record.calls {
            self.calls
                .get_or_create(&CallLabels {
                    capability: call.capability.clone(),
                    outcome: call_outcome(call.mode, &call.outcome).to_owned(),
                })
                .inc();
        }
    }

    fn escalation(&self, escalation: &Escalation) {
        if let Some(proposal) = &escalation.proposal {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.len() >= MAX_PENDING
                && let Some(oldest) = pending
                    .iter()
                    .min_by_key(|(_, (requested, _))| *requested)
                    .map(|(id, _)| id.clone())
            {
                pending.remove(&oldest);
            }
            pending.insert(
                escalation.incident.clone(),
                (proposal.requested_at, proposal.expires_at),
            );
            self.approvals_pending
                .set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
        }
        self.escalations
            .get_or_create(&AgentLabel {
                agent: escalation.agent.clone(),
            })
            .inc();
    }

    fn guard_blocked(&self, agent: &str, blocked: &themis_core::guard::Blocked) {
        self.guard_blocked
            .get_or_create(&RailLabels {
                agent: agent.to_owned(),
                rail: blocked.rail.as_str().to_owned(),
            })
            .inc();
    }

    fn verification(&self, _agent: &str, runbook: &str, effect: themis_core::verify::Effect) {
        self.effectiveness
            .get_or_create(&EffectLabels {
                runbook: runbook.to_owned(),
                outcome: effect.to_string(),
            })
            .inc();
    }

    fn breaker_opened(&self, agent: &str, _breaker: &themis_core::guard::Breaker) {
        self.breakers_opened
            .get_or_create(&AgentLabel {
                agent: agent.to_owned(),
            })
            .inc();
    }

    fn selection(&self, agent: &str, selection: &Selection) {
        for attempt in &selection.attempts {
            self.llm_requests
                .get_or_create(&LlmLabels {
                    agent: agent.to_owned(),
                    result: attempt.error_code.unwrap_or("ok").to_owned(),
                })
                .inc();
            self.llm_seconds.observe(attempt.latency_ms as f64 / 1000.0);
            if let Some(usage) = &attempt.usage {
                for (kind, n) in [
                    ("prompt", usage.prompt_tokens),
                    ("completion", usage.completion_tokens),
                ] {
                    self.llm_tokens
                        .get_or_create(&TokenLabels {
                            agent: agent.to_owned(),
                            kind: kind.to_owned(),
                        })
                        .inc_by(n);
                }
            }
        }
        self.decisions
            .get_or_create(&DecisionLabels {
                agent: agent.to_owned(),
                // Not the runbook id: a model may name one outside the catalog.
                decision: if selection.runbook.is_some() {
                    "runbook"
                } else {
                    "escalate"
                }
                .to_owned(),
                selector: if selection.selector == "llm" {
                    "llm"
                } else {
                    "rules"
                }
                .to_owned(),
            })
            .inc();
    }

    fn execution(&self, agent: &str, report: &ExecutionReport) {
        self.runs
            .get_or_create(&RunLabels {
                agent: agent.to_owned(),
                runbook: report.runbook_id.clone(),
                result: report.outcome.status().to_owned(),
                mode: if report.dry_run { "dry-run" } else { "live" }.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_agent_exports_every_state_and_transitions_move_the_one() {
        let m = Metrics::new(&["kafka".to_owned()]);
        let text = m.encode().unwrap_or_default();
        assert!(
            text.contains(r#"themis_agent_state{agent="kafka",state="idle"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"themis_agent_state{agent="kafka",state="triaging"} 0"#));
        m.transition(
            "kafka",
            &AgentState::Idle,
            &Event::AlertReceived {
                incident: "inc-1".into(),
            },
            &AgentState::Triaging {
                incident: "inc-1".into(),
            },
        );
        m.alert(None, AlertOutcome::Unrouted);
        let text = m.encode().unwrap_or_default();
        assert!(text.contains(r#"themis_agent_state{agent="kafka",state="triaging"} 1"#));
        assert!(text.contains(r#"themis_agent_state{agent="kafka",state="idle"} 0"#));
        assert!(text.contains(r#"themis_alerts_total{agent="none",outcome="unrouted"} 1"#));
        assert!(!text.contains("inc-1"), "no incident id is a label value");
        assert!(text.ends_with("# EOF\n"));
        let old = text_format(&text);
        assert!(
            old.contains("# TYPE themis_alerts_total counter\n"),
            "{old}"
        );
        assert!(
            old.contains("# HELP themis_alerts_total Alerts taken in"),
            "{old}"
        );
        assert!(old.contains("# TYPE themis_agent_state gauge\n"), "{old}");
        assert!(!old.contains("# EOF"));
    }

    #[test]
    fn an_adjusted_plan_waiting_for_its_approval_counts_as_pending() {
        use themis_agent::store::{Answer, AnswerKind, Incident, IncidentStatus};
        use themis_core::identity::Identity;
        use themis_core::policy::{ApprovalRequest, Plan};
        let alert = themis_core::types::Alert {
            name: "PostgresLockWaits".into(),
            fingerprint: "f".into(),
            labels: vec![],
            annotations: vec![],
            source: None,
        };
        let now = SystemTime::now();
        let proposal = |id: &str| {
            ApprovalRequest::new(
                id.into(),
                Plan {
                    runbook_id: "terminate-blocker".into(),
                    runbook_version: "1.2.0".into(),
                    runbook_digest: "sha256:00".into(),
                    params: Default::default(),
                    target: "f".into(),
                },
                Identity::agent("postgres"),
                now,
                std::time::Duration::from_secs(900),
            )
        };
        let mut adjusted = Incident::opened("inc-01".into(), "postgres".into(), alert.clone(), now);
        adjusted.status = IncidentStatus::PendingApproval;
        adjusted.answer = Some(Answer {
            approval_id: "apr-01-aa".into(),
            kind: AnswerKind::Adjusted,
            by: Identity::scenario("bob"),
            at: now,
            execution_id: None,
        });
        adjusted.proposal = Some(proposal("apr-01-bb"));
        let mut answered = Incident::opened("inc-02".into(), "postgres".into(), alert, now);
        answered.status = IncidentStatus::Executing;
        answered.proposal = Some(proposal("apr-02-aa"));
        answered.answer = Some(Answer {
            approval_id: "apr-02-aa".into(),
            kind: AnswerKind::Approved,
            by: Identity::scenario("bob"),
            at: now,
            execution_id: Some("exe-1".into()),
        });
        let m = Metrics::new(&["postgres".to_owned()]);
        m.pending_at_start(&[adjusted, answered]);
        let text = m.encode().unwrap_or_default();
        assert!(text.contains("themis_approvals_pending 1"), "{text}");
    }
}
