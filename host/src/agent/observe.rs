//! What a runtime tells the person watching it (the CLI prints, tests collect).

use crate::escalation::Escalation;
use crate::executor::PhaseRecord;
use crate::fsm::{AgentState, Event};
use crate::triage::Selection;

pub trait RuntimeObserver: Send + Sync {
    fn transition(&self, _agent: &str, _from: &AgentState, _event: &Event, _to: &AgentState) {}
    fn phase(&self, _agent: &str, _runbook: &str, _record: &PhaseRecord) {}
    fn escalation(&self, _escalation: &Escalation) {}
    /// The selector's answer for a new incident (before policy judges it).
    fn selection(&self, _agent: &str, _selection: &Selection) {}
}

/// Tells nobody.
pub struct Quiet;
impl RuntimeObserver for Quiet {}
