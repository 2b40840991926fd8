//! One contract, every store: the same checks run against the JSON-file store, SQLite and —
//! when `THEMIS_TEST_POSTGRES` names a test cluster (`scripts/postgres start`; CI always does) —
//! PostgreSQL, so the runtime cannot tell them apart except by speed.

use super::*;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use themis_core::identity::Identity;
use themis_core::policy::{ApprovalRequest, Plan};
use themis_core::types::Alert;

async fn each_store(check: impl AsyncFn(Arc<dyn IncidentStore>, &std::path::Path)) {
    let mut choices = vec![StoreChoice::Json, StoreChoice::Sqlite];
    choices.extend(fresh_database().await.map(StoreChoice::Postgres));
    for choice in choices {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(
            dir.path(),
            Some(&choice),
            choice.clone(),
            Duration::from_secs(1),
        )
        .await
        .unwrap_or_else(|e| panic!("open {choice:?}: {e}"));
        assert_eq!(StoreKind::found_in(dir.path()), Some(choice.kind()));
        check(store, dir.path()).await;
    }
}

/// A new, empty database on the test cluster, or `None` (said) when there is none — a failure
/// instead when `THEMIS_REQUIRE_SERVICES=1`.
async fn fresh_database() -> Option<PgTarget> {
    use sqlx::{Connection, Executor};
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let Some(admin) = std::env::var("THEMIS_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        assert!(
            std::env::var("THEMIS_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "THEMIS_REQUIRE_SERVICES=1 but THEMIS_TEST_POSTGRES is not set"
        );
        eprintln!("PostgreSQL store skipped: THEMIS_TEST_POSTGRES unset");
        return None;
    };
    let name = format!(
        "themis_store_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {admin}: {e}"));
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap_or_else(|e| panic!("create database {name}: {e}"));
    let (cluster, _) = admin.rsplit_once('/').expect("a URL with a database");
    Some(PgTarget {
        url: format!("{cluster}/{name}"),
        password: None,
    })
}

pub(super) fn incident(id: &str, fingerprint: &str, opened: u64) -> Incident {
    let alert = Alert {
        name: "KafkaConsumerLag".into(),
        fingerprint: fingerprint.into(),
        labels: vec![],
        annotations: vec![],
        source: None,
    };
    Incident::opened(
        id.into(),
        "kafka".into(),
        alert,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + opened),
    )
}

fn proposed(mut incident: Incident, approval: &str) -> Incident {
    let plan = Plan {
        runbook_id: "restart-consumers".into(),
        runbook_version: "1.0.0".into(),
        runbook_digest: "sha256:00".into(),
        params: Default::default(),
        target: incident.fingerprint.clone(),
    };
    incident.status = IncidentStatus::PendingApproval;
    incident.proposal = Some(ApprovalRequest::new(
        approval.into(),
        plan,
        Identity::agent("kafka"),
        SystemTime::now(),
        Duration::from_secs(600),
    ));
    incident
}

fn answer(approval: &str, by: &str) -> Answer {
    Answer {
        approval_id: approval.into(),
        kind: AnswerKind::Approved,
        by: Identity::scenario(by),
        at: SystemTime::now(),
        execution_id: None,
    }
}

