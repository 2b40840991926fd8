//! The agent state machine. Pure: states, events, and one transition function; no I/O. The
//! table below is the whole truth — `themis fsm` prints it, the docs are generated from it, and a
//! test walks every (state, event) pair against it.

use crate::types::Phase;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What an agent is doing now. Every state but `idle` names its incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum AgentState {
    Idle,
    Triaging {
        incident: String,
    },
    ExecutingRunbook {
        incident: String,
        runbook: String,
        step: String,
        phase: Phase,
    },
    RollingBack {
        incident: String,
        runbook: String,
        step: String,
    },
    EscalatingHuman {
        incident: String,
        reason: String,
    },
    /// The runbook succeeded; the agent sets up the watch on whether it fixed the alert.
    Verifying {
        incident: String,
        runbook: String,
    },
}

/// Everything that moves an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    AlertReceived {
        incident: String,
    },
    RunbookChosen {
        runbook: String,
        step: String,
    },
    ConfidenceTooLow {
        reason: String,
    },
    ApprovalRequired {
        reason: String,
    },
    /// Triage found nothing to do for this alert (no route, no candidate).
    NothingToDo,
    PhaseStarted {
        step: String,
        phase: Phase,
    },
    StepFailed {
        step: String,
        reason: String,
    },
    /// The runbook ended without acting (a precondition did not hold) or without resolving.
    RunbookStopped {
        reason: String,
    },
    RollbackDone,
    RollbackFailed {
        reason: String,
    },
    /// Every step of the runbook passed: whether it fixed the alert is verified next.
    RunbookSucceeded,
    /// The incident waits without the agent: an escalation delivered (a pending approval), or a
    /// fix being verified (its signals arrive later).
    Parked,
    /// A fix's verification ended `effective` or `unknown`.
    FixVerified {
        incident: String,
        effect: crate::verify::Effect,
    },
    /// A fix's verification ended `ineffective`: a human is told.
    FixIneffective {
        incident: String,
        reason: String,
    },
    ApprovalGranted {
        incident: String,
        runbook: String,
        step: String,
    },
    ApprovalAdjusted {
        incident: String,
        runbook: String,
        step: String,
    },
    ApprovalRejected {
        incident: String,
    },
    /// The host found this incident unfinished when it started (a crash or a kill mid-way): the
    /// agent tells a human instead of guessing where it stood.
    Interrupted {
        incident: String,
        reason: String,
    },
    /// The host found this incident's runbook cut off mid-way and its record says exactly where:
    /// the walk goes on from there (`themis_sandbox::executor::Resume`).
    Resumed {
        incident: String,
        runbook: String,
        step: String,
    },
}

/// A state without its data, for the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StateKind {
    Idle,
    Triaging,
    ExecutingRunbook,
    RollingBack,
    EscalatingHuman,
    Verifying,
}

/// An event without its data, for the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    AlertReceived,
    RunbookChosen,
    ConfidenceTooLow,
    ApprovalRequired,
    NothingToDo,
    PhaseStarted,
    StepFailed,
    RunbookStopped,
    RollbackDone,
    RollbackFailed,
    RunbookSucceeded,
    Parked,
    FixVerified,
    FixIneffective,
    ApprovalGranted,
    ApprovalAdjusted,
    ApprovalRejected,
    Interrupted,
    Resumed,
}

use EventKind as E;
use StateKind as S;

