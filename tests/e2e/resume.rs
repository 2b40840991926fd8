//! Resuming a run the host's stop cut off, in the real sandbox: an action whose result is not on
//! the record is judged by its postcondition first — holding, the walk goes on without acting
//! again; not holding, a non-idempotent step is rolled back, never repeated. And where a run is
//! resumed from is read off its audit records alone.

use crate::common::{backends, mock, runbook, sandbox};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use themis_agent::audit::Record;
use themis_agent::runtime::resume_point;
use themis_agent::store::{Answer, ClaimError, Incident, IncidentStatus, StoreError};
use themis_core::fsm::AgentState;
use themis_core::guard::GuardBook;
use themis_core::policy::DestructiveList;
use themis_core::types::{Alert, Phase, StepOutput};
use themis_sandbox::executor::{self, ExecutionRequest, Outcome, Resume, ResumeFrom, Unobserved};
use themis_sandbox::journal::MemoryJournal;

const RESTART: &str = "runbooks/kafka/restart-consumer-group";

/// The group's consumers as `describe-consumers` shows them: `revision` "7" before a restart.
fn world(revision: &str) -> String {
    format!(
        r#"
kafka.describe-consumers:
  - ok: {{ group_id: orders-consumer, replicas_desired: 3, replicas_ready: 3, revision: "{revision}" }}
kafka.consumer-lag:
  - ok: [ {{ topic: orders, partition: 0, committed_offset: 49900, end_offset: 50000, lag: 100 }} ]
kafka.describe-consumer-group:
  - ok: {{ group_id: orders-consumer, state: Stable, protocol: range, members: [] }}
kafka.restart-consumers:
  - ok: {{ group_id: orders-consumer, replicas_desired: 3, replicas_ready: 0, revision: "8" }}
"#
    )
}

fn request(mock: &Arc<themis_testkit::mock::ScenarioMock>) -> ExecutionRequest {
    let loaded = runbook(RESTART);
    let params = themis_core::manifest::bind_params(
        &loaded.runbook.parameters,
        &BTreeMap::from([
            ("group".to_string(), json!("orders-consumer")),
            ("topic".to_string(), json!("orders")),
        ]),
    )
    .expect("params");
    ExecutionRequest {
        execution_id: "exe-resumed".into(),
        alert: Alert::named("KafkaConsumerLag", "f"),
        params,
        backends: backends(mock),
        destructive: Arc::new(DestructiveList::default()),
        approval: None,
        journal: Arc::new(MemoryJournal::default()),
        // The postcondition's two-minute wait passes on a hand-moved clock, not the test's.
        clock: themis_core::clock::Clock::manual(std::time::UNIX_EPOCH),
    }
}

/// The run was cut off in the restart's action: its precondition had recorded revision 7.
fn cut_in_the_action() -> ResumeFrom {
    ResumeFrom {
        at: Resume::ActionUnknown {
            step: 0,
            branch: "next".into(),
            idempotent: false,
        },
        acted: vec![],
        outputs: vec![
            StepOutput {
                step: "restart-consumers".into(),
                key: "revision_before".into(),
                value: "7".into(),
            },
            StepOutput {
                step: "restart-consumers".into(),
                key: "lag_before".into(),
                value: "50000".into(),
            },
        ],
        // The cut-off restart was journalled before it was called.
        calls: BTreeMap::from([("kafka.restart-consumers".to_string(), 1)]),
    }
}