#[tokio::test]
async fn incidents_are_found_by_id_fingerprint_and_approval() {
    each_store(async |store, _| {
        let first = incident("inc-0a", "fp", 1);
        store.save(&first).await.expect("save");
        assert_eq!(store.get("inc-0a").await.expect("get"), first);
        assert!(matches!(
            store.get("inc-0b").await,
            Err(StoreError::UnknownIncident(_))
        ));
        assert_eq!(
            store
                .open_for("kafka", "fp")
                .await
                .expect("open")
                .map(|i| i.id),
            Some("inc-0a".into())
        );
        assert_eq!(
            store.open_for("postgres", "fp").await.expect("other agent"),
            None
        );
        // Closed: no longer open, still the latest.
        let mut closed = first.clone();
        closed.status = IncidentStatus::Resolved;
        store.save(&closed).await.expect("close");
        assert_eq!(store.open_for("kafka", "fp").await.expect("open"), None);
        assert_eq!(
            store.latest_for("kafka", "fp").await.expect("latest"),
            Some(closed)
        );
        assert!(store.open_ids().await.expect("open ids").is_empty());
        // A newer one for the same fingerprint is both.
        let second = proposed(incident("inc-0b", "fp", 2), "apr-0b-01");
        store.save(&second).await.expect("save");
        assert_eq!(
            store.open_ids().await.expect("open ids"),
            ["inc-0b".to_string()].into_iter().collect()
        );
        assert_eq!(
            store
                .open_for("kafka", "fp")
                .await
                .expect("open")
                .map(|i| i.id),
            Some("inc-0b".into())
        );
        assert_eq!(
            store
                .latest_for("kafka", "fp")
                .await
                .expect("latest")
                .map(|i| i.id),
            Some("inc-0b".into())
        );
        assert_eq!(
            store.by_approval("apr-0b-01").await.expect("by approval"),
            Some(second)
        );
        assert_eq!(
            store.by_approval("apr-0b-02").await.expect("other suffix"),
            None
        );
        assert_eq!(
            store.by_approval("apr-0a-01").await.expect("no proposal"),
            None
        );
        assert_eq!(
            store
                .by_approval("../../etc/passwd")
                .await
                .expect("not an id"),
            None
        );
        let (all, problems) = store.scan().await.expect("scan");
        assert!(problems.is_empty());
        assert_eq!(
            all.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["inc-0a", "inc-0b"]
        );
        let ids = |list: Vec<Incident>| list.into_iter().map(|i| i.id).collect::<Vec<_>>();
        let (newest, _) = store.recent(&Filter::default(), 1).await.expect("recent");
        assert_eq!(ids(newest), ["inc-0b"]);
        let (both, _) = store.recent(&Filter::default(), 10).await.expect("recent");
        assert_eq!(ids(both), ["inc-0b", "inc-0a"]);
        let pending = Filter {
            status: Some(IncidentStatus::PendingApproval),
            agent: None,
        };
        let (waiting, _) = store.recent(&pending, 10).await.expect("pending");
        assert_eq!(ids(waiting), ["inc-0b"]);
        let other = Filter {
            status: None,
            agent: Some("postgres".into()),
        };
        assert!(
            store
                .recent(&other, 10)
                .await
                .expect("other agent")
                .0
                .is_empty()
        );
    })
    .await;
}

#[tokio::test]
async fn a_proposal_is_claimed_exactly_once_among_concurrent_answers() {
    each_store(async |store, _| {
        store
            .save(&proposed(incident("inc-0c", "fp", 1), "apr-0c-01"))
            .await
            .expect("save");
        let claims = (0..8).map(|n| {
            let store = store.clone();
            async move {
                store
                    .claim(
                        answer("apr-0c-01", &format!("human-{n}")),
                        IncidentStatus::Executing,
                    )
                    .await
            }
        });
        let results = futures_join(claims).await;
        let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        assert!(
            results
                .iter()
                .filter(|r| r.is_err())
                .all(|r| matches!(r, Err(ClaimError::AlreadyAnswered { .. }))),
            "{results:?}"
        );
        let now = store.get("inc-0c").await.expect("get");
        assert_eq!(now.status, IncidentStatus::Executing);
        assert!(matches!(
            store
                .claim(answer("apr-0d-01", "x"), IncidentStatus::Executing)
                .await,
            Err(ClaimError::Store(StoreError::UnknownIncident(_)))
        ));
    })
    .await;
}

/// Run every future on a task of its own, so they race, and collect what each returned.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn agent_states_and_the_guard_book_round_trip() {
    each_store(async |store, _| {
        assert_eq!(
            store.agent_state("kafka").await.expect("none yet"),
            AgentState::Idle
        );
        let triaging = AgentState::Triaging {
            incident: "inc-0e".into(),
        };
        store
            .save_agent_state("kafka", &triaging)
            .await
            .expect("hint");
        assert_eq!(store.agent_state("kafka").await.expect("hint"), triaging);
        assert_eq!(store.guard().await.expect("empty"), GuardBook::default());
        store
            .save_guard(&GuardBook::default())
            .await
            .expect("guard");
        assert_eq!(store.guard().await.expect("guard"), GuardBook::default());
    })
    .await;
}

