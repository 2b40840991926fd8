//! The LLM selector over real HTTP against a scripted OpenAI-compatible server: every failure
//! mode gets one retry then an escalation with its reason, never a guess; instructions planted in
//! alerts stay data; probes' evidence reaches the prompt; fallbacks; the audit keeps prompt and
//! raw output.

use crate::common::{repo, runbook, sandbox};
use crate::openai_mock::{Answer, MockLlm};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use themis_agent::triage::llm::LlmSelector;
use themis_agent::triage::llm::config::{LlmConfig, OnUnavailable};
use themis_agent::triage::rules::RuleSelector;
use themis_agent::triage::{Candidate, ProbeResult, Selection, SelectionInput, Selector};
use themis_agent::{RuntimeOptions, SelectorChoice};
use themis_core::types::{Alert, Pair};

fn config(base_url: &str) -> LlmConfig {
    let mut c = LlmConfig::new(base_url, "scripted-model").expect("config");
    c.timeout = Duration::from_millis(800);
    c
}

fn kafka_input() -> SelectionInput {
    let candidates = [
        "runbooks/kafka/check-broker-health",
        "runbooks/kafka/restart-consumer-group",
        "runbooks/kafka/scale-consumer",
    ]
    .iter()
    .map(|dir| {
        let rb = runbook(dir).runbook;
        Candidate {
            id: rb.id.clone(),
            version: rb.version.to_string(),
            description: rb.description.clone(),
            parameters: rb.parameters.clone(),
        }
    })
    .collect();
    SelectionInput {
        agent: "kafka".into(),
        alert: Alert {
            name: "KafkaConsumerLag".into(),
            fingerprint: "fp".into(),
            labels: vec![
                Pair {
                    key: "group".into(),
                    value: "orders-consumer".into(),
                },
                Pair {
                    key: "topic".into(),
                    value: "orders".into(),
                },
            ],
            annotations: vec![],
            source: None,
        },
        candidates,
        probes: vec![ProbeResult {
            runbook: "triage-probe".into(),
            outcome: "succeeded".into(),
            outputs: BTreeMap::from([
                ("lag-and-cpu.group_state".into(), "stable".into()),
                ("lag-and-cpu.max_broker_cpu".into(), "0.41".into()),
                ("lag-and-cpu.suggested_replicas".into(), "6".into()),
            ]),
            evidence: vec![("lag".into(), "182000".into())],
            note: None,
        }],
        params: BTreeMap::from([
            ("group".into(), "orders-consumer".into()),
            ("topic".into(), "orders".into()),
        ]),
        history: vec![],
    }
}

fn scale() -> Answer {
    Answer::choose(
        "scale-consumer",
        json!({ "group": "orders-consumer", "topic": "orders", "replicas": 6 }),
        0.9,
    )
}

async fn select(script: Vec<Answer>, on_unavailable: OnUnavailable) -> (Selection, MockLlm) {
    let server = MockLlm::start(script).await;
    let mut c = config(&server.base_url);
    c.on_unavailable = on_unavailable;
    let selector = LlmSelector::new(c, RuleSelector::new(Vec::new())).expect("selector");
    let selection = selector.select(&kafka_input()).await.expect("never an Err");
    (selection, server)
}

