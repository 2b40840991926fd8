//! Who may publish runbooks to an agent: Ed25519 publisher keys, detached bundle signatures and
//! the per-agent trust policy (trusted keys, minimum versions).
//!
//! A bundle is checked in two halves around the manifest parse, both before anything is compiled:
//! [`check_signature`] reads `runbook.sig` and `manifest.yaml`'s raw bytes (so a tampered
//! manifest is refused before its YAML is even parsed), [`check_bundle`] compares the parsed
//! runbook — the very bytes that will be compiled — with what was signed.

pub mod bundle;
pub mod keys;

use bundle::{FORMAT, SIGNATURE_FILE, SignatureFile};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use keys::{KeyId, PublicKey};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

use crate::files;
use crate::manifest::{MANIFEST_FILE, Runbook};

/// What an agent (or a scenario) trusts.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    pub keys: BTreeMap<KeyId, PublicKey>,
    /// Runbook id → the oldest version accepted.
    pub min_versions: BTreeMap<String, semver::Version>,
    /// Development only: accept bundles that carry no signature at all (a present signature is
    /// still checked).
    pub allow_unsigned: bool,
}

impl TrustPolicy {
    pub fn trusting(keys: impl IntoIterator<Item = PublicKey>) -> TrustPolicy {
        TrustPolicy {
            keys: keys.into_iter().map(|k| (k.id.clone(), k)).collect(),
            ..TrustPolicy::default()
        }
    }

    /// Trust the key in a `.pub` file, or every `*.pub` in a folder.
    pub fn trust_keys_at(&mut self, path: &Path) -> Result<(), keys::KeyError> {
        for key in keys::read_public_keys(path)? {
            self.keys.insert(key.id.clone(), key);
        }
        Ok(())
    }

    fn trusted_list(&self) -> String {
        if self.keys.is_empty() {
            return "no keys".into();
        }
        self.keys
            .values()
            .map(|k| {
                if k.name.is_empty() {
                    k.id.to_string()
                } else {
                    format!("{} ({})", k.id, k.name)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Why a bundle was refused. `code()` is the stable name the audit records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "unsigned: there is no {SIGNATURE_FILE} next to {MANIFEST_FILE} (sign it with `themis runbook sign DIR --key TEAM.key`; --allow-unsigned is for development only)"
    )]
    Unsigned,
    #[error("the bundle folder cannot be read: {0} (check the path in the agent's `runbooks:`)")]
    Unreadable(String),
    #[error("{SIGNATURE_FILE} cannot be read: {0}")]
    Malformed(String),
    #[error("{SIGNATURE_FILE} has format `{0}`; this host reads {FORMAT}")]
    UnknownFormat(String),
    #[error(
        "signed by key {key_id}, which is not trusted here (trusted: {trusted}); to accept it, trust the publisher's .pub (`trust.keys` in an agent, `--trust` on the command line)"
    )]
    UntrustedKey { key_id: String, trusted: String },
    #[error(
        "the signature does not verify with key {key_id}: {SIGNATURE_FILE} was altered or not made with that key"
    )]
    BadSignature { key_id: String },
    #[error("{MANIFEST_FILE} changed after it was signed (signed {signed}, found {found})")]
    ManifestChanged { signed: String, found: String },
    #[error("the signature is for {signed}, the manifest declares {found}")]
    IdentityMismatch { signed: String, found: String },
    #[error("component `{path}` is not the one that was signed (signed {signed}, found {found})")]
    ComponentChanged {
        path: String,
        signed: String,
        found: String,
    },
    #[error("component `{path}` is not covered by the signature")]
    ComponentNotSigned { path: String },
    #[error(
        "version {version} is older than the minimum {minimum} this agent pins for `{runbook}`: a downgrade"
    )]
    Downgrade {
        runbook: String,
        version: String,
        minimum: String,
    },
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::Unreadable(_) => "unreadable-bundle",
            Refusal::Malformed(_) => "malformed-signature",
            Refusal::UnknownFormat(_) => "unknown-signature-format",
            Refusal::UntrustedKey { .. } => "untrusted-key",
            Refusal::BadSignature { .. } => "bad-signature",
            Refusal::ManifestChanged { .. } => "manifest-changed",
            Refusal::IdentityMismatch { .. } => "identity-mismatch",
            Refusal::ComponentChanged { .. } => "component-changed",
            Refusal::ComponentNotSigned { .. } => "component-not-signed",
            Refusal::Downgrade { .. } => "downgrade",
        }
    }
}

/// Who vouches for a loaded bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    Key(KeyId),
    /// Loaded under `--allow-unsigned`.
    Unsigned,
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signer::Key(id) => write!(f, "{id}"),
            Signer::Unsigned => f.write_str("unsigned"),
        }
    }
}

