//! `KubernetesCaps` against a real API server through kube: deployments and statefulsets and
//! their rollout status, pods (phase, readiness, restarts, why they are not running), the events
//! about an object, bounded log tails, the workload that controls a pod, a deployment's
//! revisions; and the mutations as kubectl does
//! them — `rollout restart` (the `kubectl.kubernetes.io/restartedAt` pod-template annotation, by
//! strategic merge patch), scale through the `scale` subresource, delete pod, `rollout undo` (the
//! revision's pod template put back, guarded by the resourceVersion read).
//!
//! Names are checked (DNS-1123) before any request. API errors become capability errors a step
//! can act on: 404 not found; 403 says which verb on which resource the service account lacks;
//! 409 (a write raced another) is read again and tried once more; 429 and 5xx are unavailable,
//! reads retried with backoff (writes only on 429, which the server did not apply). Every
//! request is bounded by the configured timeout. The client is made on first use: a cluster that
//! is unreachable at start fails calls, not the start.

mod convert;
pub mod kafka_workloads;
pub mod names;
pub mod strimzi;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{
    Deployment as K8sDeployment, ReplicaSet, StatefulSet as K8sStatefulSet,
};
use k8s_openapi::api::core::v1::{Event as K8sEvent, Pod as K8sPod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use themis_caps::KubernetesCaps;
use themis_caps::types::{
    CapError, CapResult, Deployment, Event, Pod, Revision, StatefulSet, Workload,
};
use tokio::sync::OnceCell;

/// How the agent reaches its cluster (`backends.<agent>.kubernetes` in themis.yaml).
#[derive(Debug, Clone)]
pub struct KubernetesSettings {
    /// A kubeconfig file; none: the in-cluster service account, else `$KUBECONFIG` or
    /// `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current one).
    pub context: Option<String>,
    /// Every request's bound.
    pub timeout: Duration,
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        KubernetesSettings {
            kubeconfig: None,
            context: None,
            timeout: Duration::from_secs(10),
        }
    }
}

pub struct KubernetesBackend {
    agent: String,
    settings: KubernetesSettings,
    client: OnceCell<kube::Client>,
}

/// What the doctor found.
#[derive(Debug, Clone)]
pub struct Doctor {
    pub server_version: String,
}

/// The most pods one list returns.
const MAX_PODS: u32 = 500;
/// The most log bytes one tail returns, and lines.
const MAX_LOG_BYTES: i64 = 256 * 1024;
const MAX_LOG_LINES: u32 = 1000;
/// The events one read returns (newest first), and the most it reads to find them.
const MAX_EVENTS: usize = 50;
const MAX_EVENTS_READ: u32 = 500;
/// Tries of a read (or of a write the server refused with 429).
const TRIES: u32 = 3;

