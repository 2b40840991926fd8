//! Rollout-restart a stuck deployment. Destructive by default policy (k8s.rollout-restart).

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct RolloutRestart;

fn names(ctx: &Context) -> Result<(&str, &str), String> {
    match (ctx.param_str("namespace"), ctx.param_str("deployment")) {
        (Ok(ns), Ok(d)) => Ok((ns, d)),
        _ => Err("namespace and deployment are required".into()),
    }
}

impl Step<dyn Kubernetes> for RolloutRestart {
    fn precondition(&self, ctx: &Context, k8s: &dyn Kubernetes) -> Check {
        let (ns, name) = match names(ctx) {
            Ok(n) => n,
            Err(e) => return Check::fail(e),
        };
        let d = match k8s.get_deployment(ns, name) {
            Ok(d) => d,
            Err(e) => return Check::fail(format!("cannot read {ns}/{name}: {e:?}")),
        };
        let pods = k8s
            .list_pods(ns, &format!("app={name}"))
            .unwrap_or_default();
        if pods
            .iter()
            .any(|p| p.reason.as_deref() == Some("OOMKilled"))
        {
            return Check::fail(
                "pods are OOM-killed: a restart will not help, raise the memory limit instead",
            );
        }
        if d.replicas_ready >= d.replicas_desired {
            return Check::fail(format!(
                "{ns}/{name} is healthy ({}/{} ready): nothing to restart",
                d.replicas_ready, d.replicas_desired
            ));
        }
        Check::pass(format!(
            "{ns}/{name}: {}/{} ready",
            d.replicas_ready, d.replicas_desired
        ))
        .output("generation_before", d.generation)
    }

    fn action(&self, ctx: &Context, k8s: &dyn Kubernetes) -> Outcome {
        let (ns, name) = match names(ctx) {
            Ok(n) => n,
            Err(e) => return Outcome::failed(e),
        };
        match k8s.rollout_restart(ns, name) {
            Ok(()) => Outcome::ok(format!("rollout restart of {ns}/{name} started")),
            Err(e) => Outcome::failed(format!("rollout restart refused or failed: {e:?}")),
        }
    }

    fn postcondition(&self, ctx: &Context, k8s: &dyn Kubernetes) -> Check {
        let (ns, name) = match names(ctx) {
            Ok(n) => n,
            Err(e) => return Check::fail(e),
        };
        match k8s.get_deployment(ns, name) {
            Ok(_) if ctx.dry_run() => {
                Check::pass("dry run: nothing was restarted, so nothing is verified")
            }
            // Done as `kubectl rollout status` says done: the new generation observed, every
            // replica updated, available and ready (old pods being ready is not enough).
            Ok(d)
                if d.observed_generation >= d.generation
                    && d.replicas_updated >= d.replicas_desired
                    && d.replicas_available >= d.replicas_desired
                    && d.replicas_ready >= d.replicas_desired =>
            {
                Check::pass(format!(
                    "{}/{} ready after the restart",
                    d.replicas_ready, d.replicas_desired
                ))
            }
            Ok(d) => Check::fail(format!(
                "{}/{} updated, {} ready after the restart (generation {} observed {})",
                d.replicas_updated,
                d.replicas_desired,
                d.replicas_ready,
                d.generation,
                d.observed_generation
            )),
            Err(e) => Check::fail(format!("cannot read {ns}/{name}: {e:?}")),
        }
    }

    fn rollback(&self, _ctx: &Context, _k8s: &dyn Kubernetes) -> Check {
        Check::fail("a rollout restart cannot be undone: the deployment needs a human")
    }
}

themis_runbook_sdk::export_kubernetes_step!(RolloutRestart);
