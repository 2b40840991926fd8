//! An incident's first state — the escalation straight out of triage — is staged in the store,
//! not waited for on the disk, so a decision pays one fsync. The escalation record, durable
//! before anyone is told, holds all of it: a start that finds the store without it (a power loss
//! took the staged write back, or a stop came between the record and the write) restores the
//! incident from the record, and the proposal a human holds still answers.

use crate::common::{records, repo, sandbox, world_alert, world_file};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use themis_agent::audit::{AuditLog, Redactor};
use themis_agent::escalation::Channels;
use themis_agent::store::{IncidentStatus, IncidentStore, StoreChoice};
use themis_agent::{AlertOutcome, Quiet, Runtime, RuntimeParts};
use themis_core::identity::Identity;
use themis_testkit::mock::ScenarioMock;
use themis_testkit::provider::ScenarioProvider;

const WORLD: &str = "agent-postgres-lock-waits.yaml";

/// A host on the embedded SQLite store, as `themis serve` runs by default.
async fn host(dir: &Path, agent: &Path) -> (Runtime, Arc<dyn IncidentStore>) {
    let audit = AuditLog::open(&dir.join("audit.jsonl"), Redactor::default()).expect("audit");
    let store = themis_agent::store::open(
        &dir.join("state"),
        Some(&StoreChoice::Sqlite),
        StoreChoice::Sqlite,
        Duration::from_secs(5),
    )
    .await
    .expect("store");
    let scenario = themis_testkit::scenario::load(&world_file(WORLD)).expect("scenario");
    let mock = Arc::new(ScenarioMock::new(scenario.mocks).expect("mocks"));
    let runtime = Runtime::start(
        RuntimeParts {
            sandbox: sandbox().clone(),
            agent_files: vec![agent.to_path_buf()],
            audit: Arc::new(audit),
            store: store.clone(),
            channels: Channels::default(),
            observer: Arc::new(Quiet),
            provider: Arc::new(ScenarioProvider::new(mock, false)),
        },
        Default::default(),
    )
    .await
    .expect("runtime");
    (runtime, store)
}

/// What a power loss leaves when it takes the staged write back: the store without the row.
async fn lose_row(dir: &Path, incident: &str) {
    use sqlx::ConnectOptions;
    let mut db = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("state").join("themis.db"))
        .connect()
        .await
        .expect("open the store's database");
    let gone = sqlx::query("DELETE FROM incidents WHERE id = ?")
        .bind(incident)
        .execute(&mut db)
        .await
        .expect("delete");
    assert_eq!(gone.rows_affected(), 1, "the row was there to lose");
}

fn of_kind(audit: &Path, incident: &str, kind: &str) -> usize {
    records(audit)
        .iter()
        .filter(|r| r["kind"] == kind && r["incident"] == incident)
        .count()
}

async fn stopped(runtime: Runtime, store: Arc<dyn IncidentStore>) {
    runtime.stop().await;
    // The store's lock goes with its last handle: the next host takes the directory over.
    drop(store);
}

