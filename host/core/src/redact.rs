//! Secrets never leave the host: before anything is written to the audit, sent to a model, posted
//! to Slack or shown on a page, it goes through one [`Redactor`], which removes
//!
//! - values under secret-looking keys, in JSON objects and in key/value pairs (alert labels are
//!   stored as `{key, value}`, evidence as `[key, value]`);
//! - secrets by their shape, wherever they appear in text: credentials inside URLs,
//!   `Authorization`/bearer values, `password=…`-style assignments, cloud access keys, JWTs,
//!   Slack and GitHub tokens, PEM private keys;
//! - configured secret values (the Slack webhook URL, tokens), wherever they appear.

use crate::types::{Alert, Pair};
use regex::{Regex, RegexSet};
use serde_json::Value;
use std::sync::OnceLock;

const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "api-key",
    "authorization",
    "private_key",
    "private-key",
    "access_key",
    "access-key",
    "credential",
    "webhook_url",
    "dsn",
    "cookie",
];

pub const REDACTED: &str = "[redacted]";

#[derive(Debug, Clone, Default)]
pub struct Redactor {
    values: Vec<String>,
}

/// Does a key name a secret? (`prompt_tokens`-style counts are handled by the caller.)
pub fn secret_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|s| lower.contains(s))
}

/// Secret shapes, and what each is replaced with; and all of them as one set, so text without a
/// secret (nearly all of it) is scanned once.
fn patterns() -> &'static (RegexSet, Vec<(Regex, &'static str)>) {
    static PATTERNS: OnceLock<(RegexSet, Vec<(Regex, &'static str)>)> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        let list: Vec<(&str, &str)> = vec![
            // PEM private keys (a block cut short still hides its rest).
            (
                r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)",
                "[redacted private key]",
            ),
            // scheme://user:password@host
            (
                r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*):[^@\s/]+@",
                "${1}:[redacted]@",
            ),
            // Authorization: Bearer xyz / Authorization: xyz
            (
                r#"(?i)(authorization["']?\s*[:=]\s*["']?)(?:(?:bearer|basic|token)\s+)?[^\s"',;]+"#,
                "${1}[redacted]",
            ),
            // Bearer xyz anywhere
            (r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}", "${1} [redacted]"),
            // password=…, api_key: …, "secret": "…"
            (
                r#"(?i)\b([a-z0-9_.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|private[_-]?key|access[_-]?key|credential)[a-z0-9_.-]*["']?\s*[:=]\s*)("[^"]*"|'[^']*'|[^\s,;&"']+)"#,
                "${1}[redacted]",
            ),
            // AWS access key ids
            (r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b", "[redacted]"),
            // JWTs
            (
                r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}",
                "[redacted]",
            ),
            // Slack tokens and webhooks
            (r"\bxox[abposr]-[A-Za-z0-9-]{10,}", "[redacted]"),
            (r"(?i)https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+", "[redacted]"),
            // GitHub tokens
            (r"\bgh[pousr]_[A-Za-z0-9]{30,}", "[redacted]"),
            (r"\bgithub_pat_[A-Za-z0-9_]{30,}", "[redacted]"),
            // Google API keys, Stripe-style secret keys
            (r"\bAIza[0-9A-Za-z_-]{35}", "[redacted]"),
            (r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}", "[redacted]"),
        ];
        // ASCII word boundaries: they keep every pattern on the fast DFA engines.
        let list: Vec<(String, &str)> = list
            .into_iter()
            .map(|(source, with)| (source.replace(r"\b", r"(?-u:\b)"), with))
            .collect();
        let set = RegexSet::new(list.iter().map(|(s, _)| s.as_str()))
            .unwrap_or_else(|_| RegexSet::empty());
        let each = list
            .iter()
            .filter_map(|(source, with)| Regex::new(source).ok().map(|r| (r, *with)))
            .collect();
        (set, each)
    })
}

impl Redactor {
    /// Also redact these exact values wherever they appear inside strings.
    pub fn with_values(values: impl IntoIterator<Item = String>) -> Self {
        Redactor {
            values: values.into_iter().filter(|v| v.len() >= 4).collect(),
        }
    }

    pub fn redact(&self, value: Value) -> Value {
        match value {
            Value::Object(map) => {
                // A `{key|name, value}` pair whose key looks secret hides its value.
                let pair_key = map
                    .get("key")
                    .or_else(|| map.get("name"))
                    .and_then(Value::as_str)
                    .filter(|k| map.contains_key("value") && secret_key(k))
                    .is_some();
                Value::Object(
                    map.into_iter()
                        .map(|(k, v)| {
                            let lower = k.to_ascii_lowercase();
                            // A token *count* (`prompt_tokens: 321`) is not a secret; any other
                            // value under a secret-looking key is, numbers included.
                            let count = lower.ends_with("tokens") && v.is_number();
                            if (secret_key(&k) && !count) || (pair_key && k == "value") {
                                (k, Value::String(REDACTED.into()))
                            } else {
                                (k, self.redact(v))
                            }
                        })
                        .collect(),
                )
            }
            Value::Array(items) => {
                // `[key, value]`: evidence and outputs are kept as two-element arrays.
                if let [Value::String(k), Value::String(_)] = items.as_slice()
                    && secret_key(k)
                {
                    return Value::Array(vec![
                        Value::String(k.clone()),
                        Value::String(REDACTED.into()),
                    ]);
                }
                Value::Array(items.into_iter().map(|v| self.redact(v)).collect())
            }
            Value::String(s) => Value::String(self.redact_text(&s)),
            other => other,
        }
    }

