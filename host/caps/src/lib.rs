//! Capability backends: one trait per domain, the boundary between the sandbox and the systems a
//! runbook acts on, with the plain data types they exchange.
//!
//! Implementations: real ones (rdkafka, kube, sqlx, the Prometheus HTTP API — each in its own
//! crate as it arrives), the test kit's scenario mock, and [`dry_run::DryRun`], which wraps any
//! of them: reads pass through, mutations are recorded as "would do" and not performed. Whether
//! a call was performed or only recorded is decided by that wrapper alone: [`Backends`] has no
//! flag anyone could set over a real backend.
//!
//! Which backends an agent acts through is chosen by configuration, once per agent, through a
//! [`provider::BackendProvider`]; the agent runtime never builds one itself.

pub mod dry_run;
pub mod provider;
pub mod types;

use async_trait::async_trait;
use std::sync::Arc;
use themis_core::types::Pair;
pub use types::*;

/// The most rows a list read returns (topics, partitions, backends): a list this long may be
/// cut, and a decision that needs all of it must not take it as whole.
pub const MAX_LIST_ROWS: usize = 1000;

#[async_trait]
pub trait MetricsCaps: Send + Sync {
    async fn query(&self, promql: &str) -> CapResult<Vec<Sample>>;
}

#[async_trait]
pub trait KafkaCaps: Send + Sync {
    async fn describe_cluster(&self) -> CapResult<ClusterInfo>;
    async fn describe_consumer_group(&self, group: &str) -> CapResult<ConsumerGroup>;
    async fn consumer_lag(&self, group: &str, topic: &str) -> CapResult<Vec<PartitionLag>>;
    async fn list_topics(&self) -> CapResult<Vec<TopicInfo>>;
    async fn describe_consumers(&self, group: &str) -> CapResult<ConsumerWorkload>;
    async fn broker_config(&self, broker_id: i32) -> CapResult<Vec<Pair>>;
    async fn restart_consumers(&self, group: &str) -> CapResult<ConsumerWorkload>;
    async fn scale_consumers(&self, group: &str, replicas: u32) -> CapResult<ConsumerWorkload>;
    async fn set_broker_config(&self, broker_id: i32, key: &str, value: &str) -> CapResult<()>;
    async fn broker_restart(&self, broker_id: i32) -> CapResult<()>;
    async fn partition_leadership(&self) -> CapResult<Vec<PartitionLeader>>;
    async fn elect_preferred_leaders(&self, topic: &str) -> CapResult<u32>;
}

#[async_trait]
pub trait KubernetesCaps: Send + Sync {
    async fn get_deployment(&self, namespace: &str, name: &str) -> CapResult<Deployment>;
    async fn get_statefulset(&self, namespace: &str, name: &str) -> CapResult<StatefulSet>;
    async fn list_events(&self, namespace: &str, object: &str) -> CapResult<Vec<Event>>;
    async fn list_pods(&self, namespace: &str, selector: &str) -> CapResult<Vec<Pod>>;
    async fn pod_logs(&self, namespace: &str, pod: &str, tail_lines: u32)
    -> CapResult<Vec<String>>;
    async fn pod_owner(&self, namespace: &str, pod: &str) -> CapResult<Option<Workload>>;
    async fn rollout_restart(&self, namespace: &str, name: &str) -> CapResult<()>;
    async fn scale_deployment(&self, namespace: &str, name: &str, replicas: u32) -> CapResult<()>;
    async fn delete_pod(&self, namespace: &str, name: &str) -> CapResult<()>;
    async fn rollout_history(&self, namespace: &str, name: &str) -> CapResult<Vec<Revision>>;
    async fn rollout_undo(&self, namespace: &str, name: &str, to_revision: i64) -> CapResult<()>;
}

#[async_trait]
pub trait PostgresCaps: Send + Sync {
    async fn activity(&self, min_query_seconds: f64) -> CapResult<Vec<Backend>>;
    async fn blockers(&self) -> CapResult<Vec<LockWait>>;
    async fn replication_lag(&self) -> CapResult<Vec<Replica>>;
    async fn connection_usage(&self, min_idle_seconds: f64) -> CapResult<ConnectionSlots>;
    async fn cancel_backend(&self, pid: i32) -> CapResult<bool>;
    async fn terminate_backend(&self, pid: i32) -> CapResult<bool>;
}

/// The backends one agent's steps call through: live, or wrapped by the dry-run recorder.
#[derive(Clone)]
pub struct Backends {
    metrics: Arc<dyn MetricsCaps>,
    kafka: Arc<dyn KafkaCaps>,
    kubernetes: Arc<dyn KubernetesCaps>,
    postgres: Arc<dyn PostgresCaps>,
    /// Set only by [`Backends::dry_run`], and then every domain above is that recorder.
    recorder: Option<Arc<dry_run::DryRun>>,
}

impl Backends {
    /// Live backends: every call reaches them.
    pub fn live(
        metrics: Arc<dyn MetricsCaps>,
        kafka: Arc<dyn KafkaCaps>,
        kubernetes: Arc<dyn KubernetesCaps>,
        postgres: Arc<dyn PostgresCaps>,
    ) -> Self {
        Backends {
            metrics,
            kafka,
            kubernetes,
            postgres,
            recorder: None,
        }
    }

    /// Every domain served live by one object (a scenario mock, say).
    pub fn all<B>(backend: Arc<B>) -> Self
    where
        B: MetricsCaps + KafkaCaps + KubernetesCaps + PostgresCaps + 'static,
    {
        Backends::live(backend.clone(), backend.clone(), backend.clone(), backend)
    }

    /// These backends behind the dry-run recorder: reads pass through, mutations are recorded.
    pub fn dry_run(self) -> Self {
        let recorder = Arc::new(dry_run::DryRun::new(self));
        Backends {
            metrics: recorder.clone(),
            kafka: recorder.clone(),
            kubernetes: recorder.clone(),
            postgres: recorder.clone(),
            recorder: Some(recorder),
        }
    }

    /// Mutations go to the recorder, not to a system.
    pub fn is_dry_run(&self) -> bool {
        self.recorder.is_some()
    }

    /// What a dry run recorded instead of doing, in call order (empty when live).
    pub fn would_do(&self) -> Vec<dry_run::WouldDo> {
        self.recorder
            .as_ref()
            .map(|r| r.would_do())
            .unwrap_or_default()
    }

    pub fn metrics(&self) -> &Arc<dyn MetricsCaps> {
        &self.metrics
    }
    pub fn kafka(&self) -> &Arc<dyn KafkaCaps> {
        &self.kafka
    }
    pub fn kubernetes(&self) -> &Arc<dyn KubernetesCaps> {
        &self.kubernetes
    }
    pub fn postgres(&self) -> &Arc<dyn PostgresCaps> {
        &self.postgres
    }
}
