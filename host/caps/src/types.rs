//! Plain data of the capability interfaces, field for field the records of `wit/*.wit` (a test in
//! the sandbox crate converts every one both ways). Backends build these; the sandbox converts
//! them to the guest's types. Field names are snake_case, enum cases CamelCase, as scenario files
//! and the audit write them.

use serde::{Deserialize, Serialize};
use themis_core::types::Pair;

/// Why a capability call failed, as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CapError {
    #[error("denied: {0}")]
    Denied(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("failed: {0}")]
    Failed(String),
}

pub type CapResult<T> = Result<T, CapError>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub labels: Vec<Pair>,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Broker {
    pub id: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub cluster_id: String,
    pub controller_id: i32,
    pub brokers: Vec<Broker>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupState {
    Unknown,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
    Empty,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupMember {
    pub member_id: String,
    pub client_id: String,
    pub host: String,
    pub assignments: Vec<TopicPartition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerGroup {
    pub group_id: String,
    pub state: GroupState,
    pub protocol: String,
    pub members: Vec<GroupMember>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub committed_offset: i64,
    pub end_offset: i64,
    pub lag: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub under_replicated_partitions: i32,
    pub internal: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerWorkload {
    pub group_id: String,
    pub replicas_desired: u32,
    pub replicas_ready: u32,
    pub revision: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionLeader {
    pub topic: String,
    pub partition: i32,
    pub leader: i32,
    pub preferred: i32,
    pub preferred_in_sync: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub revision: i64,
    pub replica_set: String,
    pub images: Vec<String>,
    pub age_seconds: f64,
    pub ready: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub namespace: String,
    pub name: String,
    pub replicas_desired: u32,
    pub replicas_ready: u32,
    pub replicas_updated: u32,
    pub replicas_available: u32,
    pub generation: i64,
    pub observed_generation: i64,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatefulSet {
    pub namespace: String,
    pub name: String,
    pub replicas_desired: u32,
    pub replicas_ready: u32,
    pub replicas_updated: u32,
    pub current_revision: String,
    pub update_revision: String,
    pub generation: i64,
    pub observed_generation: i64,
}

/// An event the cluster recorded about an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `Normal` or `Warning`.
    pub kind: String,
    pub reason: String,
    pub message: String,
    pub object_kind: String,
    pub object_name: String,
    pub count: u32,
    pub age_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pod {
    pub name: String,
    pub phase: String,
    pub ready: bool,
    pub restarts: u32,
    pub reason: Option<String>,
    pub node: Option<String>,
}

/// What controls a pod (`Deployment`, `StatefulSet`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backend {
    pub pid: i32,
    pub user: String,
    pub database: String,
    pub application: String,
    pub state: String,
    pub wait_event_type: Option<String>,
    pub wait_event: Option<String>,
    pub query: String,
    pub query_seconds: f64,
    pub xact_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockWait {
    pub blocked_pid: i32,
    pub blocking_pid: i32,
    pub lock_type: String,
    pub relation: Option<String>,
    pub blocked_query: String,
    pub blocking_query: String,
    pub waiting_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionSlots {
    pub max_connections: i32,
    pub reserved: i32,
    pub used: i32,
    pub idle: Vec<Backend>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replica {
    pub application_name: String,
    pub client_addr: String,
    pub state: String,
    pub lag_bytes: i64,
    pub replay_lag_seconds: f64,
}
