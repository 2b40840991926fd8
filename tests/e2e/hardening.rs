//! Hardening: a hostile step cannot take the host down, an approval covers exactly what the
//! human saw, an approver is who they say, and what the host reads, logs or sends is bounded
//! and free of secrets. The hostile component is `tests/runbooks/hostile`; each attack is a
//! scenario file `tests/scenarios/hostile-*.yaml` (which the data-driven suite also runs).

use crate::agents::proposal_of;
use crate::common::{
    HostSpec, alert_with_proposal, approvers_config, demo_trust, patched_agent, records, repo,
    sandbox, text, themis,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use themis_sandbox::loaded::{LoadedRunbook, RunbookLoadError};

/// `themis run --scenario FILE --json` in a child, with the child's peak RSS (KiB) and how much
/// it wrote to stderr.
fn run_measured(scenario: &str) -> (Option<i32>, Value, usize, u64) {
    let script = "import resource, subprocess, sys\n\
                  p = subprocess.run(sys.argv[1:], capture_output=True)\n\
                  sys.stdout.buffer.write(p.stdout)\n\
                  sys.stderr.write('stderr_bytes=%d maxrss_kib=%d\\n' % (len(p.stderr), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n\
                  sys.exit(p.returncode)\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_themis"))
        .args(["run", "--json", "--scenario"])
        .arg(format!("tests/scenarios/{scenario}"))
        .current_dir(repo())
        .output()
        .expect("python3 runs");
    let stderr = text(&out.stderr);
    let field = |name: &str| -> u64 {
        stderr
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {stderr}"))
    };
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{scenario}: not JSON ({e}): {}", text(&out.stdout)));
    (
        out.status.code(),
        json,
        field("stderr_bytes=") as usize,
        field("maxrss_kib="),
    )
}

/// A phase record keeps no more than the limits allow, whatever the step did.
fn assert_phase_bounded(scenario: &str, phase: &Value) {
    let limits = themis_sandbox::PhaseLimits::default();
    let logs = phase["logs"].as_array().cloned().unwrap_or_default();
    assert!(
        logs.len() <= limits.log_lines,
        "{scenario}: {} log lines",
        logs.len()
    );
    let log_bytes: usize = logs
        .iter()
        .map(|l| l["message"].as_str().map(str::len).unwrap_or(0))
        .sum();
    assert!(
        log_bytes <= limits.log_bytes + limits.log_lines * 32,
        "{scenario}: {log_bytes} log bytes kept"
    );
    let calls = phase["calls"].as_array().cloned().unwrap_or_default();
    assert!(
        calls.len() <= limits.calls_per_phase as usize + 1,
        "{scenario}: {} calls kept",
        calls.len()
    );
    let size = serde_json::to_vec(phase).expect("json").len();
    assert!(size < 1 << 20, "{scenario}: a {size}-byte phase record");
}

/// The review's host-exhaustion attacks, each in a child process: every one ends with the host's
/// peak RSS bounded, its stderr short, the phase record within the limits, and the step faulted
/// (or cut short) — not 17.5 GB, 326,000 backend calls or 151 MB of warnings.
#[test]
fn hostile_steps_leave_the_host_bounded() {
    for (scenario, fault) in [
        ("hostile-log-flood.yaml", Some("deadline hit")),
        ("hostile-call-flood.yaml", Some("capability calls")),
        ("hostile-denied-flood.yaml", Some("capability calls")),
        ("hostile-big-logs.yaml", None),
        ("hostile-big-verdict.yaml", None),
        ("hostile-many-outputs.yaml", Some("over the host's 32768")),
    ] {
        let (code, json, stderr_bytes, maxrss_kib) = run_measured(scenario);
        assert_eq!(
            code,
            Some(0),
            "{scenario}: expectations: {}",
            json["failures"]
        );
        assert!(
            maxrss_kib < 512 * 1024,
            "{scenario}: the host grew to {} MiB",
            maxrss_kib / 1024
        );
        assert!(
            stderr_bytes < 16 << 10,
            "{scenario}: {stderr_bytes} bytes on stderr"
        );
        let phases = json["report"]["phases"].as_array().expect("phases");
        for phase in phases {
            assert_phase_bounded(scenario, phase);
        }
        let first = &phases[0];
        match fault {
            Some(want) => assert!(
                first["summary"].as_str().unwrap_or("").contains(want),
                "{scenario}: {}",
                first["summary"]
            ),
            None => assert_eq!(first["status"], "passed", "{scenario}"),
        }
        match scenario {
            "hostile-log-flood.yaml" | "hostile-big-logs.yaml" => {
                assert!(
                    first["logs_dropped"].as_u64().unwrap_or(0) > 0
                        || first["logs_truncated"].as_u64().unwrap_or(0) > 0,
                    "{scenario}: the cut is recorded: {first}"
                );
            }
            "hostile-denied-flood.yaml" => {
                assert!(first["calls_refused"].as_u64().unwrap_or(0) > 0, "{first}");
            }
            "hostile-many-outputs.yaml" => {
                assert_eq!(
                    first["status"], "refused",
                    "{scenario}: {}",
                    first["summary"]
                );
                assert!(
                    first["outputs"].as_array().is_none_or(|o| o.is_empty()),
                    "{scenario}: no output is kept"
                );
                let evidence = first["evidence"].as_array().expect("evidence");
                assert!(
                    evidence.len() < 64
                        && evidence
                            .last()
                            .is_some_and(|e| e.to_string().contains("evidence pairs cut")),
                    "{scenario}: the evidence is cut to its budget, the cut said: {}",
                    evidence.len()
                );
            }
            "hostile-big-verdict.yaml" => {
                let evidence = first["evidence"][0][1].as_str().expect("evidence");
                assert!(evidence.len() < 8 << 10, "{} bytes kept", evidence.len());
                assert!(evidence.contains("bytes cut"), "the cut is said");
            }
            _ => {}
        }
    }
}

