//! `KafkaCaps` against a real cluster through rdkafka (librdkafka): cluster metadata, topics and
//! their replication, partition leadership, consumer groups and their lag.
//!
//! Reads only. The Kafka agent's actions act on the workloads around the cluster (the consumers'
//! Deployment, a broker's pod): `themis-backend-kubernetes`'s `KafkaOnKubernetes` makes them
//! through the Kubernetes API where `kafka.workloads` binds them; without a binding every
//! mutating call here says "unavailable" with why, and the agent escalates — it never guesses a
//! workload.
//!
//! librdkafka's calls block (with a timeout): each runs on tokio's blocking pool.
//!
//! The connection is plaintext, TLS (the brokers' CA, optionally a client certificate), SASL
//! (PLAIN, SCRAM-SHA-256/512) or SASL over TLS, as `KafkaSecurity` says; PLAIN never goes
//! without TLS. A call that fails because no broker could be reached says the last connection
//! error librdkafka saw (a certificate that does not verify, credentials refused): librdkafka's
//! own call errors say only that no broker answered.

mod assignment;
mod convert;

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, ClientContext};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use themis_caps::KafkaCaps;
use themis_caps::types::{
    CapError, CapResult, ClusterInfo, ConsumerGroup, ConsumerWorkload, PartitionLag,
    PartitionLeader, TopicInfo,
};
use themis_core::types::Pair;

/// How the agent reaches its cluster (`backends.<agent>.kafka` in themis.yaml).
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `host:port,host:port`.
    pub bootstrap_servers: String,
    pub client_id: String,
    /// Every request's bound.
    pub timeout: Duration,
    pub security: KafkaSecurity,
}

/// TLS and SASL: neither is plaintext.
#[derive(Debug, Clone, Default)]
pub struct KafkaSecurity {
    pub tls: Option<KafkaTls>,
    pub sasl: Option<KafkaSasl>,
}

/// TLS to the brokers, their certificates checked against `ca_file` (none: the system's CAs)
/// and their host names; a client certificate and key for mutual TLS.
#[derive(Debug, Clone, Default)]
pub struct KafkaTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    /// As librdkafka and the brokers name it.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    pub fn parse(text: &str) -> Option<SaslMechanism> {
        [
            SaslMechanism::Plain,
            SaslMechanism::ScramSha256,
            SaslMechanism::ScramSha512,
        ]
        .into_iter()
        .find(|m| m.name().eq_ignore_ascii_case(text))
    }
}

/// SASL credentials; the password is never printed.
#[derive(Clone)]
pub struct KafkaSasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for KafkaSasl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl KafkaSecurity {
    /// librdkafka's `security.protocol`.
    pub fn protocol(&self) -> &'static str {
        match (self.tls.is_some(), self.sasl.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        }
    }

    /// Why these settings must not be used, if they must not: PLAIN would send the password in
    /// clear text.
    pub fn refusal(&self) -> Option<&'static str> {
        match (&self.tls, &self.sasl) {
            (None, Some(s)) if s.mechanism == SaslMechanism::Plain => Some(
                "SASL PLAIN without TLS sends the password in clear text: add `tls:` (or use SCRAM)",
            ),
            _ => None,
        }
    }

    fn apply(&self, c: &mut ClientConfig) {
        c.set("security.protocol", self.protocol());
        if let Some(tls) = &self.tls {
            c.set("ssl.endpoint.identification.algorithm", "https");
            let files = [
                ("ssl.ca.location", &tls.ca_file),
                ("ssl.certificate.location", &tls.cert_file),
                ("ssl.key.location", &tls.key_file),
            ];
            for (key, file) in files {
                if let Some(file) = file {
                    c.set(key, file.display().to_string());
                }
            }
        }
        if let Some(sasl) = &self.sasl {
            c.set("sasl.mechanisms", sasl.mechanism.name())
                .set("sasl.username", &sasl.username)
                .set("sasl.password", &sasl.password);
        }
    }
}

impl KafkaSettings {
    pub fn new(bootstrap_servers: impl Into<String>) -> KafkaSettings {
        KafkaSettings {
            bootstrap_servers: bootstrap_servers.into(),
            client_id: "themis".into(),
            timeout: Duration::from_secs(10),
            security: KafkaSecurity::default(),
        }
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id)
            .set("socket.timeout.ms", self.timeout.as_millis().to_string())
            // Themis never consumes: a group's committed offsets are read, never changed.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        self.security.apply(&mut c);
        c
    }
}

/// The client's context: keeps the last connection-level error librdkafka reported.
#[derive(Default)]
pub struct Connection {
    /// When it was taken off the client's queue, and what it said.
    last_error: Mutex<Option<(Instant, String)>>,
}