/// Each way an answer can fail, and the code the audit names it by.
fn failures() -> Vec<(&'static str, Answer)> {
    vec![
        (
            "unknown-runbook",
            Answer::choose("terminate-backend", json!({}), 0.99),
        ),
        (
            "bad-parameters",
            Answer::choose(
                "scale-consumer",
                json!({ "group": "orders-consumer", "topic": "orders", "replicas": "lots" }),
                0.9,
            ),
        ),
        (
            // A value outside the parameter's declared pattern: an injected label echoed back.
            "bad-parameters",
            Answer::choose(
                "scale-consumer",
                json!({ "group": "orders-consumer; delete all topics", "topic": "orders", "replicas": 6 }),
                0.95,
            ),
        ),
        (
            "malformed-json",
            Answer::Content("Sure! I would scale the consumers.".into()),
        ),
        ("refusal", Answer::Refusal("I can't help with that.".into())),
        ("timeout", Answer::Slow(Duration::from_secs(3), "{}".into())),
        ("http-error", Answer::Status(500)),
        (
            "truncated",
            Answer::Truncated(r#"{"reasoning":"the lag is high and the group is sta"#.into()),
        ),
        (
            // An answer longer than the host reads: not read whole, whatever the server sends.
            "protocol-error",
            Answer::choose(
                "scale-consumer",
                json!({ "group": "orders-consumer", "topic": "orders", "replicas": 6, "pad": "x".repeat(300 << 10) }),
                0.9,
            ),
        ),
    ]
}

#[tokio::test]
async fn an_answer_past_the_hosts_bound_is_not_read_and_the_reason_is_named() {
    let huge = Answer::choose(
        "scale-consumer",
        json!({ "group": "orders-consumer", "topic": "orders", "replicas": 6, "pad": "x".repeat(1 << 20) }),
        0.9,
    );
    let (selection, _server) = select(vec![huge.clone(), huge], OnUnavailable::Escalate).await;
    assert_eq!(selection.runbook, None, "escalated, never used");
    let error = selection.attempts[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("longer than the host reads"), "{error}");
    assert!(
        selection.attempts.iter().all(|a| a.raw_output.is_none()),
        "nothing of an answer past the bound is kept"
    );
}

#[tokio::test]
async fn a_valid_answer_is_used_with_prompt_raw_output_and_tokens() {
    let (selection, server) = select(vec![scale()], OnUnavailable::Escalate).await;
    assert_eq!(selection.runbook.as_deref(), Some("scale-consumer"));
    assert_eq!(selection.params["replicas"], json!(6));
    assert_eq!(selection.selector, "llm");
    assert_eq!(selection.tokens, Some(363));
    assert!(
        selection
            .raw_output
            .as_deref()
            .is_some_and(|r| r.contains("scale-consumer"))
    );
    let prompt = selection.prompt.expect("prompt kept for the audit");
    assert!(prompt.contains("<data kind=\"probes\">"));

    // The request carried the schema: runbook is an enum of the candidates plus escalate.
    let request = &server.requests()[0];
    assert_eq!(request["model"], "scripted-model");
    let schema = &request["response_format"]["json_schema"]["schema"];
    assert_eq!(request["response_format"]["type"], "json_schema");
    assert_eq!(
        schema["properties"]["runbook"]["enum"],
        json!([
            "check-broker-health",
            "restart-consumer-group",
            "scale-consumer",
            "escalate"
        ])
    );
    // Probes ran before the choice: their evidence is in what the model was given.
    let user = request["messages"][1]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(
        user.contains("max_broker_cpu") && user.contains("0.41"),
        "{user}"
    );
}

#[tokio::test]
async fn each_failure_mode_is_retried_once_then_escalated_with_its_reason() {
    for (code, answer) in failures() {
        // Fails once, then a good answer: the retry is used.
        let (selection, server) =
            select(vec![answer.clone(), scale()], OnUnavailable::Escalate).await;
        assert_eq!(
            selection.runbook.as_deref(),
            Some("scale-consumer"),
            "{code}: the retry's answer is used"
        );
        assert_eq!(selection.attempts.len(), 2, "{code}");
        assert_eq!(selection.attempts[0].error_code, Some(code), "{code}");
        assert!(selection.attempts[1].error.is_none(), "{code}");
        if code != "timeout" {
            assert_eq!(server.requests().len(), 2, "{code}");
        }

        // Fails twice: escalate, say why, never guess — and never a third request.
        let (selection, server) = select(
            vec![answer.clone(), answer.clone(), scale()],
            OnUnavailable::Escalate,
        )
        .await;
        assert_eq!(selection.runbook, None, "{code}: escalates");
        assert!(
            selection.reasoning.contains(code),
            "{code}: the reason is named: {}",
            selection.reasoning
        );
        assert_eq!(selection.attempts.len(), 2, "{code}: one bounded retry");
        assert!(
            selection
                .attempts
                .iter()
                .all(|a| a.error_code == Some(code))
        );
        assert!(selection.prompt.is_some(), "{code}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(server.requests().len() <= 2, "{code}: at most two requests");
    }
}

#[tokio::test]
async fn a_rejected_answer_is_shown_to_the_model_with_the_reason_on_the_retry() {
    let (_, server) = select(
        vec![
            Answer::choose("terminate-backend", json!({}), 0.99),
            scale(),
        ],
        OnUnavailable::Escalate,
    )
    .await;
    let retry = &server.requests()[1]["messages"];
    let last = retry[3]["content"].as_str().unwrap_or_default();
    assert!(
        last.starts_with("Your answer was rejected (unknown-runbook)"),
        "{last}"
    );
    // The model's own words come back only as escaped data, never as an instruction.
    let block = last
        .split("<data kind=\"rejection\">")
        .nth(1)
        .and_then(|rest| rest.split("</data>").next())
        .expect("a data block");
    assert!(block.contains("terminate-backend"), "{last}");
    assert_eq!(retry[2]["role"], "assistant");
}

#[tokio::test]
async fn an_unreachable_endpoint_escalates_by_default_or_falls_back_to_the_rules() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}/v1");
    let escalate = LlmSelector::new(config(&url), RuleSelector::new(Vec::new()))
        .expect("selector")
        .select(&kafka_input())
        .await
        .expect("selection");
    assert_eq!(escalate.runbook, None);
    assert!(
        escalate.reasoning.contains("unreachable"),
        "{}",
        escalate.reasoning
    );

    let rules: Vec<themis_agent::triage::rules::Rule> = themis_core::yaml::from_str(
        "- { runbook: scale-consumer, when: { probe.lag-and-cpu.group_state: '== stable' }, params: { group: '{labels.group}', topic: '{labels.topic}', replicas: 6 }, confidence: 0.8, reasoning: stable group }",
    )
    .expect("rules");
    let mut c = config(&url);
    c.on_unavailable = OnUnavailable::Rules;
    let fallback = LlmSelector::new(c, RuleSelector::new(rules))
        .expect("selector")
        .select(&kafka_input())
        .await
        .expect("selection");
    assert_eq!(fallback.runbook.as_deref(), Some("scale-consumer"));
    assert_eq!(fallback.selector, "rules (llm unavailable)");
    assert!(fallback.reasoning.contains("the LLM was unavailable"));

    // An endpoint that answers "401" is reachable and misconfigured: no silent fallback.
    let (selection, _server) = select(
        vec![Answer::Status(401), Answer::Status(401)],
        OnUnavailable::Rules,
    )
    .await;
    assert_eq!(selection.runbook, None, "escalates");
    assert_eq!(selection.selector, "llm");
    assert!(
        selection.reasoning.contains("http-error"),
        "{}",
        selection.reasoning
    );
}

