//! Restart the consumers of a lagging group. A restart cannot be undone: the rollback checks that
//! the consumers are serving again and fails (calling for a human) if they are not.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct RestartConsumers;

fn total_lag(kafka: &dyn Kafka, group: &str, topic: &str) -> Result<i64, String> {
    kafka
        .consumer_lag(group, topic)
        .map(|parts| parts.iter().map(|p| p.lag.max(0)).sum())
        .map_err(|e| format!("cannot read the lag of {group} on {topic}: {e:?}"))
}

impl Step<dyn Kafka> for RestartConsumers {
    fn precondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        let (Ok(group), Ok(topic), Ok(max_lag)) = (
            ctx.param_str("group"),
            ctx.param_str("topic"),
            ctx.param_i64("max_lag"),
        ) else {
            return Check::fail("group, topic and max_lag are required");
        };
        let lag = match total_lag(kafka, group, topic) {
            Ok(l) => l,
            Err(e) => return Check::fail(e),
        };
        let workload = match kafka.describe_consumers(group) {
            Ok(w) => w,
            Err(e) => {
                return Check::fail(format!("no consumer workload is bound to {group}: {e:?}"));
            }
        };
        let check = if lag <= max_lag {
            Check::fail(format!(
                "lag {lag} is not above {max_lag}: a restart is not warranted"
            ))
        } else if workload.replicas_desired == 0 {
            Check::fail(format!(
                "{group}'s workload is scaled to zero: restarting it does nothing"
            ))
        } else {
            Check::pass(format!(
                "lag {lag} > {max_lag} with {} consumer(s)",
                workload.replicas_desired
            ))
        };
        check
            .evidence("lag", lag)
            .evidence("max_lag", max_lag)
            .evidence("replicas", workload.replicas_desired)
            .output("lag_before", lag)
            .output("revision_before", &workload.revision)
    }

    fn action(&self, ctx: &Context, kafka: &dyn Kafka) -> Outcome {
        let Ok(group) = ctx.param_str("group") else {
            return Outcome::failed("group is required");
        };
        match kafka.restart_consumers(group) {
            Ok(w) => Outcome::ok(format!("restarted the consumers of {group}"))
                .evidence("revision", &w.revision)
                .output("revision_after", &w.revision),
            Err(e) => Outcome::failed(format!("restart refused or failed: {e:?}")),
        }
    }

    fn postcondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        let Ok(group) = ctx.param_str("group") else {
            return Check::fail("group is required");
        };
        let before = ctx.output(ctx.step_id(), "revision_before").unwrap_or("");
        let workload = match kafka.describe_consumers(group) {
            Ok(w) => w,
            Err(e) => return Check::fail(format!("cannot read the workload: {e:?}")),
        };
        let ready = workload.replicas_ready >= workload.replicas_desired;
        let restarted = workload.revision != before;
        let check = if ctx.dry_run() {
            Check::pass("dry run: the restart was not performed, so it is not verified")
        } else if !restarted {
            Check::fail(format!(
                "the workload revision is still {before}: the restart did not happen"
            ))
        } else if !ready {
            Check::fail(format!(
                "{} of {} consumers ready after the restart",
                workload.replicas_ready, workload.replicas_desired
            ))
        } else {
            Check::pass(format!(
                "{} consumers restarted and ready",
                workload.replicas_ready
            ))
        };
        check
            .evidence("revision_before", before)
            .evidence("revision_now", &workload.revision)
            .evidence(
                "ready",
                format!("{}/{}", workload.replicas_ready, workload.replicas_desired),
            )
    }

    fn rollback(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        let Ok(group) = ctx.param_str("group") else {
            return Check::fail("group is required");
        };
        // A restart is not reversible; what rollback can promise is consumers that serve.
        match kafka.describe_consumers(group) {
            Ok(w) if w.replicas_ready >= w.replicas_desired => {
                Check::pass("a restart cannot be undone; the consumers are serving").evidence(
                    "ready",
                    format!("{}/{}", w.replicas_ready, w.replicas_desired),
                )
            }
            Ok(w) => Check::fail(format!(
                "a restart cannot be undone and only {} of {} consumers are ready: a human must look",
                w.replicas_ready, w.replicas_desired
            )),
            Err(e) => Check::fail(format!("cannot read the workload: {e:?}")),
        }
    }
}

themis_runbook_sdk::export_kafka_step!(RestartConsumers);

#[cfg(test)]
mod tests {
    use super::*;
    use themis_runbook_sdk::caps::kafka_types::{ConsumerWorkload, PartitionLag};
    use themis_runbook_sdk::mock::MockCaps;

    fn workload(revision: &str, ready: u32) -> ConsumerWorkload {
        ConsumerWorkload {
            group_id: "orders".into(),
            replicas_desired: 3,
            replicas_ready: ready,
            revision: revision.into(),
        }
    }

    fn lag(l: i64) -> Vec<PartitionLag> {
        vec![PartitionLag {
            topic: "orders".into(),
            partition: 0,
            committed_offset: 0,
            end_offset: l,
            lag: l,
        }]
    }

    fn ctx() -> themis_runbook_sdk::ContextBuilder {
        Context::builder("KafkaConsumerLag")
            .param("group", ParamValue::Text("orders".into()))
            .param("topic", ParamValue::Text("orders".into()))
            .param("max_lag", ParamValue::Integer(1000))
    }

    #[test]
    fn restarts_only_above_the_lag_threshold() {
        let caps = MockCaps::new()
            .on("kafka.consumer-lag", Ok(lag(50)))
            .on("kafka.describe-consumers", Ok(workload("7", 3)));
        assert!(
            !RestartConsumers
                .precondition(&ctx().build(), &caps)
                .passed()
        );
        let caps = MockCaps::new()
            .on("kafka.consumer-lag", Ok(lag(5000)))
            .on("kafka.describe-consumers", Ok(workload("7", 3)));
        let check = RestartConsumers.precondition(&ctx().build(), &caps);
        assert!(check.passed());
        assert_eq!(check.output_value("revision_before"), Some("7"));
    }

    #[test]
    fn the_postcondition_needs_a_new_revision_and_ready_consumers() {
        let ctx = ctx().output("test-step", "revision_before", "7").build();
        let same = MockCaps::new().on("kafka.describe-consumers", Ok(workload("7", 3)));
        assert!(!RestartConsumers.postcondition(&ctx, &same).passed());
        let not_ready = MockCaps::new().on("kafka.describe-consumers", Ok(workload("8", 1)));
        assert!(!RestartConsumers.postcondition(&ctx, &not_ready).passed());
        let good = MockCaps::new().on("kafka.describe-consumers", Ok(workload("8", 3)));
        assert!(RestartConsumers.postcondition(&ctx, &good).passed());
    }

    #[test]
    fn rollback_fails_when_consumers_are_not_serving() {
        let caps = MockCaps::new().on("kafka.describe-consumers", Ok(workload("8", 0)));
        assert!(!RestartConsumers.rollback(&ctx().build(), &caps).passed());
    }
}
