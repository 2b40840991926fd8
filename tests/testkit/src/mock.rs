//! The scenario mock: every capability answered from a scenario file's `mocks:` section, every
//! call recorded. It stands for the systems a runbook acts on in CI and in `themis run`.
//!
//! ```yaml
//! mocks:
//!   kafka.describe-consumers:
//!     - when: { group: orders }          # optional; strings match as substrings
//!       sequence:                        # answered in order, the last one repeats
//!         - ok: { group_id: orders, replicas_desired: 3, replicas_ready: 3, revision: "7" }
//!         - ok: { group_id: orders, replicas_desired: 3, replicas_ready: 3, revision: "8" }
//!   metrics.query:
//!     - when: { promql: jvm_gc_pause }
//!       ok: [ { labels: [ { key: broker, value: "1" } ], value: 2.5 } ]
//!   kafka.broker-restart:
//!     - error: { unavailable: "broker 1 did not answer" }
//! ```
//!
//! `series:` answers by the scenario's clock instead of by call: the entry whose `after` (time
//! since the scenario started) was reached last, so a metric can recover at `after: 3m` while
//! the host reads it whenever it likes.
//!
//! ```yaml
//!   metrics.query:
//!     - when: { promql: kafka_consumergroup_lag }
//!       series:
//!         - { after: 0s, ok: [ { labels: [], value: 90000 } ] }
//!         - { after: 3m, ok: [ { labels: [], value: 12 } ] }
//! ```
//!
//! A world remembers what was done to it: a rule with `after_call: <capability>` applies only
//! once that mutation succeeded with the same values for the arguments both calls name, so a
//! group reads as restarted after its restart, whatever else happened in between. `delay:`
//! makes a call take time (a mutation is done at once; its answer arrives after the delay).
//!
//! ```yaml
//!   kafka.describe-consumers:
//!     - when: { group: stuck- }
//!       after_call: kafka.restart-consumers
//!       ok: { group_id: g, replicas_desired: 3, replicas_ready: 3, revision: "8" }
//!     - when: { group: stuck- }
//!       ok: { group_id: g, replicas_desired: 3, replicas_ready: 3, revision: "7" }
//!   kafka.restart-consumers:
//!     - delay: 300ms
//!       ok: { group_id: g, replicas_desired: 3, replicas_ready: 0, revision: "8" }
//! ```
//!
//! Values use the WIT records' field names in snake_case; enum cases are CamelCase
//! (`state: Stable`). A unit result is `ok: null`.

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use themis_caps::{
    Backend, CapError, CapResult, ClusterInfo, ConnectionSlots, ConsumerGroup, ConsumerWorkload,
    Deployment, Event, KafkaCaps, KubernetesCaps, LockWait, MetricsCaps, PartitionLag,
    PartitionLeader, Pod, PostgresCaps, Replica, Revision, Sample, StatefulSet, TopicInfo,
    Workload,
};
use themis_core::clock::Clock;
use themis_core::types::Pair;

/// How a mocked call fails, written `{ <kind>: <message> }` (a one-key map: YAML tags are not
/// something an SRE should have to write).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, String>",
    into = "BTreeMap<String, String>"
)]
pub enum MockError {
    Denied(String),
    NotFound(String),
    InvalidArgument(String),
    Unavailable(String),
    Failed(String),
}

const ERROR_KINDS: &str = "denied, not-found, invalid-argument, unavailable, failed";

impl TryFrom<BTreeMap<String, String>> for MockError {
    type Error = String;
    fn try_from(map: BTreeMap<String, String>) -> Result<Self, String> {
        let mut entries = map.into_iter();
        let (Some((kind, message)), None) = (entries.next(), entries.next()) else {
            return Err(format!(
                "an error is one `kind: message` pair; kinds: {ERROR_KINDS}"
            ));
        };
        Ok(match kind.as_str() {
            "denied" => MockError::Denied(message),
            "not-found" => MockError::NotFound(message),
            "invalid-argument" => MockError::InvalidArgument(message),
            "unavailable" => MockError::Unavailable(message),
            "failed" => MockError::Failed(message),
            other => {
                return Err(format!(
                    "unknown error kind `{other}`; kinds: {ERROR_KINDS}"
                ));
            }
        })
    }
}

