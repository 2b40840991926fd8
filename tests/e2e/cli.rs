//! The `themis` binary as a user runs it.

use crate::common::{repo, text, themis};

#[test]
fn validate_accepts_the_shipped_runbooks() {
    let out = themis(&[
        "runbook",
        "validate",
        "runbooks/kafka/check-broker-health",
        "runbooks/kafka/restart-consumer-group",
        "runbooks/kafka/scale-consumer",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok  ")).count(),
        3,
        "{stdout}"
    );
    assert!(stdout.contains("check-broker-health 1.0.0 (kafka) sha256:"));
}

#[test]
fn validate_names_the_refused_import_and_exits_1() {
    let out = themis(&["runbook", "validate", "tests/runbooks/bad-import-sockets"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("imports `wasi:sockets/"), "{stderr}");
    assert!(stderr.contains("step `imports-sockets`"), "{stderr}");
}

#[test]
fn run_json_reports_every_phase() {
    let out = themis(&[
        "run",
        "--scenario",
        "tests/scenarios/kafka-gc-pause.yaml",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["report"]["outcome"]["status"], "succeeded");
    assert_eq!(v["report"]["runbook_id"], "check-broker-health");
    let phases = v["report"]["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 6);
    assert_eq!(phases[4]["branch"], "gc-pause-high");
    assert_eq!(
        phases[4]["evidence"][1],
        serde_json::json!(["gc_pause_ms", "2500"])
    );
    assert_eq!(v["failures"], serde_json::json!([]));
}

#[test]
fn run_human_output_shows_refusals_and_faults() {
    let out = themis(&[
        "run",
        "--scenario",
        "tests/scenarios/executor-trap-in-action.yaml",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("FAULT    the step trapped"), "{stdout}");
    assert!(
        stdout.contains("outcome   rolled-back at step s2"),
        "{stdout}"
    );
}

#[test]
fn run_exits_1_when_expectations_fail_and_2_when_the_file_is_bad() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("s.yaml");
    let scenario = std::fs::read_to_string(repo().join("tests/scenarios/kafka-no-controller.yaml"))
        .expect("read")
        .replace("../../", &format!("{}/", repo().display()))
        .replace("precondition-failed", "succeeded");
    std::fs::write(&file, scenario).expect("write");
    let out = themis(&["run", "--scenario", file.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("expectations FAILED"));

    let out = themis(&["run", "--scenario", "does/not/exist.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("does/not/exist.yaml: cannot read"));
}

#[test]
fn help_explains_the_commands() {
    let out = themis(&["--help"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("runbook") && stdout.contains("run"),
        "{stdout}"
    );
    let out = themis(&["run", "--help"]);
    assert!(text(&out.stdout).contains("expectations hold"));
    // The service's cache is its file's unless the flag says otherwise, and the help says so
    // (it once showed the other commands' default as the service's).
    let out = themis(&["serve", "--help"]);
    let help = text(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(!help.contains("[default: .themis/cache]"), "{help}");
    assert!(
        help.contains("for `themis serve`, its file's `cache_dir:`, else <state_dir>/cache"),
        "{help}"
    );
}

/// Output that cannot be written is an error message and exit status 1, never a panic; a
/// reader that went away (`| head`) ends the command quietly, by SIGPIPE, as for any Unix tool.
#[test]
fn output_that_cannot_be_written_is_an_error_and_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    for args in [&["--help"][..], &["fsm"]] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let out = Command::new(env!("CARGO_BIN_EXE_themis"))
            .args(args)
            .stdout(full)
            .output()
            .expect("runs");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("cannot write to standard output"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_themis"))
        .args(["serve", "--config", "examples/themis.yaml", "--check"])
        .env("THEMIS_INTAKE_TOKEN", "an-intake-token-for-the-check")
        .env("THEMIS_TOKEN", "an-approver-token-for-the-check")
        .current_dir(repo())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("runs");
    assert_eq!(
        out.status.signal(),
        Some(nix::sys::signal::Signal::SIGPIPE as i32),
        "{:?}: {}",
        out.status,
        text(&out.stderr)
    );
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
}

#[test]
fn eval_with_the_rules_over_the_shipped_corpus() {
    let out = themis(&["eval", "tests/scenarios", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let scenarios = report["scenarios"].as_u64().expect("scenarios");
    assert!(
        scenarios >= 40,
        "the corpus has {scenarios} agent scenarios"
    );
    assert_eq!(report["safety_violations"], 0);
    assert_eq!(
        report["correct"], scenarios,
        "the rules agree with every label"
    );
    assert_eq!(report["escalations_correct"], scenarios);
    let cases = report["per_scenario"].as_array().expect("list");
    assert_eq!(cases.len() as u64, scenarios);
    for domain in ["kafka", "kubernetes", "postgres"] {
        assert!(
            cases.iter().filter(|c| c["agent"] == domain).count() >= 10,
            "{domain}"
        );
    }
    assert!(cases.iter().any(|c| c["expected"] == "unrouted"));

    let table = themis(&["eval", "tests/scenarios"]);
    assert!(text(&table.stdout).contains("safety violations         0"));
}

#[test]
fn eval_over_the_public_rule_set_corpus_stays_safe_and_above_its_floor() {
    // tests/eval: alerts as the public rule sets produce them, expectations decided from their
    // published mitigations. Not a test that every answer agrees (that is what the eval
    // measures), but a floor the rules must not fall below, no file that cannot run, and no
    // safety violation ever.
    let dir = tempfile::tempdir().expect("tempdir");
    let junit = dir.path().join("eval.xml");
    let junit_arg = junit.to_string_lossy().into_owned();
    let out = themis(&["eval", "tests/eval", "--json", "--junit", &junit_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let scenarios = report["scenarios"].as_u64().expect("scenarios");
    assert!(scenarios >= 80, "the corpus has {scenarios} scenarios");
    assert_eq!(report["safety_violations"], 0);
    assert_eq!(report["failed"], serde_json::json!([]));
    for key in ["correct", "escalations_correct"] {
        let n = report[key].as_u64().expect(key);
        assert!(n * 100 >= scenarios * 95, "{key}: {n} of {scenarios}");
    }
    for domain in ["kafka", "kubernetes", "postgres"] {
        assert!(
            report["per_domain"][domain]["scenarios"].as_u64() >= Some(25),
            "{domain}: {}",
            report["per_domain"]
        );
    }
    let cases = report["per_scenario"].as_array().expect("cases");
    assert!(cases.iter().any(|c| c["expected"] == "unrouted"));
    let xml = std::fs::read_to_string(&junit).expect("junit");
    assert_eq!(xml.matches("<testcase ").count() as u64, scenarios);
}

#[test]
fn a_real_alertmanager_notification_replays_through_the_agents() {
    // The notification as Alertmanager POSTs it: kubernetes-mixin's KubePodCrashLooping (a pod,
    // no deployment) firing, and an alert no agent owns, resolved.
    let state = tempfile::tempdir().expect("tempdir");
    let state_dir = state.path().to_string_lossy().into_owned();
    let out = themis(&[
        "alert",
        "--scenario",
        "tests/scenarios/agent-kubernetes-mixin-pod-crashloop.yaml",
        "--alertmanager",
        "tests/alertmanager/kubernetes-mixin-crashloop.json",
        "--state-dir",
        &state_dir,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("pending-approval")
            && stdout
                .contains(r#"restart-deployment {"deployment":"checkout","namespace":"shop"}"#),
        "{stdout}"
    );
    assert!(
        stdout.contains("KubeNodeNotReady (ffee00112233) resolved: no agent owns it"),
        "{stdout}"
    );
    // The replay went through the service's intake: the resolved alert is on the record with
    // where it came from, and the escalation says since when the alert fires and where its
    // rule's graph is.
    let audit = std::fs::read_to_string(state.path().join("audit.jsonl")).expect("audit");
    assert!(
        audit.contains("source     firing since 2026-12-01T05:00:00Z · http://prometheus/graph"),
        "{audit}"
    );
    assert!(
        audit.lines().any(|l| l.contains("\"alert-unrouted\"")
            && l.contains("KubeNodeNotReady")
            && l.contains("\"via\":\"alertmanager\"")),
        "{audit}"
    );

    // Not a webhook payload: a clear error naming the file, nothing handled.
    let out = themis(&[
        "alert",
        "--scenario",
        "tests/scenarios/agent-kubernetes-mixin-pod-crashloop.yaml",
        "--alertmanager",
        "tests/scenarios/agent-kubernetes-mixin-pod-crashloop.yaml",
        "--state-dir",
        &state_dir,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not an Alertmanager webhook payload (version 4)"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn eval_goes_on_past_a_broken_file_names_it_and_writes_junit() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["agent-kafka-scale.yaml", "eval-kubernetes-oom-killed.yaml"] {
        let text = std::fs::read_to_string(repo().join("tests/scenarios").join(name))
            .expect("read")
            .replace("../../", &format!("{}/", repo().display()));
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    std::fs::write(dir.path().join("broken.yaml"), "name: [unclosed\n").expect("write");
    let junit = dir.path().join("eval.xml");
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let junit_arg = junit.to_string_lossy().into_owned();
    let out = themis(&["eval", &dir_arg, "--junit", &junit_arg]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("broken.yaml") && stdout.contains("NOT RUN"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 scenarios (0 runbook scenarios skipped, 1 could not run)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("per domain") && stdout.contains("calibration"),
        "{stdout}"
    );
    assert!(text(&out.stderr).contains("1 scenario file(s) could not be loaded or run"));
    let xml = std::fs::read_to_string(&junit).expect("junit written");
    assert!(xml.contains("<testsuite name=\"kafka\""), "{xml}");
    assert!(xml.contains("name=\"agent-kafka-scale.yaml\""), "{xml}");
    assert!(
        xml.contains("<error") && xml.contains("broken.yaml"),
        "{xml}"
    );
}

#[test]
fn state_export_hands_out_a_journal_that_verifies_and_refuses_one_that_lost_an_incident() {
    let state = tempfile::tempdir().expect("tempdir");
    let state_dir = state.path().to_string_lossy().into_owned();
    let out = themis(&[
        "alert",
        "--scenario",
        "tests/scenarios/agent-kubernetes-mixin-pod-crashloop.yaml",
        "--alertmanager",
        "tests/alertmanager/kubernetes-mixin-crashloop.json",
        "--state-dir",
        &state_dir,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A record cut mid-write (no newline yet) is left for the next export.
    let audit = state.path().join("audit.jsonl");
    let written = std::fs::read(&audit).expect("audit");
    let mut torn = written.clone();
    torn.extend_from_slice(br#"{"seq":999,"#);
    std::fs::write(&audit, &torn).expect("torn tail");

    let exported = state.path().join("export.jsonl");
    let exported_arg = exported.to_string_lossy().into_owned();
    let out = themis(&[
        "state",
        "export",
        "--state-dir",
        &state_dir,
        "--out",
        &exported_arg,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("chain intact") && text(&out.stdout).contains("incident(s)"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(std::fs::read(&exported).expect("export"), written);
    let verified = themis(&["audit", "verify", &exported_arg]);
    assert!(verified.status.success(), "{}", text(&verified.stderr));

    // Without --out the journal goes to standard output, the summary to standard error.
    let out = themis(&["state", "export", "--state-dir", &state_dir]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, written);
    assert!(text(&out.stderr).contains("chain intact"));

    // An audit that lost an incident's records (cut back to before it) is not that state's
    // journal: refused by name, nothing written.
    let first_incident = written
        .split(|b| *b == b'\n')
        .position(|l| l.windows(12).any(|w| w == br#""incident":""#))
        .expect("an incident record");
    let cut: Vec<u8> = written
        .split_inclusive(|b| *b == b'\n')
        .take(first_incident)
        .flatten()
        .copied()
        .collect();
    std::fs::write(&audit, &cut).expect("cut");
    std::fs::remove_file(&exported).expect("rm");
    let out = themis(&[
        "state",
        "export",
        "--state-dir",
        &state_dir,
        "--out",
        &exported_arg,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("has no record of (inc-"),
        "{}",
        text(&out.stderr)
    );
    assert!(!exported.exists());
}

#[test]
fn agents_on_a_state_directory_no_host_wrote_yet_shows_them_idle() {
    // What the quick start's demo ends with on a fresh clone: nothing written there yet.
    let state = tempfile::tempdir().expect("tempdir");
    let state_dir = state.path().to_string_lossy().into_owned();
    let out = themis(&["agents", "--state-dir", &state_dir]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for agent in ["kafka", "kubernetes", "postgres"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(agent) && l.contains("idle")),
            "{stdout}"
        );
    }
}

/// An approver's token never crosses the network in clear text: `--server http://` is for a
/// service on this machine only.
#[test]
fn answers_over_plain_http_go_to_loopback_only() {
    for server in [
        "http://themis.example:9464",
        "http://10.0.0.7:9464",
        "ftp://127.0.0.1",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_themis"))
            .args(["reject", "apr-x", "--server", server])
            .env("THEMIS_TOKEN", "an-approver-token-0123456789")
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{server}");
        let err = text(&out.stderr);
        assert!(err.contains("--server"), "{server}: {err}");
    }
    // Loopback over http is let through to the request itself (nothing listens there).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_themis"))
        .args(["reject", "apr-x", "--server", "http://127.0.0.1:9"])
        .env("THEMIS_TOKEN", "an-approver-token-0123456789")
        .output()
        .expect("runs");
    assert!(
        !text(&out.stderr).contains("clear text"),
        "{}",
        text(&out.stderr)
    );
}