/// One audit record stays bounded whatever a probe logs: the review's 200 × 1 MiB probe made a
/// 210 MB audit line.
#[tokio::test]
async fn a_probe_that_logs_megabytes_makes_a_bounded_audit_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The hostile component as a read-only probe: its own signed bundle.
    let bundle = dir.path().join("hostile-probe");
    std::fs::create_dir_all(bundle.join("components")).expect("mkdir");
    std::fs::copy(
        repo().join("tests/runbooks/hostile/components/hostile.wasm"),
        bundle.join("components/hostile.wasm"),
    )
    .expect("copy component (run scripts/build-runbooks)");
    std::fs::write(
        bundle.join("manifest.yaml"),
        "id: hostile-probe\nversion: 0.1.0\ndomain: kafka\ndescription: a probe that logs too much\nsteps:\n  - { id: hostile, component: components/hostile.wasm, capabilities: [kafka.describe-cluster], timeout: 3s }\n",
    )
    .expect("manifest");
    let key = repo().join("keys/demo/demo-test-fixtures.key");
    let signed = themis(&[
        "runbook",
        "sign",
        bundle.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
    ]);
    assert!(signed.status.success(), "{}", text(&signed.stderr));
    let agent = dir.path().join("hostile-agent.yaml");
    std::fs::write(
        &agent,
        format!(
            "name: kafka\ndomain: kafka\nrunbooks: [{}]\nprobes: [{}]\ntrust: {{ keys: [{}, {}] }}\nroutes: [ {{ alert: Hostile }} ]\npolicy: {{ min_confidence: 0.8 }}\n",
            repo().join("runbooks/kafka/check-broker-health").display(),
            bundle.display(),
            repo().join("keys/demo/demo-test-fixtures.pub").display(),
            repo().join("keys/demo/demo-kafka-team.pub").display(),
        ),
    )
    .expect("agent");
    let host = HostSpec {
        agents: vec![agent],
        ..HostSpec::new(dir.path(), "agents/kafka.yaml", "hostile-big-logs.yaml")
    }
    .start()
    .await
    .expect("runtime");
    let mut alert = crate::common::world_alert("hostile-big-logs.yaml");
    alert.fingerprint = "hostile".into();
    host.runtime.handle_alert(alert).await.expect("handled");
    let longest = std::fs::read_to_string(&host.audit_path)
        .expect("audit")
        .lines()
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(
        longest <= themis_agent::audit::MAX_RECORD_BYTES + 4096,
        "a {longest}-byte audit record"
    );
    let verify = themis(&["audit", "verify", host.audit_path.to_str().expect("utf-8")]);
    assert!(verify.status.success());
}

