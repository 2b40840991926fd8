//! The statements, constant text with bound parameters only. Each lists client backends of the
//! configured database (`current_database()`), never Themis' own sessions.

/// The most rows one read returns; a step's result budget is far smaller anyway.
pub const MAX_ROWS: i64 = 500;

/// `$1` minimum seconds the current query has run, `$2` row limit.
pub const ACTIVITY: &str = r#"
SELECT a.pid, a.usename::text, a.datname::text, a.application_name, a.state,
       a.wait_event_type, a.wait_event, a.query,
       extract(epoch FROM clock_timestamp() - a.query_start)::float8 AS query_seconds,
       extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS xact_seconds
  FROM pg_stat_activity a
 WHERE a.backend_type = 'client backend'
   AND a.datname = current_database()
   AND a.pid <> pg_backend_pid()
   AND a.application_name NOT LIKE 'themis:%'
   AND a.state IS DISTINCT FROM 'idle'
   AND extract(epoch FROM clock_timestamp() - a.query_start) >= $1
 ORDER BY query_seconds DESC
 LIMIT $2
"#;

/// The server's connection limits and how many client connections it has now (every database:
/// they all share `max_connections`).
pub const CONNECTION_LIMITS: &str = r#"
SELECT current_setting('max_connections')::int4 AS max_connections,
       current_setting('superuser_reserved_connections')::int4 AS reserved,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int4 AS used
"#;

/// This database's client sessions idle outside a transaction for at least `$1` seconds
/// (`query_seconds` is the idle time), longest idle first. `$2` row limit.
pub const IDLE_SESSIONS: &str = r#"
SELECT a.pid, a.usename::text, a.datname::text, a.application_name, a.state,
       a.wait_event_type, a.wait_event, a.query,
       extract(epoch FROM clock_timestamp() - a.state_change)::float8 AS query_seconds,
       0::float8 AS xact_seconds
  FROM pg_stat_activity a
 WHERE a.backend_type = 'client backend'
   AND a.datname = current_database()
   AND a.pid <> pg_backend_pid()
   AND a.application_name NOT LIKE 'themis:%'
   AND a.state = 'idle'
   AND extract(epoch FROM clock_timestamp() - a.state_change) >= $1
 ORDER BY query_seconds DESC
 LIMIT $2
"#;

/// Who waits on whom: one row per (blocked, blocking) pair. The heads of the lock queues (a
/// blocker nobody blocks) come first, then the blocker with the most waiters, so the first row
/// names the session whose end frees the most. `$1` row limit.
pub const BLOCKERS: &str = r#"
WITH waits AS (
  SELECT w.pid AS blocked_pid, b.pid AS blocking_pid,
         w.query AS blocked_query, b.query AS blocking_query,
         extract(epoch FROM clock_timestamp() - w.query_start)::float8 AS waiting_seconds,
         cardinality(pg_blocking_pids(b.pid)) = 0 AS head
    FROM pg_stat_activity w
   CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS bp(pid)
    JOIN pg_stat_activity b ON b.pid = bp.pid
   WHERE w.backend_type = 'client backend'
     AND w.datname = current_database()
)
SELECT waits.blocked_pid, waits.blocking_pid, waits.blocked_query, waits.blocking_query,
       waits.waiting_seconds, l.locktype AS lock_type, l.relation::regclass::text AS relation
  FROM waits
  LEFT JOIN LATERAL (
       SELECT locktype, relation FROM pg_locks
        WHERE pid = waits.blocked_pid AND NOT granted LIMIT 1) l ON true
 ORDER BY waits.head DESC,
          count(*) OVER (PARTITION BY waits.blocking_pid) DESC,
          waits.waiting_seconds DESC
 LIMIT $1
"#;

/// Replicas streaming from this server (none on a standby that cascades to nobody). `$1` limit.
pub const REPLICATION: &str = r#"
SELECT r.application_name, coalesce(r.client_addr::text, 'local') AS client_addr, r.state,
       pg_wal_lsn_diff(
         CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END,
         r.replay_lsn)::int8 AS lag_bytes,
       extract(epoch FROM r.replay_lag)::float8 AS replay_lag_seconds
  FROM pg_stat_replication r
 ORDER BY lag_bytes DESC NULLS LAST
 LIMIT $1
"#;

/// What `$1` is, to decide whether it may be signalled.
pub const TARGET: &str = r#"
SELECT a.backend_type, a.datname::text, a.application_name,
       a.datname = current_database() AS same_db,
       a.pid = pg_backend_pid() AS own,
       r.rolsuper AS superuser
  FROM pg_stat_activity a
  LEFT JOIN pg_roles r ON r.oid = a.usesysid
 WHERE a.pid = $1
"#;

/// The rows a signal may reach: `$1`, if it still is a client backend of this database, not
/// a Themis session, and — when the parameter named is true — not a superuser's (repeated in
/// the signalling statement, so a pid that changed hands between the check and the signal is
/// not touched).
macro_rules! signal_target {
    ($refuse_superuser:literal) => {
        concat!(
            r#"
  FROM pg_stat_activity a
 WHERE a.pid = $1
   AND a.backend_type = 'client backend'
   AND a.datname = current_database()
   AND a.application_name NOT LIKE 'themis:%'
   AND ("#,
            $refuse_superuser,
            r#"::boolean = false
        OR NOT coalesce((SELECT r.rolsuper FROM pg_roles r WHERE r.oid = a.usesysid), false))
"#
        )
    };
}

/// Cancel `$1`'s current query (`$2`: refuse a superuser's session).
pub const CANCEL: &str = concat!("SELECT pg_cancel_backend(a.pid)", signal_target!("$2"));

/// Terminate `$1` and wait up to `$2` ms for it to exit (`$3`: refuse a superuser's session).
pub const TERMINATE: &str = concat!(
    "SELECT pg_terminate_backend(a.pid, $2)",
    signal_target!("$3")
);

/// Is `$1` still connected?
pub const STILL_THERE: &str = "SELECT pid FROM pg_stat_activity WHERE pid = $1";

/// Who Themis is and what it may do.
pub const DOCTOR: &str = r#"
SELECT current_user::text AS usr, current_database()::text AS db,
       current_setting('server_version') AS version,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser,
       pg_has_role(current_user, 'pg_monitor', 'MEMBER') AS monitor,
       pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') AS signal
"#;
