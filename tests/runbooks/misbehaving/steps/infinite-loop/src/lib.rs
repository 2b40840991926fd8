//! Loops forever in its precondition: the epoch deadline must stop it.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
struct InfiniteLoop;

impl Step<dyn Kafka> for InfiniteLoop {
    fn precondition(&self, _: &Context, _: &dyn Kafka) -> Check {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
    fn action(&self, _: &Context, _: &dyn Kafka) -> Outcome {
        Outcome::ok("unreachable in practice")
    }
    fn postcondition(&self, _: &Context, _: &dyn Kafka) -> Check {
        Check::pass("ok")
    }
    fn rollback(&self, _: &Context, _: &dyn Kafka) -> Check {
        Check::pass("ok")
    }
}

export_kafka_step!(InfiniteLoop);