impl KubernetesBackend {
    pub fn new(agent: &str, settings: KubernetesSettings) -> KubernetesBackend {
        KubernetesBackend {
            agent: agent.to_owned(),
            settings,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> CapResult<kube::Client> {
        self.client
            .get_or_try_init(|| async {
                let mut config = match &self.settings.kubeconfig {
                    Some(file) => {
                        let kubeconfig = Kubeconfig::read_from(file).map_err(|e| {
                            CapError::Unavailable(format!(
                                "kubeconfig {}: {e}",
                                file.display()
                            ))
                        })?;
                        let options = KubeConfigOptions {
                            context: self.settings.context.clone(),
                            ..KubeConfigOptions::default()
                        };
                        kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                            .await
                            .map_err(|e| {
                                CapError::Unavailable(format!(
                                    "kubeconfig {}: {e}",
                                    file.display()
                                ))
                            })?
                    }
                    None => kube::Config::infer().await.map_err(|e| {
                        CapError::Unavailable(format!(
                            "no Kubernetes configuration (in-cluster service account or kubeconfig): {e}"
                        ))
                    })?,
                };
                config.connect_timeout = Some(self.settings.timeout);
                config.read_timeout = Some(self.settings.timeout);
                config.write_timeout = Some(self.settings.timeout);
                kube::Client::try_from(config).map_err(|e| {
                    CapError::Unavailable(format!("cannot make a Kubernetes client: {e}"))
                })
            })
            .await
            .cloned()
    }

    /// Connect and say what is there (for `themis doctor`).
    pub async fn doctor(&self) -> Result<Doctor, String> {
        let client = self.client().await.map_err(|e| e.to_string())?;
        let info = tokio::time::timeout(self.settings.timeout, client.apiserver_version())
            .await
            .map_err(|_| "the API server did not answer in time".to_owned())?
            .map_err(|e| format!("the API server: {e}"))?;
        Ok(Doctor {
            server_version: info.git_version,
        })
    }

    async fn api<K>(&self, namespace: &str) -> CapResult<Api<K>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        names::namespace(namespace)?;
        Ok(Api::namespaced(self.client().await?, namespace))
    }

    /// A read, bounded, retried with backoff while the server is unavailable or busy.
    async fn read<T, F, Fut>(&self, what: &str, access: Access, f: F) -> CapResult<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.bounded(what, access, f()).await {
                Err(CapError::Unavailable(why)) if attempt < TRIES => {
                    tracing::debug!(agent = %self.agent, what, attempt, error = %why, "retrying a Kubernetes read");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// A write: bounded; retried only when the server refused it unapplied (429).
    async fn write<T, F, Fut>(&self, what: &str, access: Access, f: F) -> CapResult<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        match self.write_guarded(what, access, f).await? {
            Some(v) => Ok(v),
            None => Err(CapError::Failed(format!(
                "{what}: it changed under us (409); read it again before acting"
            ))),
        }
    }

    /// A write guarded by a resourceVersion: `None` when it lost the race (409).
    async fn write_guarded<T, F, Fut>(
        &self,
        what: &str,
        access: Access,
        f: F,
    ) -> CapResult<Option<T>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match tokio::time::timeout(self.settings.timeout, f()).await {
                Err(_) => {
                    return Err(CapError::Unavailable(format!(
                        "{what}: no answer within {:?} (it may or may not have been applied)",
                        self.settings.timeout
                    )));
                }
                Ok(Err(kube::Error::Api(s))) if s.code == 429 && attempt < TRIES => {
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                Ok(Err(kube::Error::Api(s))) if s.code == 409 => return Ok(None),
                Ok(Err(e)) => return Err(cap_error(what, access, e)),
                Ok(Ok(v)) => return Ok(Some(v)),
            }
        }
    }

    async fn bounded<T>(
        &self,
        what: &str,
        access: Access,
        f: impl Future<Output = Result<T, kube::Error>>,
    ) -> CapResult<T> {
        match tokio::time::timeout(self.settings.timeout, f).await {
            Err(_) => Err(CapError::Unavailable(format!(
                "{what}: no answer within {:?}",
                self.settings.timeout
            ))),
            Ok(r) => r.map_err(|e| cap_error(what, access, e)),
        }
    }

    async fn deployment(&self, namespace: &str, name: &str) -> CapResult<K8sDeployment> {
        names::name(name)?;
        let api: Api<K8sDeployment> = self.api(namespace).await?;
        self.read(
            &format!("deployment {namespace}/{name}"),
            Access("get", "deployments"),
            || api.get(name),
        )
        .await
    }

    async fn history(&self, namespace: &str, name: &str) -> CapResult<Vec<(i64, ReplicaSet)>> {
        let deployment = self.deployment(namespace, name).await?;
        let selector = convert::match_labels(&deployment).ok_or_else(|| {
            CapError::Failed(format!("deployment {namespace}/{name} has no selector"))
        })?;
        let uid = deployment.metadata.uid.clone().unwrap_or_default();
        let api: Api<ReplicaSet> = self.api(namespace).await?;
        let params = ListParams::default().labels(&selector).limit(MAX_PODS);
        let sets = self
            .read(
                &format!("replica sets of {namespace}/{name}"),
                Access("list", "replicasets"),
                || api.list(&params),
            )
            .await?;
        let mut revisions: Vec<(i64, ReplicaSet)> = sets
            .items
            .into_iter()
            .filter(|rs| convert::controller(&rs.metadata).is_some_and(|o| o.uid == uid))
            .filter_map(|rs| convert::revision(&rs).map(|r| (r, rs)))
            .collect();
        revisions.sort_by_key(|(r, _)| std::cmp::Reverse(*r));
        Ok(revisions)
    }
}

/// What a request needs from RBAC: (verb, resource), for the message a 403 gets.
#[derive(Debug, Clone, Copy)]
struct Access(&'static str, &'static str);

fn cap_error(what: &str, Access(verb, resource): Access, e: kube::Error) -> CapError {
    match e {
        kube::Error::Api(s) => {
            let msg = format!("{what}: {} ({})", s.message, s.code);
            match s.code {
                404 => CapError::NotFound(msg),
                401 => CapError::Denied(format!(
                    "{msg}: the credentials were refused; check the kubeconfig or the service account token"
                )),
                403 => CapError::Denied(format!(
                    "{msg}: grant the agent's service account `{verb}` on `{resource}` in its Role"
                )),
                400 | 422 => CapError::InvalidArgument(msg),
                429 | 500..=599 => CapError::Unavailable(msg),
                _ => CapError::Failed(msg),
            }
        }
        other => CapError::Unavailable(format!("{what}: {other}")),
    }
}

#[async_trait]
impl KubernetesCaps for KubernetesBackend {
    async fn get_deployment(&self, namespace: &str, name: &str) -> CapResult<Deployment> {
        let d = self.deployment(namespace, name).await?;
        Ok(convert::deployment(namespace, name, &d))
    }

