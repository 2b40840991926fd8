//! Alertmanager's webhook payload (version 4, as Alertmanager 0.25+ sends it) and Themis' own
//! one-alert JSON, and how each becomes the host's [`Alert`].

use crate::error::ApiError;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use themis_agent::AlertStatus;
use themis_core::redact::Redactor;
use themis_core::types::{Alert, AlertSource, Pair};
use utoipa::ToSchema;

/// The largest label or annotation set one alert may carry, the longest name and value (in
/// characters, as the OpenAPI document says). A longer annotation value is cut to the limit
/// rather than refused: it is prose (a description, a runbook link), and refusing it would
/// lose every alert of its notification, since Alertmanager does not retry a 4xx.
pub const MAX_PAIRS: usize = 256;
pub const MAX_KEY_CHARS: usize = 256;
pub const MAX_VALUE_CHARS: usize = 2048;

/// The most one accepted alert's record may hold (its alert, status and source as JSON, as
/// the audit's redaction leaves them): half of what one audit record keeps whole. An alert that would
/// be larger has its longest annotations cut first; only labels alone over it are refused. A
/// record over the audit's own bound would be kept as a digest, and the alert lost.
pub const MAX_ALERT_RECORD_BYTES: usize = themis_agent::audit::MAX_RECORD_BYTES / 2;

/// The most a notification's group fields (`groupKey`, `groupLabels`, `receiver`,
/// `externalURL`) may come to when repeated on each of its alerts' records: what one request
/// may make the host hold beyond its body.
pub const MAX_REPEATED_BYTES: usize = 32 << 20;

/// Whether the values of a set are refused over [`MAX_VALUE_CHARS`] (labels: they are the
/// alert's identity) or cut to it with a marker (annotations).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Over {
    Refuse,
    Cut,
}

/// The documented shape of a label or annotation set: string values, bounded.
fn pairs_schema(required_name: bool, over: Over) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let value = || {
        let b = ObjectBuilder::new().schema_type(Type::String);
        match over {
            Over::Refuse => b.max_length(Some(MAX_VALUE_CHARS)),
            Over::Cut => b,
        }
    };
    let mut b = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(match over {
            Over::Refuse => format!(
                "string values up to {MAX_VALUE_CHARS} characters; names up to {MAX_KEY_CHARS}"
            ),
            Over::Cut => format!(
                "string values, a longer one than {MAX_VALUE_CHARS} characters cut to that length, ending in a marker that says how many characters were cut; names up to {MAX_KEY_CHARS} characters"
            ),
        }))
        .max_properties(Some(MAX_PAIRS))
        .additional_properties(Some(value()));
    if required_name {
        b = b
            .property(
                "alertname",
                value().min_length(Some(1)).max_length(Some(256)),
            )
            .required("alertname");
    }
    b.build()
}

fn labels_schema() -> utoipa::openapi::schema::Object {
    pairs_schema(true, Over::Refuse)
}

fn own_labels_schema() -> utoipa::openapi::schema::Object {
    pairs_schema(false, Over::Refuse)
}

fn annotations_schema() -> utoipa::openapi::schema::Object {
    pairs_schema(false, Over::Cut)
}

/// `POST /api/v1/alerts/alertmanager`: one notification for one group of alerts.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Always "4".
    #[schema(pattern = "^4$", example = "4")]
    pub version: String,
    #[serde(default)]
    pub group_key: String,
    // JSON Schema counts `5.0` as an integer: take any number, check it is a whole count.
    #[serde(default = "zero")]
    #[schema(value_type = i64, minimum = 0)]
    pub truncated_alerts: serde_json::Number,
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
    /// As many as the body limit (`limits.body_bytes`) holds.
    pub alerts: Vec<AmAlert>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AmAlert {
    pub status: AlertStatus,
    /// Must carry `alertname`.
    #[schema(schema_with = labels_schema)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    #[schema(schema_with = annotations_schema)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub starts_at: String,
    #[serde(default)]
    pub ends_at: String,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    #[schema(min_length = 1, max_length = 128)]
    pub fingerprint: String,
}

