//! librdkafka's answers as the capability types.

use crate::Client;
use crate::assignment;
use rdkafka::groups::GroupInfo;
use rdkafka::metadata::Metadata;
use std::time::Duration;
use themis_caps::types::{
    Broker, ConsumerGroup, GroupMember, GroupState, PartitionLeader, TopicInfo,
};

/// The controller broker's id, or -1 when the cluster names none within the timeout.
pub fn controller(c: &Client, timeout: Duration) -> i32 {
    use rdkafka::consumer::Consumer;
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the pointer is the live client's own handle, borrowed for this one call;
    // rd_kafka_controllerid only reads the client's cached metadata (refreshing it within the
    // timeout). rust-rdkafka has no safe wrapper for it.
    unsafe { rdkafka::bindings::rd_kafka_controllerid(c.client().native_client().ptr(), ms) }
}

pub fn brokers(m: &Metadata) -> Vec<Broker> {
    let mut out: Vec<Broker> = m
        .brokers()
        .iter()
        .map(|b| Broker {
            id: b.id(),
            host: b.host().to_owned(),
            port: u16::try_from(b.port()).unwrap_or(0),
            rack: None,
        })
        .collect();
    out.sort_by_key(|b| b.id);
    out
}

/// Internal topics are Kafka's own (`__consumer_offsets`, `__transaction_state`).
fn internal(name: &str) -> bool {
    name.starts_with("__")
}

pub fn topics(m: &Metadata, max: usize) -> Vec<TopicInfo> {
    let mut out: Vec<TopicInfo> = m
        .topics()
        .iter()
        .take(max)
        .map(|t| {
            let parts = t.partitions();
            TopicInfo {
                name: t.name().to_owned(),
                partitions: i32::try_from(parts.len()).unwrap_or(i32::MAX),
                replication_factor: parts
                    .iter()
                    .map(|p| i32::try_from(p.replicas().len()).unwrap_or(i32::MAX))
                    .max()
                    .unwrap_or(0),
                under_replicated_partitions: i32::try_from(
                    parts
                        .iter()
                        .filter(|p| p.isr().len() < p.replicas().len())
                        .count(),
                )
                .unwrap_or(i32::MAX),
                internal: internal(t.name()),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Partitions led by another broker than their preferred replica (the first of the replicas).
pub fn off_preferred(m: &Metadata, max: usize) -> Vec<PartitionLeader> {
    let mut out = Vec::new();
    for t in m.topics() {
        for p in t.partitions() {
            let Some(&preferred) = p.replicas().first() else {
                continue;
            };
            if p.leader() != preferred {
                out.push(PartitionLeader {
                    topic: t.name().to_owned(),
                    partition: p.id(),
                    leader: p.leader(),
                    preferred,
                    preferred_in_sync: p.isr().contains(&preferred),
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    out.truncate(max);
    out
}

pub fn state(s: &str) -> GroupState {
    match s {
        "PreparingRebalance" => GroupState::PreparingRebalance,
        "CompletingRebalance" | "AwaitingSync" => GroupState::CompletingRebalance,
        "Stable" => GroupState::Stable,
        "Dead" => GroupState::Dead,
        "Empty" => GroupState::Empty,
        _ => GroupState::Unknown,
    }
}

pub fn group(g: &GroupInfo) -> ConsumerGroup {
    ConsumerGroup {
        group_id: g.name().to_owned(),
        state: state(g.state()),
        protocol: g.protocol().to_owned(),
        members: g
            .members()
            .iter()
            .map(|m| GroupMember {
                member_id: m.id().to_owned(),
                client_id: m.client_id().to_owned(),
                host: m.client_host().to_owned(),
                // Only the consumer protocol's assignments are decoded; anything else is none.
                assignments: m
                    .assignment()
                    .filter(|_| g.protocol_type() == "consumer")
                    .map(assignment::decode)
                    .unwrap_or_default(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_states_are_kafkas_names() {
        assert_eq!(state("Stable"), GroupState::Stable);
        assert_eq!(
            state("CompletingRebalance"),
            GroupState::CompletingRebalance
        );
        assert_eq!(state("AwaitingSync"), GroupState::CompletingRebalance);
        assert_eq!(state("PreparingRebalance"), GroupState::PreparingRebalance);
        assert_eq!(state("whatever"), GroupState::Unknown);
    }
}