    async fn get_statefulset(&self, namespace: &str, name: &str) -> CapResult<StatefulSet> {
        names::name(name)?;
        let api: Api<K8sStatefulSet> = self.api(namespace).await?;
        let s = self
            .read(
                &format!("statefulset {namespace}/{name}"),
                Access("get", "statefulsets"),
                || api.get(name),
            )
            .await?;
        Ok(convert::statefulset(namespace, name, &s))
    }

    async fn list_events(&self, namespace: &str, object: &str) -> CapResult<Vec<Event>> {
        names::name(object)?;
        let api: Api<K8sEvent> = self.api(namespace).await?;
        // Repeated events are counted on one object, so a bounded list still covers a while.
        let params = ListParams::default()
            .fields(&format!("involvedObject.name={object}"))
            .limit(MAX_EVENTS_READ);
        let list = self
            .read(
                &format!("events of {namespace}/{object}"),
                Access("list", "events"),
                || api.list(&params),
            )
            .await?;
        Ok(convert::events(
            list.items,
            k8s_openapi::jiff::Timestamp::now(),
            MAX_EVENTS,
        ))
    }

    async fn list_pods(&self, namespace: &str, selector: &str) -> CapResult<Vec<Pod>> {
        names::selector(selector)?;
        let api: Api<K8sPod> = self.api(namespace).await?;
        let params = ListParams::default().labels(selector).limit(MAX_PODS);
        let pods = self
            .read(
                &format!("pods of {namespace} matching {selector}"),
                Access("list", "pods"),
                || api.list(&params),
            )
            .await?;
        Ok(pods.items.iter().map(convert::pod).collect())
    }

    async fn pod_logs(
        &self,
        namespace: &str,
        pod: &str,
        tail_lines: u32,
    ) -> CapResult<Vec<String>> {
        names::name(pod)?;
        let api: Api<K8sPod> = self.api(namespace).await?;
        let params = LogParams {
            tail_lines: Some(i64::from(tail_lines.clamp(1, MAX_LOG_LINES))),
            limit_bytes: Some(MAX_LOG_BYTES),
            ..LogParams::default()
        };
        let text = self
            .read(
                &format!("logs of {namespace}/{pod}"),
                Access("get", "pods/log"),
                || api.logs(pod, &params),
            )
            .await?;
        Ok(text.lines().map(str::to_owned).collect())
    }

    async fn pod_owner(&self, namespace: &str, pod: &str) -> CapResult<Option<Workload>> {
        names::name(pod)?;
        let api: Api<K8sPod> = self.api(namespace).await?;
        let p = self
            .read(
                &format!("pod {namespace}/{pod}"),
                Access("get", "pods"),
                || api.get(pod),
            )
            .await?;
        let Some(owner) = convert::controller(&p.metadata) else {
            return Ok(None);
        };
        if owner.kind != "ReplicaSet" {
            return Ok(Some(Workload {
                kind: owner.kind.clone(),
                name: owner.name.clone(),
            }));
        }
        let sets: Api<ReplicaSet> = self.api(namespace).await?;
        let rs = self
            .read(
                &format!("replica set {namespace}/{}", owner.name),
                Access("get", "replicasets"),
                || sets.get(&owner.name),
            )
            .await?;
        Ok(Some(match convert::controller(&rs.metadata) {
            Some(d) => Workload {
                kind: d.kind.clone(),
                name: d.name.clone(),
            },
            None => Workload {
                kind: "ReplicaSet".into(),
                name: owner.name.clone(),
            },
        }))
    }

