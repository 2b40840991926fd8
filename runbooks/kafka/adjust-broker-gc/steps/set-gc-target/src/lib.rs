//! Set a broker's JVM GC pause target, remembering the old one for the rollback.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct SetGcTarget;

const KEY: &str = "jvm.gc.max-pause-millis";

fn current(kafka: &dyn Kafka, broker: i32) -> Result<Option<String>, String> {
    kafka
        .broker_config(broker)
        .map(|cfg| cfg.into_iter().find(|p| p.key == KEY).map(|p| p.value))
        .map_err(|e| format!("cannot read broker {broker}'s config: {e:?}"))
}

impl Step<dyn Kafka> for SetGcTarget {
    fn precondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        let (Ok(broker), Ok(target)) =
            (ctx.param_i32("broker_id"), ctx.param_i64("max_gc_pause_ms"))
        else {
            return Check::fail("broker_id (a 32-bit broker id) and max_gc_pause_ms are required");
        };
        if !(20..=10_000).contains(&target) {
            return Check::fail(format!(
                "a {target} ms pause target is outside 20..10000 ms"
            ));
        }
        match current(kafka, broker) {
            Ok(now) => {
                let now = now.unwrap_or_else(|| "unset".into());
                Check::pass(format!("broker {broker}: pause target {now} → {target} ms"))
                    .evidence("current", &now)
                    .output("previous", now)
            }
            Err(e) => Check::fail(e),
        }
    }

    fn action(&self, ctx: &Context, kafka: &dyn Kafka) -> Outcome {
        let (Ok(broker), Ok(target)) =
            (ctx.param_i32("broker_id"), ctx.param_i64("max_gc_pause_ms"))
        else {
            return Outcome::failed("broker_id and max_gc_pause_ms are required");
        };
        match kafka.set_broker_config(broker, KEY, &target.to_string()) {
            Ok(()) => Outcome::ok(format!("broker {broker}: {KEY}={target}")),
            Err(e) => Outcome::failed(format!("could not set {KEY}: {e:?}")),
        }
    }

    fn postcondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        let (Ok(broker), Ok(target)) =
            (ctx.param_i32("broker_id"), ctx.param_i64("max_gc_pause_ms"))
        else {
            return Check::fail("broker_id (a 32-bit broker id) and max_gc_pause_ms are required");
        };
        match current(kafka, broker) {
            Ok(Some(v)) if v == target.to_string() => Check::pass(format!("{KEY} is {v}")),
            _ if ctx.dry_run() => {
                Check::pass("dry run: the setting was not changed, so it is not verified")
            }
            Ok(v) => Check::fail(format!("{KEY} reads {v:?}, expected {target}")),
            Err(e) => Check::fail(e),
        }
    }

    fn rollback(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        let Ok(broker) = ctx.param_i32("broker_id") else {
            return Check::fail("broker_id is required");
        };
        let Some(previous) = ctx.output(ctx.step_id(), "previous") else {
            return Check::fail("the previous value was not recorded: a human must restore it");
        };
        if previous == "unset" {
            return Check::pass(
                "the target was unset before; leaving the broker default in place is a human call",
            )
            .evidence("previous", previous);
        }
        match kafka.set_broker_config(broker, KEY, previous) {
            Ok(()) => Check::pass(format!("restored {KEY}={previous}")),
            Err(e) => Check::fail(format!("could not restore {KEY}={previous}: {e:?}")),
        }
    }
}

themis_runbook_sdk::export_kafka_step!(SetGcTarget);
