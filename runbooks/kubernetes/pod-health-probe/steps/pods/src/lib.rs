//! Probe: how the alert's workload and its pods are doing. Read-only.
//!
//! Its parameters come from the alert's labels through the agent's `labels:` map. Most
//! kubernetes-mixin alerts name a `pod` (and `container`), not a deployment: the probe then asks
//! the host which workload controls the pod, so the rules and the human both see the deployment.

use themis_runbook_sdk::caps::k8s_types::Workload;
use themis_runbook_sdk::prelude::*;

/// Log lines of a failing pod shown as evidence: enough to see the last error, few enough to read.
const LOG_LINES: u32 = 20;
const LOG_EVIDENCE: usize = 3;
/// The newest warning events about the failing pod shown as evidence.
const EVENT_EVIDENCE: usize = 3;

#[derive(Default)]
pub struct Pods;

/// Why there is no deployment to inspect, and the workload the pod belongs to when it has one.
type NoDeployment = (String, Option<Workload>);

/// The deployment to inspect: the alert's own, or the one controlling the alert's pod.
fn deployment(
    ctx: &Context,
    k8s: &dyn Kubernetes,
    ns: &str,
) -> Result<(String, String), NoDeployment> {
    if let Ok(name) = ctx.param_str("deployment") {
        return Ok((name.to_owned(), "the alert's `deployment`".into()));
    }
    let Ok(pod) = ctx.param_str("pod") else {
        return Err((
            "the alert names neither a deployment nor a pod".into(),
            None,
        ));
    };
    match k8s.pod_owner(ns, pod) {
        Ok(Some(w)) if w.kind == "Deployment" => Ok((w.name, format!("the owner of pod {pod}"))),
        Ok(Some(w)) => Err((
            format!(
                "the alert has `pod` {pod} but no `deployment`; the pod belongs to {} {}, and this agent's runbooks act on Deployments",
                w.kind, w.name
            ),
            Some(w),
        )),
        Ok(None) => Err((
            format!(
                "the alert has `pod` {pod} but no `deployment`; the owner lookup found no controller for the pod"
            ),
            None,
        )),
        Err(e) => Err((
            format!(
                "the alert has `pod` {pod} but no `deployment`; the owner lookup failed: {e:?}"
            ),
            None,
        )),
    }
}

/// A pod of a StatefulSet (a broker, a database): no runbook here acts on it, but the human the
/// alert goes to reads where its rollout stands.
fn statefulset(out: Outcome, k8s: &dyn Kubernetes, ns: &str, name: &str) -> Outcome {
    match k8s.get_statefulset(ns, name) {
        Ok(s) => out.evidence(
            "statefulset",
            format!(
                "{ns}/{name}: {}/{} ready, {} on the update revision{}",
                s.replicas_ready,
                s.replicas_desired,
                s.replicas_updated,
                if s.current_revision == s.update_revision {
                    String::new()
                } else {
                    format!(
                        " (rolling from {} to {})",
                        s.current_revision, s.update_revision
                    )
                }
            ),
        ),
        Err(e) => out.evidence("statefulset", format!("unknown: {e:?}")),
    }
}

/// Did the trouble start with the latest rollout? How old the current revision is, and whether
/// the one before it ran other images. Unreadable: no output a rule could act on.
fn rollout(out: Outcome, k8s: &dyn Kubernetes, ns: &str, name: &str) -> Outcome {
    let mut history = match k8s.rollout_history(ns, name) {
        Ok(h) => h,
        Err(e) => {
            return out.evidence(
                "rollout",
                format!("unknown: cannot read the rollout history: {e:?}"),
            );
        }
    };
    history.sort_by_key(|r| std::cmp::Reverse(r.revision));
    let Some(current) = history.first() else {
        return out.evidence("rollout", "no rollout history");
    };
    let out = out
        .output("revision", current.revision)
        .output("revision_age_s", format!("{:.0}", current.age_seconds));
    match history.get(1) {
        Some(previous) => out
            .output("previous_revision", previous.revision)
            .output("images_changed", previous.images != current.images)
            .evidence(
                "rollout",
                format!(
                    "revision {} ({}) rolled out {:.0}s ago; revision {} ran {}",
                    current.revision,
                    current.images.join(","),
                    current.age_seconds,
                    previous.revision,
                    previous.images.join(",")
                ),
            ),
        None => out.output("previous_revision", 0).evidence(
            "rollout",
            format!(
                "revision {} ({}) is the only one",
                current.revision,
                current.images.join(",")
            ),
        ),
    }
}

impl Step<dyn Kubernetes> for Pods {
    fn precondition(&self, ctx: &Context, _k8s: &dyn Kubernetes) -> Check {
        let named = ctx.param_str("deployment").is_ok() || ctx.param_str("pod").is_ok();
        match (ctx.param_str("namespace"), named) {
            (Ok(_), true) => Check::pass("the alert names a namespace and a deployment or pod"),
            (Err(_), _) => Check::fail("the alert has no `namespace` label: nothing to probe"),
            (Ok(_), false) => Check::fail(
                "the alert names neither a deployment nor a pod (labels `deployment`, `pod`): nothing to probe",
            ),
        }
    }

