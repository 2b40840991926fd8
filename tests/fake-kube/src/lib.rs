//! A fake Kubernetes API server for tests: the real REST paths and JSON shapes for what the
//! Kubernetes agent uses, served over plain HTTP on loopback.
//!
//! - discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/apps/v1`;
//! - core/v1 namespaces, pods (list by label selector or `metadata.name` field selector, get,
//!   delete, `log` with `tailLines`);
//! - apps/v1 deployments (list, get, JSON merge and strategic merge patch, update with
//!   `resourceVersion` → 409 on conflict, the `scale` subresource by get/patch/update, `status`),
//!   replica sets (list, get);
//! - core/v1 events and apps/v1 statefulsets (with `status`), stored as written: no controller
//!   makes events or rolls a statefulset's pods; a test writes what it needs;
//! - list field selectors on `metadata.name`, `involvedObject.name` and `involvedObject.kind`;
//! - kafka.strimzi.io/v1beta2 `kafkas` (Strimzi's `Kafka`: get, list, merge patch; stored as
//!   written, no operator rolls the brokers);
//! - `watch=true` on lists: newline-delimited watch events until `timeoutSeconds`;
//! - 403 with the API server's message for every (verb, resource) the configured role lacks;
//! - a controller: each deployment gets the replica set of its template (revision annotation,
//!   `pod-template-hash`), pods follow one per tick, status reports observedGeneration and
//!   updated/ready/available replicas; a deleted pod is replaced.
//!
//! Not served: protobuf (the JSON alternative every client accepts is sent), server-side
//! printing (`kubectl get` without `-o` prints its own default columns from the JSON), admission,
//! finalizers (a delete is immediate, as for a pod without them).
//! `tests/e2e/kube.rs` checks this fake with the real `kubectl`.

pub mod cluster;
pub mod select;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cluster::{Cluster, DEPLOYMENTS, EVENTS, KAFKAS, NAMESPACES, PODS, REPLICASETS, STATEFULSETS};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

type Shared = Arc<Mutex<Cluster>>;

/// A running fake API server; stops when dropped.
pub struct FakeKube {
    pub url: String,
    cluster: Shared,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock(c: &Shared) -> MutexGuard<'_, Cluster> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeKube {
    /// Listen on a free loopback port; the controller ticks every `tick`.
    pub async fn start(tick: Duration) -> std::io::Result<FakeKube> {
        let cluster: Shared = Arc::new(Mutex::new(Cluster::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(cluster.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let c = cluster.clone();
        let controller = tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                lock(&c).reconcile();
            }
        });
        Ok(FakeKube {
            url,
            cluster,
            tasks: vec![server, controller],
        })
    }

    /// Change the cluster directly (a test's setup or a concurrent writer).
    pub fn with<R>(&self, f: impl FnOnce(&mut Cluster) -> R) -> R {
        f(&mut lock(&self.cluster))
    }

    /// The configured role lacks `verb` on `resource` (e.g. `patch`, `deployments/scale`).
    pub fn deny(&self, verb: &str, resource: &str) {
        lock(&self.cluster)
            .denied
            .push((verb.into(), resource.into()));
    }

    /// A deployment `name` in `ns` of `replicas` pods running `image`, labelled `app: name`.
    pub fn deployment(&self, ns: &str, name: &str, replicas: u32, image: &str) -> Value {
        let mut c = lock(&self.cluster);
        c.ensure_namespace(ns);
        c.create(
            DEPLOYMENTS,
            ns,
            json!({
                "metadata": { "name": name, "labels": { "app": name } },
                "spec": {
                    "replicas": replicas, "revisionHistoryLimit": 10,
                    "selector": { "matchLabels": { "app": name } },
                    "template": {
                        "metadata": { "labels": { "app": name } },
                        "spec": { "containers": [ { "name": name, "image": image } ] },
                    },
                },
            }),
        )
    }

    /// Strimzi's broker pods `<cluster>-kafka-<id>` for `ids` in `ns`, running and labelled with
    /// their cluster, as its operator makes them (no controller here replaces a deleted one).
    pub fn broker_pods(&self, ns: &str, cluster: &str, ids: impl IntoIterator<Item = i32>) {
        let mut c = lock(&self.cluster);
        c.ensure_namespace(ns);
        for id in ids {
            c.create(
                PODS,
                ns,
                json!({
                    "metadata": { "name": format!("{cluster}-kafka-{id}"), "labels": { "strimzi.io/cluster": cluster } },
                    "spec": { "containers": [] }, "status": { "phase": "Running" },
                }),
            );
        }
    }

