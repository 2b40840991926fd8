//! A bundle folder as OCI layers and back: the layout, media types and path rules.

use oci_client::client::{Config, ImageLayer};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use themis_core::manifest::{MANIFEST_FILE, Runbook};
use themis_core::trust::bundle::{SIGNATURE_FILE, SignatureFile};

/// The manifest's `artifactType`: a signed Themis runbook bundle.
pub const ARTIFACT_TYPE: &str = "application/vnd.themis.runbook.v1";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.themis.runbook.config.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.themis.runbook.manifest.v1+yaml";
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.themis.runbook.signature.v1+json";
/// A step component, as the CNCF Wasm OCI artifact layout names a component layer.
pub const COMPONENT_MEDIA_TYPE: &str = "application/wasm";
/// Where each layer goes in the bundle folder (the ORAS convention).
pub const TITLE: &str = "org.opencontainers.image.title";
/// More layers than this is not a bundle this host would load (and bounds what a pull holds).
pub const MAX_LAYERS: usize = 66;

/// The config blob: what the bundle is, readable without pulling its layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleConfig {
    pub runbook: String,
    pub version: String,
    pub domain: String,
    pub signer: String,
    pub manifest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error("{0}")]
    Manifest(String),
    #[error(
        "{dir} has no {SIGNATURE_FILE}: sign it first (`themis runbook sign {dir} --key TEAM.key`); only signed bundles are pushed"
    )]
    Unsigned { dir: String },
    #[error(
        "{dir}/{SIGNATURE_FILE} does not cover the bundle as it is now ({why}): sign it again after building"
    )]
    StaleSignature { dir: String, why: String },
    #[error("{path}: cannot read: {why}")]
    Read { path: String, why: String },
    #[error(
        "component `{path}` could not be pulled: a bundle's components are `components/NAME.wasm` (letters, digits, `-`, `_`, `.`); move it there, update the manifest and sign again"
    )]
    BadPath { path: String },
}

/// The layers, config and manifest of the bundle in `dir`, and the runbook they carry.
pub fn pack(dir: &Path) -> Result<(Vec<ImageLayer>, Config, OciImageManifest, Runbook), PackError> {
    let shown = dir.display().to_string();
    let runbook = Runbook::load(dir).map_err(|e| PackError::Manifest(e.to_string()))?;
    // Read as the host reads a bundle: bounded, inside the folder, never through a symlink out.
    let root =
        cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority()).map_err(|e| {
            PackError::Read {
                path: shown.clone(),
                why: e.to_string(),
            }
        })?;
    let sig_bytes = match themis_core::files::read_in(
        &root,
        Path::new(SIGNATURE_FILE),
        themis_core::files::limits::SIGNATURE,
    ) {
        Ok(b) => b,
        Err(themis_core::files::FileError::NotFound) => {
            return Err(PackError::Unsigned { dir: shown });
        }
        Err(e) => {
            return Err(PackError::Read {
                path: dir.join(SIGNATURE_FILE).display().to_string(),
                why: e.to_string(),
            });
        }
    };
    let sig: SignatureFile =
        serde_json::from_slice(&sig_bytes).map_err(|e| PackError::StaleSignature {
            dir: shown.clone(),
            why: format!("it cannot be read: {e}"),
        })?;
    let stale = |why: String| PackError::StaleSignature {
        dir: shown.clone(),
        why,
    };
    if sig.runbook != runbook.id || sig.version != runbook.version.to_string() {
        return Err(stale(format!(
            "it signs {} {}, the manifest says {} {}",
            sig.runbook, sig.version, runbook.id, runbook.version
        )));
    }
    if sig.manifest != themis_core::digest(&runbook.manifest_bytes) {
        return Err(stale("manifest.yaml changed".into()));
    }
    let components: BTreeMap<String, String> = runbook
        .steps
        .iter()
        .map(|s| (s.component.clone(), s.component_digest.clone()))
        .collect();
    if components != sig.components {
        return Err(stale("a component changed".into()));
    }

    let titled = |path: &str| Some(BTreeMap::from([(TITLE.to_owned(), path.to_owned())]));
    let mut layers = vec![ImageLayer::new(
        runbook.manifest_bytes.to_vec(),
        MANIFEST_MEDIA_TYPE.into(),
        titled(MANIFEST_FILE),
    )];
    // The very bytes the manifest's load hashed and the signature covers, not a second read.
    for path in components.keys() {
        if expected_for(path).is_none() {
            return Err(PackError::BadPath { path: path.clone() });
        }
        let bytes = runbook
            .steps
            .iter()
            .find(|s| &s.component == path)
            .map(|s| s.component_bytes.to_vec())
            .unwrap_or_default();
        layers.push(ImageLayer::new(
            bytes,
            COMPONENT_MEDIA_TYPE.into(),
            titled(path),
        ));
    }
    layers.push(ImageLayer::new(
        sig_bytes,
        SIGNATURE_MEDIA_TYPE.into(),
        titled(SIGNATURE_FILE),
    ));

    let config = BundleConfig {
        runbook: runbook.id.clone(),
        version: runbook.version.to_string(),
        domain: runbook.domain.to_string(),
        signer: sig.key_id.clone(),
        manifest: sig.manifest.clone(),
    };
    let config = Config::new(
        serde_json::to_vec(&config).map_err(|e| PackError::Manifest(e.to_string()))?,
        CONFIG_MEDIA_TYPE.into(),
        None,
    );
    let annotations = BTreeMap::from([
        (
            "org.opencontainers.image.title".to_owned(),
            runbook.id.clone(),
        ),
        (
            "org.opencontainers.image.version".to_owned(),
            runbook.version.to_string(),
        ),
        (
            "org.opencontainers.image.description".to_owned(),
            runbook.description.trim().to_owned(),
        ),
    ]);
    let mut manifest = OciImageManifest::build(&layers, &config, Some(annotations));
    manifest.artifact_type = Some(ARTIFACT_TYPE.into());
    Ok((layers, config, manifest, runbook))
}

