//! Are partitions under-replicated, is the network erroring? Read-only.

use themis_runbook_sdk::prelude::*;
use themis_runbook_sdk::samples;

#[derive(Default)]
pub struct Replication;

impl Step<dyn Kafka> for Replication {
    fn precondition(&self, _ctx: &Context, kafka: &dyn Kafka) -> Check {
        match kafka.list_topics() {
            Ok(t) => Check::pass("topic metadata is available").evidence("topics", t.len()),
            Err(e) => Check::fail(format!("cannot list topics: {e:?}")),
        }
    }

    fn action(&self, ctx: &Context, kafka: &dyn Kafka) -> Outcome {
        let topics = match kafka.list_topics() {
            Ok(t) => t,
            Err(e) => return Outcome::failed(format!("cannot list topics: {e:?}")),
        };
        let under: Vec<String> = topics
            .iter()
            .filter(|t| t.under_replicated_partitions > 0)
            .map(|t| format!("{}({})", t.name, t.under_replicated_partitions))
            .collect();
        let urp: i64 = topics
            .iter()
            .map(|t| i64::from(t.under_replicated_partitions))
            .sum();
        let net_errors = ctx
            .param_str("network_errors_query")
            .ok()
            .and_then(|q| kafka.query(q).ok())
            .and_then(|s| samples::max(&s).map(|m| format!("{:.2}/s", m.value)))
            .unwrap_or_else(|| "unknown".into());
        let out = if urp > 0 {
            Outcome::ok(format!(
                "{urp} under-replicated partition(s): {}",
                under.join(", ")
            ))
            .branch("under-replicated")
            .output("finding", "under-replicated")
        } else {
            Outcome::ok("every partition is fully replicated")
        };
        out.evidence("under_replicated_partitions", urp)
            .evidence("network_errors_max", net_errors)
    }

    fn postcondition(&self, _ctx: &Context, _kafka: &dyn Kafka) -> Check {
        Check::pass("measurement recorded")
    }

    fn rollback(&self, _ctx: &Context, _kafka: &dyn Kafka) -> Check {
        Check::nothing_to_undo()
    }
}

themis_runbook_sdk::export_kafka_step!(Replication);

#[cfg(test)]
mod tests {
    use super::*;
    use themis_runbook_sdk::caps::kafka_types::TopicInfo;
    use themis_runbook_sdk::mock::MockCaps;

    fn topic(name: &str, urp: i32) -> TopicInfo {
        TopicInfo {
            name: name.into(),
            partitions: 6,
            replication_factor: 3,
            under_replicated_partitions: urp,
            internal: false,
        }
    }

    #[test]
    fn under_replication_is_a_finding() {
        let ctx = Context::builder("x").build();
        let caps = MockCaps::new().on(
            "kafka.list-topics",
            Ok(vec![topic("orders", 2), topic("payments", 0)]),
        );
        let out = Replication.action(&ctx, &caps);
        assert_eq!(out.branch_label(), "under-replicated");
        assert_eq!(out.evidence_value("under_replicated_partitions"), Some("2"));
        let caps = MockCaps::new().on("kafka.list-topics", Ok(vec![topic("orders", 0)]));
        assert_eq!(Replication.action(&ctx, &caps).branch_label(), "next");
    }
}