    /// An event about `object` (`kind`, `name`) in `ns`: `type_` `Normal` or `Warning`, seen
    /// `count` times, last `age` ago.
    #[allow(clippy::too_many_arguments)]
    pub fn event(
        &self,
        ns: &str,
        (kind, name): (&str, &str),
        type_: &str,
        reason: &str,
        message: &str,
        count: u32,
        age: Duration,
    ) -> Value {
        let mut c = lock(&self.cluster);
        c.ensure_namespace(ns);
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now() - age).to_string();
        let id = c.resource_version();
        c.create(
            EVENTS,
            ns,
            json!({
                "metadata": { "name": format!("{name}.{id}") },
                "involvedObject": { "kind": kind, "name": name, "namespace": ns },
                "type": type_, "reason": reason, "message": message, "count": count,
                "firstTimestamp": at, "lastTimestamp": at,
                "source": { "component": "themis-fake" },
            }),
        )
    }

    /// A Strimzi `Kafka` `name` in `ns` with `spec` (as a Strimzi user writes it).
    pub fn strimzi_kafka(&self, ns: &str, name: &str, spec: Value) -> Value {
        let mut c = lock(&self.cluster);
        c.ensure_namespace(ns);
        c.create(
            KAFKAS,
            ns,
            json!({ "metadata": { "name": name }, "spec": spec }),
        )
    }

    /// The next `n` writes guarded by a resourceVersion find the object changed by someone else.
    pub fn races(&self, n: u32) {
        lock(&self.cluster).races = n;
    }

    /// Merge `status` into a pod's status (a crash loop, a restart count).
    pub fn pod_status(&self, ns: &str, pod: &str, status: Value) -> bool {
        let mut c = lock(&self.cluster);
        let Some(mut p) = c.get(PODS, ns, pod).cloned() else {
            return false;
        };
        cluster::merge(&mut p["status"], &status);
        c.put(PODS, ns, p);
        true
    }

    pub fn logs(&self, ns: &str, pod: &str, lines: &[&str]) {
        lock(&self.cluster).logs.insert(
            (ns.into(), pod.into()),
            lines.iter().map(|l| (*l).to_owned()).collect(),
        );
    }

    /// Pods of `ns` (names, in order).
    pub fn pods(&self, ns: &str) -> Vec<String> {
        lock(&self.cluster)
            .list(PODS, Some(ns))
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
            .collect()
    }

    pub fn get(&self, resource: &'static str, ns: &str, name: &str) -> Option<Value> {
        lock(&self.cluster).get(resource, ns, name).cloned()
    }

    /// Wait until the controller has nothing left to do for `name` (rolled out), at most `limit`.
    pub async fn rolled_out(&self, ns: &str, name: &str, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if let Some(d) = self.get(DEPLOYMENTS, ns, name) {
                let s = &d["status"];
                let want = &d["spec"]["replicas"];
                if s["observedGeneration"] == d["metadata"]["generation"]
                    && &s["updatedReplicas"] == want
                    && &s["replicas"] == want
                    && &s["availableReplicas"] == want
                {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// A kubeconfig in `dir` naming this server (plain HTTP, a token nobody checks), for kubectl
    /// and for the Kubernetes backend.
    pub fn kubeconfig(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let file = dir.join("kubeconfig");
        std::fs::write(
            &file,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: themis\n    namespace: default\n\
                 users:\n- name: themis\n  user:\n    token: fake-token\n",
                self.url
            ),
        )?;
        Ok(file)
    }
}

/// Where a request goes.
#[derive(Debug)]
struct Target {
    group: &'static str,
    resource: &'static str,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", "apps", "v1", rest @ ..] => ("apps", rest),
        ["apis", "kafka.strimzi.io", "v1beta2", rest @ ..] => ("kafka.strimzi.io", rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let resource = match (group, rest.first()?) {
        ("", &"pods") => PODS,
        ("", &"namespaces") => NAMESPACES,
        ("", &"events") => EVENTS,
        ("apps", &"statefulsets") => STATEFULSETS,
        ("apps", &"deployments") => DEPLOYMENTS,
        ("apps", &"replicasets") => REPLICASETS,
        ("kafka.strimzi.io", &"kafkas") => KAFKAS,
        _ => return None,
    };
    Some(Target {
        group,
        resource,
        namespace,
        name: rest.get(1).map(|s| (*s).to_owned()),
        sub: rest.get(2).map(|s| (*s).to_owned()),
    })
}

fn status(code: StatusCode, reason: &str, message: String, details: Value) -> Response {
    (
        code,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "details": details, "code": code.as_u16(),
        })),
    )
        .into_response()
}

