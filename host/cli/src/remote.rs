//! Answers through a running `themis serve` (`--server URL`): the approver is whoever owns the
//! token (THEMIS_TOKEN or --token-file), the service applies the same rules as the local path.

use crate::fail;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// The approver's token, for `server` — refused when it would cross the network in clear text:
/// plain `http://` is for a service on this machine only (loopback), as registry pushes are.
fn token_for(server: &str, file: Option<&Path>) -> Result<String, String> {
    let url = reqwest::Url::parse(server).map_err(|e| {
        format!("--server {server}: not a URL ({e}); e.g. https://themis.example:9464")
    })?;
    let loopback = themis_core::loopback::is_loopback(url.host_str().unwrap_or_default());
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "--server {server}: plain http would send your approver token in clear text to another machine; use https:// (http:// is for a service on this machine only)"
            ));
        }
        other => return Err(format!("--server {server}: `{other}` is not http or https")),
    }
    token(file)
}

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

fn client(timeout: Option<Duration>) -> Result<reqwest::Client, ExitCode> {
    let mut b = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build().map_err(|e| fail(2, format!("HTTP client: {e}")))
}

/// `themis agents --server URL [--watch]`: the states, then (watching) the event stream.
pub async fn agents(server: &str, token_file: Option<&Path>, json: bool, watch: bool) -> ExitCode {
    let token = match token_for(server, token_file) {
        Ok(t) => t,
        Err(e) => return fail(2, e),
    };
    let http = match client(None) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let base = server.trim_end_matches('/');
    let got = http
        .get(format!("{base}/api/v1/agents"))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    let agents: Value = match got {
        Ok(r) if r.status().is_success() => r.json().await.unwrap_or(Value::Null),
        Ok(r) => {
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            return fail(
                1,
                format!(
                    "{server}: HTTP {status}: {}",
                    body["message"].as_str().unwrap_or("no message")
                ),
            );
        }
        Err(e) => return fail(2, format!("{server}: {}", e.without_url())),
    };
    if json && !watch {
        outln!(
            "{}",
            serde_json::to_string_pretty(&agents).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    outln!("{:<12} {:<12} {:<40} SINCE", "AGENT", "DOMAIN", "STATE");
    for a in agents.as_array().into_iter().flatten() {
        outln!(
            "{:<12} {:<12} {:<40} {}",
            a["name"].as_str().unwrap_or("?"),
            a["domain"].as_str().unwrap_or("?"),
            state_text(&a["state"]),
            a["since"].as_str().unwrap_or("-")
        );
    }
    if !watch {
        return ExitCode::SUCCESS;
    }
    let mut stream = match http
        .get(format!("{base}/api/v1/events"))
        .bearer_auth(&token)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            return fail(
                1,
                format!("{server}: HTTP {} on the event stream", r.status().as_u16()),
            );
        }
        Err(e) => return fail(2, format!("{server}: {}", e.without_url())),
    };
    // Subscribed (the service subscribes before it answers): from here on nothing is missed.
    if !json {
        outln!("watching {server} (Ctrl-C to stop)");
    }
    // Server-Sent Events: blocks separated by a blank line, `event:` and `data:` lines.
    let mut buffer = String::new();
    loop {
        match stream.chunk().await {
            Ok(Some(chunk)) => buffer.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(None) => {
                outln!("(the service closed the event stream)");
                return ExitCode::SUCCESS;
            }
            Err(e) => return fail(2, format!("{server}: event stream: {}", e.without_url())),
        }
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut kind = "";
            let mut data = String::new();
            for line in block.lines() {
                if let Some(k) = line.strip_prefix("event:") {
                    kind = k.trim();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if kind.is_empty() {
                continue;
            }
            let e: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            if json {
                outln!("{data}");
            } else {
                outln!("{}", event_line(kind, &e));
            }
        }
        // A block never grows without bound, whatever the server sends.
        if buffer.len() > 1 << 20 {
            buffer.clear();
        }
    }
}

fn state_text(state: &Value) -> String {
    let name = state["state"].as_str().unwrap_or("?");
    match (
        state["incident"].as_str(),
        state["runbook"].as_str(),
        state["step"].as_str(),
    ) {
        (Some(i), Some(r), Some(s)) => format!("{name} {r}/{s} ({i})"),
        (Some(i), _, _) if !i.is_empty() => format!("{name} ({i})"),
        _ => name.to_owned(),
    }
}

/// One event as a line: time, agent, what happened.
fn event_line(kind: &str, e: &Value) -> String {
    let at = e["at"].as_str().unwrap_or("");
    let agent = e["agent"].as_str().unwrap_or("");
    let d = &e["data"];
    let what = match kind {
        "transition" => format!(
            "{} → {}  ({})",
            state_text(&d["from"]),
            state_text(&d["to"]),
            d["event"]["event"].as_str().unwrap_or("?")
        ),
        "phase" => format!(
            "{}/{} {} {}: {}",
            d["runbook"].as_str().unwrap_or("?"),
            d["step"].as_str().unwrap_or("?"),
            d["phase"].as_str().unwrap_or("?"),
            d["status"].as_str().unwrap_or("?"),
            d["summary"].as_str().unwrap_or("")
        ),
        "escalation" => format!(
            "escalation {}: {}{}",
            d["incident"].as_str().unwrap_or("?"),
            d["reason"].as_str().unwrap_or(""),
            d["approval"]
                .as_str()
                .map(|a| format!(
                    "  (approve: themis approve {a} --digest {})",
                    d["plan_digest"].as_str().unwrap_or("?")
                ))
                .unwrap_or_default()
        ),
        "lagged" => format!("missed {} events (this terminal fell behind)", e["missed"]),
        other => format!("{other}: {d}"),
    };
    format!("{at} {agent:<12} {what}")
}

async fn post(server: &str, token_file: Option<&Path>, path: &str, body: Value) -> ExitCode {
    let token = match token_for(server, token_file) {
        Ok(t) => t,
        Err(e) => return fail(2, e),
    };
    let url = format!("{}{path}", server.trim_end_matches('/'));
    // An approval runs the runbook before the answer comes back: allow for it.
    let client = match client(Some(Duration::from_secs(900))) {
        Ok(c) => c,
        Err(code) => return code,
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
        outln!(
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

/// `themis guard clear --server`: the service clears, as the approver whose token is sent.
pub async fn guard_clear(
    server: &str,
    token_file: Option<&Path>,
    target: &str,
    runbook: Option<&str>,
) -> ExitCode {
    let token = match token_for(server, token_file) {
        Ok(t) => t,
        Err(e) => return fail(2, e),
    };
    let client = match client(None) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let url = format!("{}/api/v1/guard/clear", server.trim_end_matches('/'));
    let response = match client
        .post(&url)
        .bearer_auth(token)
        .json(&json!({ "target": target, "runbook": runbook }))
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return fail(2, format!("{server}: {}", e.without_url())),
    };
    let status = response.status();
    let value: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        outln!("{}", crate::guard::cleared_line(target, &value["breakers"]));
        ExitCode::SUCCESS
    } else {
        fail(
            if status.is_client_error() { 1 } else { 2 },
            format!(
                "{server}: HTTP {}: {}",
                status.as_u16(),
                value["message"].as_str().unwrap_or("no message")
            ),
        )
    }
}
