//! Allocates and touches memory until something stops it: the memory limit must.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
struct MemoryBomb;

impl Step<dyn Kafka> for MemoryBomb {
    fn precondition(&self, _: &Context, _: &dyn Kafka) -> Check {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(std::hint::black_box(vec![0xA5; 1 << 20]));
            if hoard.len() > 1 << 16 {
                return Check::pass(format!("allocated {} MiB", hoard.len()));
            }
        }
    }
    fn action(&self, _: &Context, _: &dyn Kafka) -> Outcome {
        Outcome::ok("ok")
    }
    fn postcondition(&self, _: &Context, _: &dyn Kafka) -> Check {
        Check::pass("ok")
    }
    fn rollback(&self, _: &Context, _: &dyn Kafka) -> Check {
        Check::pass("ok")
    }
}

export_kafka_step!(MemoryBomb);
