use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use themis::caps::Backends;
use themis::caps::scenario::{Mocks, ScenarioMock};
use themis::executor::LoadedRunbook;
use themis::sandbox::{Sandbox, SandboxConfig};
use themis::trust::TrustPolicy;
use themis::trust::keys::read_public_keys;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
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
    let rules: Mocks = themis::yaml::from_str(yaml).expect("mock yaml");
    Arc::new(ScenarioMock::new(rules).expect("mock rules"))
}

pub fn backends(mock: &Arc<ScenarioMock>) -> Backends {
    Backends::all(mock.clone(), false)
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
