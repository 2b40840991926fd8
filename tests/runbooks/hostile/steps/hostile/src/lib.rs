//! A hostile step, built on our own SDK: what it does in each phase is chosen by the alert's
//! `attack` label, so the hardening tests can aim every attack the review tried at the host.
//!
//! - `log-flood`: log 4 MiB lines in a loop;
//! - `call-flood`: call a granted read (`kafka.describe-cluster`) in a loop;
//! - `denied-flood`: call an ungranted capability (`kafka.list-topics`) in a loop;
//! - `big-logs`: log 200 lines of 1 MiB, then pass;
//! - `big-verdict`: pass with 10 MiB of evidence and outputs;
//! - `many-outputs`: pass with 64 outputs (and evidence) of 4 KiB each, each within the verdict
//!   limits, 256 KiB in all;
//! - `mutate-in-checks`: in precondition and postcondition, restart the consumers, scale them to
//!   1000, change a broker's config and restart brokers 1 to 10;
//! - `restart-all`: in action and rollback, restart brokers 1 to 10 (and broker 1 twice).
//!
//! The attack runs in the phases the `phases` label lists (default: all four).

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
struct Hostile;

fn attacking(ctx: &Context, phase: &str) -> Option<String> {
    let phases = ctx
        .label("phases")
        .unwrap_or("precondition,action,postcondition,rollback");
    if !phases.split(',').any(|p| p == phase) {
        return None;
    }
    ctx.label("attack").map(str::to_owned)
}

/// Do the attack; return what happened, for the verdict.
fn attack(ctx: &Context, kafka: &dyn Kafka, phase: &str) -> (bool, Vec<(String, String)>) {
    let Some(attack) = attacking(ctx, phase) else {
        return (true, Vec::new());
    };
    let mut evidence = Vec::new();
    match attack.as_str() {
        "log-flood" => {
            let line = "x".repeat(4 << 20);
            loop {
                kafka.log(Level::Info, &line, &[("flood", "yes")]);
            }
        }
        "call-flood" => loop {
            let _ = std::hint::black_box(kafka.describe_cluster());
        },
        "denied-flood" => loop {
            let _ = std::hint::black_box(kafka.list_topics());
        },
        "big-logs" => {
            let line = "y".repeat(1 << 20);
            for _ in 0..200 {
                kafka.log(Level::Info, &line, &[]);
            }
        }
        "big-verdict" => {
            let big = "z".repeat(10 << 20);
            evidence.push(("big".into(), big));
        }
        "many-outputs" => {
            for i in 0..64 {
                evidence.push((format!("out{i}"), "w".repeat(4000)));
            }
        }
        "mutate-in-checks" | "restart-all" => {
            let mut done = Vec::new();
            if attack == "mutate-in-checks" {
                done.push((
                    "restart-consumers",
                    kafka.restart_consumers("orders").is_ok(),
                ));
                done.push(("scale-1000", kafka.scale_consumers("orders", 1000).is_ok()));
                done.push((
                    "set-broker-config",
                    kafka
                        .set_broker_config(1, "jvm.gc.max-pause-millis", "1")
                        .is_ok(),
                ));
            }
            let mut restarted = Vec::new();
            for broker in [1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10] {
                if kafka.broker_restart(broker).is_ok() {
                    restarted.push(broker.to_string());
                }
            }
            for (what, ok) in done {
                evidence.push((what.to_string(), ok.to_string()));
            }
            evidence.push(("restarted".into(), restarted.join(",")));
        }
        _ => {}
    }
    (true, evidence)
}

fn check(ctx: &Context, kafka: &dyn Kafka, phase: &str) -> Check {
    let (ok, evidence) = attack(ctx, kafka, phase);
    let mut c = Check::from_bool(ok, format!("{phase} done"));
    for (k, v) in evidence {
        c = c.evidence(&k, &v).output(&k, &v);
    }
    c
}

impl Step<dyn Kafka> for Hostile {
    fn precondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        check(ctx, kafka, "precondition")
    }
    fn action(&self, ctx: &Context, kafka: &dyn Kafka) -> Outcome {
        let (_, evidence) = attack(ctx, kafka, "action");
        let mut o = Outcome::ok("action done");
        for (k, v) in evidence {
            o = o.evidence(&k, &v).output(&k, &v);
        }
        // The walk then checks the postcondition; `fail-after-action` sends it to rollback.
        if ctx.label("fail-after-action").is_some() {
            return Outcome::failed("failing on purpose so the rollback runs");
        }
        o
    }
    fn postcondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        check(ctx, kafka, "postcondition")
    }
    fn rollback(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        check(ctx, kafka, "rollback")
    }
}

export_kafka_step!(Hostile);
