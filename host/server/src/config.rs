//! `themis.yaml`: the service's one configuration file, every scalar setting also from a
//! `THEMIS_…` environment variable (a flag beats the variable, the variable beats the file).
//!
//! ```yaml
//! listen: 127.0.0.1:9464              # THEMIS_LISTEN
//! advertise: http://10.0.0.5:9464     # THEMIS_ADVERTISE: where other hosts of a deployment
//!                                     # (shared store) reach this one; default the listen
//!                                     # address, or the machine's name on 0.0.0.0
//! agents: ../agents                   # THEMIS_AGENTS; paths in the file are relative to it
//! state_dir: ../.themis/serve         # THEMIS_STATE_DIR
//! store: sqlite                       # THEMIS_STORE: sqlite (state_dir/themis.db, the default
//!                                     # on a new directory), json (a file per incident), or
//!                                     # postgres://themis@db:5432/themis (held by one host at a
//!                                     # time); a directory keeps the kind it holds
//! store_password: { env: PGPASSWORD } # or { file: PATH } (THEMIS_STORE_PASSWORD_FILE)
//! audit: audit.jsonl                  # THEMIS_AUDIT  [default: <state_dir>/audit.jsonl]
//! audit_signing_key: /etc/themis/audit.key   # THEMIS_AUDIT_SIGNING_KEY: signs checkpoints of the
//!                                     # chain; keep it outside the audit's folder (created,
//!                                     # 0600, with .pub and .head.json beside it) [default: none,
//!                                     # warned and recorded]
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
//!   kafka: { scenario: ../tests/scenarios/usecase-consumer-lag-gc.yaml }   # a mocked world
//!   postgres:                          # the real systems
//!     mode: dry-run                    # or live (default); THEMIS_DRY_RUN=1 / --dry-run: all
//!     postgres:
//!       url: postgres://themis@db.internal:5432/app     # no password in the URL
//!       password: { env: THEMIS_PG_PASSWORD }           # or { file: PATH }
//!       pool: 4
//!       statement_timeout: 5s
//!       connect_timeout: 5s
//!       tls: verify-full               # disable | prefer (default) | require | verify-ca
//!       ca_file: /etc/ssl/db-ca.pem    # for verify-ca/verify-full; default: system roots
//!       refuse_superuser_sessions: true
//!   kafka:
//!     kafka:                           # reads through rdkafka; actions through `workloads:`
//!       bootstrap_servers: kafka-0.internal:9092,kafka-1.internal:9092
//!       client_id: themis              # the default
//!       timeout: 10s                   # every request's bound
//!       tls: { ca_file: /etc/themis/kafka-ca.pem }   # `{}`: the system's CAs; + cert_file, key_file
//!       sasl: { mechanism: SCRAM-SHA-512, username: themis, password: { env: KAFKA_PASSWORD } }
//!       workloads:                     # where consumers and brokers run (needs `kubernetes:`)
//!         groups:
//!           orders-consumer: { namespace: shop, deployment: orders-consumer, topics: [orders] }
//!         brokers: { namespace: kafka, pod: "my-cluster-kafka-{id}", strimzi_kafka: my-cluster }
//!     kubernetes: { kubeconfig: /etc/themis/kubeconfig }
//!     metrics: { url: http://prometheus.internal:9090 }
//!   kubernetes:
//!     kubernetes:                      # through kube; none of these: the in-cluster account
//!       kubeconfig: /etc/themis/kubeconfig   # default: $KUBECONFIG or ~/.kube/config
//!       context: prod                  # default: the kubeconfig's current context
//!       timeout: 10s                   # every request's bound
//!   postgres:
//!     metrics:
//!       url: http://prometheus.internal:9090
//!       token: { env: THEMIS_PROMETHEUS_TOKEN }         # optional bearer token
//!       timeout: 10s
//! limits:
//!   body_bytes: 1048576                # THEMIS_BODY_LIMIT_BYTES
//!   queue: 100000                      # THEMIS_QUEUE_CAPACITY (accepted alerts waiting per
//!                                      # agent, on disk in the audit; beyond it a 429)
//!   verify_every: 15s                  # THEMIS_VERIFY_EVERY (how often fixes being verified
//!                                      # are looked at: metrics read, windows closed)
//!   keep_closed: 30d                   # THEMIS_KEEP_CLOSED: closed incidents unchanged this
//!                                      # long leave the store (the audit keeps them), or
//!                                      # `forever`
//!   audit_segment_bytes: 67108864      # THEMIS_AUDIT_SEGMENT_BYTES: the active audit file is
//!                                      # sealed into `audit.segments/` at this size
//!   audit_max_bytes: 1073741824        # THEMIS_AUDIT_MAX_BYTES: past this the oldest segments
//!                                      # go (each removal on the chain), except those an open
//!                                      # incident or an alert not yet taken up still needs
//! ```
//!
//! Secrets are named (an environment variable or a file), never written in the file, and never
//! shown: [`Secret`]'s `Debug` prints its source only, and the audit redacts their values.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use themis_agent::approvers::Approvers;
use themis_agent::store::{PasswordSource, PgTarget, StoreChoice};
use themis_backend_kafka::{KafkaSasl, KafkaSettings, KafkaTls, SaslMechanism};
use themis_backend_kubernetes::KubernetesSettings;
use themis_backend_kubernetes::kafka_workloads::{BrokerPods, GroupWorkload, KafkaWorkloads};
use themis_backend_postgres::{PostgresSettings, TlsMode, url_has_password};
use themis_backend_prometheus::PrometheusSettings;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;
pub const DEFAULT_QUEUE: usize = themis_agent::runtime::DEFAULT_QUEUE_CAPACITY;
/// Closed incidents stay in the store a month after their last change, then only the audit
/// has them.
pub const DEFAULT_KEEP_CLOSED: Duration = Duration::from_secs(30 * 24 * 3600);
/// The audit's budget on disk by default (sealed segments and the active file).
pub const DEFAULT_AUDIT_MAX_BYTES: usize = 1 << 30;
/// No segment is smaller: a record may be 256 KiB, and a segment should hold many.
const MIN_AUDIT_SEGMENT_BYTES: u64 = 1 << 20;
/// Below this many characters a token is warned about: it could be guessed.
pub const MIN_TOKEN_CHARS: usize = 16;

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
    #[serde(default)]
    verify_every: Option<String>,
    #[serde(default)]
    keep_closed: Option<String>,
    #[serde(default)]
    audit_segment_bytes: Option<usize>,
    #[serde(default)]
    audit_max_bytes: Option<usize>,
}

