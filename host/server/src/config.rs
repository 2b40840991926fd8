//! `themis.yaml`: the service's one configuration file, every scalar setting also from a
//! `THEMIS_…` environment variable (a flag beats the variable, the variable beats the file).
//!
//! ```yaml
//! listen: 127.0.0.1:9464              # THEMIS_LISTEN
//! agents: ../agents                   # THEMIS_AGENTS; paths in the file are relative to it
//! state_dir: ../.themis/serve         # THEMIS_STATE_DIR
//! audit: audit.jsonl                  # THEMIS_AUDIT  [default: <state_dir>/audit.jsonl]
//! cache_dir: ../.themis/cache         # THEMIS_CACHE_DIR
//! intake:
//!   tokens: [ { env: THEMIS_INTAKE_TOKEN }, { sha256: "sha256:…" }, { file: /run/secrets/t } ]
//! approvers:
//!   oncall: { token_env: THEMIS_TOKEN, slack_user: U0123 }
//!   bob: { token_sha256: "sha256:…" }
//! slack:
//!   signing_secret: { env: SLACK_SIGNING_SECRET }   # or { file: PATH }; never inline
//!   webhook_url: { env: THEMIS_SLACK_WEBHOOK_URL }
//!   response_url_prefix: https://hooks.slack.com/   # the default
//! backends:                            # per agent; an agent with none fails every call closed
//!   kafka: { scenario: ../tests/scenarios/usecase-consumer-lag-gc.yaml, dry_run: false }
//! limits:
//!   body_bytes: 1048576                # THEMIS_BODY_LIMIT_BYTES
//!   queue: 64                          # THEMIS_QUEUE_CAPACITY (alerts waiting per agent)
//! ```
//!
//! Secrets are named (an environment variable or a file), never written in the file, and never
//! shown: [`Secret`]'s `Debug` prints its source only, and the audit redacts their values.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use themis_agent::approvers::Approvers;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;
pub const DEFAULT_QUEUE: usize = 64;
/// The most alerts one Alertmanager notification may carry (Alertmanager's own default
/// `max_alerts` is 0, unlimited; the body limit bounds it first in practice).
pub const MAX_ALERTS_PER_NOTIFICATION: usize = 1000;

#[derive(Debug, thiserror::Error)]
#[error("{}: {}{problem}", file.display(), if field.is_empty() { String::new() } else { format!("{field}: ") })]
pub struct ConfigError {
    pub file: PathBuf,
    pub field: String,
    pub problem: String,
}

/// Where a secret comes from, as written: exactly one key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    sha256: Option<String>,
}

impl TryFrom<RawSecret> for SecretSource {
    type Error = String;
    fn try_from(raw: RawSecret) -> Result<Self, String> {
        match (raw.env, raw.file, raw.sha256) {
            (Some(e), None, None) => Ok(SecretSource::Env(e)),
            (None, Some(f), None) => Ok(SecretSource::File(f)),
            (None, None, Some(h)) => Ok(SecretSource::Sha256(h)),
            _ => {
                Err("give exactly one of `env: VAR`, `file: PATH` or `sha256: \"sha256:…\"`".into())
            }
        }
    }
}

/// Where a secret comes from.
#[derive(Clone, Deserialize)]
#[serde(try_from = "RawSecret")]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
    /// Only for tokens the host compares (never for a key it must use): `sha256:<hex>`.
    Sha256(String),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(v) => write!(f, "env {v}"),
            SecretSource::File(p) => write!(f, "file {}", p.display()),
            SecretSource::Sha256(_) => write!(f, "sha256"),
        }
    }
}

