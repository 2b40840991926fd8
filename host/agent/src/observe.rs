//! What a runtime tells the person watching it (the CLI prints, the test kit records).

use crate::escalation::Escalation;
use crate::triage::Selection;
use themis_core::fsm::{AgentState, Event};
use themis_core::guard::{Blocked, Breaker};
use themis_core::types::Alert;
use themis_core::verify::Effect;
use themis_sandbox::executor::{ExecutionReport, PhaseRecord};

pub trait RuntimeObserver: Send + Sync {
    fn transition(&self, _agent: &str, _from: &AgentState, _event: &Event, _to: &AgentState) {}
    fn phase(&self, _agent: &str, _runbook: &str, _record: &PhaseRecord) {}
    fn escalation(&self, _escalation: &Escalation) {}
    /// The selector's answer for a new incident (before policy judges it).
    fn selection(&self, _agent: &str, _selection: &Selection) {}
    /// An execution (a probe or a runbook) finished.
    fn execution(&self, _agent: &str, _report: &ExecutionReport) {}
    /// A firing alert no agent owns reached the humans (once per fingerprint and window).
    fn unowned(&self, _alert: &Alert) {}
    /// A guard rail held a run back (the incident went to a human instead).
    fn guard_blocked(&self, _agent: &str, _blocked: &Blocked) {}
    /// A run's failure opened a circuit breaker.
    fn breaker_opened(&self, _agent: &str, _breaker: &Breaker) {}
    /// A successful run's fix was judged: effective, ineffective or unknown.
    fn verification(&self, _agent: &str, _runbook: &str, _effect: Effect) {}
}

/// Tells nobody.
pub struct Quiet;
impl RuntimeObserver for Quiet {}

/// Tells every observer it holds, in order (the service: its event stream and its metrics).
pub struct Fanout(pub Vec<std::sync::Arc<dyn RuntimeObserver>>);

impl RuntimeObserver for Fanout {
    fn transition(&self, agent: &str, from: &AgentState, event: &Event, to: &AgentState) {
        for o in &self.0 {
            o.transition(agent, from, event, to);
        }
    }
    fn phase(&self, agent: &str, runbook: &str, record: &PhaseRecord) {
        for o in &self.0 {
            o.phase(agent, runbook, record);
        }
    }
    fn escalation(&self, escalation: &Escalation) {
        for o in &self.0 {
            o.escalation(escalation);
        }
    }
    fn selection(&self, agent: &str, selection: &Selection) {
        for o in &self.0 {
            o.selection(agent, selection);
        }
    }
    fn execution(&self, agent: &str, report: &ExecutionReport) {
        for o in &self.0 {
            o.execution(agent, report);
        }
    }
    fn unowned(&self, alert: &Alert) {
        for o in &self.0 {
            o.unowned(alert);
        }
    }
    fn guard_blocked(&self, agent: &str, blocked: &Blocked) {
        for o in &self.0 {
            o.guard_blocked(agent, blocked);
        }
    }
    fn breaker_opened(&self, agent: &str, breaker: &Breaker) {
        for o in &self.0 {
            o.breaker_opened(agent, breaker);
        }
    }
    fn verification(&self, agent: &str, runbook: &str, effect: Effect) {
        for o in &self.0 {
            o.verification(agent, runbook, effect);
        }
    }
}