/// Where one agent's capabilities are served from: a scenario file's mocked world, or the real
/// systems (each domain its own section; a domain without one fails its calls closed).
#[derive(Debug, Clone)]
// One per agent, built once at start: its size does not matter, boxing would only add noise.
#[allow(clippy::large_enum_variant)]
pub enum BackendSource {
    Scenario(PathBuf),
    Real {
        postgres: Option<PostgresSettings>,
        metrics: Option<PrometheusSettings>,
        kafka: Option<KafkaSettings>,
        kubernetes: Option<KubernetesSettings>,
        /// The Kafka agent's actions through the Kubernetes API: which workloads are whose.
        kafka_workloads: Option<KafkaWorkloads>,
    },
}

#[derive(Debug, Clone)]
pub struct BackendSpec {
    pub source: BackendSource,
    /// Shadow mode: read the systems, record every mutation as "would do", change nothing.
    pub dry_run: bool,
}

/// `mode:` of an agent's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    Live,
    DryRun,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    #[serde(default)]
    scenario: Option<PathBuf>,
    #[serde(default)]
    mode: Option<Mode>,
    /// The older spelling of `mode: dry-run`.
    #[serde(default)]
    dry_run: Option<bool>,
    #[serde(default)]
    postgres: Option<RawPostgres>,
    #[serde(default)]
    metrics: Option<RawMetrics>,
    #[serde(default)]
    kafka: Option<RawKafka>,
    #[serde(default)]
    kubernetes: Option<RawKubernetes>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    #[serde(default)]
    kubeconfig: Option<PathBuf>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    bootstrap_servers: String,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    workloads: Option<RawWorkloads>,
    #[serde(default)]
    tls: Option<RawKafkaTls>,
    #[serde(default)]
    sasl: Option<RawKafkaSasl>,
}

/// `kafka.tls`: `{}` checks the brokers against the system's CAs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafkaTls {
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafkaSasl {
    mechanism: String,
    username: String,
    password: SecretSource,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkloads {
    #[serde(default)]
    groups: BTreeMap<String, RawGroupWorkload>,
    #[serde(default)]
    brokers: Option<RawBrokers>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroupWorkload {
    namespace: String,
    deployment: String,
    #[serde(default)]
    topics: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBrokers {
    namespace: String,
    pod: String,
    #[serde(default)]
    strimzi_kafka: Option<String>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    url: String,
    #[serde(default)]
    password: Option<SecretSource>,
    #[serde(default)]
    pool: Option<u32>,
    #[serde(default)]
    statement_timeout: Option<String>,
    #[serde(default)]
    connect_timeout: Option<String>,
    #[serde(default)]
    tls: Option<TlsMode>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    refuse_superuser_sessions: Option<bool>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    url: String,
    #[serde(default)]
    token: Option<SecretSource>,
    #[serde(default)]
    timeout: Option<String>,
}

impl fmt::Debug for RawPostgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawPostgres")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RawMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawMetrics")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The longest statement timeout a backend may be given: a capability call is not a batch job.
const MAX_STATEMENT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    advertise: Option<String>,
    #[serde(default)]
    agents: Option<PathBuf>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    store: Option<String>,
    #[serde(default)]
    store_password: Option<SecretSource>,
    #[serde(default)]
    audit: Option<PathBuf>,
    #[serde(default)]
    audit_signing_key: Option<PathBuf>,
    #[serde(default)]
    cache_dir: Option<PathBuf>,
    #[serde(default)]
    intake: RawIntake,
    #[serde(default)]
    approvers: Approvers,
    #[serde(default)]
    slack: Option<RawSlack>,
    #[serde(default)]
    backends: BTreeMap<String, RawBackend>,
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
    /// Where the other hosts of a deployment reach this one's API (`http(s)://host:port`, no
    /// path): hosts standing by pass answers and reads on to the holder there.
    pub advertise: Option<String>,
    pub agents: PathBuf,
    pub state_dir: PathBuf,
    /// The store asked for, if any: a new state directory gets SQLite.
    pub store: Option<StoreChoice>,
    /// The state database's password, kept only so the audit can redact it.
    store_password: Option<Secret>,
    pub audit: PathBuf,
    /// Signs the audit chain's checkpoints, when set.
    pub audit_signing_key: Option<PathBuf>,
    pub cache_dir: PathBuf,
    pub intake_tokens: Vec<TokenHash>,
    /// The intake tokens read from the environment or a file, kept only so the audit can
    /// redact them wherever they turn up (an alert label, an annotation).
    intake_token_values: Vec<Secret>,
    pub approvers: Approvers,
    pub slack: Option<SlackConfig>,
    pub backends: BTreeMap<String, BackendSpec>,
    pub body_limit: usize,
    pub queue: usize,
    pub verify_every: Duration,
    /// Closed incidents unchanged this long leave the store; `None`: kept forever.
    pub keep_closed: Option<Duration>,
    /// The size at which the active audit file is sealed into a segment.
    pub audit_segment_bytes: u64,
    /// The audit's budget on disk: the oldest segments no open work needs go past it.
    pub audit_max_bytes: u64,
}

/// What the command line says; it beats the environment and the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub state_dir: Option<PathBuf>,
    /// `--dry-run`: every agent in shadow mode, whatever the file says.
    pub dry_run: bool,
}

