//! The holder's side of the shared inbox (`PgInbox`): what hosts standing by accepted is taken
//! up here, oldest first, as if it had come in now — onto the audit, into its agent's backlog
//! — and then removed. One taker at a time (the look every half second, or an alert sent here
//! directly, which waits for what was stored before it), so what waits is taken in order.
//!
//! A notification an agent's full backlog cannot take whole is taken as far as it fits and its
//! row rewritten in place to hold the rest; what is left waits, and so does every later
//! notification that shares an alert with it, while the others are taken: an alert's
//! notifications are taken in the order they were stored, and nothing waits behind another
//! agent's full backlog.

use crate::alertmanager::Incoming;
use crate::app::AppState;
use crate::error::ApiError;
use crate::intake::{incoming_of, record_refused, refused, take_what_fits};
use axum::http::StatusCode;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use themis_agent::store::pg_inbox::{INBOX_LIMIT, PgInbox, Stored};

/// How often the holder looks, how many rows it reads at once, its longest pause after a
/// failure, and after looks that found only rows waiting for room.
const EVERY: Duration = Duration::from_millis(500);
const PAGE: i64 = 64;
const MOST: Duration = Duration::from_secs(60);
const MOST_WAITING: Duration = Duration::from_secs(5);

/// The shared inbox, and what the last look left waiting (its lock is the turn to look).
pub struct SharedInbox {
    inbox: Arc<PgInbox>,
    look: tokio::sync::Mutex<Look>,
}

impl SharedInbox {
    pub fn new(inbox: Arc<PgInbox>) -> SharedInbox {
        SharedInbox {
            inbox,
            look: tokio::sync::Mutex::new(Look::default()),
        }
    }
}

/// What a look left waiting.
#[derive(Default)]
struct Look {
    /// The newest row it saw: a row above it is new since.
    through: i64,
    /// Whether it went through every row (no failure stopped it).
    whole: bool,
    /// Each alert a row left waiting holds, and why it waits.
    held: HashMap<String, String>,
}

/// What one look did.
struct Done {
    /// Alerts taken up.
    took: usize,
}

/// Look at the shared inbox every half second, taking up what waits. After a failure (the
/// audit unwritable, the inbox not read or cleared) each next try waits twice as long, up to a
/// minute: each try may record again what it could take. Looks that find only rows waiting for
/// room in a backlog space out too, up to 5 s, so a full backlog does not have the inbox read
/// whole twice a second.
pub async fn drain(state: Arc<AppState>, shared: Arc<SharedInbox>) {
    let mut failures = 0u32;
    let mut idle = 0u32;
    let mut pause = EVERY;
    loop {
        tokio::time::sleep(pause).await;
        if state.draining() || state.runtime.store().lost().is_some() {
            return;
        }
        let mut look = shared.look.lock().await;
        match take_stored(&state, &shared.inbox, &mut look).await {
            Ok(done) => {
                failures = 0;
                idle = if done.took == 0 && !look.held.is_empty() {
                    idle + 1
                } else {
                    0
                };
                pause = (EVERY * 2u32.pow(idle.min(7))).min(MOST_WAITING);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the shared inbox was not taken up whole; looking again");
                failures += 1;
                pause = (EVERY * 2u32.pow(failures.min(7))).min(MOST);
            }
        }
    }
}

/// Whether the alerts of a notification sent to the holder directly may be taken now: what
/// hosts standing by stored before it goes first (a look, unless nothing was stored since the
/// last one went through), so a firing stored there never lands after its own `resolved` sent
/// here. An alert an earlier stored notification of which still waits is answered 429.
pub(crate) async fn stored_first(state: &AppState, incoming: &[Incoming]) -> Result<(), ApiError> {
    let Some(shared) = &state.inbox else {
        return Ok(());
    };
    let down = |why: String| {
        ApiError::unavailable(format!(
            "alerts a host standing by stored earlier are taken up first, and could not be: {why}; retry"
        ))
        .retry_after(1)
    };
    let mut look = shared.look.lock().await;
    let newest = shared
        .inbox
        .newest()
        .await
        .map_err(|e| down(format!("the shared inbox could not be read: {e}")))?;
    if !look.whole || newest.unwrap_or(0) > look.through {
        take_stored(state, &shared.inbox, &mut look)
            .await
            .map_err(down)?;
    }
    match incoming
        .iter()
        .find_map(|i| look.held.get(&i.alert.fingerprint))
    {
        None => Ok(()),
        Some(why) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "queue-full",
            format!(
                "an earlier notification of an alert of this one, stored by a host standing by, is taken up first: {why}; retry (duplicates are absorbed)"
            ),
        )
        .retry_after(5)),
    }
}

