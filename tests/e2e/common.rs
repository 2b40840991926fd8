use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use themis_agent::audit::{AuditLog, Redactor};
use themis_agent::escalation::Channels;
use themis_agent::store::JsonStore;
use themis_agent::{Runtime, RuntimeError, RuntimeOptions, RuntimeParts};
use themis_caps::Backends;
use themis_core::trust::TrustPolicy;
use themis_core::trust::keys::read_public_keys;
use themis_sandbox::loaded::LoadedRunbook;
use themis_sandbox::{Sandbox, SandboxConfig};
use themis_testkit::mock::{Mocks, ScenarioMock};
use themis_testkit::provider::ScenarioProvider;
use themis_testkit::scenario_agent::Recorder;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("host/cli/ is two folders down")
        .to_path_buf()
}

/// One sandbox for the whole test binary: one engine, components compiled once by digest.
pub fn sandbox() -> &'static Arc<Sandbox> {
    static SANDBOX: OnceLock<Arc<Sandbox>> = OnceLock::new();
    SANDBOX
        .get_or_init(|| Arc::new(Sandbox::new(SandboxConfig::default()).expect("sandbox starts")))
}

pub fn runbook(relative: &str) -> LoadedRunbook {
    let dir = repo().join(relative);
    assert!(
        dir.join("components").is_dir(),
        "{} has no components/: run scripts/build-runbooks first",
        dir.display()
    );
    LoadedRunbook::load(sandbox(), &dir, &demo_trust(relative))
        .unwrap_or_else(|e| panic!("{relative} loads: {e}"))
}

/// The demo key that signs the bundle at `relative` (see keys/demo/README.md).
pub fn demo_key_name(relative: &str) -> &'static str {
    ["kafka", "kubernetes", "postgres"]
        .into_iter()
        .find(|d| relative.starts_with(&format!("runbooks/{d}/")))
        .map(|d| match d {
            "kafka" => "demo-kafka-team",
            "kubernetes" => "demo-kubernetes-team",
            _ => "demo-postgres-team",
        })
        .unwrap_or("demo-test-fixtures")
}

pub fn demo_trust(relative: &str) -> TrustPolicy {
    let key = repo().join(format!("keys/demo/{}.pub", demo_key_name(relative)));
    TrustPolicy::trusting(read_public_keys(&key).expect("demo public key"))
}

pub fn mock(yaml: &str) -> Arc<ScenarioMock> {
    let rules: Mocks = themis_core::yaml::from_str(yaml).expect("mock yaml");
    Arc::new(ScenarioMock::new(rules).expect("mock rules"))
}

pub fn backends(mock: &Arc<ScenarioMock>) -> Backends {
    Backends::all(mock.clone())
}

/// A runtime in this process, for tests that drive it directly: `agents` (paths from the repo
/// root), a scenario's mocks as every agent's backends, state and audit in `dir`.
pub struct TestHost {
    pub runtime: Runtime,
    pub store: Arc<JsonStore>,
    pub audit_path: PathBuf,
    pub recorder: Arc<Recorder>,
    pub mock: Arc<ScenarioMock>,
}

impl TestHost {
    /// Hand an alert to the runtime; it must open a new incident.
    pub async fn new_incident(
        &self,
        alert: themis_core::types::Alert,
    ) -> themis_agent::store::Incident {
        match self.runtime.handle_alert(alert).await.expect("handled") {
            themis_agent::AlertOutcome::Handled(incident) => incident,
            other => panic!("expected a new incident, got {other:?}"),
        }
    }
}

pub struct HostSpec<'a> {
    pub dir: &'a Path,
    pub agents: Vec<PathBuf>,
    /// A scenario file under tests/scenarios whose `mocks:` are the world.
    pub world: &'a str,
    pub dry_run: bool,
    pub channels: Channels,
    pub options: RuntimeOptions,
    pub sandbox: Arc<Sandbox>,
}

impl<'a> HostSpec<'a> {
    pub fn new(dir: &'a Path, agent: &str, world: &'a str) -> Self {
        HostSpec {
            dir,
            agents: vec![repo().join(agent)],
            world,
            dry_run: false,
            channels: Channels::default(),
            options: RuntimeOptions::default(),
            sandbox: sandbox().clone(),
        }
    }

