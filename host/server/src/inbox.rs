//! The holder's side of the shared inbox (`PgInbox`): what hosts standing by accepted is taken
//! up here, oldest first, as if it had come in now — onto the audit, into its agent's backlog
//! — and then removed. One taker at a time (the look every half second, or an alert sent here
//! directly, which waits for what was stored before it), so what waits is taken in order.
//!
//! A notification an agent's full backlog cannot take whole is taken as far as it fits and its
//! row rewritten in place to hold the rest; what is left waits, and so do the same alerts in
//! later notifications, while everything else is taken: an alert's notifications are taken in
//! the order they were stored, and nothing waits behind another agent's full backlog.

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

/// The shared inbox, what the last look left waiting (its lock is the turn to look), and how
/// many looks have begun.
pub struct SharedInbox {
    inbox: Arc<PgInbox>,
    look: Arc<tokio::sync::Mutex<Look>>,
    looks: std::sync::atomic::AtomicU64,
}

impl SharedInbox {
    pub fn new(inbox: Arc<PgInbox>) -> SharedInbox {
        SharedInbox {
            inbox,
            look: Arc::new(tokio::sync::Mutex::new(Look::default())),
            looks: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// What a look left waiting.
#[derive(Default)]
struct Look {
    /// Its number among the looks begun.
    number: u64,
    /// The newest row it saw: a row above it is new since.
    through: i64,
    /// Whether it went through every row (no failure stopped it).
    whole: bool,
    /// Each alert a row left waiting holds, and why it waits.
    held: HashMap<String, String>,
}

/// What one look did.
struct Done {
    /// Rows taken up, rewritten or removed.
    moved: usize,
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
        match take_stored(&state, &shared, &mut look).await {
            Ok(done) => {
                failures = 0;
                idle = if done.moved == 0 && !look.held.is_empty() {
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

/// Which alerts of a notification sent to the holder directly must wait, and why: what hosts
/// standing by stored before it goes first, so a firing stored there never lands after its
/// own `resolved` sent here. It takes a look, unless one began and went through since this
/// notification came (requests waiting together share one), or nothing was stored since the
/// last whole look and none of these alerts waits in it. The look runs as a task of its own:
/// a request that goes away does not cut it off half-way.
pub(crate) async fn stored_first(
    state: &Arc<AppState>,
    incoming: &[Incoming],
) -> Result<HashMap<String, String>, ApiError> {
    let Some(shared) = state.inbox.clone() else {
        return Ok(HashMap::new());
    };
    let fingerprints: Vec<String> = incoming
        .iter()
        .map(|i| i.alert.fingerprint.clone())
        .collect();
    let state = state.clone();
    let arrived = shared.looks.load(std::sync::atomic::Ordering::SeqCst);
    let decided = tokio::spawn(async move {
        let mut look = shared.look.clone().lock_owned().await;
        let fresh = look.whole && look.number > arrived;
        if !fresh {
            let newest = shared
                .inbox
                .newest()
                .await
                .map_err(|e| format!("the shared inbox could not be read: {e}"))?;
            let touches = fingerprints.iter().any(|f| look.held.contains_key(f));
            if !look.whole || newest.unwrap_or(0) > look.through || touches {
                take_stored(&state, &shared, &mut look).await?;
            }
        }
        Ok::<_, String>(
            fingerprints
                .into_iter()
                .filter_map(|f| look.held.get(&f).cloned().map(|why| (f, why)))
                .collect::<HashMap<_, _>>(),
        )
    })
    .await
    .map_err(|e| format!("the look at the shared inbox failed: {e}"))
    .and_then(|r| r);
    decided.map_err(|why| {
        ApiError::unavailable(format!(
            "alerts a host standing by stored earlier are taken up first, and could not be: {why}; retry"
        ))
        .retry_after(1)
    })
}

/// One look: every row waiting, oldest first, taken up and removed, or left waiting for room
/// (`look` says which alerts, and why). A failure stops the look at its row.
async fn take_stored(
    state: &AppState,
    shared: &SharedInbox,
    look: &mut Look,
) -> Result<Done, String> {
    let inbox = &*shared.inbox;
    look.number = shared
        .looks
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        + 1;
    look.whole = false;
    look.held.clear();
    let mut done = Done { moved: 0 };
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
        done.moved += 1;
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
        // Nothing in it to take (a notification of no alerts).
        Ok(incoming) if incoming.is_empty() => {
            done.moved += 1;
            return remove(inbox, id).await;
        }
        Ok(incoming) => incoming,
        // Refused on the record, then removed: else it is tried again.
        Err(refusal) => {
            if !refused(state, "inbox", &refusal).await {
                return Err(format!("inbox row {id}: the refusal could not be recorded"));
            }
            done.moved += 1;
            return remove(inbox, id).await;
        }
    };
    // Alerts an earlier notification of which waits wait too; the others go ahead.
    let (behind, free): (Vec<Incoming>, Vec<Incoming>) = incoming
        .into_iter()
        .partition(|i| look.held.contains_key(&i.alert.fingerprint));
    let rooms: Vec<Option<(String, u64)>> = free
        .iter()
        .map(|i| state.runtime.backlog_room(&i.alert))
        .collect();
    let no_room = rooms.iter().all(|r| matches!(r, Some((_, 0))));
    if free.is_empty() || no_room {
        // Nothing of it can go now: it waits, without a refusal on the record at every look.
        let why = rooms.iter().flatten().next().map(|(agent, _)| {
            format!("inbox row {id} waits for room in agent `{agent}`'s backlog")
        });
        hold(look, &free, why);
        return Ok(());
    }
    let tried = free.len();
    let (_, refused) = take_what_fits(state, free)
        .await
        .map_err(|e| format!("inbox row {id} was not taken up: {}", e.message))?;
    if refused.len() == tried {
        // Nothing went after all (the room was taken meanwhile): the row stays as it is.
        let why = refused.first().map(|(agent, _)| {
            format!("inbox row {id} waits for room in agent `{agent}`'s backlog")
        });
        let refused: Vec<Incoming> = refused.into_iter().map(|(_, i)| i).collect();
        hold(look, &refused, why);
        return Ok(());
    }
    if behind.is_empty() && refused.is_empty() {
        done.moved += 1;
        return remove(inbox, id).await;
    }
    // What went is taken; the row keeps the rest, in its place.
    let why = refused.first().map(|(agent, _)| {
        format!("inbox row {id} waits in part for room in agent `{agent}`'s backlog")
    });
    let refused: Vec<Incoming> = refused.into_iter().map(|(_, i)| i).collect();
    let rest: Vec<&Incoming> = behind.iter().chain(refused.iter()).collect();
    let body = serde_json::to_value(&rest).map_err(|e| format!("inbox row {id}: {e}"))?;
    inbox
        .keep_only(stored, crate::standby::CHECKED, &body)
        .await
        .map_err(|e| format!("inbox row {id}, partly taken up, could not keep the rest: {e}"))?;
    done.moved += 1;
    hold(look, &refused, why);
    Ok(())
}

/// `alerts` wait, for `why`.
fn hold(look: &mut Look, alerts: &[Incoming], why: Option<String>) {
    if let Some(why) = why {
        for i in alerts {
            look.held.insert(i.alert.fingerprint.clone(), why.clone());
        }
    }
}

/// A row taken up (or refused on the record) leaves the inbox. If the removal fails, the
/// next look takes it again, which deduplication absorbs.
async fn remove(inbox: &PgInbox, id: i64) -> Result<(), String> {
    inbox
        .done(id)
        .await
        .map_err(|e| format!("inbox row {id}, taken up, could not be removed: {e}"))
}
