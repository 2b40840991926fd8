//! A scenario's mocked world as the agents' backends: one world for every agent of a runtime,
//! optionally behind the dry-run recorder. A state directory may be bound to a world
//! (`themis alert --scenario`), so a later `themis approve` in another process acts on the same
//! world, its sequences continuing where they stood.

use crate::mock::ScenarioMock;
use crate::scenario::{self, ScenarioError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use themis_caps::Backends;
use themis_caps::provider::{BackendProvider, ProviderError};
use themis_core::capability::Domain;

pub struct ScenarioProvider {
    mock: Arc<ScenarioMock>,
    dry_run: bool,
}

impl ScenarioProvider {
    pub fn new(mock: Arc<ScenarioMock>, dry_run: bool) -> Self {
        ScenarioProvider { mock, dry_run }
    }

    /// The world of a scenario file.
    pub fn from_file(file: &Path, dry_run: bool) -> Result<Self, ScenarioError> {
        ScenarioProvider::open(file, dry_run, None)
    }

    /// The world of a scenario file, kept in `dir` under `name`: its sequences' positions and the
    /// ledger of what was done to it outlive the process, as a real system's state does.
    pub fn kept(file: &Path, dry_run: bool, dir: &Path, name: &str) -> Result<Self, ScenarioError> {
        ScenarioProvider::open(
            file,
            dry_run,
            Some((
                dir.join(format!("world-{name}.json")),
                dir.join(format!("world-{name}.ledger.jsonl")),
            )),
        )
    }

    /// A scenario's mocks as a world, its (cursors, ledger) kept in files when given.
    fn open(
        file: &Path,
        dry_run: bool,
        kept: Option<(PathBuf, PathBuf)>,
    ) -> Result<Self, ScenarioError> {
        let scenario = scenario::load(file)?;
        let mut mock = ScenarioMock::new(scenario.mocks).map_err(|e| ScenarioError::Invalid {
            file: file.into(),
            message: e.to_string(),
        })?;
        if let Some((cursors, ledger)) = kept {
            mock = mock.persisted(cursors).ledgered(ledger);
        }
        Ok(ScenarioProvider::new(
            Arc::new(mock),
            dry_run || scenario.dry_run,
        ))
    }

    pub fn mock(&self) -> &Arc<ScenarioMock> {
        &self.mock
    }
}

impl BackendProvider for ScenarioProvider {
    fn backends(&self, _agent: &str, _domain: Domain) -> Result<Backends, ProviderError> {
        let live = Backends::all(self.mock.clone());
        Ok(if self.dry_run { live.dry_run() } else { live })
    }
}

/// Which scenario world a state directory acts on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct World {
    pub scenario: PathBuf,
    pub dry_run: bool,
}

const WORLD_FILE: &str = "world.json";
const CURSORS_FILE: &str = "world-cursors.json";
const LEDGER_FILE: &str = "world-ledger.jsonl";

impl World {
    /// Bind `state_dir` to a scenario's world. Binding another world starts its sequences over.
    pub fn bind(state_dir: &Path, scenario: &Path, dry_run: bool) -> std::io::Result<World> {
        std::fs::create_dir_all(state_dir)?;
        let world = World {
            scenario: std::path::absolute(scenario)?,
            dry_run,
        };
        if World::bound(state_dir).is_some_and(|w| w.scenario != world.scenario) {
            let _ = std::fs::remove_file(state_dir.join(CURSORS_FILE));
            let _ = std::fs::remove_file(state_dir.join(LEDGER_FILE));
        }
        let text = serde_json::to_string_pretty(&world).map_err(std::io::Error::other)?;
        std::fs::write(state_dir.join(WORLD_FILE), text)?;
        Ok(world)
    }

    /// The world `state_dir` is bound to, if any.
    pub fn bound(state_dir: &Path) -> Option<World> {
        let text = std::fs::read_to_string(state_dir.join(WORLD_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The provider for this world, its sequences kept in the state directory.
    pub fn provider(&self, state_dir: &Path) -> Result<ScenarioProvider, ScenarioError> {
        ScenarioProvider::open(
            &self.scenario,
            self.dry_run,
            Some((state_dir.join(CURSORS_FILE), state_dir.join(LEDGER_FILE))),
        )
    }
}