impl Connection {
    /// The last error taken off the queue at or after `since`.
    fn last_error_since(&self, since: Instant) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(at, _)| *at >= since)
            .map(|(_, reason)| reason.clone())
    }
}

impl ClientContext for Connection {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka client");
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), reason.to_owned()));
    }
}

/// How often the client's queue is served when no call serves it: librdkafka queues an error
/// for every failed connection attempt, and a cluster down for a week between alerts must not
/// grow the host.
const DRAIN_EVERY: Duration = Duration::from_secs(30);

/// Serve the client's queue every [`DRAIN_EVERY`] while the client lives.
fn drain_in_background(client: &Arc<Client>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(client);
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(DRAIN_EVERY).await;
            let Some(client) = weak.upgrade() else {
                return;
            };
            let _ = tokio::task::spawn_blocking(move || {
                let _ = client.poll(Duration::from_millis(100));
            })
            .await;
        }
    });
}

impl ConsumerContext for Connection {}

type Client = BaseConsumer<Connection>;

pub struct KafkaBackend {
    agent: String,
    settings: KafkaSettings,
    client: Arc<Client>,
}

/// What the doctor found.
#[derive(Debug, Clone)]
pub struct Doctor {
    pub brokers: usize,
    pub topics: usize,
    pub controller: i32,
}

/// The most partitions one read returns (a step's result budget is far smaller anyway).
const MAX_ROWS: usize = themis_caps::MAX_LIST_ROWS;

fn error(what: &str, e: KafkaError) -> CapError {
    let code = e.rdkafka_error_code();
    let msg = format!("{what}: {e}");
    match code {
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::GroupIdNotFound,
        ) => CapError::NotFound(msg),
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed,
        ) => CapError::Denied(msg),
        Some(
            RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::IllegalSASLState
            | RDKafkaErrorCode::UnsupportedSASLMechanism,
        ) => CapError::Denied(format!(
            "{msg}: the cluster refused the agent's credentials; check backends.<agent>.kafka.sasl"
        )),
        _ => CapError::Unavailable(msg),
    }
}

impl KafkaBackend {
    /// A client of the cluster; it connects lazily, so an unreachable cluster fails calls
    /// (closed), not the start.
    pub fn new(agent: &str, settings: KafkaSettings) -> Result<KafkaBackend, String> {
        if let Some(why) = settings.security.refusal() {
            return Err(why.to_owned());
        }
        let client: Client = settings
            .config()
            .create_with_context(Connection::default())
            .map_err(|e| format!("cannot create the Kafka client: {e}"))?;
        let client = Arc::new(client);
        drain_in_background(&client);
        Ok(KafkaBackend {
            agent: agent.to_owned(),
            settings,
            client,
        })
    }

    /// Run a blocking librdkafka call off the async threads.
    async fn blocking<T, F>(&self, what: &'static str, f: F) -> CapResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Client, Duration) -> Result<T, CapError> + Send + 'static,
    {
        let client = self.client.clone();
        let timeout = self.settings.timeout;
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = f(&client, timeout);
            // No broker answered: say why the connections failed, if librdkafka said. Its
            // errors reach the context only when the client's queue is served (briefly: only a
            // failed call pays for it), and only what came during this call is told.
            let mut last = None;
            if matches!(result, Err(CapError::Unavailable(_))) {
                let _ = client.poll(Duration::from_millis(100));
                last = client.context().last_error_since(started);
            }
            match (result, last) {
                (Err(CapError::Unavailable(msg)), Some(last)) => Err(CapError::Unavailable(
                    format!("{msg} (the last connection error: {last})"),
                )),
                (result, _) => result,
            }
        })
        .await
        .map_err(|e| CapError::Failed(format!("{what}: {e}")))?
    }

    /// Reach the cluster: brokers, topics, the controller.
    pub async fn doctor(&self) -> Result<Doctor, String> {
        self.blocking("doctor", |c, t| {
            let m = c
                .fetch_metadata(None, t)
                .map_err(|e| error("metadata", e))?;
            Ok(Doctor {
                brokers: m.brokers().len(),
                topics: m.topics().len(),
                controller: convert::controller(c, t),
            })
        })
        .await
        .map_err(|e| e.to_string())
    }

    fn unsupported<T>(&self, capability: &str) -> CapResult<T> {
        Err(CapError::Unavailable(format!(
            "agent `{}`: {capability} acts on the workloads around the cluster (a consumer Deployment, a broker pod) through the Kubernetes API: bind them under backends.<agent>.kafka.workloads, with the agent's kubernetes: section, in themis.yaml; until then a human acts",
            self.agent
        )))
    }
}