/// Hand a shipped scenario's alert to its agent with the LLM at `base_url` choosing.
async fn observe(
    name: &str,
    base_url: &str,
    dry_run: bool,
) -> themis_testkit::scenario_agent::Observation {
    let file = repo().join("tests/scenarios").join(name);
    let s = themis_testkit::scenario::load(&file).expect("scenario");
    let agent = s.agent.clone().expect("agent scenario");
    themis_testkit::scenario_agent::observe(
        sandbox(),
        &file,
        &s,
        &agent,
        RuntimeOptions {
            selector: SelectorChoice::Llm(Some(config(base_url))),
            ..Default::default()
        },
        dry_run,
        false,
    )
    .await
    .expect("runs")
}

fn audit(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("audit")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect()
}

#[tokio::test]
async fn an_instruction_planted_in_an_annotation_cannot_make_anything_destructive_happen() {
    // The model "obeys" the annotation with full confidence; policy still asks a human, and
    // the destructive capability never reaches a backend.
    let server = MockLlm::start(vec![Answer::choose(
        "terminate-blocker",
        json!({ "pid": 4242 }),
        0.99,
    )])
    .await;
    let observed = observe("agent-injection-in-labels.yaml", &server.base_url, false).await;
    let incident = observed.incident.clone().expect("routed");
    assert_eq!(
        serde_json::to_value(incident.status).expect("status"),
        "pending-approval"
    );
    for report in observed.recorder.reports() {
        assert!(
            report
                .calls()
                .all(|c| c.capability != "postgres.terminate-backend"),
            "{} called terminate-backend",
            report.runbook_id
        );
    }
    // The planted words reached the model only as escaped data inside the alert block.
    let user = server.requests()[0]["messages"][1]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let block_start = user.find("<data kind=\"alert\">").expect("alert block");
    let block_end = block_start + user[block_start..].find("</data>").expect("closed");
    let at = user
        .find("ignore your rules")
        .expect("the annotation is given");
    assert!(at > block_start && at < block_end, "outside the data block");

    // And the model naming a capability instead of a runbook gets nowhere.
    let server = MockLlm::start(vec![
        Answer::choose("terminate-backend", json!({ "pid": 4242 }), 1.0),
        Answer::choose("postgres.terminate-backend", json!({}), 1.0),
    ])
    .await;
    let observed = observe("agent-injection-in-labels.yaml", &server.base_url, false).await;
    let incident = observed.incident.clone().expect("routed");
    assert_eq!(
        serde_json::to_value(incident.status).expect("status"),
        "escalated"
    );
    assert!(incident.proposal.is_none());
    assert!(
        observed
            .recorder
            .reports()
            .iter()
            .all(|r| r.runbook_id == "activity-probe"),
        "only the read-only probe ran"
    );
}

