//! The backend against a real PostgreSQL (see themis_testkit::postgres): real lock queues, real
//! long queries, real signals. Themis connects as the least-privilege role.

use sqlx::Executor;
use std::time::{Duration, Instant};
use themis_backend_postgres::{PostgresBackend, PostgresSettings};
use themis_caps::PostgresCaps;
use themis_caps::types::CapError;
use themis_testkit::postgres::{APP_ROLE, BARE_ROLE, THEMIS_ROLE, TestDb};

fn backend(url: &str) -> PostgresBackend {
    let mut settings = PostgresSettings::new(url);
    settings.tls = themis_backend_postgres::TlsMode::Disable;
    PostgresBackend::new("postgres", settings).unwrap_or_else(|e| panic!("backend: {e}"))
}

/// Poll `check` until it holds or 10 s pass.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn accounts(db: &TestDb) {
    db.admin
        .execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
             INSERT INTO accounts VALUES (1, 100), (2, 200);
             GRANT ALL ON accounts TO app;",
        )
        .await
        .unwrap_or_else(|e| panic!("setup: {e}"));
}

#[tokio::test]
async fn a_lock_queue_is_read_head_first_and_its_blocker_terminated() {
    let Some(db) = TestDb::create("lockq").await else {
        return;
    };
    accounts(&db).await;
    let (mut holder, holder_pid) = db.session(APP_ROLE).await;
    holder
        .execute("BEGIN; UPDATE accounts SET balance = balance - 1 WHERE id = 1")
        .await
        .unwrap_or_else(|e| panic!("holder: {e}"));
    // Two waiters: the first on the holder, the second on the first (a queue of three).
    let mut waiters = Vec::new();
    let mut waiter_pids = Vec::new();
    for _ in 0..2 {
        let (mut conn, pid) = db.session(APP_ROLE).await;
        waiter_pids.push(pid);
        waiters.push(tokio::spawn(async move {
            conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
                .await
                .map(|_| ())
        }));
    }
    let pg = backend(&db.url(THEMIS_ROLE));
    eventually("both waiters to queue", || async {
        pg.blockers().await.map(|w| w.len() >= 2).unwrap_or(false)
    })
    .await;
    let waits = pg.blockers().await.unwrap_or_default();
    assert_eq!(
        waits[0].blocking_pid, holder_pid,
        "the head of the queue comes first: {waits:?}"
    );
    assert!(waits[0].blocking_query.contains("UPDATE accounts"));
    assert!(waiter_pids.contains(&waits[0].blocked_pid));
    assert!(!waits[0].lock_type.is_empty());

    let activity = pg.activity(0.0).await.unwrap_or_default();
    let pids: Vec<i32> = activity.iter().map(|b| b.pid).collect();
    assert!(waiter_pids.iter().all(|p| pids.contains(p)), "{activity:?}");
    assert!(
        activity
            .iter()
            .all(|b| !b.application.starts_with("themis:")),
        "Themis' own sessions are not activity"
    );

    assert_eq!(pg.terminate_backend(holder_pid).await, Ok(true));
    assert!(
        !db.alive(holder_pid).await,
        "the terminate's postcondition is the server's"
    );
    for waiter in waiters {
        let done = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap_or_else(|_| panic!("a waiter still waits after the blocker ended"));
        assert!(matches!(done, Ok(Ok(()))), "{done:?}");
    }
    assert_eq!(pg.blockers().await, Ok(Vec::new()));
    // Signalling a pid that has gone says so, not an error.
    assert_eq!(pg.terminate_backend(holder_pid).await, Ok(false));
    assert!(
        holder.execute("SELECT 1").await.is_err(),
        "the holder's session is over"
    );
}

