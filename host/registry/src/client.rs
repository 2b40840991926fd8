//! Push a signed bundle folder to a registry; pull one into a folder, verified before it lands.

use crate::artifact::{self, LayoutError, PackError};
use crate::auth::{self, Credentials};
use crate::reference::BundleRef;
use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciImageManifest};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use themis_core::manifest::Runbook;
use themis_core::trust::{self, Refusal, TrustPolicy};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// A manifest bigger than this is not one of ours (a bundle's is a few KiB).
const MAX_MANIFEST: usize = 256 << 10;

/// What a registry said, in the words an operator acts on.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "cannot reach the registry {registry}: {why} (is it running, and is the address right?)"
    )]
    Unreachable { registry: String, why: String },
    #[error(
        "the registry {registry} refused the credentials from {from}: log in (`docker login {registry}`) or set {}/{}",
        auth::USERNAME_ENV,
        auth::PASSWORD_ENV
    )]
    Unauthorized { registry: String, from: String },
    #[error("{reference} does not exist in the registry")]
    NotFound { reference: String },
    #[error(
        "a blob does not match its digest ({0}): the registry or the path to it altered the content; nothing was kept"
    )]
    Tampered(String),
    #[error("the registry {registry} answered: {why}")]
    Other { registry: String, why: String },
}

fn registry_error(e: OciDistributionError, r: &BundleRef, creds: &Credentials) -> RegistryError {
    let registry = r.registry().to_owned();
    let unauthorized = || RegistryError::Unauthorized {
        registry: registry.clone(),
        from: creds.source.clone(),
    };
    match e {
        OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
            RegistryError::Unreachable {
                registry,
                why: if e.is_timeout() {
                    "timed out".into()
                } else {
                    "connection refused or failed".into()
                },
            }
        }
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => unauthorized(),
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => unauthorized(),
        OciDistributionError::ImageManifestNotFoundError(_) => RegistryError::NotFound {
            reference: r.to_string(),
        },
        OciDistributionError::ServerError { code: 404, .. } => RegistryError::NotFound {
            reference: r.to_string(),
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                unauthorized()
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                RegistryError::NotFound {
                    reference: r.to_string(),
                }
            } else {
                RegistryError::Other {
                    registry,
                    why: envelope.to_string(),
                }
            }
        }
        OciDistributionError::DigestError(d) => RegistryError::Tampered(d.to_string()),
        other => RegistryError::Other {
            registry,
            why: other.to_string(),
        },
    }
}