/// Mutations happen only in `action` and `rollback`, and only on the plan's target, as often
/// as the manifest allows: one approval of "restart broker 1" restarts broker 1 once.
#[test]
fn an_approval_covers_exactly_the_plans_mutations() {
    let (code, json, _, _) = run_measured("hostile-mutate-in-checks.yaml");
    assert_eq!(code, Some(0), "{}", json["failures"]);
    let calls: Vec<&Value> = json["report"]["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .flat_map(|p| p["calls"].as_array().into_iter().flatten())
        .collect();
    assert!(!calls.is_empty());
    for call in &calls {
        assert_eq!(call["mode"], "refused", "{call}");
        assert!(
            call["reason"]
                .as_str()
                .unwrap_or("")
                .contains("preconditions and postconditions only look"),
            "{call}"
        );
    }

    let (code, json, _, _) = run_measured("hostile-restart-all.yaml");
    assert_eq!(code, Some(0), "{}", json["failures"]);
    let restarts: Vec<&Value> = json["report"]["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .flat_map(|p| p["calls"].as_array().into_iter().flatten())
        .filter(|c| c["capability"] == "kafka.broker-restart")
        .collect();
    let performed: Vec<&&Value> = restarts
        .iter()
        .filter(|c| c["mode"] == "performed")
        .collect();
    assert_eq!(performed.len(), 1, "one restart in all: {restarts:?}");
    assert_eq!(performed[0]["args"], json!({ "broker_id": 1 }));
    let reasons: Vec<&str> = restarts
        .iter()
        .filter_map(|c| c["reason"].as_str())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("broker_id = 3 is outside the plan")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("already called 1 time(s)")),
        "{reasons:?}"
    );
}

fn incident_file(state: &Path, approval: &str) -> PathBuf {
    std::fs::read_dir(state.join("incidents"))
        .expect("incidents")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            std::fs::read_to_string(p)
                .map(|t| t.contains(approval))
                .unwrap_or(false)
        })
        .expect("the incident file")
}

fn host_mac(state: &Path, data: &Value) -> String {
    use hmac::{Hmac, Mac};
    let key = hex::decode(
        std::fs::read_to_string(state.join("host.key"))
            .expect("key")
            .trim(),
    )
    .expect("hex");
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).expect("key");
    mac.update(&serde_json::to_vec(data).expect("json"));
    hex::encode(mac.finalize().into_bytes())
}

/// An approval covers the plan the human was shown, read back from the audit: editing the state
/// file (parameters, expiry) is refused; even a state file re-signed with the host's key cannot
/// change what runs.
#[test]
fn an_approval_runs_the_plan_that_was_shown_not_the_state_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_str().expect("utf-8");
    let (apr, digest) = alert_with_proposal(state, "agent-postgres-lock-waits.yaml");
    let file = incident_file(dir.path(), &apr);
    let original = std::fs::read_to_string(&file).expect("read");
    let mut edited: Value = serde_json::from_str(&original).expect("json");
    let pid = edited["data"]["proposal"]["plan"]["params"]["pid"].clone();
    edited["data"]["proposal"]["plan"]["params"]["pid"] = json!(pid.as_i64().expect("pid") + 1);
    edited["data"]["proposal"]["expires_at"]["secs_since_epoch"] = json!(4_000_000_000u64);

    // Edited by hand: the MAC no longer verifies.
    std::fs::write(&file, serde_json::to_string(&edited).expect("json")).expect("write");
    let refused = themis(&["approve", &apr, "--digest", &digest, "--state-dir", state]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("changed outside Themis"),
        "{}",
        text(&refused.stderr)
    );
    let tampered = records(&dir.path().join("audit.jsonl"))
        .into_iter()
        .any(|r| r["kind"] == "state-tampered");
    assert!(tampered, "the tampering is on the record");

    // Re-signed with the host's own key: the approval still runs the plan the audit recorded.
    edited["mac"] = json!(host_mac(dir.path(), &edited["data"]));
    std::fs::write(&file, serde_json::to_string(&edited).expect("json")).expect("write");
    let ok = themis(&["approve", &apr, "--digest", &digest, "--state-dir", state]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let terminated: Vec<Value> = records(&dir.path().join("audit.jsonl"))
        .into_iter()
        .filter(|r| {
            r["kind"] == "capability-intent"
                && r["data"]["intent"]["capability"] == "postgres.terminate-backend"
        })
        .map(|r| r["data"]["intent"]["args"]["pid"].clone())
        .collect();
    assert_eq!(
        terminated,
        vec![pid],
        "the shown plan ran, not the edited one"
    );
}

