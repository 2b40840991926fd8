//! The guest boundary: WIT records to and from the plain types of `themis-core` and
//! `themis-caps`. Field for field, both ways; a test round-trips every record.

use crate::wit::{k8s, kafka, metrics, postgres, types};
use themis_caps as caps;
use themis_core::types as core;

/// A field-by-field conversion between a WIT type and its plain twin (lists and options of them
/// included).
pub(crate) trait Conv<T> {
    fn conv(self) -> T;
}

macro_rules! scalars {
    ($($t:ty),*) => {$(
        impl Conv<$t> for $t {
            fn conv(self) -> $t {
                self
            }
        }
    )*};
}
scalars!((), String, bool, u16, u32, i32, i64, f64);

impl<A: Conv<B>, B> Conv<Vec<B>> for Vec<A> {
    fn conv(self) -> Vec<B> {
        self.into_iter().map(Conv::conv).collect()
    }
}

impl<A: Conv<B>, B> Conv<Option<B>> for Option<A> {
    fn conv(self) -> Option<B> {
        self.map(Conv::conv)
    }
}

/// Records with the same fields on both sides, converted both ways.
macro_rules! records {
    ($($wit:path => $plain:path { $($field:ident),* $(,)? })*) => {$(
        impl Conv<$plain> for $wit {
            fn conv(self) -> $plain {
                $plain { $($field: Conv::conv(self.$field)),* }
            }
        }
        impl Conv<$wit> for $plain {
            fn conv(self) -> $wit {
                $wit { $($field: Conv::conv(self.$field)),* }
            }
        }
    )*};
}

records! {
    types::Pair => core::Pair { key, value }
    types::Param => core::Param { name, value }
    types::StepOutput => core::StepOutput { step, key, value }
    metrics::Sample => caps::Sample { labels, value }
    kafka::Broker => caps::Broker { id, host, port, rack }
    kafka::ClusterInfo => caps::ClusterInfo { cluster_id, controller_id, brokers }
    kafka::TopicPartition => caps::TopicPartition { topic, partition }
    kafka::GroupMember => caps::GroupMember { member_id, client_id, host, assignments }
    kafka::ConsumerGroup => caps::ConsumerGroup { group_id, state, protocol, members }
    kafka::PartitionLag => caps::PartitionLag { topic, partition, committed_offset, end_offset, lag }
    kafka::TopicInfo => caps::TopicInfo {
        name, partitions, replication_factor, under_replicated_partitions, internal
    }
    kafka::ConsumerWorkload => caps::ConsumerWorkload {
        group_id, replicas_desired, replicas_ready, revision
    }
    k8s::Condition => caps::Condition { kind, status, reason, message }
    k8s::Deployment => caps::Deployment {
        namespace, name, replicas_desired, replicas_ready, replicas_updated, replicas_available,
        generation, observed_generation, conditions
    }
    k8s::StatefulSet => caps::StatefulSet {
        namespace, name, replicas_desired, replicas_ready, replicas_updated, current_revision,
        update_revision, generation, observed_generation
    }
    k8s::Event => caps::Event {
        kind, reason, message, object_kind, object_name, count, age_seconds
    }
    k8s::Pod => caps::Pod { name, phase, ready, restarts, reason, node }
    k8s::Workload => caps::Workload { kind, name }
    kafka::PartitionLeader => caps::PartitionLeader {
        topic, partition, leader, preferred, preferred_in_sync
    }
    k8s::Revision => caps::Revision { revision, replica_set, images, age_seconds, ready }
    postgres::Backend => caps::Backend {
        pid, user, database, application, state, wait_event_type, wait_event, query,
        query_seconds, xact_seconds
    }
    postgres::LockWait => caps::LockWait {
        blocked_pid, blocking_pid, lock_type, relation, blocked_query, blocking_query,
        waiting_seconds
    }
    postgres::Replica => caps::Replica {
        application_name, client_addr, state, lag_bytes, replay_lag_seconds
    }
    postgres::ConnectionSlots => caps::ConnectionSlots { max_connections, reserved, used, idle }
}

// A step sees an alert's name, fingerprint, labels and annotations; what the source said about
// it (times, the rule's URL) stays with the host.
impl Conv<core::Alert> for types::Alert {
    fn conv(self) -> core::Alert {
        core::Alert {
            name: self.name,
            fingerprint: self.fingerprint,
            labels: self.labels.conv(),
            annotations: self.annotations.conv(),
            source: None,
        }
    }
}

impl Conv<types::Alert> for core::Alert {
    fn conv(self) -> types::Alert {
        types::Alert {
            name: self.name,
            fingerprint: self.fingerprint,
            labels: self.labels.conv(),
            annotations: self.annotations.conv(),
        }
    }
}

/// Enums with the same cases on both sides.
macro_rules! enums {
    ($($wit:path => $plain:path { $($case:ident $(($v:ident))?),* $(,)? })*) => {$(
        impl Conv<$plain> for $wit {
            fn conv(self) -> $plain {
                use $wit as W;
                use $plain as P;
                match self { $(W::$case $(($v))? => P::$case $(($v.conv()))?),* }
            }
        }
        impl Conv<$wit> for $plain {
            fn conv(self) -> $wit {
                use $wit as W;
                use $plain as P;
                match self { $(P::$case $(($v))? => W::$case $(($v.conv()))?),* }
            }
        }
    )*};
}