impl From<MockError> for BTreeMap<String, String> {
    fn from(e: MockError) -> Self {
        let (kind, message) = match e {
            MockError::Denied(m) => ("denied", m),
            MockError::NotFound(m) => ("not-found", m),
            MockError::InvalidArgument(m) => ("invalid-argument", m),
            MockError::Unavailable(m) => ("unavailable", m),
            MockError::Failed(m) => ("failed", m),
        };
        BTreeMap::from([(kind.to_owned(), message)])
    }
}

impl From<MockError> for CapError {
    fn from(e: MockError) -> Self {
        match e {
            MockError::Denied(m) => CapError::Denied(m),
            MockError::NotFound(m) => CapError::NotFound(m),
            MockError::InvalidArgument(m) => CapError::InvalidArgument(m),
            MockError::Unavailable(m) => CapError::Unavailable(m),
            MockError::Failed(m) => CapError::Failed(m),
        }
    }
}

/// One answer: `ok: <value>` or `error: { <kind>: <message> }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockResponse {
    #[serde(default, deserialize_with = "present")]
    pub ok: Option<Value>,
    #[serde(default)]
    pub error: Option<MockError>,
}

/// A rule for one capability: when the arguments match, answer `ok`/`error`, or walk `sequence`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockRule {
    #[serde(default)]
    pub when: BTreeMap<String, Value>,
    #[serde(default, deserialize_with = "present")]
    pub ok: Option<Value>,
    #[serde(default)]
    pub error: Option<MockError>,
    #[serde(default)]
    pub sequence: Vec<MockResponse>,
    #[serde(default)]
    pub series: Vec<TimedResponse>,
    /// Only once the world has done this mutation with the same arguments (those both name).
    #[serde(default)]
    pub after_call: Option<String>,
    /// How long the call takes to answer (`300ms`, `2s`).
    #[serde(default)]
    pub delay: Option<String>,
}

/// One answer of a `series`, from `after` (a duration since the scenario started) on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimedResponse {
    pub after: String,
    #[serde(default, deserialize_with = "present")]
    pub ok: Option<Value>,
    #[serde(default)]
    pub error: Option<MockError>,
}

/// `ok: null` means "succeeded with no value", which is not the same as no `ok` at all.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The `mocks:` section: capability name → rules, first match wins.
pub type Mocks = BTreeMap<String, Vec<MockRule>>;

/// One call a step made through the mock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MockCall {
    pub capability: String,
    pub args: Value,
}

/// The most calls (and the most mutations) a world remembers: a long-running `themis serve` on
/// a scenario world must not grow without bound.
const REMEMBERED: usize = 10_000;

pub struct ScenarioMock {
    rules: Mocks,
    /// How far each (capability, rule index) has walked its sequence.
    cursors: Mutex<BTreeMap<(String, usize), usize>>,
    /// The newest calls, oldest first.
    calls: Mutex<VecDeque<MockCall>>,
    /// The mutations the world has done (for `after_call`), oldest first.
    done: Mutex<VecDeque<MockCall>>,
    /// Where the sequences' positions are kept, so another process continues the same world.
    persist: Option<PathBuf>,
    /// Where the world writes each mutation it does, durably, before answering: what a host
    /// killed mid-call left done is on it, and a later process's world starts from it.
    ledger: Option<PathBuf>,
    /// The scenario's clock and when it started, for `series`.
    clock: Option<(Clock, SystemTime)>,
}

/// A scenario's mocks that cannot be used, found before anything runs.
#[derive(Debug, thiserror::Error)]
#[error("mocks.{capability}[{rule}]: {problem}")]
pub struct MockRuleError {
    pub capability: String,
    pub rule: usize,
    pub problem: String,
}

