//! Kubernetes objects as the WIT records steps see.

use k8s_openapi::api::apps::v1::{
    Deployment as K8sDeployment, ReplicaSet, StatefulSet as K8sStatefulSet,
};
use k8s_openapi::api::core::v1::{Event as K8sEvent, Pod as K8sPod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use themis_caps::types::{Condition, Deployment, Event, Pod, Revision, StatefulSet};

const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH: &str = "pod-template-hash";

fn count(n: Option<i32>) -> u32 {
    u32::try_from(n.unwrap_or(0)).unwrap_or(0)
}

pub fn deployment(namespace: &str, name: &str, d: &K8sDeployment) -> Deployment {
    let spec = d.spec.as_ref();
    let status = d.status.as_ref();
    Deployment {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        // An unset `replicas` means one, as the API server defaults it.
        replicas_desired: count(Some(spec.and_then(|s| s.replicas).unwrap_or(1))),
        replicas_ready: count(status.and_then(|s| s.ready_replicas)),
        replicas_updated: count(status.and_then(|s| s.updated_replicas)),
        replicas_available: count(status.and_then(|s| s.available_replicas)),
        generation: d.metadata.generation.unwrap_or(0),
        observed_generation: status.and_then(|s| s.observed_generation).unwrap_or(0),
        conditions: status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .map(|c| Condition {
                kind: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone().unwrap_or_default(),
                message: c.message.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

pub fn statefulset(namespace: &str, name: &str, s: &K8sStatefulSet) -> StatefulSet {
    let spec = s.spec.as_ref();
    let status = s.status.as_ref();
    StatefulSet {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        replicas_desired: count(Some(spec.and_then(|s| s.replicas).unwrap_or(1))),
        replicas_ready: count(status.and_then(|s| s.ready_replicas)),
        replicas_updated: count(status.and_then(|s| s.updated_replicas)),
        current_revision: status
            .and_then(|s| s.current_revision.clone())
            .unwrap_or_default(),
        update_revision: status
            .and_then(|s| s.update_revision.clone())
            .unwrap_or_default(),
        generation: s.metadata.generation.unwrap_or(0),
        observed_generation: status.and_then(|s| s.observed_generation).unwrap_or(0),
    }
}

/// When an event last happened: its last timestamp, else its (series) event time, else when it
/// was first seen or made.
fn last_seen(e: &K8sEvent) -> Option<Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Events newest first, at most `max`, each with its age at `now`.
pub fn events(mut list: Vec<K8sEvent>, now: Timestamp, max: usize) -> Vec<Event> {
    list.sort_by_key(|e| std::cmp::Reverse(last_seen(e)));
    list.iter()
        .take(max)
        .map(|e| Event {
            kind: e.type_.clone().unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
            object_kind: e.involved_object.kind.clone().unwrap_or_default(),
            object_name: e.involved_object.name.clone().unwrap_or_default(),
            count: e.count.map_or(1, |c| u32::try_from(c).unwrap_or(0)),
            age_seconds: last_seen(e).map_or(0.0, |t| {
                (now.as_millisecond() - t.as_millisecond()).max(0) as f64 / 1000.0
            }),
        })
        .collect()
}

pub fn pod(p: &K8sPod) -> Pod {
    let status = p.status.as_ref();
    let containers = status
        .and_then(|s| s.container_statuses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let restarts = containers
        .iter()
        .map(|c| u32::try_from(c.restart_count).unwrap_or(0))
        .sum();
    // Why it is not running: a container waiting (CrashLoopBackOff, ImagePullBackOff), or
    // terminated now or last time (OOMKilled, Error); else the pod's own reason (Evicted).
    let reason = containers
        .iter()
        .find_map(|c| {
            let state = c.state.as_ref();
            state
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.clone())
                .or_else(|| {
                    state
                        .and_then(|s| s.terminated.as_ref())
                        .and_then(|t| t.reason.clone())
                })
        })
        .or_else(|| {
            containers.iter().find_map(|c| {
                c.last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .and_then(|t| t.reason.clone())
            })
        })
        .or_else(|| status.and_then(|s| s.reason.clone()));
    Pod {
        name: p.metadata.name.clone().unwrap_or_default(),
        phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
        ready,
        restarts,
        reason,
        node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
    }
}

pub fn controller(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
}

/// `k=v,k=v` of a deployment's `matchLabels`.
pub fn match_labels(d: &K8sDeployment) -> Option<String> {
    let labels = d.spec.as_ref()?.selector.match_labels.as_ref()?;
    Some(
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

pub fn revision(rs: &ReplicaSet) -> Option<i64> {
    rs.metadata
        .annotations
        .as_ref()?
        .get(REVISION)?
        .parse()
        .ok()
}

pub fn revision_of(revision: i64, rs: &ReplicaSet) -> Revision {
    let created = serde_json::to_value(&rs.metadata.creation_timestamp)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .and_then(|t| humantime::parse_rfc3339_weak(&t).ok());
    Revision {
        revision,
        replica_set: rs.metadata.name.clone().unwrap_or_default(),
        images: rs
            .spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .and_then(|t| t.spec.as_ref())
            .map(|s| {
                s.containers
                    .iter()
                    .filter_map(|c| c.image.clone())
                    .collect()
            })
            .unwrap_or_default(),
        age_seconds: created
            .and_then(|c| std::time::SystemTime::now().duration_since(c).ok())
            .map_or(0.0, |d| d.as_secs_f64()),
        ready: count(rs.status.as_ref().and_then(|s| s.ready_replicas)),
    }
}

/// The revision's pod template as `kubectl rollout undo` puts it back: its own labels without
/// the replica set's `pod-template-hash`, replacing the deployment's template whole.
pub fn template_for_undo(rs: &ReplicaSet) -> Option<Value> {
    let template = rs.spec.as_ref()?.template.as_ref()?;
    let mut v = serde_json::to_value(template).ok()?;
    if let Some(labels) = v
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH);
    }
    if let Some(m) = v.as_object_mut() {
        m.insert("$patch".into(), Value::String("replace".into()));
    }
    Some(v)
}
