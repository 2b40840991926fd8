//! Misbehaving components are stopped and reported precisely, and the host keeps serving.

use crate::common::{backends, demo_trust, mock, runbook, sandbox};
use std::sync::Arc;
use std::time::Duration;
use themis_caps::CapError;
use themis_core::grant::{Approval, Grant};
use themis_core::identity::Identity;
use themis_core::policy::DestructiveList;
use themis_core::types::{Alert, Phase};
use themis_sandbox::journal::{CallJournal, MemoryJournal};
use themis_sandbox::loaded::{LoadedRunbook, RunbookLoadError};
use themis_sandbox::{
    CallMode, CallOutcome, CapabilityCall, Fault, LoadError, PhaseCall, PhaseContext, PhaseEnv,
    Verdict,
};

const EXECUTION: &str = "exec-sandbox-test";

fn ctx(step: &str) -> PhaseContext {
    PhaseContext {
        execution_id: EXECUTION.into(),
        runbook_id: "misbehaving".into(),
        runbook_version: "0.1.0".into(),
        step_id: step.into(),
        alert: Alert::named("Test", "f"),
        params: vec![],
        outputs: vec![],
        dry_run: false,
    }
}

struct Call<'a> {
    loaded: &'a LoadedRunbook,
    destructive: &'a [&'a str],
    approval: Option<&'a str>,
    mock: &'a str,
    journal: Arc<dyn CallJournal>,
    dry_run: bool,
}

impl Call<'_> {
    async fn phase(
        &self,
        step: &str,
        phase: Phase,
    ) -> (PhaseCall, Arc<themis_testkit::mock::ScenarioMock>) {
        let index = self
            .loaded
            .runbook
            .steps
            .iter()
            .position(|s| s.id == step)
            .expect("step exists");
        let def = &self.loaded.runbook.steps[index];
        let mut context = ctx(step);
        context.params = themis_core::manifest::bind_params(
            &self.loaded.runbook.parameters,
            &Default::default(),
        )
        .expect("defaults bind");
        let grant = Grant {
            runbook_id: "misbehaving".into(),
            step_id: step.into(),
            execution_id: EXECUTION.into(),
            phase,
            capabilities: def.capabilities.clone(),
            scopes: def.scopes(&context.params),
            destructive: Arc::new(DestructiveList::adding(
                self.destructive.iter().map(|s| s.to_string()),
            )),
            approval: self.approval.map(|e| Approval {
                approval_id: "apr-test".into(),
                execution_id: e.into(),
                approved_by: Identity::scenario("alice"),
                plan_digest: "sha256:test".into(),
            }),
        };
        let mock = mock(self.mock);
        let live = backends(&mock);
        let env = PhaseEnv {
            grant,
            backends: if self.dry_run { live.dry_run() } else { live },
            journal: self.journal.clone(),
            counts: Arc::default(),
        };
        let call = sandbox()
            .call(
                &self.loaded.components[index],
                phase,
                &context,
                env,
                def.timeout,
            )
            .await;
        (call, mock)
    }
}

fn misbehaving() -> LoadedRunbook {
    runbook("tests/runbooks/misbehaving")
}

fn plain(loaded: &LoadedRunbook) -> Call<'_> {
    Call {
        loaded,
        destructive: &[],
        approval: None,
        mock: "{}",
        journal: Arc::new(MemoryJournal::default()),
        dry_run: false,
    }
}

/// After any fault, the same sandbox still runs a well-behaved step.
async fn still_serving(loaded: &LoadedRunbook) {
    let (call, _) = plain(loaded).phase("trivial", Phase::Precondition).await;
    match call.result {
        Ok(Verdict::Check(c)) => assert!(c.passed, "trivial precondition passes: {c:?}"),
        other => panic!("the host stopped serving: {other:?}"),
    }
}

#[tokio::test]
async fn an_infinite_loop_hits_the_deadline() {
    let loaded = misbehaving();
    let (call, _) = plain(&loaded)
        .phase("infinite-loop", Phase::Precondition)
        .await;
    assert_eq!(call.result, Err(Fault::DeadlineExceeded { limit_ms: 200 }));
    assert!(
        call.duration < Duration::from_secs(5),
        "stopped promptly: {:?}",
        call.duration
    );
    still_serving(&loaded).await;
}

