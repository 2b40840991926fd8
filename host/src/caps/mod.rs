//! Capability backends: one trait per domain, the boundary between the sandbox and the systems a
//! runbook acts on.
//!
//! Implementations: [`scenario::ScenarioMock`] (canned responses from a scenario file, every
//! call recorded) and [`dry_run::DryRun`] (wraps any backend; reads pass through, mutations are
//! recorded as "would do" and answered with a simulated success). Real backends (rdkafka, kube,
//! sqlx, the Prometheus HTTP API) implement the same traits.

pub mod dry_run;
pub mod scenario;

use crate::wit::k8s::{Deployment, Pod};
use crate::wit::kafka::{ClusterInfo, ConsumerGroup, ConsumerWorkload, PartitionLag, TopicInfo};
use crate::wit::metrics::Sample;
use crate::wit::postgres::{Backend, LockWait, Replica};
use crate::wit::types::{CapError, Pair};
use async_trait::async_trait;
use std::sync::Arc;

pub type CapResult<T> = Result<T, CapError>;

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
}

#[async_trait]
pub trait KubernetesCaps: Send + Sync {
    async fn get_deployment(&self, namespace: &str, name: &str) -> CapResult<Deployment>;
    async fn list_pods(&self, namespace: &str, selector: &str) -> CapResult<Vec<Pod>>;
    async fn pod_logs(&self, namespace: &str, pod: &str, tail_lines: u32)
    -> CapResult<Vec<String>>;
    async fn rollout_restart(&self, namespace: &str, name: &str) -> CapResult<()>;
    async fn scale_deployment(&self, namespace: &str, name: &str, replicas: u32) -> CapResult<()>;
    async fn delete_pod(&self, namespace: &str, name: &str) -> CapResult<()>;
}

#[async_trait]
pub trait PostgresCaps: Send + Sync {
    async fn activity(&self, min_query_seconds: f64) -> CapResult<Vec<Backend>>;
    async fn blockers(&self) -> CapResult<Vec<LockWait>>;
    async fn replication_lag(&self) -> CapResult<Vec<Replica>>;
    async fn cancel_backend(&self, pid: i32) -> CapResult<bool>;
    async fn terminate_backend(&self, pid: i32) -> CapResult<bool>;
}

/// The backends one execution's steps call through. `dry_run` tells the audit that mutations
/// are recorded, not performed.
#[derive(Clone)]
pub struct Backends {
    pub metrics: Arc<dyn MetricsCaps>,
    pub kafka: Arc<dyn KafkaCaps>,
    pub kubernetes: Arc<dyn KubernetesCaps>,
    pub postgres: Arc<dyn PostgresCaps>,
    pub dry_run: bool,
}

impl Backends {
    /// Every domain served by one object (a scenario mock, or a dry-run recorder over one).
    pub fn all<B>(backend: Arc<B>, dry_run: bool) -> Self
    where
        B: MetricsCaps + KafkaCaps + KubernetesCaps + PostgresCaps + 'static,
    {
        Backends {
            metrics: backend.clone(),
            kafka: backend.clone(),
            kubernetes: backend.clone(),
            postgres: backend,
            dry_run,
        }
    }

    /// Wrap these backends so mutations are recorded and not performed.
    pub fn into_dry_run(self) -> (Self, Arc<dry_run::DryRun>) {
        let recorder = Arc::new(dry_run::DryRun::new(self));
        (Backends::all(recorder.clone(), true), recorder)
    }
}
