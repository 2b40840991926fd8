//! In-memory capabilities for a step's native unit tests (`cargo test`, no host, no Wasm).
//!
//! ```
//! use themis_runbook_sdk::mock::MockCaps;
//! use themis_runbook_sdk::caps::{Metrics, Sample};
//!
//! let caps = MockCaps::new().on("metrics.query", Ok(vec![Sample { labels: vec![], value: 0.95 }]));
//! assert_eq!(caps.query("broker_cpu").unwrap()[0].value, 0.95);
//! assert!(caps.called("metrics.query"));
//! ```

use crate::caps::k8s_types::*;
use crate::caps::kafka_types::*;
use crate::caps::postgres_types::*;
use crate::caps::{CapResult, Kafka, Kubernetes, Level, Log, Metrics, Postgres, Sample};
use crate::types::{CapError, Pair};
use std::any::Any;
use std::cell::RefCell;

struct Rule {
    capability: String,
    args_contain: Option<String>,
    response: Box<dyn Any>,
}

/// One call a step made, as `capability` and its arguments rendered `name=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockCall {
    pub capability: String,
    pub args: String,
}

/// Canned responses by capability name (optionally by an argument substring) and a record of
/// every call, log lines included (as `log.emit`).
#[derive(Default)]
pub struct MockCaps {
    rules: Vec<Rule>,
    calls: RefCell<Vec<MockCall>>,
}

impl MockCaps {
    pub fn new() -> Self {
        Self::default()
    }

    /// Answer every call to `capability` with `response`.
    pub fn on<T: Clone + 'static>(mut self, capability: &str, response: CapResult<T>) -> Self {
        self.rules.push(Rule {
            capability: capability.into(),
            args_contain: None,
            response: Box::new(response),
        });
        self
    }

    /// Answer calls to `capability` whose rendered arguments contain `needle`; these rules win
    /// over [`MockCaps::on`] rules.
    pub fn on_args<T: Clone + 'static>(
        mut self,
        capability: &str,
        needle: &str,
        response: CapResult<T>,
    ) -> Self {
        self.rules.push(Rule {
            capability: capability.into(),
            args_contain: Some(needle.into()),
            response: Box::new(response),
        });
        self
    }

    pub fn calls(&self) -> Vec<MockCall> {
        self.calls.borrow().clone()
    }

    pub fn called(&self, capability: &str) -> bool {
        self.calls
            .borrow()
            .iter()
            .any(|c| c.capability == capability)
    }

    fn respond<T: Clone + 'static>(&self, capability: &str, args: String) -> CapResult<T> {
        let specific = self.rules.iter().find(|r| {
            r.capability == capability
                && r.args_contain
                    .as_deref()
                    .is_some_and(|needle| args.contains(needle))
        });
        let rule = specific.or_else(|| {
            self.rules
                .iter()
                .find(|r| r.capability == capability && r.args_contain.is_none())
        });
        self.calls.borrow_mut().push(MockCall {
            capability: capability.into(),
            args: args.clone(),
        });
        let Some(rule) = rule else {
            return Err(CapError::Unavailable(format!(
                "no mock response for {capability}({args})"
            )));
        };
        match rule.response.downcast_ref::<CapResult<T>>() {
            Some(response) => response.clone(),
            None => panic!(
                "mock response for {capability} has the wrong type: expected CapResult<{}>",
                std::any::type_name::<T>()
            ),
        }
    }
}

impl Log for MockCaps {
    fn log(&self, level: Level, message: &str, fields: &[(&str, &str)]) {
        let rendered: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.calls.borrow_mut().push(MockCall {
            capability: "log.emit".into(),
            args: format!("{level:?} {message} {}", rendered.join(" ")),
        });
    }
}

impl Metrics for MockCaps {
    fn query(&self, promql: &str) -> CapResult<Vec<Sample>> {
        self.respond("metrics.query", format!("promql={promql}"))
    }
}