/// Every legal move. Anything else is an illegal transition.
pub const TABLE: &[(StateKind, EventKind, StateKind)] = &[
    (S::Idle, E::AlertReceived, S::Triaging),
    (S::Idle, E::ApprovalGranted, S::ExecutingRunbook),
    (S::Idle, E::ApprovalAdjusted, S::ExecutingRunbook),
    (S::Idle, E::ApprovalRejected, S::Idle),
    (S::Triaging, E::RunbookChosen, S::ExecutingRunbook),
    (S::Triaging, E::ConfidenceTooLow, S::EscalatingHuman),
    (S::Triaging, E::ApprovalRequired, S::EscalatingHuman),
    (S::Triaging, E::NothingToDo, S::Idle),
    (S::ExecutingRunbook, E::PhaseStarted, S::ExecutingRunbook),
    // A follow-up runbook (e.g. the fix a diagnosis points to) chosen within policy.
    (S::ExecutingRunbook, E::RunbookChosen, S::ExecutingRunbook),
    (S::ExecutingRunbook, E::StepFailed, S::RollingBack),
    (S::ExecutingRunbook, E::RunbookStopped, S::EscalatingHuman),
    (S::ExecutingRunbook, E::RunbookSucceeded, S::Verifying),
    (S::ExecutingRunbook, E::ApprovalRequired, S::EscalatingHuman),
    (S::ExecutingRunbook, E::ConfidenceTooLow, S::EscalatingHuman),
    (S::RollingBack, E::PhaseStarted, S::RollingBack),
    (S::RollingBack, E::RollbackDone, S::Idle),
    (S::RollingBack, E::RollbackFailed, S::EscalatingHuman),
    (S::EscalatingHuman, E::Parked, S::Idle),
    // Verification: decided at once when there is nothing to wait for, else parked and decided
    // later, when a signal arrives or the window closes.
    (S::Verifying, E::Parked, S::Idle),
    (S::Verifying, E::FixVerified, S::Idle),
    (S::Verifying, E::FixIneffective, S::EscalatingHuman),
    (S::Idle, E::FixVerified, S::Idle),
    (S::Idle, E::FixIneffective, S::EscalatingHuman),
    // Recovery at start: whatever the agent was doing when the host stopped, a human is told.
    (S::Idle, E::Interrupted, S::EscalatingHuman),
    (S::Triaging, E::Interrupted, S::EscalatingHuman),
    (S::ExecutingRunbook, E::Interrupted, S::EscalatingHuman),
    (S::RollingBack, E::Interrupted, S::EscalatingHuman),
    (S::EscalatingHuman, E::Interrupted, S::EscalatingHuman),
    (S::Verifying, E::Interrupted, S::EscalatingHuman),
    // Recovery at start: a runbook whose record shows where it stood goes on from there.
    (S::Idle, E::Resumed, S::ExecutingRunbook),
    (S::ExecutingRunbook, E::Resumed, S::ExecutingRunbook),
];

impl AgentState {
    pub fn kind(&self) -> StateKind {
        match self {
            AgentState::Idle => S::Idle,
            AgentState::Triaging { .. } => S::Triaging,
            AgentState::ExecutingRunbook { .. } => S::ExecutingRunbook,
            AgentState::RollingBack { .. } => S::RollingBack,
            AgentState::EscalatingHuman { .. } => S::EscalatingHuman,
            AgentState::Verifying { .. } => S::Verifying,
        }
    }

    pub fn incident(&self) -> Option<&str> {
        match self {
            AgentState::Idle => None,
            AgentState::Triaging { incident }
            | AgentState::ExecutingRunbook { incident, .. }
            | AgentState::RollingBack { incident, .. }
            | AgentState::EscalatingHuman { incident, .. }
            | AgentState::Verifying { incident, .. } => Some(incident),
        }
    }
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::AlertReceived { .. } => E::AlertReceived,
            Event::RunbookChosen { .. } => E::RunbookChosen,
            Event::ConfidenceTooLow { .. } => E::ConfidenceTooLow,
            Event::ApprovalRequired { .. } => E::ApprovalRequired,
            Event::NothingToDo => E::NothingToDo,
            Event::PhaseStarted { .. } => E::PhaseStarted,
            Event::StepFailed { .. } => E::StepFailed,
            Event::RunbookStopped { .. } => E::RunbookStopped,
            Event::RollbackDone => E::RollbackDone,
            Event::RollbackFailed { .. } => E::RollbackFailed,
            Event::RunbookSucceeded => E::RunbookSucceeded,
            Event::Parked => E::Parked,
            Event::FixVerified { .. } => E::FixVerified,
            Event::FixIneffective { .. } => E::FixIneffective,
            Event::ApprovalGranted { .. } => E::ApprovalGranted,
            Event::ApprovalAdjusted { .. } => E::ApprovalAdjusted,
            Event::ApprovalRejected { .. } => E::ApprovalRejected,
            Event::Interrupted { .. } => E::Interrupted,
            Event::Resumed { .. } => E::Resumed,
        }
    }
}

