//! Spent stores are dropped on a thread of their own. Freeing an instance resets its memory slot
//! and tables — tens of microseconds when the caches are cold — and a phase's result need not
//! wait for that.

use crate::state::StepState;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use wasmtime::Store;

/// Stores waiting to be dropped. Each holds a pooling-allocator slot until it is, so the queue is
/// short: when it is full the caller drops its store itself.
const QUEUE: usize = 4;

pub(crate) struct Reaper {
    queue: Option<SyncSender<Store<StepState>>>,
}

impl Reaper {
    pub(crate) fn start() -> Self {
        let (queue, spent) = sync_channel::<Store<StepState>>(QUEUE);
        let started = std::thread::Builder::new()
            .name("themis-reaper".into())
            // Ends when the sandbox, and with it the sender, is gone.
            .spawn(move || spent.into_iter().for_each(drop));
        match started {
            Ok(_) => Reaper { queue: Some(queue) },
            Err(e) => {
                tracing::warn!(error = %e, "no reaper thread; spent stores are dropped inline");
                Reaper { queue: None }
            }
        }
    }

    pub(crate) fn reap(&self, store: Store<StepState>) {
        let Some(queue) = &self.queue else {
            return drop(store);
        };
        match queue.try_send(store) {
            Ok(()) => {}
            Err(TrySendError::Full(store) | TrySendError::Disconnected(store)) => drop(store),
        }
    }
}