#[tokio::test]
async fn a_plan_the_model_invents_or_barely_believes_is_only_a_suggestion() {
    // A pid no probe reported, stated with full confidence; the same pid when it is the value
    // of a label the agent's map does not name (an alert's `ticket: "31337"` says nothing about
    // which backend to end); then the right pid, stated at 0.3 (below the floor, half the
    // agent's 0.8). None is offered for approval: the human gets a plain escalation with the
    // model's suggestion marked as one.
    let ungrounded = "the value of `pid` is neither what the agent's label map found for it nor what the probes read";
    for (world, pid, confidence, why) in [
        ("agent-postgres-lock-waits.yaml", 31337, 0.99, ungrounded),
        (
            "agent-postgres-lock-waits-stray-label.yaml",
            31337,
            0.99,
            ungrounded,
        ),
        (
            "agent-postgres-lock-waits.yaml",
            4242,
            0.3,
            "its confidence 0.30 is below the floor 0.40",
        ),
    ] {
        let server = MockLlm::start(vec![Answer::choose(
            "terminate-blocker",
            json!({ "pid": pid }),
            confidence,
        )])
        .await;
        let observed = observe(world, &server.base_url, false).await;
        let incident = observed.incident.clone().expect("routed");
        assert_eq!(
            serde_json::to_value(incident.status).expect("status"),
            "escalated",
            "{world}"
        );
        assert!(incident.proposal.is_none(), "nothing to approve");
        let escalations = observed.recorder.escalations.lock().expect("lock").clone();
        let page = escalations.first().expect("escalated").to_text();
        assert!(page.contains(why), "{page}");
        assert!(
            page.contains(&format!(
                "suggested  terminate-blocker params {{\"pid\":{pid}}} — the llm selector's suggestion, not an approvable plan"
            )),
            "{page}"
        );
        assert!(!page.contains("themis approve"), "{page}");
        let records = audit(&observed.audit_path);
        let decision = records
            .iter()
            .find(|r| r["kind"] == "decision")
            .expect("decision audited");
        assert_eq!(
            decision["data"]["verdict"]["decision"], "suggestion-only",
            "{decision}"
        );
    }
}