/// The state rolled back to an earlier, validly sealed copy (a restored backup, a row put back
/// by someone who can write the state but not the audit) cannot claim a proposal twice: the
/// audit already holds its answer, and the approval is refused.
#[test]
fn a_state_rolled_back_to_before_an_answer_cannot_answer_it_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_str().expect("utf-8");
    let (apr, digest) = alert_with_proposal(state, "agent-postgres-lock-waits.yaml");
    let file = incident_file(dir.path(), &apr);
    let pending = std::fs::read(&file).expect("read");
    let rejected = themis(&["reject", &apr, "--reason", "not now", "--state-dir", state]);
    assert!(rejected.status.success(), "{}", text(&rejected.stderr));
    std::fs::write(&file, &pending).expect("roll the incident back");
    let again = themis(&["approve", &apr, "--digest", &digest, "--state-dir", state]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again.stdout));
    assert!(
        text(&again.stderr).contains("already answered"),
        "{}",
        text(&again.stderr)
    );
    let acted = records(&dir.path().join("audit.jsonl"))
        .into_iter()
        .any(|r| r["kind"] == "capability-intent" || r["kind"] == "approval");
    assert!(!acted, "nothing ran on the rolled-back state");
}

/// The requester never approves their own plan, and who they are is not up to a flag: the OS
/// user who adjusted a plan into a destructive one cannot approve it too; a second, proven
/// approver can.
#[test]
fn an_approver_is_who_they_say_and_never_the_requester() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_str().expect("utf-8");
    let (apr, _) = alert_with_proposal(state, "agent-postgres-lock-waits.yaml");
    let adjusted = themis(&[
        "adjust",
        &apr,
        "--runbook",
        "terminate-blocker",
        "--param",
        "pid=4242",
        "--state-dir",
        state,
    ]);
    assert!(adjusted.status.success(), "{}", text(&adjusted.stderr));
    let (mine, digest) = proposal_of(&text(&adjusted.stdout), state);
    assert_ne!(mine, apr);
    let own = themis(&["approve", &mine, "--digest", &digest, "--state-dir", state]);
    assert_eq!(own.status.code(), Some(1));
    assert!(
        text(&own.stderr).contains("cannot approve or adjust it: another person must"),
        "{}",
        text(&own.stderr)
    );
    // The first proposal was answered by the adjustment: a late reject or adjust of it (an
    // old Slack message, a retried request) answers nothing, least of all the new plan.
    for late in [
        vec!["reject", apr.as_str(), "--reason", "late click"],
        vec![
            "adjust",
            apr.as_str(),
            "--runbook",
            "terminate-blocker",
            "--param",
            "pid=7",
        ],
    ] {
        let mut args = late.clone();
        args.extend(["--state-dir", state]);
        let refused = themis(&args);
        assert_eq!(refused.status.code(), Some(1), "{late:?} must be refused");
        assert!(
            text(&refused.stderr).contains("already"),
            "{late:?}: {}",
            text(&refused.stderr)
        );
    }
    let config = approvers_config(dir.path());
    let other = Command::new(env!("CARGO_BIN_EXE_themis"))
        .args(["approve", &mine, "--digest", &digest, "--state-dir", state])
        .args(["--as", "alice", "--config", config.to_str().expect("utf-8")])
        .env("THEMIS_TOKEN", "alice-token")
        .current_dir(repo())
        .output()
        .expect("runs");
    assert!(other.status.success(), "{}", text(&other.stderr));
    let approval = records(&dir.path().join("audit.jsonl"))
        .into_iter()
        .find(|r| r["kind"] == "approval")
        .expect("approval");
    assert_eq!(approval["data"]["approver"]["name"], "alice");
    assert_eq!(approval["data"]["approver"]["via"], "token");
}

/// 4294967297 is not broker 1: parameters keep their declared width from the plan to the step.
#[test]
fn integer_parameters_are_never_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_str().expect("utf-8");
    let (apr, _) = alert_with_proposal(state, "agent-postgres-lock-waits.yaml");
    let wide = themis(&[
        "adjust",
        &apr,
        "--runbook",
        "terminate-blocker",
        "--param",
        "pid=4294967297",
        "--state-dir",
        state,
    ]);
    assert_eq!(wide.status.code(), Some(1));
    assert!(
        text(&wide.stderr).contains("outside its declared range [1, 2147483647]"),
        "{}",
        text(&wide.stderr)
    );
    // The same for a runbook run on its own.
    let scenario = dir.path().join("wide-broker.yaml");
    std::fs::write(
        &scenario,
        format!(
            "name: wide broker id\nrunbook: {}\ntrust: [{}]\nalert: {{ name: X }}\nparams: {{ broker_id: 4294967297 }}\n",
            repo().join("runbooks/kafka/adjust-broker-gc").display(),
            repo().join("keys/demo/demo-kafka-team.pub").display()
        ),
    )
    .expect("write");
    let run = themis(&["run", "--scenario", scenario.to_str().expect("utf-8")]);
    assert_eq!(run.status.code(), Some(2), "{}", text(&run.stdout));
    assert!(
        text(&run.stderr).contains("broker_id"),
        "{}",
        text(&run.stderr)
    );
}

