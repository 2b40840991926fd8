//! The plain data a step is given and an alert is made of. The sandbox converts these to and
//! from the WIT records at the guest boundary; nothing above it knows the generated types.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pair {
    pub key: String,
    pub value: String,
}

impl Pair {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Pair {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// An alert as the host holds it: a name, a fingerprint (its identity for deduplication),
/// labels and annotations, and what its source said about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub name: String,
    pub fingerprint: String,
    pub labels: Vec<Pair>,
    pub annotations: Vec<Pair>,
    /// Alertmanager's view of it, when it came from there: none for an alert made by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<AlertSource>,
}

/// What Alertmanager sends with each alert of a notification, kept as sent (times are its
/// RFC 3339 text).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertSource {
    /// `firing` or `resolved`.
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub starts_at: String,
    /// Alertmanager's zero time (`0001-01-01T00:00:00Z`) while firing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ends_at: String,
    /// The rule's page in Prometheus: the graph a human wants first.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub generator_url: String,
    /// The labels the notification grouped by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_labels: Vec<Pair>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group_key: String,
}

impl Alert {
    /// An alert of Themis' own form with nothing but a name and a fingerprint (labels and
    /// annotations added by the caller).
    pub fn named(name: &str, fingerprint: &str) -> Alert {
        Alert {
            name: name.to_owned(),
            fingerprint: fingerprint.to_owned(),
            labels: Vec::new(),
            annotations: Vec::new(),
            source: None,
        }
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.value.as_str())
    }
}

/// A bound parameter value, typed as the manifest declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ParamValue {
    Text(String),
    Integer(i64),
    Number(f64),
    Boolean(bool),
}

impl ParamValue {
    /// The value as JSON, for comparing with capability call arguments and for records.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ParamValue::Text(s) => serde_json::Value::String(s.clone()),
            ParamValue::Integer(i) => serde_json::Value::from(*i),
            ParamValue::Number(n) => serde_json::Value::from(*n),
            ParamValue::Boolean(b) => serde_json::Value::Bool(*b),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Param {
    pub name: String,
    pub value: ParamValue,
}

/// One output of an earlier step, as later steps see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepOutput {
    pub step: String,
    pub key: String,
    pub value: String,
}

/// The four phases of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Precondition,
    Action,
    Postcondition,
    Rollback,
}

impl Phase {
    /// Phases in which a step may change the world: `precondition` and `postcondition` only look.
    pub fn may_mutate(self) -> bool {
        matches!(self, Phase::Action | Phase::Rollback)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Precondition => "precondition",
            Phase::Action => "action",
            Phase::Postcondition => "postcondition",
            Phase::Rollback => "rollback",
        })
    }
}
