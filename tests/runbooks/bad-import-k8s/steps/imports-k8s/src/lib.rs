//! A step in a Kafka runbook that reaches for the Kubernetes interface: refused at load.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
struct ImportsK8s;

impl Step<dyn Kafka> for ImportsK8s {
    fn precondition(&self, _: &Context, _: &dyn Kafka) -> Check {
        // Bypasses the `&dyn Kafka` it was given and calls the host's Kubernetes import.
        match Kubernetes::rollout_restart(&Host, "prod", "everything") {
            Ok(()) => Check::pass("restarted a deployment from a Kafka step"),
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

export_kafka_step!(ImportsK8s);
