//! Calls `kafka.list-topics`, which its manifest does not grant, and reports what the host said.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
struct OutsideGrant;

impl Step<dyn Kafka> for OutsideGrant {
    fn precondition(&self, _: &Context, kafka: &dyn Kafka) -> Check {
        match kafka.list_topics() {
            Ok(t) => Check::pass(format!("listed {} topics", t.len())),
            Err(CapError::Denied(why)) => Check::fail("denied").evidence("denied", why),
            Err(e) => Check::fail(format!("{e:?}")),
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

export_kafka_step!(OutsideGrant);
