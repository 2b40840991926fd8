//! The LLM selector against a real small model (Gemma 3 270M, a base model) served locally by
//! `tests/llm/server.mjs` (node-llama-cpp, JSON-schema constrained decoding) over the
//! OpenAI-compatible HTTP API. It proves the protocol, the schema constraint and our validation
//! path with a real model, not the model's judgement: a 270M base model chooses badly.
//!
//! `scripts/test` runs it (it installs the model with `scripts/llm-setup`); by hand:
//! `THEMIS_LLM_MODEL=$(scripts/llm-setup) cargo test --test e2e -- --ignored real_model`.

use crate::common::{repo, sandbox};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use themis_agent::triage::llm::config::LlmConfig;
use themis_agent::{RuntimeOptions, SelectorChoice};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the model server and wait for its `listening on <url>` line.
fn start(model: &str) -> (Server, String) {
    let mut child = Command::new("node")
        .arg(repo().join("tests/llm/server.mjs"))
        .args(["--model", model, "--port", "0", "--max-seconds", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs tests/llm/server.mjs (run scripts/llm-setup first)");
    let stdout = child.stdout.take().expect("stdout");
    let server = Server(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the model server is ready within 2 minutes");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from the server: {line:?}"))
        .to_owned();
    (server, url)
}

#[tokio::test]
#[ignore = "needs the local model: scripts/test runs it; by hand THEMIS_LLM_MODEL=$(scripts/llm-setup) cargo test --test e2e -- --ignored real_model"]
async fn real_model_answers_under_the_schema_and_every_answer_is_checked() {
    let model = std::env::var("THEMIS_LLM_MODEL")
        .expect("THEMIS_LLM_MODEL must name the GGUF file scripts/llm-setup prints");
    let (_server, url) = start(&model);
    let mut config = LlmConfig::new(&format!("{url}/v1"), "model").expect("config");
    config.timeout = Duration::from_secs(120);
    config.max_tokens = 300;

    let file = repo().join("tests/scenarios/agent-kafka-scale.yaml");
    let scenario = themis_testkit::scenario::load(&file).expect("scenario");
    let agent = scenario.agent.clone().expect("agent scenario");
    let observed = themis_testkit::scenario_agent::observe(
        sandbox(),
        &file,
        &scenario,
        &agent,
        RuntimeOptions {
            selector: SelectorChoice::Llm(Some(config)),
            ..Default::default()
        },
        true,
        false,
    )
    .await
    .expect("the scenario runs");
    let selection = observed
        .recorder
        .selection
        .lock()
        .expect("lock")
        .clone()
        .expect("a selection was made");
    let catalog: Vec<String> = observed.runtime.agents()[0]
        .catalog
        .keys()
        .cloned()
        .collect();

    // The protocol: real requests, real completions, token counts reported.
    assert!(
        (1..=2).contains(&selection.attempts.len()),
        "{:?}",
        selection.attempts
    );
    assert!(selection.tokens.is_some_and(|t| t > 0));
    // The schema constraint reached the model: every complete raw answer is JSON whose runbook
    // is one of the enum's values, whatever its quality. An answer the server cut off (a slow
    // machine hits its time limit) must have been caught by our check, not used.
    let mut parsed = 0;
    for attempt in &selection.attempts {
        let raw = attempt
            .raw_output
            .as_deref()
            .unwrap_or_else(|| panic!("no answer: {:?}", attempt.error));
        match serde_json::from_str::<Value>(raw) {
            Ok(v) => {
                parsed += 1;
                let chosen = v["runbook"].as_str().unwrap_or_default();
                assert!(
                    chosen == "escalate" || catalog.iter().any(|c| c == chosen),
                    "runbook `{chosen}` outside the enum: {raw}"
                );
            }
            Err(_) => assert!(
                matches!(attempt.error_code, Some("truncated" | "malformed-json")),
                "an unparsable answer was not flagged: {raw}"
            ),
        }
    }
    assert!(
        parsed > 0 || selection.runbook.is_none(),
        "no parsable answer, yet a runbook was chosen"
    );
    // Our validation decided: either a catalog runbook whose parameters bind, or an
    // escalation that names why — never anything else.
    match &selection.runbook {
        Some(id) => {
            let rb = &observed.runtime.agents()[0].catalog[id];
            themis_core::manifest::bind_params(&rb.runbook.parameters, &selection.params)
                .expect("accepted parameters bind");
            assert!((0.0..=1.0).contains(&selection.confidence));
        }
        None => assert!(!selection.reasoning.is_empty()),
    }
    // Prompt and raw output are in the audit; nothing destructive reached a backend.
    let audit = std::fs::read_to_string(&observed.audit_path).expect("audit");
    let record: Value = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["kind"] == "selection")
        .expect("selection audited");
    assert!(record["data"]["output"]["prompt"].as_str().is_some());
    assert!(record["data"]["output"]["raw_output"].as_str().is_some());
    for report in observed.recorder.reports() {
        for call in report.calls() {
            assert!(
                call.capability != "kafka.broker-restart"
                    || matches!(call.outcome, themis_sandbox::CallOutcome::Denied { .. }),
                "destructive call without approval"
            );
        }
    }
    eprintln!(
        "real model chose {:?} (confidence {:.2}) in {} attempt(s), {} tokens",
        selection.runbook,
        selection.confidence,
        selection.attempts.len(),
        selection.tokens.unwrap_or(0)
    );
}
