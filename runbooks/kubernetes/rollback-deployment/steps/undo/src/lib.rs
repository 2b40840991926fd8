//! Roll a deployment back to an earlier revision; verify the old template runs and is ready.

use themis_runbook_sdk::caps::k8s_types::Revision;
use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct Undo;

fn target(ctx: &Context) -> Result<(&str, &str, i64), String> {
    match (
        ctx.param_str("namespace"),
        ctx.param_str("deployment"),
        ctx.param_i64("to_revision"),
    ) {
        (Ok(ns), Ok(d), Ok(r)) => Ok((ns, d, r)),
        _ => Err("namespace, deployment and to_revision are required".into()),
    }
}

fn images(r: &Revision) -> String {
    r.images.join(",")
}

impl Step<dyn Kubernetes> for Undo {
    fn precondition(&self, ctx: &Context, k8s: &dyn Kubernetes) -> Check {
        let (ns, name, to) = match target(ctx) {
            Ok(t) => t,
            Err(e) => return Check::fail(e),
        };
        let d = match k8s.get_deployment(ns, name) {
            Ok(d) => d,
            Err(e) => return Check::fail(format!("cannot read {ns}/{name}: {e:?}")),
        };
        if d.replicas_ready >= d.replicas_desired {
            return Check::fail(format!(
                "{ns}/{name} is ready again ({}/{}): nothing to roll back",
                d.replicas_ready, d.replicas_desired
            ));
        }
        let history = match k8s.rollout_history(ns, name) {
            Ok(h) => h,
            Err(e) => return Check::fail(format!("cannot read the rollout history: {e:?}")),
        };
        let Some(current) = history.first() else {
            return Check::fail(format!("{ns}/{name} has no rollout history"));
        };
        if current.revision <= to {
            return Check::fail(format!(
                "revision {to} is not older than the current {}: nothing to roll back to",
                current.revision
            ));
        }
        let Some(earlier) = history.iter().find(|r| r.revision == to) else {
            return Check::fail(format!(
                "revision {to} is no longer in the history (revisionHistoryLimit): a human decides"
            ));
        };
        if images(earlier) == images(current) {
            return Check::fail(format!(
                "revision {to} runs the same images as the current {} ({}): a rollback would not change what fails",
                current.revision,
                images(current)
            ));
        }
        Check::pass(format!(
            "{}/{} ready on revision {} ({}); revision {to} ran {}",
            d.replicas_ready,
            d.replicas_desired,
            current.revision,
            images(current),
            images(earlier)
        ))
        .output("from_revision", current.revision)
        .output("images", images(earlier))
    }

    fn action(&self, ctx: &Context, k8s: &dyn Kubernetes) -> Outcome {
        let (ns, name, to) = match target(ctx) {
            Ok(t) => t,
            Err(e) => return Outcome::failed(e),
        };
        match k8s.rollout_undo(ns, name, to) {
            Ok(()) => Outcome::ok(format!("{ns}/{name} rolling back to revision {to}")),
            Err(e) => Outcome::failed(format!("rollback refused or failed: {e:?}")),
        }
    }

    fn postcondition(&self, ctx: &Context, k8s: &dyn Kubernetes) -> Check {
        let (ns, name, _) = match target(ctx) {
            Ok(t) => t,
            Err(e) => return Check::fail(e),
        };
        if ctx.dry_run() {
            return Check::pass("dry run: nothing was rolled back, so nothing is verified");
        }
        let wanted = ctx.output(ctx.step_id(), "images").unwrap_or("");
        let running = match k8s.rollout_history(ns, name) {
            Ok(h) => h.first().map(images).unwrap_or_default(),
            Err(e) => return Check::fail(format!("cannot read the rollout history: {e:?}")),
        };
        if running != wanted {
            return Check::fail(format!(
                "the current revision runs {running}, not the rolled-back {wanted}"
            ));
        }
        match k8s.get_deployment(ns, name) {
            Ok(d)
                if d.observed_generation >= d.generation
                    && d.replicas_ready >= d.replicas_desired =>
            {
                Check::pass(format!(
                    "{}/{} ready on {running}",
                    d.replicas_ready, d.replicas_desired
                ))
            }
            Ok(d) => Check::fail(format!(
                "{}/{} ready after the rollback",
                d.replicas_ready, d.replicas_desired
            )),
            Err(e) => Check::fail(format!("cannot read {ns}/{name}: {e:?}")),
        }
    }

    fn rollback(&self, _ctx: &Context, _k8s: &dyn Kubernetes) -> Check {
        Check::fail(
            "rolling forward again would bring back the failing revision: the deployment needs a human",
        )
    }
}

themis_runbook_sdk::export_kubernetes_step!(Undo);

#[cfg(test)]
mod tests {
    use super::*;
    use themis_runbook_sdk::caps::k8s_types::Deployment;
    use themis_runbook_sdk::mock::MockCaps;

    fn deployment(ready: u32) -> Deployment {
        Deployment {
            namespace: "shop".into(),
            name: "checkout".into(),
            replicas_desired: 3,
            replicas_ready: ready,
            replicas_updated: 3,
            replicas_available: ready,
            generation: 8,
            observed_generation: 8,
            conditions: vec![],
        }
    }

    fn revision(revision: i64, image: &str) -> Revision {
        Revision {
            revision,
            replica_set: format!("checkout-{revision}"),
            images: vec![image.into()],
            age_seconds: 600.0,
            ready: 0,
        }
    }

    fn ctx(to: i64) -> Context {
        Context::builder("KubePodCrashLooping")
            .param("namespace", ParamValue::Text("shop".into()))
            .param("deployment", ParamValue::Text("checkout".into()))
            .param("to_revision", ParamValue::Integer(to))
            .build()
    }

    fn history() -> Vec<Revision> {
        vec![revision(7, "checkout:2.1"), revision(6, "checkout:2.0")]
    }

    #[test]
    fn rolls_back_only_a_failing_deployment_to_an_older_different_revision() {
        let failing = MockCaps::new()
            .on("k8s.get-deployment", Ok(deployment(0)))
            .on("k8s.rollout-history", Ok(history()));
        let check = Undo.precondition(&ctx(6), &failing);
        assert!(check.passed(), "{}", check.summary());
        assert_eq!(check.output_value("images"), Some("checkout:2.0"));
        // Not older than the current one, or gone from the history.
        assert!(!Undo.precondition(&ctx(7), &failing).passed());
        assert!(!Undo.precondition(&ctx(3), &failing).passed());
        // Ready again: nothing to do.
        let ready = MockCaps::new()
            .on("k8s.get-deployment", Ok(deployment(3)))
            .on("k8s.rollout-history", Ok(history()));
        assert!(!Undo.precondition(&ctx(6), &ready).passed());
        // The same images: a rollback would change nothing.
        let same = MockCaps::new()
            .on("k8s.get-deployment", Ok(deployment(0)))
            .on(
                "k8s.rollout-history",
                Ok(vec![
                    revision(7, "checkout:2.0"),
                    revision(6, "checkout:2.0"),
                ]),
            );
        assert!(!Undo.precondition(&ctx(6), &same).passed());
    }
}