/// An event that is not legal in the current state. It is an error, and it is audited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition: `{event}` in state `{state}`")]
pub struct IllegalTransition {
    pub state: String,
    pub event: String,
}

/// The next state, or the refusal.
pub fn transition(state: &AgentState, event: &Event) -> Result<AgentState, IllegalTransition> {
    let legal = TABLE
        .iter()
        .find(|(from, on, _)| *from == state.kind() && *on == event.kind());
    if legal.is_none() {
        return Err(IllegalTransition {
            state: state.kind().to_string(),
            event: event.kind().to_string(),
        });
    }
    let incident = state.incident().unwrap_or_default().to_owned();
    let runbook = match state {
        AgentState::ExecutingRunbook { runbook, .. } | AgentState::RollingBack { runbook, .. } => {
            runbook.clone()
        }
        _ => String::new(),
    };
    Ok(match event {
        Event::AlertReceived { incident } => AgentState::Triaging {
            incident: incident.clone(),
        },
        Event::RunbookChosen { runbook, step } => AgentState::ExecutingRunbook {
            incident,
            runbook: runbook.clone(),
            step: step.clone(),
            phase: Phase::Precondition,
        },
        Event::ApprovalGranted {
            incident,
            runbook,
            step,
        }
        | Event::ApprovalAdjusted {
            incident,
            runbook,
            step,
        }
        | Event::Resumed {
            incident,
            runbook,
            step,
        } => AgentState::ExecutingRunbook {
            incident: incident.clone(),
            runbook: runbook.clone(),
            step: step.clone(),
            phase: Phase::Precondition,
        },
        Event::RunbookSucceeded => AgentState::Verifying { incident, runbook },
        Event::Interrupted { incident, reason } | Event::FixIneffective { incident, reason } => {
            AgentState::EscalatingHuman {
                incident: incident.clone(),
                reason: reason.clone(),
            }
        }
        Event::ConfidenceTooLow { reason }
        | Event::ApprovalRequired { reason }
        | Event::RunbookStopped { reason }
        | Event::RollbackFailed { reason } => AgentState::EscalatingHuman {
            incident,
            reason: reason.clone(),
        },
        Event::PhaseStarted { step, phase } => match state.kind() {
            S::RollingBack => AgentState::RollingBack {
                incident,
                runbook,
                step: step.clone(),
            },
            _ => AgentState::ExecutingRunbook {
                incident,
                runbook,
                step: step.clone(),
                phase: *phase,
            },
        },
        Event::StepFailed { step, .. } => AgentState::RollingBack {
            incident,
            runbook,
            step: step.clone(),
        },
        Event::NothingToDo
        | Event::RollbackDone
        | Event::FixVerified { .. }
        | Event::Parked
        | Event::ApprovalRejected { .. } => AgentState::Idle,
    })
}