/// One alert ready for the runtime, with where it came from. A host standing by stores it as
/// checked (its fingerprint taken from the labels as they arrived), so the holder takes up what
/// the sender was answered for, not a second reading of a redacted body.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Incoming {
    pub alert: Alert,
    pub status: AlertStatus,
    pub source: Value,
}

impl Incoming {
    /// The size of this alert's `alert-accepted` record data, as the runtime writes it:
    /// redacted (which can make text longer) and as JSON.
    fn record_bytes(&self, redactor: &Redactor) -> usize {
        serde_json::to_vec(
            &redactor.redact(
                json!({ "alert": self.alert, "status": self.status, "source": self.source }),
            ),
        )
        .map_or(usize::MAX, |v| v.len())
    }

    /// Bring the alert's record within [`MAX_ALERT_RECORD_BYTES`]: its longest annotations
    /// are cut to a marker, one at a time, until it fits; labels alone over it are refused
    /// (400 naming `{at}.labels`), since they are what the alert is.
    fn fit(&mut self, at: &str, redactor: &Redactor) -> Result<(), ApiError> {
        let mut bytes = self.record_bytes(redactor);
        while bytes > MAX_ALERT_RECORD_BYTES {
            // Longest first, until what they held (as JSON, escapes included) covers the excess;
            // then measured again, as markers take a little room too.
            let json_len = |v: &str| serde_json::to_string(v).map_or(v.len(), |j| j.len());
            let mut longest: Vec<&mut Pair> = self
                .alert
                .annotations
                .iter_mut()
                .filter(|p| !p.value.starts_with(CUT_WHOLE))
                .collect();
            if longest.is_empty() {
                let field = if at.is_empty() {
                    "labels".to_string()
                } else {
                    format!("{at}.labels")
                };
                return Err(ApiError::bad_request(
                    field,
                    format!(
                        "the alert (its labels and its group's fields) comes to {bytes} bytes of JSON once its annotations are cut; at most {MAX_ALERT_RECORD_BYTES}: fewer or shorter labels"
                    ),
                ));
            }
            longest.sort_by_key(|p| std::cmp::Reverse(json_len(&p.value)));
            let excess = bytes - MAX_ALERT_RECORD_BYTES;
            let mut freed = 0;
            for pair in longest {
                freed += json_len(&pair.value);
                pair.value = format!(
                    "{CUT_WHOLE} {} characters cut by Themis: the alert was over {MAX_ALERT_RECORD_BYTES} bytes]",
                    pair.value.chars().count()
                );
                if freed >= excess {
                    break;
                }
            }
            bytes = self.record_bytes(redactor);
        }
        Ok(())
    }
}

/// How an annotation cut whole (to keep its alert within its record) begins.
const CUT_WHOLE: &str = "…[all";

/// `value`, or it cut to [`MAX_VALUE_CHARS`] with the marker.
fn cut_over(value: &str) -> String {
    if value.chars().count() > MAX_VALUE_CHARS {
        cut(value)
    } else {
        value.to_owned()
    }
}

fn pairs(field: &str, map: &BTreeMap<String, String>, over: Over) -> Result<Vec<Pair>, ApiError> {
    if map.len() > MAX_PAIRS {
        return Err(ApiError::bad_request(
            field,
            format!("more than {MAX_PAIRS} entries"),
        ));
    }
    map.iter()
        .map(|(k, v)| {
            let long_value = v.chars().count() > MAX_VALUE_CHARS;
            if k.chars().count() > MAX_KEY_CHARS || (long_value && over == Over::Refuse) {
                Err(ApiError::bad_request(
                    format!("{field}.{}", k.chars().take(64).collect::<String>()),
                    format!(
                        "names up to {MAX_KEY_CHARS} characters, values up to {MAX_VALUE_CHARS}"
                    ),
                ))
            } else if long_value {
                Ok(Pair::new(k, cut(v)))
            } else {
                Ok(Pair::new(k, v))
            }
        })
        .collect()
}

