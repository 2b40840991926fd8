//! Alertmanager's webhook payload (version 4, as Alertmanager 0.25+ sends it) and Themis' own
//! one-alert JSON, and how each becomes the host's [`Alert`].

use crate::error::ApiError;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use themis_agent::AlertStatus;
use themis_core::types::{Alert, Pair};

/// The largest label or annotation set one alert may carry, and the longest value.
pub const MAX_PAIRS: usize = 256;
pub const MAX_VALUE_BYTES: usize = 16 << 10;

/// `POST /api/v1/alerts/alertmanager`: one notification for one group of alerts.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub version: String,
    #[serde(default)]
    pub group_key: String,
    #[serde(default)]
    pub truncated_alerts: u64,
    pub status: AlertStatus,
    #[serde(default)]
    pub receiver: String,
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<AmAlert>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AmAlert {
    pub status: AlertStatus,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub starts_at: String,
    #[serde(default)]
    pub ends_at: String,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    pub fingerprint: String,
}

/// One alert ready for the runtime, with where it came from.
#[derive(Debug)]
pub struct Incoming {
    pub alert: Alert,
    pub status: AlertStatus,
    pub source: Value,
}

fn pairs(field: &str, map: &BTreeMap<String, String>) -> Result<Vec<Pair>, ApiError> {
    if map.len() > MAX_PAIRS {
        return Err(ApiError::bad_request(
            field,
            format!("more than {MAX_PAIRS} entries"),
        ));
    }
    map.iter()
        .map(|(k, v)| {
            if k.len() + v.len() > MAX_VALUE_BYTES {
                Err(ApiError::bad_request(
                    format!("{field}.{k}"),
                    format!("longer than {MAX_VALUE_BYTES} bytes"),
                ))
            } else {
                Ok(Pair::new(k, v))
            }
        })
        .collect()
}

impl Notification {
    /// Check the notification and turn each alert into an [`Incoming`].
    pub fn into_incoming(self, max_alerts: usize) -> Result<Vec<Incoming>, ApiError> {
        if self.version != "4" {
            return Err(ApiError::bad_request(
                "version",
                format!(
                    "webhook payload version `{}` is not supported; Alertmanager 0.25+ sends \"4\"",
                    self.version
                ),
            ));
        }
        if self.alerts.len() > max_alerts {
            return Err(ApiError::bad_request(
                "alerts",
                format!(
                    "{} alerts in one notification; at most {max_alerts} (set `max_alerts` on the receiver)",
                    self.alerts.len()
                ),
            ));
        }
        let mut out = Vec::with_capacity(self.alerts.len());
        for (i, a) in self.alerts.into_iter().enumerate() {
            let name = a
                .labels
                .get("alertname")
                .filter(|n| !n.is_empty())
                .cloned()
                .ok_or_else(|| {
                    ApiError::bad_request(
                        format!("alerts[{i}].labels.alertname"),
                        "every alert needs its `alertname` label",
                    )
                })?;
            if a.fingerprint.is_empty() || a.fingerprint.len() > 128 {
                return Err(ApiError::bad_request(
                    format!("alerts[{i}].fingerprint"),
                    "Alertmanager's fingerprint is required (1 to 128 characters)",
                ));
            }
            let alert = Alert {
                name,
                fingerprint: a.fingerprint.clone(),
                labels: pairs(&format!("alerts[{i}].labels"), &a.labels)?,
                annotations: pairs(&format!("alerts[{i}].annotations"), &a.annotations)?,
            };
            out.push(Incoming {
                alert,
                status: a.status,
                source: json!({
                    "via": "alertmanager",
                    "group_key": self.group_key,
                    "receiver": self.receiver,
                    "truncated_alerts": self.truncated_alerts,
                    "starts_at": a.starts_at,
                    "ends_at": a.ends_at,
                    "generator_url": a.generator_url,
                    "external_url": self.external_url,
                }),
            });
        }
        Ok(out)
    }
}