fn client_for(r: &BundleRef) -> Client {
    Client::new(ClientConfig {
        protocol: if r.is_loopback() {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..ClientConfig::default()
    })
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error(
        "push to a tag, not a digest: oci://HOST/REPOSITORY:TAG (the digest is what the push returns)"
    )]
    DigestGiven,
    #[error(
        "the repository `{repository}` must end in the runbook's id `{id}` (agents check a pulled bundle against it): push to …/{id}:{version}"
    )]
    NameMismatch {
        repository: String,
        id: String,
        version: String,
    },
    #[error("credentials: {0}")]
    Credentials(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Pushed {
    pub runbook: String,
    pub version: String,
    pub digest: String,
    /// The reference an agent's catalog should name: the repository pinned by digest.
    pub pinned: String,
}

/// Push the signed bundle in `dir` to `r` (a tag).
pub async fn push(dir: &Path, r: &BundleRef) -> Result<Pushed, PushError> {
    if r.digest().is_some() {
        return Err(PushError::DigestGiven);
    }
    let (layers, config, manifest, runbook) = artifact::pack(dir)?;
    if r.runbook_id() != runbook.id {
        return Err(PushError::NameMismatch {
            repository: r.repository().to_owned(),
            id: runbook.id.clone(),
            version: runbook.version.to_string(),
        });
    }
    let creds = auth::for_registry(r.registry()).map_err(PushError::Credentials)?;
    let client = client_for(r);
    client
        .push(r.oci(), &layers, config, &creds.auth, Some(manifest))
        .await
        .map_err(|e| registry_error(e, r, &creds))?;
    let digest = client
        .fetch_manifest_digest(r.oci(), &creds.auth)
        .await
        .map_err(|e| registry_error(e, r, &creds))?;
    tracing::info!(runbook = %runbook.id, version = %runbook.version, %digest, reference = %r, "bundle pushed");
    Ok(Pushed {
        runbook: runbook.id,
        version: runbook.version.to_string(),
        pinned: r.pinned(&digest),
        digest,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0} already exists: pull into a new folder (or remove it first)")]
    DestExists(String),
    #[error("cannot prepare {dir}: {why}")]
    Local { dir: String, why: String },
    #[error("credentials: {0}")]
    Credentials(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the manifest's digest is {found}, not the pinned {pinned}: refused")]
    PinMismatch { pinned: String, found: String },
    #[error("the artifact is not a readable bundle: {0}")]
    Layout(String),
    #[error("the pulled bundle is `{found}`, but the reference names `{expected}`: refused")]
    NameMismatch { expected: String, found: String },
    #[error("the pulled bundle is refused: {0}")]
    Refused(#[from] Refusal),
    #[error("the pulled bundle's manifest is invalid: {0}")]
    Manifest(String),
}

impl PullError {
    /// The registry could not be asked (as opposed to: it answered with something refused).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, PullError::Registry(RegistryError::Unreachable { .. }))
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Pulled {
    pub runbook: String,
    pub version: String,
    pub digest: String,
    pub signer: String,
    pub dir: PathBuf,
}

/// Pull `r` into the new folder `dest`: the manifest checked against its pin, every blob against
/// its digest and the layout, then the unpacked bundle against `policy` (signature by a trusted
/// key, minimum versions) — all before `dest` exists. On any error nothing is left behind.
pub async fn pull(r: &BundleRef, dest: &Path, policy: &TrustPolicy) -> Result<Pulled, PullError> {
    if dest.exists() {
        return Err(PullError::DestExists(dest.display().to_string()));
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let local = |why: String| PullError::Local {
        dir: parent.display().to_string(),
        why,
    };
    std::fs::create_dir_all(&parent).map_err(|e| local(e.to_string()))?;
    let creds = auth::for_registry(r.registry()).map_err(PullError::Credentials)?;
    let client = client_for(r);
    let fail = |e| PullError::Registry(registry_error(e, r, &creds));

    let (bytes, _) = client
        .pull_manifest_raw(r.oci(), &creds.auth, &[OCI_IMAGE_MEDIA_TYPE])
        .await
        .map_err(fail)?;
    if bytes.len() > MAX_MANIFEST {
        return Err(PullError::Layout(format!(
            "its manifest is {} bytes; a bundle's is at most {MAX_MANIFEST}",
            bytes.len()
        )));
    }
    // The digest of the bytes received, not the one the registry claims in a header.
    let digest = themis_core::digest(&bytes);
    if let Some(pinned) = r.digest()
        && pinned != digest
    {
        return Err(PullError::PinMismatch {
            pinned: pinned.to_owned(),
            found: digest,
        });
    }
    let manifest: OciImageManifest =
        serde_json::from_slice(&bytes).map_err(|e| PullError::Layout(e.to_string()))?;
    let layers = artifact::check_layout(&manifest)
        .map_err(|e: LayoutError| PullError::Layout(e.to_string()))?;

    let staging = tempfile::Builder::new()
        .prefix(".themis-pull-")
        .tempdir_in(&parent)
        .map_err(|e| local(e.to_string()))?;
    for (path, layer) in &layers {
        let mut sink = Capped::new(layer.size as usize);
        client
            .pull_blob(r.oci(), layer, &mut sink)
            .await
            .map_err(fail)?;
        let file = staging.path().join(path);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| local(e.to_string()))?;
        }
        std::fs::write(&file, sink.buf).map_err(|e| local(e.to_string()))?;
    }

    // Exactly what the host does with a local bundle before compiling it.
    let signature = trust::check_signature(staging.path(), policy)?;
    let runbook = Runbook::load(staging.path()).map_err(|e| PullError::Manifest(e.to_string()))?;
    let signer = trust::check_bundle(&runbook, signature.as_ref(), policy)?;
    if runbook.id != r.runbook_id() {
        return Err(PullError::NameMismatch {
            expected: r.runbook_id().to_owned(),
            found: runbook.id,
        });
    }
    std::fs::rename(staging.path(), dest).map_err(|e| local(e.to_string()))?;
    tracing::info!(runbook = %runbook.id, version = %runbook.version, %digest, reference = %r, "bundle pulled and verified");
    Ok(Pulled {
        runbook: runbook.id,
        version: runbook.version.to_string(),
        digest,
        signer: signer.to_string(),
        dir: dest.to_path_buf(),
    })
}

/// A blob sink that refuses more bytes than the descriptor declared, so a registry cannot make a
/// pull hold more than the layout's limits.
struct Capped {
    buf: Vec<u8>,
    cap: usize,
}

impl Capped {
    fn new(cap: usize) -> Capped {
        Capped {
            buf: Vec::with_capacity(cap.min(1 << 20)),
            cap,
        }
    }
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.buf.len() + data.len() > self.cap {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "the blob is longer than its declared {} bytes",
                self.cap
            ))));
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
