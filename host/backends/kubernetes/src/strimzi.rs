//! A Kafka cluster's configuration where Strimzi keeps it: its `Kafka` resource
//! (`kafka.strimzi.io/v1beta2`). The operator rolls the brokers when the resource changes, so
//! a setting is changed by patching the resource, never on a broker.
//!
//! Which settings, and where each lives, is a fixed table: JVM options (`jvm.*` keys) under
//! `spec.kafka.jvmOptions`, a broker's own configuration under `spec.kafka.config`. A key the
//! table does not know, or one Strimzi manages itself (listeners, TLS, SASL, node identity,
//! storage paths), is refused before any request: a runbook cannot reach past what the table
//! names.
//!
//! The resource holds one configuration for every broker of the cluster (node pools, which can
//! hold their own JVM options, are not read here): a change reaches every broker as the operator
//! rolls them.

use crate::{Access, KubernetesBackend, names};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use themis_caps::types::{CapError, CapResult};
use themis_core::types::Pair;

/// `kafka.strimzi.io/v1beta2` `Kafka`, plural `kafkas`.
fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kafka.strimzi.io", "v1beta2", "Kafka"),
        "kafkas",
    )
}

/// Where a setting lives in the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// `spec.kafka.jvmOptions["-XX"][option]`: a HotSpot `-XX:` option (a number).
    Xx(&'static str),
    /// `spec.kafka.jvmOptions[flag]`: `-Xms` / `-Xmx` (a size such as `2g`, `2048m`).
    Heap(&'static str),
    /// `spec.kafka.config[key]`: the broker's own configuration.
    Config(String),
}

/// The JVM settings a runbook may name, and where each goes.
const JVM: &[(&str, Place)] = &[
    ("jvm.gc.max-pause-millis", Place::Xx("MaxGCPauseMillis")),
    (
        "jvm.gc.initiating-heap-occupancy-percent",
        Place::Xx("InitiatingHeapOccupancyPercent"),
    ),
    ("jvm.heap.initial", Place::Heap("-Xms")),
    ("jvm.heap.max", Place::Heap("-Xmx")),
];

/// Broker configuration Strimzi sets itself and refuses in `spec.kafka.config` (its
/// documentation's list, by prefix): changing them belongs to the operator's own fields.
const MANAGED: &[&str] = &[
    "listeners",
    "advertised.",
    "broker.",
    "listener.",
    "host.name",
    "port",
    "inter.broker.listener.name",
    "sasl.",
    "ssl.",
    "security.",
    "password.",
    "log.dir",
    "zookeeper.",
    "authorizer.",
    "super.user",
    "cruise.control.metrics.",
    "node.id",
    "process.roles",
    "controller.",
    "metadata.log.dir",
    "client.quota.callback.",
];

/// Where `key` lives, or why it may not be set.
pub fn place(key: &str) -> CapResult<Place> {
    if let Some((_, place)) = JVM.iter().find(|(k, _)| *k == key) {
        return Ok(place.clone());
    }
    if key.starts_with("jvm.") {
        let known: Vec<&str> = JVM.iter().map(|(k, _)| *k).collect();
        return Err(CapError::InvalidArgument(format!(
            "{key} is not a JVM setting Themis changes; these are: {}",
            known.join(", ")
        )));
    }
    let plain = !key.is_empty()
        && key.len() <= 128
        && key.starts_with(|c: char| c.is_ascii_lowercase())
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    if !plain {
        return Err(CapError::InvalidArgument(format!(
            "{key:?} is not a Kafka broker setting (lowercase words joined by dots)"
        )));
    }
    if let Some(prefix) = MANAGED.iter().find(|p| key.starts_with(**p)) {
        return Err(CapError::Denied(format!(
            "{key} is managed by Strimzi itself (`{prefix}…`): change it through the Kafka resource's own fields, by a human"
        )));
    }
    Ok(Place::Config(key.to_owned()))
}

/// Is `value` what `place` takes? Numbers for `-XX` options, a size for the heap, and any
/// short single-line text for broker configuration (the broker checks it).
fn check_value(key: &str, place: &Place, value: &str) -> CapResult<()> {
    let ok = match place {
        Place::Xx(_) => {
            !value.is_empty() && value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit())
        }
        Place::Heap(_) => {
            let digits = value.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
            !digits.is_empty()
                && digits.len() + 1 >= value.len()
                && digits.len() <= 8
                && digits.bytes().all(|b| b.is_ascii_digit())
        }
        Place::Config(_) => value.len() <= 256 && !value.contains(['\n', '\r']),
    };
    if ok {
        Ok(())
    } else {
        Err(CapError::InvalidArgument(format!(
            "{value:?} is not a value {key} takes"
        )))
    }
}

/// The JSON merge patch that sets `place` to `value`.
fn patch(place: &Place, value: &str) -> Value {
    match place {
        Place::Xx(option) => {
            json!({ "spec": { "kafka": { "jvmOptions": { "-XX": { *option: value } } } } })
        }
        Place::Heap(flag) => json!({ "spec": { "kafka": { "jvmOptions": { *flag: value } } } }),
        Place::Config(key) => json!({ "spec": { "kafka": { "config": { key: value } } } }),
    }
}

