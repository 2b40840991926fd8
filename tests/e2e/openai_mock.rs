//! A scripted OpenAI-compatible chat-completions server on loopback: real HTTP, the real
//! request and response shapes, answers taken from a script, every request recorded.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A normal completion whose message content is this text.
    Content(String),
    /// The model refuses (OpenAI's `message.refusal`).
    Refusal(String),
    /// An HTTP error with an OpenAI error body.
    Status(u16),
    /// Answer this content, but only after the delay (the client should time out first).
    Slow(Duration, String),
    /// This content, cut off: `finish_reason: length`.
    Truncated(String),
}

impl Answer {
    /// A completion choosing `runbook` with `parameters`.
    pub fn choose(runbook: &str, parameters: Value, confidence: f64) -> Answer {
        Answer::Content(
            json!({ "reasoning": format!("the evidence fits {runbook}"), "runbook": runbook, "parameters": parameters, "confidence": confidence })
                .to_string(),
        )
    }
}

#[derive(Clone, Default)]
struct Shared {
    script: Arc<Mutex<VecDeque<Answer>>>,
    requests: Arc<Mutex<Vec<Value>>>,
}

pub struct MockLlm {
    pub base_url: String,
    shared: Shared,
    _server: tokio::task::JoinHandle<()>,
}

impl MockLlm {
    pub async fn start(script: Vec<Answer>) -> MockLlm {
        let shared = Shared {
            script: Arc::new(Mutex::new(script.into())),
            requests: Arc::default(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockLlm {
            base_url: format!("http://{addr}/v1"),
            shared,
            _server: server,
        }
    }

    /// Every request body received, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}

async fn complete(State(shared): State<Shared>, body: String) -> Response {
    let request: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => return error(400, &format!("not JSON: {e}")),
    };
    if let Ok(mut r) = shared.requests.lock() {
        r.push(request.clone());
    }
    let next = shared.script.lock().ok().and_then(|mut s| s.pop_front());
    let model = request["model"].as_str().unwrap_or("scripted").to_owned();
    match next {
        None => error(500, "the script is exhausted"),
        Some(Answer::Status(code)) => error(code, "scripted failure"),
        Some(Answer::Refusal(text)) => completion(&model, Value::Null, json!(text), "stop"),
        Some(Answer::Content(text)) => completion(&model, json!(text), Value::Null, "stop"),
        Some(Answer::Truncated(text)) => completion(&model, json!(text), Value::Null, "length"),
        Some(Answer::Slow(delay, text)) => {
            tokio::time::sleep(delay).await;
            completion(&model, json!(text), Value::Null, "stop")
        }
    }
}

fn completion(model: &str, content: Value, refusal: Value, finish: &str) -> Response {
    let body = json!({
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 1_790_000_000u32,
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": content, "refusal": refusal },
            "finish_reason": finish,
        }],
        "usage": { "prompt_tokens": 321, "completion_tokens": 42, "total_tokens": 363 },
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn error(code: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({ "error": { "message": message, "type": "server_error", "param": null, "code": null } });
    (status, axum::Json(body)).into_response()
}