enums! {
    kafka::GroupState => caps::GroupState {
        Unknown, PreparingRebalance, CompletingRebalance, Stable, Dead, Empty
    }
    types::ParamValue => core::ParamValue { Text(v), Integer(v), Number(v), Boolean(v) }
    types::CapError => caps::CapError {
        Denied(v), NotFound(v), InvalidArgument(v), Unavailable(v), Failed(v)
    }
}

/// A plain result (a backend's answer) as the guest receives it.
pub(crate) fn to_guest<T: Conv<U>, U>(
    result: Result<T, caps::CapError>,
) -> Result<U, types::CapError> {
    result.map(Conv::conv).map_err(Conv::conv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use serde_json::json;

    /// From JSON into the plain type, through the WIT type and back: nothing may be lost.
    fn round_trip<P, W>(value: serde_json::Value)
    where
        P: DeserializeOwned + Serialize + Clone + PartialEq + std::fmt::Debug + Conv<W>,
        W: Conv<P>,
    {
        let plain: P = serde_json::from_value(value.clone()).expect("plain parses");
        let back: P = plain.clone().conv().conv();
        assert_eq!(back, plain);
        assert_eq!(serde_json::to_value(&back).expect("serialises"), value);
    }

    #[test]
    fn every_record_survives_the_boundary_both_ways() {
        round_trip::<caps::ClusterInfo, kafka::ClusterInfo>(json!({
            "cluster_id": "c", "controller_id": 1,
            "brokers": [{ "id": 1, "host": "b1", "port": 9092, "rack": "r1" },
                        { "id": 2, "host": "b2", "port": 9092, "rack": null }]
        }));
        round_trip::<caps::ConsumerGroup, kafka::ConsumerGroup>(json!({
            "group_id": "g", "state": "PreparingRebalance", "protocol": "range",
            "members": [{ "member_id": "m", "client_id": "c", "host": "h",
                          "assignments": [{ "topic": "t", "partition": 3 }] }]
        }));
        round_trip::<caps::PartitionLag, kafka::PartitionLag>(json!({
            "topic": "t", "partition": 0, "committed_offset": 5, "end_offset": 9, "lag": 4
        }));
        round_trip::<caps::TopicInfo, kafka::TopicInfo>(json!({
            "name": "t", "partitions": 6, "replication_factor": 3,
            "under_replicated_partitions": 0, "internal": false
        }));
        round_trip::<caps::ConsumerWorkload, kafka::ConsumerWorkload>(json!({
            "group_id": "g", "replicas_desired": 3, "replicas_ready": 2, "revision": "7"
        }));
        round_trip::<caps::Deployment, k8s::Deployment>(json!({
            "namespace": "n", "name": "d", "replicas_desired": 3, "replicas_ready": 1,
            "replicas_updated": 3, "replicas_available": 1, "generation": 4,
            "observed_generation": 4,
            "conditions": [{ "kind": "Available", "status": "False", "reason": "r", "message": "m" }]
        }));
        round_trip::<caps::StatefulSet, k8s::StatefulSet>(json!({
            "namespace": "kafka", "name": "my-cluster-kafka", "replicas_desired": 3,
            "replicas_ready": 2, "replicas_updated": 1, "current_revision": "a",
            "update_revision": "b", "generation": 5, "observed_generation": 5
        }));
        round_trip::<caps::Event, k8s::Event>(json!({
            "kind": "Warning", "reason": "BackOff", "message": "Back-off restarting",
            "object_kind": "Pod", "object_name": "web-1", "count": 12, "age_seconds": 30.5
        }));
        round_trip::<caps::Pod, k8s::Pod>(json!({
            "name": "p", "phase": "Running", "ready": false, "restarts": 7,
            "reason": "CrashLoopBackOff", "node": null
        }));
        round_trip::<caps::Backend, postgres::Backend>(json!({
            "pid": 42, "user": "u", "database": "d", "application": "a", "state": "active",
            "wait_event_type": "Lock", "wait_event": null, "query": "select 1",
            "query_seconds": 1.5, "xact_seconds": 2.5
        }));
        round_trip::<caps::LockWait, postgres::LockWait>(json!({
            "blocked_pid": 1, "blocking_pid": 2, "lock_type": "relation", "relation": "t",
            "blocked_query": "q1", "blocking_query": "q2", "waiting_seconds": 3.0
        }));
        round_trip::<caps::Replica, postgres::Replica>(json!({
            "application_name": "r", "client_addr": "10.0.0.1", "state": "streaming",
            "lag_bytes": 10, "replay_lag_seconds": 0.5
        }));
        round_trip::<caps::Sample, metrics::Sample>(json!({
            "labels": [{ "key": "broker", "value": "1" }], "value": 2.5
        }));
        round_trip::<core::Alert, types::Alert>(json!({
            "name": "A", "fingerprint": "f",
            "labels": [{ "key": "k", "value": "v" }], "annotations": []
        }));
        round_trip::<caps::CapError, types::CapError>(json!({ "NotFound": "x" }));
        round_trip::<core::Param, types::Param>(json!({
            "name": "n", "value": { "Integer": 4294967297i64 }
        }));
    }
}
