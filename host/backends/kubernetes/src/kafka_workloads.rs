//! The Kafka agent's actions on the workloads around a cluster that runs on Kubernetes (the
//! Strimzi-style common case): a consumer group is bound to the Deployment its consumers run in,
//! the brokers to their pods. Reads go to the Kafka backend unchanged; each action goes through
//! the Kubernetes API, checked against the cluster first:
//!
//! - `describe-consumers` / `restart-consumers` / `scale-consumers`: the group's bound Deployment
//!   (its rollout as the workload's revision and readiness); a scale never past the partition
//!   count of the group's topics (as bound, else as its members are assigned; unknown →
//!   refused);
//! - `broker-restart`: deletes the broker's pod (its StatefulSet makes it again) only while
//!   every partition of the cluster is fully replicated;
//! - `broker-config` / `set-broker-config`: the settings of the cluster's Strimzi `Kafka`
//!   resource, when the brokers' binding names it (`strimzi.rs` says which keys and where), for
//!   a broker the cluster's metadata lists.
//!
//! Where nothing is bound the capability says so and the agent escalates: it never guesses a
//! workload.

use crate::{KubernetesBackend, strimzi};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;
use themis_caps::types::{
    CapError, CapResult, ClusterInfo, ConsumerGroup, ConsumerWorkload, PartitionLag,
    PartitionLeader, TopicInfo,
};
use themis_caps::{KafkaCaps, KubernetesCaps};
use themis_core::types::Pair;

/// Where a group's consumers run, and the topics it consumes (what bounds its consumers; when
/// none are named, the topics its members are assigned now — unknown while it rebalances).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupWorkload {
    pub namespace: String,
    pub deployment: String,
    pub topics: Vec<String>,
}

/// Where the brokers run: `pod` names broker `{id}`'s pod (Strimzi: `my-cluster-kafka-{id}`);
/// `strimzi_kafka`, the Strimzi `Kafka` resource of the cluster in the same namespace, where
/// their configuration lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerPods {
    pub namespace: String,
    pub pod: String,
    pub strimzi_kafka: Option<String>,
}

/// `backends.<agent>.kafka.workloads` in themis.yaml.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaWorkloads {
    pub groups: BTreeMap<String, GroupWorkload>,
    pub brokers: Option<BrokerPods>,
}

pub struct KafkaOnKubernetes {
    kafka: Arc<dyn KafkaCaps>,
    k8s: Arc<KubernetesBackend>,
    workloads: KafkaWorkloads,
}

impl KafkaOnKubernetes {
    pub fn new(
        kafka: Arc<dyn KafkaCaps>,
        k8s: Arc<KubernetesBackend>,
        workloads: KafkaWorkloads,
    ) -> KafkaOnKubernetes {
        KafkaOnKubernetes {
            kafka,
            k8s,
            workloads,
        }
    }

    fn group(&self, group: &str) -> CapResult<&GroupWorkload> {
        self.workloads.groups.get(group).ok_or_else(|| {
            CapError::Unavailable(format!(
                "no workload is bound to consumer group {group}: add it under backends.<agent>.kafka.workloads.groups in themis.yaml (Themis never guesses a workload)"
            ))
        })
    }

    /// The most partitions among the group's topics: as bound, else as its members are assigned.
    async fn partition_cap(&self, group: &str) -> CapResult<u32> {
        let bound = &self.group(group)?.topics;
        let topics: std::collections::BTreeSet<String> = if bound.is_empty() {
            self.kafka
                .describe_consumer_group(group)
                .await?
                .members
                .iter()
                .flat_map(|m| m.assignments.iter().map(|a| a.topic.clone()))
                .collect()
        } else {
            bound.iter().cloned().collect()
        };
        if topics.is_empty() {
            return Err(CapError::Failed(format!(
                "group {group} has no member with an assignment, so the partition count that bounds its consumers is unknown: not scaling (name its topics in the binding)"
            )));
        }
        let all = self.kafka.list_topics().await?;
        let cap = all
            .iter()
            .filter(|t| topics.contains(&t.name))
            .map(|t| u32::try_from(t.partitions).unwrap_or(0))
            .max()
            .unwrap_or(0);
        if cap == 0 {
            return Err(CapError::Failed(format!(
                "the topics {group} consumes ({topics:?}) are not in the cluster's metadata: not scaling"
            )));
        }
        Ok(cap)
    }
}

