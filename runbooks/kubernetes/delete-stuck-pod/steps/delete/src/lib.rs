//! Delete one stuck pod of a Deployment; verify it is gone (its ReplicaSet makes a new one).

use themis_runbook_sdk::caps::k8s_types::Pod;
use themis_runbook_sdk::prelude::*;

#[derive(Default)]
pub struct Delete;

/// The pod's Deployment and the Deployment's pods, or why this runbook must not touch it.
fn deployment_pods(
    k8s: &dyn Kubernetes,
    ns: &str,
    pod: &str,
) -> Result<(String, Vec<Pod>), String> {
    let owner = match k8s.pod_owner(ns, pod) {
        Ok(Some(w)) if w.kind == "Deployment" => w.name,
        Ok(Some(w)) => {
            return Err(format!(
                "pod {pod} belongs to {} {}: this runbook only replaces a Deployment's pods",
                w.kind, w.name
            ));
        }
        Ok(None) => {
            return Err(format!(
                "nothing controls pod {pod}: deleted, it would not come back"
            ));
        }
        Err(e) => return Err(format!("cannot look up pod {pod}'s owner: {e:?}")),
    };
    let pods = k8s
        .list_pods(ns, &format!("app={owner}"))
        .map_err(|e| format!("cannot list deployment {owner}'s pods: {e:?}"))?;
    Ok((owner, pods))
}

fn target(ctx: &Context) -> Option<(&str, &str)> {
    Some((ctx.param_str("namespace").ok()?, ctx.param_str("pod").ok()?))
}

impl Step<dyn Kubernetes> for Delete {
    fn precondition(&self, ctx: &Context, k8s: &dyn Kubernetes) -> Check {
        let Some((ns, pod)) = target(ctx) else {
            return Check::fail("namespace and pod are required");
        };
        let (owner, pods) = match deployment_pods(k8s, ns, pod) {
            Ok(found) => found,
            Err(why) => return Check::fail(why),
        };
        let Some(stuck) = pods.iter().find(|p| p.name == pod) else {
            return Check::fail(format!("pod {pod} is gone: nothing to delete"));
        };
        if stuck.ready {
            return Check::fail(format!("pod {pod} is ready now: left alone"));
        }
        let others = pods.iter().filter(|p| p.ready && p.name != pod).count();
        Check::from_bool(
            others > 0,
            if others > 0 {
                format!(
                    "pod {pod} of deployment {owner} is {} and not ready; {others} other replica(s) serve",
                    stuck.phase
                )
            } else {
                format!(
                    "no other replica of deployment {owner} is ready: deleting {pod} is not this runbook's call"
                )
            },
        )
        .output("deployment", owner)
        .evidence("others_ready", others)
    }

    fn action(&self, ctx: &Context, k8s: &dyn Kubernetes) -> Outcome {
        let Some((ns, pod)) = target(ctx) else {
            return Outcome::failed("namespace and pod are required");
        };
        match k8s.delete_pod(ns, pod) {
            Ok(()) => Outcome::ok(format!("deleted pod {ns}/{pod}")),
            Err(e) => Outcome::failed(format!("delete refused or failed: {e:?}")),
        }
    }

    fn postcondition(&self, ctx: &Context, k8s: &dyn Kubernetes) -> Check {
        let Some((ns, pod)) = target(ctx) else {
            return Check::fail("namespace and pod are required");
        };
        if ctx.dry_run() {
            return Check::pass("dry run: nothing was deleted");
        }
        let Some(owner) = ctx.output(ctx.step_id(), "deployment") else {
            return Check::fail("the precondition did not name the deployment");
        };
        match k8s.list_pods(ns, &format!("app={owner}")) {
            Ok(pods) => match pods.iter().find(|p| p.name == pod) {
                None => Check::pass(format!(
                    "pod {pod} is gone; deployment {owner} has {} pod(s)",
                    pods.len()
                )),
                Some(p) => Check::fail(format!("pod {pod} is still there ({})", p.phase)),
            },
            Err(e) => Check::fail(format!("cannot list deployment {owner}'s pods: {e:?}")),
        }
    }

    fn rollback(&self, _ctx: &Context, _k8s: &dyn Kubernetes) -> Check {
        Check::pass("a deleted pod is not restored: its ReplicaSet creates a replacement")
    }
}

themis_runbook_sdk::export_kubernetes_step!(Delete);

#[cfg(test)]
mod tests {
    use super::*;
    use themis_runbook_sdk::caps::k8s_types::Workload;
    use themis_runbook_sdk::mock::MockCaps;

    fn pod(name: &str, phase: &str, ready: bool) -> Pod {
        Pod {
            name: name.into(),
            phase: phase.into(),
            ready,
            restarts: 0,
            reason: None,
            node: None,
        }
    }

    fn ctx() -> Context {
        Context::builder("KubePodNotReady")
            .param("namespace", ParamValue::Text("shop".into()))
            .param("pod", ParamValue::Text("checkout-7d9f-stuck".into()))
            .build()
    }

    fn owned_by(kind: &str) -> MockCaps {
        MockCaps::new().on(
            "k8s.pod-owner",
            Ok(Some(Workload {
                kind: kind.into(),
                name: "checkout".into(),
            })),
        )
    }

    #[test]
    fn only_a_not_ready_pod_of_a_deployment_with_other_ready_replicas_is_deleted() {
        let serving = vec![
            pod("checkout-7d9f-stuck", "Pending", false),
            pod("checkout-7d9f-ok", "Running", true),
        ];
        let caps = owned_by("Deployment").on("k8s.list-pods", Ok(serving));
        let check = Delete.precondition(&ctx(), &caps);
        assert!(check.passed(), "{}", check.summary());
        assert_eq!(check.output_value("deployment"), Some("checkout"));

        for (caps, says) in [
            (
                owned_by("Deployment").on(
                    "k8s.list-pods",
                    Ok(vec![pod("checkout-7d9f-stuck", "Pending", false)]),
                ),
                "no other replica",
            ),
            (
                owned_by("Deployment").on(
                    "k8s.list-pods",
                    Ok(vec![pod("checkout-7d9f-stuck", "Running", true)]),
                ),
                "ready now",
            ),
            (owned_by("StatefulSet"), "only replaces a Deployment's pods"),
            (
                MockCaps::new().on("k8s.pod-owner", Ok(None::<Workload>)),
                "would not come back",
            ),
        ] {
            let check = Delete.precondition(&ctx(), &caps);
            assert!(!check.passed());
            assert!(check.summary().contains(says), "{}", check.summary());
        }
    }

    #[test]
    fn deleting_asks_for_exactly_the_planned_pod() {
        let caps = MockCaps::new().on("k8s.delete-pod", Ok(()));
        assert!(Delete.action(&ctx(), &caps).is_ok());
        assert_eq!(
            caps.calls()[0].args,
            "namespace=shop name=checkout-7d9f-stuck"
        );
    }
}