impl ScenarioMock {
    pub fn new(rules: Mocks) -> Result<Self, MockRuleError> {
        for (capability, list) in &rules {
            if themis_core::capability::lookup(capability).is_none() {
                return Err(MockRuleError {
                    capability: capability.clone(),
                    rule: 0,
                    problem:
                        "not a capability; see the names in wit/*.wit (e.g. kafka.consumer-lag)"
                            .into(),
                });
            }
            for (i, rule) in list.iter().enumerate() {
                let forms = usize::from(rule.ok.is_some())
                    + usize::from(rule.error.is_some())
                    + usize::from(!rule.sequence.is_empty())
                    + usize::from(!rule.series.is_empty());
                if forms != 1 {
                    return Err(MockRuleError {
                        capability: capability.clone(),
                        rule: i,
                        problem: "give exactly one of `ok`, `error`, `sequence` or `series`".into(),
                    });
                }
                let mut last = Duration::ZERO;
                for (j, entry) in rule.series.iter().enumerate() {
                    let problem = |p: String| MockRuleError {
                        capability: capability.clone(),
                        rule: i,
                        problem: format!("series[{j}]: {p}"),
                    };
                    let after = humantime::parse_duration(&entry.after).map_err(|e| {
                        problem(format!("`after: {}` is not a duration ({e})", entry.after))
                    })?;
                    if after < last {
                        return Err(problem("entries must be in time order".into()));
                    }
                    last = after;
                    if entry.ok.is_some() == entry.error.is_some() {
                        return Err(problem("must have exactly one of `ok` or `error`".into()));
                    }
                }
                let problem = |p: String| MockRuleError {
                    capability: capability.clone(),
                    rule: i,
                    problem: p,
                };
                if let Some(delay) = &rule.delay {
                    humantime::parse_duration(delay).map_err(|e| {
                        problem(format!("`delay: {delay}` is not a duration ({e})"))
                    })?;
                }
                if let Some(after) = &rule.after_call
                    && themis_core::capability::lookup(after)
                        .is_none_or(|c| c.effect != themis_core::capability::Effect::Mutate)
                {
                    return Err(problem(format!(
                        "`after_call: {after}` is not a mutating capability (see wit/*.wit)"
                    )));
                }
                if let Some(j) = rule
                    .sequence
                    .iter()
                    .position(|r| r.ok.is_some() == r.error.is_some())
                {
                    return Err(MockRuleError {
                        capability: capability.clone(),
                        rule: i,
                        problem: format!("sequence[{j}] must have exactly one of `ok` or `error`"),
                    });
                }
            }
        }
        Ok(ScenarioMock {
            rules,
            cursors: Mutex::new(BTreeMap::new()),
            calls: Mutex::new(VecDeque::new()),
            done: Mutex::new(VecDeque::new()),
            persist: None,
            ledger: None,
            clock: None,
        })
    }

    /// Answer `series` by this clock, counting from now.
    pub fn clocked(mut self, clock: Clock) -> Self {
        let start = clock.now();
        self.clock = Some((clock, start));
        self
    }

    /// How long the scenario has run, by its clock (zero without one).
    fn elapsed(&self) -> Duration {
        self.clock
            .as_ref()
            .and_then(|(c, start)| c.now().duration_since(*start).ok())
            .unwrap_or_default()
    }

    /// Keep the sequences' positions in `file` (continuing from it if it exists).
    pub fn persisted(mut self, file: PathBuf) -> Self {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Ok(cursors) = serde_json::from_str::<BTreeMap<String, usize>>(&text)
        {
            self.resume(&cursors);
        }
        self.persist = Some(file);
        self
    }

    /// Write every mutation the world does to `file` (one JSON line each, synced before the
    /// answer), continuing from what it already holds.
    pub fn ledgered(mut self, file: PathBuf) -> Self {
        if let Ok(text) = std::fs::read_to_string(&file) {
            // A line cut short by a crash of this process was never answered: skip it.
            let mut done = lock(&self.done);
            for call in text.lines().filter_map(|l| serde_json::from_str(l).ok()) {
                remember(&mut done, call);
            }
        }
        self.ledger = Some(file);
        self
    }

    /// Every mutation the world has done (newest [`REMEMBERED`]).
    pub fn done(&self) -> Vec<MockCall> {
        lock(&self.done).iter().cloned().collect()
    }

    /// How far every sequence has walked, to carry the mocked world over to another process.
    pub fn cursors(&self) -> BTreeMap<String, usize> {
        lock(&self.cursors)
            .iter()
            .map(|((cap, rule), n)| (format!("{cap}#{rule}"), *n))
            .collect()
    }

    /// Continue sequences where [`ScenarioMock::cursors`] left them.
    pub fn resume(&self, cursors: &BTreeMap<String, usize>) {
        let mut mine = lock(&self.cursors);
        for (key, n) in cursors {
            if let Some((cap, rule)) = key.rsplit_once('#')
                && let Ok(rule) = rule.parse()
            {
                mine.insert((cap.to_owned(), rule), *n);
            }
        }
    }