/// `POST /api/v1/alerts`: one alert in Themis' own JSON, for sources other than Alertmanager.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnAlert {
    pub name: String,
    /// Its identity for deduplication [default: derived from name and labels].
    #[serde(default)]
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default = "firing")]
    pub status: AlertStatus,
    /// Where it came from, free text (recorded).
    #[serde(default)]
    pub source: Option<String>,
}

fn firing() -> AlertStatus {
    AlertStatus::Firing
}

impl OwnAlert {
    pub fn into_incoming(self) -> Result<Incoming, ApiError> {
        if self.name.is_empty() || self.name.len() > 256 {
            return Err(ApiError::bad_request("name", "1 to 256 characters"));
        }
        let fingerprint = match self.fingerprint {
            Some(f) if !f.is_empty() && f.len() <= 128 => f,
            Some(_) => {
                return Err(ApiError::bad_request("fingerprint", "1 to 128 characters"));
            }
            None => {
                // Like Alertmanager's: the same name and labels are the same alert.
                let mut h = Sha256::new();
                h.update(self.name.as_bytes());
                for (k, v) in &self.labels {
                    h.update([0xff]);
                    h.update(k.as_bytes());
                    h.update([0xfe]);
                    h.update(v.as_bytes());
                }
                hex::encode(&h.finalize()[..8])
            }
        };
        let labels = pairs("labels", &self.labels)?;
        let annotations = pairs("annotations", &self.annotations)?;
        Ok(Incoming {
            alert: Alert {
                name: self.name,
                fingerprint,
                labels,
                annotations,
            },
            status: self.status,
            source: json!({ "via": "api", "source": self.source }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(version: &str, alertname: Option<&str>) -> Notification {
        let mut labels = BTreeMap::from([("severity".to_string(), "critical".to_string())]);
        if let Some(n) = alertname {
            labels.insert("alertname".into(), n.into());
        }
        Notification {
            version: version.into(),
            group_key: "{}:{alertname=\"X\"}".into(),
            truncated_alerts: 0,
            status: AlertStatus::Firing,
            receiver: "themis".into(),
            group_labels: BTreeMap::new(),
            common_labels: BTreeMap::new(),
            common_annotations: BTreeMap::new(),
            external_url: String::new(),
            alerts: vec![AmAlert {
                status: AlertStatus::Firing,
                labels,
                annotations: BTreeMap::new(),
                starts_at: String::new(),
                ends_at: String::new(),
                generator_url: String::new(),
                fingerprint: "abc".into(),
            }],
        }
    }

    #[test]
    fn version_and_alertname_are_checked_by_field() {
        let e = notification("3", Some("X"))
            .into_incoming(10)
            .expect_err("v3");
        assert_eq!(e.field.as_deref(), Some("version"));
        let e = notification("4", None)
            .into_incoming(10)
            .expect_err("no name");
        assert_eq!(e.field.as_deref(), Some("alerts[0].labels.alertname"));
        let ok = notification("4", Some("KubePodCrashLooping"))
            .into_incoming(10)
            .expect("ok");
        assert_eq!(ok[0].alert.name, "KubePodCrashLooping");
        assert_eq!(ok[0].alert.label("alertname"), Some("KubePodCrashLooping"));
        assert!(notification("4", Some("X")).into_incoming(0).is_err());
    }

    #[test]
    fn own_alerts_get_a_stable_fingerprint() {
        let a = |v: &str| OwnAlert {
            name: "X".into(),
            fingerprint: None,
            labels: BTreeMap::from([("k".to_string(), v.to_string())]),
            annotations: BTreeMap::new(),
            status: AlertStatus::Firing,
            source: None,
        };
        let f1 = a("1").into_incoming().expect("ok").alert.fingerprint;
        assert_eq!(f1, a("1").into_incoming().expect("ok").alert.fingerprint);
        assert_ne!(f1, a("2").into_incoming().expect("ok").alert.fingerprint);
    }
}