/// The run cut off in the restart's action, resumed in a world whose consumers show
/// `revision`: its report, and whether the restart was called again.
async fn resumed_with_revision(revision: &str) -> (executor::ExecutionReport, bool) {
    let loaded = runbook(RESTART);
    let world = mock(&world(revision));
    let report = executor::execute_resumed(
        sandbox(),
        &loaded,
        &request(&world),
        &mut Unobserved,
        cut_in_the_action(),
    )
    .await;
    let restarted = world
        .calls()
        .iter()
        .any(|c| c.capability == "kafka.restart-consumers");
    (report, restarted)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_action_that_had_acted_is_not_run_again() {
    let (report, restarted) = resumed_with_revision("8").await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    assert!(!restarted, "the restart ran again");
    // It went on from the postcondition: the cut-off step's checks did not run again.
    assert_eq!(report.phases[0].phase, Phase::Postcondition);
    assert_eq!(report.phases[1].step, "verify-draining");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_action_that_had_not_acted_is_rolled_back_when_not_idempotent() {
    let (report, restarted) = resumed_with_revision("7").await;
    match &report.outcome {
        Outcome::RolledBack { step, reason, .. } => {
            assert_eq!(step, "restart-consumers");
            assert!(reason.contains("not idempotent"), "{reason}");
        }
        other => panic!("expected a rollback, got {other:?}"),
    }
    assert!(!restarted, "a non-idempotent action never runs twice");
    assert!(report.phases.iter().any(|p| p.phase == Phase::Rollback));
}

/// `loaded`, cut off in the restart's action, resumed `at` in a world whose consumers still
/// show revision 7: its report, and whether the restart was called again.
async fn resumed_at(
    loaded: &themis_sandbox::loaded::LoadedRunbook,
    at: Resume,
) -> (executor::ExecutionReport, bool) {
    let world = mock(&world("7"));
    let mut from = cut_in_the_action();
    from.at = at;
    let report =
        executor::execute_resumed(sandbox(), loaded, &request(&world), &mut Unobserved, from).await;
    let restarted = world
        .calls()
        .iter()
        .any(|c| c.capability == "kafka.restart-consumers");
    (report, restarted)
}

/// The run's budget holds on a resumed run too: an idempotent action whose postcondition was
/// read until the budget ended the wait is not run again after it — what acted is rolled back,
/// the budget named.
#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_run_past_its_budget_does_not_act_again() {
    let mut loaded = runbook(RESTART);
    // Shorter than the step's two-minute postcondition wait, which the hand-moved clock runs.
    loaded.runbook.timeout = std::time::Duration::from_secs(20);
    let at = Resume::ActionUnknown {
        step: 0,
        branch: "next".into(),
        idempotent: true,
    };
    let (report, restarted) = resumed_at(&loaded, at).await;
    assert!(
        !restarted,
        "the action ran again past the budget: {report:?}"
    );
    match &report.outcome {
        Outcome::RolledBack { step, reason, .. } => {
            assert_eq!(step, "restart-consumers");
            assert!(reason.contains("time budget of 20s is spent"), "{reason}");
        }
        other => panic!("expected a rollback for the spent budget, got {other:?}"),
    }
}

/// `max_calls` spans the whole execution, resumes included: a run resumed at the restart's
/// precondition after its one granted restart was journalled may not restart again.
#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_run_counts_the_calls_its_cut_off_part_made() {
    let (report, restarted) = resumed_at(&runbook(RESTART), Resume::Precondition(0)).await;
    assert!(
        !restarted,
        "the cap of one restart was spent before the stop: {report:?}"
    );
    assert!(
        !matches!(report.outcome, Outcome::Succeeded),
        "{:?}",
        report.outcome
    );
}

fn record(seq: u64, kind: &str, data: Value) -> Record {
    Record {
        seq,
        ts: String::new(),
        agent: "kafka".into(),
        incident: Some("inc-1".into()),
        kind: kind.into(),
        data,
        mode: None,
        prev: String::new(),
        hash: String::new(),
    }
}