#[tokio::test]
async fn a_memory_bomb_hits_the_memory_limit() {
    let loaded = misbehaving();
    let (call, _) = plain(&loaded)
        .phase("memory-bomb", Phase::Precondition)
        .await;
    let limit = sandbox().config().memory_limit;
    match call.result {
        Err(Fault::MemoryLimit { desired, limit: l }) => {
            assert_eq!(l, limit);
            assert!(desired > limit);
        }
        other => panic!("expected the memory limit, got {other:?}"),
    }
    still_serving(&loaded).await;
}

#[tokio::test]
async fn no_instance_finds_what_an_earlier_one_left_in_its_memory() {
    // The pooling allocator reuses a slot for the same component and keeps its pages resident:
    // each reuse must still start from the component's own image, globals and heap alike.
    let loaded = misbehaving();
    for round in 0..4 {
        for phase in [Phase::Precondition, Phase::Postcondition] {
            let (call, _) = plain(&loaded).phase("leftovers", phase).await;
            match call.result {
                Ok(Verdict::Check(c)) => assert!(c.passed, "round {round}, {phase:?}: {c:?}"),
                other => panic!("round {round}, {phase:?}: {other:?}"),
            }
        }
        // A memory bomb in between: the slot it grew is reset too.
        plain(&loaded)
            .phase("memory-bomb", Phase::Precondition)
            .await;
    }
}