/// An `advertise:` address, checked: `http(s)://host[:port]`, nothing after it (other hosts add
/// the API's paths) and no credentials.
fn advertised(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| format!("`{text}` is not a URL ({e}); e.g. http://10.0.0.5:9464"))?;
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(format!(
            "`{text}` must be http(s)://host[:port] and nothing more (no path, no credentials)"
        ));
    }
    Ok(text.trim_end_matches('/').to_owned())
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

        let advertise = match var("THEMIS_ADVERTISE").or(raw.advertise.clone()) {
            None => None,
            Some(text) => Some(advertised(&text).map_err(|problem| err("advertise", problem))?),
        };

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
        let audit_signing_key = var("THEMIS_AUDIT_SIGNING_KEY")
            .map(PathBuf::from)
            .or_else(|| raw.audit_signing_key.as_ref().map(|p| in_file(p)));
        // Compared as the filesystem resolves them (absolute, through symlinks as far as they
        // exist): `./state` and `/srv/state`, or an audit named without a folder, are the same
        // folders to whoever can write them.
        let audit_dir = audit
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Some(key) = &audit_signing_key
            && resolved(key).starts_with(resolved(audit_dir))
        {
            let dir = audit_dir;
            return Err(err(
                "audit_signing_key",
                format!(
                    "{} is inside the audit's folder {}: whoever can rewrite the audit could read the key and re-sign it; keep the key elsewhere",
                    key.display(),
                    dir.display()
                ),
            ));
        }
        if audit_signing_key
            .as_ref()
            .is_some_and(|k| k.extension().is_none_or(|e| e != "key"))
        {
            return Err(err(
                "audit_signing_key",
                "the key's file name must end in .key (its .pub and .head.json go beside it)"
                    .into(),
            ));
        }
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
                            "the environment variable {name} is {} (export it, with a value, before starting)", if env.contains_key(name.as_str()) { "set but empty" } else { "not set" }
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
        // A bearer token is the whole of an alert source's or an approver's proof: one short
        // enough to guess online is refused, not warned about and then trusted.
        let short_token = |field: &str, token: &str| {
            let n = token.chars().count();
            if n < MIN_TOKEN_CHARS {
                return Err(err(
                    field,
                    format!(
                        "the token is {n} characters, short enough to guess; use at least {MIN_TOKEN_CHARS} (e.g. `openssl rand -hex 32`)"
                    ),
                ));
            }
            Ok(())
        };
        let mut intake_tokens = Vec::new();
        let mut intake_token_values = Vec::new();
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
                other => {
                    let token = resolve(field.clone(), other)?;
                    short_token(&field, &token)?;
                    let hash = TokenHash::of(&token);
                    intake_token_values.push(Secret(token));
                    hash
                }
            });
        }

        let mut store_password = None;
        let store = match var("THEMIS_STORE").or_else(|| raw.store.clone()).as_deref() {
            None => None,
            Some("sqlite") => Some(StoreChoice::Sqlite),
            Some("json") => Some(StoreChoice::Json),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                if url_has_password(url) {
                    return Err(err(
                        "store",
                        "holds a password: move it to `store_password: { env: VAR }` or `{ file: PATH }` (never written in the file)".into(),
                    ));
                }
                let source = match var("THEMIS_STORE_PASSWORD_FILE") {
                    Some(path) => Some(SecretSource::File(PathBuf::from(path))),
                    None => raw.store_password.clone(),
                };
                let password = match source {
                    None => None,
                    Some(source) => {
                        // Read now so a missing one is said at start, and so the audit
                        // redacts it; the store reads it again by reference when it connects.
                        store_password = Some(Secret(resolve("store_password".into(), &source)?));
                        Some(match source {
                            SecretSource::Env(name) => PasswordSource::Env(name),
                            SecretSource::File(path) => PasswordSource::File(in_file(&path)),
                            SecretSource::Sha256(_) => {
                                return Err(err(
                                    "store_password",
                                    "a hash cannot stand for a password: give `env:` or `file:`"
                                        .into(),
                                ));
                            }
                        })
                    }
                };
                Some(StoreChoice::Postgres(PgTarget {
                    url: url.to_string(),
                    password,
                }))
            }
            Some(other) => {
                return Err(err(
                    "store",
                    format!(
                        "`{other}` is not a store: say `sqlite` (the default), `json`, or `postgres://user@host:port/database`"
                    ),
                ));
            }
        };
        if store_password.is_none() && raw.store_password.is_some() {
            return Err(err(
                "store_password",
                "is only for `store: postgres://…`: remove it, or set the store".into(),
            ));
        }

        // Whose token each approver's is, by its hash, and whose Slack user: one token, one
        // Slack user, one person.
        let mut approver_tokens: Vec<(TokenHash, String)> = Vec::new();
        let mut slack_users: Vec<(&str, String)> = Vec::new();
        for (name, approver) in &raw.approvers.0 {
            let field = format!("approvers.{name}");
            if let Some(user) = approver.slack_user.as_deref() {
                if let Some((_, other)) = slack_users.iter().find(|(u, _)| *u == user) {
                    return Err(err(
                        &format!("{field}.slack_user"),
                        format!(
                            "the same Slack user as {other}: a button in Slack would answer as either; give each approver their own"
                        ),
                    ));
                }
                slack_users.push((user, format!("{field}.slack_user")));
            }
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
                        "the environment variable {name} is {} (export it, with a value, before starting)",
                        if env.contains_key(name.as_str()) {
                            "set but empty"
                        } else {
                            "not set"
                        }
                    ),
                ));
            }
            // The token the service will take as this approver's (the hash first, as
            // `Approvers::identify` does).
            let token = match (&approver.token_sha256, &approver.token_env) {
                (Some(h), _) => h
                    .strip_prefix("sha256:")
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .map(|hash| (TokenHash(hash), format!("{field}.token_sha256"))),
                (None, Some(name)) => match var(name) {
                    Some(token) => {
                        let at = format!("{field}.token_env");
                        short_token(&at, &token)?;
                        Some((TokenHash::of(&token), at))
                    }
                    None => None,
                },
                (None, None) => None,
            };
            if let Some((hash, at)) = &token
                && let Some(i) = intake_tokens.iter().position(|t| t.0 == hash.0)
            {
                return Err(err(
                    at,
                    format!(
                        "the same token as intake.tokens[{i}]: whoever holds an alert source's token could approve plans with it; give the approver a token of their own"
                    ),
                ));
            }
            if let Some((hash, at)) = token {
                if let Some((_, other)) = approver_tokens.iter().find(|(t, _)| t.0 == hash.0) {
                    return Err(err(
                        &at,
                        format!(
                            "the same token as {other}: an approval names who gave it, and a second approver must be another person; give each approver a token of their own"
                        ),
                    ));
                }
                approver_tokens.push((hash, at));
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
                response_url_prefix: {
                    let prefix = s
                        .response_url_prefix
                        .clone()
                        .unwrap_or_else(|| DEFAULT_RESPONSE_URL_PREFIX.into());
                    if !response_prefix_ok(&prefix) {
                        return Err(err(
                            "slack.response_url_prefix",
                            format!(
                                "`{prefix}`: answers are reported to any response_url that starts with it, so it must be a whole https:// origin and path ending in `/` (the default is {DEFAULT_RESPONSE_URL_PREFIX}); plain http:// only on loopback"
                            ),
                        ));
                    }
                    prefix
                },
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
        let audit_segment_bytes = number(
            "limits.audit_segment_bytes",
            "THEMIS_AUDIT_SEGMENT_BYTES",
            raw.limits.audit_segment_bytes,
            themis_agent::audit::segments::DEFAULT_SEGMENT_BYTES as usize,
        )? as u64;
        if audit_segment_bytes < MIN_AUDIT_SEGMENT_BYTES {
            return Err(err(
                "limits.audit_segment_bytes",
                format!(
                    "{audit_segment_bytes} is below the smallest segment, {MIN_AUDIT_SEGMENT_BYTES} bytes (a record can be 256 KiB)"
                ),
            ));
        }
        let audit_max_bytes = number(
            "limits.audit_max_bytes",
            "THEMIS_AUDIT_MAX_BYTES",
            raw.limits.audit_max_bytes,
            DEFAULT_AUDIT_MAX_BYTES,
        )? as u64;
        if audit_max_bytes < 2 * audit_segment_bytes {
            return Err(err(
                "limits.audit_max_bytes",
                format!(
                    "{audit_max_bytes} is less than twice limits.audit_segment_bytes ({audit_segment_bytes}): raise it, or lower the segment size"
                ),
            ));
        }
        let verify_every = match var("THEMIS_VERIFY_EVERY").or(raw.limits.verify_every.clone()) {
            None => themis_agent::runtime::DEFAULT_VERIFY_TICK,
            Some(text) => humantime::parse_duration(&text)
                .ok()
                .filter(|d| *d >= Duration::from_secs(1) && *d <= Duration::from_secs(600))
                .ok_or_else(|| {
                    err(
                        "limits.verify_every",
                        format!("`{text}` is not a duration between 1s and 10m (e.g. 15s)"),
                    )
                })?,
        };
        let keep_closed = match var("THEMIS_KEEP_CLOSED").or(raw.limits.keep_closed.clone()) {
            None => Some(DEFAULT_KEEP_CLOSED),
            Some(text) if text == "forever" => None,
            Some(text) => Some(
                humantime::parse_duration(&text)
                    .ok()
                    .filter(|d| *d >= Duration::from_secs(1))
                    .ok_or_else(|| {
                        err(
                            "limits.keep_closed",
                            format!("`{text}` is not a duration of at least 1s (e.g. 30d), nor `forever`"),
                        )
                    })?,
            ),
        };

        let duration = |field: String, text: Option<&String>, default: Duration| {
            let Some(text) = text else {
                return Ok(default);
            };
            match humantime::parse_duration(text) {
                Ok(d) if !d.is_zero() && d <= MAX_STATEMENT_TIMEOUT => Ok(d),
                Ok(_) => Err(err(
                    &field,
                    format!("`{text}` must be more than 0 and at most 10m"),
                )),
                Err(e) => Err(err(&field, format!("`{text}`: {e} (e.g. 5s, 500ms)"))),
            }
        };
        let mut backends = BTreeMap::new();
        for (agent, spec) in raw.backends {
            let field = |name: &str| format!("backends.{agent}.{name}");
            let dry_run = match (spec.mode, spec.dry_run) {
                (Some(mode), Some(flag)) if (mode == Mode::DryRun) != flag => {
                    return Err(err(
                        &field("mode"),
                        "`mode:` and `dry_run:` disagree: keep `mode:` only".into(),
                    ));
                }
                (Some(mode), _) => mode == Mode::DryRun,
                (None, flag) => flag.unwrap_or(false),
            } || overrides.dry_run;
            let real = spec.postgres.is_some()
                || spec.metrics.is_some()
                || spec.kafka.is_some()
                || spec.kubernetes.is_some();
            let source = match (spec.scenario, real) {
                (Some(_), true) => {
                    return Err(err(
                        &field("scenario"),
                        "a scenario serves every capability itself: give either `scenario:` or `postgres:`/`kafka:`/`kubernetes:`/`metrics:`".into(),
                    ));
                }
                (None, false) => {
                    return Err(err(
                        &format!("backends.{agent}"),
                        "empty: give `scenario: FILE`, or `postgres:`, `kafka:`, `kubernetes:` and/or `metrics:` (see examples/themis.yaml)".into(),
                    ));
                }
                (Some(scenario), false) => {
                    let scenario = in_file(&scenario);
                    if !scenario.is_file() {
                        return Err(err(
                            &field("scenario"),
                            format!("{} is not a file", scenario.display()),
                        ));
                    }
                    BackendSource::Scenario(scenario)
                }
                (None, true) => {
                    let postgres = match spec.postgres {
                        None => None,
                        Some(pg) => {
                            if url_has_password(&pg.url) {
                                return Err(err(
                                    &field("postgres.url"),
                                    "holds a password: move it to `password: { env: VAR }` or `{ file: PATH }` (never written in the file)".into(),
                                ));
                            }
                            if !(pg.url.starts_with("postgres://")
                                || pg.url.starts_with("postgresql://"))
                            {
                                return Err(err(
                                    &field("postgres.url"),
                                    format!(
                                        "`{}` is not a postgres://user@host:port/database URL",
                                        pg.url
                                    ),
                                ));
                            }
                            let mut settings = PostgresSettings::new(pg.url.clone());
                            if let Some(source) = &pg.password {
                                settings.password =
                                    Some(resolve(field("postgres.password"), source)?);
                            }
                            if let Some(pool) = pg.pool {
                                if !(1..=64).contains(&pool) {
                                    return Err(err(
                                        &field("postgres.pool"),
                                        format!("{pool}: give 1 to 64 connections"),
                                    ));
                                }
                                settings.pool = pool;
                            }
                            settings.statement_timeout = duration(
                                field("postgres.statement_timeout"),
                                pg.statement_timeout.as_ref(),
                                settings.statement_timeout,
                            )?;
                            settings.connect_timeout = duration(
                                field("postgres.connect_timeout"),
                                pg.connect_timeout.as_ref(),
                                settings.connect_timeout,
                            )?;
                            settings.tls = pg.tls.unwrap_or_default();
                            if let Some(ca) = &pg.ca_file {
                                let ca = in_file(ca);
                                if !ca.is_file() {
                                    return Err(err(
                                        &field("postgres.ca_file"),
                                        format!(
                                            "{} is not a file (the PEM CA certificate the server's must chain to)",
                                            ca.display()
                                        ),
                                    ));
                                }
                                settings.ca_file = Some(ca);
                            }
                            settings.refuse_superuser_sessions =
                                pg.refuse_superuser_sessions.unwrap_or(true);
                            Some(settings)
                        }
                    };
                    let metrics = match spec.metrics {
                        None => None,
                        Some(m) => {
                            if !(m.url.starts_with("http://") || m.url.starts_with("https://")) {
                                return Err(err(
                                    &field("metrics.url"),
                                    format!("`{}` is not an http(s):// Prometheus base URL", m.url),
                                ));
                            }
                            if reqwest::Url::parse(&m.url)
                                .is_ok_and(|u| !u.username().is_empty() || u.password().is_some())
                            {
                                // Not echoed: the URL is what holds the secret.
                                return Err(err(
                                    &field("metrics.url"),
                                    "holds credentials: move them to `token: { env: VAR }` or `{ file: PATH }` (a bearer token, never written in the file)".into(),
                                ));
                            }
                            let mut settings = PrometheusSettings::new(m.url.clone());
                            if let Some(source) = &m.token {
                                settings.bearer_token =
                                    Some(resolve(field("metrics.token"), source)?);
                            }
                            settings.timeout = duration(
                                field("metrics.timeout"),
                                m.timeout.as_ref(),
                                settings.timeout,
                            )?;
                            Some(settings)
                        }
                    };
                    let mut kafka_workloads = None;
                    let kafka = match spec.kafka {
                        None => None,
                        Some(k) => {
                            if let Some(w) = &k.workloads {
                                if spec.kubernetes.is_none() {
                                    return Err(err(
                                        &field("kafka.workloads"),
                                        "the workloads are reached through the Kubernetes API: add the agent's `kubernetes:` section".into(),
                                    ));
                                }
                                kafka_workloads = Some(
                                    workloads(&field("kafka.workloads"), w)
                                        .map_err(|(f, problem)| err(&f, problem))?,
                                );
                            }
                            let servers: Vec<&str> =
                                k.bootstrap_servers.split(',').map(str::trim).collect();
                            if let Some(bad) = servers.iter().find(|s| {
                                s.rsplit_once(':').is_none_or(|(host, port)| {
                                    host.is_empty() || port.parse::<u16>().is_err()
                                })
                            }) {
                                return Err(err(
                                    &field("kafka.bootstrap_servers"),
                                    format!("`{bad}` is not host:port (give host:port,host:port)"),
                                ));
                            }
                            let mut settings = KafkaSettings::new(servers.join(","));
                            if let Some(id) = k.client_id {
                                settings.client_id = id;
                            }
                            if let Some(tls) = &k.tls {
                                let mut files = KafkaTls::default();
                                for (name, given, slot) in [
                                    ("ca_file", &tls.ca_file, &mut files.ca_file),
                                    ("cert_file", &tls.cert_file, &mut files.cert_file),
                                    ("key_file", &tls.key_file, &mut files.key_file),
                                ] {
                                    if let Some(path) = given {
                                        let path = in_file(path);
                                        if !path.is_file() {
                                            return Err(err(
                                                &field(&format!("kafka.tls.{name}")),
                                                format!("{} is not a file (PEM)", path.display()),
                                            ));
                                        }
                                        *slot = Some(path);
                                    }
                                }
                                if files.cert_file.is_some() != files.key_file.is_some() {
                                    return Err(err(
                                        &field("kafka.tls"),
                                        "a client certificate needs both cert_file and key_file"
                                            .into(),
                                    ));
                                }
                                settings.security.tls = Some(files);
                            }
                            if let Some(sasl) = &k.sasl {
                                let Some(mechanism) = SaslMechanism::parse(&sasl.mechanism) else {
                                    return Err(err(
                                        &field("kafka.sasl.mechanism"),
                                        format!(
                                            "`{}`: give PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                                            sasl.mechanism
                                        ),
                                    ));
                                };
                                settings.security.sasl = Some(KafkaSasl {
                                    mechanism,
                                    username: sasl.username.clone(),
                                    password: resolve(
                                        field("kafka.sasl.password"),
                                        &sasl.password,
                                    )?,
                                });
                            }
                            if let Some(why) = settings.security.refusal() {
                                return Err(err(&field("kafka.sasl"), why.into()));
                            }
                            settings.timeout = duration(
                                field("kafka.timeout"),
                                k.timeout.as_ref(),
                                settings.timeout,
                            )?;
                            Some(settings)
                        }
                    };
                    let kubernetes = match spec.kubernetes {
                        None => None,
                        Some(k) => {
                            let mut settings = KubernetesSettings::default();
                            if let Some(file) = &k.kubeconfig {
                                let file = in_file(file);
                                if !file.is_file() {
                                    return Err(err(
                                        &field("kubernetes.kubeconfig"),
                                        format!(
                                            "{} is not a file (leave it out for the in-cluster service account or $KUBECONFIG)",
                                            file.display()
                                        ),
                                    ));
                                }
                                settings.kubeconfig = Some(file);
                            }
                            settings.context = k.context;
                            settings.timeout = duration(
                                field("kubernetes.timeout"),
                                k.timeout.as_ref(),
                                settings.timeout,
                            )?;
                            Some(settings)
                        }
                    };
                    BackendSource::Real {
                        postgres,
                        metrics,
                        kafka,
                        kubernetes,
                        kafka_workloads,
                    }
                }
            };
            backends.insert(agent, BackendSpec { source, dry_run });
        }

        Ok(ServeConfig {
            file: file.to_path_buf(),
            listen,
            advertise,
            agents,
            state_dir,
            store,
            store_password,
            audit,
            audit_signing_key,
            cache_dir,
            intake_tokens,
            intake_token_values,
            approvers: raw.approvers,
            slack,
            backends,
            body_limit,
            queue,
            verify_every,
            keep_closed,
            audit_segment_bytes,
            audit_max_bytes,
        })
    }

    /// Secret values the audit and the logs must never show.
    pub fn secret_values(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .intake_token_values
            .iter()
            .map(|t| t.expose().to_owned())
            .collect();
        out.extend(self.store_password.as_ref().map(|p| p.expose().to_owned()));
        // Approvers' tokens the service reads from its environment.
        out.extend(
            self.approvers
                .0
                .values()
                .filter_map(|a| a.token_env.as_deref())
                .filter_map(|var| std::env::var(var).ok())
                .filter(|t| !t.is_empty()),
        );
        if let Some(s) = &self.slack {
            out.push(s.signing_secret.expose().to_owned());
            if let Some(w) = &s.webhook_url {
                out.push(w.expose().to_owned());
            }
        }
        for spec in self.backends.values() {
            if let BackendSource::Real {
                postgres,
                metrics,
                kafka,
                ..
            } = &spec.source
            {
                out.extend(postgres.as_ref().and_then(|p| p.password.clone()));
                out.extend(metrics.as_ref().and_then(|m| m.bearer_token.clone()));
                out.extend(
                    kafka
                        .as_ref()
                        .and_then(|k| k.security.sasl.as_ref())
                        .map(|s| s.password.clone()),
                );
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

/// `kafka.workloads`: DNS-1123 names, a broker pod name with `{id}`. Errors: (field, problem).
fn workloads(at: &str, raw: &RawWorkloads) -> Result<KafkaWorkloads, (String, String)> {
    use themis_backend_kubernetes::names;
    let mut groups = BTreeMap::new();
    for (group, w) in &raw.groups {
        names::namespace(&w.namespace)
            .map_err(|e| (format!("{at}.groups.{group}.namespace"), e.to_string()))?;
        names::name(&w.deployment)
            .map_err(|e| (format!("{at}.groups.{group}.deployment"), e.to_string()))?;
        groups.insert(
            group.clone(),
            GroupWorkload {
                namespace: w.namespace.clone(),
                deployment: w.deployment.clone(),
                topics: w.topics.clone(),
            },
        );
    }
    let brokers = match &raw.brokers {
        None => None,
        Some(b) => {
            names::namespace(&b.namespace)
                .map_err(|e| (format!("{at}.brokers.namespace"), e.to_string()))?;
            if !b.pod.contains("{id}") {
                return Err((
                    format!("{at}.brokers.pod"),
                    format!(
                        "`{}` has no `{{id}}`: name broker {{id}}'s pod, e.g. my-cluster-kafka-{{id}}",
                        b.pod
                    ),
                ));
            }
            names::name(&b.pod.replace("{id}", "0"))
                .map_err(|e| (format!("{at}.brokers.pod"), e.to_string()))?;
            if let Some(kafka) = &b.strimzi_kafka {
                names::name(kafka)
                    .map_err(|e| (format!("{at}.brokers.strimzi_kafka"), e.to_string()))?;
            }
            Some(BrokerPods {
                namespace: b.namespace.clone(),
                pod: b.pod.clone(),
                strimzi_kafka: b.strimzi_kafka.clone(),
            })
        }
    };
    Ok(KafkaWorkloads { groups, brokers })
}

/// A prefix of the URLs Slack's answers are reported to: https (or http on loopback), a host,
/// and a path that ends in `/` — so no other host or path can share it.
fn response_prefix_ok(prefix: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(prefix) else {
        return false;
    };
    let host = url.host_str().unwrap_or_default();
    let loopback = themis_core::loopback::is_loopback(host);
    let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && loopback);
    scheme_ok
        && !host.is_empty()
        && prefix.ends_with('/')
        && url.query().is_none()
        && url.username().is_empty()
}

/// `path` as the filesystem resolves it: absolute, and through symlinks as far as it exists
/// (a file not made yet resolves through its folder).
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut out = existing
        .canonicalize()
        .unwrap_or_else(|_| existing.to_path_buf());
    out.extend(rest.iter().rev());
    out
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
            &env(&[("THEMIS_INTAKE_TOKEN", "t0k3n-long-enough-to-keep")]),
        )
        .expect("loads");
        assert!(ok.intake_token_ok("t0k3n-long-enough-to-keep"));
        assert!(!ok.intake_token_ok("t0k3n-long-enough-to-kee"));
        assert!(!ok.intake_token_ok(""));
        assert_eq!(ok.state_dir, dir.path().join("state"));
    }

    #[test]
    fn the_audit_budget_has_defaults_and_refuses_what_cannot_hold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = "agents: agents\nstate_dir: s\nintake: { tokens: [ { env: T } ] }\n";
        let vars = env(&[("T", "an-intake-token-long-enough")]);
        let load = |extra: &str, vars: &BTreeMap<String, String>| {
            let file = write(dir.path(), &format!("{base}{extra}"));
            ServeConfig::load(&file, &Overrides::default(), vars)
        };
        let c = load("", &vars).expect("defaults");
        assert_eq!(
            (c.audit_segment_bytes, c.audit_max_bytes),
            (64 << 20, 1 << 30)
        );
        let c = load(
            "limits: { audit_segment_bytes: 2097152, audit_max_bytes: 8388608 }\n",
            &vars,
        )
        .expect("loads");
        assert_eq!(
            (c.audit_segment_bytes, c.audit_max_bytes),
            (2 << 20, 8 << 20)
        );
        let e = load("limits: { audit_segment_bytes: 4096 }\n", &vars).expect_err("too small");
        assert_eq!(e.field, "limits.audit_segment_bytes");
        let e = load("limits: { audit_max_bytes: 100000000 }\n", &vars).expect_err("below two");
        assert_eq!(e.field, "limits.audit_max_bytes");
        assert!(e.problem.contains("twice"), "{e}");
        let mut with_env = vars.clone();
        with_env.insert("THEMIS_AUDIT_MAX_BYTES".into(), "many".into());
        let e = load("", &with_env).expect_err("not a number");
        assert_eq!(e.field, "limits.audit_max_bytes");
    }

    #[test]
    fn a_postgres_store_takes_its_password_by_reference_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = "agents: agents\nstate_dir: s\nintake: { tokens: [ { env: T } ] }\n";
        let vars = env(&[
            ("T", "an-intake-token-long-enough"),
            ("PGPW", "pg-store-secret"),
        ]);
        let load = |extra: &str| {
            let file = write(dir.path(), &format!("{base}{extra}"));
            ServeConfig::load(&file, &Overrides::default(), &vars)
        };
        let c = load("store: postgres://themis@db:5432/themis\nstore_password: { env: PGPW }\n")
            .expect("loads");
        assert_eq!(
            c.store,
            Some(StoreChoice::Postgres(PgTarget {
                url: "postgres://themis@db:5432/themis".into(),
                password: Some(PasswordSource::Env("PGPW".into())),
            }))
        );
        assert!(c.secret_values().contains(&"pg-store-secret".to_string()));
        for (extra, field, says) in [
            (
                "store: postgres://themis:hunter2@db/themis\n",
                "store",
                "holds a password",
            ),
            (
                "store: postgres://themis@db/themis\nstore_password: { env: NOPE }\n",
                "store_password",
                "NOPE is not set",
            ),
            (
                "store: sqlite\nstore_password: { env: PGPW }\n",
                "store_password",
                "only for `store: postgres",
            ),
            ("store: mysql://db\n", "store", "postgres://user@host"),
        ] {
            let e = load(extra).expect_err(extra);
            assert_eq!(e.field, field, "{extra}: {e}");
            assert!(e.problem.contains(says), "{extra}: {e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn short_tokens_and_a_token_both_intake_and_approver_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(
            dir.path(),
            &format!(
                "agents: agents\nstate_dir: s\nintake: {{ tokens: [ {{ env: LONG }}, {{ env: SHORT }} ] }}\n\
                 approvers:\n  alice: {{ token_env: ALICE }}\n  bob: {{ token_sha256: \"{}\" }}\n",
                themis_agent::approvers::token_hash("bob-has-a-long-token")
            ),
        );
        let vars = |alice: &str| {
            env(&[
                ("LONG", "a-long-enough-intake-token"),
                ("SHORT", "t0k3n"),
                ("ALICE", alice),
            ])
        };
        let e = ServeConfig::load(&file, &Overrides::default(), &vars("alice"))
            .expect_err("a short intake token is refused");
        assert_eq!(e.field, "intake.tokens[1]", "{e}");
        assert!(e.problem.contains("the token is 5 characters"), "{e}");
        let vars = |alice: &str| {
            env(&[
                ("LONG", "a-long-enough-intake-token"),
                ("SHORT", "another-long-enough-intake-token"),
                ("ALICE", alice),
            ])
        };
        let e = ServeConfig::load(&file, &Overrides::default(), &vars("alice"))
            .expect_err("a short approver token is refused");
        assert_eq!(e.field, "approvers.alice.token_env", "{e}");
        assert!(e.problem.contains("the token is 5 characters"), "{e}");
        ServeConfig::load(
            &file,
            &Overrides::default(),
            &vars("alice-has-a-long-token"),
        )
        .expect("long tokens load");
        let e = ServeConfig::load(
            &file,
            &Overrides::default(),
            &vars("a-long-enough-intake-token"),
        )
        .expect_err("an alert source could approve");
        assert_eq!(e.field, "approvers.alice.token_env");
        assert!(
            e.problem.contains("the same token as intake.tokens[0]"),
            "{e}"
        );
        // A hash names the same secret as well as a variable does.
        let file = write(
            dir.path(),
            &format!(
                "agents: agents\nstate_dir: s\nintake: {{ tokens: [ {{ env: LONG }} ] }}\n\
                 approvers:\n  bob: {{ token_sha256: \"{}\" }}\n",
                themis_agent::approvers::token_hash("a-long-enough-intake-token")
            ),
        );
        let e = ServeConfig::load(&file, &Overrides::default(), &vars("alice"))
            .expect_err("the same secret");
        assert_eq!(e.field, "approvers.bob.token_sha256");
        assert!(e.problem.contains("intake.tokens[0]"), "{e}");
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
            ..Overrides::default()
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
    fn slacks_response_url_prefix_is_a_whole_https_origin_and_path() {
        for ok in [
            "https://hooks.slack.com/",
            "https://hooks.slack.com/actions/",
            "http://127.0.0.1:8080/response/",
            "http://localhost/r/",
        ] {
            assert!(response_prefix_ok(ok), "{ok}");
        }
        for bad in [
            "",
            "https://",
            "https://hooks.slack.com",
            "https://hooks.slack.com/actions",
            "http://hooks.slack.com/",
            "https://user@hooks.slack.com/",
            "https://hooks.slack.com/?x=1/",
            "hooks.slack.com/",
        ] {
            assert!(!response_prefix_ok(bad), "{bad}");
        }
    }

    #[test]
    fn the_audit_signing_key_stays_out_of_the_audits_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = "agents: agents\nstate_dir: s\nlisten: 127.0.0.1:1\nintake: { tokens: [ { sha256: \"sha256:0000000000000000000000000000000000000000000000000000000000000000\" } ] }\n";
        let file = write(
            dir.path(),
            &format!("{base}audit_signing_key: s/audit.key\n"),
        );
        let e = ServeConfig::load(&file, &Overrides::default(), &env(&[])).expect_err("inside");
        assert_eq!(e.field, "audit_signing_key");
        assert!(e.problem.contains("inside the audit's folder"), "{e}");
        // The same folder by another name: through a symlink, or as an absolute path.
        std::fs::create_dir_all(dir.path().join("s")).expect("mkdir");
        std::os::unix::fs::symlink(dir.path().join("s"), dir.path().join("alias")).expect("link");
        for key in [
            "alias/audit.key".to_string(),
            format!("{}/s/k/audit.key", dir.path().display()),
        ] {
            let file = write(dir.path(), &format!("{base}audit_signing_key: {key}\n"));
            let e = ServeConfig::load(&file, &Overrides::default(), &env(&[]))
                .expect_err("inside, by another name");
            assert_eq!(e.field, "audit_signing_key", "{key}");
        }
        let file = write(
            dir.path(),
            &format!("{base}audit_signing_key: keys/audit.pem\n"),
        );
        let e = ServeConfig::load(&file, &Overrides::default(), &env(&[])).expect_err("name");
        assert!(e.problem.contains(".key"), "{e}");
        let file = write(
            dir.path(),
            &format!("{base}audit_signing_key: keys/audit.key\n"),
        );
        let c = ServeConfig::load(&file, &Overrides::default(), &env(&[])).expect("loads");
        assert_eq!(c.audit_signing_key, Some(dir.path().join("keys/audit.key")));
        let c = ServeConfig::load(
            &file,
            &Overrides::default(),
            &env(&[("THEMIS_AUDIT_SIGNING_KEY", "/etc/themis/audit.key")]),
        )
        .expect("loads");
        assert_eq!(
            c.audit_signing_key,
            Some(PathBuf::from("/etc/themis/audit.key"))
        );
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

    /// A configuration whose backends section is `backends`, loaded with `vars`.
    fn with_backends(
        backends: &str,
        vars: &[(&str, &str)],
        overrides: &Overrides,
    ) -> Result<ServeConfig, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(
            dir.path(),
            &format!(
                "agents: agents\nstate_dir: state\nintake: {{ tokens: [ {{ env: T }} ] }}\nbackends:\n{backends}"
            ),
        );
        let mut vars = vars.to_vec();
        vars.push(("T", "t0k3n-long-enough-to-keep"));
        ServeConfig::load(&file, overrides, &env(&vars))
    }

    #[test]
    fn real_backends_resolve_their_secrets_and_refuse_what_would_leak_or_mislead() {
        let ok = with_backends(
            "  postgres:\n    mode: dry-run\n    postgres: { url: \"postgres://themis@db:5432/app\", password: { env: PGPW }, pool: 2, statement_timeout: 2s, tls: verify-full }\n    metrics: { url: \"http://prom:9090\", token: { env: PROMTOKEN } }\n",
            &[("PGPW", "pg-secret"), ("PROMTOKEN", "prom-secret")],
            &Overrides::default(),
        )
        .expect("loads");
        let spec = &ok.backends["postgres"];
        assert!(spec.dry_run);
        let BackendSource::Real {
            postgres: Some(pg),
            metrics: Some(m),
            ..
        } = &spec.source
        else {
            panic!("{spec:?}");
        };
        assert_eq!(pg.password.as_deref(), Some("pg-secret"));
        assert_eq!(
            (pg.pool, pg.statement_timeout, pg.tls),
            (2, Duration::from_secs(2), TlsMode::VerifyFull)
        );
        assert_eq!(m.bearer_token.as_deref(), Some("prom-secret"));
        let secrets = ok.secret_values();
        assert!(
            secrets.contains(&"pg-secret".to_owned())
                && secrets.contains(&"prom-secret".to_owned())
        );
        assert!(
            !format!("{ok:?}").contains("pg-secret"),
            "Debug never shows a password"
        );
        // TLS and SASL: the password from the environment, kept from Debug and the audit.
        let ca = tempfile::NamedTempFile::new().expect("a CA file");
        let secured = with_backends(
            &format!(
                "  kafka:\n    kafka: {{ bootstrap_servers: \"kafka-0:9093\", tls: {{ ca_file: {} }}, sasl: {{ mechanism: scram-sha-512, username: themis, password: {{ env: KPW }} }} }}\n",
                ca.path().display()
            ),
            &[("KPW", "kafka-secret")],
            &Overrides::default(),
        )
        .expect("loads");
        let BackendSource::Real { kafka: Some(k), .. } = &secured.backends["kafka"].source else {
            panic!("{:?}", secured.backends);
        };
        assert_eq!(k.security.protocol(), "sasl_ssl");
        assert_eq!(
            k.security.tls.as_ref().and_then(|t| t.ca_file.as_deref()),
            Some(ca.path())
        );
        assert!(secured.secret_values().contains(&"kafka-secret".to_owned()));
        assert!(!format!("{secured:?}").contains("kafka-secret"));
        let kafka = with_backends(
            "  kafka:\n    kafka: { bootstrap_servers: \" kafka-0:9092, kafka-1:9093 \", client_id: sre-themis, timeout: 3s }\n",
            &[],
            &Overrides::default(),
        )
        .expect("loads");
        let BackendSource::Real { kafka: Some(k), .. } = &kafka.backends["kafka"].source else {
            panic!("{:?}", kafka.backends);
        };
        assert_eq!(
            (
                k.bootstrap_servers.as_str(),
                k.client_id.as_str(),
                k.timeout
            ),
            (
                "kafka-0:9092,kafka-1:9093",
                "sre-themis",
                Duration::from_secs(3)
            )
        );
        let bound = with_backends(
            "  kafka:\n    kafka:\n      bootstrap_servers: kafka-0:9092\n      workloads:\n        groups: { orders: { namespace: shop, deployment: orders-consumer, topics: [orders] } }\n        brokers: { namespace: kafka, pod: \"my-cluster-kafka-{id}\", strimzi_kafka: my-cluster }\n    kubernetes: { context: prod, timeout: 4s }\n",
            &[],
            &Overrides::default(),
        )
        .expect("loads");
        let BackendSource::Real {
            kafka_workloads: Some(w),
            kubernetes: Some(k8s),
            ..
        } = &bound.backends["kafka"].source
        else {
            panic!("{:?}", bound.backends);
        };
        assert_eq!(w.groups["orders"].deployment, "orders-consumer");
        assert_eq!(w.groups["orders"].topics, ["orders"]);
        assert_eq!(
            w.brokers.as_ref().map(|b| b.pod.as_str()),
            Some("my-cluster-kafka-{id}")
        );
        assert_eq!(
            w.brokers.as_ref().and_then(|b| b.strimzi_kafka.as_deref()),
            Some("my-cluster")
        );
        assert_eq!(
            (k8s.context.as_deref(), k8s.timeout),
            (Some("prod"), Duration::from_secs(4))
        );

        for (backends, field, says) in [
            (
                "  postgres:\n    postgres: { url: \"postgres://themis:hunter2@db/app\" }\n",
                "backends.postgres.postgres.url",
                "holds a password",
            ),
            (
                "  postgres:\n    postgres: { url: \"mysql://db/app\" }\n",
                "backends.postgres.postgres.url",
                "is not a postgres://",
            ),
            (
                "  postgres:\n    postgres: { url: \"postgres://db/app\", password: { env: NOPE } }\n",
                "backends.postgres.postgres.password",
                "NOPE is not set",
            ),
            (
                "  kafka:\n    kafka: { bootstrap_servers: \"kafka-0:9092,kafka-1\" }\n",
                "backends.kafka.kafka.bootstrap_servers",
                "`kafka-1` is not host:port",
            ),
            (
                "  kafka:\n    kafka: { bootstrap_servers: \"kafka-0:9092\", timeout: 1h }\n",
                "backends.kafka.kafka.timeout",
                "at most 10m",
            ),
            (
                "  kafka:\n    kafka: { bootstrap_servers: \"kafka-0:9092\", workloads: { groups: { g: { namespace: shop, deployment: g } } } }\n",
                "backends.kafka.kafka.workloads",
                "add the agent's `kubernetes:` section",
            ),
            (
                "  kafka:\n    kafka: { bootstrap_servers: \"kafka-0:9092\", workloads: { brokers: { namespace: kafka, pod: kafka-0 } } }\n    kubernetes: {}\n",
                "backends.kafka.kafka.workloads.brokers.pod",
                "has no `{id}`",
            ),
            (
                "  kafka:\n    kafka: { bootstrap_servers: \"kafka-0:9092\", sasl: { mechanism: PLAIN, username: u, password: { env: T } } }\n",
                "backends.kafka.kafka.sasl",
                "clear text",
            ),
            (
                "  kafka:\n    kafka: { bootstrap_servers: \"kafka-0:9092\", sasl: { mechanism: GSSAPI, username: u, password: { env: T } } }\n",
                "backends.kafka.kafka.sasl.mechanism",
                "SCRAM-SHA-512",
            ),
            (
                "  kafka:\n    kafka: { bootstrap_servers: \"kafka-0:9092\", tls: { ca_file: /nonexistent/ca.pem } }\n",
                "backends.kafka.kafka.tls.ca_file",
                "is not a file",
            ),
            (
                "  kafka:\n    kafka: { bootstrap_servers: \"kafka-0:9092\", workloads: { brokers: { namespace: kafka, pod: \"k-{id}\", strimzi_kafka: My_Cluster } } }\n    kubernetes: {}\n",
                "backends.kafka.kafka.workloads.brokers.strimzi_kafka",
                "DNS-1123",
            ),
            (
                "  kafka:\n    kafka: { bootstrap_servers: \"kafka-0:9092\", workloads: { groups: { g: { namespace: Shop, deployment: g } } } }\n    kubernetes: {}\n",
                "backends.kafka.kafka.workloads.groups.g.namespace",
                "DNS-1123",
            ),
            (
                "  kubernetes:\n    kubernetes: { kubeconfig: /nonexistent/kubeconfig }\n",
                "backends.kubernetes.kubernetes.kubeconfig",
                "is not a file",
            ),
            (
                "  postgres:\n    postgres: { url: \"postgres://db/app\", pool: 0 }\n",
                "backends.postgres.postgres.pool",
                "1 to 64",
            ),
            (
                "  postgres:\n    postgres: { url: \"postgres://db/app\", statement_timeout: forever }\n",
                "backends.postgres.postgres.statement_timeout",
                "e.g. 5s",
            ),
            (
                "  postgres:\n    postgres: { url: \"postgres://db/app\", statement_timeout: 1h }\n",
                "backends.postgres.postgres.statement_timeout",
                "at most 10m",
            ),
            (
                "  postgres:\n    metrics: { url: \"prom:9090\" }\n",
                "backends.postgres.metrics.url",
                "http(s)://",
            ),
            (
                "  postgres:\n    metrics: { url: \"https://u:pw@prom:9090\" }\n",
                "backends.postgres.metrics.url",
                "holds credentials",
            ),
            (
                "  postgres:\n    mode: live\n    dry_run: true\n    metrics: { url: \"http://p\" }\n",
                "backends.postgres.mode",
                "disagree",
            ),
            ("  postgres: {}\n", "backends.postgres", "empty"),
            (
                "  postgres:\n    postgres: { url: \"postgres://db/app\", ca_file: /nope/ca.pem }\n",
                "backends.postgres.postgres.ca_file",
                "is not a file",
            ),
            (
                "  postgres:\n    scenario: x.yaml\n    metrics: { url: \"http://p\" }\n",
                "backends.postgres.scenario",
                "either",
            ),
        ] {
            let e = with_backends(backends, &[], &Overrides::default()).expect_err(backends);
            assert_eq!(e.field, field, "{e}");
            assert!(e.problem.contains(says), "{e}");
        }
    }

    #[test]
    fn the_dry_run_flag_puts_every_configured_agent_in_shadow_mode() {
        let backends = "  postgres:\n    postgres: { url: \"postgres://db/app\" }\n";
        let live = with_backends(backends, &[], &Overrides::default()).expect("loads");
        assert!(!live.backends["postgres"].dry_run);
        let flag = Overrides {
            dry_run: true,
            ..Overrides::default()
        };
        let shadow = with_backends(backends, &[], &flag).expect("loads");
        assert!(shadow.backends["postgres"].dry_run);
    }
}