fn phase(seq: u64, step: &str, phase: &str, status: &str, extra: Value) -> Record {
    let mut rec = json!({ "step": step, "phase": phase, "status": status });
    if let (Some(r), Some(e)) = (rec.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    record(
        seq,
        "phase",
        json!({ "runbook": "restart-consumer-group", "record": rec }),
    )
}

#[test]
fn where_a_run_resumes_is_read_off_its_record() {
    let loaded = runbook(RESTART);
    let start = record(
        1,
        "execution-start",
        json!({ "execution_id": "exe-1", "runbook_digest": loaded.runbook.digest, "approval": null }),
    );
    let pre = phase(
        2,
        "restart-consumers",
        "precondition",
        "passed",
        json!({ "outputs": [["revision_before", "7"]] }),
    );
    let intent = record(
        3,
        "capability-intent",
        json!({ "intent": { "execution_id": "exe-1", "step": "restart-consumers", "phase": "action", "capability": "kafka.restart-consumers" } }),
    );
    let action = phase(
        4,
        "restart-consumers",
        "action",
        "passed",
        json!({ "branch": "next" }),
    );
    let post = phase(5, "restart-consumers", "postcondition", "passed", json!({}));
    let at = |records: &[Record]| resume_point(records, &loaded).map(|(_, from)| from.at);

    assert_eq!(
        at(std::slice::from_ref(&start)),
        Ok(Resume::Precondition(0))
    );
    assert_eq!(
        at(&[start.clone(), pre.clone()]),
        Ok(Resume::Precondition(0))
    );
    let (started, from) =
        resume_point(&[start.clone(), pre.clone(), intent.clone()], &loaded).expect("resumable");
    assert_eq!(started.execution_id, "exe-1");
    assert_eq!(
        from.at,
        Resume::ActionUnknown {
            step: 0,
            branch: "next".into(),
            idempotent: false
        }
    );
    assert_eq!(from.outputs[0].value, "7");
    assert_eq!(
        at(&[start.clone(), pre.clone(), intent.clone(), action.clone()]),
        Ok(Resume::Postcondition {
            step: 0,
            branch: "next".into()
        })
    );
    assert_eq!(
        at(&[
            start.clone(),
            pre.clone(),
            intent.clone(),
            action.clone(),
            post.clone()
        ]),
        Ok(Resume::Precondition(1))
    );
    // Resumed once from the cut-off action's postcondition (it held): the step has no action
    // phase on the record, only its intent, and still counts as one that acted — a second
    // stop's rollback must undo it.
    let (_, from) = resume_point(
        &[start.clone(), pre.clone(), intent.clone(), post.clone()],
        &loaded,
    )
    .expect("resumable");
    assert_eq!(from.at, Resume::Precondition(1));
    assert_eq!(from.acted, vec![0]);
    assert_eq!(from.calls.get("kafka.restart-consumers"), Some(&1));
    // The mode the run began in comes back with it: a start record from before the flag is live.
    assert!(!started.dry_run);
    let mut shadow = start.clone();
    shadow.data["dry_run"] = json!(true);
    let (shadow_started, _) = resume_point(&[shadow, pre.clone()], &loaded).expect("resumable");
    assert!(shadow_started.dry_run);
    // Review defect: a run declared interrupted, then adjusted into the same plan by a human
    // whose own run a stop cut off before it started, was resumed from the old run's cut-off
    // point. A run followed by `interrupted` or `adjustment` is over.
    for (kind, seq) in [("interrupted", 4), ("adjustment", 5)] {
        let over = resume_point(
            &[
                start.clone(),
                pre.clone(),
                intent.clone(),
                record(seq, kind, json!({})),
            ],
            &loaded,
        )
        .map(|_| ())
        .expect_err("an interrupted or answered run is not resumed");
        assert!(over.contains(&format!("followed by `{kind}`")), "{over}");
    }
    // A postcondition that did not hold yet (its wait cut short, or its rollback not begun):
    // read again. Once a rollback acted, no.
    let failed = phase(5, "restart-consumers", "postcondition", "failed", json!({}));
    assert_eq!(
        at(&[start.clone(), pre.clone(), action.clone(), failed.clone()]),
        Ok(Resume::Postcondition {
            step: 0,
            branch: "next".into()
        })
    );
    let rolling = record(
        6,
        "capability-intent",
        json!({ "intent": { "execution_id": "exe-1", "step": "restart-consumers", "phase": "rollback", "capability": "kafka.restart-consumers" } }),
    );
    assert!(at(&[start.clone(), pre.clone(), action.clone(), failed, rolling]).is_err());
    // Not resumed: another phase that failed (a rollback may be under way), an ended run,
    // another bundle.
    // A phase record the audit had to replace by its digest hides where the run stood: not
    // resumed (else the cut-off action's intent would be missed and it would run again).
    let summarised = record(
        2,
        "phase",
        json!({ "summarised": true, "bytes": 300_000, "sha256": "00" }),
    );
    assert!(at(&[start.clone(), summarised, intent.clone()]).is_err());
    let refused = phase(3, "restart-consumers", "precondition", "failed", json!({}));
    assert!(at(&[start.clone(), refused]).is_err());
    let result = record(6, "result", json!({}));
    assert!(at(&[start.clone(), pre.clone(), action, post, result]).is_err());
    let other = record(
        1,
        "execution-start",
        json!({ "execution_id": "exe-1", "runbook_digest": "sha256:other", "approval": null }),
    );
    assert!(at(&[other, pre]).is_err());
}

/// A store that refuses the save that starts an approved run: the approval is claimed and on
/// the record, the run never started — what a kill between the two leaves behind.
struct RefusesRunStart {
    inner: Arc<dyn themis_agent::store::IncidentStore>,
    /// How many such saves are refused before the store works again.
    refusals: std::sync::atomic::AtomicUsize,
    /// How many fingerprint lookups fail (the database away) before they work again.
    lookups_failing: std::sync::atomic::AtomicUsize,
    /// How many fingerprint lookups find a row changed outside Themis: a failure trying
    /// again would repeat.
    lookups_tampered: std::sync::atomic::AtomicUsize,
}

/// Take one from `n` if it is not zero: whether it was.
fn take_one(n: &std::sync::atomic::AtomicUsize) -> bool {
    n.fetch_update(
        std::sync::atomic::Ordering::SeqCst,
        std::sync::atomic::Ordering::SeqCst,
        |n| n.checked_sub(1),
    )
    .is_ok()
}

#[async_trait::async_trait]
impl themis_agent::store::IncidentStore for RefusesRunStart {
    async fn save(&self, incident: &Incident) -> Result<(), StoreError> {
        if incident.status == IncidentStatus::Executing
            && incident.executed.is_some()
            && take_one(&self.refusals)
        {
            return Err(StoreError::Io {
                path: "state".into(),
                source: std::io::Error::other("the host stopped here"),
            });
        }
        self.inner.save(incident).await
    }
    async fn get(&self, id: &str) -> Result<Incident, StoreError> {
        self.inner.get(id).await
    }
    async fn scan(&self) -> Result<(Vec<Incident>, Vec<StoreError>), StoreError> {
        self.inner.scan().await
    }
    async fn open_for(&self, agent: &str, fp: &str) -> Result<Option<Incident>, StoreError> {
        if take_one(&self.lookups_failing) {
            return Err(StoreError::Io {
                path: "state".into(),
                source: std::io::Error::other("the database is away"),
            });
        }
        if take_one(&self.lookups_tampered) {
            return Err(StoreError::Tampered {
                path: "state/incidents".into(),
            });
        }
        self.inner.open_for(agent, fp).await
    }
    async fn latest_for(&self, agent: &str, fp: &str) -> Result<Option<Incident>, StoreError> {
        self.inner.latest_for(agent, fp).await
    }
    async fn by_approval(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        self.inner.by_approval(id).await
    }
    async fn claim(&self, answer: Answer, next: IncidentStatus) -> Result<Incident, ClaimError> {
        self.inner.claim(answer, next).await
    }
    async fn prune_closed(
        &self,
        agent: &str,
        before: std::time::SystemTime,
        limit: usize,
        announce: themis_agent::store::Announce<'_>,
    ) -> Result<Vec<String>, StoreError> {
        self.inner
            .prune_closed(agent, before, limit, announce)
            .await
    }
    async fn save_agent_state(&self, agent: &str, state: &AgentState) -> Result<(), StoreError> {
        self.inner.save_agent_state(agent, state).await
    }
    async fn agent_state(&self, agent: &str) -> Result<AgentState, StoreError> {
        self.inner.agent_state(agent).await
    }
    async fn save_guard(&self, book: &GuardBook) -> Result<(), StoreError> {
        self.inner.save_guard(book).await
    }
    async fn guard(&self) -> Result<GuardBook, StoreError> {
        self.inner.guard().await
    }
}

async fn postgres_host(
    dir: &std::path::Path,
    store: Arc<dyn themis_agent::store::IncidentStore>,
    mock: Arc<themis_testkit::mock::ScenarioMock>,
) -> themis_agent::Runtime {
    postgres_host_telling(dir, store, mock, Default::default()).await
}

async fn postgres_host_telling(
    dir: &std::path::Path,
    store: Arc<dyn themis_agent::store::IncidentStore>,
    mock: Arc<themis_testkit::mock::ScenarioMock>,
    channels: themis_agent::escalation::Channels,
) -> themis_agent::Runtime {
    let audit = themis_agent::audit::AuditLog::open(
        &dir.join("audit.jsonl"),
        themis_agent::audit::Redactor::default(),
    )
    .expect("audit");
    themis_agent::Runtime::start(
        themis_agent::RuntimeParts {
            sandbox: sandbox().clone(),
            agent_files: vec![crate::common::repo().join("agents/postgres.yaml")],
            audit: Arc::new(audit),
            store,
            channels,
            observer: Arc::new(themis_testkit::scenario_agent::Recorder::default()),
            provider: Arc::new(themis_testkit::provider::ScenarioProvider::new(mock, false)),
        },
        Default::default(),
    )
    .await
    .expect("runtime")
}

/// The approved plan (terminate-blocker) started once, bound to the approval's execution
/// `bound`, and finished.
fn ran_once_as_approved(records: &[Value], bound: &Value) {
    let starts: Vec<_> = records
        .iter()
        .filter(|r| {
            r["kind"] == "execution-start" && r["data"]["runbook_id"] == "terminate-blocker"
        })
        .collect();
    assert_eq!(starts.len(), 1, "the approved plan ran once");
    assert_eq!(&starts[0]["data"]["execution_id"], bound);
    assert!(
        records.iter().any(|r| r["kind"] == "result"
            && &r["data"]["execution_id"] == bound
            && r["data"]["outcome"]["status"] == "succeeded"),
        "the approved run finished"
    );
}

/// Review defect: a stop between an approval's claim and its run's start left the incident
/// `interrupted`, naming the runbook that ran before, and the approval used up although nothing
/// of the plan had acted. The next start now runs the approved plan, bound to the approval's
/// execution, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_run_cut_off_before_it_started_is_started_on_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let world = crate::common::world_file("agent-postgres-lock-waits.yaml");
    let scenario = themis_testkit::scenario::load(&world).expect("scenario");
    let mock = Arc::new(themis_testkit::mock::ScenarioMock::new(scenario.mocks).expect("mocks"));
    let state = dir.path().join("state");
    let store: Arc<dyn themis_agent::store::IncidentStore> =
        Arc::new(themis_agent::store::JsonStore::open(&state).expect("store"));
    let first = postgres_host(
        dir.path(),
        Arc::new(RefusesRunStart {
            inner: store.clone(),
            refusals: usize::MAX.into(),
            lookups_failing: 0.into(),
            lookups_tampered: 0.into(),
        }),
        mock.clone(),
    )
    .await;
    let incident = match first
        .handle_alert(scenario.alert.to_alert())
        .await
        .expect("handled")
    {
        themis_agent::AlertOutcome::Handled(i) => i,
        other => panic!("a new incident: {other:?}"),
    };
    let proposal = incident
        .proposal
        .clone()
        .expect("a destructive plan waits for a human");
    let cut = first
        .approve(
            &proposal.id,
            themis_core::identity::Identity::scenario("oncall"),
            Some(proposal.plan_digest.clone()),
        )
        .await;
    assert!(cut.is_err(), "the run's start was cut off: {cut:?}");
    first.stop().await;
    drop(store);

    let store: Arc<dyn themis_agent::store::IncidentStore> =
        Arc::new(themis_agent::store::JsonStore::open(&state).expect("store"));
    let second = postgres_host(dir.path(), store.clone(), mock.clone()).await;
    let now = store.get(&incident.id).await.expect("incident");
    assert_ne!(now.status, IncidentStatus::Interrupted, "{now:#?}");
    let records = crate::common::records(&dir.path().join("audit.jsonl"));
    let bound = records
        .iter()
        .find(|r| r["kind"] == "approval")
        .map(|r| r["data"]["bound_to_execution"].clone())
        .expect("the approval is on the record");
    assert!(
        records.iter().any(|r| r["kind"] == "recovered"
            && r["data"]["action"] == "start the approved run"
            && r["data"]["execution_id"] == bound),
        "recovery says it starts the approved run"
    );
    ran_once_as_approved(&records, &bound);
    let terminations = records
        .iter()
        .filter(|r| {
            r["kind"] == "capability-intent"
                && r["data"]["intent"]["capability"] == "postgres.terminate-backend"
        })
        .count();
    assert_eq!(terminations, 1, "one termination for one approval");
    second.stop().await;
}