    fn action(&self, ctx: &Context, k8s: &dyn Kubernetes) -> Outcome {
        let Ok(ns) = ctx.param_str("namespace") else {
            return Outcome::failed("no namespace parameter");
        };
        let (name, from) = match deployment(ctx, k8s, ns) {
            Ok(found) => found,
            Err((why, Some(w))) if w.kind == "StatefulSet" => {
                return statefulset(Outcome::failed(why), k8s, ns, &w.name);
            }
            Err((why, _)) => return Outcome::failed(why),
        };
        let d = match k8s.get_deployment(ns, &name) {
            Ok(d) => d,
            Err(e) => {
                return Outcome::failed(format!(
                    "cannot read deployment {ns}/{name} ({from}): {e:?}"
                ));
            }
        };
        let base = Outcome::ok(format!(
            "{ns}/{name}: {}/{} ready",
            d.replicas_ready, d.replicas_desired
        ))
        .output("deployment", &name)
        .output("ready", d.replicas_ready)
        .output("desired", d.replicas_desired)
        // Mid-rollout (a new template not on every replica yet, or not yet observed): a crash
        // may be the new release's, which a restart rebuilds rather than fixes.
        .output(
            "rolling_out",
            d.replicas_updated < d.replicas_desired || d.observed_generation < d.generation,
        )
        .evidence("deployment", format!("{ns}/{name} ({from})"))
        .evidence(
            "ready",
            format!("{}/{}", d.replicas_ready, d.replicas_desired),
        );
        let base = rollout(base, k8s, ns, &name);
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
        let mut out = base
            .output("crashloop", crashloop)
            .output("oomkilled", oom)
            .output("restarts", restarts)
            .evidence("crashloop", crashloop)
            .evidence("oomkilled", oom);
        // The alert's own pod, as the rules need it: is it ready, and how many others are.
        let named = ctx
            .param_str("pod")
            .ok()
            .and_then(|named| pods.iter().find(|p| p.name == named));
        if let Some(pod) = named {
            let others_ready = pods
                .iter()
                .filter(|p| p.ready && p.name != pod.name)
                .count();
            out = out
                .output("pod_ready", pod.ready)
                .output("pod_phase", &pod.phase)
                // `none` rather than absent: rules match on these, and an absent fact would
                // fail every condition, `!=` included.
                .output("pod_reason", pod.reason.as_deref().unwrap_or("none"))
                .output("pod_node", pod.node.as_deref().unwrap_or("none"))
                .output("others_ready", others_ready)
                .evidence(
                    "pod",
                    format!(
                        "{} {}{}, {others_ready} other pod(s) ready",
                        pod.name,
                        pod.phase,
                        if pod.ready { ", ready" } else { ", not ready" }
                    ),
                );
        }
        // The alert's pod, else the first one not running well: its reason and its last lines.
        let failing = named.or_else(|| pods.iter().find(|p| p.reason.is_some()));
        if let Some(pod) = failing {
            if let Some(reason) = &pod.reason {
                out = out.evidence(
                    "reason",
                    format!("{} {reason} after {} restarts", pod.name, pod.restarts),
                );
            }
            match k8s.pod_logs(ns, &pod.name, LOG_LINES) {
                Ok(lines) => {
                    let tail = lines.len().saturating_sub(LOG_EVIDENCE);
                    for line in &lines[tail..] {
                        out = out.evidence("log", format!("{}: {line}", pod.name));
                    }
                }
                Err(e) => out = out.evidence("log", format!("unknown: {e:?}")),
            }
            // What the cluster said about it (back-off, failed probes, OOM kills, evictions):
            // evidence for the human, never a fact a rule acts on, so an unreadable event list
            // leaves no line rather than guessing.
            if let Ok(events) = k8s.list_events(ns, &pod.name) {
                for e in events
                    .iter()
                    .filter(|e| e.kind == "Warning")
                    .take(EVENT_EVIDENCE)
                {
                    out = out.evidence(
                        "event",
                        format!(
                            "{}: {} ×{} ({:.0}s ago): {}",
                            pod.name, e.reason, e.count, e.age_seconds, e.message
                        ),
                    );
                }
            }
        }
        out
    }

    fn postcondition(&self, _ctx: &Context, _k8s: &dyn Kubernetes) -> Check {
        Check::pass("probe recorded")
    }

    fn rollback(&self, _ctx: &Context, _k8s: &dyn Kubernetes) -> Check {
        Check::nothing_to_undo()
    }
}

themis_runbook_sdk::export_kubernetes_step!(Pods);

#[cfg(test)]
mod tests {
    use super::*;
    use themis_runbook_sdk::caps::k8s_types::{Deployment, Event, Pod, StatefulSet};
    use themis_runbook_sdk::mock::MockCaps;

    fn ctx(params: &[(&str, &str)]) -> Context {
        params
            .iter()
            .fold(Context::builder("KubePodCrashLooping"), |b, (k, v)| {
                b.param(k, ParamValue::Text((*v).into()))
            })
            .build()
    }

