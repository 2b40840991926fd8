//! Restart one broker (destructive: the host refuses it without an approval bound to this
//! execution) and check the cluster is whole again.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct RestartBroker;

fn urp(kafka: &dyn Kafka) -> Result<i64, String> {
    kafka
        .list_topics()
        .map(|t| {
            t.iter()
                .map(|t| i64::from(t.under_replicated_partitions))
                .sum()
        })
        .map_err(|e| format!("cannot list topics: {e:?}"))
}

impl Step<dyn Kafka> for RestartBroker {
    fn precondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        let Ok(broker) = ctx.param_i32("broker_id") else {
            return Check::fail("broker_id (a 32-bit broker id) is required");
        };
        let cluster = match kafka.describe_cluster() {
            Ok(c) => c,
            Err(e) => return Check::fail(format!("cannot describe the cluster: {e:?}")),
        };
        if !cluster.brokers.iter().any(|b| b.id == broker) {
            return Check::fail(format!("broker {broker} is not in the cluster"));
        }
        if cluster.brokers.len() < 3 {
            return Check::fail(format!(
                "only {} brokers: restarting one risks availability",
                cluster.brokers.len()
            ));
        }
        match urp(kafka) {
            Ok(0) => Check::pass(format!(
                "{} brokers, every partition fully replicated",
                cluster.brokers.len()
            )),
            Ok(n) => Check::fail(format!(
                "{n} partitions are already under-replicated: a restart now risks data"
            )),
            Err(e) => Check::fail(e),
        }
    }

    fn action(&self, ctx: &Context, kafka: &dyn Kafka) -> Outcome {
        let Ok(broker) = ctx.param_i32("broker_id") else {
            return Outcome::failed("broker_id (a 32-bit broker id) is required");
        };
        match kafka.broker_restart(broker) {
            Ok(()) => Outcome::ok(format!("broker {broker} restarted")),
            Err(CapError::Denied(why)) => {
                Outcome::failed(format!("the host refused the restart: {why}"))
            }
            Err(e) => Outcome::failed(format!("restart failed: {e:?}")),
        }
    }

    fn postcondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        let Ok(broker) = ctx.param_i32("broker_id") else {
            return Check::fail("broker_id (a 32-bit broker id) is required");
        };
        let back = kafka
            .describe_cluster()
            .map(|c| c.controller_id >= 0 && c.brokers.iter().any(|b| b.id == broker))
            .unwrap_or(false);
        match (back, urp(kafka)) {
            (true, Ok(0)) => Check::pass(format!(
                "broker {broker} is back and every partition is replicated"
            )),
            (true, Ok(n)) => Check::fail(format!(
                "broker {broker} is back but {n} partitions are under-replicated"
            )),
            (false, _) => Check::fail(format!("broker {broker} has not rejoined the cluster")),
            (_, Err(e)) => Check::fail(e),
        }
    }

    fn rollback(&self, _ctx: &Context, _kafka: &dyn Kafka) -> Check {
        Check::fail("a broker restart cannot be undone: check the broker by hand")
    }
}

themis_runbook_sdk::export_kafka_step!(RestartBroker);