/// The incident whose plan waits for a human, once the accepted alert has been taken up (at
/// most 30 s).
async fn await_proposal(store: &Arc<dyn themis_agent::store::IncidentStore>) -> Incident {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (all, _) = store.scan().await.expect("scan");
        if let Some(i) = all
            .into_iter()
            .find(|i| i.status == IncidentStatus::PendingApproval)
        {
            return i;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the accepted alert was never taken up into a proposal"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A host over the lock-wait world whose store refuses `refusals` run starts and fails
/// `lookups_failing` fingerprint lookups, then works: a database that comes and goes.
async fn failing_host(
    refusals: usize,
    lookups_failing: usize,
) -> (
    tempfile::TempDir,
    themis_testkit::scenario::Scenario,
    Arc<dyn themis_agent::store::IncidentStore>,
    themis_agent::Runtime,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let world = crate::common::world_file("agent-postgres-lock-waits.yaml");
    let scenario = themis_testkit::scenario::load(&world).expect("scenario");
    let mock =
        Arc::new(themis_testkit::mock::ScenarioMock::new(scenario.mocks.clone()).expect("mocks"));
    let store: Arc<dyn themis_agent::store::IncidentStore> =
        Arc::new(themis_agent::store::JsonStore::open(&dir.path().join("state")).expect("store"));
    let host = postgres_host(
        dir.path(),
        Arc::new(RefusesRunStart {
            inner: store.clone(),
            refusals: refusals.into(),
            lookups_failing: lookups_failing.into(),
            lookups_tampered: 0.into(),
        }),
        mock,
    )
    .await;
    (dir, scenario, store, host)
}

/// Review defect: a store error between an approval's claim and its run's start left the
/// incident `executing` with nothing running it until the host restarted — its alert's later
/// firings absorbed by it, nobody told. The worker now recovers as at start before its next
/// command: the approved run is started, bound to the approval, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_run_a_store_error_cut_off_is_started_before_the_next_command() {
    let (dir, scenario, store, host) = failing_host(1, 0).await;
    let incident = match host
        .handle_alert(scenario.alert.to_alert())
        .await
        .expect("handled")
    {
        themis_agent::AlertOutcome::Handled(i) => i,
        other => panic!("a new incident: {other:?}"),
    };
    let proposal = incident.proposal.clone().expect("a plan waits for a human");
    let cut = host
        .approve(
            &proposal.id,
            themis_core::identity::Identity::scenario("oncall"),
            Some(proposal.plan_digest.clone()),
        )
        .await;
    // Claimed and on the record: the approver is not told "nothing was done".
    let told = cut.expect_err("the run's start failed").to_string();
    assert!(
        told.contains("was approved by oncall") && told.contains("takes incident"),
        "{told}"
    );
    // The next command — here the service's tick — finds the approved run and starts it.
    host.verify_due().await.expect("tick");
    let now = store.get(&incident.id).await.expect("incident");
    assert!(
        !matches!(
            now.status,
            IncidentStatus::Executing | IncidentStatus::Interrupted
        ),
        "{now:#?}"
    );
    let records = crate::common::records(&dir.path().join("audit.jsonl"));
    let bound = records
        .iter()
        .find(|r| r["kind"] == "approval")
        .map(|r| r["data"]["bound_to_execution"].clone())
        .expect("the approval is on the record");
    ran_once_as_approved(&records, &bound);
    host.stop().await;
}

/// Review defect: an accepted alert (answered 200) whose taking up hit a store error was
/// recorded `alert-take-failed` — which counts as taken — and never looked at again: lost,
/// nobody told. It is now held and taken up again once the store answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_alert_a_store_error_cut_off_is_taken_up_again() {
    let (dir, scenario, store, host) = failing_host(0, 2).await;
    host.submit(
        scenario.alert.to_alert(),
        themis_agent::AlertStatus::Firing,
        json!({ "via": "test" }),
    )
    .expect("accepted");
    let incident = await_proposal(&store).await;
    let records = crate::common::records(&dir.path().join("audit.jsonl"));
    assert!(
        !records.iter().any(|r| r["kind"] == "alert-take-failed"),
        "not given up on"
    );
    let opened: Vec<_> = records.iter().filter(|r| r["kind"] == "alert").collect();
    assert_eq!(opened.len(), 1, "one incident for one alert");
    assert_eq!(opened[0]["incident"], incident.id.as_str());
    host.stop().await;
}

