//! Step `{{step}}` of runbook {{id}}: rollout-restart a deployment that is not fully ready.
//!
//! The host calls the four phases in order: `precondition` (read-only: is this the situation the
//! step is for?), `action` (the change), `postcondition` (read-only: did it work?), and
//! `rollback` only when the action or postcondition failed. Every call on `k8s` goes through the
//! host, checked against the capabilities the manifest grants this step and audited.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct Restart;

fn target(ctx: &Context) -> Option<(&str, &str)> {
    Some((
        ctx.param_str("namespace").ok()?,
        ctx.param_str("deployment").ok()?,
    ))
}

impl Step<dyn Kubernetes> for Restart {
    fn precondition(&self, ctx: &Context, k8s: &dyn Kubernetes) -> Check {
        let Some((ns, name)) = target(ctx) else {
            return Check::fail("the `namespace` and `deployment` parameters are required");
        };
        match k8s.get_deployment(ns, name) {
            Ok(d) => Check::from_bool(
                d.replicas_ready < d.replicas_desired,
                format!(
                    "{ns}/{name}: {}/{} ready",
                    d.replicas_ready, d.replicas_desired
                ),
            ),
            Err(e) => Check::fail(format!("cannot read {ns}/{name}: {e:?}")),
        }
    }

    fn action(&self, ctx: &Context, k8s: &dyn Kubernetes) -> Outcome {
        let Some((ns, name)) = target(ctx) else {
            return Outcome::failed("the `namespace` and `deployment` parameters are required");
        };
        match k8s.rollout_restart(ns, name) {
            Ok(()) => Outcome::ok(format!("restarted {ns}/{name}")),
            Err(e) => Outcome::failed(format!("restart of {ns}/{name} failed: {e:?}")),
        }
    }

    fn postcondition(&self, ctx: &Context, k8s: &dyn Kubernetes) -> Check {
        let Some((ns, name)) = target(ctx) else {
            return Check::fail("the `namespace` and `deployment` parameters are required");
        };
        if ctx.dry_run() {
            return Check::pass("dry run: nothing was restarted");
        }
        match k8s.get_deployment(ns, name) {
            Ok(d) => Check::from_bool(
                d.replicas_ready >= d.replicas_desired,
                format!("{}/{} ready", d.replicas_ready, d.replicas_desired),
            ),
            Err(e) => Check::fail(format!("cannot read {ns}/{name}: {e:?}")),
        }
    }

    fn rollback(&self, _ctx: &Context, _k8s: &dyn Kubernetes) -> Check {
        // A restart cannot be undone: say so, and the host escalates to a human.
        Check::fail("a rollout restart cannot be undone: the deployment needs a human")
    }
}

themis_runbook_sdk::export_kubernetes_step!(Restart);

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
            generation: 4,
            observed_generation: 4,
            conditions: vec![],
        }
    }

    fn ctx() -> Context {
        Context::builder("KubeDeploymentReplicasMismatch")
            .param("namespace", ParamValue::Text("shop".into()))
            .param("deployment", ParamValue::Text("checkout".into()))
            .build()
    }

    #[test]
    fn runs_only_when_replicas_are_missing() {
        let short = MockCaps::new().on("k8s.get-deployment", Ok(deployment(1)));
        assert!(Restart.precondition(&ctx(), &short).passed());
        let fine = MockCaps::new().on("k8s.get-deployment", Ok(deployment(3)));
        assert!(!Restart.precondition(&ctx(), &fine).passed());
    }
}