#[tokio::test]
async fn a_panic_is_a_trap_with_the_panic_message() {
    let loaded = misbehaving();
    let (call, _) = plain(&loaded).phase("panic", Phase::Action).await;
    match &call.result {
        Err(Fault::Trap { message }) => assert!(message.contains("unreachable"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(
        call.stderr.contains("deliberate test panic"),
        "stderr: {}",
        call.stderr
    );
    still_serving(&loaded).await;
}

#[tokio::test]
async fn a_call_outside_the_grant_is_denied_named_and_never_reaches_the_backend() {
    let loaded = misbehaving();
    let (call, mock) = plain(&loaded)
        .phase("outside-grant", Phase::Precondition)
        .await;
    let Ok(Verdict::Check(check)) = &call.result else {
        panic!("the step returns a verdict: {:?}", call.result);
    };
    assert!(!check.passed);
    let denied = check
        .evidence
        .iter()
        .find(|p| p.key == "denied")
        .map(|p| p.value.as_str())
        .unwrap_or("");
    assert!(
        denied.starts_with("kafka.list-topics is not granted to step `outside-grant`"),
        "{denied}"
    );
    assert_eq!(call.calls.len(), 1);
    assert_eq!(call.calls[0].capability, "kafka.list-topics");
    assert_eq!(call.calls[0].mode, CallMode::Refused);
    assert!(matches!(call.calls[0].outcome, CallOutcome::Denied { .. }));
    assert!(
        mock.calls().is_empty(),
        "the backend was asked: {:?}",
        mock.calls()
    );
    still_serving(&loaded).await;
}

const RESTART_MOCK: &str = "kafka.broker-restart: [ { ok: null } ]";

#[tokio::test]
async fn a_destructive_call_without_approval_is_refused() {
    let loaded = misbehaving();
    let call = Call {
        loaded: &loaded,
        destructive: &["kafka.broker-restart"],
        approval: None,
        mock: RESTART_MOCK,
        ..plain(&loaded)
    };
    let (result, mock) = call.phase("destructive", Phase::Action).await;
    let Ok(Verdict::Action(action)) = &result.result else {
        panic!("a verdict: {:?}", result.result);
    };
    assert!(!action.ok);
    let reason = match &result.calls[0].outcome {
        CallOutcome::Denied { reason } => reason.clone(),
        other => panic!("denied, got {other:?}"),
    };
    assert!(
        reason.contains("kafka.broker-restart is on the destructive list and needs a human approval bound to execution exec-sandbox-test"),
        "{reason}"
    );
    assert!(mock.calls().is_empty());
    still_serving(&loaded).await;
}

#[tokio::test]
async fn an_approval_for_another_execution_does_not_count() {
    let loaded = misbehaving();
    let call = Call {
        loaded: &loaded,
        destructive: &["kafka.broker-restart"],
        approval: Some("exec-some-other"),
        mock: RESTART_MOCK,
        ..plain(&loaded)
    };
    let (result, mock) = call.phase("destructive", Phase::Action).await;
    assert_eq!(result.calls[0].mode, CallMode::Refused);
    assert!(mock.calls().is_empty());
}

#[tokio::test]
async fn a_destructive_call_with_an_approval_for_this_execution_goes_through() {
    let loaded = misbehaving();
    let call = Call {
        loaded: &loaded,
        destructive: &["kafka.broker-restart"],
        approval: Some(EXECUTION),
        mock: RESTART_MOCK,
        ..plain(&loaded)
    };
    let (result, mock) = call.phase("destructive", Phase::Action).await;
    let Ok(Verdict::Action(action)) = &result.result else {
        panic!("a verdict: {:?}", result.result);
    };
    assert!(action.ok, "{action:?}");
    assert_eq!(result.calls[0].mode, CallMode::Performed);
    assert_eq!(mock.calls().len(), 1);
    assert_eq!(mock.calls()[0].capability, "kafka.broker-restart");
}

/// Intent before action: the intent of a mutating call is journalled before the call, and a
/// journal that cannot write stops the step before the backend is asked.
#[tokio::test]
async fn a_mutation_is_journalled_first_and_never_made_unjournalled() {
    use async_trait::async_trait;
    let loaded = misbehaving();
    let journal = Arc::new(MemoryJournal::default());
    let call = Call {
        loaded: &loaded,
        approval: Some(EXECUTION),
        mock: RESTART_MOCK,
        journal: journal.clone(),
        ..plain(&loaded)
    };
    let (result, mock) = call.phase("destructive", Phase::Action).await;
    assert_eq!(mock.calls().len(), 1);
    let intents = journal.intents();
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0].capability, "kafka.broker-restart");
    assert_eq!(intents[0].args, serde_json::json!({ "broker_id": 1 }));
    assert!(intents[0].destructive);
    assert_eq!(
        intents[0]
            .approval
            .as_ref()
            .map(|a| a.execution_id.as_str()),
        Some(EXECUTION)
    );
    assert!(result.result.is_ok());

    struct Refuses;
    #[async_trait]
    impl CallJournal for Refuses {
        async fn intent(&self, _: &themis_sandbox::journal::CallIntent) -> Result<(), String> {
            Err("disk full".into())
        }
        async fn outcome(
            &self,
            _: &themis_sandbox::journal::CallIntent,
            _: &themis_sandbox::CapabilityCall,
        ) -> Result<(), String> {
            Ok(())
        }
    }
    let call = Call {
        loaded: &loaded,
        approval: Some(EXECUTION),
        mock: RESTART_MOCK,
        journal: Arc::new(Refuses),
        ..plain(&loaded)
    };
    let (result, mock) = call.phase("destructive", Phase::Action).await;
    assert!(
        mock.calls().is_empty(),
        "an unjournalled mutation reached the backend"
    );
    match &result.result {
        Err(Fault::Journal { message }) => assert!(
            message.contains("could not record kafka.broker-restart (disk full)"),
            "{message}"
        ),
        other => panic!("the step must stop, got {other:?}"),
    }
    assert_eq!(result.calls[0].mode, CallMode::Refused);
    still_serving(&loaded).await;
}

/// "Would do" comes from the dry-run wrapper alone: a live backend's mutation is performed and
/// labelled so; behind the wrapper it is recorded, labelled `would-do`, and never reaches it.
#[tokio::test]
async fn only_the_dry_run_wrapper_labels_a_call_would_do() {
    let loaded = misbehaving();
    let live = Call {
        loaded: &loaded,
        approval: Some(EXECUTION),
        mock: RESTART_MOCK,
        ..plain(&loaded)
    };
    let (result, mock) = live.phase("destructive", Phase::Action).await;
    assert_eq!(result.calls[0].mode, CallMode::Performed);
    assert_eq!(mock.calls().len(), 1);
    let dry = Call {
        loaded: &loaded,
        approval: Some(EXECUTION),
        mock: RESTART_MOCK,
        dry_run: true,
        ..plain(&loaded)
    };
    let (result, mock) = dry.phase("destructive", Phase::Action).await;
    assert_eq!(result.calls[0].mode, CallMode::WouldDo);
    assert!(mock.calls().is_empty(), "a dry run reached the backend");
}

#[tokio::test]
async fn a_guest_sees_no_environment_arguments_files_or_stdout() {
    // Give the host process an environment variable the guest must not see.
    let loaded = misbehaving();
    let (call, _) = plain(&loaded).phase("ambient", Phase::Precondition).await;
    let Ok(Verdict::Check(check)) = &call.result else {
        panic!("a verdict: {:?}", call.result);
    };
    let ev = |k: &str| {
        check
            .evidence
            .iter()
            .find(|p| p.key == k)
            .map(|p| p.value.clone())
            .unwrap_or_default()
    };
    assert_eq!(ev("env_vars"), "0");
    assert_eq!(ev("args"), "0");
    assert!(
        ev("read_dir_root").starts_with("denied"),
        "{}",
        ev("read_dir_root")
    );
    assert!(
        ev("read_etc_passwd").starts_with("denied"),
        "{}",
        ev("read_etc_passwd")
    );
    assert!(call.stderr.is_empty());
}

#[test]
fn a_socket_import_is_refused_at_load_naming_the_import() {
    let dir = crate::common::repo().join("tests/runbooks/bad-import-sockets");
    let err =
        LoadedRunbook::load(sandbox(), &dir, &demo_trust("tests/runbooks/x")).expect_err("refused");
    match err {
        RunbookLoadError::Component {
            source: LoadError::ImportRefused { refused, .. },
            ..
        } => assert!(
            refused.import.starts_with("wasi:sockets/"),
            "{}",
            refused.import
        ),
        other => panic!("expected an import refusal, got {other}"),
    }
}

#[test]
fn a_kafka_step_importing_kubernetes_is_refused_at_load() {
    let dir = crate::common::repo().join("tests/runbooks/bad-import-k8s");
    let err =
        LoadedRunbook::load(sandbox(), &dir, &demo_trust("tests/runbooks/x")).expect_err("refused");
    let text = err.to_string();
    match err {
        RunbookLoadError::Component {
            source: LoadError::ImportRefused { refused, .. },
            ..
        } => assert_eq!(refused.import, "themis:runbook/k8s@0.1.0"),
        other => panic!("expected an import refusal, got {other}"),
    }
    assert!(text.contains("kafka-step world does not provide"), "{text}");
}

#[test]
fn a_component_that_is_not_wasm_is_refused() {
    let err = sandbox()
        .load(
            themis_core::capability::Domain::Kafka,
            "junk.wasm",
            b"not wasm at all",
        )
        .expect_err("refused");
    assert!(matches!(err, LoadError::Compile { .. }), "{err}");
}

#[tokio::test]
async fn a_slow_capability_times_out_as_unavailable() {
    use async_trait::async_trait;
    use themis_caps::{CapResult, MetricsCaps};

    // A backend that never answers: the host's call timeout must turn it into `unavailable`.
    struct Hangs;
    #[async_trait]
    impl MetricsCaps for Hangs {
        async fn query(&self, _: &str) -> CapResult<Vec<themis_caps::Sample>> {
            std::future::pending().await
        }
    }
    let config = themis_sandbox::SandboxConfig {
        call_timeout: Duration::from_millis(100),
        ..Default::default()
    };
    let sandbox = themis_sandbox::Sandbox::new(config).expect("sandbox");
    let loaded = LoadedRunbook::load(
        &sandbox,
        &crate::common::repo().join("runbooks/kafka/check-broker-health"),
        &demo_trust("runbooks/kafka/check-broker-health"),
    )
    .expect("loads");
    let m = mock("{}");
    let b = themis_caps::Backends::live(Arc::new(Hangs), m.clone(), m.clone(), m.clone());
    let grant = Grant {
        runbook_id: "check-broker-health".into(),
        step_id: "gc-pause".into(),
        execution_id: EXECUTION.into(),
        phase: Phase::Precondition,
        capabilities: ["metrics.query".to_string()].into(),
        scopes: Default::default(),
        destructive: Arc::new(DestructiveList::catalogue()),
        approval: None,
    };
    let mut c = ctx("gc-pause");
    c.params = themis_core::manifest::bind_params(&loaded.runbook.parameters, &Default::default())
        .expect("defaults");
    let call = sandbox
        .call(
            &loaded.components[1],
            Phase::Precondition,
            &c,
            PhaseEnv {
                grant,
                backends: b,
                journal: Arc::new(MemoryJournal::default()),
                counts: Arc::default(),
            },
            Duration::from_secs(5),
        )
        .await;
    let Ok(Verdict::Check(check)) = &call.result else {
        panic!("a verdict: {:?}", call.result);
    };
    assert!(!check.passed);
    match &call.calls[0].outcome {
        CallOutcome::Error { error } => {
            let e: CapError = serde_json::from_value(error.clone()).expect("a cap error");
            assert!(
                matches!(e, CapError::Unavailable(ref m) if m.contains("did not answer within 100 ms")),
                "{e:?}"
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_phase_backstop_never_cuts_off_a_change_before_its_result_is_recorded() {
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use themis_caps::{Backend, CapResult, ConnectionSlots, LockWait, PostgresCaps, Replica};
    use themis_sandbox::journal::CallIntent;

    // The phase may run 1 s and a call 1 s. Two cancels take 420 ms each; the third, started
    // just inside the deadline, hangs until the call timeout (1.84 s), and recording its
    // outcome takes 300 ms (a slow disk). A backstop of deadline + call timeout (2 s) would
    // drop the phase mid-write: a change made, its result on no record.
    struct Cancels(AtomicUsize);
    #[async_trait]
    impl PostgresCaps for Cancels {
        async fn activity(&self, _: f64) -> CapResult<Vec<Backend>> {
            Ok(Vec::new())
        }
        async fn blockers(&self) -> CapResult<Vec<LockWait>> {
            Ok(Vec::new())
        }
        async fn replication_lag(&self) -> CapResult<Vec<Replica>> {
            Ok(Vec::new())
        }
        async fn connection_usage(&self, _: f64) -> CapResult<ConnectionSlots> {
            Err(CapError::Unavailable("not in this test".into()))
        }
        async fn cancel_backend(&self, _: i32) -> CapResult<bool> {
            if self.0.fetch_add(1, Ordering::SeqCst) >= 2 {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(420)).await;
            Ok(true)
        }
        async fn terminate_backend(&self, _: i32) -> CapResult<bool> {
            Err(CapError::Unavailable("not in this test".into()))
        }
    }
    #[derive(Default)]
    struct SlowOutcomes {
        intents: AtomicUsize,
        outcomes: AtomicUsize,
    }
    #[async_trait]
    impl CallJournal for SlowOutcomes {
        async fn intent(&self, _: &CallIntent) -> Result<(), String> {
            self.intents.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn outcome(&self, _: &CallIntent, call: &CapabilityCall) -> Result<(), String> {
            if matches!(call.outcome, CallOutcome::Error { .. }) {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            self.outcomes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }
    let config = themis_sandbox::SandboxConfig {
        call_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let sandbox = themis_sandbox::Sandbox::new(config).expect("sandbox");
    let loaded = LoadedRunbook::load(
        &sandbox,
        &crate::common::repo().join("runbooks/postgres/cancel-long-queries"),
        &demo_trust("runbooks/postgres/cancel-long-queries"),
    )
    .expect("loads");
    let pg = Arc::new(Cancels(AtomicUsize::new(0)));
    let m = mock("{}");
    let b = themis_caps::Backends::live(m.clone(), m.clone(), m.clone(), pg.clone());
    let def = &loaded.runbook.steps[0];
    let mut c = ctx("cancel");
    c.params = themis_core::manifest::bind_params(&loaded.runbook.parameters, &Default::default())
        .expect("defaults");
    c.outputs = vec![themis_core::types::StepOutput {
        step: "cancel".into(),
        key: "pids".into(),
        value: "101,102,103,104".into(),
    }];
    let grant = Grant {
        runbook_id: "cancel-long-queries".into(),
        step_id: "cancel".into(),
        execution_id: EXECUTION.into(),
        phase: Phase::Action,
        capabilities: def.capabilities.clone(),
        scopes: def.scopes(&c.params),
        destructive: Arc::new(DestructiveList::adding(Vec::<String>::new())),
        approval: None,
    };
    let journal = Arc::new(SlowOutcomes::default());
    let call = sandbox
        .call(
            &loaded.components[0],
            Phase::Action,
            &c,
            PhaseEnv {
                grant,
                backends: b,
                journal: journal.clone(),
                counts: Arc::default(),
            },
            Duration::from_secs(1),
        )
        .await;
    // Back in the guest past its deadline, the guest's own deadline traps it; the backstop
    // (which cuts off whatever is in flight) never fired.
    assert_eq!(
        call.result,
        Err(Fault::DeadlineExceeded { limit_ms: 1000 }),
        "{:?}",
        call.calls
    );
    let started = pg.0.load(Ordering::SeqCst);
    assert_eq!(started, 3, "{:?}", call.calls);
    assert_eq!(journal.intents.load(Ordering::SeqCst), started);
    assert_eq!(
        journal.outcomes.load(Ordering::SeqCst),
        started,
        "every change made has its outcome journalled"
    );
    assert_eq!(call.calls.len(), started, "and on the phase's record");
    match &call.calls[2].outcome {
        CallOutcome::Error { error } => {
            assert!(error.to_string().contains("did not answer"), "{error}")
        }
        other => panic!("{other:?}"),
    }
}

/// A run's budget (the manifest's `timeout`) bounds the whole walk: a step that would wait its
/// own ten minutes is cut at what is left, no step starts after it, and what acted is rolled
/// back, the budget named as the reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_past_its_budget_is_cut_and_rolled_back() {
    use themis_sandbox::executor::{self, ExecutionRequest, Outcome};
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("components")).expect("mkdir");
    for name in ["trivial", "infinite-loop"] {
        std::fs::copy(
            crate::common::repo()
                .join(format!("tests/runbooks/misbehaving/components/{name}.wasm")),
            dir.path().join(format!("components/{name}.wasm")),
        )
        .expect("copy a test component (run scripts/build-runbooks first)");
    }
    std::fs::write(
        dir.path().join("manifest.yaml"),
        "id: budget\nversion: 0.1.0\ndomain: kafka\ndescription: a run whose budget ends in its second step\ntimeout: 500ms\nsteps:\n  - { id: first, component: components/trivial.wasm, on: { next: stuck } }\n  - { id: stuck, component: components/infinite-loop.wasm, timeout: 10m, on: { next: never } }\n  - { id: never, component: components/trivial.wasm }\n",
    )
    .expect("manifest");
    let loaded = LoadedRunbook::load_unverified(sandbox(), dir.path()).expect("loads");
    let world = mock("{}");
    let request = ExecutionRequest {
        execution_id: "exe-budget".into(),
        alert: Alert::named("KafkaConsumerLag", "f"),
        params: Vec::new(),
        backends: backends(&world),
        destructive: Arc::new(DestructiveList::default()),
        approval: None,
        journal: Arc::new(MemoryJournal::default()),
        clock: themis_core::clock::Clock::system(),
    };
    let started = std::time::Instant::now();
    let report = executor::execute(sandbox(), &loaded, &request).await;
    let took = started.elapsed();
    match &report.outcome {
        Outcome::RolledBack {
            step,
            phase,
            reason,
        } => {
            assert_eq!(step, "stuck");
            assert_eq!(*phase, Phase::Precondition);
            assert!(
                reason.contains("time budget of 500ms is spent"),
                "the budget is the reason: {reason}"
            );
        }
        other => panic!("expected a rollback for the spent budget, got {other:?}"),
    }
    let walked: Vec<(&str, Phase)> = report
        .phases
        .iter()
        .map(|p| (p.step.as_str(), p.phase))
        .collect();
    assert_eq!(
        walked,
        [
            ("first", Phase::Precondition),
            ("first", Phase::Action),
            ("first", Phase::Postcondition),
            ("stuck", Phase::Precondition),
            ("first", Phase::Rollback),
        ],
        "the stuck step was cut, nothing started after it, and the step that acted was undone"
    );
    assert!(
        took < Duration::from_secs(60),
        "cut at the budget, not the step's ten minutes: {took:?}"
    );
}
