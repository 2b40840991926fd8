//! `themis runbook push | pull`: signed bundles to and from an OCI registry.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use themis_core::trust::TrustPolicy;
use themis_registry::BundleRef;

use crate::fail;

pub async fn push(dir: &Path, reference: &str, json: bool) -> ExitCode {
    let r = match BundleRef::parse(reference) {
        Ok(r) => r,
        Err(e) => return fail(2, e),
    };
    match themis_registry::push(dir, &r).await {
        Ok(pushed) => {
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&pushed).unwrap_or_default()
                );
            } else {
                outln!("pushed   {} {} to {r}", pushed.runbook, pushed.version);
                outln!("digest   {}", pushed.digest);
                outln!("pin it   {}   (in an agent's `runbooks:`)", pushed.pinned);
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e),
    }
}

/// The trust a pull checks against: the keys given, or an agent's whole trust policy (keys and
/// minimum versions). Never "unsigned".
pub fn pull_policy(trust: &[PathBuf], agent: Option<&Path>) -> Result<TrustPolicy, String> {
    let mut policy = match agent {
        Some(file) => {
            themis_agent::AgentDef::load(file)
                .map_err(|e| e.to_string())?
                .trust
        }
        None => TrustPolicy::default(),
    };
    policy.allow_unsigned = false;
    for path in trust {
        policy.trust_keys_at(path).map_err(|e| e.to_string())?;
    }
    if policy.keys.is_empty() {
        return Err("nothing to verify the bundle against: pass --trust TEAM.pub (or a folder of them), or --agent FILE to use an agent's trust policy".into());
    }
    Ok(policy)
}

pub async fn pull(reference: &str, dest: &Path, policy: &TrustPolicy, json: bool) -> ExitCode {
    let r = match BundleRef::parse(reference) {
        Ok(r) => r,
        Err(e) => return fail(2, e),
    };
    match themis_registry::pull(&r, dest, policy).await {
        Ok(pulled) => {
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&pulled).unwrap_or_default()
                );
            } else {
                outln!(
                    "pulled   {} {} signed by {} into {}",
                    pulled.runbook,
                    pulled.version,
                    pulled.signer,
                    pulled.dir.display()
                );
                outln!("digest   {}", pulled.digest);
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e),
    }
}