/// Both paths to a first state: the PostgreSQL agent's probe makes its triage wait (the
/// incident is staged while it triages), and the same agent without probes decides at once
/// (nothing is written before the decision). Either way the lost state comes back as it was,
/// once, and its proposal is approved and run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_state_the_store_lost_is_restored_from_its_escalation() {
    for probes in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = if probes {
            repo().join("agents/postgres.yaml")
        } else {
            let path = dir.path().join("postgres.yaml");
            std::fs::write(
                &path,
                format!(
                    "name: postgres\ndomain: postgres\nrunbooks: [{}]\ntrust: {{ keys: [{}] }}\nroutes: [ {{ alert: PostgresLockWaits }} ]\npolicy: {{ min_confidence: 0.8, destructive: [postgres.terminate-backend] }}\nrules:\n  - {{ runbook: terminate-blocker, params: {{ pid: \"4242\" }}, confidence: 0.9, reasoning: at once }}\n",
                    repo().join("runbooks/postgres/terminate-blocker").display(),
                    repo().join("keys/demo/demo-postgres-team.pub").display()
                ),
            )
            .expect("agent without probes");
            path
        };
        let (runtime, store) = host(dir.path(), &agent).await;
        let AlertOutcome::Handled(incident) = runtime
            .handle_alert(world_alert(WORLD))
            .await
            .expect("handled")
        else {
            panic!("a new incident")
        };
        let proposal = incident.proposal.clone().expect("a destructive plan waits");
        let held = store.get(&incident.id).await.expect("the staged state");
        assert_eq!(held.status, IncidentStatus::PendingApproval);
        // A later record of the incident that writes no state (an answer refused for a digest
        // the human was not shown) does not make the staged state durable.
        assert!(
            runtime
                .approve(
                    &proposal.id,
                    Identity::scenario("oncall"),
                    Some("sha256:not-what-was-shown".into()),
                )
                .await
                .is_err()
        );
        assert_eq!(
            of_kind(
                &dir.path().join("audit.jsonl"),
                &incident.id,
                "approval-refused"
            ),
            1
        );
        stopped(runtime, store).await;
        lose_row(dir.path(), &incident.id).await;

        let (runtime, store) = host(dir.path(), &agent).await;
        let restored = store.get(&incident.id).await.expect("restored");
        assert_eq!(
            restored.status,
            IncidentStatus::PendingApproval,
            "probes: {probes}"
        );
        assert_eq!(
            restored.proposal.as_ref().map(|p| &p.id),
            Some(&proposal.id)
        );
        assert_eq!(restored.proposal_record, held.proposal_record);
        assert_eq!(restored.opened_seq, held.opened_seq);
        assert_eq!(restored.alert, held.alert);
        assert_eq!(restored.reason, held.reason);
        assert_eq!(restored.selection, held.selection);
        let audit = records(&dir.path().join("audit.jsonl"));
        assert_eq!(
            of_kind(&dir.path().join("audit.jsonl"), &incident.id, "recovered"),
            1,
            "the restore is on the record"
        );
        assert_eq!(
            audit
                .iter()
                .filter(|r| r["kind"] == "alert" || r["kind"] == "escalation")
                .count(),
            2,
            "neither triaged again nor escalated twice"
        );
        runtime
            .approve(
                &proposal.id,
                Identity::scenario("oncall"),
                Some(proposal.plan_digest.clone()),
            )
            .await
            .expect("the proposal a human holds still answers");
        assert_eq!(
            of_kind(
                &dir.path().join("audit.jsonl"),
                &incident.id,
                "execution-start"
            ),
            1,
            "the approved plan ran"
        );
        stopped(runtime, store).await;

        // Held durably now: a third start restores nothing.
        let (runtime, store) = host(dir.path(), &agent).await;
        assert_eq!(
            of_kind(&dir.path().join("audit.jsonl"), &incident.id, "recovered"),
            1
        );
        stopped(runtime, store).await;
    }
}

/// How often the store was made durable without writing an incident (`IncidentStore::sync`).
async fn syncs(dir: &Path) -> i64 {
    use sqlx::ConnectOptions;
    let mut db = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("state").join("themis.db"))
        .connect()
        .await
        .expect("open the store's database");
    sqlx::query_scalar("SELECT COALESCE(MAX(n), 0) FROM sync_marks")
        .fetch_one(&mut db)
        .await
        .expect("read the sync marks")
}

/// The escalation says whether its state was staged; the store is made durable at start and
/// after every `STAGED_RUN` (32) staged, behind the reply, so a start needs to look back only a
/// bounded way and no decision waits on a second fsync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_made_durable_after_every_run_of_staged_first_states() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (runtime, store) = host(dir.path(), &repo().join("agents/postgres.yaml")).await;
    for n in 0..34 {
        let mut alert = world_alert(WORLD);
        alert.fingerprint = format!("restore-bound-{n}");
        runtime.handle_alert(alert).await.expect("handled");
    }
    stopped(runtime, store).await;
    let staged: Vec<bool> = records(&dir.path().join("audit.jsonl"))
        .iter()
        .filter(|r| r["kind"] == "escalation")
        .map(|r| {
            r["data"]["first_state"]["staged"]
                .as_bool()
                .expect("first state")
        })
        .collect();
    assert_eq!(staged, vec![true; 34]);
    assert_eq!(syncs(dir.path()).await, 2, "at start and after the 32nd");
    // A new start makes durable whatever the last one staged.
    let (runtime, store) = host(dir.path(), &repo().join("agents/postgres.yaml")).await;
    stopped(runtime, store).await;
    assert_eq!(syncs(dir.path()).await, 3);
}
