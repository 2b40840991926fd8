//! Probe: how the alert's deployment and its pods are doing. Read-only.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct Pods;

impl Step<dyn Kubernetes> for Pods {
    fn precondition(&self, ctx: &Context, _k8s: &dyn Kubernetes) -> Check {
        match (ctx.label("namespace"), ctx.label("deployment")) {
            (Some(_), Some(_)) => Check::pass("the alert names a deployment"),
            _ => Check::fail("the alert has no `namespace` and `deployment` labels"),
        }
    }

    fn action(&self, ctx: &Context, k8s: &dyn Kubernetes) -> Outcome {
        let (Some(ns), Some(name)) = (ctx.label("namespace"), ctx.label("deployment")) else {
            return Outcome::failed("no namespace/deployment labels");
        };
        let d = match k8s.get_deployment(ns, name) {
            Ok(d) => d,
            Err(e) => return Outcome::failed(format!("cannot read deployment {ns}/{name}: {e:?}")),
        };
        let base = Outcome::ok(format!(
            "{ns}/{name}: {}/{} ready",
            d.replicas_ready, d.replicas_desired
        ))
        .output("ready", d.replicas_ready)
        .output("desired", d.replicas_desired)
        .evidence(
            "ready",
            format!("{}/{}", d.replicas_ready, d.replicas_desired),
        );
        // Without the pod list, crash loops and OOM kills are unknown, not zero: leave those
        // outputs out so no rule over them holds, and say why in the evidence.
        let pods = match k8s.list_pods(ns, &format!("app={name}")) {
            Ok(pods) => pods,
            Err(e) => return base.evidence("pods", format!("unknown: cannot list pods: {e:?}")),
        };
        let crashloop = pods
            .iter()
            .filter(|p| p.reason.as_deref() == Some("CrashLoopBackOff"))
            .count();
        let oom = pods
            .iter()
            .filter(|p| p.reason.as_deref() == Some("OOMKilled"))
            .count();
        let restarts: u32 = pods.iter().map(|p| p.restarts).sum();
        base.output("crashloop", crashloop)
            .output("oomkilled", oom)
            .output("restarts", restarts)
            .evidence("crashloop", crashloop)
            .evidence("oomkilled", oom)
    }

    fn postcondition(&self, _ctx: &Context, _k8s: &dyn Kubernetes) -> Check {
        Check::pass("probe recorded")
    }

    fn rollback(&self, _ctx: &Context, _k8s: &dyn Kubernetes) -> Check {
        Check::nothing_to_undo()
    }
}

themis_runbook_sdk::export_kubernetes_step!(Pods);