/// An accepted alert its agent gave up on (here a row changed outside Themis: trying again
/// would repeat the failure) was only recorded: the intake had answered 200, so its sender
/// paged nobody, and neither did Themis. A human is now told, over Slack's HTTP, after the
/// record, and the delivery is on the record too. The same alert given up on again within the
/// hour is recorded, not told again (a store failing every alert must not flood the channel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_alert_its_agent_gives_up_on_is_told_to_a_human() {
    let (base, received) = crate::common::webhook("/services/T000/B000/HOOK").await;

    let dir = tempfile::tempdir().expect("tempdir");
    let world = crate::common::world_file("agent-postgres-lock-waits.yaml");
    let scenario = themis_testkit::scenario::load(&world).expect("scenario");
    let mock = Arc::new(themis_testkit::mock::ScenarioMock::new(scenario.mocks).expect("mocks"));
    let store: Arc<dyn themis_agent::store::IncidentStore> =
        Arc::new(themis_agent::store::JsonStore::open(&dir.path().join("state")).expect("store"));
    let host = postgres_host_telling(
        dir.path(),
        Arc::new(RefusesRunStart {
            inner: store.clone(),
            refusals: 0.into(),
            lookups_failing: 0.into(),
            lookups_tampered: 2.into(),
        }),
        mock,
        themis_agent::escalation::Channels {
            slack_webhook: Some(format!("{base}/services/T000/B000/HOOK")),
        },
    )
    .await;
    let alert = scenario.alert.to_alert();
    host.submit(
        alert.clone(),
        themis_agent::AlertStatus::Firing,
        json!({ "via": "test" }),
    )
    .expect("accepted");
    let audit = dir.path().join("audit.jsonl");
    crate::common::eventually("the notice's delivery is recorded", || {
        std::fs::read_to_string(&audit)
            .is_ok_and(|a| a.contains("\"kind\":\"alert-take-failed-escalated\""))
    })
    .await;
    let records = crate::common::records(&audit);
    let at = |kind: &str| {
        records
            .iter()
            .position(|r| r["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} record"))
    };
    assert!(at("alert-take-failed") < at("alert-take-failed-escalated"));
    let told = &records[at("alert-take-failed-escalated")]["data"]["deliveries"];
    assert_eq!(told[0]["channel"], "slack");
    assert_eq!(told[0]["ok"], true, "{told}");
    let posts = received.lock().expect("lock").clone();
    assert_eq!(posts.len(), 1, "one message for one alert: {posts:?}");
    let text = posts[0].to_string();
    assert!(
        text.contains("may not have been handled")
            && text.contains(&alert.name)
            && text.contains("changed outside Themis"),
        "{text}"
    );
    assert_eq!(records[at("alert-take-failed")]["data"]["notice"], "told");
    // Given up on, not held: nothing was opened for it and the agent takes the next one.
    assert!(!records.iter().any(|r| r["kind"] == "alert"), "no incident");

    host.submit(
        alert.clone(),
        themis_agent::AlertStatus::Firing,
        json!({ "via": "test" }),
    )
    .expect("accepted again");
    let failed = || {
        crate::common::records(&audit)
            .into_iter()
            .filter(|r| r["kind"] == "alert-take-failed")
            .collect::<Vec<_>>()
    };
    crate::common::eventually("the second failure is recorded", || failed().len() == 2).await;
    assert_eq!(
        failed()[1]["data"]["notice"],
        "told already within the hour"
    );
    host.stop().await;
    assert_eq!(received.lock().expect("lock").len(), 1, "told once");
    assert_eq!(
        crate::common::records(&audit)
            .iter()
            .filter(|r| r["kind"] == "alert-take-failed-escalated")
            .count(),
        1
    );
}

