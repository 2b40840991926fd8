//! The sidecar's foundations, one test (or more) per defect the review found: a plan never runs
//! twice, an alert for a busy agent waits its turn, a crash never wedges an agent, the
//! destructive list fails closed, nothing mutates without a durable record before it, follow-ups
//! are bounded, "would do" comes only from the dry-run wrapper, and every answer says who gave
//! it and how the host knew.

use crate::common::{
    HostSpec, alert_with_proposal, approvers_config, patched_agent, records, repo, text, themis,
    world_alert,
};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use themis_agent::store::{IncidentStatus, IncidentStore};
use themis_agent::{AlertOutcome, RuntimeOptions};
use themis_core::fsm::AgentState;
use themis_core::types::Phase;
use themis_sandbox::executor::{self, Halt, Outcome, PhaseObserver};

fn themis_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_themis"));
    c.current_dir(repo());
    c
}

fn alert_into(state: &str, scenario: &str) -> std::process::Output {
    themis(&[
        "alert",
        "--scenario",
        &format!("tests/scenarios/{scenario}"),
        "--state-dir",
        state,
    ])
}

/// Defect 1: five people approve one plan at the same moment, from five processes. Exactly one
/// approval claims it; the plan runs once; the others are told it was already answered.
#[test]
fn five_concurrent_approvals_run_the_plan_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_str().expect("utf-8");
    let (apr, digest) = alert_with_proposal(state, "agent-postgres-lock-waits.yaml");
    let children: Vec<_> = (0..5)
        .map(|_| {
            themis_cmd()
                .args(["approve", &apr, "--digest", &digest, "--state-dir", state])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect();
    let won = outputs.iter().filter(|o| o.status.success()).count();
    assert_eq!(won, 1, "exactly one approval claims the plan: {outputs:?}");
    for lost in outputs.iter().filter(|o| !o.status.success()) {
        assert!(
            text(&lost.stderr).contains("already answered"),
            "{}",
            text(&lost.stderr)
        );
    }
    let records = records(&dir.path().join("audit.jsonl"));
    let starts: Vec<_> = records
        .iter()
        .filter(|r| {
            r["kind"] == "execution-start" && r["data"]["runbook_id"] == "terminate-blocker"
        })
        .collect();
    assert_eq!(starts.len(), 1, "the plan ran once");
    let intents = records
        .iter()
        .filter(|r| {
            r["kind"] == "capability-intent"
                && r["data"]["intent"]["capability"] == "postgres.terminate-backend"
        })
        .count();
    assert_eq!(intents, 1, "one terminate, not five");
    // The approval is not the execution: it is bound to a new execution id, which the run used.
    let approval = records
        .iter()
        .find(|r| r["kind"] == "approval")
        .expect("approval");
    let bound = &approval["data"]["bound_to_execution"];
    assert_ne!(bound.as_str(), Some(apr.as_str()));
    assert_eq!(&starts[0]["data"]["execution_id"], bound);
    assert_eq!(starts[0]["data"]["approval"]["approval_id"], apr.as_str());
    let refused = records
        .iter()
        .filter(|r| r["kind"] == "approval-refused")
        .count();
    assert_eq!(refused, 4, "every losing answer is on the record");
    let verify = themis(&["audit", "verify", &format!("{state}/audit.jsonl")]);
    assert!(verify.status.success(), "{}", text(&verify.stderr));
}

/// Defect 1 (the audit): two processes on one state directory at once never fork the chain; the
/// second waits for the first.
#[test]
fn two_processes_at_once_never_fork_the_audit_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_str().expect("utf-8");
    let spawn = |scenario: &str| {
        themis_cmd()
            .args([
                "alert",
                "--scenario",
                &format!("tests/scenarios/{scenario}"),
                "--state-dir",
                state,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let a = spawn("agent-kafka-stuck-rebalance.yaml");
    let b = spawn("agent-postgres-lock-waits.yaml");
    for child in [a, b] {
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let records = records(&dir.path().join("audit.jsonl"));
    let seqs: Vec<u64> = records
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "one chain"
    );
    let verify = themis(&["audit", "verify", &format!("{state}/audit.jsonl")]);
    assert!(verify.status.success(), "{}", text(&verify.stderr));
    assert!(records.iter().any(|r| r["agent"] == "kafka"));
    assert!(records.iter().any(|r| r["agent"] == "postgres"));
}

/// Defect 1 (the lock): a second process that cannot get the state directory says who holds it.
#[test]
fn a_held_state_directory_names_its_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_str().expect("utf-8");
    std::fs::create_dir_all(dir.path()).expect("mkdir");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(dir.path().join("state.lock"))
        .expect("lock file");
    lock.try_lock().expect("held by the test");
    std::fs::write(
        dir.path().join("state.lock"),
        "pid 4242, `themis serve`, since now",
    )
    .expect("holder");
    let out = themis(&[
        "alert",
        "--scenario",
        "tests/scenarios/agent-kafka-stuck-rebalance.yaml",
        "--state-dir",
        state,
        "--lock-wait",
        "200ms",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("held by another themis process (pid 4242, `themis serve`"),
        "{err}"
    );
    drop(lock);
}

/// Defect 2: alerts for a busy agent wait in its queue and are triaged in turn; none leaves an
/// incident stuck in `triaging`. A full queue refuses (on the record) instead of growing.
#[tokio::test]
async fn alerts_for_a_busy_agent_queue_and_are_triaged_in_turn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let world = "agent-kafka-stuck-rebalance.yaml";
    let host = HostSpec::new(dir.path(), "agents/kafka.yaml", world)
        .start()
        .await
        .expect("runtime");
    let alert = |group: &str| {
        let mut a = world_alert(world);
        a.fingerprint = format!("fp-{group}");
        a
    };
    let (a, b, c) = tokio::join!(
        host.runtime.handle_alert(alert("a")),
        host.runtime.handle_alert(alert("b")),
        host.runtime.handle_alert(alert("c")),
    );
    let mut ids = BTreeSet::new();
    for outcome in [a, b, c] {
        match outcome.expect("handled") {
            AlertOutcome::Handled(i) => {
                assert_ne!(i.status, IncidentStatus::Triaging, "{i:?}");
                ids.insert(i.id);
            }
            other => panic!("each alert is its own incident: {other:?}"),
        }
    }
    assert_eq!(ids.len(), 3);
    for i in host.store.list().await.expect("list") {
        assert!(
            !matches!(
                i.status,
                IncidentStatus::Triaging | IncidentStatus::Executing
            ),
            "{} left {:?}",
            i.id,
            i.status
        );
    }
    // One at a time: every incident's alert is recorded after the previous one ended.
    let log = records(&host.audit_path);
    let kinds: Vec<(String, String)> = log
        .iter()
        .filter(|r| {
            r["kind"] == "alert"
                || (r["kind"] == "transition" && r["data"]["to"]["state"] == "idle")
        })
        .map(|r| {
            (
                r["kind"].as_str().unwrap_or("").to_owned(),
                r["incident"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for pair in kinds.chunks(2) {
        assert_eq!(pair[0].0, "alert", "{kinds:?}");
        assert_eq!(pair[1].0, "transition", "{kinds:?}");
        assert_eq!(pair[0].1, pair[1].1, "interleaved incidents: {kinds:?}");
    }
    assert_eq!(
        host.runtime.states()[0].state,
        AgentState::Idle,
        "the agent is idle after all three"
    );

    // A queue of one: the first alert waits in it, the others are refused and recorded.
    let dir = tempfile::tempdir().expect("tempdir");
    let host = HostSpec {
        options: RuntimeOptions {
            queue_capacity: 1,
            ..RuntimeOptions::default()
        },
        ..HostSpec::new(dir.path(), "agents/kafka.yaml", world)
    }
    .start()
    .await
    .expect("runtime");
    let (a, b, c) = tokio::join!(
        host.runtime.handle_alert(alert("a")),
        host.runtime.handle_alert(alert("b")),
        host.runtime.handle_alert(alert("c")),
    );
    let outcomes = [a, b, c].map(|o| o.expect("answered"));
    let full = outcomes
        .iter()
        .filter(|o| matches!(o, AlertOutcome::QueueFull { .. }))
        .count();
    assert!(full >= 1, "{outcomes:?}");
    let refused = records(&host.audit_path)
        .into_iter()
        .filter(|r| r["kind"] == "alert-refused" && r["data"]["reason"] == "queue-full")
        .count();
    assert_eq!(refused, full);
}

const MARKERS: &[&str] = &[
    "alert",
    "transition",
    "probe",
    "selection",
    "decision",
    "execution-start",
    "capability-intent",
    "phase",
    "result",
    "verification-start",
];

/// Defect 3: `kill -9` at any moment never wedges the agent. The next start finds what was
/// unfinished, marks it interrupted, tells a human, and the agent takes the next alert. CI runs
/// a short sweep; `scripts/kill-loop` runs the long one.
#[test]
fn a_kill_at_any_moment_never_wedges_the_agent() {
    let trials: u64 = std::env::var("THEMIS_KILL_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(MARKERS.len() as u64);
    let mut interrupted = 0;
    let mut resumed = 0;
    for trial in 0..trials {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().to_str().expect("utf-8");
        // Warm up the state directory (and the compiled cache) so the kill lands mid-incident.
        let mut child = themis_cmd()
            .args([
                "alert",
                "--scenario",
                "tests/scenarios/agent-kafka-stuck-rebalance.yaml",
                "--state-dir",
                state,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        // Kill as soon as the run has reached a given point of the incident, a different point
        // each trial: just after the alert, a transition, the probe, the selection, the
        // decision, the execution's start, a mutation's intent, a phase, the result.
        let marker = MARKERS[(trial as usize) % MARKERS.len()];
        let audit = dir.path().join("audit.jsonl");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let seen = std::fs::read_to_string(&audit)
                .is_ok_and(|t| t.contains(&format!("\"kind\":\"{marker}\"")));
            if seen || child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let _ = child.kill();
        let _ = child.wait();

        // The next start acts on the same world, so a resumed restart reads it as it was left.
        let next = alert_into(state, "agent-kafka-stuck-rebalance.yaml");
        assert!(
            next.status.success(),
            "trial {trial}: the agent is wedged: {}",
            text(&next.stderr)
        );
        let agents = themis(&["agents", "--state-dir", state, "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&agents.stdout).expect("json");
        let kafka = list
            .as_array()
            .and_then(|l| l.iter().find(|a| a["agent"] == "kafka"))
            .expect("kafka");
        assert_eq!(kafka["state"]["state"], "idle", "trial {trial}: {kafka}");
        if !audit.exists() {
            continue;
        }
        let records = records(&audit);
        let incidents: BTreeMap<String, String> = std::fs::read_dir(dir.path().join("incidents"))
            .expect("incidents")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .map(|e| std::fs::read_to_string(e.path()).expect("read"))
            .map(|t| serde_json::from_str::<serde_json::Value>(&t).expect("json"))
            .map(|i| {
                (
                    i["data"]["id"].as_str().unwrap_or("").to_owned(),
                    i["data"]["status"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        for (id, status) in &incidents {
            assert!(
                status != "triaging" && status != "executing",
                "trial {trial} (killed after `{marker}`): {id} left {status}; audit:\n{}",
                std::fs::read_to_string(&audit).unwrap_or_default()
            );
            if status == "interrupted" {
                interrupted += 1;
                assert!(
                    records
                        .iter()
                        .any(|r| r["kind"] == "interrupted" && r["incident"] == id.as_str()),
                    "trial {trial}: {id} interrupted without a record"
                );
            }
        }
        // A resumed run never repeats the restart (not idempotent): one intent per execution.
        let mut restarts: BTreeMap<String, usize> = BTreeMap::new();
        for r in &records {
            if r["kind"] == "capability-intent"
                && r["data"]["intent"]["capability"] == "kafka.restart-consumers"
            {
                let exe = r["data"]["intent"]["execution_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                *restarts.entry(exe).or_default() += 1;
            }
            if r["kind"] == "recovered" && r["data"]["action"] == "resume" {
                resumed += 1;
            }
        }
        assert!(
            restarts.values().all(|n| *n <= 1),
            "trial {trial} (killed after `{marker}`): a restart ran twice in one execution: {restarts:?}"
        );
        let verify = themis(&["audit", "verify", audit.to_str().expect("utf-8")]);
        assert!(
            verify.status.success(),
            "trial {trial}: {}",
            text(&verify.stderr)
        );
    }
    eprintln!("kill sweep: {trials} trials, {interrupted} interrupted, {resumed} resumed");
    // The sweep must have hit an incident mid-way at least once (it was then resumed or
    // interrupted), or it proves nothing.
    assert!(
        interrupted + resumed > 0,
        "no kill landed mid-incident in {trials} trials"
    );
}

fn agent_without_destructive_list(dir: &std::path::Path, extra_policy: &str) -> std::path::PathBuf {
    patched_agent(
        dir,
        "agents/kubernetes.yaml",
        &[(
            "  destructive: [k8s.rollout-restart, k8s.delete-pod]\n",
            extra_policy,
        )],
    )
}

/// Defect 4: an agent file that says nothing about destructive capabilities still asks a human
/// for a rollout restart; only a named opt-out removes one, and it is on the record.
#[tokio::test]
async fn agents_fail_closed_without_a_destructive_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let world = "agent-kubernetes-crashloop.yaml";
    let silent = agent_without_destructive_list(dir.path(), "");
    let host = HostSpec {
        agents: vec![silent],
        ..HostSpec::new(dir.path(), "agents/kubernetes.yaml", world)
    }
    .start()
    .await
    .expect("runtime");
    let incident = host.new_incident(world_alert(world)).await;
    assert_eq!(incident.status, IncidentStatus::PendingApproval);
    assert!(
        host.mock
            .calls()
            .iter()
            .all(|c| c.capability != "k8s.rollout-restart"),
        "a destructive call ran without a human"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let opted = agent_without_destructive_list(
        dir.path(),
        "  destructive_opt_out: { k8s.rollout-restart: \"stateless web tier, restarts are routine\" }\n",
    );
    let host = HostSpec {
        agents: vec![opted],
        ..HostSpec::new(dir.path(), "agents/kubernetes.yaml", world)
    }
    .start()
    .await
    .expect("runtime");
    let incident = host.new_incident(world_alert(world)).await;
    assert_eq!(incident.status, IncidentStatus::Unverified);
    let records = records(&host.audit_path);
    let warned = records
        .iter()
        .find(|r| r["kind"] == "destructive-opt-out")
        .expect("the opt-out is audited at start");
    assert_eq!(
        warned["data"]["opted_out"]["k8s.rollout-restart"],
        "stateless web tier, restarts are routine"
    );
    let decision = records
        .iter()
        .find(|r| r["kind"] == "decision")
        .expect("decision");
    assert!(
        decision["data"]["destructive_opt_out"]["k8s.rollout-restart"].is_string(),
        "{decision}"
    );
    let intent = records
        .iter()
        .find(|r| r["kind"] == "capability-intent")
        .expect("intent");
    assert_eq!(
        intent["data"]["destructive_opt_out"]["capability"],
        "k8s.rollout-restart"
    );
}

/// Defect 5: an observer (the audit, the state machine) that refuses the next phase halts the
/// walk before it: the phase never runs, nothing is rolled back blindly, and the outcome says
/// which steps acted.
#[tokio::test]
async fn a_refused_phase_halts_the_runbook_before_it_runs() {
    struct RefuseAction;
    #[async_trait::async_trait]
    impl PhaseObserver for RefuseAction {
        async fn phase_started(&mut self, step: &str, phase: Phase) -> Result<(), Halt> {
            if phase == Phase::Action {
                return Err(Halt(format!("the audit is full before {step}")));
            }
            Ok(())
        }
    }
    let loaded = crate::common::runbook("runbooks/kafka/restart-consumer-group");
    let scenario = themis_testkit::scenario::load(&crate::common::world_file(
        "kafka-restart-consumer-group.yaml",
    ))
    .expect("scenario");
    let mock = Arc::new(themis_testkit::mock::ScenarioMock::new(scenario.mocks).expect("mocks"));
    let params = themis_core::manifest::bind_params(&loaded.runbook.parameters, &scenario.params)
        .expect("params");
    let request = executor::ExecutionRequest {
        execution_id: "exe-halt".into(),
        alert: scenario.alert.to_alert(),
        params,
        backends: themis_caps::Backends::all(mock.clone()),
        destructive: Arc::new(themis_core::policy::DestructiveList::catalogue()),
        approval: None,
        journal: Arc::new(themis_sandbox::journal::MemoryJournal::default()),
        clock: themis_core::clock::Clock::system(),
    };
    let report = executor::execute_observed(
        crate::common::sandbox(),
        &loaded,
        &request,
        &mut RefuseAction,
    )
    .await;
    match &report.outcome {
        Outcome::Halted {
            step, phase, acted, ..
        } => {
            assert_eq!(step, "restart-consumers");
            assert_eq!(*phase, Phase::Action);
            assert!(acted.is_empty(), "{acted:?}");
        }
        other => panic!("halted, got {other:?}"),
    }
    assert!(
        mock.calls()
            .iter()
            .all(|c| c.capability != "kafka.restart-consumers"),
        "the refused phase ran"
    );
}

/// Defect 5 (end to end): when the audit cannot be written — the file-size limit stands in for
/// a full disk, swept over every point of an incident — nothing mutates without its intent on
/// record, the log is never left with half a record, and the command fails saying why.
#[test]
fn a_failing_audit_stops_every_mutation_that_it_could_not_announce() {
    let mut failed_runs = 0;
    for kib in (4..=64).step_by(4) {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().to_str().expect("utf-8");
        // SIGXFSZ ignored so a write past the limit fails with EFBIG instead of killing.
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "trap '' XFSZ; ulimit -f {kib}; exec \"$0\" alert --scenario tests/scenarios/agent-kafka-stuck-rebalance.yaml --state-dir \"$1\""
            ))
            .arg(env!("CARGO_BIN_EXE_themis"))
            .arg(state)
            .current_dir(repo())
            .output()
            .expect("bash");
        let audit = dir.path().join("audit.jsonl");
        if !out.status.success() {
            failed_runs += 1;
            assert!(
                text(&out.stderr).contains("audit") || text(&out.stderr).contains("File too large"),
                "{kib} KiB: {}",
                text(&out.stderr)
            );
        }
        if !audit.exists() {
            continue;
        }
        let verify = themis(&["audit", "verify", audit.to_str().expect("utf-8")]);
        assert!(
            verify.status.success(),
            "{kib} KiB: {}",
            text(&verify.stderr)
        );
        let records = records(&audit);
        let intents: Vec<&serde_json::Value> = records
            .iter()
            .filter(|r| r["kind"] == "capability-intent")
            .collect();
        for r in records.iter().filter(|r| r["kind"] == "phase") {
            for call in r["data"]["record"]["calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let mutating =
                    themis_core::capability::lookup(call["capability"].as_str().unwrap_or(""))
                        .is_some_and(|c| c.effect == themis_core::capability::Effect::Mutate);
                if mutating && call["mode"] == "performed" {
                    assert!(
                        intents
                            .iter()
                            .any(|i| i["data"]["intent"]["capability"] == call["capability"]
                                && i["seq"].as_u64() < r["seq"].as_u64()),
                        "{kib} KiB: a mutation without its intent on record: {call}"
                    );
                }
            }
        }
    }
    assert!(
        failed_runs > 0,
        "no limit was small enough to fail the audit"
    );
}

/// Defect 6: a follow-up chain never runs a runbook twice and stops at the agent's depth;
/// every execution has its own id.
#[tokio::test]
async fn follow_ups_are_bounded_and_every_execution_has_its_own_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let world = "agent-kafka-gc-pause.yaml";
    // The diagnosis proposes itself again: a loop the old runtime would follow forever.
    let looping = patched_agent(
        dir.path(),
        "agents/kafka.yaml",
        &[(
            "follow_ups:\n  - after: check-broker-health\n",
            "follow_ups:\n  - after: check-broker-health\n    when: { outputs.gc-pause.finding: gc-pause-high }\n    runbook: check-broker-health\n    confidence: 0.95\n    reasoning: look again\n  - after: check-broker-health\n",
        )],
    );
    let host = HostSpec {
        agents: vec![looping],
        ..HostSpec::new(dir.path(), "agents/kafka.yaml", world)
    }
    .start()
    .await
    .expect("runtime");
    let incident = host.new_incident(world_alert(world)).await;
    assert_eq!(incident.status, IncidentStatus::Escalated);
    assert!(
        incident
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("already ran in this incident")),
        "{:?}",
        incident.reason
    );
    assert_eq!(incident.chain, ["check-broker-health"]);

    // Depth 0: the diagnosis' fix is not proposed as a follow-up at all.
    let dir = tempfile::tempdir().expect("tempdir");
    let shallow = patched_agent(
        dir.path(),
        "agents/kafka.yaml",
        &[(
            "  approval_ttl: 30m\n",
            "  approval_ttl: 30m\n  follow_up_depth: 0\n",
        )],
    );
    let host = HostSpec {
        agents: vec![shallow],
        ..HostSpec::new(dir.path(), "agents/kafka.yaml", world)
    }
    .start()
    .await
    .expect("runtime");
    let incident = host.new_incident(world_alert(world)).await;
    assert!(
        incident
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("policy.follow_up_depth: 0")),
        "{:?}",
        incident.reason
    );

    // Every execution, probes included, has its own id.
    let ids: Vec<String> = host
        .recorder
        .reports()
        .iter()
        .map(|r| r.execution_id.clone())
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    assert!(ids.iter().all(|id| id.starts_with("exe-")), "{ids:?}");
}

/// Defect 8: an answer is attributed to who really gave it. `$USER` changes nothing; `--as`
/// needs that approver's token.
#[test]
fn an_answer_says_who_gave_it_and_how_the_host_knew() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_str().expect("utf-8");
    let (apr, digest) = alert_with_proposal(state, "agent-postgres-lock-waits.yaml");

    let config = approvers_config(dir.path());
    let config = config.to_str().expect("utf-8");

    let unproven = themis_cmd()
        .args(["approve", &apr, "--digest", &digest, "--state-dir", state])
        .args(["--as", "alice", "--config", config])
        .env_remove("THEMIS_TOKEN")
        .output()
        .expect("runs");
    assert_eq!(unproven.status.code(), Some(2));
    assert!(text(&unproven.stderr).contains("alice's approver token"));
    let wrong = themis_cmd()
        .args(["approve", &apr, "--digest", &digest, "--state-dir", state])
        .args(["--as", "alice", "--config", config])
        .env("THEMIS_TOKEN", "bob-token")
        .output()
        .expect("runs");
    assert_eq!(wrong.status.code(), Some(2));
    assert!(text(&wrong.stderr).contains("not alice's"));

    let ok = themis_cmd()
        .args(["approve", &apr, "--digest", &digest, "--state-dir", state])
        .env("USER", "mallory")
        .output()
        .expect("runs");
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let records = records(&dir.path().join("audit.jsonl"));
    let approval = records
        .iter()
        .find(|r| r["kind"] == "approval")
        .expect("approval");
    let who = &approval["data"]["approver"];
    assert_eq!(who["via"], "os-user");
    assert_ne!(who["name"], "mallory", "$USER is not an identity");
    assert_eq!(
        who["uid"].as_u64(),
        Some(u64::from(nix_uid())),
        "the uid running the command"
    );
}

fn nix_uid() -> u32 {
    // The uid of this test process: the same user runs the child.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(u32::MAX)
}

/// A stop while triaging loses nothing: the next start triages the alert again (its probes only
/// read) instead of leaving it to a human, and says so on the record.
#[tokio::test(flavor = "multi_thread")]
async fn an_alert_cut_off_while_triaging_is_triaged_again_at_start() {
    triaged_again_at_start(|incident| AgentState::Triaging {
        incident: incident.into(),
    })
    .await;
}

/// The agent-state hint is written behind the moves, so a kill can leave it naming an incident
/// that has since finished: it does not turn a re-triage into an interruption.
#[tokio::test(flavor = "multi_thread")]
async fn a_hint_left_behind_by_a_kill_does_not_stop_the_triaging_alert_being_triaged_again() {
    triaged_again_at_start(|_| AgentState::ExecutingRunbook {
        incident: "inc-f1n15hed00000000".into(),
        runbook: "scale-consumer".into(),
        step: "scale".into(),
        phase: Phase::Action,
    })
    .await;
}

async fn triaged_again_at_start(hint: impl Fn(&str) -> AgentState) {
    let dir = tempfile::tempdir().expect("tempdir");
    let world = "agent-kafka-scale.yaml";
    {
        // What a stop between the incident's save and its probes leaves behind — here with an
        // audit that lost the incident's opening record behind it (the audit is new: its first
        // record is no alert of this incident).
        let store = themis_agent::store::JsonStore::open(&dir.path().join("state")).expect("store");
        let alert = world_alert(world);
        let mut incident = themis_agent::store::Incident::opened(
            "inc-cut0ff0000000001".into(),
            "kafka".into(),
            alert,
            std::time::SystemTime::now(),
        );
        incident.opened_seq = Some(1);
        store.save(&incident).await.expect("save");
        store
            .save_agent_state("kafka", &hint(&incident.id))
            .await
            .expect("state");
    }
    let host = HostSpec::new(dir.path(), "agents/kafka.yaml", world)
        .start()
        .await
        .expect("runtime");
    let incident = host
        .store
        .get("inc-cut0ff0000000001")
        .await
        .expect("incident");
    assert_eq!(
        incident.status,
        IncidentStatus::Unverified,
        "triaged again and the scale-out ran: {incident:?}"
    );
    assert_eq!(incident.chain, vec!["scale-consumer".to_string()]);
    let records = records(&host.audit_path);
    let recovered: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "recovered")
        .collect();
    assert_eq!(recovered.len(), 1, "{records:?}");
    assert_eq!(recovered[0]["data"]["action"], "triage again");
    assert!(
        recovered[0]["data"]["opening_record"]
            .as_str()
            .is_some_and(|o| o.starts_with("lost")),
        "the record says the chain lacks the incident's opening: {:?}",
        recovered[0]
    );
    assert!(records.iter().all(|r| r["kind"] != "interrupted"));
    assert_eq!(host.runtime.states()[0].state, AgentState::Idle);
}