/// One look: every row waiting, oldest first, taken up and removed, or left waiting for room
/// (`look` says which alerts, and why). A failure stops the look at its row.
async fn take_stored(state: &AppState, inbox: &PgInbox, look: &mut Look) -> Result<Done, String> {
    look.whole = false;
    look.held.clear();
    let mut done = Done { took: 0 };
    let mut after = 0;
    // At most what the inbox can hold: hosts storing faster than this one takes never keep a
    // look (and an alert sent here, waiting on it) going.
    for _ in 0..INBOX_LIMIT / PAGE + 1 {
        let waiting = inbox
            .waiting(after, PAGE)
            .await
            .map_err(|e| format!("the shared inbox could not be read: {e}"))?;
        let full = waiting.len() as i64 == PAGE;
        for stored in waiting {
            after = stored.id;
            look.through = look.through.max(stored.id);
            take_row(state, inbox, &stored, look, &mut done).await?;
        }
        if !full {
            look.whole = true;
            break;
        }
    }
    Ok(done)
}

/// Take up one stored row (or leave it waiting, in `look`).
async fn take_row(
    state: &AppState,
    inbox: &PgInbox,
    stored: &Stored,
    look: &mut Look,
    done: &mut Done,
) -> Result<(), String> {
    let id = stored.id;
    let checked = inbox.open(stored).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "inbox-row-refused",
            format!("inbox row {id}: {e}"),
        )
    });
    if stored.via == crate::standby::REFUSED
        && let Ok(body) = &checked
    {
        // A refusal a standby answered: recorded here, nothing to take up.
        let mut data: serde_json::Value =
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
        if let Some(map) = data.as_object_mut() {
            map.insert("stored_by".into(), "a host standing by".into());
        }
        if !record_refused(state, data).await {
            return Err(format!(
                "the refusal stored as inbox row {id} could not be recorded"
            ));
        }
        return remove(inbox, id).await;
    }
    let redactor = state.runtime.audit().redactor().clone();
    let incoming = checked.and_then(|body| {
        if stored.via == crate::standby::CHECKED {
            serde_json::from_str::<Vec<Incoming>>(&body)
                .map_err(|e| ApiError::bad_request("", format!("inbox row {id}: {e}")))
        } else {
            // A notification stored whole (by an earlier version): checked again.
            incoming_of(&stored.via, body.as_bytes(), &redactor)
        }
    });
    let incoming = match incoming {
        Ok(incoming) => incoming,
        // Refused on the record, then removed: else it is tried again.
        Err(refusal) => {
            if !refused(state, "inbox", &refusal).await {
                return Err(format!("inbox row {id}: the refusal could not be recorded"));
            }
            return remove(inbox, id).await;
        }
    };
    if let Some(why) = incoming
        .iter()
        .find_map(|i| look.held.get(&i.alert.fingerprint))
        .cloned()
    {
        // An earlier notification of one of its alerts waits: so does this one.
        for i in &incoming {
            look.held.insert(i.alert.fingerprint.clone(), why.clone());
        }
        return Ok(());
    }
    let rooms: Vec<Option<(String, u64)>> = incoming
        .iter()
        .map(|i| state.runtime.backlog_room(&i.alert))
        .collect();
    if let Some(Some((agent, _))) = rooms.first()
        && rooms.iter().all(|r| matches!(r, Some((_, 0))))
    {
        // Nothing of it fits now: it waits, without a refusal on the record at every look.
        let why = format!("inbox row {id} waits for room in agent `{agent}`'s backlog");
        for i in &incoming {
            look.held.insert(i.alert.fingerprint.clone(), why.clone());
        }
        return Ok(());
    }
    let count = incoming.len();
    let (_, refused) = take_what_fits(state, incoming)
        .await
        .map_err(|e| format!("inbox row {id} was not taken up: {}", e.message))?;
    done.took += count - refused.len();
    let Some((agent, _)) = refused.first() else {
        return remove(inbox, id).await;
    };
    // What fitted is taken; the row keeps the rest, in its place.
    let why = format!("inbox row {id} waits in part for room in agent `{agent}`'s backlog");
    let rest: Vec<Incoming> = refused.into_iter().map(|(_, i)| i).collect();
    let body = serde_json::to_value(&rest).map_err(|e| format!("inbox row {id}: {e}"))?;
    inbox
        .keep_only(stored, crate::standby::CHECKED, &body)
        .await
        .map_err(|e| format!("inbox row {id}, partly taken up, could not keep the rest: {e}"))?;
    for i in rest {
        look.held.insert(i.alert.fingerprint, why.clone());
    }
    Ok(())
}

/// A row taken up (or refused on the record) leaves the inbox. If the removal fails, the
/// next look takes it again, which deduplication absorbs.
async fn remove(inbox: &PgInbox, id: i64) -> Result<(), String> {
    inbox
        .done(id)
        .await
        .map_err(|e| format!("inbox row {id}, taken up, could not be removed: {e}"))
}
