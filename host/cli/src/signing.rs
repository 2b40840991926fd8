//! `themis keygen`, `themis runbook sign|verify|list`: publishing runbooks and seeing who vouches
//! for what an agent loads.

use super::{agent_files, fail};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use themis_agent::AgentDef;
use themis_core::manifest::Runbook;
use themis_core::trust::bundle::{SIGNATURE_FILE, SignatureFile};
use themis_core::trust::keys::SecretKey;
use themis_core::trust::{self, TrustPolicy};
use themis_sandbox::Sandbox;
use themis_sandbox::loaded::LoadedRunbook;

pub fn keygen(out: &Path) -> ExitCode {
    let key = match SecretKey::generate() {
        Ok(k) => k,
        Err(e) => return fail(2, e),
    };
    match key.write_pair(out) {
        Ok((secret, public)) => {
            outln!("key id   {}", key.id);
            outln!(
                "private  {}  (mode 0600; keep it out of repositories, logs and tickets)",
                secret.display()
            );
            outln!(
                "public   {}  (list it under `trust.keys` in the agents that should run your runbooks)",
                public.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(2, e),
    }
}

pub fn sign(dirs: &[PathBuf], key: &Path) -> ExitCode {
    let key = match SecretKey::read(key) {
        Ok(k) => k,
        Err(e) => return fail(2, e),
    };
    let mut failed = false;
    for dir in dirs {
        let runbook = match Runbook::load(dir) {
            Ok(r) => r,
            Err(e) => {
                failed = true;
                eprintln!("error: {e}");
                continue;
            }
        };
        let signature = SignatureFile::sign(&runbook, &key);
        let path = dir.join(SIGNATURE_FILE);
        match write_replacing(dir, &path, signature.to_json().as_bytes()) {
            Ok(()) => outln!(
                "signed   {} {} with key {} -> {}",
                runbook.id,
                runbook.version,
                key.id,
                path.display()
            ),
            Err(e) => {
                failed = true;
                eprintln!("error: {}: cannot write: {e}", path.display());
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Write `bytes` as `path` by a new file renamed over it: a `runbook.sig` that is a symlink is
/// replaced, never written through (it could lead anywhere the signer may write).
fn write_replacing(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    // A signature is public, as the file it replaces was (the new file starts owner-only).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    file.as_file().sync_all()?;
    file.persist(path).map(|_| ()).map_err(|e| e.error)
}

pub fn verify(dirs: &[PathBuf], trust_paths: &[PathBuf]) -> ExitCode {
    let mut policy = TrustPolicy::default();
    for path in trust_paths {
        if let Err(e) = policy.trust_keys_at(path) {
            return fail(2, e);
        }
    }
    let mut failed = false;
    for dir in dirs {
        // The same two checks the host makes before compiling, and nothing more.
        let checked =
            trust::check_signature(dir, &policy).and_then(|signature| match Runbook::load(dir) {
                Ok(runbook) => trust::check_bundle(&runbook, signature.as_ref(), &policy)
                    .map(|signer| Ok((runbook, signer))),
                Err(e) => Ok(Err(e)),
            });
        match checked {
            Ok(Ok((runbook, signer))) => outln!(
                "ok       {} {} {} signed by {signer}",
                runbook.id,
                runbook.version,
                runbook.digest
            ),
            Ok(Err(manifest)) => {
                failed = true;
                eprintln!("error: {manifest}");
            }
            Err(reason) => {
                failed = true;
                eprintln!("refused  {}: {reason}", dir.display());
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

pub fn list(
    sandbox: &Sandbox,
    agents: &Path,
    bundle_cache: &Path,
    json: bool,
    allow_unsigned: bool,
) -> ExitCode {
    let files = match agent_files(agents) {
        Ok(f) => f,
        Err(e) => return fail(2, e),
    };
    let mut rows = Vec::new();
    let mut refused = false;
    for file in files {
        let mut def = match AgentDef::load(&file) {
            Ok(d) => d,
            Err(e) => return fail(2, e),
        };
        def.trust.allow_unsigned = allow_unsigned;
        // OCI entries are listed from the bundle cache the host fills at start.
        let mut fetched = Vec::new();
        for r in &def.oci_runbooks {
            match themis_registry::cache::cache_dir(r, bundle_cache).filter(|d| d.is_dir()) {
                Some(dir) => fetched.push(dir),
                None => rows.push(json!({
                    "agent": def.name, "role": "runbook", "status": "not-fetched",
                    "bundle": r.to_string(),
                    "error": format!("{r}: not in the bundle cache yet; the host pulls it at start"),
                })),
            }
        }
        for (role, dir) in def
            .runbooks
            .iter()
            .map(|d| ("runbook", d))
            .chain(fetched.iter().map(|d| ("runbook", d)))
            .chain(def.probes.iter().map(|d| ("probe", d)))
        {
            match LoadedRunbook::load(sandbox, dir, &def.trust) {
                Ok(loaded) => rows.push(json!({
                    "agent": def.name, "role": role, "status": "loaded",
                    "provenance": loaded.provenance(),
                })),
                Err(e) => {
                    refused = true;
                    rows.push(json!({
                        "agent": def.name, "role": role, "status": "refused",
                        "bundle": dir, "error": e.to_string(),
                    }));
                }
            }
        }
    }
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else {
        outln!(
            "{:<12} {:<8} {:<26} {:<9} {:<18} DIGEST",
            "AGENT",
            "ROLE",
            "RUNBOOK",
            "VERSION",
            "SIGNER"
        );
        let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
        for row in &rows {
            if row["status"] == "loaded" {
                let p = &row["provenance"];
                outln!(
                    "{:<12} {:<8} {:<26} {:<9} {:<18} {}",
                    s(&row["agent"]),
                    s(&row["role"]),
                    s(&p["runbook"]),
                    s(&p["version"]),
                    s(&p["signer"]),
                    s(&p["digest"])
                );
            } else if row["status"] == "not-fetched" {
                outln!(
                    "{:<12} {:<8} NOT FETCHED  {}",
                    s(&row["agent"]),
                    s(&row["role"]),
                    s(&row["error"])
                );
            } else {
                outln!(
                    "{:<12} {:<8} REFUSED  {}",
                    s(&row["agent"]),
                    s(&row["role"]),
                    s(&row["error"])
                );
            }
        }
    }
    if refused {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
