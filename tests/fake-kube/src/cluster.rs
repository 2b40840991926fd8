//! The fake cluster's state: objects as the JSON the API server stores, a resourceVersion
//! counter, watch events, and the controller that turns deployments into replica sets and pods
//! the way the deployment and replica-set controllers do (one pod at a time per tick, so a
//! rollout takes visible time).

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::SystemTime;
use tokio::sync::broadcast;

/// Resources this fake serves, by their plural names.
pub const PODS: &str = "pods";
pub const DEPLOYMENTS: &str = "deployments";
pub const REPLICASETS: &str = "replicasets";
pub const NAMESPACES: &str = "namespaces";
pub const EVENTS: &str = "events";
pub const STATEFULSETS: &str = "statefulsets";
/// Strimzi's `Kafka` (kafka.strimzi.io/v1beta2): no operator here, the resource is stored as
/// written.
pub const KAFKAS: &str = "kafkas";

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const HASH: &str = "pod-template-hash";

/// One change, as a watch streams it.
#[derive(Debug, Clone)]
pub struct Event {
    pub resource: &'static str,
    pub namespace: String,
    pub kind: &'static str,
    pub object: Value,
}

pub struct Cluster {
    rv: u64,
    uid: u64,
    /// (resource, namespace, name) → object.
    objects: BTreeMap<(&'static str, String, String), Value>,
    /// (verb, resource) pairs the configured role lacks: 403.
    pub denied: Vec<(String, String)>,
    pub events: broadcast::Sender<Event>,
    /// Log lines of each pod (namespace, pod).
    pub logs: BTreeMap<(String, String), Vec<String>>,
    /// The next this many writes guarded by a resourceVersion lose a race to another writer.
    pub races: u32,
}

pub fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Resources whose spec changes count in `metadata.generation` (those with a status the
/// controller reports `observedGeneration` in).
fn generational(resource: &str) -> bool {
    matches!(resource, DEPLOYMENTS | STATEFULSETS | KAFKAS)
}

pub fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        PODS => ("Pod", "v1"),
        DEPLOYMENTS => ("Deployment", "apps/v1"),
        REPLICASETS => ("ReplicaSet", "apps/v1"),
        KAFKAS => ("Kafka", "kafka.strimzi.io/v1beta2"),
        EVENTS => ("Event", "v1"),
        STATEFULSETS => ("StatefulSet", "apps/v1"),
        _ => ("Namespace", "v1"),
    }
}

impl Cluster {
    pub fn new() -> Cluster {
        let (events, _) = broadcast::channel(1024);
        let mut c = Cluster {
            rv: 1000,
            uid: 0,
            objects: BTreeMap::new(),
            denied: Vec::new(),
            events,
            logs: BTreeMap::new(),
            races: 0,
        };
        for ns in ["default", "kube-system"] {
            c.ensure_namespace(ns);
        }
        c
    }

    pub fn ensure_namespace(&mut self, ns: &str) {
        if self.get(NAMESPACES, "", ns).is_none() {
            self.create(
                NAMESPACES,
                "",
                json!({ "metadata": { "name": ns }, "status": { "phase": "Active" } }),
            );
        }
    }

    pub fn get(&self, resource: &'static str, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(resource, ns.to_owned(), name.to_owned()))
    }

    /// Every object of a resource in a namespace (all namespaces: `None`), in name order.
    pub fn list(&self, resource: &'static str, ns: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((r, n, _), _)| *r == resource && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn resource_version(&self) -> String {
        self.rv.to_string()
    }

    /// Store a new object: apiVersion/kind, uid, resourceVersion, creationTimestamp, and for a
    /// deployment or a Kafka its generation.
    pub fn create(&mut self, resource: &'static str, ns: &str, mut object: Value) -> Value {
        self.rv += 1;
        self.uid += 1;
        let (kind, api) = kind_of(resource);
        object["kind"] = json!(kind);
        object["apiVersion"] = json!(api);
        let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let meta = &mut object["metadata"];
        if !ns.is_empty() {
            meta["namespace"] = json!(ns);
        }
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", self.uid));
        meta["resourceVersion"] = json!(self.rv.to_string());
        meta["creationTimestamp"] = json!(now());
        if generational(resource) {
            meta["generation"] = json!(1);
        }
        self.objects
            .insert((resource, ns.to_owned(), name), object.clone());
        self.emit(resource, ns, "ADDED", &object);
        object
    }