    pub async fn start(self) -> Result<TestHost, RuntimeError> {
        let audit_path = self.dir.join("audit.jsonl");
        let audit = AuditLog::open(
            &audit_path,
            Redactor::with_values(self.channels.slack_webhook.clone()),
        )?;
        let store = Arc::new(JsonStore::open(&self.dir.join("state"))?);
        let scenario = themis_testkit::scenario::load(&world_file(self.world)).expect("scenario");
        let mock = Arc::new(
            ScenarioMock::new(scenario.mocks)
                .expect("mocks")
                .clocked(self.options.clock.clone()),
        );
        let recorder = Arc::new(Recorder::default());
        let runtime = Runtime::start(
            RuntimeParts {
                sandbox: self.sandbox,
                agent_files: self.agents,
                audit: Arc::new(audit),
                store: store.clone(),
                channels: self.channels,
                observer: recorder.clone(),
                provider: Arc::new(ScenarioProvider::new(mock.clone(), self.dry_run)),
            },
            self.options,
        )
        .await?;
        Ok(TestHost {
            runtime,
            store,
            audit_path,
            recorder,
            mock,
        })
    }
}

pub fn world_file(name: &str) -> PathBuf {
    repo().join("tests/scenarios").join(name)
}

/// The alert of a scenario file under tests/scenarios.
pub fn world_alert(name: &str) -> themis_core::types::Alert {
    themis_testkit::scenario::load(&world_file(name))
        .expect("scenario")
        .alert
        .to_alert()
}

/// Every audit record of a log, as JSON.
/// Wait (up to ten seconds) until `done` holds: for what a worker does after its reply, such
/// as sending an escalation to Slack.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

pub fn records(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).expect("audit");
    // Complete lines only: a host may be writing the next one as this reads.
    let end = text.rfind('\n').map_or(0, |i| i + 1);
    text[..end]
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect()
}

/// Run the `themis` binary from the repository root.
pub fn themis(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_themis"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("themis runs")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A copy of a shipped agent definition in `dir`, its relative paths made absolute and `edits`
/// (`from` → `to`) applied, each of which must apply.
pub fn patched_agent(dir: &Path, agent: &str, edits: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(repo().join(agent))
        .expect("read agent")
        .replace("../", &format!("{}/", repo().display()));
    for (from, to) in edits {
        assert!(text.contains(from), "{agent} has no {from:?}");
        text = text.replace(from, to);
    }
    let file = dir.join(Path::new(agent).file_name().expect("a file name"));
    std::fs::write(&file, text).expect("write agent");
    file
}

/// Hand a scenario's alert to the agents from the command line, in state directory `state`:
/// the approval id and plan digest it proposes.
pub fn alert_with_proposal(state: &str, scenario: &str) -> (String, String) {
    let out = themis(&[
        "alert",
        "--scenario",
        &format!("tests/scenarios/{scenario}"),
        "--state-dir",
        state,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    crate::agents::proposal_of(&text(&out.stdout), state)
}

/// A host configuration in `dir` naming one approver, alice, whose token is `alice-token`.
pub fn approvers_config(dir: &Path) -> PathBuf {
    let config = dir.join("themis.yaml");
    std::fs::write(
        &config,
        format!(
            "approvers:\n  alice: {{ token_sha256: \"{}\" }}\n",
            themis_agent::approvers::token_hash("alice-token")
        ),
    )
    .expect("config");
    config
}

/// What a [`webhook`] was sent: every JSON body, in order.
pub type Posted = Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// A webhook (Slack's, a response URL) over real HTTP on loopback, keeping every JSON body
/// POSTed to `route` (an axum route: `{n}` segments allowed): its base URL and what it got.
pub async fn webhook(route: &str) -> (String, Posted) {
    use axum::{Json, Router, extract::State, routing::post};
    let got: Posted = Arc::default();
    let app = Router::new()
        .route(
            route,
            post(
                |State(got): State<Posted>, Json(body): Json<serde_json::Value>| async move {
                    got.lock().expect("lock").push(body);
                    "ok"
                },
            ),
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), got)
}