impl fmt::Display for StateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            S::Idle => "idle",
            S::Triaging => "triaging",
            S::ExecutingRunbook => "executing-runbook",
            S::RollingBack => "rolling-back",
            S::EscalatingHuman => "escalating-human",
            S::Verifying => "verifying",
        })
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            E::AlertReceived => "alert-received",
            E::RunbookChosen => "runbook-chosen",
            E::ConfidenceTooLow => "confidence-too-low",
            E::ApprovalRequired => "approval-required",
            E::NothingToDo => "nothing-to-do",
            E::PhaseStarted => "phase-started",
            E::StepFailed => "step-failed",
            E::RunbookStopped => "runbook-stopped",
            E::RollbackDone => "rollback-done",
            E::RollbackFailed => "rollback-failed",
            E::RunbookSucceeded => "runbook-succeeded",
            E::Parked => "parked",
            E::FixVerified => "fix-verified",
            E::FixIneffective => "fix-ineffective",
            E::ApprovalGranted => "approval-granted",
            E::ApprovalAdjusted => "approval-adjusted",
            E::ApprovalRejected => "approval-rejected",
            E::Interrupted => "interrupted",
            E::Resumed => "resumed",
        })
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentState::Idle => f.write_str("idle"),
            AgentState::Triaging { incident } => write!(f, "triaging ({incident})"),
            AgentState::ExecutingRunbook {
                runbook,
                step,
                phase,
                ..
            } => write!(f, "executing-runbook: {runbook} / {step} / {phase}"),
            AgentState::RollingBack { runbook, step, .. } => {
                write!(f, "rolling-back: {runbook} / {step}")
            }
            AgentState::EscalatingHuman { reason, .. } => write!(f, "escalating-human: {reason}"),
            AgentState::Verifying { runbook, .. } => write!(f, "verifying: {runbook}"),
        }
    }
}

pub const STATES: [StateKind; 6] = [
    S::Idle,
    S::Triaging,
    S::ExecutingRunbook,
    S::RollingBack,
    S::EscalatingHuman,
    S::Verifying,
];

pub const EVENTS: [EventKind; 19] = [
    E::AlertReceived,
    E::RunbookChosen,
    E::ConfidenceTooLow,
    E::ApprovalRequired,
    E::NothingToDo,
    E::PhaseStarted,
    E::StepFailed,
    E::RunbookStopped,
    E::RollbackDone,
    E::RollbackFailed,
    E::RunbookSucceeded,
    E::Parked,
    E::FixVerified,
    E::FixIneffective,
    E::ApprovalGranted,
    E::ApprovalAdjusted,
    E::ApprovalRejected,
    E::Interrupted,
    E::Resumed,
];

/// The table as text: `from --event--> to`, one line per move.
pub fn table_text() -> String {
    let width = STATES
        .iter()
        .map(|s| s.to_string().len())
        .max()
        .unwrap_or(0);
    TABLE
        .iter()
        .map(|(from, on, to)| format!("{:<width$}  --{on}-->  {to}\n", from.to_string()))
        .collect()
}

/// The table as a Mermaid state diagram.
pub fn mermaid() -> String {
    let mut out = String::from("stateDiagram-v2\n    [*] --> idle\n");
    for (from, on, to) in TABLE {
        out.push_str(&format!("    {from} --> {to}: {on}\n"));
    }
    out
}

