//! A step whose behaviour the alert's labels script, for executor tests:
//! `fail.<step>=<phase>` fails that phase, `trap.<step>=<phase>` panics in it,
//! `branch.<step>=<label>` makes the action take that branch. Every phase logs itself.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
struct Scripted;

fn run(ctx: &Context, kafka: &dyn Kafka, phase: &str) -> bool {
    let step = ctx.step_id();
    kafka.log(
        Level::Info,
        &format!("{step} {phase}"),
        &[("step", step), ("phase", phase)],
    );
    if ctx.label(&format!("trap.{step}")) == Some(phase) {
        panic!("scripted trap in {step} {phase}");
    }
    ctx.label(&format!("fail.{step}")) != Some(phase)
}

fn check(ctx: &Context, kafka: &dyn Kafka, phase: &str) -> Check {
    let passed = run(ctx, kafka, phase);
    Check::from_bool(
        passed,
        format!(
            "{} {phase} {}",
            ctx.step_id(),
            if passed { "passed" } else { "failed" }
        ),
    )
    .evidence("phase", phase)
    .output(format!("{phase}-ran"), "yes")
}

impl Step<dyn Kafka> for Scripted {
    fn precondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        check(ctx, kafka, "precondition")
    }
    fn action(&self, ctx: &Context, kafka: &dyn Kafka) -> Outcome {
        let ok = run(ctx, kafka, "action");
        let branch = ctx
            .label(&format!("branch.{}", ctx.step_id()))
            .unwrap_or("next")
            .to_owned();
        let out = if ok {
            Outcome::ok(format!("{} acted", ctx.step_id()))
        } else {
            Outcome::failed(format!("{} action failed", ctx.step_id()))
        };
        // Proves outputs of earlier steps reach later ones.
        let seen: Vec<String> = ctx
            .raw()
            .outputs
            .iter()
            .map(|o| format!("{}.{}", o.step, o.key))
            .collect();
        out.branch(branch)
            .evidence("seen_outputs", seen.join(","))
            .output("acted", "yes")
    }
    fn postcondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        check(ctx, kafka, "postcondition")
    }
    fn rollback(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        check(ctx, kafka, "rollback")
    }
}

export_kafka_step!(Scripted);
