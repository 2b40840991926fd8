//! Scale a deployment within bounds; verify the new count is ready; return to the old count if
//! it is not.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct Scale;

/// No run scales past this, whatever the parameter's own maximum says.
const CEILING: u32 = 50;

fn target(ctx: &Context) -> Result<(&str, &str, u32), String> {
    match (
        ctx.param_str("namespace"),
        ctx.param_str("deployment"),
        ctx.param_u32("replicas"),
    ) {
        (Ok(ns), Ok(d), Ok(r)) => Ok((ns, d, r)),
        _ => Err("namespace, deployment and replicas are required".into()),
    }
}

/// Is `to` within one run's reach from `from`: at least 1, at most the ceiling, at most double
/// and at least half?
fn within_bounds(from: u32, to: u32) -> Result<(), String> {
    if to == 0 || to > CEILING {
        return Err(format!("{to} replicas is outside 1..={CEILING}"));
    }
    if from > 0 && (to > from.saturating_mul(2) || to.saturating_mul(2) < from) {
        return Err(format!(
            "{from} → {to} is more than double or less than half in one run: scale in steps, or a human decides"
        ));
    }
    Ok(())
}

impl Step<dyn Kubernetes> for Scale {
    fn precondition(&self, ctx: &Context, k8s: &dyn Kubernetes) -> Check {
        let (ns, name, to) = match target(ctx) {
            Ok(t) => t,
            Err(e) => return Check::fail(e),
        };
        let d = match k8s.get_deployment(ns, name) {
            Ok(d) => d,
            Err(e) => return Check::fail(format!("cannot read {ns}/{name}: {e:?}")),
        };
        if d.replicas_desired == to {
            return Check::fail(format!("{ns}/{name} already runs {to} replicas"));
        }
        if d.observed_generation < d.generation {
            return Check::fail(format!(
                "{ns}/{name} is still rolling out (generation {} observed {}): scale after it settles",
                d.generation, d.observed_generation
            ));
        }
        if let Err(why) = within_bounds(d.replicas_desired, to) {
            return Check::fail(why);
        }
        Check::pass(format!(
            "{ns}/{name}: {} → {to} replicas ({} ready)",
            d.replicas_desired, d.replicas_ready
        ))
        .output("replicas_before", d.replicas_desired)
    }

    fn action(&self, ctx: &Context, k8s: &dyn Kubernetes) -> Outcome {
        let (ns, name, to) = match target(ctx) {
            Ok(t) => t,
            Err(e) => return Outcome::failed(e),
        };
        match k8s.scale_deployment(ns, name, to) {
            Ok(()) => Outcome::ok(format!("{ns}/{name} scaled to {to}")),
            Err(e) => Outcome::failed(format!("scale refused or failed: {e:?}")),
        }
    }

    fn postcondition(&self, ctx: &Context, k8s: &dyn Kubernetes) -> Check {
        let (ns, name, to) = match target(ctx) {
            Ok(t) => t,
            Err(e) => return Check::fail(e),
        };
        if ctx.dry_run() {
            return Check::pass("dry run: nothing was scaled, so nothing is verified");
        }
        match k8s.get_deployment(ns, name) {
            Ok(d) if d.replicas_desired == to && d.replicas_ready >= to => {
                Check::pass(format!("{}/{to} ready", d.replicas_ready))
            }
            Ok(d) => Check::fail(format!(
                "{}/{} ready, {} asked",
                d.replicas_ready, d.replicas_desired, to
            )),
            Err(e) => Check::fail(format!("cannot read {ns}/{name}: {e:?}")),
        }
    }

    fn rollback(&self, ctx: &Context, k8s: &dyn Kubernetes) -> Check {
        let (ns, name, _) = match target(ctx) {
            Ok(t) => t,
            Err(e) => return Check::fail(e),
        };
        let Some(before) = ctx
            .output(ctx.step_id(), "replicas_before")
            .and_then(|v| v.parse::<u32>().ok())
        else {
            return Check::fail("the count before is unknown: a human decides");
        };
        match k8s.scale_deployment(ns, name, before) {
            Ok(()) => Check::pass(format!("{ns}/{name} returned to {before} replicas")),
            Err(e) => Check::fail(format!("returning to {before} replicas failed: {e:?}")),
        }
    }
}

themis_runbook_sdk::export_kubernetes_step!(Scale);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_run_stays_within_half_double_and_the_ceiling() {
        assert!(within_bounds(3, 6).is_ok());
        assert!(within_bounds(6, 3).is_ok());
        assert!(within_bounds(3, 7).is_err());
        assert!(within_bounds(6, 2).is_err());
        assert!(within_bounds(3, 0).is_err());
        assert!(within_bounds(40, 60).is_err());
        assert!(within_bounds(0, 1).is_ok());
    }
}
