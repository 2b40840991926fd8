//! Passes its precondition, panics in its action.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
struct Panics;

impl Step<dyn Kafka> for Panics {
    fn precondition(&self, _: &Context, _: &dyn Kafka) -> Check {
        Check::pass("ready to panic")
    }
    fn action(&self, ctx: &Context, _: &dyn Kafka) -> Outcome {
        panic!("step {} gave up: deliberate test panic", ctx.step_id());
    }
    fn postcondition(&self, _: &Context, _: &dyn Kafka) -> Check {
        Check::pass("ok")
    }
    fn rollback(&self, _: &Context, _: &dyn Kafka) -> Check {
        Check::pass("nothing to undo")
    }
}

export_kafka_step!(Panics);
