//! Secrets never reach the audit: values under secret-looking keys and any configured secret
//! value (a webhook URL, a token) are replaced before a record is hashed and written.

use serde_json::Value;

const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "private_key",
    "webhook_url",
];

pub const REDACTED: &str = "[redacted]";

#[derive(Debug, Clone, Default)]
pub struct Redactor {
    values: Vec<String>,
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
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| {
                        let lower = k.to_ascii_lowercase();
                        // A token *count* (`prompt_tokens: 321`, `tokens: 363`) is not a secret;
                        // any other value under a secret-looking key is, numbers included.
                        let count = lower.ends_with("tokens") && v.is_number();
                        if SECRET_KEYS.iter().any(|s| lower.contains(s)) && !count {
                            (k, Value::String(REDACTED.into()))
                        } else {
                            (k, self.redact(v))
                        }
                    })
                    .collect(),
            ),
            Value::Array(items) => {
                Value::Array(items.into_iter().map(|v| self.redact(v)).collect())
            }
            Value::String(s) => Value::String(self.scrub(s)),
            other => other,
        }
    }

    fn scrub(&self, mut s: String) -> String {
        for secret in &self.values {
            if s.contains(secret.as_str()) {
                s = s.replace(secret.as_str(), REDACTED);
            }
        }
        s
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
}