/// Secrets in an alert — a password label, a DSN and a bearer token in an annotation — reach
/// neither the audit, nor Slack, nor the model.
#[tokio::test]
async fn secrets_never_leave_the_host() {
    use crate::openai_mock::{Answer, MockLlm};
    let (base, posted) = crate::common::webhook("/hook").await;
    let llm = MockLlm::start(vec![Answer::Content(
        json!({ "reasoning": "unsure", "runbook": "escalate", "parameters": {}, "confidence": 0.1 })
            .to_string(),
    )])
    .await;
    let mut config =
        themis_agent::triage::llm::config::LlmConfig::new(&llm.base_url, "scripted").expect("llm");
    config.timeout = Duration::from_secs(5);

    let dir = tempfile::tempdir().expect("tempdir");
    let world = "agent-postgres-lock-waits.yaml";
    let host = HostSpec {
        channels: themis_agent::escalation::Channels {
            slack_webhook: Some(format!("{base}/hook")),
        },
        options: themis_agent::RuntimeOptions {
            selector: themis_agent::SelectorChoice::Llm(Some(config)),
            ..Default::default()
        },
        ..HostSpec::new(dir.path(), "agents/postgres.yaml", world)
    }
    .start()
    .await
    .expect("runtime");
    let mut alert = crate::common::world_alert(world);
    alert.labels.push(themis_core::types::Pair::new(
        "db_password",
        "hunter2hunter2",
    ));
    alert.annotations.push(themis_core::types::Pair::new(
        "description",
        "connect with postgres://app:pw98765@db:5432/x, header Authorization: Bearer tok-abcdef123456",
    ));
    host.runtime.handle_alert(alert).await.expect("handled");
    // Slack is sent to once the reply is out, then the delivery recorded.
    crate::common::eventually("the delivery is recorded", || {
        std::fs::read_to_string(&host.audit_path)
            .is_ok_and(|a| a.contains("\"kind\":\"escalation-delivery\""))
    })
    .await;
    let secrets = ["hunter2hunter2", "pw98765", "tok-abcdef123456"];
    let audit = std::fs::read_to_string(&host.audit_path).expect("audit");
    let slack = serde_json::to_string(&*posted.lock().expect("lock")).expect("json");
    let prompts = serde_json::to_string(&llm.requests()).expect("json");
    assert!(!posted.lock().expect("lock").is_empty(), "Slack was told");
    assert!(!llm.requests().is_empty(), "the model was asked");
    for secret in secrets {
        assert!(!audit.contains(secret), "{secret} reached the audit");
        assert!(!slack.contains(secret), "{secret} reached Slack");
        assert!(!prompts.contains(secret), "{secret} reached the model");
    }
    assert!(
        prompts.contains("[redacted]"),
        "the model sees that something was removed"
    );
}

fn sparse(path: &Path, len: u64) {
    let f = std::fs::File::create(path).expect("create");
    f.set_len(len).expect("sparse");
}

