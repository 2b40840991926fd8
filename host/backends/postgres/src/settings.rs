//! How to reach one agent's PostgreSQL. The configuration file resolves the password from an
//! environment variable or a file; it never appears in the URL, a log line or `Debug`.

use serde::Deserialize;
use sqlx::postgres::PgSslMode;
use std::fmt;
use std::time::Duration;

pub const DEFAULT_POOL: u32 = 4;
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// libpq's `sslmode`, as written in the configuration (`verify-full`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl From<TlsMode> for PgSslMode {
    fn from(mode: TlsMode) -> Self {
        match mode {
            TlsMode::Disable => PgSslMode::Disable,
            TlsMode::Prefer => PgSslMode::Prefer,
            TlsMode::Require => PgSslMode::Require,
            TlsMode::VerifyCa => PgSslMode::VerifyCa,
            TlsMode::VerifyFull => PgSslMode::VerifyFull,
        }
    }
}

#[derive(Clone)]
pub struct PostgresSettings {
    /// `postgres://user@host:port/database`, without a password.
    pub url: String,
    pub password: Option<String>,
    pub pool: u32,
    /// Every statement's server-side limit (and, with a margin, the client's).
    pub statement_timeout: Duration,
    pub connect_timeout: Duration,
    pub tls: TlsMode,
    /// The CA certificate(s) (PEM) a `verify-ca`/`verify-full` server certificate must chain to;
    /// none: the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Refuse to cancel or terminate a superuser's session (default: refuse).
    pub refuse_superuser_sessions: bool,
}

impl PostgresSettings {
    pub fn new(url: impl Into<String>) -> Self {
        PostgresSettings {
            url: url.into(),
            password: None,
            pool: DEFAULT_POOL,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            tls: TlsMode::default(),
            ca_file: None,
            refuse_superuser_sessions: true,
        }
    }
}

impl fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("pool", &self.pool)
            .field("statement_timeout", &self.statement_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("refuse_superuser_sessions", &self.refuse_superuser_sessions)
            .finish()
    }
}

/// A URL that carries a password is refused: the password belongs in `password:` (an env var or
/// a file), where it is never echoed or audited. Found where the client would find it: in the
/// user info, or as a `password` query parameter however it is percent-encoded. A URL that does
/// not parse is judged by its text, so an odd one is refused rather than echoed.
pub fn url_has_password(raw: &str) -> bool {
    match url::Url::parse(raw) {
        Ok(url) => {
            url.password().is_some()
                || url
                    .query_pairs()
                    .any(|(key, _)| key.trim().eq_ignore_ascii_case("password"))
        }
        Err(_) => {
            let lower = raw.to_ascii_lowercase();
            lower.contains("password") || lower.contains("%70") || lower.contains("%50")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::url_has_password;

    #[test]
    fn passwords_in_urls_are_found() {
        assert!(url_has_password("postgres://u:secret@h/db"));
        assert!(url_has_password("postgres://h/db?password=secret"));
        assert!(!url_has_password("postgres://u@h:5432/db"));
        assert!(!url_has_password("postgres://h/db?sslmode=require"));
        // However it is written: beside a user, percent-encoded, in another case.
        assert!(url_has_password("postgres://themis@db/app?password=s3cret"));
        assert!(url_has_password(
            "postgres://themis@db/app?sslmode=require&pass%77ord=s3cret"
        ));
        assert!(url_has_password(
            "postgresql://themis@db/app?PASSWORD=s3cret"
        ));
    }
}
