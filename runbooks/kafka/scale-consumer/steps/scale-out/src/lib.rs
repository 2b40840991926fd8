//! Scale a consumer group's workload out, never past the topic's partition count; roll back to
//! the size it had before.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct ScaleOut;

impl Step<dyn Kafka> for ScaleOut {
    fn precondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        let (Ok(group), Ok(topic), Ok(wanted)) = (
            ctx.param_str("group"),
            ctx.param_str("topic"),
            ctx.param_i64("replicas"),
        ) else {
            return Check::fail("group, topic and replicas are required");
        };
        let workload = match kafka.describe_consumers(group) {
            Ok(w) => w,
            Err(e) => {
                return Check::fail(format!("no consumer workload is bound to {group}: {e:?}"));
            }
        };
        let partitions = match kafka.list_topics() {
            Ok(topics) => match topics.into_iter().find(|t| t.name == topic) {
                Some(t) => i64::from(t.partitions),
                None => return Check::fail(format!("topic {topic} does not exist")),
            },
            Err(e) => return Check::fail(format!("cannot list topics: {e:?}")),
        };
        let current = i64::from(workload.replicas_desired);
        let check = if wanted <= current {
            Check::fail(format!(
                "{group} already has {current} consumers; asked for {wanted}: this runbook only scales out"
            ))
        } else if wanted > partitions {
            Check::fail(format!(
                "{topic} has {partitions} partitions: more than {partitions} consumers would sit idle"
            ))
        } else {
            Check::pass(format!(
                "scale {group} from {current} to {wanted} ({partitions} partitions)"
            ))
        };
        check
            .evidence("current", current)
            .evidence("wanted", wanted)
            .evidence("partitions", partitions)
            .output("previous_replicas", current)
    }

    fn action(&self, ctx: &Context, kafka: &dyn Kafka) -> Outcome {
        let (Ok(group), Ok(wanted)) = (ctx.param_str("group"), ctx.param_i64("replicas")) else {
            return Outcome::failed("group and replicas are required");
        };
        let Ok(wanted) = u32::try_from(wanted) else {
            return Outcome::failed(format!("replicas {wanted} is out of range"));
        };
        match kafka.scale_consumers(group, wanted) {
            Ok(w) => Outcome::ok(format!("asked for {wanted} consumers"))
                .evidence("desired", w.replicas_desired),
            Err(e) => Outcome::failed(format!("scale refused or failed: {e:?}")),
        }
    }

    fn postcondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        let (Ok(group), Ok(wanted)) = (ctx.param_str("group"), ctx.param_i64("replicas")) else {
            return Check::fail("group and replicas are required");
        };
        match kafka.describe_consumers(group) {
            Ok(w) if ctx.dry_run() => {
                Check::pass("dry run: the scale was not performed, so it is not verified")
                    .evidence("desired", w.replicas_desired)
            }
            Ok(w)
                if i64::from(w.replicas_desired) == wanted
                    && i64::from(w.replicas_ready) >= wanted =>
            {
                Check::pass(format!("{wanted} consumers ready")).evidence("ready", w.replicas_ready)
            }
            Ok(w) => Check::fail(format!(
                "{} of {wanted} consumers ready (desired {})",
                w.replicas_ready, w.replicas_desired
            ))
            .evidence("ready", w.replicas_ready),
            Err(e) => Check::fail(format!("cannot read the workload: {e:?}")),
        }
    }

    fn rollback(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        let Ok(group) = ctx.param_str("group") else {
            return Check::fail("group is required");
        };
        let Some(previous) = ctx
            .output(ctx.step_id(), "previous_replicas")
            .and_then(|v| v.parse::<u32>().ok())
        else {
            return Check::fail(
                "the size before scaling was not recorded: a human must restore it",
            );
        };
        match kafka.scale_consumers(group, previous) {
            Ok(_) => Check::pass(format!("scaled {group} back to {previous}"))
                .evidence("replicas", previous),
            Err(e) => Check::fail(format!("could not scale {group} back to {previous}: {e:?}")),
        }
    }
}

themis_runbook_sdk::export_kafka_step!(ScaleOut);

#[cfg(test)]
mod tests {
    use super::*;
    use themis_runbook_sdk::caps::kafka_types::{ConsumerWorkload, TopicInfo};
    use themis_runbook_sdk::mock::MockCaps;

    fn ctx(replicas: i64) -> themis_runbook_sdk::ContextBuilder {
        Context::builder("KafkaConsumerLag")
            .param("group", ParamValue::Text("orders".into()))
            .param("topic", ParamValue::Text("orders".into()))
            .param("replicas", ParamValue::Integer(replicas))
    }

    fn caps() -> MockCaps {
        MockCaps::new()
            .on(
                "kafka.describe-consumers",
                Ok(ConsumerWorkload {
                    group_id: "orders".into(),
                    replicas_desired: 3,
                    replicas_ready: 3,
                    revision: "1".into(),
                }),
            )
            .on(
                "kafka.list-topics",
                Ok(vec![TopicInfo {
                    name: "orders".into(),
                    partitions: 6,
                    replication_factor: 3,
                    under_replicated_partitions: 0,
                    internal: false,
                }]),
            )
    }

    #[test]
    fn never_scales_in_or_past_the_partition_count() {
        assert!(!ScaleOut.precondition(&ctx(2).build(), &caps()).passed());
        assert!(!ScaleOut.precondition(&ctx(7).build(), &caps()).passed());
        let ok = ScaleOut.precondition(&ctx(6).build(), &caps());
        assert!(ok.passed());
        assert_eq!(ok.output_value("previous_replicas"), Some("3"));
    }

    #[test]
    fn rollback_restores_the_previous_size() {
        let caps = caps().on(
            "kafka.scale-consumers",
            Ok(ConsumerWorkload {
                group_id: "orders".into(),
                replicas_desired: 3,
                replicas_ready: 3,
                revision: "1".into(),
            }),
        );
        let ctx = ctx(6).output("test-step", "previous_replicas", "3").build();
        assert!(ScaleOut.rollback(&ctx, &caps).passed());
        assert_eq!(
            caps.calls().last().map(|c| c.args.clone()),
            Some("group=orders replicas=3".into())
        );
    }
}
