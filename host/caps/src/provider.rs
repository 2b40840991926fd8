//! Where an agent's backends come from: chosen by configuration, once per agent. The runtime asks
//! the provider; it never decides between real, mocked and dry-run backends itself.

use crate::types::{
    Backend, CapError, CapResult, ClusterInfo, ConnectionSlots, ConsumerGroup, ConsumerWorkload,
    Deployment, Event, LockWait, PartitionLag, PartitionLeader, Pod, Replica, Revision, Sample,
    StatefulSet, TopicInfo, Workload,
};
use crate::{Backends, KafkaCaps, KubernetesCaps, MetricsCaps, PostgresCaps};
use async_trait::async_trait;
use std::sync::Arc;
use themis_core::capability::Domain;
use themis_core::types::Pair;

/// A provider could not give an agent its backends (bad configuration, unreachable system).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent `{agent}`: no backends: {message}")]
pub struct ProviderError {
    pub agent: String,
    pub message: String,
}

pub trait BackendProvider: Send + Sync {
    /// The backends agent `agent` (of `domain`) acts through.
    fn backends(&self, agent: &str, domain: Domain) -> Result<Backends, ProviderError>;
}

/// The provider of a host with nothing configured: every capability call fails closed with
/// `unavailable`, saying what to configure. Probes then report what they could not read as
/// unknown, triage escalates, and nothing is ever changed.
pub struct Unconfigured;

impl BackendProvider for Unconfigured {
    fn backends(&self, agent: &str, _domain: Domain) -> Result<Backends, ProviderError> {
        Ok(Backends::all(NoBackend::for_agent(agent)))
    }
}

/// The backend of a domain nothing is configured for: every call fails closed.
pub struct NoBackend {
    agent: String,
}

impl NoBackend {
    pub fn for_agent(agent: &str) -> Arc<NoBackend> {
        Arc::new(NoBackend {
            agent: agent.to_owned(),
        })
    }
}

impl NoBackend {
    fn refuse<T>(&self, capability: &str) -> CapResult<T> {
        Err(CapError::Unavailable(format!(
            "agent `{}` has no backend configured for {capability}: configure the agent's backends",
            self.agent
        )))
    }
}

#[async_trait]
impl MetricsCaps for NoBackend {
    async fn query(&self, _: &str) -> CapResult<Vec<Sample>> {
        self.refuse("metrics.query")
    }
}

#[async_trait]
impl KafkaCaps for NoBackend {
    async fn describe_cluster(&self) -> CapResult<ClusterInfo> {
        self.refuse("kafka.describe-cluster")
    }
    async fn describe_consumer_group(&self, _: &str) -> CapResult<ConsumerGroup> {
        self.refuse("kafka.describe-consumer-group")
    }
    async fn consumer_lag(&self, _: &str, _: &str) -> CapResult<Vec<PartitionLag>> {
        self.refuse("kafka.consumer-lag")
    }
    async fn list_topics(&self) -> CapResult<Vec<TopicInfo>> {
        self.refuse("kafka.list-topics")
    }
    async fn describe_consumers(&self, _: &str) -> CapResult<ConsumerWorkload> {
        self.refuse("kafka.describe-consumers")
    }
    async fn broker_config(&self, _: i32) -> CapResult<Vec<Pair>> {
        self.refuse("kafka.broker-config")
    }
    async fn restart_consumers(&self, _: &str) -> CapResult<ConsumerWorkload> {
        self.refuse("kafka.restart-consumers")
    }
    async fn scale_consumers(&self, _: &str, _: u32) -> CapResult<ConsumerWorkload> {
        self.refuse("kafka.scale-consumers")
    }
    async fn set_broker_config(&self, _: i32, _: &str, _: &str) -> CapResult<()> {
        self.refuse("kafka.set-broker-config")
    }
    async fn broker_restart(&self, _: i32) -> CapResult<()> {
        self.refuse("kafka.broker-restart")
    }
    async fn partition_leadership(&self) -> CapResult<Vec<PartitionLeader>> {
        self.refuse("kafka.partition-leadership")
    }
    async fn elect_preferred_leaders(&self, _: &str) -> CapResult<u32> {
        self.refuse("kafka.elect-preferred-leaders")
    }
}

#[async_trait]
impl KubernetesCaps for NoBackend {
    async fn get_deployment(&self, _: &str, _: &str) -> CapResult<Deployment> {
        self.refuse("k8s.get-deployment")
    }
    async fn get_statefulset(&self, _: &str, _: &str) -> CapResult<StatefulSet> {
        self.refuse("k8s.get-statefulset")
    }
    async fn list_events(&self, _: &str, _: &str) -> CapResult<Vec<Event>> {
        self.refuse("k8s.list-events")
    }
    async fn list_pods(&self, _: &str, _: &str) -> CapResult<Vec<Pod>> {
        self.refuse("k8s.list-pods")
    }
    async fn pod_logs(&self, _: &str, _: &str, _: u32) -> CapResult<Vec<String>> {
        self.refuse("k8s.pod-logs")
    }
    async fn pod_owner(&self, _: &str, _: &str) -> CapResult<Option<Workload>> {
        self.refuse("k8s.pod-owner")
    }
    async fn rollout_restart(&self, _: &str, _: &str) -> CapResult<()> {
        self.refuse("k8s.rollout-restart")
    }
    async fn scale_deployment(&self, _: &str, _: &str, _: u32) -> CapResult<()> {
        self.refuse("k8s.scale-deployment")
    }
    async fn delete_pod(&self, _: &str, _: &str) -> CapResult<()> {
        self.refuse("k8s.delete-pod")
    }
    async fn rollout_history(&self, _: &str, _: &str) -> CapResult<Vec<Revision>> {
        self.refuse("k8s.rollout-history")
    }
    async fn rollout_undo(&self, _: &str, _: &str, _: i64) -> CapResult<()> {
        self.refuse("k8s.rollout-undo")
    }
}

#[async_trait]
impl PostgresCaps for NoBackend {
    async fn activity(&self, _: f64) -> CapResult<Vec<Backend>> {
        self.refuse("postgres.activity")
    }
    async fn blockers(&self) -> CapResult<Vec<LockWait>> {
        self.refuse("postgres.blockers")
    }
    async fn replication_lag(&self) -> CapResult<Vec<Replica>> {
        self.refuse("postgres.replication-lag")
    }
    async fn connection_usage(&self, _: f64) -> CapResult<ConnectionSlots> {
        self.refuse("postgres.connection-usage")
    }
    async fn cancel_backend(&self, _: i32) -> CapResult<bool> {
        self.refuse("postgres.cancel-backend")
    }
    async fn terminate_backend(&self, _: i32) -> CapResult<bool> {
        self.refuse("postgres.terminate-backend")
    }
}