impl Kafka for MockCaps {
    fn describe_cluster(&self) -> CapResult<ClusterInfo> {
        self.respond("kafka.describe-cluster", String::new())
    }
    fn describe_consumer_group(&self, group: &str) -> CapResult<ConsumerGroup> {
        self.respond("kafka.describe-consumer-group", format!("group={group}"))
    }
    fn consumer_lag(&self, group: &str, topic: &str) -> CapResult<Vec<PartitionLag>> {
        self.respond("kafka.consumer-lag", format!("group={group} topic={topic}"))
    }
    fn list_topics(&self) -> CapResult<Vec<TopicInfo>> {
        self.respond("kafka.list-topics", String::new())
    }
    fn describe_consumers(&self, group: &str) -> CapResult<ConsumerWorkload> {
        self.respond("kafka.describe-consumers", format!("group={group}"))
    }
    fn broker_config(&self, broker_id: i32) -> CapResult<Vec<Pair>> {
        self.respond("kafka.broker-config", format!("broker-id={broker_id}"))
    }
    fn restart_consumers(&self, group: &str) -> CapResult<ConsumerWorkload> {
        self.respond("kafka.restart-consumers", format!("group={group}"))
    }
    fn scale_consumers(&self, group: &str, replicas: u32) -> CapResult<ConsumerWorkload> {
        self.respond(
            "kafka.scale-consumers",
            format!("group={group} replicas={replicas}"),
        )
    }
    fn set_broker_config(&self, broker_id: i32, key: &str, value: &str) -> CapResult<()> {
        self.respond(
            "kafka.set-broker-config",
            format!("broker-id={broker_id} key={key} value={value}"),
        )
    }
    fn broker_restart(&self, broker_id: i32) -> CapResult<()> {
        self.respond("kafka.broker-restart", format!("broker-id={broker_id}"))
    }
    fn partition_leadership(&self) -> CapResult<Vec<PartitionLeader>> {
        self.respond("kafka.partition-leadership", String::new())
    }
    fn elect_preferred_leaders(&self, topic: &str) -> CapResult<u32> {
        self.respond("kafka.elect-preferred-leaders", format!("topic={topic}"))
    }
}

impl Kubernetes for MockCaps {
    fn get_statefulset(&self, namespace: &str, name: &str) -> CapResult<StatefulSet> {
        self.respond(
            "k8s.get-statefulset",
            format!("namespace={namespace} name={name}"),
        )
    }
    fn list_events(&self, namespace: &str, object: &str) -> CapResult<Vec<Event>> {
        self.respond(
            "k8s.list-events",
            format!("namespace={namespace} object={object}"),
        )
    }
    fn get_deployment(&self, namespace: &str, name: &str) -> CapResult<Deployment> {
        self.respond(
            "k8s.get-deployment",
            format!("namespace={namespace} name={name}"),
        )
    }
    fn list_pods(&self, namespace: &str, selector: &str) -> CapResult<Vec<Pod>> {
        self.respond(
            "k8s.list-pods",
            format!("namespace={namespace} selector={selector}"),
        )
    }
    fn pod_logs(&self, namespace: &str, pod: &str, tail_lines: u32) -> CapResult<Vec<String>> {
        self.respond(
            "k8s.pod-logs",
            format!("namespace={namespace} pod={pod} tail-lines={tail_lines}"),
        )
    }
    fn pod_owner(&self, namespace: &str, pod: &str) -> CapResult<Option<Workload>> {
        self.respond("k8s.pod-owner", format!("namespace={namespace} pod={pod}"))
    }
    fn rollout_restart(&self, namespace: &str, name: &str) -> CapResult<()> {
        self.respond(
            "k8s.rollout-restart",
            format!("namespace={namespace} name={name}"),
        )
    }
    fn scale_deployment(&self, namespace: &str, name: &str, replicas: u32) -> CapResult<()> {
        self.respond(
            "k8s.scale-deployment",
            format!("namespace={namespace} name={name} replicas={replicas}"),
        )
    }
    fn delete_pod(&self, namespace: &str, name: &str) -> CapResult<()> {
        self.respond(
            "k8s.delete-pod",
            format!("namespace={namespace} name={name}"),
        )
    }
    fn rollout_history(&self, namespace: &str, name: &str) -> CapResult<Vec<Revision>> {
        self.respond(
            "k8s.rollout-history",
            format!("namespace={namespace} name={name}"),
        )
    }
    fn rollout_undo(&self, namespace: &str, name: &str, to_revision: i64) -> CapResult<()> {
        self.respond(
            "k8s.rollout-undo",
            format!("namespace={namespace} name={name} to-revision={to_revision}"),
        )
    }
}

impl Postgres for MockCaps {
    fn activity(&self, min_query_seconds: f64) -> CapResult<Vec<Backend>> {
        self.respond(
            "postgres.activity",
            format!("min-query-seconds={min_query_seconds}"),
        )
    }
    fn blockers(&self) -> CapResult<Vec<LockWait>> {
        self.respond("postgres.blockers", String::new())
    }
    fn replication_lag(&self) -> CapResult<Vec<Replica>> {
        self.respond("postgres.replication-lag", String::new())
    }
    fn connection_usage(&self, min_idle_seconds: f64) -> CapResult<ConnectionSlots> {
        self.respond(
            "postgres.connection-usage",
            format!("min_idle_seconds={min_idle_seconds}"),
        )
    }
    fn cancel_backend(&self, pid: i32) -> CapResult<bool> {
        self.respond("postgres.cancel-backend", format!("pid={pid}"))
    }
    fn terminate_backend(&self, pid: i32) -> CapResult<bool> {
        self.respond("postgres.terminate-backend", format!("pid={pid}"))
    }
}
