//! Where an agent's parameters come from in the labels real alerts carry. Rule sets disagree on
//! names — kafka_exporter says `consumergroup`, others `group` or `consumer_group`; postgres_exporter
//! says `datname` — so an agent declares, per parameter, the labels to read in order:
//!
//! ```yaml
//! labels:
//!   group: [consumergroup, group, consumer_group]   # the first label present wins
//!   database: [datname, database]
//! ```
//!
//! Pure: resolving reads only the alert. The same resolution feeds the probes' parameters, the
//! rules' `param.<name>` facts and the model's prompt, so the three never disagree.

use crate::types::Alert;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The agent file's `labels:` section: parameter name → the labels that may carry it, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LabelMap(BTreeMap<String, Vec<String>>);

/// One parameter found in an alert, and the label it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mapped {
    pub value: String,
    pub label: String,
}

/// What an alert gives an agent: the parameters found, and for each one not found, the labels
/// that were looked for (so a human is told exactly what was missing).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Resolution {
    pub found: BTreeMap<String, Mapped>,
    pub missing: BTreeMap<String, Vec<String>>,
}

impl Resolution {
    /// The values found, by parameter name.
    pub fn values(&self) -> BTreeMap<String, String> {
        self.found
            .iter()
            .map(|(k, m)| (k.clone(), m.value.clone()))
            .collect()
    }

    /// Why `param` is not known, in words: "no `datname` or `database` label".
    pub fn why_missing(&self, param: &str) -> Option<String> {
        self.missing
            .get(param)
            .map(|labels| format!("no {} label", or_list(labels)))
    }
}

/// A label name as Prometheus allows it.
fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A parameter name as manifests declare them.
fn is_param_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `a`, `a` or `b`, `a`, `b` or `c` — each in backticks.
pub fn or_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("`{i}`")).collect();
    match quoted.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

impl LabelMap {
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [&'a str])>) -> LabelMap {
        LabelMap(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The parameter names this map can give.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Refuse a map that could never work: `(field, problem)` for the first fault.
    pub fn check(&self) -> Result<(), (String, String)> {
        for (param, labels) in &self.0 {
            let field = format!("labels.{param}");
            if !is_param_name(param) {
                return Err((
                    field,
                    "a parameter name is lower case letters, digits and `_`, starting with a letter".into(),
                ));
            }
            if labels.is_empty() {
                return Err((
                    field,
                    format!("list the labels that carry `{param}`, e.g. [{param}]"),
                ));
            }
            for (i, label) in labels.iter().enumerate() {
                if !is_label_name(label) {
                    return Err((
                        format!("{field}[{i}]"),
                        format!(
                            "`{label}` is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)"
                        ),
                    ));
                }
                if labels[..i].contains(label) {
                    return Err((
                        format!("{field}[{i}]"),
                        format!("`{label}` is listed twice"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Read the alert: for each parameter the first of its labels that is present and not
    /// empty. `alertname` is the alert's name.
    pub fn resolve(&self, alert: &Alert) -> Resolution {
        let mut out = Resolution::default();
        for (param, labels) in &self.0 {
            let hit = labels.iter().find_map(|label| {
                let value = if label == "alertname" {
                    Some(alert.name.as_str())
                } else {
                    alert.label(label)
                };
                value.filter(|v| !v.is_empty()).map(|v| Mapped {
                    value: v.to_owned(),
                    label: label.clone(),
                })
            });
            match hit {
                Some(m) => {
                    out.found.insert(param.clone(), m);
                }
                None => {
                    out.missing.insert(param.clone(), labels.clone());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Pair;

    fn alert(labels: &[(&str, &str)]) -> Alert {
        Alert {
            name: "KafkaConsumergroupLag".into(),
            fingerprint: "f".into(),
            labels: labels
                .iter()
                .map(|(k, v)| Pair {
                    key: (*k).into(),
                    value: (*v).into(),
                })
                .collect(),
            annotations: Vec::new(),
            source: None,
        }
    }

    #[test]
    fn the_first_present_label_wins_and_a_missing_one_says_what_was_looked_for() {
        let map = LabelMap::from_pairs([
            ("group", &["consumergroup", "group", "consumer_group"][..]),
            ("topic", &["topic"][..]),
            ("database", &["datname", "database"][..]),
            ("alert", &["alertname"][..]),
        ]);
        assert_eq!(map.check(), Ok(()));
        let r = map.resolve(&alert(&[
            ("group", "ignored-second"),
            ("consumergroup", "orders"),
            ("topic", ""),
        ]));
        assert_eq!(r.found["group"].value, "orders");
        assert_eq!(r.found["group"].label, "consumergroup");
        assert_eq!(r.found["alert"].value, "KafkaConsumergroupLag");
        // An empty label is no label.
        assert_eq!(r.why_missing("topic").as_deref(), Some("no `topic` label"));
        assert_eq!(
            r.why_missing("database").as_deref(),
            Some("no `datname` or `database` label")
        );
        assert_eq!(r.why_missing("group"), None);
        assert_eq!(r.values().len(), 2);
    }

    #[test]
    fn a_map_that_cannot_work_is_refused_naming_the_field() {
        for (map, field) in [
            (
                LabelMap::from_pairs([("Group", &["group"][..])]),
                "labels.Group",
            ),
            (LabelMap::from_pairs([("group", &[][..])]), "labels.group"),
            (
                LabelMap::from_pairs([("group", &["consumer-group"][..])]),
                "labels.group[0]",
            ),
            (
                LabelMap::from_pairs([("group", &["group", "group"][..])]),
                "labels.group[1]",
            ),
        ] {
            assert_eq!(map.check().map_err(|(f, _)| f), Err(field.to_owned()));
        }
    }

    #[test]
    fn or_lists_read_as_english() {
        let s = |v: &[&str]| or_list(&v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>());
        assert_eq!(s(&["a"]), "`a`");
        assert_eq!(s(&["a", "b"]), "`a` or `b`");
        assert_eq!(s(&["a", "b", "c"]), "`a`, `b` or `c`");
    }
}
