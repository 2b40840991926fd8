//! Triage probe: what the selector needs to choose among restart, scale and broker diagnosis.
//! Its `group` and `topic` parameters come from the alert's labels through the agent's `labels:`
//! map (kafka_exporter's `consumergroup`, or `group`, …). Read-only; every value is an output.

use themis_runbook_sdk::caps::kafka_types::group_state_name;
use themis_runbook_sdk::prelude::*;
use themis_runbook_sdk::samples;

#[derive(Default)]
pub struct LagAndCpu;

/// The topic to probe: the alert's, or — when the rule aggregated it away (`sum by
/// (consumergroup)`) — the one of the group's assigned topics with the most lag.
fn topic(
    ctx: &Context,
    kafka: &dyn Kafka,
    group: &str,
    assigned: &[String],
) -> Result<(String, String), String> {
    if let Ok(topic) = ctx.param_str("topic") {
        return Ok((topic.to_owned(), "the alert's `topic`".into()));
    }
    match assigned {
        [] => Err(format!(
            "the alert names consumer group {group} but no topic, and the group has no member with an assignment to read one from"
        )),
        [only] => Ok((only.clone(), format!("the only topic {group} consumes"))),
        many => {
            let lag = |t: &String| {
                kafka
                    .consumer_lag(group, t)
                    .map(|parts| parts.iter().map(|p| p.lag.max(0)).sum::<i64>())
                    .unwrap_or(-1)
            };
            let (best, _) = many
                .iter()
                .map(|t| (t, lag(t)))
                .max_by_key(|(_, l)| *l)
                .unwrap_or((&many[0], 0));
            Ok((
                best.clone(),
                format!(
                    "the most lagging of the {} topics {group} consumes",
                    many.len()
                ),
            ))
        }
    }
}

impl Step<dyn Kafka> for LagAndCpu {
    fn precondition(&self, ctx: &Context, _kafka: &dyn Kafka) -> Check {
        match ctx.param_str("group") {
            Ok(_) => Check::pass("the alert names a consumer group"),
            Err(_) => Check::fail(
                "the alert names no consumer group (labels `consumergroup`, `group`, `consumer_group`): nothing to probe",
            ),
        }
    }

    fn action(&self, ctx: &Context, kafka: &dyn Kafka) -> Outcome {
        let Ok(group) = ctx.param_str("group") else {
            return Outcome::failed("no group parameter");
        };
        let described = kafka.describe_consumer_group(group).ok();
        let mut assigned: Vec<String> = described
            .iter()
            .flat_map(|g| g.members.iter())
            .flat_map(|m| m.assignments.iter().map(|a| a.topic.clone()))
            .collect();
        assigned.sort();
        assigned.dedup();
        // Without a topic the group's lag and the scaling headroom are unknown, but its state and
        // the brokers' CPU are not: report those, and say why the rest is missing.
        let topic = topic(ctx, kafka, group, &assigned);
        let mut out = match &topic {
            Ok((topic, from)) => Outcome::ok(format!("probed {group} on {topic}"))
                .output("topic", topic)
                .evidence("topic", format!("{topic} ({from})")),
            Err(why) => Outcome::ok(format!("probed {group}; no topic"))
                .evidence("topic", format!("unknown: {why}")),
        };
        let topic = topic.map(|(t, _)| t).ok();
        if let Some(parts) = topic
            .as_deref()
            .and_then(|t| kafka.consumer_lag(group, t).ok())
        {
            let lag: i64 = parts.iter().map(|p| p.lag.max(0)).sum();
            out = out.output("lag", lag).evidence("lag", lag);
        }
        if let Some(g) = &described {
            out = out
                .output("group_state", group_state_name(g.state))
                .evidence("group_state", group_state_name(g.state));
        }
        let cpu = ctx
            .param_str("cpu_query")
            .ok()
            .and_then(|q| kafka.query(q).ok());
        if let Some(max) = cpu.as_deref().and_then(samples::max) {
            let broker = samples::label(max, "broker").unwrap_or("?").to_owned();
            out = out
                .output("max_broker_cpu", format!("{:.2}", max.value))
                .output("busiest_broker", &broker)
                .evidence(
                    "busiest_broker",
                    format!("broker {broker} at {:.0}% CPU", max.value * 100.0),
                );
        }
        let workload = kafka.describe_consumers(group).ok();
        let partitions = topic.as_deref().and_then(|topic| {
            kafka
                .list_topics()
                .ok()
                .and_then(|topics| topics.into_iter().find(|t| t.name == topic))
                .map(|t| t.partitions.max(0) as u32)
        });
        if let (Some(w), Some(partitions)) = (workload, partitions) {
            let suggested = (w.replicas_desired * 2).min(partitions);
            // More consumers than partitions sit idle: at the cap there is nothing to add.
            let headroom = i64::from(suggested) - i64::from(w.replicas_desired);
            out = out
                .output("replicas", w.replicas_desired)
                .output("partitions", partitions)
                .output("suggested_replicas", suggested)
                .output("headroom", headroom)
                .evidence(
                    "consumers",
                    format!("{} of {partitions} partitions' worth", w.replicas_desired),
                );
        }
        out
    }