#[tokio::test]
async fn a_read_only_store_reads_next_to_the_writer_and_writes_nothing() {
    each_store(async |store, dir| {
        store
            .save(&incident("inc-0f", "fp", 1))
            .await
            .expect("save");
        let reader = open_read_only(dir).await.expect("read only");
        assert_eq!(reader.get("inc-0f").await.expect("read").id, "inc-0f");
        assert!(reader.save(&incident("inc-10", "fp2", 2)).await.is_err());
        assert!(matches!(
            store.get("inc-10").await,
            Err(StoreError::UnknownIncident(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn a_staged_incident_and_the_newest_hint_reach_the_next_reader() {
    each_store(async |store, dir| {
        store
            .stage(&incident("inc-11", "fp", 1))
            .await
            .expect("stage");
        assert_eq!(store.get("inc-11").await.expect("read").id, "inc-11");
        // Made durable without writing it again, as often as asked (the first and the later
        // marks take different paths through the SQL).
        store.sync().await.expect("sync");
        store.sync().await.expect("sync again");
        // A burst of moves, as a decision makes: the store reads back the newest at once, and
        // after a flush so does the next process, whatever the writes behind them coalesced.
        let newest = (0..50)
            .map(|n| AgentState::Triaging {
                incident: format!("inc-{n:02x}"),
            })
            .collect::<Vec<_>>();
        for state in &newest {
            store.save_agent_state("kafka", state).await.expect("hint");
            assert_eq!(&store.agent_state("kafka").await.expect("hint"), state);
        }
        store.flush().await.expect("flush");
        let reader = open_read_only(dir).await.expect("read only");
        assert_eq!(
            Some(reader.agent_state("kafka").await.expect("hint")),
            newest.last().cloned()
        );
        assert_eq!(reader.get("inc-11").await.expect("read").id, "inc-11");
    })
    .await;
}

#[tokio::test]
async fn a_second_writer_is_refused_and_the_other_kind_is_named() {
    each_store(async |store, dir| {
        let kind = StoreKind::found_in(dir).expect("kind");
        assert!(matches!(
            open(dir, None, StoreChoice::Json, Duration::from_millis(50)).await,
            Err(StoreError::Locked(_))
        ));
        drop(store);
        let other = match kind {
            StoreKind::Json | StoreKind::Postgres => StoreChoice::Sqlite,
            StoreKind::Sqlite => StoreChoice::Json,
        };
        match open(dir, Some(&other), other.clone(), Duration::from_millis(50)).await {
            Err(e @ StoreError::OtherKind { .. }) => {
                assert!(
                    e.to_string().contains(&format!("store: {}", kind.name())),
                    "{e}"
                )
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a {other:?} store opened over a {kind:?} directory"),
        }
    })
    .await;
}

#[tokio::test]
async fn a_row_changed_outside_themis_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open_waiting(dir.path(), Duration::from_secs(1))
        .await
        .expect("open");
    store
        .save(&incident("inc-11", "fp", 1))
        .await
        .expect("save");
    store
        .save(&incident("inc-12", "fp2", 2))
        .await
        .expect("save");
    // Edited by hand, and moved from one row to another: both refused.
    let raw = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join(sqlite::FILE).display()
    ))
    .await
    .expect("raw connection");
    sqlx::query("UPDATE incidents SET body = replace(body, '\"triaging\"', '\"resolved\"') WHERE id = 'inc-11'")
        .execute(&raw)
        .await
        .expect("edit");
    sqlx::query("UPDATE incidents SET (body, mac) = (SELECT body, mac FROM incidents WHERE id = 'inc-11') WHERE id = 'inc-12'")
        .execute(&raw)
        .await
        .expect("move");
    for id in ["inc-11", "inc-12"] {
        assert!(
            matches!(store.get(id).await, Err(StoreError::Tampered { .. })),
            "{id}"
        );
    }
    let (ok, problems) = store.scan().await.expect("scan");
    assert!(ok.is_empty());
    assert_eq!(problems.len(), 2);
}

#[tokio::test]
async fn the_state_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    each_store(async |store, dir| {
        store
            .save(&incident("inc-13", "fp", 1))
            .await
            .expect("save");
        store
            .save_agent_state("kafka", &AgentState::Idle)
            .await
            .expect("hint");
        store
            .save_guard(&GuardBook::default())
            .await
            .expect("guard");
        let mut seen = 0;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(next) = stack.pop() {
            for entry in std::fs::read_dir(&next).expect("read dir").flatten() {
                let meta = entry.metadata().expect("metadata");
                let mode = meta.permissions().mode() & 0o777;
                if meta.is_dir() {
                    assert_eq!(mode, 0o700, "{}", entry.path().display());
                    stack.push(entry.path());
                } else {
                    assert_eq!(mode, 0o600, "{}", entry.path().display());
                }
                seen += 1;
            }
        }
        assert!(seen >= 3, "{seen} entries");
    })
    .await;
}

/// Copy `from`'s host key into a new state directory: a second host of the same deployment.
fn same_key_dir(from: &std::path::Path) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("host.key");
    std::fs::copy(from.join("host.key"), &key).expect("copy key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    dir
}

/// A host holding the state in `target`'s database, and its state directory.
async fn a_holder(target: &PgTarget) -> (tempfile::TempDir, Arc<dyn IncidentStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let holder = open(
        dir.path(),
        Some(&StoreChoice::Postgres(target.clone())),
        StoreChoice::Json,
        Duration::from_secs(1),
    )
    .await
    .expect("the holder");
    (dir, holder)
}

#[tokio::test]
async fn the_inbox_holds_no_more_than_its_limit_however_many_hosts_store_at_once() {
    use super::pg_inbox::{InboxError, PgInbox};
    let Some(target) = fresh_database().await else {
        return;
    };
    let (dir, _holder) = a_holder(&target).await;
    // Three hosts standing by (each with two connections), ten notifications each, at once.
    let standbys: Vec<_> = (0..3)
        .map(|_| {
            let dir = same_key_dir(dir.path());
            let inbox = PgInbox::connect(&target, dir.path()).expect("inbox");
            (dir, Arc::new(inbox.with_limit(12)))
        })
        .collect();
    let tries: Vec<_> = standbys
        .iter()
        .flat_map(|(_, inbox)| {
            (0..10).map(move |n| {
                let inbox = inbox.clone();
                async move { inbox.put("checked", &serde_json::json!({ "n": n })).await }
            })
        })
        .collect();
    let results = futures_join(tries.into_iter()).await;
    let stored = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(stored, 12, "{results:?}");
    assert!(
        results
            .iter()
            .filter(|r| r.is_err())
            .all(|r| matches!(r, Err(InboxError::Full(12)))),
        "{results:?}"
    );
    assert_eq!(
        standbys[0].1.waiting(0, 100).await.expect("waiting").len(),
        12
    );
}

/// An inbox row as anyone with the database's credentials reads it: its via, body and MAC.
type RawRow = (String, String, String);

async fn read_row(admin: &mut sqlx::PgConnection, id: i64) -> RawRow {
    sqlx::query_as("SELECT via, body, mac FROM inbox WHERE id = $1")
        .bind(id)
        .fetch_one(admin)
        .await
        .expect("the row")
}

/// Write `row` into the inbox by hand: `sql` binds the id as $1 and the row as $2..$4.
async fn write_row(admin: &mut sqlx::PgConnection, sql: &str, id: i64, row: &RawRow) {
    sqlx::query(sql)
        .bind(id)
        .bind(&row.0)
        .bind(&row.1)
        .bind(&row.2)
        .execute(admin)
        .await
        .expect("written by hand");
}

const PUT_BACK: &str = "INSERT INTO inbox (id, via, body, mac) VALUES ($1, $2, $3, $4)";

/// Anyone with the database's credentials can copy a stored notification's row (its body and
/// seal) or put one back after it was taken up; neither is taken up twice.
#[tokio::test]
async fn an_inbox_row_copied_or_put_back_is_refused() {
    use super::pg_inbox::PgInbox;
    use sqlx::Connection;
    let Some(target) = fresh_database().await else {
        return;
    };
    let (dir, _holder) = a_holder(&target).await;
    let holder = PgInbox::connect(&target, dir.path()).expect("the holder's inbox");
    let standby_dir = same_key_dir(dir.path());
    let standby = PgInbox::connect(&target, standby_dir.path()).expect("inbox");
    let first = standby
        .put("checked", &serde_json::json!({ "n": 1 }))
        .await
        .expect("stored");
    let mut admin = sqlx::PgConnection::connect(&target.url)
        .await
        .expect("admin");
    let original = read_row(&mut admin, first).await;
    // A copy under a made-up id far ahead, next to the original.
    write_row(&mut admin, PUT_BACK, first + 1000, &original).await;
    let waiting = holder.waiting(0, 10).await.expect("waiting");
    assert_eq!(waiting.len(), 2);
    assert_eq!(waiting[0].id, first);
    assert!(holder.open(&waiting[0]).is_ok());
    let copy = holder.open(&waiting[1]).expect_err("the copy");
    assert!(matches!(copy, StoreError::Tampered { .. }), "{copy}");
    for row in &waiting {
        holder.done(row.id).await.expect("removed");
    }
    // The original put back with its own id after it was taken up.
    write_row(&mut admin, PUT_BACK, first, &original).await;
    let waiting = holder.waiting(0, 10).await.expect("waiting");
    assert_eq!(waiting.len(), 1);
    let back = holder.open(&waiting[0]).expect_err("put back");
    assert!(back.to_string().contains("put back"), "{back}");
    // A host that takes the state over later finds where the taken ids end at its first look,
    // and takes a notification stored after them.
    holder.done(first).await.expect("removed");
    let next = standby
        .put("checked", &serde_json::json!({ "n": 2 }))
        .await
        .expect("stored");
    let later = PgInbox::connect(&target, same_key_dir(dir.path()).path()).expect("inbox");
    let waiting = later.waiting(0, 10).await.expect("waiting");
    assert_eq!(waiting.iter().map(|r| r.id).collect::<Vec<_>>(), [next]);
    assert!(later.open(&waiting[0]).is_ok());
    // The copy's id far ahead moved nothing: the holder takes what is stored after it.
    assert!(next < first + 1000);
    let waiting = holder.waiting(0, 10).await.expect("waiting");
    assert!(holder.open(&waiting[0]).is_ok());
}

/// What the holder knows of the inbox from its first look: a row put back after an empty
/// look, an earlier version of a row it rewrote, a row sealed the old way (without its id)
/// before and after that look, and a sequence that would hand ids out of order.
#[tokio::test]
async fn the_inbox_refuses_what_its_first_look_rules_out() {
    use super::pg_inbox::PgInbox;
    use sqlx::Connection;
    let Some(target) = fresh_database().await else {
        return;
    };
    let (dir, _holder) = a_holder(&target).await;
    let standby_dir = same_key_dir(dir.path());
    let standby = PgInbox::connect(&target, standby_dir.path()).expect("inbox");
    let mut admin = sqlx::PgConnection::connect(&target.url)
        .await
        .expect("admin");
    // A sequence that caches ids per session is refused at the first look, saying what to do.
    sqlx::query("ALTER SEQUENCE inbox_id_seq CACHE 10")
        .execute(&mut admin)
        .await
        .expect("alter");
    let cached = PgInbox::connect(&target, dir.path()).expect("inbox");
    let e = cached.waiting(0, 10).await.expect_err("a caching sequence");
    assert!(e.to_string().contains("CACHE 1"), "{e}");
    sqlx::query("ALTER SEQUENCE inbox_id_seq CACHE 1")
        .execute(&mut admin)
        .await
        .expect("alter");

    // Taken and removed, then put back after a look at an empty inbox.
    let first = standby
        .put("checked", &serde_json::json!({ "n": 1 }))
        .await
        .expect("stored");
    let taken = read_row(&mut admin, first).await;
    sqlx::query("DELETE FROM inbox")
        .execute(&mut admin)
        .await
        .expect("taken");
    let holder = PgInbox::connect(&target, dir.path()).expect("inbox");
    assert!(holder.waiting(0, 10).await.expect("waiting").is_empty());
    write_row(&mut admin, PUT_BACK, first, &taken).await;
    let waiting = holder.waiting(0, 10).await.expect("waiting");
    let e = holder.open(&waiting[0]).expect_err("put back");
    assert!(e.to_string().contains("put back"), "{e}");
    holder.done(first).await.expect("removed");

    // Rewritten to keep what is left; the earlier version put back is refused.
    let second = standby
        .put("checked", &serde_json::json!([1, 2]))
        .await
        .expect("stored");
    let waiting = holder.waiting(0, 10).await.expect("waiting");
    assert_eq!(waiting[0].id, second);
    let earlier = read_row(&mut admin, second).await;
    holder
        .keep_only(&waiting[0], "checked", &serde_json::json!([2]))
        .await
        .expect("kept");
    // Only as read: the row changed since is not rewritten over.
    assert!(
        holder
            .keep_only(&waiting[0], "checked", &serde_json::json!([3]))
            .await
            .is_err()
    );
    let waiting = holder.waiting(0, 10).await.expect("waiting");
    assert_eq!(holder.open(&waiting[0]).expect("rewritten"), "[2]");
    write_row(
        &mut admin,
        "UPDATE inbox SET via = $2, body = $3, mac = $4 WHERE id = $1",
        second,
        &earlier,
    )
    .await;
    let waiting = holder.waiting(0, 10).await.expect("waiting");
    let e = holder.open(&waiting[0]).expect_err("rewound");
    assert!(e.to_string().contains("last wrote"), "{e}");
    holder.done(second).await.expect("removed");

    // Sealed the old way (over `via` alone): taken when it waited before the host's first
    // look, refused when it came after.
    let old_way = super::rows::Sealer {
        key: super::mac::HostKey::load_or_create(&dir.path().join("host.key")).expect("key"),
        place: "test".into(),
    };
    let (body, mac) = old_way
        .seal("inbox", "checked", &serde_json::json!({ "n": 3 }))
        .expect("seal");
    let insert_old = "INSERT INTO inbox (via, body, mac) VALUES ('checked', $1, $2) RETURNING id";
    let before: i64 = sqlx::query_scalar(insert_old)
        .bind(&body)
        .bind(&mac)
        .fetch_one(&mut admin)
        .await
        .expect("insert");
    let upgraded = PgInbox::connect(&target, same_key_dir(dir.path()).path()).expect("inbox");
    let waiting = upgraded.waiting(0, 10).await.expect("waiting");
    assert_eq!(waiting[0].id, before);
    assert!(upgraded.open(&waiting[0]).is_ok());
    let after: i64 = sqlx::query_scalar(insert_old)
        .bind(&body)
        .bind(&mac)
        .fetch_one(&mut admin)
        .await
        .expect("insert");
    let waiting = upgraded.waiting(0, 10).await.expect("waiting");
    assert_eq!(waiting[1].id, after);
    let e = upgraded.open(&waiting[1]).expect_err("the old way, later");
    assert!(e.to_string().contains("earlier version"), "{e}");
}

#[tokio::test]
async fn a_postgres_store_is_held_by_one_host_and_a_fenced_host_writes_nothing() {
    use sqlx::Connection;
    let Some(target) = fresh_database().await else {
        return;
    };
    let choice = StoreChoice::Postgres(target.clone());
    let a_dir = tempfile::tempdir().expect("tempdir");
    let a = open(
        a_dir.path(),
        Some(&choice),
        StoreChoice::Json,
        Duration::from_secs(1),
    )
    .await
    .expect("host a");
    a.save(&proposed(incident("inc-20", "fp", 1), "apr-20-01"))
        .await
        .expect("save");

    // A second host with the same key waits for the database, then is told who holds it.
    let b_dir = same_key_dir(a_dir.path());
    let held = open(
        b_dir.path(),
        Some(&choice),
        StoreChoice::Json,
        Duration::from_millis(300),
    )
    .await
    .err()
    .expect("the database is held");
    assert!(held.to_string().contains("held by"), "{held}");

    // A's lock goes with its connection (a network cut, a server restart). With nobody else
    // waiting, A takes it back on a new connection and goes on: its token is still the newest.
    let mut admin = sqlx::PgConnection::connect(&target.url)
        .await
        .expect("admin");
    let holder_pid = async |admin: &mut sqlx::PgConnection| -> Vec<i32> {
        sqlx::query_scalar(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_all(admin)
        .await
        .expect("pg_locks")
    };
    let cut = async |admin: &mut sqlx::PgConnection, pid: i32| {
        let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(admin)
            .await
            .expect("terminate");
        assert!(done);
    };
    let first = holder_pid(&mut admin).await;
    assert_eq!(first.len(), 1, "{first:?}");
    cut(&mut admin, first[0]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let again = loop {
        let now = holder_pid(&mut admin).await;
        if now.len() == 1 && now != first {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "A never took its lock back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(a.lost(), None);
    a.save(&incident("inc-22", "fp3", 3))
        .await
        .expect("A writes on: nobody took over");
    a.confirm_held().await.expect("A still holds the state");

    // B waits in the server's lock queue; the moment A's session ends the lock is B's, before
    // A can take it back. B raises the token; from then on A writes nothing, and knows it.
    let waiting = {
        let dir = b_dir.path().to_path_buf();
        let choice = choice.clone();
        tokio::spawn(async move {
            open(
                &dir,
                Some(&choice),
                StoreChoice::Json,
                Duration::from_secs(10),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cut(&mut admin, again[0]).await;
    let b = waiting.await.expect("task").expect("host b takes over");
    // Asked before a change, the database says A no longer holds it — whether or not A's own
    // watch has noticed yet.
    b.confirm_held().await.expect("B holds the state");
    assert!(
        matches!(a.confirm_held().await, Err(StoreError::Fenced { .. })),
        "A is fenced"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while a.lost().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "A never noticed the takeover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        a.lost().is_some_and(|why| why.contains("token")),
        "{:?}",
        a.lost()
    );
    for refused in [
        a.save(&incident("inc-21", "fp2", 2)).await.err(),
        a.claim(answer("apr-20-01", "alice"), IncidentStatus::Executing)
            .await
            .err()
            .map(|e| match e {
                ClaimError::Store(e) => e,
                other => panic!("{other}"),
            }),
        a.save_agent_state("kafka", &AgentState::Idle).await.err(),
        a.save_guard(&GuardBook::default()).await.err(),
    ] {
        assert!(
            matches!(refused, Some(StoreError::Fenced { .. })),
            "{refused:?}"
        );
    }
    assert!(matches!(
        b.get("inc-21").await,
        Err(StoreError::UnknownIncident(_))
    ));
    // B reads what A wrote before, and the proposal is still there to answer — once.
    let claimed = b
        .claim(answer("apr-20-01", "alice"), IncidentStatus::Executing)
        .await
        .expect("b claims");
    assert_eq!(claimed.status, IncidentStatus::Executing);

    // A host with another key is told so by name, not shown every row as tampered.
    drop(b);
    let stranger = tempfile::tempdir().expect("tempdir");
    let other = open(
        stranger.path(),
        Some(&choice),
        StoreChoice::Json,
        Duration::from_secs(1),
    )
    .await
    .err()
    .expect("another key is refused");
    assert!(other.to_string().contains("host.key"), "{other}");
}

#[tokio::test]
async fn an_open_incident_whose_columns_were_edited_to_closed_is_not_pruned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open_waiting(dir.path(), Duration::from_secs(1))
        .await
        .expect("open");
    let mut closed = incident("inc-41", "fp2", 2);
    closed.status = IncidentStatus::Resolved;
    for i in [incident("inc-40", "fp1", 1), closed] {
        store.save(&i).await.expect("save");
    }
    // The index columns are not sealed: edited to say closed long ago, they choose the open
    // incident for retention, and its sealed body keeps it.
    let raw = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join(sqlite::FILE).display()
    ))
    .await
    .expect("raw connection");
    sqlx::query("UPDATE incidents SET status = 'resolved', changed_ms = 0 WHERE id = 'inc-40'")
        .execute(&raw)
        .await
        .expect("edit");
    let due = SystemTime::now() + Duration::from_secs(2);
    let pruned = store
        .prune_closed("kafka", due, 10, &|_| Ok(()))
        .await
        .expect("prune");
    assert_eq!(pruned, vec!["inc-41"]);
    assert_eq!(
        store.get("inc-40").await.expect("kept").status,
        IncidentStatus::Triaging
    );
}

#[tokio::test]
async fn closed_incidents_leave_the_store_when_retention_says_so_and_nothing_else_does() {
    each_store(async |store, _| {
        let closed = |id: &str, fp: &str, opened: u64, status: IncidentStatus| {
            let mut i = incident(id, fp, opened);
            i.status = status;
            i
        };
        // Opened, then closed: the fingerprint's markers point at it.
        store
            .save(&incident("inc-33", "fp1", 4))
            .await
            .expect("save");
        for i in [
            closed("inc-30", "fp1", 1, IncidentStatus::Resolved),
            closed("inc-33", "fp1", 4, IncidentStatus::Failed),
            incident("inc-32", "fp3", 3),
            closed("inc-34", "fp4", 5, IncidentStatus::PendingApproval),
        ] {
            store.save(&i).await.expect("save");
        }
        let mut elsewhere = closed("inc-31", "fp2", 2, IncidentStatus::Rejected);
        elsewhere.agent = "kubernetes".into();
        store.save(&elsewhere).await.expect("save");

        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let told = std::sync::Mutex::new(Vec::<String>::new());
        let announce = |ids: &[String]| {
            told.lock().expect("told").extend(ids.iter().cloned());
            Ok(())
        };
        assert!(
            store
                .prune_closed("kafka", an_hour_ago, 10, &announce)
                .await
                .expect("prune")
                .is_empty(),
            "nothing has been closed that long"
        );
        assert!(told.lock().expect("told").is_empty(), "nothing announced");
        let due = SystemTime::now() + Duration::from_secs(2);
        // An announcement that fails (its record not durable) removes nothing.
        let refused = store
            .prune_closed("kafka", due, 10, &|_| {
                Err(StoreError::AuditNotDurable("disk full".into()))
            })
            .await;
        assert!(
            matches!(refused, Err(StoreError::AuditNotDurable(_))),
            "{refused:?}"
        );
        assert_eq!(store.get("inc-30").await.expect("kept").id, "inc-30");
        // Due now: a bounded batch at a time, only the agent's closed incidents, each
        // announced before it went.
        let mut pruned = store
            .prune_closed("kafka", due, 1, &announce)
            .await
            .expect("prune");
        assert_eq!(pruned.len(), 1);
        pruned.extend(
            store
                .prune_closed("kafka", due, 10, &announce)
                .await
                .expect("prune"),
        );
        pruned.sort();
        assert_eq!(pruned, vec!["inc-30", "inc-33"]);
        let mut announced = told.lock().expect("told").clone();
        announced.sort();
        assert_eq!(announced, pruned);
        assert!(
            store
                .prune_closed("kafka", due, 10, &announce)
                .await
                .expect("prune")
                .is_empty()
        );
        for gone in ["inc-30", "inc-33"] {
            assert!(matches!(
                store.get(gone).await,
                Err(StoreError::UnknownIncident(_))
            ));
        }
        for kept in ["inc-31", "inc-32", "inc-34"] {
            assert_eq!(store.get(kept).await.expect("kept").id, kept);
        }
        // A late notice for the pruned fingerprint finds nothing, and says so without error.
        assert_eq!(
            store.latest_for("kafka", "fp1").await.expect("latest"),
            None
        );
        assert_eq!(store.open_for("kafka", "fp1").await.expect("open"), None);
        assert!(
            store
                .open_for("kafka", "fp3")
                .await
                .expect("open")
                .is_some()
        );
    })
    .await;
}