/// Review defect: at start, the agent's last accepted alert was taken up again whenever the
/// store did not hold its incident — also when retention had pruned that incident, long closed:
/// a weeks-old alert triaged (and perhaps acted on) afresh at every restart.
/// A host over the lock-wait world whose alert came in through the service's intake (an
/// `alert-accepted` record, taken up by the backlog reader) and now waits for an answer.
struct Proposed {
    dir: tempfile::TempDir,
    state: std::path::PathBuf,
    mock: Arc<themis_testkit::mock::ScenarioMock>,
    store: Arc<dyn themis_agent::store::IncidentStore>,
    host: themis_agent::Runtime,
    incident: Incident,
}

async fn proposed() -> Proposed {
    let dir = tempfile::tempdir().expect("tempdir");
    let world = crate::common::world_file("agent-postgres-lock-waits.yaml");
    let scenario = themis_testkit::scenario::load(&world).expect("scenario");
    let mock = Arc::new(themis_testkit::mock::ScenarioMock::new(scenario.mocks).expect("mocks"));
    let state = dir.path().join("state");
    let store: Arc<dyn themis_agent::store::IncidentStore> =
        Arc::new(themis_agent::store::JsonStore::open(&state).expect("store"));
    let host = postgres_host(dir.path(), store.clone(), mock.clone()).await;
    host.submit(
        scenario.alert.to_alert(),
        themis_agent::AlertStatus::Firing,
        json!({ "via": "test" }),
    )
    .expect("accepted");
    let incident = await_proposal(&store).await;
    Proposed {
        dir,
        state,
        mock,
        store,
        host,
        incident,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_alert_of_a_pruned_incident_is_not_replayed_at_start() {
    let Proposed {
        dir,
        state,
        mock,
        store,
        host: first,
        incident,
    } = proposed().await;
    let proposal = incident.proposal.clone().expect("a proposal");
    let rejected = first
        .reject(
            &proposal.id,
            themis_core::identity::Identity::scenario("oncall"),
            "handled by hand",
        )
        .await
        .expect("rejected");
    first.stop().await;
    drop(store);
    let store: Arc<dyn themis_agent::store::IncidentStore> =
        Arc::new(themis_agent::store::JsonStore::open(&state).expect("store"));
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    // As retention prunes: the intent durably on the record before anything goes.
    let audit = themis_agent::audit::AuditLog::open(
        &dir.path().join("audit.jsonl"),
        themis_agent::audit::Redactor::default(),
    )
    .expect("audit");
    let announce = |ids: &[String]| {
        audit
            .append(
                "postgres",
                None,
                "incidents-pruning",
                json!({ "incidents": ids }),
            )
            .map(|_| ())
            .map_err(|e| themis_agent::store::StoreError::AuditNotDurable(e.to_string()))
    };
    let pruned = store
        .prune_closed("postgres", later, 10, &announce)
        .await
        .expect("prune");
    drop(audit);
    assert_eq!(pruned, vec![rejected.id.clone()]);

    let second = postgres_host(dir.path(), store.clone(), mock.clone()).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    second.stop().await;
    let records = crate::common::records(&dir.path().join("audit.jsonl"));
    let alerts = records.iter().filter(|r| r["kind"] == "alert").count();
    assert_eq!(alerts, 1, "the pruned incident's alert was taken up again");
    let (now, _) = store.scan().await.expect("scan");
    assert!(now.is_empty(), "{now:#?}");
}

/// Review defect: a stop between an alert's `alert-attached` record and its incident's save
/// left the alert counted as taken, and the incident never knew of it (a `resolved` lost the
/// same way left a fix judged without it). The start now takes it up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_alert_a_stop_cut_off_before_the_save_is_taken_up_again() {
    let Proposed {
        dir,
        mock,
        store,
        host: first,
        incident,
        ..
    } = proposed().await;
    let audit_path = dir.path().join("audit.jsonl");
    assert_eq!(incident.attached_alerts, 0);
    first.stop().await;

    // What a kill leaves: the same alert accepted again and its `alert-attached` record
    // written, the incident's save not.
    let accepted = crate::common::records(&audit_path)
        .into_iter()
        .find(|r| r["kind"] == "alert-accepted")
        .expect("the first alert's record");
    {
        let audit = themis_agent::audit::AuditLog::open(
            &audit_path,
            themis_agent::audit::Redactor::default(),
        )
        .expect("audit");
        let again = audit
            .append("postgres", None, "alert-accepted", accepted["data"].clone())
            .expect("append");
        audit
            .append(
                "postgres",
                Some(&incident.id),
                "alert-attached",
                json!({ "alert": accepted["data"]["alert"], "attached_alerts": 1, "intake": again.seq }),
            )
            .expect("append");
    }

    let second = postgres_host(dir.path(), store.clone(), mock.clone()).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = store.get(&incident.id).await.expect("incident");
        if now.attached_alerts == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cut-off alert was never taken up again: {now:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    second.stop().await;
    let attached = crate::common::records(&audit_path)
        .into_iter()
        .filter(|r| r["kind"] == "alert-attached")
        .count();
    assert_eq!(attached, 2, "recorded again as it was taken up again");
}
