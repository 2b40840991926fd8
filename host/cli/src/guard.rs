//! `themis guard list|clear`: what the guard rails hold, and an approver lifting a breaker.

use crate::{Answerer, Place, answer, fail, host, remote};
use serde_json::Value;
use std::path::Path;
use std::process::ExitCode;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn at(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

/// Read the book without taking the state directory's lock: it answers next to a running host.
pub async fn list(place: &Place, json: bool) -> ExitCode {
    let store = match themis_agent::store::open_read_only(&place.state_dir).await {
        Ok(s) => s,
        Err(e) => return fail(2, e),
    };
    let book = match store.guard().await {
        Ok(b) => b,
        Err(e) => return fail(2, e),
    };
    let now = now();
    if json {
        return match serde_json::to_string_pretty(&themis_server::guard_status(&book, now)) {
            Ok(text) => {
                outln!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(2, format!("cannot render JSON: {e}")),
        };
    }
    let open: Vec<_> = book.breakers.values().filter(|b| b.until > now).collect();
    if book.busy.is_empty() && open.is_empty() && book.history.is_empty() {
        outln!("no target is busy, no breaker is open, nothing ran recently");
        return ExitCode::SUCCESS;
    }
    for (target, b) in &book.busy {
        outln!(
            "busy     {target}  {} by incident {} ({} agent) since {}",
            b.runbook,
            b.incident,
            b.agent,
            at(b.since)
        );
    }
    for b in open {
        outln!(
            "BREAKER  {}  {}  open until {}: {}  (themis guard clear '{}' --runbook {})",
            b.target,
            b.runbook,
            at(b.until),
            b.why,
            b.target,
            b.runbook
        );
    }
    for (key, runs) in &book.history {
        let outcomes: Vec<&str> = runs
            .iter()
            .map(|r| if r.ok { "ok" } else { "failed" })
            .collect();
        if let Some(last) = runs.back() {
            outln!(
                "ran      {key}  {}  (last {})",
                outcomes.join(" "),
                at(last.at)
            );
        }
    }
    ExitCode::SUCCESS
}

/// What one clear lifted, as a line.
pub fn cleared_line(target: &str, breakers: &Value) -> String {
    let names: Vec<&str> = breakers
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if names.is_empty() {
        format!("{target}: no breaker was open; its cooldown is cleared")
    } else {
        format!(
            "{target}: cleared the breaker of {}; automatic runs may resume",
            names.join(", ")
        )
    }
}

pub async fn clear(
    target: &str,
    runbook: Option<&str>,
    answerer: &Answerer,
    place: &Place,
    cache_dir: &Path,
) -> ExitCode {
    if let Some(server) = &answerer.server {
        return remote::guard_clear(server, answerer.token_file.as_deref(), target, runbook).await;
    }
    let who = match answer::identity(answerer) {
        Ok(who) => who,
        Err(e) => return fail(2, e),
    };
    let rt = match host::runtime(place, cache_dir).await {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let code = match rt.clear_guard(target, runbook, &who).await {
        Ok(cleared) => {
            let names: Vec<Value> = cleared
                .into_iter()
                .map(|b| Value::String(b.runbook))
                .collect();
            outln!("{}", cleared_line(target, &Value::Array(names)));
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e),
    };
    rt.shutdown().await;
    code
}
