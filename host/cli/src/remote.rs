//! Answers through a running `themis serve` (`--server URL`): the approver is whoever owns the
//! token (THEMIS_TOKEN or --token-file), the service applies the same rules as the local path.

use crate::fail;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// The bearer token: the file's first line, or THEMIS_TOKEN.
fn token(file: Option<&Path>) -> Result<String, String> {
    let token = match file {
        Some(f) => themis_core::files::read_text(f, themis_core::files::limits::KEY)
            .map_err(|e| format!("{}: {e}", f.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
        None => std::env::var("THEMIS_TOKEN").unwrap_or_default(),
    };
    if token.is_empty() {
        return Err(
            "--server needs your approver token: export THEMIS_TOKEN or pass --token-file FILE"
                .into(),
        );
    }
    Ok(token)
}

async fn post(server: &str, token_file: Option<&Path>, path: &str, body: Value) -> ExitCode {
    let token = match token(token_file) {
        Ok(t) => t,
        Err(e) => return fail(2, e),
    };
    let url = format!("{}{path}", server.trim_end_matches('/'));
    // An approval runs the runbook before the answer comes back: allow for it.
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(900))
        .build()
    {
        Ok(c) => c,
        Err(e) => return fail(2, format!("HTTP client: {e}")),
    };
    let response = match client
        .post(&url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return fail(2, format!("{server}: {}", e.without_url())),
    };
    let status = response.status();
    let value: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        println!(
            "{} {} · agent {} · {}",
            value["id"].as_str().unwrap_or("?"),
            value["alertname"].as_str().unwrap_or("?"),
            value["agent"].as_str().unwrap_or("?"),
            value["status"].as_str().unwrap_or("?"),
        );
        ExitCode::SUCCESS
    } else {
        let message = value["message"].as_str().unwrap_or("no message");
        fail(
            if status.is_client_error() { 1 } else { 2 },
            format!("{server}: HTTP {}: {message}", status.as_u16()),
        )
    }
}

pub async fn approve(
    server: &str,
    token_file: Option<&Path>,
    id: &str,
    digest: Option<String>,
) -> ExitCode {
    let Some(digest) = digest else {
        return fail(
            2,
            format!(
                "with --server, say which plan you approve: `themis approve {id} --digest sha256:…` (the escalation and GET /api/v1/approvals show it)"
            ),
        );
    };
    post(
        server,
        token_file,
        &format!("/api/v1/approvals/{id}/approve"),
        json!({ "plan_digest": digest }),
    )
    .await
}

pub async fn reject(server: &str, token_file: Option<&Path>, id: &str, reason: &str) -> ExitCode {
    post(
        server,
        token_file,
        &format!("/api/v1/approvals/{id}/reject"),
        json!({ "reason": reason }),
    )
    .await
}

pub async fn adjust(
    server: &str,
    token_file: Option<&Path>,
    id: &str,
    runbook: &str,
    params: &BTreeMap<String, String>,
) -> ExitCode {
    post(
        server,
        token_file,
        &format!("/api/v1/approvals/{id}/adjust"),
        json!({ "runbook": runbook, "params": params }),
    )
    .await
}