    fn postcondition(&self, _ctx: &Context, _kafka: &dyn Kafka) -> Check {
        Check::pass("probe recorded")
    }

    fn rollback(&self, _ctx: &Context, _kafka: &dyn Kafka) -> Check {
        Check::nothing_to_undo()
    }
}

themis_runbook_sdk::export_kafka_step!(LagAndCpu);

#[cfg(test)]
mod tests {
    use super::*;
    use themis_runbook_sdk::caps::kafka_types::{
        ConsumerGroup, GroupMember, GroupState, PartitionLag, TopicPartition,
    };
    use themis_runbook_sdk::mock::MockCaps;
    use themis_runbook_sdk::samples::sample;

    #[test]
    fn reports_the_busiest_broker_and_tolerates_missing_data() {
        let ctx = Context::builder("KafkaConsumerLag")
            .param("group", ParamValue::Text("orders-consumer".into()))
            .param("topic", ParamValue::Text("orders".into()))
            .param("cpu_query", ParamValue::Text("cpu".into()))
            .build();
        let caps = MockCaps::new().on(
            "metrics.query",
            Ok(vec![
                sample(&[("broker", "1")], 0.95),
                sample(&[("broker", "2")], 0.3),
            ]),
        );
        let out = LagAndCpu.action(&ctx, &caps);
        assert!(out.is_ok());
        assert_eq!(out.output_value("max_broker_cpu"), Some("0.95"));
        assert_eq!(out.output_value("busiest_broker"), Some("1"));
        assert_eq!(out.output_value("lag"), None);
    }

    #[test]
    fn without_a_group_it_says_which_label_is_missing() {
        let ctx = Context::builder("KafkaConsumerGroupLag")
            .param("topic", ParamValue::Text("orders".into()))
            .build();
        let check = LagAndCpu.precondition(&ctx, &MockCaps::new());
        assert!(!check.passed());
        assert!(
            check.summary().contains("`consumergroup`"),
            "{}",
            check.summary()
        );
    }

    fn member(topics: &[&str]) -> GroupMember {
        GroupMember {
            member_id: "m".into(),
            client_id: "c".into(),
            host: "h".into(),
            assignments: topics
                .iter()
                .map(|t| TopicPartition {
                    topic: (*t).into(),
                    partition: 0,
                })
                .collect(),
        }
    }

    fn group(members: Vec<GroupMember>) -> ConsumerGroup {
        ConsumerGroup {
            group_id: "orders-consumer".into(),
            state: GroupState::Stable,
            protocol: "range".into(),
            members,
        }
    }

    fn lag(topic: &str, lag: i64) -> Vec<PartitionLag> {
        vec![PartitionLag {
            topic: topic.into(),
            partition: 0,
            committed_offset: 0,
            end_offset: lag,
            lag,
        }]
    }

    #[test]
    fn a_group_only_alert_probes_the_most_lagging_topic_the_group_consumes() {
        // awesome-prometheus-alerts' KafkaConsumerGroupLag: `sum by (consumergroup)`, no topic.
        let ctx = Context::builder("KafkaConsumerGroupLag")
            .param("group", ParamValue::Text("orders-consumer".into()))
            .build();
        let caps = MockCaps::new()
            .on(
                "kafka.describe-consumer-group",
                Ok(group(vec![
                    member(&["orders", "audit"]),
                    member(&["orders"]),
                ])),
            )
            .on_args(
                "kafka.consumer-lag",
                "topic=orders",
                Ok(lag("orders", 90_000)),
            )
            .on_args("kafka.consumer-lag", "topic=audit", Ok(lag("audit", 12)));
        let out = LagAndCpu.action(&ctx, &caps);
        assert!(out.is_ok(), "{}", out.summary());
        assert_eq!(out.output_value("topic"), Some("orders"));
        assert_eq!(out.output_value("lag"), Some("90000"));
        assert_eq!(
            out.evidence_value("topic"),
            Some("orders (the most lagging of the 2 topics orders-consumer consumes)")
        );
    }

    #[test]
    fn a_group_without_assignments_and_no_topic_label_still_reports_state_and_cpu() {
        let ctx = Context::builder("KafkaConsumerGroupLag")
            .param("group", ParamValue::Text("orders-consumer".into()))
            .param("cpu_query", ParamValue::Text("cpu".into()))
            .build();
        let caps = MockCaps::new()
            .on("kafka.describe-consumer-group", Ok(group(vec![])))
            .on("metrics.query", Ok(vec![sample(&[("broker", "2")], 0.97)]));
        let out = LagAndCpu.action(&ctx, &caps);
        assert!(out.is_ok());
        assert_eq!(out.output_value("group_state"), Some("stable"));
        assert_eq!(out.output_value("max_broker_cpu"), Some("0.97"));
        assert_eq!(out.output_value("topic"), None);
        assert_eq!(out.output_value("suggested_replicas"), None);
        assert!(
            out.evidence_value("topic")
                .is_some_and(|e| e.contains("but no topic")),
            "{:?}",
            out.evidence_value("topic")
        );
    }
}
