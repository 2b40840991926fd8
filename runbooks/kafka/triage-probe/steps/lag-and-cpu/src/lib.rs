//! Triage probe: what the selector needs to choose among restart, scale and broker diagnosis.
//! Reads the alert's `group` and `topic` labels. Read-only; every value is an output.

use themis_runbook_sdk::caps::kafka_types::group_state_name;
use themis_runbook_sdk::prelude::*;
use themis_runbook_sdk::samples;

#[derive(Default)]
pub struct LagAndCpu;

impl Step<dyn Kafka> for LagAndCpu {
    fn precondition(&self, ctx: &Context, _kafka: &dyn Kafka) -> Check {
        match (ctx.label("group"), ctx.label("topic")) {
            (Some(_), Some(_)) => Check::pass("the alert names a group and a topic"),
            _ => Check::fail("the alert has no `group` and `topic` labels: nothing to probe"),
        }
    }

    fn action(&self, ctx: &Context, kafka: &dyn Kafka) -> Outcome {
        let (Some(group), Some(topic)) = (ctx.label("group"), ctx.label("topic")) else {
            return Outcome::failed("no group/topic labels");
        };
        let mut out = Outcome::ok(format!("probed {group} on {topic}"));
        if let Ok(parts) = kafka.consumer_lag(group, topic) {
            let lag: i64 = parts.iter().map(|p| p.lag.max(0)).sum();
            out = out.output("lag", lag).evidence("lag", lag);
        }
        if let Ok(g) = kafka.describe_consumer_group(group) {
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
        let partitions = kafka
            .list_topics()
            .ok()
            .and_then(|topics| topics.into_iter().find(|t| t.name == topic))
            .map(|t| t.partitions.max(0) as u32);
        if let (Some(w), Some(partitions)) = (workload, partitions) {
            let suggested = (w.replicas_desired * 2).min(partitions);
            out = out
                .output("replicas", w.replicas_desired)
                .output("partitions", partitions)
                .output("suggested_replicas", suggested);
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
    use themis_runbook_sdk::mock::MockCaps;
    use themis_runbook_sdk::samples::sample;

    #[test]
    fn reports_the_busiest_broker_and_tolerates_missing_data() {
        let ctx = Context::builder("KafkaConsumerLag")
            .label("group", "orders-consumer")
            .label("topic", "orders")
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
}
