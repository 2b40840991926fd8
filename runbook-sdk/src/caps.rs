//! The capabilities a step may call, one trait per domain.
//!
//! In a component they are backed by the host's imports ([`Host`]); in a step's native unit tests
//! by [`crate::mock::MockCaps`]. A step is written against `&dyn Kafka` (or `Kubernetes`,
//! `Postgres`), so it can only name its own domain's functions.

use crate::bindings::common::themis::runbook::{log as wit_log, metrics as wit_metrics};
use crate::bindings::kafka::themis::runbook::kafka as wit_kafka;
use crate::bindings::kubernetes::themis::runbook::k8s as wit_k8s;
use crate::bindings::postgres::themis::runbook::postgres as wit_pg;
use crate::types::{CapError, Pair};

pub use wit_log::Level;
pub use wit_metrics::Sample;

/// Kafka domain types.
pub mod kafka_types {
    pub use super::wit_kafka::{
        Broker, ClusterInfo, ConsumerGroup, ConsumerWorkload, GroupMember, GroupState,
        PartitionLag, PartitionLeader, TopicInfo, TopicPartition,
    };

    /// The WIT name of a group state (`stable`, `preparing-rebalance`, …): what outputs,
    /// evidence and agent rules use.
    pub fn group_state_name(state: GroupState) -> &'static str {
        match state {
            GroupState::Unknown => "unknown",
            GroupState::PreparingRebalance => "preparing-rebalance",
            GroupState::CompletingRebalance => "completing-rebalance",
            GroupState::Stable => "stable",
            GroupState::Dead => "dead",
            GroupState::Empty => "empty",
        }
    }
}

/// Kubernetes domain types.
pub mod k8s_types {
    pub use super::wit_k8s::{Condition, Deployment, Event, Pod, Revision, StatefulSet, Workload};
}

/// PostgreSQL domain types.
pub mod postgres_types {
    pub use super::wit_pg::{Backend, ConnectionSlots, LockWait, Replica};
}

use k8s_types::*;
use kafka_types::*;
use postgres_types::*;

/// Result of a capability call.
pub type CapResult<T> = Result<T, CapError>;

/// Structured log lines into the audit. Always available.
pub trait Log {
    fn log(&self, level: Level, message: &str, fields: &[(&str, &str)]);
}

/// Instant PromQL queries. Every domain has it.
pub trait Metrics {
    fn query(&self, promql: &str) -> CapResult<Vec<Sample>>;
}

/// Kafka capabilities (`kafka.*`).
pub trait Kafka: Metrics + Log {
    fn describe_cluster(&self) -> CapResult<ClusterInfo>;
    fn describe_consumer_group(&self, group: &str) -> CapResult<ConsumerGroup>;
    fn consumer_lag(&self, group: &str, topic: &str) -> CapResult<Vec<PartitionLag>>;
    fn list_topics(&self) -> CapResult<Vec<TopicInfo>>;
    fn describe_consumers(&self, group: &str) -> CapResult<ConsumerWorkload>;
    fn broker_config(&self, broker_id: i32) -> CapResult<Vec<Pair>>;
    fn restart_consumers(&self, group: &str) -> CapResult<ConsumerWorkload>;
    fn scale_consumers(&self, group: &str, replicas: u32) -> CapResult<ConsumerWorkload>;
    fn set_broker_config(&self, broker_id: i32, key: &str, value: &str) -> CapResult<()>;
    fn broker_restart(&self, broker_id: i32) -> CapResult<()>;
    fn partition_leadership(&self) -> CapResult<Vec<PartitionLeader>>;
    fn elect_preferred_leaders(&self, topic: &str) -> CapResult<u32>;
}

/// Kubernetes capabilities (`k8s.*`).
pub trait Kubernetes: Metrics + Log {
    fn get_deployment(&self, namespace: &str, name: &str) -> CapResult<Deployment>;
    /// A StatefulSet and its rollout (current and update revision).
    fn get_statefulset(&self, namespace: &str, name: &str) -> CapResult<StatefulSet>;
    /// The namespace's events about the object named `object`, newest first (at most 50).
    fn list_events(&self, namespace: &str, object: &str) -> CapResult<Vec<Event>>;
    fn list_pods(&self, namespace: &str, selector: &str) -> CapResult<Vec<Pod>>;
    fn pod_logs(&self, namespace: &str, pod: &str, tail_lines: u32) -> CapResult<Vec<String>>;
    fn pod_owner(&self, namespace: &str, pod: &str) -> CapResult<Option<Workload>>;
    fn rollout_restart(&self, namespace: &str, name: &str) -> CapResult<()>;
    fn scale_deployment(&self, namespace: &str, name: &str, replicas: u32) -> CapResult<()>;
    fn delete_pod(&self, namespace: &str, name: &str) -> CapResult<()>;
    fn rollout_history(&self, namespace: &str, name: &str) -> CapResult<Vec<Revision>>;
    fn rollout_undo(&self, namespace: &str, name: &str, to_revision: i64) -> CapResult<()>;
}

/// PostgreSQL capabilities (`postgres.*`).
pub trait Postgres: Metrics + Log {
    fn activity(&self, min_query_seconds: f64) -> CapResult<Vec<Backend>>;
    fn blockers(&self) -> CapResult<Vec<LockWait>>;
    fn replication_lag(&self) -> CapResult<Vec<Replica>>;
    fn connection_usage(&self, min_idle_seconds: f64) -> CapResult<ConnectionSlots>;
    fn cancel_backend(&self, pid: i32) -> CapResult<bool>;
    fn terminate_backend(&self, pid: i32) -> CapResult<bool>;
}