    /// The calls made so far, in order (the newest [`REMEMBERED`]).
    pub fn calls(&self) -> Vec<MockCall> {
        lock(&self.calls).iter().cloned().collect()
    }

    async fn answer<T: DeserializeOwned>(&self, capability: &str, args: Value) -> CapResult<T> {
        let (delay, result) = self.decide(capability, args);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        result
    }

    /// The answer and how long it takes; a mutation that succeeds is done (and on the ledger)
    /// before the delay.
    fn decide<T: DeserializeOwned>(
        &self,
        capability: &str,
        args: Value,
    ) -> (Duration, CapResult<T>) {
        let call = MockCall {
            capability: capability.into(),
            args,
        };
        remember(&mut lock(&self.calls), call.clone());
        let rules = self.rules.get(capability).map(Vec::as_slice).unwrap_or(&[]);
        let Some((index, rule)) = rules
            .iter()
            .enumerate()
            .find(|(_, r)| matches(&r.when, &call.args) && self.after(r, &call.args))
        else {
            let args = &call.args;
            return (
                Duration::ZERO,
                Err(CapError::Unavailable(format!(
                    "the scenario has no mock for {capability} with arguments {args}: add a rule under mocks.{capability}"
                ))),
            );
        };
        let delay = rule
            .delay
            .as_deref()
            .and_then(|d| humantime::parse_duration(d).ok())
            .unwrap_or_default();
        let response = if !rule.series.is_empty() {
            let elapsed = self.elapsed();
            let entry = rule
                .series
                .iter()
                .rev()
                .find(|e| humantime::parse_duration(&e.after).is_ok_and(|a| a <= elapsed))
                .unwrap_or(&rule.series[0]);
            MockResponse {
                ok: entry.ok.clone(),
                error: entry.error.clone(),
            }
        } else if rule.sequence.is_empty() {
            MockResponse {
                ok: rule.ok.clone(),
                error: rule.error.clone(),
            }
        } else {
            let at = {
                let mut cursors = lock(&self.cursors);
                let cursor = cursors.entry((capability.to_owned(), index)).or_insert(0);
                let at = (*cursor).min(rule.sequence.len() - 1);
                *cursor += 1;
                at
            };
            if let Some(file) = &self.persist
                && let Ok(text) = serde_json::to_string(&self.cursors())
                && let Err(e) = std::fs::write(file, text)
            {
                tracing::warn!(file = %file.display(), error = %e, "could not save the mocked world's position");
            }
            rule.sequence[at].clone()
        };
        let result = match (response.ok, response.error) {
            (_, Some(error)) => Err(error.into()),
            (Some(value), None) => serde_json::from_value(value).map_err(|e| {
                CapError::Failed(format!(
                    "the scenario's mock for {capability} does not fit the capability's result type: {e}"
                ))
            }),
            (None, None) => Err(CapError::Failed(format!(
                "the scenario's mock for {capability} has neither ok nor error"
            ))),
        };
        // The world cannot keep what it did: it refuses to do it.
        if result.is_ok()
            && themis_core::capability::lookup(capability)
                .is_some_and(|c| c.effect == themis_core::capability::Effect::Mutate)
            && let Err(e) = self.record_done(&call)
        {
            return (
                Duration::ZERO,
                Err(CapError::Unavailable(format!(
                    "the mocked world cannot write its ledger: {e}"
                ))),
            );
        }
        (delay, result)
    }

    /// Has the world done the rule's `after_call` mutation with these arguments? A world kept in
    /// a ledger is read from it, so several processes acting on one world (hosts taking over
    /// from each other) see what the others did, as they would a real system's state.
    fn after(&self, rule: &MockRule, args: &Value) -> bool {
        let Some(after) = &rule.after_call else {
            return true;
        };
        let same = |done: &MockCall| done.capability == *after && same_target(&done.args, args);
        if lock(&self.done).iter().any(same) {
            return true;
        }
        self.ledger
            .as_ref()
            .and_then(|file| std::fs::read_to_string(file).ok())
            .is_some_and(|text| {
                text.lines()
                    .filter_map(|l| serde_json::from_str::<MockCall>(l).ok())
                    .any(|done| same(&done))
            })
    }