/// What every audit record about a runbook carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Provenance {
    pub runbook: String,
    pub version: String,
    pub digest: String,
    /// The signer's key id, or `unsigned`.
    pub signer: String,
}

/// Read the signature (if any) and check it is well-formed, by a trusted key, intact, and
/// over the manifest bytes on disk. `Ok(None)`: unsigned and the policy allows it.
pub fn check_signature(dir: &Path, policy: &TrustPolicy) -> Result<Option<SignatureFile>, Refusal> {
    let root = Dir::open_ambient_dir(dir, ambient_authority())
        .map_err(|e| Refusal::Unreadable(e.to_string()))?;
    let bytes = match files::read_in(&root, Path::new(SIGNATURE_FILE), files::limits::SIGNATURE) {
        Ok(bytes) => bytes,
        Err(files::FileError::NotFound) => {
            return if policy.allow_unsigned {
                Ok(None)
            } else {
                Err(Refusal::Unsigned)
            };
        }
        Err(e) => return Err(Refusal::Malformed(e.to_string())),
    };
    let text = String::from_utf8(bytes).map_err(|e| Refusal::Malformed(e.to_string()))?;
    // The format first, leniently: a newer format with new fields is "unknown format", not
    // "malformed"; then this format, strictly.
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Refusal::Malformed(e.to_string()))?;
    match value.get("format").and_then(|f| f.as_str()) {
        Some(FORMAT) => {}
        Some(other) => return Err(Refusal::UnknownFormat(other.to_owned())),
        None => return Err(Refusal::Malformed("it has no `format`".into())),
    }
    let sig: SignatureFile =
        serde_json::from_value(value).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let key = policy
        .keys
        .iter()
        .find(|(id, _)| id.as_str() == sig.key_id)
        .map(|(_, k)| k)
        .ok_or_else(|| Refusal::UntrustedKey {
            key_id: sig.key_id.clone(),
            trusted: policy.trusted_list(),
        })?;
    if !sig.verifies_with(key) {
        return Err(Refusal::BadSignature {
            key_id: sig.key_id.clone(),
        });
    }
    // An unreadable manifest is the manifest loader's to report, with its own fix.
    if let Ok(bytes) = files::read_in(&root, Path::new(MANIFEST_FILE), files::limits::MANIFEST) {
        let found = crate::digest(&bytes);
        if found != sig.manifest {
            return Err(Refusal::ManifestChanged {
                signed: sig.manifest.clone(),
                found,
            });
        }
    }
    Ok(Some(sig))
}

/// Compare the parsed runbook (the bytes that will be compiled) with the signature, and apply
/// the version pin.
pub fn check_bundle(
    runbook: &Runbook,
    signature: Option<&SignatureFile>,
    policy: &TrustPolicy,
) -> Result<Signer, Refusal> {
    let signer = match signature {
        None if policy.allow_unsigned => Signer::Unsigned,
        None => return Err(Refusal::Unsigned),
        Some(sig) => {
            let found = crate::digest(&runbook.manifest_bytes);
            if found != sig.manifest {
                return Err(Refusal::ManifestChanged {
                    signed: sig.manifest.clone(),
                    found,
                });
            }
            let declared = format!("{} {}", runbook.id, runbook.version);
            let signed = format!("{} {}", sig.runbook, sig.version);
            if declared != signed {
                return Err(Refusal::IdentityMismatch {
                    signed,
                    found: declared,
                });
            }
            for step in &runbook.steps {
                match sig.components.get(&step.component) {
                    None => {
                        return Err(Refusal::ComponentNotSigned {
                            path: step.component.clone(),
                        });
                    }
                    Some(signed) if *signed != step.component_digest => {
                        return Err(Refusal::ComponentChanged {
                            path: step.component.clone(),
                            signed: signed.clone(),
                            found: step.component_digest.clone(),
                        });
                    }
                    Some(_) => {}
                }
            }
            let id = policy
                .keys
                .keys()
                .find(|id| id.as_str() == sig.key_id)
                .cloned()
                .ok_or_else(|| Refusal::UntrustedKey {
                    key_id: sig.key_id.clone(),
                    trusted: policy.trusted_list(),
                })?;
            Signer::Key(id)
        }
    };
    if let Some(minimum) = policy.min_versions.get(&runbook.id)
        && runbook.version < *minimum
    {
        return Err(Refusal::Downgrade {
            runbook: runbook.id.clone(),
            version: runbook.version.to_string(),
            minimum: minimum.to_string(),
        });
    }
    Ok(signer)
}