    /// Replace an object as stored (a write that passed its checks); bumps resourceVersion and,
    /// when a deployment's or a Kafka's spec changed, its generation.
    pub fn put(&mut self, resource: &'static str, ns: &str, mut object: Value) -> Value {
        let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let key = (resource, ns.to_owned(), name);
        if let Some(old) = self.objects.get(&key) {
            if *old == object {
                return object;
            }
            if generational(resource) && old["spec"] != object["spec"] {
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                object["metadata"]["generation"] = json!(generation + 1);
            }
        }
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key, object.clone());
        self.emit(resource, ns, "MODIFIED", &object);
        object
    }

    pub fn delete(&mut self, resource: &'static str, ns: &str, name: &str) -> Option<Value> {
        let object = self
            .objects
            .remove(&(resource, ns.to_owned(), name.to_owned()))?;
        self.rv += 1;
        self.logs.remove(&(ns.to_owned(), name.to_owned()));
        self.emit(resource, ns, "DELETED", &object);
        Some(object)
    }

    fn emit(&self, resource: &'static str, ns: &str, kind: &'static str, object: &Value) {
        let _ = self.events.send(Event {
            resource,
            namespace: ns.to_owned(),
            kind,
            object: object.clone(),
        });
    }

    /// One controller pass over every deployment. Returns whether anything changed.
    pub fn reconcile(&mut self) -> bool {
        let deployments: Vec<Value> = self.list(DEPLOYMENTS, None);
        let mut changed = false;
        for d in deployments {
            changed |= self.reconcile_deployment(&d);
        }
        changed
    }

    fn reconcile_deployment(&mut self, d: &Value) -> bool {
        let ns = d["metadata"]["namespace"].as_str().unwrap_or("").to_owned();
        let name = d["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let uid = d["metadata"]["uid"].clone();
        let desired = d["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
        let template = d["spec"]["template"].clone();
        let hash = template_hash(&template);
        let owned: Vec<Value> = self
            .list(REPLICASETS, Some(&ns))
            .into_iter()
            .filter(|rs| owner_uid(rs) == Some(&uid))
            .collect();
        let max_revision = owned.iter().filter_map(revision).max().unwrap_or(0);
        let mut changed = false;
        // The replica set of the current template: made, or (a rollback) given the newest revision.
        let current_name = format!("{name}-{hash}");
        match owned
            .iter()
            .find(|rs| rs["metadata"]["name"] == current_name.as_str())
        {
            None => {
                let mut labels = template["metadata"]["labels"].clone();
                if !labels.is_object() {
                    labels = json!({});
                }
                labels[HASH] = json!(hash);
                let mut rs_template = template.clone();
                rs_template["metadata"]["labels"] = labels.clone();
                self.create(
                    REPLICASETS,
                    &ns,
                    json!({
                        "metadata": {
                            "name": current_name, "labels": labels,
                            "annotations": { REVISION: (max_revision + 1).to_string() },
                            "ownerReferences": [ { "apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true } ],
                        },
                        "spec": { "replicas": 0, "selector": { "matchLabels": labels }, "template": rs_template },
                        "status": { "replicas": 0, "readyReplicas": 0, "availableReplicas": 0 },
                    }),
                );
                changed = true;
            }
            Some(rs) if revision(rs) != Some(max_revision) => {
                let mut rs = rs.clone();
                rs["metadata"]["annotations"][REVISION] = json!((max_revision + 1).to_string());
                self.put(REPLICASETS, &ns, rs);
                changed = true;
            }
            Some(_) => {}
        }
        // Scale: the current set towards the desired count, the others towards none, one pod
        // per pass.
        let owned: Vec<Value> = self
            .list(REPLICASETS, Some(&ns))
            .into_iter()
            .filter(|rs| owner_uid(rs) == Some(&uid))
            .collect();
        for rs in &owned {
            let rs_name = rs["metadata"]["name"].as_str().unwrap_or("").to_owned();
            let want = if rs_name == current_name { desired } else { 0 };
            let pods = self.pods_of(&ns, rs);
            let have = pods.len() as i64;
            if have < want {
                self.make_pod(&ns, rs);
                changed = true;
            } else if have > want
                && let Some(p) = pods.last()
            {
                let pod = p["metadata"]["name"].as_str().unwrap_or("").to_owned();
                self.delete(PODS, &ns, &pod);
                changed = true;
            }
            let pods = self.pods_of(&ns, rs);
            let ready = pods.iter().filter(|p| pod_ready(p)).count() as i64;
            let status = json!({ "replicas": pods.len(), "readyReplicas": ready, "availableReplicas": ready, "fullyLabeledReplicas": pods.len(), "observedGeneration": 1 });
            if rs["spec"]["replicas"] != json!(want) || rs["status"] != status {
                let mut rs = self
                    .get(REPLICASETS, &ns, &rs_name)
                    .cloned()
                    .unwrap_or_else(|| rs.clone());
                rs["spec"]["replicas"] = json!(want);
                rs["status"] = status;
                self.put(REPLICASETS, &ns, rs);
                changed = true;
            }
        }
        // The deployment's status as the deployment controller reports it.
        let (mut total, mut updated, mut ready) = (0i64, 0i64, 0i64);
        for rs in &owned {
            let pods = self.pods_of(&ns, rs);
            total += pods.len() as i64;
            let r = pods.iter().filter(|p| pod_ready(p)).count() as i64;
            ready += r;
            if rs["metadata"]["name"] == current_name.as_str() {
                updated += pods.len() as i64;
            }
        }
        let complete = updated == desired && total == desired && ready == desired;
        let status = json!({
            "observedGeneration": d["metadata"]["generation"],
            "replicas": total, "updatedReplicas": updated, "readyReplicas": ready,
            "availableReplicas": ready, "unavailableReplicas": (desired - ready).max(0),
            "conditions": [
                { "type": "Available", "status": if ready >= desired { "True" } else { "False" }, "reason": if ready >= desired { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" }, "message": "Deployment has minimum availability." },
                { "type": "Progressing", "status": "True", "reason": if complete { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" }, "message": format!("ReplicaSet \"{current_name}\" is progressing.") },
            ],
        });
        if let Some(now) = self.get(DEPLOYMENTS, &ns, &name).cloned()
            && now["status"] != status
        {
            let mut now = now;
            now["status"] = status;
            // A status write does not change the generation (only spec does).
            self.put(DEPLOYMENTS, &ns, now);
            changed = true;
        }
        changed
    }

    fn pods_of(&self, ns: &str, rs: &Value) -> Vec<Value> {
        let uid = &rs["metadata"]["uid"];
        self.list(PODS, Some(ns))
            .into_iter()
            .filter(|p| owner_uid(p) == Some(uid))
            .collect()
    }

    fn make_pod(&mut self, ns: &str, rs: &Value) {
        self.uid += 1;
        let rs_name = rs["metadata"]["name"].as_str().unwrap_or("");
        let suffix: String =
            hex::encode(Sha256::digest(format!("{rs_name}{}", self.uid)))[..5].to_owned();
        let name = format!("{rs_name}-{suffix}");
        let template = &rs["spec"]["template"];
        let containers = template["spec"]["containers"].clone();
        let statuses: Vec<Value> = containers
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| json!({ "name": c["name"], "image": c["image"], "ready": true, "restartCount": 0, "started": true, "state": { "running": { "startedAt": now() } } }))
            .collect();
        self.create(
            PODS,
            ns,
            json!({
                "metadata": {
                    "name": name, "labels": template["metadata"]["labels"],
                    "ownerReferences": [ { "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name, "uid": rs["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true } ],
                },
                "spec": { "containers": containers, "nodeName": "fake-node-1" },
                "status": { "phase": "Running", "conditions": [ { "type": "Ready", "status": "True" } ], "containerStatuses": statuses },
            }),
        );
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new()
    }
}

/// The hash the replica set of a template is named by (10 hex digits, like the controller's).
pub fn template_hash(template: &Value) -> String {
    let mut t = template.clone();
    if let Some(labels) = t["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH);
    }
    hex::encode(Sha256::digest(t.to_string()))[..10].to_owned()
}

fn owner_uid(object: &Value) -> Option<&Value> {
    object["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|o| o["controller"] == true)
        .map(|o| &o["uid"])
}

fn revision(rs: &Value) -> Option<i64> {
    rs["metadata"]["annotations"][REVISION]
        .as_str()?
        .parse()
        .ok()
}

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// JSON merge patch (RFC 7386), plus strategic merge's `$patch: replace` on a map (what
/// `kubectl rollout undo` sends for a pod template). Lists are replaced whole, as a merge patch
/// does; a real server merges some lists by key under a strategic patch (containers by name):
/// the agent never patches a list, kubectl's commands here do not either.
pub fn merge(target: &mut Value, patch: &Value) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = patch.clone();
        if let Some(m) = replaced.as_object_mut() {
            m.remove("$patch");
        }
        *target = replaced;
        return;
    }
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in patch_map {
        if v.is_null() {
            if let Some(t) = target.as_object_mut() {
                t.remove(k);
            }
        } else {
            merge(&mut target[k.as_str()], v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i64) -> Value {
        json!({
            "metadata": { "name": "web" },
            "spec": {
                "replicas": replicas,
                "selector": { "matchLabels": { "app": "web" } },
                "template": { "metadata": { "labels": { "app": "web" } }, "spec": { "containers": [ { "name": "web", "image": "web:1" } ] } },
            },
        })
    }

    fn settle(c: &mut Cluster) {
        for _ in 0..50 {
            if !c.reconcile() {
                return;
            }
        }
        panic!("the controller never settled");
    }

    #[test]
    fn a_deployment_gets_a_replica_set_and_pods_and_rolls_on_a_template_change() {
        let mut c = Cluster::new();
        c.create(DEPLOYMENTS, "default", deployment(3));
        settle(&mut c);
        assert_eq!(c.list(PODS, Some("default")).len(), 3);
        let d = c
            .get(DEPLOYMENTS, "default", "web")
            .cloned()
            .expect("deployment");
        assert_eq!(d["status"]["updatedReplicas"], 3);
        assert_eq!(d["status"]["observedGeneration"], 1);

        let mut changed = d.clone();
        merge(
            &mut changed,
            &json!({ "spec": { "template": { "metadata": { "annotations": { "kubectl.kubernetes.io/restartedAt": "now" } } } } }),
        );
        c.put(DEPLOYMENTS, "default", changed);
        settle(&mut c);
        let d = c
            .get(DEPLOYMENTS, "default", "web")
            .cloned()
            .expect("deployment");
        assert_eq!(d["metadata"]["generation"], 2);
        assert_eq!(d["status"]["observedGeneration"], 2);
        assert_eq!(d["status"]["updatedReplicas"], 3);
        let sets = c.list(REPLICASETS, Some("default"));
        assert_eq!(sets.len(), 2);
        let revisions: Vec<i64> = sets.iter().filter_map(revision).collect();
        assert!(revisions.contains(&2), "{revisions:?}");
    }

    #[test]
    fn merge_patch_sets_removes_and_replaces() {
        let mut v = json!({ "a": { "b": 1, "c": 2 }, "l": [1, 2] });
        merge(&mut v, &json!({ "a": { "b": null, "d": 3 }, "l": [3] }));
        assert_eq!(v, json!({ "a": { "c": 2, "d": 3 }, "l": [3] }));
        merge(&mut v, &json!({ "a": { "$patch": "replace", "x": 1 } }));
        assert_eq!(v["a"], json!({ "x": 1 }));
    }
}
