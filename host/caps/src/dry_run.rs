//! The dry-run recorder: wraps real (or mocked) backends; reads pass through, mutations are
//! recorded as "would do" and answered with a simulated success built from a read of the
//! current state, so later steps see a plausible world and nothing changes.

use super::{Backends, CapResult, KafkaCaps, KubernetesCaps, MetricsCaps, PostgresCaps};
use crate::types::{
    Backend, ClusterInfo, ConnectionSlots, ConsumerGroup, ConsumerWorkload, Deployment, Event,
    LockWait, PartitionLag, PartitionLeader, Pod, Replica, Revision, Sample, StatefulSet,
    TopicInfo, Workload,
};
use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Mutex;
use themis_core::types::Pair;

/// How many "would do" entries the recorder keeps.
pub const MAX_KEPT: usize = 1024;

/// A mutation a dry run did not perform.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WouldDo {
    pub capability: String,
    pub args: Value,
}

/// The recorder; reach it through [`Backends::dry_run`].
pub struct DryRun {
    inner: Backends,
    would_do: Mutex<Vec<WouldDo>>,
}

impl DryRun {
    pub(crate) fn new(inner: Backends) -> Self {
        DryRun {
            inner,
            would_do: Mutex::new(Vec::new()),
        }
    }

    /// The mutations recorded so far, in call order.
    pub fn would_do(&self) -> Vec<WouldDo> {
        self.would_do
            .lock()
            .map(|w| w.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn record(&self, capability: &str, args: Value) {
        let entry = WouldDo {
            capability: capability.into(),
            args,
        };
        let mut w = self
            .would_do
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // A long-running dry-run host keeps the most recent ones only: the audit has them all.
        if w.len() >= MAX_KEPT {
            w.remove(0);
        }
        w.push(entry);
    }
}

#[async_trait]
impl MetricsCaps for DryRun {
    async fn query(&self, promql: &str) -> CapResult<Vec<Sample>> {
        self.inner.metrics().query(promql).await
    }
}

#[async_trait]
impl KafkaCaps for DryRun {
    async fn describe_cluster(&self) -> CapResult<ClusterInfo> {
        self.inner.kafka().describe_cluster().await
    }
    async fn describe_consumer_group(&self, group: &str) -> CapResult<ConsumerGroup> {
        self.inner.kafka().describe_consumer_group(group).await
    }
    async fn consumer_lag(&self, group: &str, topic: &str) -> CapResult<Vec<PartitionLag>> {
        self.inner.kafka().consumer_lag(group, topic).await
    }
    async fn list_topics(&self) -> CapResult<Vec<TopicInfo>> {
        self.inner.kafka().list_topics().await
    }
    async fn describe_consumers(&self, group: &str) -> CapResult<ConsumerWorkload> {
        self.inner.kafka().describe_consumers(group).await
    }
    async fn broker_config(&self, broker_id: i32) -> CapResult<Vec<Pair>> {
        self.inner.kafka().broker_config(broker_id).await
    }
    async fn restart_consumers(&self, group: &str) -> CapResult<ConsumerWorkload> {
        self.record("kafka.restart-consumers", json!({ "group": group }));
        self.inner.kafka().describe_consumers(group).await
    }
    async fn scale_consumers(&self, group: &str, replicas: u32) -> CapResult<ConsumerWorkload> {
        self.record(
            "kafka.scale-consumers",
            json!({ "group": group, "replicas": replicas }),
        );
        let mut workload = self.inner.kafka().describe_consumers(group).await?;
        workload.replicas_desired = replicas;
        Ok(workload)
    }
    async fn set_broker_config(&self, broker_id: i32, key: &str, value: &str) -> CapResult<()> {
        self.record(
            "kafka.set-broker-config",
            json!({ "broker_id": broker_id, "key": key, "value": value }),
        );
        Ok(())
    }
    async fn broker_restart(&self, broker_id: i32) -> CapResult<()> {
        self.record("kafka.broker-restart", json!({ "broker_id": broker_id }));
        Ok(())
    }
    async fn partition_leadership(&self) -> CapResult<Vec<PartitionLeader>> {
        self.inner.kafka().partition_leadership().await
    }
    async fn elect_preferred_leaders(&self, topic: &str) -> CapResult<u32> {
        self.record("kafka.elect-preferred-leaders", json!({ "topic": topic }));
        // What would move: the partitions of the topic whose preferred replica is in sync.
        let would_move = self
            .inner
            .kafka()
            .partition_leadership()
            .await?
            .iter()
            .filter(|p| p.topic == topic && p.preferred_in_sync)
            .count();
        Ok(u32::try_from(would_move).unwrap_or(u32::MAX))
    }
}

#[async_trait]
impl KubernetesCaps for DryRun {
    async fn get_deployment(&self, namespace: &str, name: &str) -> CapResult<Deployment> {
        self.inner
            .kubernetes()
            .get_deployment(namespace, name)
            .await
    }
    async fn get_statefulset(&self, namespace: &str, name: &str) -> CapResult<StatefulSet> {
        self.inner
            .kubernetes()
            .get_statefulset(namespace, name)
            .await
    }
    async fn list_events(&self, namespace: &str, object: &str) -> CapResult<Vec<Event>> {
        self.inner.kubernetes().list_events(namespace, object).await
    }
    async fn list_pods(&self, namespace: &str, selector: &str) -> CapResult<Vec<Pod>> {
        self.inner.kubernetes().list_pods(namespace, selector).await
    }
    async fn pod_logs(&self, namespace: &str, pod: &str, tail: u32) -> CapResult<Vec<String>> {
        self.inner.kubernetes().pod_logs(namespace, pod, tail).await
    }
    async fn pod_owner(&self, namespace: &str, pod: &str) -> CapResult<Option<Workload>> {
        self.inner.kubernetes().pod_owner(namespace, pod).await
    }
    async fn rollout_restart(&self, namespace: &str, name: &str) -> CapResult<()> {
        self.record(
            "k8s.rollout-restart",
            json!({ "namespace": namespace, "name": name }),
        );
        Ok(())
    }
    async fn scale_deployment(&self, namespace: &str, name: &str, replicas: u32) -> CapResult<()> {
        self.record(
            "k8s.scale-deployment",
            json!({ "namespace": namespace, "name": name, "replicas": replicas }),
        );
        Ok(())
    }
    async fn delete_pod(&self, namespace: &str, name: &str) -> CapResult<()> {
        self.record(
            "k8s.delete-pod",
            json!({ "namespace": namespace, "name": name }),
        );
        Ok(())
    }
    async fn rollout_history(&self, namespace: &str, name: &str) -> CapResult<Vec<Revision>> {
        self.inner
            .kubernetes()
            .rollout_history(namespace, name)
            .await
    }
    async fn rollout_undo(&self, namespace: &str, name: &str, to_revision: i64) -> CapResult<()> {
        self.record(
            "k8s.rollout-undo",
            json!({ "namespace": namespace, "name": name, "to_revision": to_revision }),
        );
        Ok(())
    }
}

#[async_trait]
impl PostgresCaps for DryRun {
    async fn activity(&self, min_query_seconds: f64) -> CapResult<Vec<Backend>> {
        self.inner.postgres().activity(min_query_seconds).await
    }
    async fn blockers(&self) -> CapResult<Vec<LockWait>> {
        self.inner.postgres().blockers().await
    }
    async fn replication_lag(&self) -> CapResult<Vec<Replica>> {
        self.inner.postgres().replication_lag().await
    }
    async fn connection_usage(&self, min_idle_seconds: f64) -> CapResult<ConnectionSlots> {
        self.inner
            .postgres()
            .connection_usage(min_idle_seconds)
            .await
    }
    async fn cancel_backend(&self, pid: i32) -> CapResult<bool> {
        self.record("postgres.cancel-backend", json!({ "pid": pid }));
        Ok(true)
    }
    async fn terminate_backend(&self, pid: i32) -> CapResult<bool> {
        self.record("postgres.terminate-backend", json!({ "pid": pid }));
        Ok(true)
    }
}