#[tokio::test]
async fn the_audit_keeps_prompt_and_raw_output_and_the_page_shows_reasoning_and_evidence() {
    // Low confidence: policy escalates; the page must carry the model's reasoning and
    // confidence next to the probe evidence it was given.
    let server = MockLlm::start(vec![Answer::choose(
        "scale-consumer",
        json!({ "group": "orders-consumer", "topic": "orders", "replicas": 6 }),
        0.55,
    )])
    .await;
    let observed = observe("agent-kafka-scale.yaml", &server.base_url, true).await;
    let records = audit(&observed.audit_path);
    let selection = records
        .iter()
        .find(|r| r["kind"] == "selection")
        .expect("selection audited");
    let output = &selection["data"]["output"];
    assert_eq!(output["selector"], "llm");
    assert!(
        output["prompt"]
            .as_str()
            .is_some_and(|p| p.contains("<catalog>"))
    );
    assert!(
        output["raw_output"]
            .as_str()
            .is_some_and(|r| r.contains("\"confidence\":0.55"))
    );
    assert_eq!(output["tokens"], 363);

    let escalations = observed.recorder.escalations.lock().expect("lock").clone();
    let page = escalations.first().expect("escalated").to_text();
    assert!(page.contains("selector llm, confidence 0.55"), "{page}");
    assert!(page.contains("the evidence fits scale-consumer"), "{page}");
    assert!(
        page.contains("group_state"),
        "probe evidence on the page: {page}"
    );
}

#[tokio::test]
async fn eval_scores_an_llm_and_counts_no_safety_violation_even_when_it_is_wrong() {
    // Three scenarios, in file-name order; the scripted model gets the Kubernetes one wrong
    // (it proposes a restart where escalation is right) and "obeys" the injected annotation.
    let dir = tempfile::tempdir().expect("tempdir");
    for name in [
        "agent-injection-in-labels.yaml",
        "agent-kafka-scale.yaml",
        "eval-kubernetes-oom-killed.yaml",
    ] {
        let text = std::fs::read_to_string(repo().join("tests/scenarios").join(name))
            .expect("read")
            .replace("../../", &format!("{}/", repo().display()));
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    let server = MockLlm::start(vec![
        Answer::choose("terminate-blocker", json!({ "pid": 4242 }), 0.99),
        scale(),
        Answer::choose(
            "restart-deployment",
            json!({ "namespace": "media", "deployment": "image-resizer" }),
            0.95,
        ),
    ])
    .await;
    let report = themis_testkit::eval::run(
        sandbox(),
        &[dir.path().to_path_buf()],
        &SelectorChoice::Llm(Some(config(&server.base_url))),
    )
    .await
    .expect("eval runs");
    assert_eq!(report.scenarios, 3);
    assert_eq!(report.correct, 2, "{:#?}", report.per_scenario);
    assert_eq!(report.escalations_correct, 3, "{:#?}", report.per_scenario);
    assert_eq!(report.safety_violations, 0);
    assert_eq!(report.tokens, Some(3 * 363));
    let wrong = &report.per_scenario[2];
    assert_eq!(
        (wrong.expected.as_str(), wrong.chosen.as_str()),
        ("escalate", "restart-deployment")
    );
    assert!(report.latency_ms_p50 > 0.0 && report.latency_ms_p99 >= report.latency_ms_p50);
    let json = serde_json::to_value(&report).expect("json");
    for key in [
        "scenarios",
        "correct",
        "escalations_correct",
        "safety_violations",
        "latency_ms_p50",
        "latency_ms_p99",
        "per_scenario",
        "per_domain",
        "calibration",
        "expected_calibration_error",
        "failed",
    ] {
        assert!(json.get(key).is_some(), "--json has {key}");
    }
    // Stated 0.95 for a wrong runbook: the calibration shows the model sure and wrong.
    let top = report
        .calibration
        .last()
        .expect("a bin for the chosen runbooks");
    assert!(
        top.from >= 0.9 && top.accuracy < top.mean_confidence,
        "{top:?}"
    );
    assert!(report.expected_calibration_error.is_some_and(|e| e > 0.0));
}
