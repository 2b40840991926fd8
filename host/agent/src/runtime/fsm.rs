//! The agent's state machine as its worker drives it: every move is checked by the pure
//! transition function, audited before it takes effect, saved, shown to the observer and
//! published to whoever watches the agent. An illegal move is audited and refused.

use super::RuntimeError;
use super::ctx::AgentCtx;
use serde_json::json;
use themis_core::fsm::{self, AgentState, Event};
use tokio::sync::watch;

pub(crate) struct Fsm {
    pub(crate) state: AgentState,
    tx: watch::Sender<AgentState>,
}

impl Fsm {
    pub(crate) fn new(state: AgentState) -> (Fsm, watch::Receiver<AgentState>) {
        let (tx, rx) = watch::channel(state.clone());
        (Fsm { state, tx }, rx)
    }

    pub(crate) async fn fire(
        &mut self,
        ctx: &AgentCtx,
        incident: &str,
        event: Event,
    ) -> Result<AgentState, RuntimeError> {
        let planned = self.record(ctx, incident, event)?;
        Ok(self.apply(ctx, planned).await)
    }

    /// The first half of [`Fsm::fire`]: check the move and put it on the record (deferred: it
    /// leaves the process only through the next commit point — a state write, an intent, an
    /// escalation, the end of the command), not yet made. For a move recorded under the same
    /// commit point as what comes before it (an escalation and the agent's return to idle),
    /// made once that is shown; nothing else may move the machine in between.
    pub(crate) fn record(
        &self,
        ctx: &AgentCtx,
        incident: &str,
        event: Event,
    ) -> Result<Planned, RuntimeError> {
        let agent = &ctx.agent.def.name;
        match fsm::transition(&self.state, &event) {
            Ok(next) => {
                ctx.audit.append_deferred(
                    agent,
                    Some(incident),
                    "transition",
                    json!({ "from": self.state, "event": event, "to": next }),
                )?;
                Ok(Planned {
                    from: self.state.clone(),
                    event,
                    next,
                })
            }
            Err(illegal) => {
                ctx.audit.append(
                    agent,
                    Some(incident),
                    "illegal-transition",
                    json!({ "from": self.state, "event": event, "error": illegal.to_string() }),
                )?;
                Err(RuntimeError::Illegal {
                    agent: agent.clone(),
                    source: illegal,
                })
            }
        }
    }

    /// The second half of [`Fsm::fire`]: make a recorded move — saved as a hint, shown,
    /// published.
    pub(crate) async fn apply(&mut self, ctx: &AgentCtx, planned: Planned) -> AgentState {
        let agent = &ctx.agent.def.name;
        let Planned { from, event, next } = planned;
        debug_assert_eq!(
            from, self.state,
            "the machine moved between record and apply"
        );
        // A hint for the next start, not the truth (the audit and the incidents are): a failed
        // write must not leave the machine in memory behind the move just recorded — that
        // would wedge the agent in a state no work is in.
        if let Err(e) = ctx.store.save_agent_state(agent, &next).await {
            tracing::warn!(agent = %agent, error = %e, "the agent's state hint could not be saved");
        }
        ctx.observer.transition(agent, &from, &event, &next);
        self.state = next.clone();
        self.tx.send_replace(next.clone());
        next
    }
}

/// A move on the record and not yet made ([`Fsm::record`]).
#[must_use = "a recorded move is made with Fsm::apply"]
pub(crate) struct Planned {
    from: AgentState,
    event: Event,
    next: AgentState,
}
