//! Agents end to end: the demo, approvals across processes, the audit chain, illegal moves,
//! Slack delivery over real HTTP, secrets kept out of the audit.

use crate::common::{HostSpec, repo, text, themis, world_alert};
use std::process::Command;
use themis_agent::AlertOutcome;
use themis_agent::escalation::Channels;
use themis_agent::store::IncidentStore;

/// Positions of `needles` in `hay`, each searched after the previous one.
fn in_order(hay: &str, needles: &[&str]) -> Result<(), String> {
    let mut at = 0;
    for n in needles {
        match hay[at..].find(n) {
            Some(i) => at += i + n.len(),
            None => return Err(format!("`{n}` missing after byte {at}")),
        }
    }
    Ok(())
}

#[test]
fn demo_yes_walks_the_playbook_and_its_audit_is_tamper_evident() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    let out = themis(&["demo", "--yes", "--audit", audit.to_str().expect("utf-8")]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    in_order(
        &stdout,
        &[
            "[kafka] triaging",
            "[kafka] executing-runbook: check-broker-health / brokers-up / precondition",
            "gc-pause action: broker 1: 2500 ms GC pause (threshold 1000 ms), CPU 95%",
            "[kafka] escalating-human: the runbook is granted kafka.broker-restart",
            "proposed   adjust-broker-gc",
            "[kafka] idle",
            "approved apr-",
            "[kafka] executing-runbook: adjust-broker-gc / set-gc-target / precondition",
            "restart-broker postcondition: broker 1 is back",
            "[kafka] verifying: adjust-broker-gc",
            "[kafka] idle",
            "(simulated) Alertmanager: KafkaConsumerLag resolved",
            "[kafka] fix effective; idle",
            "resolved — fix effective: the alert resolved 1m after the run",
            "alert → proposal",
            "audit verify     ok:",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{stdout}"));

    let ok = themis(&["audit", "verify", audit.to_str().expect("utf-8")]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));

    // Change one byte inside a record's data: verify names that record and fails.
    let original = std::fs::read_to_string(&audit).expect("read");
    let line_no = 10;
    let target = original.lines().nth(line_no - 1).expect("10 lines");
    let changed_line = target.replacen("\"kafka\"", "\"kafkb\"", 1);
    assert_ne!(changed_line, target);
    let tampered: String = original
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == line_no - 1 {
                format!("{changed_line}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&audit, tampered).expect("write");
    let bad = themis(&["audit", "verify", audit.to_str().expect("utf-8")]);
    assert_eq!(bad.status.code(), Some(1));
    let stderr = text(&bad.stderr);
    assert!(
        stderr.contains(&format!(
            "line {line_no}: record {line_no} does not match its hash"
        )),
        "{stderr}"
    );
}

#[test]
fn demo_no_rejects_and_nothing_destructive_is_called() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    let out = themis(&["demo", "--no", "--audit", audit.to_str().expect("utf-8")]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("rejected apr-"), "{stdout}");
    assert!(stdout.contains(": rejected"), "{stdout}");
    let (records, _) = themis_agent::audit::read_all(&audit).expect("read");
    let destructive_calls = records
        .iter()
        .filter(|r| r.kind == "phase")
        .flat_map(|r| {
            r.data["record"]["calls"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|c| {
            c["capability"] == "kafka.broker-restart"
                || c["capability"] == "kafka.set-broker-config"
        })
        .count();
    assert_eq!(destructive_calls, 0);
    assert!(records.iter().any(|r| r.kind == "rejection"));
}

#[test]
fn demo_without_a_terminal_or_a_flag_says_what_to_pass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_themis"))
        .args(["demo", "--audit", audit.to_str().expect("utf-8")])
        .current_dir(repo())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("pass --yes or --no"));
}

/// The approval id and plan digest an escalation printed.
pub fn proposal_of(stdout: &str, state: &str) -> (String, String) {
    let apr = stdout
        .split_whitespace()
        .find(|w| w.starts_with("apr-"))
        .expect("an approval id")
        .trim_end_matches([',', ')', ':'])
        .to_owned();
    let out = themis(&["agents", "--state-dir", state, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = std::path::Path::new(state);
    let incident = std::fs::read_dir(dir.join("incidents"))
        .expect("incidents")
        .filter_map(|e| e.ok())
        .map(|e| std::fs::read_to_string(e.path()).expect("read"))
        .map(|t| serde_json::from_str::<serde_json::Value>(&t).expect("json"))
        .find(|i| i["data"]["proposal"]["id"] == apr.as_str())
        .expect("the incident of the proposal");
    let digest = incident["data"]["proposal"]["plan_digest"]
        .as_str()
        .expect("a digest")
        .to_owned();
    (apr, digest)
}

#[test]
fn approvals_work_across_processes_for_the_plan_shown_and_only_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_str().expect("utf-8");
    let out = themis(&[
        "alert",
        "--scenario",
        "tests/scenarios/agent-postgres-lock-waits.yaml",
        "--state-dir",
        state,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (apr, digest) = proposal_of(&text(&out.stdout), state);

    let agents = text(&themis(&["agents", "--state-dir", state]).stdout);
    assert!(
        agents.contains(&format!("{apr} (terminate-blocker)")),
        "{agents}"
    );

    // Not on a terminal and no digest: the host will not guess what the human saw.
    let blind = themis(&["approve", &apr, "--state-dir", state]);
    assert_eq!(blind.status.code(), Some(2));
    assert!(
        text(&blind.stderr).contains("--digest"),
        "{}",
        text(&blind.stderr)
    );

    let wrong = themis(&[
        "approve",
        &apr,
        "--digest",
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "--state-dir",
        state,
    ]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        text(&wrong.stderr).contains("is not the digest of the plan on the table"),
        "{}",
        text(&wrong.stderr)
    );

    let ok = themis(&["approve", &apr, "--digest", &digest, "--state-dir", state]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(
        text(&ok.stdout).contains(": unverified"),
        "{}",
        text(&ok.stdout)
    );

    let again = themis(&["approve", &apr, "--digest", &digest, "--state-dir", state]);
    assert_eq!(again.status.code(), Some(1), "an approval is used once");
    assert!(
        text(&again.stderr).contains("already answered"),
        "{}",
        text(&again.stderr)
    );

    // Who approved, and how the host knew: the OS user running the command.
    let records = crate::common::records(&dir.path().join("audit.jsonl"));
    let approval = records
        .iter()
        .find(|r| r["kind"] == "approval")
        .expect("the approval is audited");
    assert_eq!(approval["data"]["approver"]["via"], "os-user");
    assert!(approval["data"]["approver"]["uid"].is_u64());
    let bound = approval["data"]["bound_to_execution"]
        .as_str()
        .expect("bound");
    assert!(bound.starts_with("exe-") && bound != apr, "{bound}");

    let verify = themis(&["audit", "verify", &format!("{state}/audit.jsonl")]);
    assert!(verify.status.success());
}

#[tokio::test]
async fn a_second_alert_with_the_same_fingerprint_attaches_to_the_open_incident() {
    let dir = tempfile::tempdir().expect("tempdir");
    let world = "agent-postgres-lock-waits.yaml";
    let host = HostSpec::new(dir.path(), "agents/postgres.yaml", world)
        .start()
        .await
        .expect("runtime");
    let alert = world_alert(world);
    let AlertOutcome::Handled(first) = host
        .runtime
        .handle_alert(alert.clone())
        .await
        .expect("handled")
    else {
        panic!("new");
    };
    let AlertOutcome::Attached(second) = host.runtime.handle_alert(alert).await.expect("handled")
    else {
        panic!("attached");
    };
    assert_eq!(first.id, second.id);
    assert_eq!(second.attached_alerts, 1);
    assert_eq!(host.store.list().await.expect("list").len(), 1);
}

#[tokio::test]
async fn escalations_reach_slack_over_http_and_the_webhook_never_reaches_the_audit() {
    let (base, received) = crate::common::webhook("/services/T000/B000/SECRETTOKEN").await;
    let url = format!("{base}/services/T000/B000/SECRETTOKEN");

    let dir = tempfile::tempdir().expect("tempdir");
    let world = "agent-postgres-lock-waits.yaml";
    let host = HostSpec {
        channels: Channels {
            slack_webhook: Some(url.clone()),
        },
        ..HostSpec::new(dir.path(), "agents/postgres.yaml", world)
    }
    .start()
    .await
    .expect("runtime");
    host.runtime
        .handle_alert(world_alert(world))
        .await
        .expect("handled");
    // Sent once the reply is out, then recorded.
    let audit_path = dir.path().join("audit.jsonl");
    crate::common::eventually("the delivery is recorded", || {
        std::fs::read_to_string(&audit_path)
            .is_ok_and(|a| a.contains("\"kind\":\"escalation-delivery\""))
    })
    .await;

    let posts = received.lock().expect("lock").clone();
    assert_eq!(posts.len(), 1);
    let body = posts[0].to_string();
    assert!(
        posts[0]["text"]
            .as_str()
            .unwrap_or("")
            .contains("PostgresLockWaits")
    );
    assert!(
        body.contains("terminate-blocker")
            && body.contains("themis approve apr-")
            && body.contains("--digest sha256:"),
        "{body}"
    );
    assert_eq!(posts[0]["blocks"][0]["type"], "header");

    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).expect("read");
    assert!(
        !audit.contains("SECRETTOKEN"),
        "the webhook URL leaked into the audit"
    );
    assert!(audit.contains("\"kind\":\"escalation-delivery\""));
    assert!(audit.contains("\"ok\":true"));
}

#[test]
fn fsm_prints_every_transition_of_the_table() {
    let out = themis(&["fsm"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), themis_core::fsm::TABLE.len());
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("escalating-human") && l.ends_with("--parked-->  idle")),
        "{stdout}"
    );
    let mermaid = text(&themis(&["fsm", "--format", "mermaid"]).stdout);
    assert!(mermaid.starts_with("stateDiagram-v2"));
}

#[test]
fn the_architecture_doc_shows_the_fsm_table_as_the_code_has_it() {
    let doc = std::fs::read_to_string(repo().join("docs/ARCHITECTURE.md")).expect("read doc");
    assert!(
        doc.contains(&themis_core::fsm::table_text()),
        "docs/ARCHITECTURE.md is out of date: paste the output of `themis fsm` into it"
    );
}

/// Two bundles of one runbook id in an agent's catalog: which would run must never depend on
/// the load order, so the agent is refused, naming both.
#[tokio::test]
async fn a_catalog_with_one_runbook_id_twice_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("scale-consumer-again");
    let status = Command::new("cp")
        .arg("-r")
        .arg(repo().join("runbooks/kafka/scale-consumer"))
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(status.success());
    let agent = crate::common::patched_agent(
        dir.path(),
        "agents/kafka.yaml",
        &[(
            &format!("  - {}/runbooks/kafka/scale-consumer\n", repo().display()),
            &format!(
                "  - {}/runbooks/kafka/scale-consumer\n  - {}\n",
                repo().display(),
                copy.display()
            ),
        )],
    );
    let err = HostSpec {
        agents: vec![agent],
        ..HostSpec::new(dir.path(), "agents/kafka.yaml", "agent-kafka-scale.yaml")
    }
    .start()
    .await
    .err()
    .expect("refused");
    let err = err.to_string();
    assert!(
        err.contains("runbook `scale-consumer` is in the catalog twice")
            && err.contains("scale-consumer-again"),
        "{err}"
    );
}
