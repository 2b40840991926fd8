//! After a restart, the lag must be lower than before it. Read-only.

use themis_runbook_sdk::caps::kafka_types::group_state_name;
use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct VerifyDraining;

const RESTART_STEP: &str = "restart-consumers";

impl Step<dyn Kafka> for VerifyDraining {
    fn precondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        let Ok(group) = ctx.param_str("group") else {
            return Check::fail("group is required");
        };
        if ctx.output(RESTART_STEP, "lag_before").is_none() {
            return Check::fail("no lag was measured before the restart");
        }
        match kafka.describe_consumer_group(group) {
            Ok(g) => Check::pass(format!("group {group} is {}", group_state_name(g.state)))
                .evidence("state", group_state_name(g.state)),
            Err(e) => Check::fail(format!("cannot describe group {group}: {e:?}")),
        }
    }

    fn action(&self, ctx: &Context, kafka: &dyn Kafka) -> Outcome {
        let (Ok(group), Ok(topic)) = (ctx.param_str("group"), ctx.param_str("topic")) else {
            return Outcome::failed("group and topic are required");
        };
        match kafka.consumer_lag(group, topic) {
            Ok(parts) => {
                let lag: i64 = parts.iter().map(|p| p.lag.max(0)).sum();
                Outcome::ok(format!("lag is now {lag}"))
                    .evidence("lag", lag)
                    .output("lag_after", lag)
            }
            Err(e) => Outcome::failed(format!("cannot read the lag: {e:?}")),
        }
    }

    fn postcondition(&self, ctx: &Context, _kafka: &dyn Kafka) -> Check {
        let before: Option<i64> = ctx
            .output(RESTART_STEP, "lag_before")
            .and_then(|v| v.parse().ok());
        let after: Option<i64> = ctx
            .output(ctx.step_id(), "lag_after")
            .and_then(|v| v.parse().ok());
        let (Some(before), Some(after)) = (before, after) else {
            return Check::fail("the lag before or after the restart is missing");
        };
        let check = if ctx.dry_run() {
            Check::pass("dry run: nothing was restarted, so draining is not expected")
        } else if after < before {
            Check::pass(format!("lag went from {before} to {after}"))
        } else {
            Check::fail(format!(
                "lag did not go down: {before} before, {after} after"
            ))
        };
        check
            .evidence("lag_before", before)
            .evidence("lag_after", after)
    }

    fn rollback(&self, _ctx: &Context, _kafka: &dyn Kafka) -> Check {
        Check::nothing_to_undo()
    }
}

themis_runbook_sdk::export_kafka_step!(VerifyDraining);

#[cfg(test)]
mod tests {
    use super::*;
    use themis_runbook_sdk::mock::MockCaps;

    #[test]
    fn lag_must_go_down() {
        let base = || Context::builder("x").output(RESTART_STEP, "lag_before", "5000");
        let caps = MockCaps::new();
        assert!(
            VerifyDraining
                .postcondition(
                    &base().output("test-step", "lag_after", "100").build(),
                    &caps
                )
                .passed()
        );
        assert!(
            !VerifyDraining
                .postcondition(
                    &base().output("test-step", "lag_after", "6000").build(),
                    &caps
                )
                .passed()
        );
        assert!(
            VerifyDraining
                .postcondition(
                    &base()
                        .output("test-step", "lag_after", "6000")
                        .dry_run(true)
                        .build(),
                    &caps
                )
                .passed()
        );
    }
}