/// Inputs are refused from their metadata, never read whole: a 6 GB component, a 1.5 GB
/// signature, a FIFO where the signature should be, a deeply nested manifest, a trusted key
/// folder anyone can write.
#[test]
fn oversized_or_strange_inputs_are_refused_before_they_are_read() {
    let copy = |relative: &str| {
        let from = repo().join(relative);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("components")).expect("mkdir");
        for name in ["manifest.yaml", "runbook.sig"] {
            std::fs::copy(from.join(name), dir.path().join(name)).expect("copy");
        }
        for e in std::fs::read_dir(from.join("components"))
            .expect("components")
            .flatten()
        {
            std::fs::copy(e.path(), dir.path().join("components").join(e.file_name()))
                .expect("copy");
        }
        dir
    };
    const KAFKA: &str = "runbooks/kafka/restart-consumer-group";

    let dir = copy(KAFKA);
    sparse(
        &dir.path().join("components/restart-consumers.wasm"),
        6 << 30,
    );
    let fresh = themis_sandbox::Sandbox::new(Default::default()).expect("sandbox");
    let err = LoadedRunbook::load(&fresh, dir.path(), &demo_trust(KAFKA)).expect_err("refused");
    assert!(
        err.to_string().contains("more than the 33554432 bytes"),
        "{err}"
    );
    assert_eq!(fresh.stats().compiles, 0);

    let dir = copy(KAFKA);
    sparse(&dir.path().join("runbook.sig"), 1536 << 20);
    let err = LoadedRunbook::load(sandbox(), dir.path(), &demo_trust(KAFKA)).expect_err("refused");
    assert!(
        matches!(&err, RunbookLoadError::Refused { .. }) && err.to_string().contains("more than"),
        "{err}"
    );

    let dir = copy(KAFKA);
    std::fs::remove_file(dir.path().join("runbook.sig")).expect("rm");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        dir.path().join("runbook.sig"),
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .expect("mkfifo");
    let path = dir.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = LoadedRunbook::load(sandbox(), &path, &demo_trust(KAFKA)).map(|_| ());
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    let err = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the load returned instead of hanging on the FIFO")
        .expect_err("refused");
    assert!(err.contains("not a regular file"), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let nested = format!(
        "id: deep\nversion: 1.0.0\ndomain: kafka\ndescription: {}{}\nsteps: []\n",
        "[".repeat(200_000),
        "]".repeat(200_000)
    );
    std::fs::write(dir.path().join("manifest.yaml"), nested).expect("write");
    let err = themis_core::manifest::Runbook::load(dir.path()).expect_err("refused");
    assert!(err.problem.contains("nested deeper"), "{err}");
}

/// A trusted key folder that others can write is refused (anyone could add their key), unless
/// the development override is set, which warns.
#[test]
fn a_trusted_key_folder_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).expect("mkdir");
    std::fs::copy(
        repo().join("keys/demo/demo-postgres-team.pub"),
        keys.join("team.pub"),
    )
    .expect("copy");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let agents = dir.path().join("agents");
    std::fs::create_dir(&agents).expect("mkdir");
    patched_agent(
        &agents,
        "agents/postgres.yaml",
        &[(
            &format!("{}/keys/demo/demo-postgres-team.pub", repo().display()),
            keys.to_str().expect("utf-8"),
        )],
    );
    let list = |insecure: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_themis"));
        c.args([
            "runbook",
            "list",
            "--agents",
            agents.to_str().expect("utf-8"),
        ])
        .current_dir(repo())
        .env_remove("THEMIS_DEV_ALLOW_INSECURE_KEYS");
        if insecure {
            c.env("THEMIS_DEV_ALLOW_INSECURE_KEYS", "1");
        }
        c.output().expect("runs")
    };
    let refused = list(false);
    assert_ne!(refused.status.code(), Some(0));
    assert!(
        text(&refused.stderr).contains("writable by others"),
        "{}",
        text(&refused.stderr)
    );
    let allowed = list(true);
    assert!(allowed.status.success(), "{}", text(&allowed.stderr));
    assert!(
        text(&allowed.stderr).contains("development only"),
        "{}",
        text(&allowed.stderr)
    );
}

/// On a terminal, `themis approve ID` shows the plan — runbook, parameters, target, digest — and
/// approves only what the human confirmed.
#[test]
fn approving_on_a_terminal_shows_the_plan_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_str().expect("utf-8");
    let (apr, digest) = alert_with_proposal(state, "agent-postgres-lock-waits.yaml");
    // `script` gives the command a terminal; "n" then "y" are the human's answers.
    let on_terminal = |answer: &str| {
        let mut child = Command::new("script")
            .args(["-qec"])
            .arg(format!(
                "{} approve {apr} --state-dir {state}",
                env!("CARGO_BIN_EXE_themis")
            ))
            .arg("/dev/null")
            .current_dir(repo())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("script runs");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(answer.as_bytes())
            .expect("answer");
        child.wait_with_output().expect("waits")
    };
    let declined = on_terminal("n\n");
    let shown = text(&declined.stdout);
    assert!(shown.contains("runbook    terminate-blocker"), "{shown}");
    assert!(shown.contains(&format!("plan       {digest}")), "{shown}");
    assert!(shown.contains("Approve exactly this plan?"), "{shown}");
    assert!(!shown.contains(": unverified"), "{shown}");
    let confirmed = on_terminal("y\n");
    let shown = text(&confirmed.stdout);
    assert!(shown.contains(": unverified"), "{shown}");
}
