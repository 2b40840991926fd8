//! The LLM selector: an OpenAI-compatible model as an advisor with a narrow voice.
//!
//! It names one runbook of the candidates (or `escalate`), fills that runbook's declared
//! parameters, and gives a confidence and its reasoning — nothing else reaches the runtime, and
//! policy still judges what it says. The answer is constrained by a JSON schema
//! ([`schema`]) and checked again on our side ([`reply`]). Any failure — unreachable endpoint,
//! timeout, HTTP error, refusal, malformed JSON, a runbook outside the catalog, bad parameters —
//! gets exactly one retry, then an escalation that says why; never a guess. When the endpoint
//! cannot be reached at all, the agent may fall back to its rules instead (`on_unavailable`).
//! The prompt and every raw answer go into the selection's audit record.

pub mod client;
pub mod config;
pub mod prompt;
pub mod reply;
pub mod schema;

use super::rules::RuleSelector;
use super::{Selection, SelectionInput, Selector, SelectorError};
use async_trait::async_trait;
use client::{CallError, LlmClient, Usage};
use config::{LlmConfig, OnUnavailable};
use reply::ReplyError;
use serde::Serialize;
use std::time::Instant;

/// The answer that means "a human should decide".
pub const ESCALATE: &str = "escalate";
/// Requests per selection: the first and one bounded retry.
pub const MAX_ATTEMPTS: usize = 2;
/// What the selection's audit record keeps of the prompt sent and of each raw answer: the
/// record must stay whole (an audit record past its bound keeps only a digest), so the choice,
/// its parameters and its reasoning are always on it, however large an alert or an answer.
pub const PROMPT_KEPT: usize = 64 << 10;
pub const RAW_KEPT: usize = 8 << 10;
/// What a record keeps of why an answer was not used (it can quote the answer).
pub const ERROR_KEPT: usize = 1 << 10;

/// `text` as a record keeps it: whole when short, else its head and the digest of the whole.
fn kept(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let whole = themis_core::digest(text.as_bytes());
    let (mut head, _) = themis_sandbox::limits::truncate(text, max);
    head.push_str(&format!(" [the whole is {whole}]"));
    head
}

/// One request and what came of it, for the audit.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_output: Option<String>,
    /// `None` when the answer was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
    pub latency_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

enum Failure {
    Call(CallError),
    Reply(ReplyError),
}

impl Failure {
    fn code(&self) -> &'static str {
        match self {
            Failure::Call(e) => e.code(),
            Failure::Reply(e) => e.code(),
        }
    }

    fn message(&self) -> String {
        match self {
            Failure::Call(e) => e.to_string(),
            Failure::Reply(e) => e.to_string(),
        }
    }
}

pub struct LlmSelector {
    client: LlmClient,
    /// Used only when the endpoint is unreachable and the agent says `on_unavailable: rules`.
    fallback: Option<RuleSelector>,
}

impl LlmSelector {
    pub fn new(config: LlmConfig, rules: RuleSelector) -> Result<LlmSelector, String> {
        let api_key = match &config.api_key_env {
            None => None,
            Some(var) => Some(std::env::var(var).map_err(|_| {
                format!("llm.api_key_env names `{var}`, which is not set in the environment")
            })?),
        };
        let fallback = (config.on_unavailable == OnUnavailable::Rules).then_some(rules);
        Ok(LlmSelector {
            client: LlmClient::new(config, api_key)?,
            fallback,
        })
    }
}

#[async_trait]
impl Selector for LlmSelector {
    fn name(&self) -> &str {
        "llm"
    }

    async fn select(&self, input: &SelectionInput) -> Result<Selection, SelectorError> {
        let schema = schema::response_schema(&input.candidates);
        let mut messages = prompt::messages(input);
        let mut attempts = Vec::new();
        let mut last: Option<Failure> = None;
        let mut tokens: Option<u64> = None;
        for attempt in 0..MAX_ATTEMPTS {
            let started = Instant::now();
            let result = self.client.complete(&messages, &schema).await;
            let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let (raw, usage, outcome) = match result {
                Err(e) => (None, None, Err(Failure::Call(e))),
                Ok(c) => {
                    let checked = if let Some(refusal) = c.refusal.clone() {
                        Err(ReplyError::Refused(refusal))
                    } else if c.filtered {
                        Err(ReplyError::Refused(
                            "the endpoint filtered the answer".into(),
                        ))
                    } else if c.truncated {
                        Err(ReplyError::Truncated)
                    } else {
                        reply::check(c.content.as_deref().unwrap_or(""), &input.candidates)
                    };
                    (c.content, c.usage, checked.map_err(Failure::Reply))
                }
            };
            if let Some(u) = usage {
                *tokens.get_or_insert(0) += u.prompt_tokens + u.completion_tokens;
            }
            attempts.push(Attempt {
                raw_output: raw.clone().map(|r| kept(r, RAW_KEPT)),
                error: outcome
                    .as_ref()
                    .err()
                    .map(|f| kept(f.message(), ERROR_KEPT)),
                error_code: outcome.as_ref().err().map(Failure::code),
                latency_ms,
                usage,
            });
            match outcome {
                Ok(answer) => {
                    return Ok(Selection {
                        runbook: answer.runbook,
                        params: answer.params,
                        confidence: answer.confidence,
                        reasoning: answer.reasoning,
                        selector: "llm".into(),
                        prompt: Some(kept(prompt::transcript(&messages), PROMPT_KEPT)),
                        raw_output: raw.map(|r| kept(r, RAW_KEPT)),
                        attempts,
                        tokens,
                        model: Some(self.client.model().to_owned()),
                    });
                }
                Err(failure) => {
                    let retrying = attempt + 1 < MAX_ATTEMPTS;
                    if let (true, Failure::Reply(_), Some(text)) = (retrying, &failure, &raw) {
                        // Show the model its rejected answer and why, then ask once more.
                        messages.push(prompt::Message {
                            role: "assistant",
                            content: text.clone(),
                        });
                        messages.push(prompt::correction(failure.code(), &failure.message()));
                    }
                    last = Some(failure);
                }
            }
        }
        let failure = last.unwrap_or(Failure::Call(CallError::Protocol("no attempt".into())));
        // "Unreachable" means no attempt got through at all; a wrong key or model name (HTTP
        // 4xx) or a bad answer must not hide behind the rules.
        let unreachable = attempts.iter().all(
            |a| matches!(a.error_code, Some(code) if code == "unreachable" || code == "timeout"),
        );
        // Everything sent, the retry's correction included: what the audit keeps.
        let prompt_text = kept(prompt::transcript(&messages), PROMPT_KEPT);
        if unreachable && let Some(rules) = &self.fallback {
            let mut selection = rules.select(input).await?;
            selection.reasoning = format!(
                "{} [the LLM was unavailable ({}), so the agent's rules chose]",
                selection.reasoning,
                failure.message()
            );
            selection.selector = "rules (llm unavailable)".into();
            selection.prompt = Some(prompt_text);
            selection.attempts = attempts;
            selection.tokens = tokens;
            return Ok(selection);
        }
        let raw_output = attempts.iter().rev().find_map(|a| a.raw_output.clone());
        Ok(Selection {
            prompt: Some(prompt_text),
            raw_output,
            attempts,
            tokens,
            ..Selection::escalate(
                "llm",
                format!(
                    "the LLM gave no usable answer after {MAX_ATTEMPTS} attempts ({}: {}); a human decides",
                    failure.code(),
                    kept(failure.message(), ERROR_KEPT)
                ),
            )
        })
    }
}