/// The table as Graphviz DOT.
pub fn dot() -> String {
    let mut out = String::from("digraph agent {\n    rankdir=LR;\n");
    for (from, on, to) in TABLE {
        out.push_str(&format!("    \"{from}\" -> \"{to}\" [label=\"{on}\"];\n"));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_state(kind: StateKind) -> AgentState {
        let incident = "inc-1".to_string();
        match kind {
            S::Idle => AgentState::Idle,
            S::Triaging => AgentState::Triaging { incident },
            S::ExecutingRunbook => AgentState::ExecutingRunbook {
                incident,
                runbook: "rb".into(),
                step: "s".into(),
                phase: Phase::Action,
            },
            S::RollingBack => AgentState::RollingBack {
                incident,
                runbook: "rb".into(),
                step: "s".into(),
            },
            S::EscalatingHuman => AgentState::EscalatingHuman {
                incident,
                reason: "r".into(),
            },
            S::Verifying => AgentState::Verifying {
                incident,
                runbook: "rb".into(),
            },
        }
    }

    fn sample_event(kind: EventKind) -> Event {
        let s = || "x".to_string();
        match kind {
            E::AlertReceived => Event::AlertReceived {
                incident: "inc-2".into(),
            },
            E::RunbookChosen => Event::RunbookChosen {
                runbook: s(),
                step: s(),
            },
            E::ConfidenceTooLow => Event::ConfidenceTooLow { reason: s() },
            E::ApprovalRequired => Event::ApprovalRequired { reason: s() },
            E::NothingToDo => Event::NothingToDo,
            E::PhaseStarted => Event::PhaseStarted {
                step: s(),
                phase: Phase::Postcondition,
            },
            E::StepFailed => Event::StepFailed {
                step: s(),
                reason: s(),
            },
            E::RunbookStopped => Event::RunbookStopped { reason: s() },
            E::RollbackDone => Event::RollbackDone,
            E::RollbackFailed => Event::RollbackFailed { reason: s() },
            E::RunbookSucceeded => Event::RunbookSucceeded,
            E::Parked => Event::Parked,
            E::FixVerified => Event::FixVerified {
                incident: "inc-5".into(),
                effect: crate::verify::Effect::Effective,
            },
            E::FixIneffective => Event::FixIneffective {
                incident: "inc-5".into(),
                reason: s(),
            },
            E::ApprovalGranted => Event::ApprovalGranted {
                incident: "inc-3".into(),
                runbook: s(),
                step: s(),
            },
            E::ApprovalAdjusted => Event::ApprovalAdjusted {
                incident: "inc-3".into(),
                runbook: s(),
                step: s(),
            },
            E::ApprovalRejected => Event::ApprovalRejected {
                incident: "inc-3".into(),
            },
            E::Interrupted => Event::Interrupted {
                incident: "inc-4".into(),
                reason: s(),
            },
            E::Resumed => Event::Resumed {
                incident: "inc-1".into(),
                runbook: s(),
                step: s(),
            },
        }
    }

    #[test]
    fn every_pair_is_legal_exactly_when_the_table_says_so() {
        let mut legal = 0;
        for state in STATES {
            for event in EVENTS {
                let row = TABLE.iter().find(|(f, e, _)| *f == state && *e == event);
                let result = transition(&sample_state(state), &sample_event(event));
                match (row, result) {
                    (Some((_, _, to)), Ok(next)) => {
                        legal += 1;
                        assert_eq!(next.kind(), *to, "{state} --{event}-->");
                    }
                    (None, Err(e)) => {
                        assert_eq!(e.state, state.to_string());
                        assert_eq!(e.event, event.to_string());
                    }
                    (row, result) => panic!("{state} --{event}: table {row:?}, got {result:?}"),
                }
            }
        }
        assert_eq!(legal, TABLE.len());
    }

    #[test]
    fn the_state_carries_what_the_agent_is_doing() {
        let s = transition(
            &AgentState::Idle,
            &Event::AlertReceived {
                incident: "inc-9".into(),
            },
        )
        .expect("legal");
        let s = transition(
            &s,
            &Event::RunbookChosen {
                runbook: "check-broker-health".into(),
                step: "brokers-up".into(),
            },
        )
        .expect("legal");
        assert_eq!(
            s.to_string(),
            "executing-runbook: check-broker-health / brokers-up / precondition"
        );
        let s = transition(
            &s,
            &Event::PhaseStarted {
                step: "gc-pause".into(),
                phase: Phase::Action,
            },
        )
        .expect("legal");
        assert_eq!(s.incident(), Some("inc-9"));
        let s = transition(
            &s,
            &Event::ApprovalRequired {
                reason: "kafka.broker-restart is destructive".into(),
            },
        )
        .expect("legal");
        assert_eq!(
            s.to_string(),
            "escalating-human: kafka.broker-restart is destructive"
        );
        assert_eq!(
            transition(&s, &Event::Parked).expect("legal"),
            AgentState::Idle
        );
    }

    #[test]
    fn renderings_list_every_move() {
        assert_eq!(table_text().lines().count(), TABLE.len());
        assert_eq!(mermaid().matches(" --> ").count(), TABLE.len() + 1);
        assert!(dot().contains("\"idle\" -> \"triaging\" [label=\"alert-received\"]"));
    }
}