/// Every setting of the table the resource holds, as text, JVM settings first.
pub fn settings(kafka: &Value) -> Vec<Pair> {
    let spec = &kafka["spec"]["kafka"];
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    };
    let mut out: Vec<Pair> = JVM
        .iter()
        .filter_map(|(key, place)| {
            let value = match place {
                Place::Xx(option) => text(&spec["jvmOptions"]["-XX"][*option]),
                Place::Heap(flag) => text(&spec["jvmOptions"][*flag]),
                Place::Config(_) => None,
            }?;
            Some(Pair {
                key: (*key).to_owned(),
                value,
            })
        })
        .collect();
    if let Some(config) = spec["config"].as_object() {
        out.extend(config.iter().filter_map(|(key, v)| {
            Some(Pair {
                key: key.clone(),
                value: text(v)?,
            })
        }));
    }
    out
}

impl KubernetesBackend {
    async fn kafkas(&self, namespace: &str) -> CapResult<Api<DynamicObject>> {
        names::namespace(namespace)?;
        Ok(Api::namespaced_with(
            self.client().await?,
            namespace,
            &resource(),
        ))
    }

    /// The Strimzi `Kafka` resource `namespace/name`, as JSON.
    pub async fn kafka_resource(&self, namespace: &str, name: &str) -> CapResult<Value> {
        names::name(name)?;
        let api = self.kafkas(namespace).await?;
        let found = self
            .read(
                &format!("Kafka resource {namespace}/{name}"),
                Access("get", "kafkas.kafka.strimzi.io"),
                || api.get(name),
            )
            .await?;
        serde_json::to_value(found)
            .map_err(|e| CapError::Failed(format!("Kafka resource {namespace}/{name}: {e}")))
    }

    /// Set `key` to `value` in the Strimzi `Kafka` resource `namespace/name` (a merge patch of
    /// that one field); the resource as stored after it.
    pub async fn set_kafka_setting(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
        value: &str,
    ) -> CapResult<Value> {
        names::name(name)?;
        let place = place(key)?;
        check_value(key, &place, value)?;
        let api = self.kafkas(namespace).await?;
        let body = Patch::Merge(patch(&place, value));
        let params = PatchParams::default();
        let stored = self
            .write(
                &format!("Kafka resource {namespace}/{name}"),
                Access("patch", "kafkas.kafka.strimzi.io"),
                || api.patch(name, &params, &body),
            )
            .await?;
        serde_json::to_value(stored)
            .map_err(|e| CapError::Failed(format!("Kafka resource {namespace}/{name}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_places_jvm_and_broker_settings_and_refuses_the_rest() {
        assert_eq!(
            place("jvm.gc.max-pause-millis").ok(),
            Some(Place::Xx("MaxGCPauseMillis"))
        );
        assert_eq!(place("jvm.heap.max").ok(), Some(Place::Heap("-Xmx")));
        assert_eq!(
            place("num.io.threads").ok(),
            Some(Place::Config("num.io.threads".into()))
        );
        assert!(matches!(
            place("jvm.agent-path"),
            Err(CapError::InvalidArgument(_))
        ));
        assert!(matches!(place("listeners"), Err(CapError::Denied(_))));
        assert!(matches!(
            place("ssl.keystore.location"),
            Err(CapError::Denied(_))
        ));
        assert!(matches!(place("Num.IO"), Err(CapError::InvalidArgument(_))));
    }

    #[test]
    fn values_are_checked_for_their_place() {
        let xx = Place::Xx("MaxGCPauseMillis");
        assert!(check_value("k", &xx, "200").is_ok());
        assert!(check_value("k", &xx, "200; rm").is_err());
        assert!(check_value("k", &xx, "").is_err());
        let heap = Place::Heap("-Xmx");
        assert!(check_value("k", &heap, "4g").is_ok());
        assert!(check_value("k", &heap, "2048m").is_ok());
        assert!(check_value("k", &heap, "4gg").is_err());
        assert!(check_value("k", &heap, "g").is_err());
        let config = Place::Config("num.io.threads".into());
        assert!(check_value("k", &config, "16").is_ok());
        assert!(check_value("k", &config, "1\nlisteners=x").is_err());
    }

    #[test]
    fn settings_are_read_back_from_where_the_patches_write_them() {
        assert_eq!(
            patch(&place("jvm.gc.max-pause-millis").expect("placed"), "150"),
            json!({ "spec": { "kafka": { "jvmOptions": { "-XX": { "MaxGCPauseMillis": "150" } } } } })
        );
        assert_eq!(
            patch(&place("jvm.heap.max").expect("placed"), "4g"),
            json!({ "spec": { "kafka": { "jvmOptions": { "-Xmx": "4g" } } } })
        );
        let kafka = json!({ "spec": { "kafka": {
            "replicas": 3,
            "jvmOptions": { "-Xmx": "4g", "-XX": { "MaxGCPauseMillis": "150" } },
            "config": { "num.io.threads": 8, "log.retention.hours": "72" },
        } } });
        let got: Vec<(String, String)> = settings(&kafka)
            .into_iter()
            .map(|p| (p.key, p.value))
            .collect();
        assert_eq!(
            got,
            [
                ("jvm.gc.max-pause-millis", "150"),
                ("jvm.heap.max", "4g"),
                ("log.retention.hours", "72"),
                ("num.io.threads", "8"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }
}