/// `value` cut to [`MAX_VALUE_CHARS`] characters, the marker at its end included, so that
/// whoever reads it sees it is not whole and how much is missing.
fn cut(value: &str) -> String {
    let total = value.chars().count();
    // The marker's length depends on the count it shows: make room for the largest it can be
    // (the value may come out a character or two short of the limit).
    let room = marker(total).chars().count();
    let keep = MAX_VALUE_CHARS.saturating_sub(room);
    let mut out: String = value.chars().take(keep).collect();
    out.push_str(&marker(total - keep));
    out
}

fn marker(cut: usize) -> String {
    format!(" …[{cut} more characters cut by Themis]")
}

impl Notification {
    /// `truncatedAlerts` as the whole count it was checked to be (`5.0` is 5): recorded as an
    /// integer, never as the float it may have been sent as.
    pub(crate) fn truncated(&self) -> u64 {
        let n = &self.truncated_alerts;
        n.as_u64()
            .or_else(|| n.as_f64().map(|f| f as u64))
            .unwrap_or(0)
    }

    /// Check the notification and turn each alert into an [`Incoming`].
    /// Every alert, or the first reason one of them cannot be taken.
    pub fn into_incoming(self, max_alerts: usize) -> Result<Vec<Incoming>, ApiError> {
        self.into_incoming_with(max_alerts, &Redactor::default())
    }

