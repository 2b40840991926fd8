//! The guard rails at run time: one book for the whole host (a target is shared by every agent
//! that can change it), saved durably before a run starts and after it ends, every refusal and
//! every breaker audited. The rules themselves are `themis_core::guard`'s (pure).

use super::RuntimeError;
use crate::audit::AuditLog;
use crate::store::IncidentStore;
use serde_json::json;
use std::sync::Arc;
use themis_core::clock::Clock;
use themis_core::guard::{Blocked, Breaker, GuardBook, Rails, RunKey, RunbookHistory};
use themis_core::verify::Effect;
use tokio::sync::Mutex;

pub(crate) struct Guard {
    // A tokio mutex, held across the save: two workers' saves never land out of order.
    book: Mutex<Book>,
    store: Arc<dyn IncidentStore>,
    clock: Clock,
}

struct Book {
    book: GuardBook,
    /// Why the saved book could not be used: until an approver clears it, nothing runs
    /// automatically (what the lost book held — an open breaker — is unknown, not absent).
    unusable: Option<String>,
}

impl Guard {
    /// The book as the last process left it. A target it held is free again: the run that held
    /// it cannot be running (recovery marks its incident interrupted), and that is audited.
    pub(crate) async fn open(
        store: Arc<dyn IncidentStore>,
        audit: &AuditLog,
        clock: Clock,
    ) -> Result<Guard, RuntimeError> {
        let (mut book, unusable) = match store.guard().await {
            Ok(book) => (book, None),
            Err(e) => {
                // Not a reason to refuse to start (the host would stay down), but no automatic
                // run either until a human has looked: said loudly and on the record.
                tracing::warn!(error = %e, "the guard rails' book is unusable: automatic runs wait for `themis guard clear`");
                audit.append(
                    "host",
                    None,
                    "guard-unusable",
                    json!({ "error": e.to_string() }),
                )?;
                (GuardBook::default(), Some(e.to_string()))
            }
        };
        for (target, busy) in book.release_all() {
            audit.append(
                &busy.agent,
                Some(&busy.incident),
                "guard-released",
                json!({ "target": target, "runbook": busy.runbook, "reason": "the host restarted while this run held the target" }),
            )?;
        }
        if unusable.is_none() {
            store.save_guard(&book).await?;
        }
        Ok(Guard {
            book: Mutex::new(Book { book, unusable }),
            store,
            clock,
        })
    }

    /// May this run start without a human? (Every rail.)
    pub(crate) async fn check(&self, rails: &Rails, key: &RunKey) -> Result<(), Blocked> {
        let book = self.book.lock().await;
        if let Some(why) = &book.unusable {
            return Err(Blocked {
                rail: themis_core::guard::Rail::CircuitBreaker,
                why: format!(
                    "the guard rails' record could not be read at start ({why}): nothing runs automatically until an approver runs `themis guard clear`"
                ),
                until: None,
            });
        }
        book.book.check(rails, self.clock.secs(), key)
    }

    /// Take the target for this run; saved before it returns.
    pub(crate) async fn begin(
        &self,
        rails: &Rails,
        key: &RunKey,
        automatic: bool,
    ) -> Result<Result<(), Blocked>, RuntimeError> {
        let mut book = self.book.lock().await;
        let now = self.clock.secs();
        book.book.prune(rails, now);
        if let Err(blocked) = book.book.begin(now, key, automatic) {
            return Ok(Err(blocked));
        }
        self.store.save_guard(&book.book).await?;
        Ok(Ok(()))
    }

    /// Release the target and record the run; the breaker this run opened, if any.
    pub(crate) async fn end(
        &self,
        rails: &Rails,
        key: &RunKey,
        ok: bool,
    ) -> Result<Option<Breaker>, RuntimeError> {
        let mut book = self.book.lock().await;
        let opened = book.book.end(rails, self.clock.secs(), key, ok);
        self.store.save_guard(&book.book).await?;
        Ok(opened)
    }

    /// A run's fix was verified: on its history, an ineffective one counted as a failure; the
    /// breaker this opened, if any.
    pub(crate) async fn verdict(
        &self,
        rails: &Rails,
        target: &str,
        runbook: &str,
        incident: &str,
        effect: Effect,
    ) -> Result<Option<Breaker>, RuntimeError> {
        let mut book = self.book.lock().await;
        let now = self.clock.secs();
        let opened = book
            .book
            .verdict(rails, now, target, runbook, incident, effect);
        self.store.save_guard(&book.book).await?;
        Ok(opened)
    }

    /// What the runs of `runbook` on `target` came to.
    pub(crate) async fn history(&self, target: &str, runbook: &str) -> Option<RunbookHistory> {
        self.book.lock().await.book.history_of(target, runbook)
    }

    /// An approver clears a target's breakers (and its cooldown history) — and, whatever the
    /// target, the hold an unusable book put on every automatic run.
    pub(crate) async fn clear(
        &self,
        target: &str,
        runbook: Option<&str>,
    ) -> Result<(Vec<Breaker>, bool), RuntimeError> {
        let mut book = self.book.lock().await;
        let cleared = book.book.clear(target, runbook);
        let unheld = book.unusable.take().is_some();
        self.store.save_guard(&book.book).await?;
        Ok((cleared, unheld))
    }

    pub(crate) async fn snapshot(&self) -> GuardBook {
        self.book.lock().await.book.clone()
    }
}
