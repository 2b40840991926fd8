//! Are all brokers up, with a controller elected? Read-only.

use themis_runbook_sdk::prelude::*;
use themis_runbook_sdk::samples;

#[derive(Default)]
pub struct BrokersUp;

impl Step<dyn Kafka> for BrokersUp {
    fn precondition(&self, _ctx: &Context, kafka: &dyn Kafka) -> Check {
        match kafka.describe_cluster() {
            Ok(cluster) if cluster.controller_id >= 0 => Check::pass("the cluster answers")
                .evidence("brokers", cluster.brokers.len())
                .evidence("controller", cluster.controller_id)
                .output("brokers", cluster.brokers.len()),
            Ok(_) => Check::fail("no controller is elected: the cluster is not serving metadata"),
            Err(e) => Check::fail(format!("cannot describe the cluster: {e:?}")),
        }
    }

    fn action(&self, ctx: &Context, kafka: &dyn Kafka) -> Outcome {
        let query = match ctx.param_str("up_query") {
            Ok(q) => q,
            Err(e) => return Outcome::failed(e.to_string()),
        };
        let samples = match kafka.query(query) {
            Ok(s) => s,
            Err(e) => return Outcome::failed(format!("cannot read broker liveness: {e:?}")),
        };
        let down: Vec<&str> = samples
            .iter()
            .filter(|s| s.value < 1.0)
            .map(|s| samples::label(s, "broker").unwrap_or("?"))
            .collect();
        let up = samples.len() - down.len();
        if down.is_empty() {
            Outcome::ok(format!("all {up} brokers are up")).evidence("brokers_up", up)
        } else {
            Outcome::ok(format!("broker(s) {} down", down.join(", ")))
                .branch("broker-down")
                .evidence("brokers_up", up)
                .evidence("brokers_down", down.join(","))
                .output("finding", "broker-down")
                .output("down_brokers", down.join(","))
        }
    }

    fn postcondition(&self, _ctx: &Context, kafka: &dyn Kafka) -> Check {
        // The measurement is only meaningful if the cluster still answers.
        match kafka.describe_cluster() {
            Ok(c) => {
                Check::pass("the cluster still answers").evidence("controller", c.controller_id)
            }
            Err(e) => Check::fail(format!("the cluster stopped answering: {e:?}")),
        }
    }

    fn rollback(&self, _ctx: &Context, _kafka: &dyn Kafka) -> Check {
        Check::nothing_to_undo()
    }
}

themis_runbook_sdk::export_kafka_step!(BrokersUp);

#[cfg(test)]
mod tests {
    use super::*;
    use themis_runbook_sdk::caps::kafka_types::{Broker, ClusterInfo};
    use themis_runbook_sdk::mock::MockCaps;
    use themis_runbook_sdk::samples::sample;

    fn cluster(controller: i32) -> ClusterInfo {
        ClusterInfo {
            cluster_id: "c".into(),
            controller_id: controller,
            brokers: (1..=3)
                .map(|id| Broker {
                    id,
                    host: format!("b{id}"),
                    port: 9092,
                    rack: None,
                })
                .collect(),
        }
    }

    fn ctx() -> Context {
        Context::builder("KafkaConsumerLag")
            .param("up_query", ParamValue::Text("up".into()))
            .build()
    }

    #[test]
    fn no_controller_fails_the_precondition() {
        let caps = MockCaps::new().on("kafka.describe-cluster", Ok(cluster(-1)));
        assert!(!BrokersUp.precondition(&ctx(), &caps).passed());
        let caps = MockCaps::new().on("kafka.describe-cluster", Ok(cluster(2)));
        let check = BrokersUp.precondition(&ctx(), &caps);
        assert!(check.passed());
        assert_eq!(check.evidence_value("brokers"), Some("3"));
    }

    #[test]
    fn a_down_broker_takes_the_broker_down_branch() {
        let caps = MockCaps::new().on(
            "metrics.query",
            Ok(vec![
                sample(&[("broker", "1")], 1.0),
                sample(&[("broker", "2")], 0.0),
            ]),
        );
        let out = BrokersUp.action(&ctx(), &caps);
        assert_eq!(out.branch_label(), "broker-down");
        assert_eq!(out.output_value("down_brokers"), Some("2"));

        let caps = MockCaps::new().on("metrics.query", Ok(vec![sample(&[("broker", "1")], 1.0)]));
        assert_eq!(BrokersUp.action(&ctx(), &caps).branch_label(), "next");
    }
}