#[async_trait]
impl KafkaCaps for KafkaBackend {
    async fn describe_cluster(&self) -> CapResult<ClusterInfo> {
        self.blocking("kafka.describe-cluster", |c, t| {
            let m = c
                .fetch_metadata(None, t)
                .map_err(|e| error("kafka.describe-cluster", e))?;
            Ok(ClusterInfo {
                cluster_id: c.client().fetch_cluster_id(t).unwrap_or_default(),
                controller_id: convert::controller(c, t),
                brokers: convert::brokers(&m),
            })
        })
        .await
    }

    async fn describe_consumer_group(&self, group: &str) -> CapResult<ConsumerGroup> {
        let group = group.to_owned();
        self.blocking("kafka.describe-consumer-group", move |c, t| {
            let list = c
                .fetch_group_list(Some(&group), t)
                .map_err(|e| error("kafka.describe-consumer-group", e))?;
            let info = list
                .groups()
                .iter()
                .find(|g| g.name() == group)
                .ok_or_else(|| CapError::NotFound(format!("consumer group {group}")))?;
            Ok(convert::group(info))
        })
        .await
    }

    async fn consumer_lag(&self, group: &str, topic: &str) -> CapResult<Vec<PartitionLag>> {
        let (group, topic) = (group.to_owned(), topic.to_owned());
        let mut config = self.settings.config();
        config.set("group.id", &group);
        self.blocking("kafka.consumer-lag", move |c, t| {
            let what = "kafka.consumer-lag";
            let m = c
                .fetch_metadata(Some(&topic), t)
                .map_err(|e| error(what, e))?;
            let Some(meta) = m.topics().iter().find(|x| x.name() == topic) else {
                return Err(CapError::NotFound(format!("topic {topic}")));
            };
            if let Some(code) = meta.error() {
                return Err(error(what, KafkaError::MetadataFetch(code.into())));
            }
            let mut tpl = TopicPartitionList::new();
            for p in meta.partitions().iter().take(MAX_ROWS) {
                tpl.add_partition(&topic, p.id());
            }
            // A consumer of the group that never joins it: it only reads the group's offsets.
            let reader: BaseConsumer = config
                .create()
                .map_err(|e| CapError::Failed(format!("{what}: {e}")))?;
            let committed = reader
                .committed_offsets(tpl, t)
                .map_err(|e| error(what, e))?;
            let mut out = Vec::new();
            for e in committed.elements() {
                let (low, high) = c
                    .fetch_watermarks(&topic, e.partition(), t)
                    .map_err(|err| error(what, err))?;
                let (committed, lag) = match e.offset() {
                    Offset::Offset(o) => (o, (high - o).max(0)),
                    // Nothing committed: everything retained is still to be read.
                    _ => (-1, (high - low).max(0)),
                };
                out.push(PartitionLag {
                    topic: topic.clone(),
                    partition: e.partition(),
                    committed_offset: committed,
                    end_offset: high,
                    lag,
                });
            }
            out.sort_by_key(|p| p.partition);
            Ok(out)
        })
        .await
    }

    async fn list_topics(&self) -> CapResult<Vec<TopicInfo>> {
        self.blocking("kafka.list-topics", |c, t| {
            let m = c
                .fetch_metadata(None, t)
                .map_err(|e| error("kafka.list-topics", e))?;
            Ok(convert::topics(&m, MAX_ROWS))
        })
        .await
    }

    async fn partition_leadership(&self) -> CapResult<Vec<PartitionLeader>> {
        self.blocking("kafka.partition-leadership", |c, t| {
            let m = c
                .fetch_metadata(None, t)
                .map_err(|e| error("kafka.partition-leadership", e))?;
            Ok(convert::off_preferred(&m, MAX_ROWS))
        })
        .await
    }

    async fn describe_consumers(&self, _group: &str) -> CapResult<ConsumerWorkload> {
        self.unsupported("kafka.describe-consumers")
    }

    async fn broker_config(&self, _broker_id: i32) -> CapResult<Vec<Pair>> {
        self.unsupported("kafka.broker-config")
    }

    async fn restart_consumers(&self, _group: &str) -> CapResult<ConsumerWorkload> {
        self.unsupported("kafka.restart-consumers")
    }

    async fn scale_consumers(&self, _group: &str, _replicas: u32) -> CapResult<ConsumerWorkload> {
        self.unsupported("kafka.scale-consumers")
    }

    async fn set_broker_config(&self, _broker_id: i32, _key: &str, _value: &str) -> CapResult<()> {
        self.unsupported("kafka.set-broker-config")
    }

    async fn broker_restart(&self, _broker_id: i32) -> CapResult<()> {
        self.unsupported("kafka.broker-restart")
    }

    async fn elect_preferred_leaders(&self, _topic: &str) -> CapResult<u32> {
        self.unsupported("kafka.elect-preferred-leaders")
    }
}