#[async_trait]
impl KafkaCaps for KafkaOnKubernetes {
    async fn describe_cluster(&self) -> CapResult<ClusterInfo> {
        self.kafka.describe_cluster().await
    }
    async fn describe_consumer_group(&self, group: &str) -> CapResult<ConsumerGroup> {
        self.kafka.describe_consumer_group(group).await
    }
    async fn consumer_lag(&self, group: &str, topic: &str) -> CapResult<Vec<PartitionLag>> {
        self.kafka.consumer_lag(group, topic).await
    }
    async fn list_topics(&self) -> CapResult<Vec<TopicInfo>> {
        self.kafka.list_topics().await
    }
    async fn partition_leadership(&self) -> CapResult<Vec<PartitionLeader>> {
        self.kafka.partition_leadership().await
    }
    async fn broker_config(&self, broker_id: i32) -> CapResult<Vec<Pair>> {
        let Some((namespace, name)) = self.strimzi_kafka(broker_id).await? else {
            return self.kafka.broker_config(broker_id).await;
        };
        let kafka = self.k8s.kafka_resource(namespace, name).await?;
        Ok(strimzi::settings(&kafka))
    }
    async fn set_broker_config(&self, broker_id: i32, key: &str, value: &str) -> CapResult<()> {
        let Some((namespace, name)) = self.strimzi_kafka(broker_id).await? else {
            return self.kafka.set_broker_config(broker_id, key, value).await;
        };
        self.k8s
            .set_kafka_setting(namespace, name, key, value)
            .await
            .map(drop)
    }
    async fn elect_preferred_leaders(&self, topic: &str) -> CapResult<u32> {
        self.kafka.elect_preferred_leaders(topic).await
    }

    async fn describe_consumers(&self, group: &str) -> CapResult<ConsumerWorkload> {
        let w = self.group(group)?;
        let d = self.k8s.get_deployment(&w.namespace, &w.deployment).await?;
        // Ready means ready on the current rollout: a restart is done when the controller has
        // observed it and every replica is updated and available.
        let rolled = d.observed_generation >= d.generation;
        let ready = if rolled {
            d.replicas_ready
                .min(d.replicas_updated)
                .min(d.replicas_available)
        } else {
            0
        };
        Ok(ConsumerWorkload {
            group_id: group.to_owned(),
            replicas_desired: d.replicas_desired,
            replicas_ready: ready,
            revision: d.generation.to_string(),
        })
    }

    async fn restart_consumers(&self, group: &str) -> CapResult<ConsumerWorkload> {
        let w = self.group(group)?;
        self.k8s
            .rollout_restart(&w.namespace, &w.deployment)
            .await?;
        self.describe_consumers(group).await
    }

    async fn scale_consumers(&self, group: &str, replicas: u32) -> CapResult<ConsumerWorkload> {
        let w = self.group(group)?;
        let cap = self.partition_cap(group).await?;
        if replicas > cap {
            return Err(CapError::InvalidArgument(format!(
                "{replicas} consumers for {group}: its topics have at most {cap} partitions, so more than {cap} would sit idle"
            )));
        }
        self.k8s
            .scale_deployment(&w.namespace, &w.deployment, replicas)
            .await?;
        self.describe_consumers(group).await
    }

    async fn broker_restart(&self, broker_id: i32) -> CapResult<()> {
        let Some(b) = &self.workloads.brokers else {
            return Err(CapError::Unavailable(
                "no broker pods are bound: add backends.<agent>.kafka.workloads.brokers (namespace and pod name with {id}) to themis.yaml".into(),
            ));
        };
        if broker_id < 0 {
            return Err(CapError::InvalidArgument(format!(
                "{broker_id} is not a broker id"
            )));
        }
        let topics = self.kafka.list_topics().await?;
        // A list this long may have been cut: the topics past it could be under-replicated.
        if topics.len() >= themis_caps::MAX_LIST_ROWS {
            return Err(CapError::Failed(format!(
                "the cluster has at least {} topics, more than one read returns: whether every partition is fully replicated cannot be told, so broker {broker_id} is not restarted",
                topics.len()
            )));
        }
        let under: i32 = topics.iter().map(|t| t.under_replicated_partitions).sum();
        if under > 0 {
            return Err(CapError::Failed(format!(
                "{under} partition(s) are under-replicated: restarting broker {broker_id} now could take some offline; wait until every partition is fully replicated"
            )));
        }
        let pod = b.pod.replace("{id}", &broker_id.to_string());
        self.k8s.delete_pod(&b.namespace, &pod).await
    }
}

impl KafkaOnKubernetes {
    /// The bound Strimzi `Kafka` resource, once `broker_id` is known to be one of the cluster's
    /// brokers (the resource configures all of them; an id it does not have is a wrong plan,
    /// not a change to make). `None`: no resource is bound.
    async fn strimzi_kafka(&self, broker_id: i32) -> CapResult<Option<(&str, &str)>> {
        let Some(b) = &self.workloads.brokers else {
            return Ok(None);
        };
        let Some(name) = &b.strimzi_kafka else {
            return Ok(None);
        };
        let cluster = self.kafka.describe_cluster().await?;
        if !cluster.brokers.iter().any(|broker| broker.id == broker_id) {
            return Err(CapError::NotFound(format!(
                "broker {broker_id} is not in the cluster's metadata (brokers: {:?})",
                cluster.brokers.iter().map(|b| b.id).collect::<Vec<_>>()
            )));
        }
        Ok(Some((b.namespace.as_str(), name.as_str())))
    }
}
