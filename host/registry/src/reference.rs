//! `oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]`: where a bundle lives.

use oci_client::Reference;
use std::fmt;

pub const SCHEME: &str = "oci://";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error(
        "`{0}` is not an OCI reference: write oci://HOST/REPOSITORY:TAG or oci://HOST/REPOSITORY@sha256:DIGEST"
    )]
    NoScheme(String),
    #[error("`{given}` is not a valid OCI reference: {why}")]
    Invalid { given: String, why: String },
    #[error(
        "`{0}` names no registry host: write oci://HOST/REPOSITORY:TAG (e.g. oci://registry.example.com/sre/restart-consumer-group:1.3.0)"
    )]
    NoHost(String),
    #[error("`{0}` has a digest that is not sha256:<64 hex>")]
    BadDigest(String),
}

/// A parsed bundle reference; the repository's last segment is the runbook's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleRef {
    text: String,
    reference: Reference,
}

impl BundleRef {
    pub fn parse(text: &str) -> Result<BundleRef, RefError> {
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| RefError::NoScheme(text.to_owned()))?;
        // Without a dot, a colon or `localhost` before the first slash, the OCI parser would
        // quietly read the host as a Docker Hub namespace: a bundle must name its registry.
        let host = rest.split('/').next().unwrap_or_default();
        if !rest.contains('/') || !(host.contains('.') || host.contains(':') || host == "localhost")
        {
            return Err(RefError::NoHost(text.to_owned()));
        }
        let reference: Reference = rest.parse().map_err(|e| RefError::Invalid {
            given: text.to_owned(),
            why: format!("{e}"),
        })?;
        if let Some(digest) = reference.digest() {
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(RefError::BadDigest(text.to_owned()));
            }
        }
        Ok(BundleRef {
            text: text.to_owned(),
            reference,
        })
    }

    pub fn oci(&self) -> &Reference {
        &self.reference
    }

    pub fn registry(&self) -> &str {
        self.reference.registry()
    }

    pub fn repository(&self) -> &str {
        self.reference.repository()
    }

    /// The runbook id this reference must carry: the repository's last segment.
    pub fn runbook_id(&self) -> &str {
        self.repository().rsplit('/').next().unwrap_or_default()
    }

    /// The `sha256:…` pin, if the reference has one.
    pub fn digest(&self) -> Option<&str> {
        self.reference.digest()
    }

    /// The same repository, pinned to `digest`.
    pub fn pinned(&self, digest: &str) -> String {
        format!("{SCHEME}{}/{}@{digest}", self.registry(), self.repository())
    }

    /// Plain HTTP only for loopback registries (as Docker does); TLS everywhere else.
    pub fn is_loopback(&self) -> bool {
        let host = self.registry();
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        matches!(name, "localhost" | "127.0.0.1" | "[::1]")
    }
}

impl fmt::Display for BundleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tags_and_digests_and_names_the_runbook() {
        let r = BundleRef::parse("oci://127.0.0.1:5000/sre/kafka/restart-consumer-group:1.3.0")
            .expect("valid");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "sre/kafka/restart-consumer-group");
        assert_eq!(r.runbook_id(), "restart-consumer-group");
        assert!(r.is_loopback());
        assert_eq!(r.digest(), None);
        let pin = format!("oci://registry.example.com/sre/x@sha256:{}", "a".repeat(64));
        let r = BundleRef::parse(&pin).expect("valid");
        assert!(!r.is_loopback());
        assert_eq!(r.digest().map(str::len), Some(71));
    }

    #[test]
    fn refuses_what_is_not_a_registry_reference() {
        for bad in [
            "127.0.0.1:5000/x:1",
            "oci://restart-consumer-group:1.0",
            "oci://sre/restart:1.0",
            "oci://registry.example.com/x@sha256:1234",
            "oci://registry.example.com/UPPER:1",
        ] {
            assert!(BundleRef::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