#[tokio::test]
async fn a_long_query_is_listed_and_cancelled_without_ending_its_session() {
    let Some(db) = TestDb::create("longq").await else {
        return;
    };
    let (mut conn, pid) = db.session(APP_ROLE).await;
    let sleeper = tokio::spawn(async move {
        let r = conn.execute("SELECT pg_sleep(30)").await.map(|_| ());
        (r, conn)
    });
    let pg = backend(&db.url(THEMIS_ROLE));
    eventually("the sleep to be a long query", || async {
        pg.activity(0.5)
            .await
            .map(|a| a.iter().any(|b| b.pid == pid))
            .unwrap_or(false)
    })
    .await;
    let listed = pg.activity(0.5).await.unwrap_or_default();
    let me = listed.iter().find(|b| b.pid == pid);
    assert!(
        me.is_some_and(|b| b.query.contains("pg_sleep")
            && b.user == APP_ROLE
            && b.query_seconds >= 0.5),
        "{listed:?}"
    );
    assert!(pg.activity(3600.0).await.unwrap_or_default().is_empty());

    assert_eq!(pg.cancel_backend(pid).await, Ok(true));
    let (result, mut conn) = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .unwrap_or_else(|_| panic!("the cancelled query did not end"))
        .unwrap_or_else(|e| panic!("join: {e}"));
    let error = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("canceling statement"), "{error}");
    assert!(
        conn.execute("SELECT 1").await.is_ok(),
        "cancel keeps the session"
    );
}

#[tokio::test]
async fn connection_slots_and_the_sessions_idle_in_them_are_read_and_ended() {
    let Some(db) = TestDb::create("idleconn").await else {
        return;
    };
    let (mut idle, idle_pid) = db.session(APP_ROLE).await;
    idle.execute("SELECT 1")
        .await
        .unwrap_or_else(|e| panic!("idle: {e}"));
    let (mut busy, busy_pid) = db.session(APP_ROLE).await;
    let sleeper = tokio::spawn(async move {
        let r = busy.execute("SELECT pg_sleep(30)").await.map(|_| ());
        (r, busy)
    });
    let pg = backend(&db.url(THEMIS_ROLE));
    eventually("the idle session to be idle a second", || async {
        pg.connection_usage(1.0)
            .await
            .map(|u| u.idle.iter().any(|b| b.pid == idle_pid))
            .unwrap_or(false)
    })
    .await;
    let usage = pg
        .connection_usage(1.0)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let max: i32 = sqlx::query_scalar("SELECT current_setting('max_connections')::int4")
        .fetch_one(&db.admin)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(usage.max_connections, max);
    assert!(usage.reserved >= 0 && usage.reserved < max);
    // The two sessions, this backend's own connection and the admin's at least.
    assert!(usage.used >= 3, "{usage:?}");
    let me = usage.idle.iter().find(|b| b.pid == idle_pid);
    assert!(
        me.is_some_and(|b| b.state == "idle" && b.query_seconds >= 1.0 && b.user == APP_ROLE),
        "{usage:?}"
    );
    // Busy is not idle, and nobody has been idle for an hour.
    assert!(!usage.idle.iter().any(|b| b.pid == busy_pid));
    assert!(
        pg.connection_usage(3600.0)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"))
            .idle
            .is_empty()
    );
    assert!(matches!(
        pg.connection_usage(f64::NAN).await,
        Err(CapError::InvalidArgument(_))
    ));

    assert_eq!(pg.terminate_backend(idle_pid).await, Ok(true));
    let after = pg
        .connection_usage(0.0)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(!after.idle.iter().any(|b| b.pid == idle_pid), "{after:?}");
    assert_eq!(pg.cancel_backend(busy_pid).await, Ok(true));
    let _ = tokio::time::timeout(Duration::from_secs(10), sleeper).await;
}