    /// Secrets out of free text: configured values, then every secret shape.
    pub fn redact_text(&self, text: &str) -> String {
        let mut s = text.to_owned();
        for secret in &self.values {
            if s.contains(secret.as_str()) {
                s = s.replace(secret.as_str(), REDACTED);
            }
        }
        let (set, each) = patterns();
        let hits = set.matches(&s);
        if !hits.matched_any() {
            return s;
        }
        for (i, (pattern, with)) in each.iter().enumerate() {
            if hits.matched(i) {
                s = pattern.replace_all(&s, *with).into_owned();
            }
        }
        s
    }

    /// A key/value pair with its value redacted by key or by content.
    pub fn redact_pair(&self, key: &str, value: &str) -> String {
        if secret_key(key) {
            REDACTED.into()
        } else {
            self.redact_text(value)
        }
    }

    /// An alert as the host keeps it: labels and annotations redacted by key and by content.
    pub fn redact_alert(&self, alert: Alert) -> Alert {
        let pairs = |list: Vec<Pair>| {
            list.into_iter()
                .map(|p| Pair {
                    value: self.redact_pair(&p.key, &p.value),
                    key: p.key,
                })
                .collect()
        };
        Alert {
            name: self.redact_text(&alert.name),
            fingerprint: alert.fingerprint,
            labels: pairs(alert.labels),
            annotations: pairs(alert.annotations),
            source: alert.source.map(|s| crate::types::AlertSource {
                generator_url: self.redact_text(&s.generator_url),
                group_labels: pairs(s.group_labels),
                group_key: self.redact_text(&s.group_key),
                ..s
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_keys_and_configured_values_are_redacted() {
        let r = Redactor::with_values(["https://hooks.example/T000/B000/XXXX".to_string()]);
        let out = r.redact(json!({
            "slack_token": "xoxb-1",
            "nested": { "DB_PASSWORD": "hunter2", "url": "posted to https://hooks.example/T000/B000/XXXX ok" },
            "list": [ { "api_key": "k" } ],
            "plain": "kept",
            "usage": { "prompt_tokens": 321 }
        }));
        assert_eq!(
            out["usage"]["prompt_tokens"], 321,
            "a count is not a secret"
        );
        assert_eq!(out["slack_token"], REDACTED);
        assert_eq!(out["nested"]["DB_PASSWORD"], REDACTED);
        assert_eq!(out["nested"]["url"], "posted to [redacted] ok");
        assert_eq!(out["list"][0]["api_key"], REDACTED);
        assert_eq!(out["plain"], "kept");
        let numeric = r.redact(json!({ "db_password": 12345678 }));
        assert_eq!(numeric["db_password"], REDACTED);
    }

    #[test]
    fn pairs_and_secret_shapes_are_redacted_by_content() {
        let r = Redactor::default();
        let labels = r.redact(json!({ "labels": [
            { "key": "db_password", "value": "hunter2" },
            { "key": "team", "value": "payments" },
        ], "evidence": [["api_token", "abc"], ["lag", "12"]] }));
        assert_eq!(labels["labels"][0]["value"], REDACTED);
        assert_eq!(labels["labels"][1]["value"], "payments");
        assert_eq!(labels["evidence"][0][1], REDACTED);
        assert_eq!(labels["evidence"][1][1], "12");
        let text = [
            ("dsn postgres://app:s3cr3t@db:5432/x", "s3cr3t"),
            ("Authorization: Bearer abcdefghijklmnop", "abcdefghijklmnop"),
            (
                "curl -H 'authorization: Basic dXNlcjpwYXNz'",
                "dXNlcjpwYXNz",
            ),
            ("set password=hunter22 now", "hunter22"),
            ("key AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE"),
            (
                "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.abcdefghijk",
                "eyJzdWIiOiIxMjM0NSJ9",
            ),
            ("slack xoxb-123456789012-abcdefghij", "xoxb-123456789012"),
            (
                "hook https://hooks.slack.com/services/T000/B000/XXXX",
                "T000/B000",
            ),
            (
                "gh ghp_abcdefghijklmnopqrstuvwxyz0123456789",
                "ghp_abcdefghij",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIB\n-----END RSA PRIVATE KEY-----",
                "MIIEpAIB",
            ),
        ];
        for (input, secret) in text {
            let out = r.redact_text(input);
            assert!(!out.contains(secret), "{input:?} → {out:?}");
            assert!(out.contains("[redacted"), "{input:?} → {out:?}");
        }
        // Ordinary operational text stays readable.
        for plain in [
            "consumer group orders lags 12000 messages",
            "postgres://db:5432/app",
            "rate(process_cpu_seconds_total{job=\"kafka\"}[5m])",
        ] {
            assert_eq!(r.redact_text(plain), plain);
        }
    }

    #[test]
    fn alerts_are_redacted_by_label_key_and_content() {
        let r = Redactor::default();
        let alert = r.redact_alert(Alert {
            name: "PostgresDown".into(),
            fingerprint: "f".into(),
            labels: vec![
                Pair::new("db_password", "hunter2"),
                Pair::new("instance", "db-1"),
            ],
            annotations: vec![Pair::new(
                "description",
                "connect with postgres://app:pw1234@db/x and Authorization: Bearer t0k3n12345",
            )],
            source: Some(crate::types::AlertSource {
                status: "firing".into(),
                generator_url: "http://admin:s3cretpw@prometheus:9090/graph?g0.expr=up".into(),
                ..Default::default()
            }),
        });
        assert!(
            alert
                .source
                .as_ref()
                .is_some_and(|s| !s.generator_url.contains("s3cretpw")),
            "{alert:?}"
        );
        assert_eq!(alert.labels[0].value, REDACTED);
        assert_eq!(alert.labels[1].value, "db-1");
        let d = &alert.annotations[0].value;
        assert!(!d.contains("pw1234") && !d.contains("t0k3n12345"), "{d}");
    }
}
