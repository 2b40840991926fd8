//! A runbook ready to run: its bundle verified against a trust policy, then every component
//! compiled (or taken from the cache), import-checked and pre-instantiated.

use crate::{LoadError, Sandbox, StepComponent};
use std::path::{Path, PathBuf};
use themis_core::capability::Domain;
use themis_core::manifest::{ManifestError, Runbook};
use themis_core::trust::{self, Provenance, Refusal, Signer, TrustPolicy};

/// A runbook whose bundle was verified, with every component checked and pre-instantiated.
#[derive(Debug, Clone)]
pub struct LoadedRunbook {
    pub runbook: Runbook,
    /// Aligned with `runbook.steps`.
    pub components: Vec<StepComponent>,
    pub signer: Signer,
}

#[derive(Debug, thiserror::Error)]
pub enum RunbookLoadError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("runbook bundle {}: refused: {reason}", bundle.display())]
    Refused { bundle: PathBuf, reason: Refusal },
    #[error("runbook `{runbook}` step `{step}`: {source}")]
    Component {
        runbook: String,
        step: String,
        source: LoadError,
    },
}

impl LoadedRunbook {
    /// Verify the bundle in `dir` against `trust`, then compile. Nothing of a refused bundle
    /// reaches the compiler.
    pub fn load(
        sandbox: &Sandbox,
        dir: &Path,
        trust: &TrustPolicy,
    ) -> Result<Self, RunbookLoadError> {
        let (runbook, signer) = Self::verify(dir, trust)?;
        Self::compile(sandbox, runbook, signer)
    }

    /// Everything [`LoadedRunbook::load`] checks before it compiles — the signature, the keys
    /// trusted, every component's digest, the minimum version — and nothing it compiles: what
    /// `themis serve --check` asks of each bundle an agent names.
    pub fn verify(dir: &Path, trust: &TrustPolicy) -> Result<(Runbook, Signer), RunbookLoadError> {
        let refused = |reason| RunbookLoadError::Refused {
            bundle: dir.to_path_buf(),
            reason,
        };
        let signature = trust::check_signature(dir, trust).map_err(refused)?;
        let runbook = Runbook::load(dir)?;
        let signer = trust::check_bundle(&runbook, signature.as_ref(), trust).map_err(refused)?;
        Ok((runbook, signer))
    }

    /// Load without any signature check: for authoring tools (`themis runbook validate`), never
    /// for running.
    pub fn load_unverified(sandbox: &Sandbox, dir: &Path) -> Result<Self, RunbookLoadError> {
        Self::compile(sandbox, Runbook::load(dir)?, Signer::Unsigned)
    }

    fn compile(
        sandbox: &Sandbox,
        runbook: Runbook,
        signer: Signer,
    ) -> Result<Self, RunbookLoadError> {
        let components = runbook
            .steps
            .iter()
            .map(|step| {
                let name = runbook.dir.join(&step.component).display().to_string();
                sandbox
                    .load(runbook.domain, &name, &step.component_bytes)
                    .map_err(|source| RunbookLoadError::Component {
                        runbook: runbook.id.clone(),
                        step: step.id.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LoadedRunbook {
            runbook,
            components,
            signer,
        })
    }

    pub fn domain(&self) -> Domain {
        self.runbook.domain
    }

    /// Id, version, digest and signer: what every audit record about this runbook carries.
    pub fn provenance(&self) -> Provenance {
        Provenance {
            runbook: self.runbook.id.clone(),
            version: self.runbook.version.to_string(),
            digest: self.runbook.digest.clone(),
            signer: self.signer.to_string(),
        }
    }
}