#[tokio::test]
async fn signals_are_refused_for_anything_but_a_client_of_this_database() {
    let Some(db) = TestDb::create("refuse").await else {
        return;
    };
    let Some(other) = TestDb::create("other").await else {
        return;
    };
    let pg = backend(&db.url(THEMIS_ROLE));
    let denied = |r: Result<bool, CapError>| matches!(r, Err(CapError::Denied(_)));

    // A superuser's session (the admin pool is one).
    let (_su, su_pid) = db.session("postgres").await;
    let r = pg.terminate_backend(su_pid).await;
    assert!(denied(r.clone()), "superuser session: {r:?}");
    // A session on another database.
    let (_elsewhere, elsewhere_pid) = other.session(APP_ROLE).await;
    let r = pg.cancel_backend(elsewhere_pid).await;
    assert!(denied(r.clone()), "other database: {r:?}");
    // Themis' own connection.
    assert!(pg.blockers().await.is_ok());
    let own: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'themis:%' AND datname = current_database()",
    )
    .fetch_all(&db.admin)
    .await
    .unwrap_or_default();
    assert!(!own.is_empty());
    for pid in own {
        let r = pg.terminate_backend(pid).await;
        assert!(denied(r.clone()), "own connection {pid}: {r:?}");
    }
    // A background process (the checkpointer), not a client.
    let aux: Option<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
            .fetch_optional(&db.admin)
            .await
            .unwrap_or_default();
    if let Some(pid) = aux {
        let r = pg.terminate_backend(pid).await;
        assert!(denied(r.clone()), "checkpointer: {r:?}");
    }
    // Nonsense and absent pids.
    assert!(matches!(
        pg.terminate_backend(0).await,
        Err(CapError::InvalidArgument(_))
    ));
    assert!(matches!(
        pg.cancel_backend(-7).await,
        Err(CapError::InvalidArgument(_))
    ));
    assert_eq!(pg.terminate_backend(i32::MAX).await, Ok(false));
    assert!(db.alive(elsewhere_pid).await && db.alive(su_pid).await);
}

#[tokio::test]
async fn doctor_names_the_missing_privileges() {
    let Some(db) = TestDb::create("doctor").await else {
        return;
    };
    let good = backend(&db.url(THEMIS_ROLE)).doctor().await;
    let good = good.unwrap_or_else(|e| panic!("doctor: {e}"));
    assert_eq!(good.user, THEMIS_ROLE);
    assert!(good.missing.is_empty() && !good.superuser, "{good:?}");
    let bare = backend(&db.url(BARE_ROLE)).doctor().await;
    let bare = bare.unwrap_or_else(|e| panic!("doctor: {e}"));
    assert_eq!(bare.missing, vec!["pg_monitor", "pg_signal_backend"]);
}

#[tokio::test]
async fn a_session_without_privileges_is_denied_not_failed() {
    let Some(db) = TestDb::create("noprivs").await else {
        return;
    };
    let (_victim, victim_pid) = db.session(APP_ROLE).await;
    let pg = backend(&db.url(BARE_ROLE));
    let r = pg.terminate_backend(victim_pid).await;
    assert!(
        matches!(r, Err(CapError::Denied(ref m)) if m.contains("pg_signal_backend")),
        "{r:?}"
    );
    assert!(db.alive(victim_pid).await);
}

#[tokio::test]
async fn a_lost_connection_is_an_error_or_a_retried_read_never_a_hang() {
    let Some(db) = TestDb::create("lost").await else {
        return;
    };
    let pg = backend(&db.url(THEMIS_ROLE));
    assert!(pg.activity(0.0).await.is_ok());
    // The server ends Themis' sessions between two calls: a read reconnects.
    db.admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'themis:%'",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        pg.blockers().await.is_ok(),
        "a read after a dropped connection is retried"
    );

    // A server that accepts and never answers: an `unavailable` error within the deadlines.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = silent.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut settings = PostgresSettings::new(format!("postgres://themis_agent@{addr}/db"));
    settings.tls = themis_backend_postgres::TlsMode::Disable;
    settings.connect_timeout = Duration::from_millis(500);
    settings.statement_timeout = Duration::from_millis(500);
    let dead = PostgresBackend::new("postgres", settings).unwrap_or_else(|e| panic!("{e}"));
    let r = tokio::time::timeout(Duration::from_secs(30), dead.terminate_backend(1234)).await;
    assert!(
        matches!(r, Ok(Err(CapError::Unavailable(_)))),
        "a mutation against a silent server: {r:?}"
    );
    let r = tokio::time::timeout(Duration::from_secs(30), dead.activity(0.0)).await;
    assert!(
        matches!(r, Ok(Err(CapError::Unavailable(_)))),
        "a read against a silent server: {r:?}"
    );
    held.abort();
}