/// Why a pulled manifest is not a bundle this host unpacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("the artifact is a `{0}`, not a Themis runbook bundle ({ARTIFACT_TYPE})")]
    NotABundle(String),
    #[error("the artifact has {0} layers; a bundle has at most {MAX_LAYERS}")]
    TooManyLayers(usize),
    #[error("a layer has no `{TITLE}` annotation: where it goes is unknown")]
    Untitled,
    #[error(
        "layer `{0}` is not a bundle path (manifest.yaml, runbook.sig or components/NAME.wasm)"
    )]
    BadPath(String),
    #[error("layer `{path}` has media type `{found}`, expected `{expected}`")]
    MediaType {
        path: String,
        found: String,
        expected: &'static str,
    },
    #[error("layer `{0}` appears twice")]
    Duplicate(String),
    #[error("the artifact lacks `{0}`")]
    Missing(&'static str),
    #[error("layer `{path}` declares {size} bytes; the limit is {limit}")]
    TooLarge { path: String, size: i64, limit: u64 },
    #[error("layer `{path}` names its content `{digest}`, not sha256:<64 lowercase hex digits>")]
    BadDigest { path: String, digest: String },
}

/// Check a pulled manifest's layout before any blob is fetched: its type, each layer's path and
/// media type, sizes within the limits a local bundle has. Returns each layer with its path.
pub fn check_layout(
    manifest: &OciImageManifest,
) -> Result<Vec<(String, OciDescriptor)>, LayoutError> {
    let kind = manifest
        .artifact_type
        .clone()
        .unwrap_or_else(|| manifest.config.media_type.clone());
    if kind != ARTIFACT_TYPE {
        return Err(LayoutError::NotABundle(kind));
    }
    if manifest.layers.len() > MAX_LAYERS {
        return Err(LayoutError::TooManyLayers(manifest.layers.len()));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for layer in &manifest.layers {
        let path = layer
            .annotations
            .as_ref()
            .and_then(|a| a.get(TITLE))
            .ok_or(LayoutError::Untitled)?
            .clone();
        let (expected, limit) =
            expected_for(&path).ok_or_else(|| LayoutError::BadPath(path.clone()))?;
        if layer.media_type != expected {
            return Err(LayoutError::MediaType {
                path,
                found: layer.media_type.clone(),
                expected,
            });
        }
        if layer.size < 0 || layer.size as u64 > limit {
            return Err(LayoutError::TooLarge {
                path,
                size: layer.size,
                limit,
            });
        }
        // The digest names the blob in the URL asked for it: nothing but a digest goes there.
        if !is_sha256(&layer.digest) {
            return Err(LayoutError::BadDigest {
                path,
                digest: layer.digest.clone(),
            });
        }
        if !seen.insert(path.clone()) {
            return Err(LayoutError::Duplicate(path));
        }
        out.push((path, layer.clone()));
    }
    for required in [MANIFEST_FILE, SIGNATURE_FILE] {
        if !seen.contains(required) {
            return Err(LayoutError::Missing(required));
        }
    }
    Ok(out)
}

fn is_sha256(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The media type and size limit a bundle path may have; `None` for a path outside the layout
/// (absolute, `..`, hidden, nested, or not a component).
fn expected_for(path: &str) -> Option<(&'static str, u64)> {
    use themis_core::files::limits;
    match path {
        MANIFEST_FILE => Some((MANIFEST_MEDIA_TYPE, limits::MANIFEST)),
        SIGNATURE_FILE => Some((SIGNATURE_MEDIA_TYPE, limits::SIGNATURE)),
        _ => {
            let name = path.strip_prefix("components/")?.strip_suffix(".wasm")?;
            let plain = !name.is_empty()
                && !name.starts_with('.')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            plain.then_some((COMPONENT_MEDIA_TYPE, limits::COMPONENT))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bundle_paths_are_unpacked() {
        assert!(expected_for("manifest.yaml").is_some());
        assert!(expected_for("components/check-lag.wasm").is_some());
        for bad in [
            "../manifest.yaml",
            "/etc/passwd",
            "components/../../x.wasm",
            "components/.hidden.wasm",
            "components/a/b.wasm",
            "components/x.so",
            "steps/x/src/lib.rs",
            "components/.wasm",
        ] {
            assert!(expected_for(bad).is_none(), "{bad} was accepted");
        }
    }

    #[test]
    fn only_a_sha256_digest_names_a_blob() {
        assert!(is_sha256(&format!("sha256:{}", "0a".repeat(32))));
        for bad in [
            format!("sha256:{}", "0A".repeat(32)),
            format!("sha256:{}", "0".repeat(63)),
            format!("sha256:{}/../../x", "0".repeat(64)),
            format!("sha512:{}", "0".repeat(64)),
            format!("sha256:{}?x", "0".repeat(63)),
            String::new(),
        ] {
            assert!(!is_sha256(&bad), "{bad} was accepted");
        }
    }
}
