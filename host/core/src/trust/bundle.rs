//! The detached bundle signature, `runbook.sig`, next to `manifest.yaml`.
//!
//! The file is JSON, so a reviewer can read what was signed:
//!
//! ```json
//! { "format": "themis-runbook-signature/v1",
//!   "runbook": "restart-consumer-group", "version": "1.0.0",
//!   "key_id": "3f1c…", "manifest": "sha256:…",
//!   "components": { "components/check-lag.wasm": "sha256:…" },
//!   "signature": "<128 hex: Ed25519 over the statement below>" }
//! ```
//!
//! The signature covers this statement (UTF-8, `\n` line ends, components sorted by path):
//!
//! ```text
//! themis-runbook-signature/v1
//! runbook <id>
//! version <version>
//! key-id <key id>
//! manifest <sha256 of manifest.yaml's bytes>
//! component <path> <sha256 of the component's bytes>
//! ```
//!
//! A new format gets a new `format` string; a host refuses formats it does not know.

use super::keys::{PublicKey, SecretKey};
use crate::manifest::Runbook;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const SIGNATURE_FILE: &str = "runbook.sig";
pub const FORMAT: &str = "themis-runbook-signature/v1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    pub format: String,
    pub runbook: String,
    pub version: String,
    pub key_id: String,
    pub manifest: String,
    pub components: BTreeMap<String, String>,
    pub signature: String,
}

impl SignatureFile {
    /// Sign a loaded (validated, not compiled) runbook.
    pub fn sign(runbook: &Runbook, key: &SecretKey) -> SignatureFile {
        let mut file = SignatureFile {
            format: FORMAT.to_owned(),
            runbook: runbook.id.clone(),
            version: runbook.version.to_string(),
            key_id: key.id.to_string(),
            manifest: crate::digest(&runbook.manifest_bytes),
            components: runbook
                .steps
                .iter()
                .map(|s| (s.component.clone(), s.component_digest.clone()))
                .collect(),
            signature: String::new(),
        };
        file.signature = hex::encode(key.sign(&file.statement()));
        file
    }

    /// What the signature covers: every field but the signature itself.
    pub fn statement(&self) -> Vec<u8> {
        let mut text = format!(
            "{}\nrunbook {}\nversion {}\nkey-id {}\nmanifest {}\n",
            self.format, self.runbook, self.version, self.key_id, self.manifest
        );
        for (path, digest) in &self.components {
            text.push_str(&format!("component {path} {digest}\n"));
        }
        text.into_bytes()
    }

    pub fn verifies_with(&self, key: &PublicKey) -> bool {
        hex::decode(&self.signature).is_ok_and(|sig| key.verify(&self.statement(), &sig))
    }

    pub fn to_json(&self) -> String {
        // A struct of strings and a string map cannot fail to serialise.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}
