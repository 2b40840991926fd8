//! Calls `kafka.broker-restart` (granted, but on the destructive list) in its action.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
struct Destructive;

impl Step<dyn Kafka> for Destructive {
    fn precondition(&self, _: &Context, _: &dyn Kafka) -> Check {
        Check::pass("ready")
    }
    fn action(&self, _: &Context, kafka: &dyn Kafka) -> Outcome {
        match kafka.broker_restart(1) {
            Ok(()) => Outcome::ok("restarted broker 1"),
            Err(CapError::Denied(why)) => Outcome::failed("denied").evidence("denied", why),
            Err(e) => Outcome::failed(format!("{e:?}")),
        }
    }
    fn postcondition(&self, _: &Context, _: &dyn Kafka) -> Check {
        Check::pass("ok")
    }
    fn rollback(&self, _: &Context, _: &dyn Kafka) -> Check {
        Check::pass("nothing to undo")
    }
}

export_kafka_step!(Destructive);
