//! A real PostgreSQL for tests: `scripts/postgres start` runs a throwaway cluster and names it in
//! `THEMIS_TEST_POSTGRES` (a superuser URL); each test gets a database of its own and the roles
//! of a least-privilege deployment. Without the variable a test skips, unless
//! `THEMIS_REQUIRE_SERVICES=1` (CI) makes that a failure.

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor};
use std::sync::atomic::{AtomicU32, Ordering};

/// The role Themis connects as: `pg_monitor` + `pg_signal_backend`, nothing else.
pub const THEMIS_ROLE: &str = "themis_agent";
/// The role an application's sessions use.
pub const APP_ROLE: &str = "app";
/// A role with no privileges at all.
pub const BARE_ROLE: &str = "bare";

/// The superuser URL of the test cluster, or `None` (after saying why) when there is none.
pub fn admin_url() -> Option<String> {
    match std::env::var("THEMIS_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if crate::services::required() {
                panic!(
                    "THEMIS_REQUIRE_SERVICES=1 but THEMIS_TEST_POSTGRES is not set: \
                     start one with `eval $(scripts/postgres start)`"
                );
            }
            eprintln!(
                "skipped: no PostgreSQL (THEMIS_TEST_POSTGRES unset; `eval $(scripts/postgres start)`)"
            );
            None
        }
    }
}

/// A database of one test's own on the test cluster.
pub struct TestDb {
    pub name: String,
    /// `host:port` of the cluster.
    host: String,
    /// A superuser pool on this database, for setting up situations.
    pub admin: PgPool,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    /// Create `themis_<label>_<pid>_<n>` and the test roles; `None` when there is no cluster.
    pub async fn create(label: &str) -> Option<TestDb> {
        let admin_url = admin_url()?;
        let name = format!(
            "themis_{label}_{}_{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {admin_url}: {e}"));
        for role in [
            format!("CREATE ROLE {THEMIS_ROLE} LOGIN IN ROLE pg_monitor, pg_signal_backend"),
            format!("CREATE ROLE {APP_ROLE} LOGIN"),
            format!("CREATE ROLE {BARE_ROLE} LOGIN"),
        ] {
            // Roles are per cluster; parallel tests race to create them.
            let sql = format!(
                "DO $$ BEGIN {role}; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
            );
            conn.execute(sql.as_str())
                .await
                .unwrap_or_else(|e| panic!("{role}: {e}"));
        }
        conn.execute(format!("CREATE DATABASE {name} OWNER {APP_ROLE}").as_str())
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        let options: PgConnectOptions = admin_url
            .parse()
            .unwrap_or_else(|e| panic!("THEMIS_TEST_POSTGRES `{admin_url}`: {e}"));
        let host = format!("{}:{}", options.get_host(), options.get_port());
        let admin = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options.database(&name))
            .await
            .unwrap_or_else(|e| panic!("connect to {name}: {e}"));
        Some(TestDb { name, host, admin })
    }

    /// The URL of this database for `role` (the test cluster trusts loopback connections).
    pub fn url(&self, role: &str) -> String {
        format!("postgres://{role}@{}/{}", self.host, self.name)
    }

    /// A new session as `role`, with its backend pid.
    pub async fn session(&self, role: &str) -> (PgConnection, i32) {
        let mut conn = PgConnection::connect(&self.url(role))
            .await
            .unwrap_or_else(|e| panic!("connect as {role}: {e}"));
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("pg_backend_pid: {e}"));
        (conn, pid)
    }

    /// Is `pid` still connected?
    pub async fn alive(&self, pid: i32) -> bool {
        sqlx::query_scalar::<_, i32>("SELECT pid FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_optional(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("pg_stat_activity: {e}"))
            .is_some()
    }
}