/// A secret value, read once at start. Shown as `***`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How an intake token is checked: the SHA-256 it must have.
#[derive(Clone)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> TokenHash {
        use sha2::Digest;
        TokenHash(sha2::Sha256::digest(token.as_bytes()).into())
    }

    /// Constant-time comparison.
    pub fn matches(&self, token: &str) -> bool {
        let got = TokenHash::of(token);
        self.0
            .iter()
            .zip(got.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:…")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntake {
    #[serde(default)]
    tokens: Vec<SecretSource>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlack {
    signing_secret: SecretSource,
    #[serde(default)]
    webhook_url: Option<SecretSource>,
    /// Where `response_url`s may point (a signed request names it; this bounds it anyway).
    #[serde(default)]
    response_url_prefix: Option<String>,
}

pub const DEFAULT_RESPONSE_URL_PREFIX: &str = "https://hooks.slack.com/";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    body_bytes: Option<usize>,
    #[serde(default)]
    queue: Option<usize>,
}

/// Where one agent's capabilities are served from. Today: a scenario file's mocked world
/// (optionally dry-run); the real backends (sqlx, rdkafka, kube) come as their own kinds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    pub scenario: PathBuf,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    agents: Option<PathBuf>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    audit: Option<PathBuf>,
    #[serde(default)]
    cache_dir: Option<PathBuf>,
    #[serde(default)]
    intake: RawIntake,
    #[serde(default)]
    approvers: Approvers,
    #[serde(default)]
    slack: Option<RawSlack>,
    #[serde(default)]
    backends: BTreeMap<String, BackendSpec>,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Debug, Clone)]
pub struct SlackConfig {
    pub signing_secret: Secret,
    pub webhook_url: Option<Secret>,
    pub response_url_prefix: String,
}

/// The configuration, resolved and checked.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub file: PathBuf,
    pub listen: SocketAddr,
    pub agents: PathBuf,
    pub state_dir: PathBuf,
    pub audit: PathBuf,
    pub cache_dir: PathBuf,
    pub intake_tokens: Vec<TokenHash>,
    pub approvers: Approvers,
    pub slack: Option<SlackConfig>,
    pub backends: BTreeMap<String, BackendSpec>,
    pub body_limit: usize,
    pub queue: usize,
}

/// What the command line says; it beats the environment and the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub state_dir: Option<PathBuf>,
}

/// The environment the configuration is read in (a map, so tests need not touch the process').
pub type Env = BTreeMap<String, String>;

pub fn process_env() -> Env {
    std::env::vars().collect()
}

