//! The guard rails through the `themis` binary: a second automatic run on the same target
//! inside the cooldown goes to a human (who may still approve it), failures open the circuit
//! breaker, `themis guard list` shows it and an approver's `themis guard clear` lifts it.

use crate::agents::proposal_of;
use crate::common::{patched_agent, repo, text, themis};

fn alert(scenario: &str, state: &str, agents: &str) -> String {
    let out = themis(&[
        "alert",
        "--scenario",
        scenario,
        "--state-dir",
        state,
        "--agents",
        agents,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// agent-kafka-scale.yaml with answers that do not run out between processes (a scenario
/// world keeps its place in a `sequence:` across them): the group stays at 3 consumers, so
/// every run of scale-consumer starts, and `scale` is what the scale call answers.
fn steady_scale(dir: &std::path::Path, scale: &str) -> String {
    let text = std::fs::read_to_string(repo().join("tests/scenarios/agent-kafka-scale.yaml"))
        .expect("scenario")
        .replace("../../", &format!("{}/", repo().display()));
    let start = text
        .find("  kafka.describe-consumers:")
        .expect("describe-consumers");
    let end = text.find("  kafka.list-topics:").expect("list-topics");
    let steady = "  kafka.describe-consumers:\n    - ok: { group_id: orders-consumer, replicas_desired: 3, replicas_ready: 3, revision: \"7\" }\n";
    let text = format!("{}{steady}{}", &text[..start], &text[end..]);
    let start = text
        .find("  kafka.scale-consumers:")
        .expect("scale-consumers");
    let end = text.find("  metrics.query:").expect("metrics.query");
    let text = format!(
        "{}  kafka.scale-consumers:\n    - {scale}\n{}",
        &text[..start],
        &text[end..]
    );
    let file = dir.join("steady-scale.yaml");
    std::fs::write(&file, text).expect("write");
    file.to_str().expect("utf-8").to_owned()
}

#[test]
fn a_second_automatic_run_inside_the_cooldown_goes_to_a_human_who_may_approve_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let state = state.to_str().expect("utf-8");
    // The scale is refused, so each run fails at once (a scale the group never reaches would
    // fail the same way, after the postcondition's two-minute wait).
    let scenario = steady_scale(
        dir.path(),
        "error: { failed: \"the consumer deployment rejected the new replica count\" }",
    );
    let first = alert(&scenario, state, "agents");
    assert!(
        first.contains("failed") && !first.contains("guard rail"),
        "the first run is automatic (and fails: the scale is refused): {first}"
    );

    let second = alert(&scenario, state, "agents");
    assert!(second.contains("pending-approval"), "{second}");
    assert!(
        second.contains("a guard rail (cooldown) holds the automatic run back")
            && second.contains("scale-consumer ran on kafka:group=orders-consumer"),
        "{second}"
    );

    let list = themis(&["guard", "list", "--state-dir", state]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    let listed = text(&list.stdout);
    assert!(
        listed.contains("ran      kafka:group=orders-consumer · scale-consumer  failed"),
        "{listed}"
    );

    // A human's approval runs through the cooldown (not through a busy target).
    let (apr, digest) = proposal_of(&second, state);
    let out = themis(&["approve", &apr, "--digest", &digest, "--state-dir", state]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let approved = text(&out.stdout);
    assert!(
        approved.contains("failed"),
        "the approved plan ran: {approved}"
    );

    let audit = std::fs::read_to_string(dir.path().join("state/audit.jsonl")).expect("audit");
    let blocked: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("\"kind\":\"guard-blocked\""))
        .collect();
    assert_eq!(blocked.len(), 1, "{audit}");
    assert!(
        blocked[0].contains("\"rail\":\"cooldown\""),
        "{}",
        blocked[0]
    );
}

#[test]
fn failures_open_the_breaker_and_an_approver_clears_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agents = dir.path().join("agents");
    std::fs::create_dir_all(&agents).expect("mkdir");
    // No cooldown or backoff here, so only the breaker (two failures) holds runs back.
    patched_agent(
        &agents,
        "agents/kafka.yaml",
        &[(
            "policy:\n",
            "guard: { cooldown: 0s, backoff: { initial: 0s, max: 0s }, breaker: { failures: 2, window: 1h, open_for: 1h } }\npolicy:\n",
        )],
    );
    // The scale is refused by the system every time: the runbook rolls back.
    let scenario = steady_scale(
        dir.path(),
        "error: { failed: \"the consumer deployment rejected the new replica count\" }",
    );
    let state = dir.path().join("state");
    let state = state.to_str().expect("utf-8");
    let agents = agents.to_str().expect("utf-8");

    for _ in 0..2 {
        let out = alert(&scenario, state, agents);
        assert!(
            out.contains("failed") && !out.contains("guard rail"),
            "{out}"
        );
    }
    let third = alert(&scenario, state, agents);
    assert!(
        third.contains("a guard rail (circuit-breaker)")
            && third.contains("2 failed or ineffective run(s) within 1h"),
        "{third}"
    );
    let listed = text(&themis(&["guard", "list", "--state-dir", state]).stdout);
    assert!(
        listed.contains("BREAKER  kafka:group=orders-consumer  scale-consumer"),
        "{listed}"
    );
    let json = themis(&["guard", "list", "--state-dir", state, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(v["breakers"][0]["runbook"], "scale-consumer");

    // Clearing a target of a domain no agent here acts on is refused.
    let out = themis(&[
        "guard",
        "clear",
        "postgres:pid=1",
        "--state-dir",
        state,
        "--agents",
        agents,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("no agent of this host acts on `postgres` targets"),
        "{}",
        text(&out.stderr)
    );

    let out = themis(&[
        "guard",
        "clear",
        "kafka:group=orders-consumer",
        "--runbook",
        "scale-consumer",
        "--state-dir",
        state,
        "--agents",
        agents,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cleared = text(&out.stdout);
    assert!(
        cleared.contains("cleared the breaker of scale-consumer"),
        "{cleared}"
    );
    // The held incident is still open (a new notification would attach to it): answered first.
    let (apr, _) = proposal_of(&third, state);
    let out = themis(&[
        "reject",
        &apr,
        "--reason",
        "cleared the breaker instead",
        "--state-dir",
        state,
        "--agents",
        agents,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fourth = alert(&scenario, state, agents);
    assert!(
        fourth.contains("failed") && !fourth.contains("guard rail"),
        "automatic again after the clear: {fourth}"
    );
    let audit = std::fs::read_to_string(dir.path().join("state/audit.jsonl")).expect("audit");
    assert!(audit.contains("\"kind\":\"guard-breaker-opened\""));
    assert!(audit.contains("\"kind\":\"guard-cleared\""));
}

#[test]
fn rails_that_cannot_work_are_refused_when_the_agent_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (guard, field) in [
        (
            "guard: { breaker: { failures: 0 } }\n",
            "guard.breaker.failures",
        ),
        (
            "guard: { backoff: { initial: 5m, max: 1m } }\n",
            "guard.backoff.max",
        ),
        ("guard: { cooldown: soon }\n", "guard.cooldown"),
    ] {
        let file = patched_agent(
            dir.path(),
            "agents/kafka.yaml",
            &[("policy:\n", &format!("{guard}policy:\n"))],
        );
        let e = themis_agent::AgentDef::load(&file)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(field), "{guard}: {e}");
    }
}
