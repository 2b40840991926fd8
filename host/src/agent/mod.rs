//! Domain agents: each with its own catalog, probes, policy, selector and state machine, driven
//! by the [`Runtime`] from alert to resolution or to a human.

pub mod def;
mod observe;
pub mod runtime;
pub mod store;

pub use def::AgentDef;
pub use observe::{Quiet, RuntimeObserver};
pub use runtime::{AlertOutcome, Runtime, RuntimeError, RuntimeOptions, SelectorChoice};
