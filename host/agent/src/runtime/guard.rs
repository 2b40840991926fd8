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
        let before = book.book.clone();
        if let Err(blocked) = book.book.begin(now, key, automatic) {
            return Ok(Err(blocked));
        }
        self.save(&mut book, Some(before)).await?;
        Ok(Ok(()))
    }

    /// Save the book as just changed. A failed save undoes a change that lets something run
    /// (`undo`: the book before it), so a target is never taken in memory only — it would
    /// stay busy until a restart; a change that holds runs back (a release, a breaker) is kept
    /// in memory either way. While the saved book is unusable it is never written over: the
    /// hold it puts on automatic runs lasts until an approver clears it, restart or not.
    async fn save(&self, book: &mut Book, undo: Option<GuardBook>) -> Result<(), RuntimeError> {
        if book.unusable.is_some() {
            return Ok(());
        }
        if let Err(e) = self.store.save_guard(&book.book).await {
            if let Some(before) = undo {
                book.book = before;
            }
            return Err(e.into());
        }
        Ok(())
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
        self.save(&mut book, None).await?;
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
        self.save(&mut book, None).await?;
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
        let before = book.book.clone();
        let cleared = book.book.clear(target, runbook);
        // Cleared by a human: the book in memory is the one to keep, over the unusable one.
        let held = book.unusable.take();
        if let Err(e) = self.save(&mut book, Some(before)).await {
            book.unusable = held;
            return Err(e);
        }
        Ok((cleared, held.is_some()))
    }

    pub(crate) async fn snapshot(&self) -> GuardBook {
        self.book.lock().await.book.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::JsonStore;
    use themis_core::redact::Redactor;

    fn key() -> RunKey {
        RunKey {
            agent: "kafka".into(),
            incident: "inc-1".into(),
            runbook: "restart-broker".into(),
            target: "broker-1".into(),
            fingerprint: "f1".into(),
        }
    }

    /// A run whose start could not be saved did not take its target: another incident's run
    /// on it may start.
    #[tokio::test]
    async fn a_start_that_could_not_be_saved_leaves_the_target_free() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = AuditLog::open(&dir.path().join("audit.jsonl"), Redactor::with_values(None))
            .expect("audit");
        let store: Arc<dyn IncidentStore> = Arc::new(JsonStore::open(dir.path()).expect("store"));
        let rails = Rails::default();
        let guard = Guard::open(store, &audit, Clock::system())
            .await
            .expect("open");
        // The book's file becomes a folder with something in it: no save can replace it.
        let file = dir.path().join("guard.json");
        std::fs::remove_file(&file).expect("remove");
        std::fs::create_dir_all(file.join("in-the-way")).expect("block");
        assert!(
            guard.begin(&rails, &key(), false).await.is_err(),
            "not saved"
        );
        std::fs::remove_dir_all(&file).expect("unblock");
        let another = RunKey {
            incident: "inc-2".into(),
            ..key()
        };
        let second = guard.begin(&rails, &another, false).await.expect("saved");
        assert!(
            second.is_ok(),
            "the failed start left the target free: {:?}",
            second.err().map(|b| b.why)
        );
    }

    /// A book that failed its check at start is never written over by the runs that follow:
    /// a restart still finds it unusable, and only a human's clear lifts the hold.
    #[tokio::test]
    async fn an_unusable_book_holds_across_runs_and_restarts_until_cleared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = AuditLog::open(&dir.path().join("audit.jsonl"), Redactor::with_values(None))
            .expect("audit");
        let store: Arc<dyn IncidentStore> = Arc::new(JsonStore::open(dir.path()).expect("store"));
        store.save_guard(&GuardBook::default()).await.expect("save");
        let file = dir.path().join("guard.json");
        let mut bytes = std::fs::read(&file).expect("read");
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        std::fs::write(&file, &bytes).expect("damage");

        let rails = Rails::default();
        let guard = Guard::open(store.clone(), &audit, Clock::system())
            .await
            .expect("open");
        assert!(guard.check(&rails, &key()).await.is_err(), "held");
        // A human's run takes and releases its target.
        assert!(
            guard
                .begin(&rails, &key(), false)
                .await
                .expect("begin")
                .is_ok()
        );
        guard.end(&rails, &key(), true).await.expect("end");
        assert_eq!(
            std::fs::read(&file).expect("read"),
            bytes,
            "not written over"
        );

        let again = Guard::open(store.clone(), &audit, Clock::system())
            .await
            .expect("open");
        assert!(
            again.check(&rails, &key()).await.is_err(),
            "still held after a restart"
        );
        let (_, unheld) = again.clear("broker-1", None).await.expect("clear");
        assert!(unheld);
        let cleared = Guard::open(store, &audit, Clock::system())
            .await
            .expect("open");
        assert!(
            cleared.check(&rails, &key()).await.is_ok(),
            "a clear lifts it for good"
        );
    }
}