    /// Every alert, each record measured as `redactor` will leave it, or the first reason one
    /// of them cannot be taken: a notification is taken whole or refused whole (400 naming the
    /// field), never half-applied.
    pub fn into_incoming_with(
        self,
        max_alerts: usize,
        redactor: &Redactor,
    ) -> Result<Vec<Incoming>, ApiError> {
        if self.version != "4" {
            return Err(ApiError::bad_request(
                "version",
                format!(
                    "webhook payload version `{}` is not supported; Alertmanager 0.25+ sends \"4\"",
                    self.version
                ),
            ));
        }
        // A whole count within the documented int64 range (2^63 is the first value past it).
        let n = &self.truncated_alerts;
        let whole = match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => u <= i64::MAX as u64,
            (None, Some(f)) => f >= 0.0 && f.fract() == 0.0 && f < 9_223_372_036_854_775_808.0,
            (None, None) => false,
        };
        if !whole {
            return Err(ApiError::bad_request(
                "truncatedAlerts",
                "a count: 0 or more",
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
        let group_labels = pairs("groupLabels", &self.group_labels, Over::Refuse)?;
        // Informational, and repeated on every alert's record: cut, never refused.
        let group_key = cut_over(&self.group_key);
        let receiver = cut_over(&self.receiver);
        let external_url = cut_over(&self.external_url);
        // As written: JSON escapes a control character in six bytes.
        let json_len = |v: &str| serde_json::to_string(v).map_or(v.len(), |j| j.len());
        let repeated = 2 * json_len(&group_key)
            + json_len(&receiver)
            + json_len(&external_url)
            + group_labels
                .iter()
                .map(|p| json_len(&p.key) + json_len(&p.value) + 8)
                .sum::<usize>();
        if repeated.saturating_mul(self.alerts.len()) > MAX_REPEATED_BYTES {
            return Err(ApiError::bad_request(
                "groupLabels",
                format!(
                    "the group fields (groupKey, groupLabels, receiver, externalURL: {repeated} bytes) repeat on each of the {} alerts, over {} MiB in all; group by fewer or shorter labels, or lower the receiver's max_alerts",
                    self.alerts.len(),
                    MAX_REPEATED_BYTES >> 20
                ),
            ));
        }
        let truncated = self.truncated();
        if truncated > 0 {
            // Alertmanager kept these back (the receiver's max_alerts): never seen here.
            tracing::warn!(
                group_key = %group_key,
                truncated,
                "Alertmanager truncated this notification: alerts it held back are not here; raise the receiver's max_alerts or the body limit"
            );
        }
        let one = |i: usize, a: AmAlert| -> Result<Incoming, ApiError> {
            let name = a
                .labels
                .get("alertname")
                .filter(|n| !n.is_empty() && n.chars().count() <= 256)
                .cloned()
                .ok_or_else(|| {
                    ApiError::bad_request(
                        format!("alerts[{i}].labels.alertname"),
                        "every alert needs its `alertname` label, 1 to 256 characters",
                    )
                })?;
            if a.fingerprint.is_empty() || a.fingerprint.chars().count() > 128 {
                return Err(ApiError::bad_request(
                    format!("alerts[{i}].fingerprint"),
                    "Alertmanager's fingerprint is required (1 to 128 characters)",
                ));
            }
            for (field, value, max) in [
                ("startsAt", &a.starts_at, 64),
                ("endsAt", &a.ends_at, 64),
                ("generatorURL", &a.generator_url, MAX_VALUE_CHARS),
            ] {
                if value.chars().count() > max {
                    return Err(ApiError::bad_request(
                        format!("alerts[{i}].{field}"),
                        format!("at most {max} characters"),
                    ));
                }
            }
            let alert = Alert {
                name,
                fingerprint: a.fingerprint.clone(),
                labels: pairs(&format!("alerts[{i}].labels"), &a.labels, Over::Refuse)?,
                annotations: pairs(
                    &format!("alerts[{i}].annotations"),
                    &a.annotations,
                    Over::Cut,
                )?,
                source: Some(AlertSource {
                    status: match a.status {
                        AlertStatus::Firing => "firing".into(),
                        AlertStatus::Resolved => "resolved".into(),
                    },
                    starts_at: a.starts_at.clone(),
                    ends_at: a.ends_at.clone(),
                    generator_url: a.generator_url.clone(),
                    group_labels: group_labels.clone(),
                    group_key: group_key.clone(),
                }),
            };
            let mut incoming = Incoming {
                alert,
                status: a.status,
                source: json!({
                    "via": "alertmanager",
                    "group_key": group_key,
                    "receiver": receiver,
                    "truncated_alerts": truncated,
                    "starts_at": a.starts_at,
                    "ends_at": a.ends_at,
                    "generator_url": a.generator_url,
                    "external_url": external_url,
                }),
            };
            incoming.fit(&format!("alerts[{i}]"), redactor)?;
            Ok(incoming)
        };
        self.alerts
            .into_iter()
            .enumerate()
            .map(|(i, a)| one(i, a))
            .collect()
    }
}

/// `POST /api/v1/alerts`: one alert in Themis' own JSON, for sources other than Alertmanager.
/// Its `name` is its `alertname`: what routes it to an agent and what its incident is called.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnAlert {
    /// The alert's name (Alertmanager's `alertname`), which routes it. A `labels.alertname`
    /// is optional; when given it must be the same, or the alert is refused (400 naming
    /// `labels.alertname`): an alert that says two names would be routed by one and read by
    /// the other.
    #[schema(min_length = 1, max_length = 256)]
    pub name: String,
    /// Its identity for deduplication [default: derived from name and labels].
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    pub fingerprint: Option<String>,
    #[serde(default)]
    #[schema(schema_with = own_labels_schema)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    #[schema(schema_with = annotations_schema)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default = "firing")]
    pub status: AlertStatus,
    /// Where it came from, free text (recorded).
    #[serde(default)]
    pub source: Option<String>,
}

fn zero() -> serde_json::Number {
    0.into()
}

fn firing() -> AlertStatus {
    AlertStatus::Firing
}

impl OwnAlert {
    pub fn into_incoming(self) -> Result<Incoming, ApiError> {
        self.into_incoming_with(&Redactor::default())
    }

