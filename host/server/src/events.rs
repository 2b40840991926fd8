//! What the service tells watchers: every transition, phase and escalation of every agent as a
//! bounded broadcast (the `/api/v1/events` stream), and each agent's state with the time it
//! entered it (`/api/v1/agents`). A watcher that falls behind loses events (it is told how
//! many), never the host's memory.

use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;
use themis_agent::RuntimeObserver;
use themis_agent::escalation::Escalation;
use themis_core::fsm::{AgentState, Event};
use themis_core::redact::Redactor;
use themis_sandbox::executor::PhaseRecord;
use tokio::sync::broadcast;

/// Events kept for watchers that are behind.
pub const EVENT_BUFFER: usize = 1024;

/// Event streams open at once: each holds a connection and a place in the broadcast, so
/// watchers past this are turned away (429) rather than let grow without a bound.
pub const MAX_STREAMS: usize = 256;
/// Of [`MAX_STREAMS`], what only approvers may take: an intake token (the credential an alert
/// source stores) must not be able to shut on-call out of the page's live view.
pub const APPROVER_STREAMS: usize = 64;

/// One open event stream: its receiver and its place among [`MAX_STREAMS`], given back when
/// the stream ends.
pub struct Subscription {
    pub rx: broadcast::Receiver<StreamEvent>,
    _place: tokio::sync::OwnedSemaphorePermit,
    _reader_place: Option<tokio::sync::OwnedSemaphorePermit>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamEvent {
    /// `transition`, `phase` or `escalation`.
    pub kind: &'static str,
    pub agent: String,
    /// RFC 3339, UTC, milliseconds.
    pub at: String,
    pub data: Value,
}

/// An agent's state and when it entered it.
#[derive(Debug, Clone)]
pub struct Since {
    pub state: AgentState,
    pub since: SystemTime,
}

pub struct Events {
    tx: broadcast::Sender<StreamEvent>,
    since: Mutex<BTreeMap<String, Since>>,
    redactor: Redactor,
    streams: std::sync::Arc<tokio::sync::Semaphore>,
    /// The places readers may take: all but [`APPROVER_STREAMS`].
    reader_streams: std::sync::Arc<tokio::sync::Semaphore>,
}

fn now_text() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Events {
    pub fn new(redactor: Redactor) -> Events {
        let (tx, _) = broadcast::channel(EVENT_BUFFER);
        Events {
            tx,
            since: Mutex::new(BTreeMap::new()),
            redactor,
            streams: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
            reader_streams: std::sync::Arc::new(tokio::sync::Semaphore::new(
                MAX_STREAMS - APPROVER_STREAMS,
            )),
        }
    }

    /// A new stream of events, or `None` when [`MAX_STREAMS`] are open already.
    pub fn subscribe(&self, approver: bool) -> Option<Subscription> {
        let reader_place = if approver {
            None
        } else {
            Some(self.reader_streams.clone().try_acquire_owned().ok()?)
        };
        let place = self.streams.clone().try_acquire_owned().ok()?;
        Some(Subscription {
            rx: self.tx.subscribe(),
            _place: place,
            _reader_place: reader_place,
        })
    }

    /// When `agent` entered its current state, if it moved since the service started.
    pub fn since(&self, agent: &str) -> Option<Since> {
        self.since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent)
            .cloned()
    }

    fn send(&self, kind: &'static str, agent: &str, data: Value) {
        // No watcher is fine: the event is on the audit anyway.
        let _ = self.tx.send(StreamEvent {
            kind,
            agent: agent.to_owned(),
            at: now_text(),
            data: self.redactor.redact(data),
        });
    }
}

impl RuntimeObserver for Events {
    fn transition(&self, agent: &str, from: &AgentState, event: &Event, to: &AgentState) {
        self.since.lock().unwrap_or_else(|p| p.into_inner()).insert(
            agent.to_owned(),
            Since {
                state: to.clone(),
                since: SystemTime::now(),
            },
        );
        self.send(
            "transition",
            agent,
            json!({ "from": from, "event": event, "to": to }),
        );
    }

    fn phase(&self, agent: &str, runbook: &str, record: &PhaseRecord) {
        self.send(
            "phase",
            agent,
            json!({ "runbook": runbook, "step": record.step, "phase": record.phase, "status": record.status, "summary": record.summary }),
        );
    }

    fn unowned(&self, alert: &themis_core::types::Alert) {
        self.send(
            "unowned-alert",
            "",
            json!({ "alertname": alert.name, "fingerprint": alert.fingerprint, "labels": alert.labels }),
        );
    }

    fn escalation(&self, escalation: &Escalation) {
        self.send(
            "escalation",
            &escalation.agent,
            json!({
                "incident": escalation.incident,
                "reason": escalation.reason,
                "approval": escalation.proposal.as_ref().map(|p| &p.id),
                "plan_digest": escalation.proposal.as_ref().map(|p| &p.plan_digest),
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_past_the_bound_are_turned_away_until_one_ends() {
        let events = Events::new(Redactor::with_values(None));
        // Readers fill what is theirs; approvers still get the rest.
        let mut open: Vec<Subscription> = (0..MAX_STREAMS - APPROVER_STREAMS)
            .map(|_| events.subscribe(false).expect("within the readers' bound"))
            .collect();
        assert!(events.subscribe(false).is_none(), "a reader past theirs");
        open.extend(
            (0..APPROVER_STREAMS).map(|_| events.subscribe(true).expect("kept for approvers")),
        );
        assert!(events.subscribe(true).is_none(), "one past the bound");
        open.pop();
        assert!(
            events.subscribe(false).is_none(),
            "an approver's place is not a reader's"
        );
        let mut again = events.subscribe(true).expect("a place was given back");
        assert!(events.subscribe(true).is_none(), "and only one");
        events.send("transition", "kafka", json!({ "n": 1 }));
        assert_eq!(again.rx.try_recv().expect("delivered").agent, "kafka");
    }
}
