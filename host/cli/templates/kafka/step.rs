//! Step `{{step}}` of runbook {{id}}: restart a consumer group stuck rebalancing.
//!
//! The host calls the four phases in order: `precondition` (read-only: is this the situation the
//! step is for?), `action` (the change), `postcondition` (read-only: did it work?), and
//! `rollback` only when the action or postcondition failed. Every call on `kafka` goes through
//! the host, checked against the capabilities the manifest grants this step and audited.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct Restart;

impl Step<dyn Kafka> for Restart {
    fn precondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        let Ok(group) = ctx.param_str("group") else {
            return Check::fail("the `group` parameter is required");
        };
        // Only a group stuck between generations is this step's business.
        match kafka.describe_consumer_group(group) {
            Ok(g) => {
                let state = format!("{:?}", g.state);
                Check::from_bool(
                    state.contains("Rebalance"),
                    format!("group {group} is {state}"),
                )
                .evidence("state", state)
            }
            Err(e) => Check::fail(format!("cannot describe group {group}: {e:?}")),
        }
    }

    fn action(&self, ctx: &Context, kafka: &dyn Kafka) -> Outcome {
        let Ok(group) = ctx.param_str("group") else {
            return Outcome::failed("the `group` parameter is required");
        };
        match kafka.restart_consumers(group) {
            // `output` values are visible to later phases and steps through `ctx.output`.
            Ok(w) => Outcome::ok(format!("restarted the consumers of {group}"))
                .output("revision", &w.revision),
            Err(e) => Outcome::failed(format!("restart of {group} failed: {e:?}")),
        }
    }

    fn postcondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        let Ok(group) = ctx.param_str("group") else {
            return Check::fail("the `group` parameter is required");
        };
        if ctx.dry_run() {
            return Check::pass("dry run: nothing was restarted");
        }
        match kafka.describe_consumers(group) {
            Ok(w) => Check::from_bool(
                w.replicas_ready >= w.replicas_desired,
                format!(
                    "{}/{} consumers ready",
                    w.replicas_ready, w.replicas_desired
                ),
            ),
            Err(e) => Check::fail(format!("cannot read the consumers of {group}: {e:?}")),
        }
    }

    fn rollback(&self, _ctx: &Context, _kafka: &dyn Kafka) -> Check {
        // A restart cannot be undone: say so, and the host escalates to a human.
        Check::fail("a restart cannot be undone: the consumer group needs a human")
    }
}

themis_runbook_sdk::export_kafka_step!(Restart);

#[cfg(test)]
mod tests {
    use super::*;
    use themis_runbook_sdk::caps::kafka_types::{ConsumerGroup, GroupState};
    use themis_runbook_sdk::mock::MockCaps;

    fn group(state: GroupState) -> ConsumerGroup {
        ConsumerGroup {
            group_id: "orders".into(),
            state,
            protocol: "range".into(),
            members: vec![],
        }
    }

    fn ctx() -> Context {
        Context::builder("KafkaConsumerLag")
            .param("group", ParamValue::Text("orders".into()))
            .build()
    }

    #[test]
    fn runs_only_on_a_group_stuck_rebalancing() {
        let stuck = MockCaps::new().on(
            "kafka.describe-consumer-group",
            Ok(group(GroupState::PreparingRebalance)),
        );
        assert!(Restart.precondition(&ctx(), &stuck).passed());
        let stable = MockCaps::new().on(
            "kafka.describe-consumer-group",
            Ok(group(GroupState::Stable)),
        );
        assert!(!Restart.precondition(&ctx(), &stable).passed());
    }
}