    fn deployment(name: &str) -> Deployment {
        Deployment {
            namespace: "shop".into(),
            name: name.into(),
            replicas_desired: 3,
            replicas_ready: 2,
            replicas_updated: 3,
            replicas_available: 2,
            generation: 4,
            observed_generation: 4,
            conditions: vec![],
        }
    }

    fn crashlooping(name: &str) -> Pod {
        Pod {
            name: name.into(),
            phase: "Running".into(),
            ready: false,
            restarts: 7,
            reason: Some("CrashLoopBackOff".into()),
            node: None,
        }
    }

    #[test]
    fn a_pod_alert_is_traced_to_its_deployment_with_the_pods_reason_and_last_lines() {
        let caps = MockCaps::new()
            .on(
                "k8s.pod-owner",
                Ok(Some(Workload {
                    kind: "Deployment".into(),
                    name: "checkout".into(),
                })),
            )
            .on("k8s.get-deployment", Ok(deployment("checkout")))
            .on(
                "k8s.list-pods",
                Ok(vec![crashlooping("checkout-7d9f-abcde")]),
            )
            .on(
                "k8s.pod-logs",
                Ok(vec!["starting".to_owned(), "panic: no DB_URL".to_owned()]),
            )
            .on(
                "k8s.list-events",
                Ok(vec![
                    event("Normal", "Pulled", "image present"),
                    event("Warning", "BackOff", "Back-off restarting failed container"),
                ]),
            );
        let ctx = ctx(&[("namespace", "shop"), ("pod", "checkout-7d9f-abcde")]);
        assert!(Pods.precondition(&ctx, &caps).passed());
        let out = Pods.action(&ctx, &caps);
        assert!(out.is_ok(), "{}", out.summary());
        assert_eq!(out.output_value("deployment"), Some("checkout"));
        assert_eq!(out.output_value("crashloop"), Some("1"));
        assert_eq!(out.output_value("pod_ready"), Some("false"));
        assert_eq!(out.output_value("others_ready"), Some("0"));
        assert_eq!(
            out.evidence_value("reason"),
            Some("checkout-7d9f-abcde CrashLoopBackOff after 7 restarts")
        );
        assert_eq!(
            out.evidence_value("log"),
            Some("checkout-7d9f-abcde: starting")
        );
        // Only warnings, as the cluster counted them.
        assert_eq!(
            out.evidence_value("event"),
            Some("checkout-7d9f-abcde: BackOff ×5 (30s ago): Back-off restarting failed container")
        );
    }

    fn event(kind: &str, reason: &str, message: &str) -> Event {
        Event {
            kind: kind.into(),
            reason: reason.into(),
            message: message.into(),
            object_kind: "Pod".into(),
            object_name: "checkout-7d9f-abcde".into(),
            count: 5,
            age_seconds: 30.0,
        }
    }

    #[test]
    fn a_pod_no_deployment_controls_is_said_in_words_and_nothing_is_read_further() {
        for (owner, expect) in [
            (None, "found no controller"),
            (
                Some(Workload {
                    kind: "StatefulSet".into(),
                    name: "db".into(),
                }),
                "belongs to StatefulSet db",
            ),
        ] {
            let caps = MockCaps::new().on("k8s.pod-owner", Ok(owner));
            let out = Pods.action(&ctx(&[("namespace", "shop"), ("pod", "db-0")]), &caps);
            assert!(!out.is_ok());
            assert!(out.summary().contains("has `pod` db-0 but no `deployment`"));
            assert!(out.summary().contains(expect), "{}", out.summary());
        }
        // A StatefulSet's pod: its rollout, read, is evidence; nothing else is read.
        let caps = MockCaps::new()
            .on(
                "k8s.pod-owner",
                Ok(Some(Workload {
                    kind: "StatefulSet".into(),
                    name: "db".into(),
                })),
            )
            .on(
                "k8s.get-statefulset",
                Ok(StatefulSet {
                    namespace: "shop".into(),
                    name: "db".into(),
                    replicas_desired: 3,
                    replicas_ready: 2,
                    replicas_updated: 1,
                    current_revision: "db-6d5".into(),
                    update_revision: "db-7f9".into(),
                    generation: 2,
                    observed_generation: 2,
                }),
            );
        let out = Pods.action(&ctx(&[("namespace", "shop"), ("pod", "db-0")]), &caps);
        assert!(!out.is_ok());
        assert_eq!(
            out.evidence_value("statefulset"),
            Some("shop/db: 2/3 ready, 1 on the update revision (rolling from db-6d5 to db-7f9)")
        );
        assert_eq!(caps.calls().len(), 2, "the owner and its StatefulSet");
    }

    #[test]
    fn without_a_namespace_or_a_workload_the_precondition_says_which() {
        let caps = MockCaps::new();
        let none = Pods.precondition(&ctx(&[("pod", "p")]), &caps);
        assert!(!none.passed());
        assert!(none.summary().contains("no `namespace`"));
        let neither = Pods.precondition(&ctx(&[("namespace", "shop")]), &caps);
        assert!(neither.summary().contains("neither a deployment nor a pod"));
    }
}
