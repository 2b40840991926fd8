//! The `llm:` section of an agent definition.
//!
//! ```yaml
//! llm:
//!   base_url: http://127.0.0.1:11434/v1   # any OpenAI-compatible endpoint (OpenAI, Ollama, vLLM, llama.cpp)
//!   model: qwen2.5:7b-instruct
//!   api_key_env: OPENAI_API_KEY          # the *name* of the variable holding the key; optional
//!   timeout: 30s                         # per request
//!   max_tokens: 512
//!   temperature: 0
//!   on_unavailable: escalate             # escalate (default) | rules: when the endpoint cannot be reached
//! ```

use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_TOKENS: u32 = 512;

/// What to do when the endpoint cannot be reached (after the one retry).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnUnavailable {
    #[default]
    Escalate,
    Rules,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLlm {
    base_url: String,
    model: String,
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    on_unavailable: OnUnavailable,
}

/// A validated LLM endpoint configuration. The API key itself is read from the environment
/// when the selector is built, never stored here, never audited.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmConfig {
    pub base_url: String,
    pub model: String,
    pub api_key_env: Option<String>,
    pub timeout: Duration,
    pub max_tokens: u32,
    pub temperature: f32,
    pub on_unavailable: OnUnavailable,
}

impl LlmConfig {
    pub fn new(base_url: &str, model: &str) -> Result<LlmConfig, (String, String)> {
        let url = base_url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err((
                "llm.base_url".into(),
                format!("`{base_url}` is not an http(s) URL (e.g. http://127.0.0.1:11434/v1)"),
            ));
        }
        // In clear text the key could be read and the answers forged by anyone on the path: plain
        // http only to this machine, as every other secret the host sends.
        if url.starts_with("http://") {
            let host = reqwest::Url::parse(url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default();
            if !themis_core::loopback::is_loopback(&host) {
                return Err((
                    "llm.base_url".into(),
                    format!(
                        "`{base_url}` is plain http to another machine: the API key and the model's answers would cross the network in clear text; use https://, or run the model on this machine (http://127.0.0.1:…)"
                    ),
                ));
            }
        }
        if model.trim().is_empty() {
            return Err(("llm.model".into(), "is empty".into()));
        }
        Ok(LlmConfig {
            base_url: url.to_owned(),
            model: model.to_owned(),
            api_key_env: None,
            timeout: DEFAULT_TIMEOUT,
            max_tokens: DEFAULT_MAX_TOKENS,
            temperature: 0.0,
            on_unavailable: OnUnavailable::Escalate,
        })
    }

    /// Validate the YAML form; errors are `(field, problem)`.
    pub fn from_raw(raw: RawLlm) -> Result<LlmConfig, (String, String)> {
        let mut config = LlmConfig::new(&raw.base_url, &raw.model)?;
        if let Some(t) = &raw.timeout {
            config.timeout = humantime::parse_duration(t)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    (
                        "llm.timeout".to_string(),
                        format!("`{t}` is not a duration like 30s"),
                    )
                })?;
        }
        if let Some(n) = raw.max_tokens {
            if n == 0 {
                return Err(("llm.max_tokens".into(), "must be above 0".into()));
            }
            config.max_tokens = n;
        }
        if let Some(t) = raw.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(("llm.temperature".into(), "must be between 0 and 2".into()));
            }
            config.temperature = t;
        }
        config.api_key_env = raw.api_key_env.filter(|v| !v.is_empty());
        config.on_unavailable = raw.on_unavailable;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::LlmConfig;

    #[test]
    fn plain_http_reaches_only_this_machine() {
        for ok in [
            "http://127.0.0.1:11434/v1",
            "http://localhost:8000/v1",
            "http://[::1]:8000/v1",
            "https://llm.example/v1",
            "https://203.0.113.9/v1",
        ] {
            assert!(LlmConfig::new(ok, "m").is_ok(), "{ok}");
        }
        for refused in [
            "http://203.0.113.9/v1",
            "http://llm.svc.cluster.local:8000/v1",
        ] {
            let (field, problem) = LlmConfig::new(refused, "m").expect_err(refused);
            assert_eq!(field, "llm.base_url");
            assert!(problem.contains("use https://"), "{problem}");
        }
    }
}