fn not_found(t: &Target, name: &str) -> Response {
    let res = qualified(t);
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{res} \"{name}\" not found"),
        json!({ "name": name, "group": t.group, "kind": t.resource }),
    )
}

/// `pods`, `deployments.apps`: how the API server names a resource in messages.
fn qualified(t: &Target) -> String {
    if t.group.is_empty() {
        t.resource.to_owned()
    } else {
        format!("{}.{}", t.resource, t.group)
    }
}

fn list_of(resource: &'static str, items: Vec<Value>, rv: String) -> Value {
    let (kind, api) = cluster::kind_of(resource);
    json!({ "kind": format!("{kind}List"), "apiVersion": api, "metadata": { "resourceVersion": rv }, "items": items })
}

async fn handle(
    State(c): State<Shared>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    if method == Method::GET
        && let Some(doc) = discovery(path)
    {
        return axum::Json(doc).into_response();
    }
    let Some(t) = parse_path(path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource".into(),
            json!({}),
        );
    };
    let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (&method, &t.name) {
        (&Method::GET, None) if watch => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::PATCH, _) => "patch",
        (&Method::PUT, _) => "update",
        (&Method::DELETE, _) => "delete",
        (&Method::POST, _) => "create",
        _ => {
            return status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!(
                    "the server does not allow this method on the requested resource ({method})"
                ),
                json!({}),
            );
        }
    };
    let rbac_resource = match &t.sub {
        Some(sub) => format!("{}/{sub}", t.resource),
        None => t.resource.to_owned(),
    };
    let denied = lock(&c)
        .denied
        .iter()
        .any(|(v, r)| v == verb && *r == rbac_resource);
    if denied {
        let ns = t.namespace.clone().unwrap_or_default();
        let who = "User \"system:serviceaccount:themis:themis\"";
        let message = match &t.name {
            Some(name) => format!(
                "{} \"{name}\" is forbidden: {who} cannot {verb} resource \"{rbac_resource}\" in API group \"{}\" in the namespace \"{ns}\"",
                qualified(&t),
                t.group
            ),
            None => format!(
                "{} is forbidden: {who} cannot {verb} resource \"{rbac_resource}\" in API group \"{}\" in the namespace \"{ns}\"",
                qualified(&t),
                t.group
            ),
        };
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            message,
            json!({ "name": t.name, "group": t.group, "kind": t.resource }),
        );
    }
    let ns = t.namespace.clone().unwrap_or_default();
    if t.resource != NAMESPACES
        && t.namespace.is_some()
        && lock(&c).get(NAMESPACES, "", &ns).is_none()
    {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("namespaces \"{ns}\" not found"),
            json!({ "name": ns, "kind": "namespaces" }),
        );
    }
    match (verb, t.name.clone(), t.sub.as_deref()) {
        ("list" | "watch", None, None) => list(&c, &t, &q, watch),
        ("get", Some(name), None) => match lock(&c).get(t.resource, &ns, &name) {
            Some(o) => axum::Json(o.clone()).into_response(),
            None => not_found(&t, &name),
        },
        ("get", Some(name), Some("log")) if t.resource == PODS => {
            let c = lock(&c);
            if c.get(PODS, &ns, &name).is_none() {
                return not_found(&t, &name);
            }
            let lines = c.logs.get(&(ns.clone(), name)).cloned().unwrap_or_default();
            let tail = q
                .get("tailLines")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(lines.len());
            let from = lines.len().saturating_sub(tail);
            let mut text = lines[from..].join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            ([("content-type", "text/plain")], text).into_response()
        }
        ("get", Some(name), Some("status")) => match lock(&c).get(t.resource, &ns, &name) {
            Some(o) => axum::Json(o.clone()).into_response(),
            None => not_found(&t, &name),
        },
        ("get", Some(name), Some("scale")) if t.resource == DEPLOYMENTS => {
            match lock(&c).get(DEPLOYMENTS, &ns, &name) {
                Some(d) => axum::Json(scale_of(d)).into_response(),
                None => not_found(&t, &name),
            }
        }
        ("patch" | "update", Some(name), sub) => {
            write(&c, &t, &ns, &name, sub, verb, &headers, &body)
        }
        ("delete", Some(name), None) => match lock(&c).delete(t.resource, &ns, &name) {
            Some(o) => axum::Json(o).into_response(),
            None => not_found(&t, &name),
        },
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("this fake does not serve {verb} on {rbac_resource}"),
            json!({}),
        ),
    }
}