impl ServeConfig {
    pub fn load(file: &Path, overrides: &Overrides, env: &Env) -> Result<ServeConfig, ConfigError> {
        let err = |field: &str, problem: String| ConfigError {
            file: file.to_path_buf(),
            field: field.into(),
            problem,
        };
        let text = themis_core::files::read_text(file, themis_core::files::limits::DEFINITION)
            .map_err(|e| err("", format!("{e} (pass --config FILE)")))?;
        let raw: RawConfig =
            themis_core::yaml::from_str(&text).map_err(|e| err("", e.to_string()))?;
        let base = file.parent().unwrap_or(Path::new("."));
        let in_file = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let var = |name: &str| env.get(name).filter(|v| !v.is_empty()).cloned();

        let listen_text = overrides
            .listen
            .clone()
            .or_else(|| var("THEMIS_LISTEN"))
            .or(raw.listen.clone())
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            err(
                "listen",
                format!("`{listen_text}` is not an address:port (e.g. 127.0.0.1:9464)"),
            )
        })?;

        let path_setting = |field: &str, env_name: &str, from_file: Option<&PathBuf>| {
            var(env_name)
                .map(PathBuf::from)
                .or_else(|| from_file.map(|p| in_file(p)))
                .ok_or_else(|| {
                    err(
                        field,
                        format!("missing: set `{field}:` in the file or {env_name}"),
                    )
                })
        };
        let agents = path_setting("agents", "THEMIS_AGENTS", raw.agents.as_ref())?;
        if !agents.is_dir() {
            return Err(err(
                "agents",
                format!("{} is not a folder of agent definitions", agents.display()),
            ));
        }
        let state_dir = match &overrides.state_dir {
            Some(p) => p.clone(),
            None => path_setting("state_dir", "THEMIS_STATE_DIR", raw.state_dir.as_ref())?,
        };
        let audit = var("THEMIS_AUDIT")
            .map(PathBuf::from)
            .or_else(|| raw.audit.as_ref().map(|p| in_file(p)))
            .unwrap_or_else(|| state_dir.join("audit.jsonl"));
        let cache_dir = var("THEMIS_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| raw.cache_dir.as_ref().map(|p| in_file(p)))
            .unwrap_or_else(|| state_dir.join("cache"));

        let resolve = |field: String, source: &SecretSource| -> Result<String, ConfigError> {
            match source {
                SecretSource::Env(name) => var(name).ok_or_else(|| {
                    err(
                        &field,
                        format!(
                            "the environment variable {name} is not set (export it before starting)"
                        ),
                    )
                }),
                SecretSource::File(p) => {
                    let path = in_file(p);
                    let text =
                        themis_core::files::read_text(&path, themis_core::files::limits::KEY)
                            .map_err(|e| err(&field, format!("{}: {e}", path.display())))?;
                    let value = text.trim().to_owned();
                    if value.is_empty() {
                        return Err(err(&field, format!("{} is empty", path.display())));
                    }
                    Ok(value)
                }
                SecretSource::Sha256(_) => Err(err(
                    &field,
                    "a hash cannot stand for this secret: give `env:` or `file:`".into(),
                )),
            }
        };

        if raw.intake.tokens.is_empty() {
            return Err(err(
                "intake.tokens",
                "no intake token: every alert must be authenticated; add `tokens: [ { env: THEMIS_INTAKE_TOKEN } ]`".into(),
            ));
        }
        let mut intake_tokens = Vec::new();
        for (i, source) in raw.intake.tokens.iter().enumerate() {
            let field = format!("intake.tokens[{i}]");
            intake_tokens.push(match source {
                SecretSource::Sha256(h) => {
                    let bytes = h
                        .strip_prefix("sha256:")
                        .and_then(|h| hex::decode(h).ok())
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .ok_or_else(|| {
                            err(
                                &field,
                                "expected `sha256:<64 hex digits>` (printf %s TOKEN | sha256sum)"
                                    .into(),
                            )
                        })?;
                    TokenHash(bytes)
                }
                other => TokenHash::of(&resolve(field, other)?),
            });
        }

        for (name, approver) in &raw.approvers.0 {
            let field = format!("approvers.{name}");
            if approver.token_sha256.is_none()
                && approver.token_env.is_none()
                && approver.slack_user.is_none()
            {
                return Err(err(
                    &field,
                    "an approver needs `token_sha256`, `token_env` or `slack_user`".into(),
                ));
            }
            if let Some(h) = &approver.token_sha256
                && h.strip_prefix("sha256:")
                    .and_then(|h| hex::decode(h).ok())
                    .is_none_or(|b| b.len() != 32)
            {
                return Err(err(
                    &format!("{field}.token_sha256"),
                    "expected `sha256:<64 hex digits>`".into(),
                ));
            }
            if let Some(name) = &approver.token_env
                && var(name).is_none()
            {
                return Err(err(
                    &format!("{field}.token_env"),
                    format!(
                        "the environment variable {name} is not set (export it before starting)"
                    ),
                ));
            }
        }

        let slack = match &raw.slack {
            None => None,
            Some(s) => Some(SlackConfig {
                signing_secret: Secret(resolve("slack.signing_secret".into(), &s.signing_secret)?),
                webhook_url: match &s.webhook_url {
                    Some(w) => Some(Secret(resolve("slack.webhook_url".into(), w)?)),
                    None => None,
                },
                response_url_prefix: s
                    .response_url_prefix
                    .clone()
                    .unwrap_or_else(|| DEFAULT_RESPONSE_URL_PREFIX.into()),
            }),
        };

        let number = |field: &str, env_name: &str, from_file: Option<usize>, default: usize| {
            match var(env_name) {
                Some(v) => v
                    .parse::<usize>()
                    .map_err(|_| err(field, format!("{env_name}=`{v}` is not a whole number"))),
                None => Ok(from_file.unwrap_or(default)),
            }
            .and_then(|n| {
                if n == 0 {
                    Err(err(field, "must be at least 1".into()))
                } else {
                    Ok(n)
                }
            })
        };
        let body_limit = number(
            "limits.body_bytes",
            "THEMIS_BODY_LIMIT_BYTES",
            raw.limits.body_bytes,
            DEFAULT_BODY_LIMIT,
        )?;
        let queue = number(
            "limits.queue",
            "THEMIS_QUEUE_CAPACITY",
            raw.limits.queue,
            DEFAULT_QUEUE,
        )?;

        let mut backends = BTreeMap::new();
        for (agent, spec) in raw.backends {
            let scenario = in_file(&spec.scenario);
            if !scenario.is_file() {
                return Err(err(
                    &format!("backends.{agent}.scenario"),
                    format!("{} is not a file", scenario.display()),
                ));
            }
            backends.insert(
                agent,
                BackendSpec {
                    scenario,
                    dry_run: spec.dry_run,
                },
            );
        }

        Ok(ServeConfig {
            file: file.to_path_buf(),
            listen,
            agents,
            state_dir,
            audit,
            cache_dir,
            intake_tokens,
            approvers: raw.approvers,
            slack,
            backends,
            body_limit,
            queue,
        })
    }

    /// Secret values the audit and the logs must never show.
    pub fn secret_values(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(s) = &self.slack {
            out.push(s.signing_secret.expose().to_owned());
            if let Some(w) = &s.webhook_url {
                out.push(w.expose().to_owned());
            }
        }
        out
    }

    /// Whether `token` is one of the intake tokens (every one compared).
    pub fn intake_token_ok(&self, token: &str) -> bool {
        !token.is_empty()
            && self
                .intake_tokens
                .iter()
                .fold(false, |ok, t| t.matches(token) | ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        std::fs::create_dir_all(dir.join("agents")).unwrap_or_default();
        let file = dir.join("themis.yaml");
        std::fs::write(&file, text).unwrap_or_default();
        file
    }

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_missing_secret_names_field_and_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(
            dir.path(),
            "agents: agents\nstate_dir: state\nintake: { tokens: [ { env: THEMIS_INTAKE_TOKEN } ] }\n",
        );
        let e = ServeConfig::load(&file, &Overrides::default(), &env(&[])).expect_err("no token");
        assert_eq!(e.field, "intake.tokens[0]");
        assert!(e.problem.contains("THEMIS_INTAKE_TOKEN is not set"), "{e}");
        let ok = ServeConfig::load(
            &file,
            &Overrides::default(),
            &env(&[("THEMIS_INTAKE_TOKEN", "t0k3n")]),
        )
        .expect("loads");
        assert!(ok.intake_token_ok("t0k3n"));
        assert!(!ok.intake_token_ok("t0k3"));
        assert!(!ok.intake_token_ok(""));
        assert_eq!(ok.state_dir, dir.path().join("state"));
    }

    #[test]
    fn no_intake_token_is_refused_and_flags_beat_env_beat_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(
            dir.path(),
            "agents: agents\nstate_dir: s\nlisten: 127.0.0.1:1\n",
        );
        let e = ServeConfig::load(&file, &Overrides::default(), &env(&[])).expect_err("open");
        assert_eq!(e.field, "intake.tokens");
        let file = write(
            dir.path(),
            "agents: agents\nstate_dir: s\nlisten: 127.0.0.1:1\nintake: { tokens: [ { sha256: \"sha256:0000000000000000000000000000000000000000000000000000000000000000\" } ] }\n",
        );
        let e2 = env(&[("THEMIS_LISTEN", "127.0.0.1:2")]);
        let c = ServeConfig::load(&file, &Overrides::default(), &e2).expect("loads");
        assert_eq!(c.listen.port(), 2);
        let flags = Overrides {
            listen: Some("127.0.0.1:3".into()),
            state_dir: None,
        };
        assert_eq!(
            ServeConfig::load(&file, &flags, &e2)
                .expect("loads")
                .listen
                .port(),
            3
        );
        let bad = env(&[("THEMIS_QUEUE_CAPACITY", "many")]);
        let e = ServeConfig::load(&file, &Overrides::default(), &bad).expect_err("bad number");
        assert_eq!(e.field, "limits.queue");
    }

    #[test]
    fn unknown_fields_and_inline_secrets_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(
            dir.path(),
            "agents: agents\nstate_dir: s\nintake: { tokens: [ { env: T } ] }\nslack: { signing_secret: { value: abc } }\n",
        );
        let e = ServeConfig::load(&file, &Overrides::default(), &env(&[("T", "x")]))
            .expect_err("inline secret");
        assert!(e.problem.contains("value"), "{e}");
        let secret = Secret("hunter22".into());
        assert_eq!(format!("{secret:?}"), "***");
    }
}
