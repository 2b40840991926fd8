//! Preferred-leader election on the topics whose leadership is off its preferred replicas;
//! verify it moved back.

use std::collections::BTreeSet;
use themis_runbook_sdk::caps::kafka_types::PartitionLeader;
use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct Elect;

/// The most topics one run elects on (the manifest's cap).
const MAX_TOPICS: usize = 50;

/// Partitions an election can move: preferred replica in sync, on the asked topic (or any).
fn movable<'a>(all: &'a [PartitionLeader], topic: &str) -> Vec<&'a PartitionLeader> {
    all.iter()
        .filter(|p| p.preferred_in_sync && p.leader != p.preferred)
        .filter(|p| topic.is_empty() || p.topic == topic)
        .collect()
}

impl Step<dyn Kafka> for Elect {
    fn precondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        let topic = ctx.param_str("topic").unwrap_or("");
        let all = match kafka.partition_leadership() {
            Ok(a) => a,
            Err(e) => return Check::fail(format!("cannot read partition leadership: {e:?}")),
        };
        let moving = movable(&all, topic);
        let stuck = all
            .iter()
            .filter(|p| !p.preferred_in_sync && (topic.is_empty() || p.topic == topic))
            .count();
        if moving.is_empty() {
            return Check::fail(if stuck > 0 {
                format!(
                    "{stuck} partition(s) lead elsewhere because their preferred replica is out of sync: a replication problem for a human"
                )
            } else {
                "every partition is led by its preferred replica".to_string()
            });
        }
        let topics: BTreeSet<&str> = moving.iter().map(|p| p.topic.as_str()).collect();
        if topics.len() > MAX_TOPICS {
            return Check::fail(format!(
                "{} topics are unbalanced, more than one run elects on ({MAX_TOPICS}): a human decides",
                topics.len()
            ));
        }
        Check::pass(format!(
            "{} partition(s) of {} topic(s) can return to their preferred leader",
            moving.len(),
            topics.len()
        ))
        .output("topics", topics.into_iter().collect::<Vec<_>>().join(","))
        .evidence("out_of_sync_preferred", stuck)
    }

    fn action(&self, ctx: &Context, kafka: &dyn Kafka) -> Outcome {
        let topics = ctx.output(ctx.step_id(), "topics").unwrap_or("");
        let mut moved = 0u32;
        for topic in topics.split(',').filter(|t| !t.is_empty()) {
            match kafka.elect_preferred_leaders(topic) {
                Ok(n) => moved = moved.saturating_add(n),
                Err(e) => {
                    return Outcome::failed(format!(
                        "election on {topic} failed after {moved} partition(s) moved: {e:?}"
                    ));
                }
            }
        }
        Outcome::ok(format!(
            "{moved} partition(s) moved to their preferred leader"
        ))
        .evidence("moved", moved)
    }

    fn postcondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        if ctx.dry_run() {
            return Check::pass("dry run: no election was held");
        }
        let topics = ctx.output(ctx.step_id(), "topics").unwrap_or("");
        match kafka.partition_leadership() {
            Ok(all) => {
                let left = movable(&all, "")
                    .into_iter()
                    .filter(|p| topics.split(',').any(|t| t == p.topic))
                    .count();
                Check::from_bool(
                    left == 0,
                    if left == 0 {
                        "every elected partition is led by its preferred replica".to_string()
                    } else {
                        format!("{left} partition(s) still lead elsewhere")
                    },
                )
            }
            Err(e) => Check::fail(format!("cannot read partition leadership: {e:?}")),
        }
    }

    fn rollback(&self, _ctx: &Context, _kafka: &dyn Kafka) -> Check {
        Check::pass("an election only moves leadership between in-sync replicas: nothing to undo")
    }
}

themis_runbook_sdk::export_kafka_step!(Elect);

#[cfg(test)]
mod tests {
    use super::*;
    use themis_runbook_sdk::mock::MockCaps;

    fn p(topic: &str, leader: i32, preferred: i32, in_sync: bool) -> PartitionLeader {
        PartitionLeader {
            topic: topic.into(),
            partition: 0,
            leader,
            preferred,
            preferred_in_sync: in_sync,
        }
    }

    fn ctx(topic: &str) -> Context {
        Context::builder("KafkaPreferredReplicaImbalance")
            .param("topic", ParamValue::Text(topic.into()))
            .build()
    }

    #[test]
    fn only_topics_with_an_in_sync_preferred_replica_are_elected() {
        let caps = MockCaps::new().on(
            "kafka.partition-leadership",
            Ok(vec![
                p("orders", 2, 1, true),
                p("audit", 3, 1, false),
                p("clicks", 1, 3, true),
            ]),
        );
        let check = Elect.precondition(&ctx(""), &caps);
        assert!(check.passed(), "{}", check.summary());
        assert_eq!(check.output_value("topics"), Some("clicks,orders"));
        let only = Elect.precondition(&ctx("orders"), &caps);
        assert_eq!(only.output_value("topics"), Some("orders"));
        // Only an out-of-sync preferred replica: a replication problem, not an election.
        let stuck = MockCaps::new().on(
            "kafka.partition-leadership",
            Ok(vec![p("audit", 3, 1, false)]),
        );
        let check = Elect.precondition(&ctx(""), &stuck);
        assert!(!check.passed());
        assert!(
            check.summary().contains("out of sync"),
            "{}",
            check.summary()
        );
    }
}