    /// The alert, its record measured as `redactor` will leave it.
    pub fn into_incoming_with(self, redactor: &Redactor) -> Result<Incoming, ApiError> {
        if self.name.is_empty() || self.name.chars().count() > 256 {
            return Err(ApiError::bad_request("name", "1 to 256 characters"));
        }
        if let Some(label) = self.labels.get("alertname")
            && *label != self.name
        {
            return Err(ApiError::bad_request(
                "labels.alertname",
                format!(
                    "`{}` is not the alert's `name` (`{}`), which routes it: make them the same or leave the label out",
                    label.chars().take(256).collect::<String>(),
                    self.name
                ),
            ));
        }
        let fingerprint = match self.fingerprint {
            Some(f) if !f.is_empty() && f.chars().count() <= 128 => f,
            Some(_) => {
                return Err(ApiError::bad_request("fingerprint", "1 to 128 characters"));
            }
            None => {
                // Like Alertmanager's: the same name and labels are the same alert. The
                // `alertname` label is optional and says the name again (checked above): with it
                // or without, one alert — its `resolved` must find its firing.
                let mut h = Sha256::new();
                h.update(self.name.as_bytes());
                for (k, v) in self.labels.iter().filter(|(k, _)| *k != "alertname") {
                    h.update([0xff]);
                    h.update(k.as_bytes());
                    h.update([0xfe]);
                    h.update(v.as_bytes());
                }
                hex::encode(&h.finalize()[..8])
            }
        };
        let labels = pairs("labels", &self.labels, Over::Refuse)?;
        let annotations = pairs("annotations", &self.annotations, Over::Cut)?;
        let mut incoming = Incoming {
            alert: Alert {
                name: self.name,
                fingerprint,
                labels,
                annotations,
                source: None,
            },
            status: self.status,
            source: json!({ "via": "api", "source": self.source.as_deref().map(cut_over) }),
        };
        incoming.fit("", redactor)?;
        Ok(incoming)
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
            truncated_alerts: 0.into(),
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
    fn a_record_is_measured_as_redaction_leaves_it() {
        // Short assignments that redaction lengthens (`pwd=1` → `pwd=[redacted]`): under the
        // bound as sent, over it as written, so annotations are cut until the written record
        // fits — else the audit would keep a digest and the accepted alert would be lost.
        let mut n = notification("4", Some("X"));
        for i in 0..60 {
            n.alerts[0]
                .annotations
                .insert(format!("note{i:02}"), "pwd=1 ".repeat(330));
        }
        let redactor = Redactor::default();
        let raw = serde_json::to_vec(&n.alerts[0].annotations)
            .expect("json")
            .len();
        assert!(raw < MAX_ALERT_RECORD_BYTES, "{raw}");
        let taken = n.into_incoming_with(10, &redactor).expect("taken");
        let written = taken[0].record_bytes(&redactor);
        assert!(written <= MAX_ALERT_RECORD_BYTES, "{written}");
        assert!(
            taken[0]
                .alert
                .annotations
                .iter()
                .any(|p| p.value.starts_with(CUT_WHOLE)),
            "something was cut"
        );
    }

    #[test]
    fn a_long_annotation_is_cut_with_a_marker_and_a_long_label_refused() {
        let long = "x".repeat(3000);
        let mut n = notification("4", Some("X"));
        n.alerts[0]
            .annotations
            .insert("description".into(), long.clone());
        let ok = n.into_incoming(10).expect("taken");
        let description = ok[0].alert.annotations[0].value.as_str();
        assert!(
            (MAX_VALUE_CHARS - 2..=MAX_VALUE_CHARS).contains(&description.chars().count()),
            "{description}"
        );
        let kept = description.chars().take_while(|c| *c == 'x').count();
        assert!(
            description.ends_with(&format!(
                " …[{} more characters cut by Themis]",
                3000 - kept
            )),
            "{description}"
        );
        let just_over = "y".repeat(MAX_VALUE_CHARS + 1);
        assert!(cut(&just_over).chars().count() <= MAX_VALUE_CHARS);
        let mut n = notification("4", Some("X"));
        n.alerts[0].labels.insert("pod".into(), long);
        let e = n.into_incoming(10).expect_err("a label is identity");
        assert_eq!(e.field.as_deref(), Some("alerts[0].labels.pod"));
    }

    #[test]
    fn an_alert_is_kept_within_one_whole_record_never_a_digest_of_it() {
        // 200 annotations of 2000 characters: about 400 KB, over what one record keeps whole.
        let mut n = notification("4", Some("X"));
        for k in 0..200 {
            n.alerts[0]
                .annotations
                .insert(format!("note{k:03}"), format!("{k:03}").repeat(666));
        }
        let ok = n
            .into_incoming(10)
            .expect("taken, its longest annotations cut");
        let bytes = ok[0].record_bytes(&Redactor::default());
        assert!(bytes <= MAX_ALERT_RECORD_BYTES, "{bytes}");
        let cut_whole = ok[0]
            .alert
            .annotations
            .iter()
            .filter(|p| p.value.starts_with(CUT_WHOLE))
            .count();
        assert!(
            (1..200).contains(&cut_whole),
            "only as many cut as needed: {cut_whole}"
        );
        // Labels alone over it are refused by name.
        let mut n = notification("4", Some("X"));
        for k in 0..100 {
            n.alerts[0]
                .labels
                .insert(format!("l{k:03}"), "v".repeat(MAX_VALUE_CHARS));
        }
        let e = n.into_incoming(10).expect_err("labels are identity");
        assert_eq!(e.field.as_deref(), Some("alerts[0].labels"));
        // The same for Themis' own JSON, whose free-text source is cut too.
        let own = OwnAlert {
            name: "X".into(),
            fingerprint: None,
            labels: BTreeMap::new(),
            annotations: (0..200)
                .map(|k| (format!("a{k}"), "z".repeat(2000)))
                .collect(),
            status: AlertStatus::Firing,
            source: Some("s".repeat(300_000)),
        }
        .into_incoming()
        .expect("taken");
        assert!(own.record_bytes(&Redactor::default()) <= MAX_ALERT_RECORD_BYTES);
        assert!(
            own.source["source"]
                .as_str()
                .expect("source")
                .chars()
                .count()
                <= MAX_VALUE_CHARS
        );
    }

    #[test]
    fn group_fields_are_cut_and_what_they_repeat_to_is_bounded() {
        let mut n = notification("4", Some("X"));
        n.group_key = "k".repeat(500_000);
        n.external_url = "u".repeat(500_000);
        let ok = n.into_incoming(10).expect("cut, not refused");
        for field in ["group_key", "external_url"] {
            let kept = ok[0].source[field].as_str().expect(field);
            assert!(kept.chars().count() <= MAX_VALUE_CHARS, "{field}");
            assert!(kept.contains("cut by Themis"), "{field}");
        }
        // Many small alerts under large group labels: refused before anything is repeated.
        let mut n = notification("4", Some("X"));
        n.group_labels = (0..200)
            .map(|k| (format!("g{k:03}"), "v".repeat(2000)))
            .collect();
        let one = n.alerts.remove(0);
        n.alerts = (0..100)
            .map(|k| AmAlert {
                fingerprint: format!("f{k}"),
                labels: one.labels.clone(),
                annotations: BTreeMap::new(),
                starts_at: String::new(),
                ends_at: String::new(),
                generator_url: String::new(),
                status: AlertStatus::Firing,
            })
            .collect();
        let e = n
            .into_incoming(usize::MAX)
            .expect_err("over the repeat budget");
        assert_eq!(e.field.as_deref(), Some("groupLabels"));
    }

    #[test]
    fn an_own_alert_says_one_name() {
        let alert = |label: Option<&str>| OwnAlert {
            name: "KafkaConsumerLag".into(),
            fingerprint: None,
            labels: label
                .map(|l| BTreeMap::from([("alertname".to_string(), l.to_string())]))
                .unwrap_or_default(),
            annotations: BTreeMap::new(),
            status: AlertStatus::Firing,
            source: None,
        };
        let e = alert(Some("PostgresLockWaits"))
            .into_incoming()
            .expect_err("two names");
        assert_eq!(e.field.as_deref(), Some("labels.alertname"));
        assert!(e.message.contains("make them the same"), "{e}");
        let named = alert(Some("KafkaConsumerLag"))
            .into_incoming()
            .expect("the same name");
        let unnamed = alert(None).into_incoming().expect("no label");
        // One alert either way: a `resolved` sent with the label finds its firing sent without.
        assert_eq!(named.alert.fingerprint, unnamed.alert.fingerprint);
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