    fn record_done(&self, call: &MockCall) -> std::io::Result<()> {
        if let Some(file) = &self.ledger {
            let mut line = serde_json::to_vec(call).map_err(std::io::Error::other)?;
            line.push(b'\n');
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(file)?;
            // A line a killed process cut short is ended first, so this one stays whole.
            if ends_cut_short(&mut f)? {
                line.insert(0, b'\n');
            }
            f.write_all(&line)?;
            f.sync_data()?;
        }
        remember(&mut lock(&self.done), call.clone());
        Ok(())
    }
}

/// Whether `file` ends inside a line (a writer was killed mid-write).
fn ends_cut_short(file: &mut std::fs::File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

fn remember(list: &mut VecDeque<MockCall>, call: MockCall) {
    if list.len() == REMEMBERED {
        list.pop_front();
    }
    list.push_back(call);
}

/// Two calls are on the same target when they name at least one argument in common and agree
/// on every argument they both name.
fn same_target(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return false;
    };
    let shared: Vec<_> = a.keys().filter(|k| b.contains_key(*k)).collect();
    !shared.is_empty() && shared.iter().all(|k| a[*k] == b[*k])
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every `when` key must match the argument of that name: strings by substring, else equality.
fn matches(when: &BTreeMap<String, Value>, args: &Value) -> bool {
    when.iter().all(|(key, want)| match (args.get(key), want) {
        (Some(Value::String(have)), Value::String(want)) => have.contains(want.as_str()),
        (Some(have), want) => have == want,
        (None, _) => false,
    })
}

#[async_trait]
impl MetricsCaps for ScenarioMock {
    async fn query(&self, promql: &str) -> CapResult<Vec<Sample>> {
        self.answer("metrics.query", json!({ "promql": promql }))
            .await
    }
}

#[async_trait]
impl KafkaCaps for ScenarioMock {
    async fn describe_cluster(&self) -> CapResult<ClusterInfo> {
        self.answer("kafka.describe-cluster", json!({})).await
    }
    async fn describe_consumer_group(&self, group: &str) -> CapResult<ConsumerGroup> {
        self.answer("kafka.describe-consumer-group", json!({ "group": group }))
            .await
    }
    async fn consumer_lag(&self, group: &str, topic: &str) -> CapResult<Vec<PartitionLag>> {
        self.answer(
            "kafka.consumer-lag",
            json!({ "group": group, "topic": topic }),
        )
        .await
    }
    async fn list_topics(&self) -> CapResult<Vec<TopicInfo>> {
        self.answer("kafka.list-topics", json!({})).await
    }
    async fn describe_consumers(&self, group: &str) -> CapResult<ConsumerWorkload> {
        self.answer("kafka.describe-consumers", json!({ "group": group }))
            .await
    }
    async fn broker_config(&self, broker_id: i32) -> CapResult<Vec<Pair>> {
        self.answer("kafka.broker-config", json!({ "broker_id": broker_id }))
            .await
    }
    async fn restart_consumers(&self, group: &str) -> CapResult<ConsumerWorkload> {
        self.answer("kafka.restart-consumers", json!({ "group": group }))
            .await
    }
    async fn scale_consumers(&self, group: &str, replicas: u32) -> CapResult<ConsumerWorkload> {
        self.answer(
            "kafka.scale-consumers",
            json!({ "group": group, "replicas": replicas }),
        )
        .await
    }
    async fn set_broker_config(&self, broker_id: i32, key: &str, value: &str) -> CapResult<()> {
        self.answer(
            "kafka.set-broker-config",
            json!({ "broker_id": broker_id, "key": key, "value": value }),
        )
        .await
    }
    async fn broker_restart(&self, broker_id: i32) -> CapResult<()> {
        self.answer("kafka.broker-restart", json!({ "broker_id": broker_id }))
            .await
    }
    async fn partition_leadership(&self) -> CapResult<Vec<PartitionLeader>> {
        self.answer("kafka.partition-leadership", json!({})).await
    }
    async fn elect_preferred_leaders(&self, topic: &str) -> CapResult<u32> {
        self.answer("kafka.elect-preferred-leaders", json!({ "topic": topic }))
            .await
    }
}

#[async_trait]
impl KubernetesCaps for ScenarioMock {
    async fn get_statefulset(&self, namespace: &str, name: &str) -> CapResult<StatefulSet> {
        self.answer(
            "k8s.get-statefulset",
            json!({ "namespace": namespace, "name": name }),
        )
        .await
    }
    async fn list_events(&self, namespace: &str, object: &str) -> CapResult<Vec<Event>> {
        self.answer(
            "k8s.list-events",
            json!({ "namespace": namespace, "object": object }),
        )
        .await
    }
    async fn get_deployment(&self, namespace: &str, name: &str) -> CapResult<Deployment> {
        self.answer(
            "k8s.get-deployment",
            json!({ "namespace": namespace, "name": name }),
        )
        .await
    }
    async fn list_pods(&self, namespace: &str, selector: &str) -> CapResult<Vec<Pod>> {
        self.answer(
            "k8s.list-pods",
            json!({ "namespace": namespace, "selector": selector }),
        )
        .await
    }
    async fn pod_logs(&self, namespace: &str, pod: &str, tail: u32) -> CapResult<Vec<String>> {
        self.answer(
            "k8s.pod-logs",
            json!({ "namespace": namespace, "pod": pod, "tail_lines": tail }),
        )
        .await
    }
    async fn pod_owner(&self, namespace: &str, pod: &str) -> CapResult<Option<Workload>> {
        self.answer(
            "k8s.pod-owner",
            json!({ "namespace": namespace, "pod": pod }),
        )
        .await
    }
    async fn rollout_restart(&self, namespace: &str, name: &str) -> CapResult<()> {
        self.answer(
            "k8s.rollout-restart",
            json!({ "namespace": namespace, "name": name }),
        )
        .await
    }
    async fn scale_deployment(&self, namespace: &str, name: &str, replicas: u32) -> CapResult<()> {
        self.answer(
            "k8s.scale-deployment",
            json!({ "namespace": namespace, "name": name, "replicas": replicas }),
        )
        .await
    }
    async fn delete_pod(&self, namespace: &str, name: &str) -> CapResult<()> {
        self.answer(
            "k8s.delete-pod",
            json!({ "namespace": namespace, "name": name }),
        )
        .await
    }
    async fn rollout_history(&self, namespace: &str, name: &str) -> CapResult<Vec<Revision>> {
        self.answer(
            "k8s.rollout-history",
            json!({ "namespace": namespace, "name": name }),
        )
        .await
    }
    async fn rollout_undo(&self, namespace: &str, name: &str, to_revision: i64) -> CapResult<()> {
        self.answer(
            "k8s.rollout-undo",
            json!({ "namespace": namespace, "name": name, "to_revision": to_revision }),
        )
        .await
    }
}

#[async_trait]
impl PostgresCaps for ScenarioMock {
    async fn activity(&self, min_query_seconds: f64) -> CapResult<Vec<Backend>> {
        self.answer(
            "postgres.activity",
            json!({ "min_query_seconds": min_query_seconds }),
        )
        .await
    }
    async fn blockers(&self) -> CapResult<Vec<LockWait>> {
        self.answer("postgres.blockers", json!({})).await
    }
    async fn replication_lag(&self) -> CapResult<Vec<Replica>> {
        self.answer("postgres.replication-lag", json!({})).await
    }
    async fn connection_usage(&self, min_idle_seconds: f64) -> CapResult<ConnectionSlots> {
        self.answer(
            "postgres.connection-usage",
            json!({ "min_idle_seconds": min_idle_seconds }),
        )
        .await
    }
    async fn cancel_backend(&self, pid: i32) -> CapResult<bool> {
        self.answer("postgres.cancel-backend", json!({ "pid": pid }))
            .await
    }
    async fn terminate_backend(&self, pid: i32) -> CapResult<bool> {
        self.answer("postgres.terminate-backend", json!({ "pid": pid }))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mock(yaml: &str) -> ScenarioMock {
        let rules: Mocks = themis_core::yaml::from_str(yaml).expect("valid yaml");
        ScenarioMock::new(rules).expect("valid rules")
    }

    #[tokio::test]
    async fn sequences_advance_and_repeat_their_last_answer() {
        let m = mock(
            r#"
kafka.broker-restart:
  - sequence:
      - error: { unavailable: "down" }
      - ok: null
"#,
        );
        assert_eq!(
            m.broker_restart(1).await,
            Err(CapError::Unavailable("down".into()))
        );
        assert_eq!(m.broker_restart(1).await, Ok(()));
        assert_eq!(m.broker_restart(1).await, Ok(()));
        assert_eq!(m.calls().len(), 3);
    }

    #[tokio::test]
    async fn when_matches_substrings_and_first_rule_wins() {
        let m = mock(
            r#"
metrics.query:
  - when: { promql: gc_pause }
    ok: [ { labels: [], value: 2.5 } ]
  - ok: []
"#,
        );
        let gc = m.query("max(jvm_gc_pause_seconds)").await.expect("ok");
        assert_eq!(gc[0].value, 2.5);
        assert!(m.query("up").await.expect("ok").is_empty());
    }

    const REMEMBERING: &str = r#"
kafka.describe-consumers:
  - after_call: kafka.restart-consumers
    ok: { group_id: g, replicas_desired: 3, replicas_ready: 3, revision: "8" }
  - ok: { group_id: g, replicas_desired: 3, replicas_ready: 3, revision: "7" }
kafka.restart-consumers:
  - when: { group: broken }
    error: { failed: "no" }
  - delay: 50ms
    ok: { group_id: g, replicas_desired: 3, replicas_ready: 0, revision: "8" }
"#;

    #[tokio::test]
    async fn the_world_remembers_what_was_done_to_each_target_across_processes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = dir.path().join("ledger.jsonl");
        let m = mock(REMEMBERING).ledgered(ledger.clone());
        assert_eq!(m.describe_consumers("a").await.expect("ok").revision, "7");
        let started = std::time::Instant::now();
        m.restart_consumers("a").await.expect("restarted");
        assert!(started.elapsed() >= Duration::from_millis(50), "the delay");
        // Only the restarted group reads as restarted; a failed mutation did nothing.
        assert_eq!(m.describe_consumers("a").await.expect("ok").revision, "8");
        assert_eq!(m.describe_consumers("b").await.expect("ok").revision, "7");
        assert!(m.restart_consumers("broken").await.is_err());
        assert_eq!(
            m.describe_consumers("broken").await.expect("ok").revision,
            "7"
        );
        assert_eq!(m.done().len(), 1);
        // A later process on the same ledger starts from what was done, and adds to it.
        let again = mock(REMEMBERING).ledgered(ledger.clone());
        assert_eq!(
            again.describe_consumers("a").await.expect("ok").revision,
            "8"
        );
        again.restart_consumers("b").await.expect("restarted");
        let lines = std::fs::read_to_string(&ledger).expect("ledger");
        assert_eq!(lines.lines().count(), 2, "{lines}");
    }

    #[test]
    fn a_bad_delay_or_a_read_as_after_call_is_refused() {
        for (yaml, says) in [
            (
                "kafka.list-topics: [ { delay: soon, ok: [] } ]",
                "not a duration",
            ),
            (
                "kafka.list-topics: [ { after_call: kafka.describe-cluster, ok: [] } ]",
                "not a mutating capability",
            ),
        ] {
            let rules: Mocks = themis_core::yaml::from_str(yaml).expect("yaml");
            let err = ScenarioMock::new(rules).err().expect("refused").to_string();
            assert!(err.contains(says), "{yaml}: {err}");
        }
    }

    #[tokio::test]
    async fn a_missing_mock_is_unavailable_and_says_where_to_add_it() {
        let m = mock("{}");
        let Err(CapError::Unavailable(msg)) = m.list_topics().await else {
            panic!("expected unavailable");
        };
        assert!(msg.contains("mocks.kafka.list-topics"), "{msg}");
    }

    #[test]
    fn unknown_capabilities_and_ambiguous_rules_are_refused() {
        let rules: Mocks = themis_core::yaml::from_str("kafka.nope: [ { ok: 1 } ]").expect("yaml");
        assert!(ScenarioMock::new(rules).is_err());
        let rules: Mocks =
            themis_core::yaml::from_str("kafka.list-topics: [ { ok: [], error: { failed: x } } ]")
                .expect("yaml");
        let err = ScenarioMock::new(rules).err().expect("refused");
        assert!(err.to_string().contains("exactly one"), "{err}");
    }
}
