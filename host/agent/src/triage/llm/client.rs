//! One chat completion against an OpenAI-compatible endpoint, through async-openai.
//!
//! The client is built without async-openai's own retry layer: the selector makes exactly one
//! bounded retry itself, so a failing endpoint costs at most two requests and two timeouts.

use super::config::LlmConfig;
use super::prompt::Message;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    CreateChatCompletionRequest, FinishReason, ResponseFormat, ResponseFormatJsonSchema,
};
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

/// What came back.
#[derive(Debug, Clone)]
pub struct Completion {
    pub content: Option<String>,
    pub refusal: Option<String>,
    pub filtered: bool,
    /// Stopped at the token limit (`finish_reason: length`): the JSON is cut off.
    pub truncated: bool,
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The endpoint could not give an answer at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the endpoint: {0}")]
    Unreachable(String),
    #[error("HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("the endpoint's response is not a chat completion: {0}")]
    Protocol(String),
}

impl CallError {
    pub fn code(&self) -> &'static str {
        match self {
            CallError::Timeout(_) => "timeout",
            CallError::Unreachable(_) => "unreachable",
            CallError::Http { .. } => "http-error",
            CallError::Protocol(_) => "protocol-error",
        }
    }
}

pub struct LlmClient {
    client: async_openai::Client<OpenAIConfig>,
    config: LlmConfig,
}

impl LlmClient {
    /// `api_key` comes from the environment variable the config names (or none, for local
    /// servers that need no key).
    pub fn new(config: LlmConfig, api_key: Option<String>) -> Result<LlmClient, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            // A redirect could lead an https endpoint to plain http or another host, past the
            // rule `config.rs` enforces on the configured URL: none is followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let mut openai = OpenAIConfig::new().with_api_base(config.base_url.clone());
        // Local servers take no key; async-openai would otherwise read OPENAI_API_KEY itself.
        openai = openai.with_api_key(api_key.unwrap_or_default());
        let client = async_openai::Client::with_config(openai).with_http_service(Bounded {
            client: http,
            limit: MAX_RESPONSE_BYTES,
        });
        Ok(LlmClient { client, config })
    }

    /// The model asked, as configured.
    pub fn model(&self) -> &str {
        &self.config.model
    }

    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    pub async fn complete(
        &self,
        messages: &[Message],
        schema: &Value,
    ) -> Result<Completion, CallError> {
        let request = CreateChatCompletionRequest {
            model: self.config.model.clone(),
            messages: messages.iter().map(to_openai).collect(),
            max_completion_tokens: Some(self.config.max_tokens),
            temperature: Some(self.config.temperature),
            response_format: Some(ResponseFormat::JsonSchema {
                json_schema: ResponseFormatJsonSchema {
                    description: Some("Themis triage: one catalog runbook or escalate".into()),
                    name: "themis_triage".into(),
                    schema: schema.clone(),
                    strict: Some(true),
                },
            }),
            ..Default::default()
        };
        let chat = self.client.chat();
        let response = match tokio::time::timeout(self.config.timeout, chat.create(request)).await {
            Err(_) => return Err(CallError::Timeout(self.config.timeout)),
            Ok(Err(e)) => return Err(classify(e, self.config.timeout)),
            Ok(Ok(r)) => r,
        };
        let usage = response.usage.as_ref().map(|u| Usage {
            prompt_tokens: u64::from(u.prompt_tokens),
            completion_tokens: u64::from(u.completion_tokens),
        });
        let Some(choice) = response.choices.into_iter().next() else {
            return Err(CallError::Protocol("no choices in the response".into()));
        };
        Ok(Completion {
            content: choice.message.content,
            refusal: choice.message.refusal.filter(|r| !r.is_empty()),
            filtered: choice.finish_reason == Some(FinishReason::ContentFilter),
            truncated: choice.finish_reason == Some(FinishReason::Length),
            usage,
        })
    }
}

fn to_openai(m: &Message) -> ChatCompletionRequestMessage {
    match m.role {
        "system" => ChatCompletionRequestSystemMessage {
            content: m.content.clone().into(),
            name: None,
        }
        .into(),
        "assistant" => ChatCompletionRequestAssistantMessage::from(m.content.clone()).into(),
        _ => ChatCompletionRequestUserMessage::from(m.content.as_str()).into(),
    }
}

/// The most of an endpoint's answer the host reads. `max_tokens` binds only an honest server;
/// a triage answer is a runbook id, a few parameters and a short reasoning.
pub const MAX_RESPONSE_BYTES: usize = 256 << 10;

/// The transport under async-openai: reqwest, with the response body read here, bounded, and
/// handed on whole — a server cannot make the host hold more than [`MAX_RESPONSE_BYTES`] of an
/// answer however it streams it.
#[derive(Clone)]
struct Bounded {
    client: reqwest::Client,
    limit: usize,
}

/// An answer over the bound: a protocol error (the selector retries once, then escalates).
#[derive(Debug, thiserror::Error)]
#[error("the answer is longer than the host reads ({0} bytes)")]
struct TooLong(usize);

impl tower::Service<HttpRequestFactory> for Bounded {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<reqwest::Response, OpenAIError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequestFactory) -> Self::Future {
        let client = self.client.clone();
        let limit = self.limit;
        Box::pin(async move {
            let request = request.build().await?;
            let mut response = client.execute(request).await?;
            if response.content_length().is_some_and(|n| n > limit as u64) {
                return Err(OpenAIError::Boxed(Box::new(TooLong(limit))));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > limit {
                    return Err(OpenAIError::Boxed(Box::new(TooLong(limit))));
                }
                body.extend_from_slice(&chunk);
            }
            let mut whole = http::Response::builder()
                .status(response.status())
                .version(response.version());
            if let Some(headers) = whole.headers_mut() {
                *headers = response.headers().clone();
            }
            let whole = whole
                .body(body)
                .map_err(|e| OpenAIError::Boxed(Box::new(e)))?;
            Ok(reqwest::Response::from(whole))
        })
    }
}

fn classify(error: OpenAIError, timeout: Duration) -> CallError {
    match error {
        OpenAIError::ApiError(api) => CallError::Http {
            status: api.status_code.as_u16(),
            // A server's error text ends up in the audit and on the page: keep it short.
            message: api.api_error.message.chars().take(200).collect(),
        },
        OpenAIError::Reqwest(e) if e.is_connect() => CallError::Unreachable(e.to_string()),
        OpenAIError::Reqwest(e) if e.is_timeout() => CallError::Timeout(timeout),
        OpenAIError::Reqwest(e) => match e.status() {
            Some(status) => CallError::Http {
                status: status.as_u16(),
                message: e.to_string(),
            },
            None => CallError::Unreachable(e.to_string()),
        },
        OpenAIError::JSONDeserialize(e, body) => CallError::Protocol(format!(
            "{e}; body starts: {}",
            body.chars().take(200).collect::<String>()
        )),
        other => CallError::Protocol(other.to_string()),
    }
}