/// The host's imports, as seen from inside a component. Only the functions a step calls end up
/// imported by its component, and the host checks those against the step's domain and grant.
#[derive(Debug, Default, Clone, Copy)]
pub struct Host;

impl Log for Host {
    fn log(&self, level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<Pair> = fields
            .iter()
            .map(|(k, v)| Pair {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect();
        wit_log::emit(level, message, &fields);
    }
}

impl Metrics for Host {
    fn query(&self, promql: &str) -> CapResult<Vec<Sample>> {
        wit_metrics::query(promql)
    }
}

impl Kafka for Host {
    fn describe_cluster(&self) -> CapResult<ClusterInfo> {
        wit_kafka::describe_cluster()
    }
    fn describe_consumer_group(&self, group: &str) -> CapResult<ConsumerGroup> {
        wit_kafka::describe_consumer_group(group)
    }
    fn consumer_lag(&self, group: &str, topic: &str) -> CapResult<Vec<PartitionLag>> {
        wit_kafka::consumer_lag(group, topic)
    }
    fn list_topics(&self) -> CapResult<Vec<TopicInfo>> {
        wit_kafka::list_topics()
    }
    fn describe_consumers(&self, group: &str) -> CapResult<ConsumerWorkload> {
        wit_kafka::describe_consumers(group)
    }
    fn broker_config(&self, broker_id: i32) -> CapResult<Vec<Pair>> {
        wit_kafka::broker_config(broker_id)
    }
    fn restart_consumers(&self, group: &str) -> CapResult<ConsumerWorkload> {
        wit_kafka::restart_consumers(group)
    }
    fn scale_consumers(&self, group: &str, replicas: u32) -> CapResult<ConsumerWorkload> {
        wit_kafka::scale_consumers(group, replicas)
    }
    fn set_broker_config(&self, broker_id: i32, key: &str, value: &str) -> CapResult<()> {
        wit_kafka::set_broker_config(broker_id, key, value)
    }
    fn broker_restart(&self, broker_id: i32) -> CapResult<()> {
        wit_kafka::broker_restart(broker_id)
    }
    fn partition_leadership(&self) -> CapResult<Vec<PartitionLeader>> {
        wit_kafka::partition_leadership()
    }
    fn elect_preferred_leaders(&self, topic: &str) -> CapResult<u32> {
        wit_kafka::elect_preferred_leaders(topic)
    }
}

impl Kubernetes for Host {
    fn get_deployment(&self, namespace: &str, name: &str) -> CapResult<Deployment> {
        wit_k8s::get_deployment(namespace, name)
    }
    fn get_statefulset(&self, namespace: &str, name: &str) -> CapResult<StatefulSet> {
        wit_k8s::get_statefulset(namespace, name)
    }
    fn list_events(&self, namespace: &str, object: &str) -> CapResult<Vec<Event>> {
        wit_k8s::list_events(namespace, object)
    }
    fn list_pods(&self, namespace: &str, selector: &str) -> CapResult<Vec<Pod>> {
        wit_k8s::list_pods(namespace, selector)
    }
    fn pod_logs(&self, namespace: &str, pod: &str, tail_lines: u32) -> CapResult<Vec<String>> {
        wit_k8s::pod_logs(namespace, pod, tail_lines)
    }
    fn pod_owner(&self, namespace: &str, pod: &str) -> CapResult<Option<Workload>> {
        wit_k8s::pod_owner(namespace, pod)
    }
    fn rollout_restart(&self, namespace: &str, name: &str) -> CapResult<()> {
        wit_k8s::rollout_restart(namespace, name)
    }
    fn scale_deployment(&self, namespace: &str, name: &str, replicas: u32) -> CapResult<()> {
        wit_k8s::scale_deployment(namespace, name, replicas)
    }
    fn delete_pod(&self, namespace: &str, name: &str) -> CapResult<()> {
        wit_k8s::delete_pod(namespace, name)
    }
    fn rollout_history(&self, namespace: &str, name: &str) -> CapResult<Vec<Revision>> {
        wit_k8s::rollout_history(namespace, name)
    }
    fn rollout_undo(&self, namespace: &str, name: &str, to_revision: i64) -> CapResult<()> {
        wit_k8s::rollout_undo(namespace, name, to_revision)
    }
}

impl Postgres for Host {
    fn activity(&self, min_query_seconds: f64) -> CapResult<Vec<Backend>> {
        wit_pg::activity(min_query_seconds)
    }
    fn blockers(&self) -> CapResult<Vec<LockWait>> {
        wit_pg::blockers()
    }
    fn replication_lag(&self) -> CapResult<Vec<Replica>> {
        wit_pg::replication_lag()
    }
    fn connection_usage(&self, min_idle_seconds: f64) -> CapResult<ConnectionSlots> {
        wit_pg::connection_usage(min_idle_seconds)
    }
    fn cancel_backend(&self, pid: i32) -> CapResult<bool> {
        wit_pg::cancel_backend(pid)
    }
    fn terminate_backend(&self, pid: i32) -> CapResult<bool> {
        wit_pg::terminate_backend(pid)
    }
}