    async fn rollout_history(&self, namespace: &str, name: &str) -> CapResult<Vec<Revision>> {
        Ok(self
            .history(namespace, name)
            .await?
            .iter()
            .map(|(r, rs)| convert::revision_of(*r, rs))
            .collect())
    }

    async fn rollout_restart(&self, namespace: &str, name: &str) -> CapResult<()> {
        names::name(name)?;
        let api: Api<K8sDeployment> = self.api(namespace).await?;
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        // Exactly what `kubectl rollout restart` sends.
        let patch = Patch::Strategic(
            json!({ "spec": { "template": { "metadata": { "annotations": { "kubectl.kubernetes.io/restartedAt": at } } } } }),
        );
        let params = PatchParams::default();
        self.write(
            &format!("rollout restart of {namespace}/{name}"),
            Access("patch", "deployments"),
            || api.patch(name, &params, &patch),
        )
        .await
        .map(|_| ())
    }

    async fn scale_deployment(&self, namespace: &str, name: &str, replicas: u32) -> CapResult<()> {
        names::name(name)?;
        let api: Api<K8sDeployment> = self.api(namespace).await?;
        let patch = Patch::Merge(json!({ "spec": { "replicas": replicas } }));
        let params = PatchParams::default();
        self.write(
            &format!("scale of {namespace}/{name} to {replicas}"),
            Access("patch", "deployments/scale"),
            || api.patch_scale(name, &params, &patch),
        )
        .await
        .map(|_| ())
    }

    async fn delete_pod(&self, namespace: &str, name: &str) -> CapResult<()> {
        names::name(name)?;
        let api: Api<K8sPod> = self.api(namespace).await?;
        let params = DeleteParams::default();
        self.write(
            &format!("delete of pod {namespace}/{name}"),
            Access("delete", "pods"),
            || api.delete(name, &params),
        )
        .await
        .map(|_| ())
    }

    async fn rollout_undo(&self, namespace: &str, name: &str, to_revision: i64) -> CapResult<()> {
        let api: Api<K8sDeployment> = self.api(namespace).await?;
        // Read, then write guarded by what was read; a write that raced another (409) is read
        // again and tried once more, never blindly.
        for attempt in 0..2 {
            let deployment = self.deployment(namespace, name).await?;
            let history = self.history(namespace, name).await?;
            let target = if to_revision == 0 {
                // As kubectl: 0 is the revision before the current one.
                history.get(1)
            } else {
                history.iter().find(|(r, _)| *r == to_revision)
            };
            let Some((revision, rs)) = target else {
                return Err(CapError::NotFound(format!(
                    "deployment {namespace}/{name} has no revision {to_revision} (it has {:?})",
                    history.iter().map(|(r, _)| *r).collect::<Vec<_>>()
                )));
            };
            let template = convert::template_for_undo(rs).ok_or_else(|| {
                CapError::Failed(format!(
                    "revision {revision} of {namespace}/{name} has no pod template"
                ))
            })?;
            let patch = Patch::Strategic(json!({
                "metadata": { "resourceVersion": deployment.metadata.resource_version },
                "spec": { "template": template },
            }));
            let params = PatchParams::default();
            let what = format!("rollout undo of {namespace}/{name} to revision {revision}");
            match self
                .write_guarded(&what, Access("patch", "deployments"), || {
                    api.patch(name, &params, &patch)
                })
                .await?
            {
                Some(_) => return Ok(()),
                None => {
                    tracing::info!(agent = %self.agent, attempt, "{what}: it changed under us (409); reading it again");
                }
            }
        }
        Err(CapError::Failed(format!(
            "rollout undo of {namespace}/{name}: it kept changing under us; a human should look"
        )))
    }
}