fn scale_of(d: &Value) -> Value {
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": { "name": d["metadata"]["name"], "namespace": d["metadata"]["namespace"], "uid": d["metadata"]["uid"], "resourceVersion": d["metadata"]["resourceVersion"], "creationTimestamp": d["metadata"]["creationTimestamp"] },
        "spec": { "replicas": d["spec"]["replicas"] },
        "status": { "replicas": d["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector_text(&d["spec"]["selector"]["matchLabels"]) },
    })
}

fn selector_text(labels: &Value) -> String {
    labels
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn list(c: &Shared, t: &Target, q: &HashMap<String, String>, watch: bool) -> Response {
    let labels = match select::Selector::parse(q.get("labelSelector").map_or("", String::as_str)) {
        Ok(s) => s,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e, json!({})),
    };
    let fields = match select::fields(q.get("fieldSelector").map_or("", String::as_str)) {
        Ok(f) => f,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e, json!({})),
    };
    let keep = move |o: &Value| {
        labels.matches(&o["metadata"]["labels"]) && select::fields_match(&fields, o)
    };
    let ns = if t.resource == NAMESPACES {
        Some(String::new())
    } else {
        t.namespace.clone()
    };
    if watch {
        // Subscribed before the snapshot, so nothing falls between them: what changed after the
        // resourceVersion the client listed at is sent first (as a real watch from that version
        // would), then every change as it happens.
        let (rx, missed) = {
            let c = lock(c);
            let rx = c.events.subscribe();
            let since: u64 = q
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(u64::MAX);
            let missed: Vec<Result<Bytes, std::io::Error>> = c
                .list(t.resource, ns.as_deref())
                .into_iter()
                .filter(|o| keep(o))
                .filter(|o| {
                    o["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|v| v.parse::<u64>().ok())
                        .is_some_and(|v| v > since)
                })
                .map(|o| {
                    let mut l = json!({ "type": "MODIFIED", "object": o }).to_string();
                    l.push('\n');
                    Ok(Bytes::from(l))
                })
                .collect();
            (rx, missed)
        };
        let resource = t.resource;
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(60)
            .min(300);
        let live = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |e| {
            let line = match e {
                Ok(e)
                    if e.resource == resource
                        && ns.as_deref().is_none_or(|ns| ns == e.namespace)
                        && keep(&e.object) =>
                {
                    let mut l = json!({ "type": e.kind, "object": e.object }).to_string();
                    l.push('\n');
                    Some(Ok::<_, std::io::Error>(Bytes::from(l)))
                }
                _ => None,
            };
            async move { line }
        });
        let events = futures_util::stream::iter(missed)
            .chain(live)
            .take_until(tokio::time::sleep(Duration::from_secs(timeout)));
        return (
            [("content-type", "application/json")],
            Body::from_stream(events),
        )
            .into_response();
    }
    let c = lock(c);
    let items: Vec<Value> = c
        .list(t.resource, ns.as_deref())
        .into_iter()
        .filter(|o| keep(o))
        .collect();
    axum::Json(list_of(t.resource, items, c.resource_version())).into_response()
}

