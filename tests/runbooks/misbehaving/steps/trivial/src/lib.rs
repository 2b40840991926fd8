//! A step that passes every phase and calls nothing: the baseline for sandbox tests and the
//! benchmark.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
struct Trivial;

impl Step<dyn Kafka> for Trivial {
    fn precondition(&self, ctx: &Context, _: &dyn Kafka) -> Check {
        Check::pass("ready").evidence("step", ctx.step_id())
    }
    fn action(&self, _: &Context, _: &dyn Kafka) -> Outcome {
        Outcome::ok("did nothing")
    }
    fn postcondition(&self, _: &Context, _: &dyn Kafka) -> Check {
        Check::pass("nothing to verify")
    }
    fn rollback(&self, _: &Context, _: &dyn Kafka) -> Check {
        Check::pass("nothing to undo")
    }
}

export_kafka_step!(Trivial);