#[allow(clippy::too_many_arguments)]
fn write(
    c: &Shared,
    t: &Target,
    ns: &str,
    name: &str,
    sub: Option<&str>,
    verb: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body of the request was in an unknown format".into(),
            json!({}),
        );
    };
    let content = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if verb == "patch"
        && !content.starts_with("application/merge-patch+json")
        && !content.starts_with("application/strategic-merge-patch+json")
    {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (this fake); got {content}"
            ),
            json!({}),
        );
    }
    let mut c = lock(c);
    let Some(mut current) = c.get(t.resource, ns, name).cloned() else {
        return not_found(t, name);
    };
    if c.races > 0 && patch["metadata"]["resourceVersion"].is_string() {
        // Another writer got there first: the object moved on.
        c.races -= 1;
        let mut touched = current.clone();
        touched["metadata"]["annotations"]["fake.themis/raced"] = json!(c.resource_version());
        current = c.put(t.resource, ns, touched);
    }
    // Optimistic concurrency: a resourceVersion in the body must be the stored one.
    let sent_rv = patch["metadata"]["resourceVersion"].as_str();
    if let Some(rv) = sent_rv
        && current["metadata"]["resourceVersion"].as_str() != Some(rv)
    {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(t)
            ),
            json!({ "name": name, "group": t.group, "kind": t.resource }),
        );
    }
    let mut next = current.clone();
    match (sub, verb) {
        (Some("scale"), _) if t.resource == DEPLOYMENTS => {
            let Some(replicas) = patch["spec"]["replicas"].as_i64().filter(|r| *r >= 0) else {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!(
                        "Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: must be greater than or equal to 0"
                    ),
                    json!({}),
                );
            };
            next["spec"]["replicas"] = json!(replicas);
            let stored = c.put(DEPLOYMENTS, ns, next);
            return axum::Json(scale_of(&stored)).into_response();
        }
        (Some("status"), _) => {
            cluster::merge(&mut next["status"], &patch["status"]);
        }
        (None, "update") => {
            let mut replaced = patch.clone();
            // What the server keeps, whatever the body says.
            for k in [
                "uid",
                "creationTimestamp",
                "generation",
                "namespace",
                "name",
            ] {
                replaced["metadata"][k] = current["metadata"][k].clone();
            }
            replaced["status"] = current["status"].clone();
            next = replaced;
        }
        (None, _) => {
            let mut patch = patch.clone();
            if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            cluster::merge(&mut next, &patch);
        }
        _ => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource".into(),
                json!({}),
            );
        }
    }
    let stored = c.put(t.resource, ns, next);
    axum::Json(stored).into_response()
}

fn resources(list: &[(&str, &str, bool, &[&str])]) -> Vec<Value> {
    list.iter()
        .map(|(name, kind, namespaced, verbs)| {
            json!({ "name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": verbs })
        })
        .collect()
}

fn discovery(path: &str) -> Option<Value> {
    let all: &[&str] = &[
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    Some(match path.trim_end_matches('/') {
        "/version" => json!({
            "major": "1", "minor": "32", "gitVersion": "v1.32.0-themis-fake", "gitCommit": "fake",
            "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23",
            "compiler": "gc", "platform": "linux/amd64",
        }),
        "/api" => {
            json!({ "kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [] })
        }
        "/apis" => json!({
            "kind": "APIGroupList", "apiVersion": "v1",
            "groups": [
                { "name": "apps", "versions": [ { "groupVersion": "apps/v1", "version": "v1" } ], "preferredVersion": { "groupVersion": "apps/v1", "version": "v1" } },
                { "name": "kafka.strimzi.io", "versions": [ { "groupVersion": "kafka.strimzi.io/v1beta2", "version": "v1beta2" } ], "preferredVersion": { "groupVersion": "kafka.strimzi.io/v1beta2", "version": "v1beta2" } },
            ],
        }),
        "/api/v1" => json!({
            "kind": "APIResourceList", "groupVersion": "v1",
            "resources": resources(&[
                ("namespaces", "Namespace", false, &["get", "list", "watch"]),
                ("pods", "Pod", true, all),
                ("pods/log", "Pod", true, &["get"]),
                ("pods/status", "Pod", true, &["get", "patch", "update"]),
                ("events", "Event", true, all),
            ]),
        }),
        "/apis/apps/v1" => json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1",
            "resources": resources(&[
                ("deployments", "Deployment", true, all),
                ("deployments/scale", "Scale", true, &["get", "patch", "update"]),
                ("deployments/status", "Deployment", true, &["get", "patch", "update"]),
                ("replicasets", "ReplicaSet", true, all),
                ("statefulsets", "StatefulSet", true, all),
                ("statefulsets/status", "StatefulSet", true, &["get", "patch", "update"]),
            ]),
        }),
        "/apis/kafka.strimzi.io/v1beta2" => json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "kafka.strimzi.io/v1beta2",
            "resources": resources(&[
                ("kafkas", "Kafka", true, all),
                ("kafkas/status", "Kafka", true, &["get", "patch", "update"]),
            ]),
        }),
        _ => return None,
    })
}
