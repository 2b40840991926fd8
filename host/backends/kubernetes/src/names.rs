//! Names checked before any request, as the API server would check them (DNS-1123): a name
//! that could not exist never reaches the cluster, and nothing a label carried can bend a path.

use themis_caps::types::{CapError, CapResult};

/// A namespace: a DNS-1123 label (at most 63 lowercase alphanumerics or '-', alphanumeric at
/// both ends).
pub fn namespace(ns: &str) -> CapResult<()> {
    if label(ns) {
        Ok(())
    } else {
        Err(CapError::InvalidArgument(format!(
            "{ns:?} is not a namespace name (DNS-1123 label: lowercase letters, digits and '-', at most 63)"
        )))
    }
}

/// A pod or deployment name: a DNS-1123 subdomain (at most 253, dot-separated labels).
pub fn name(name: &str) -> CapResult<()> {
    if !name.is_empty() && name.len() <= 253 && name.split('.').all(label) {
        Ok(())
    } else {
        Err(CapError::InvalidArgument(format!(
            "{name:?} is not an object name (DNS-1123 subdomain: lowercase letters, digits, '-' and '.', at most 253)"
        )))
    }
}

fn label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A label selector: the characters selectors are made of, bounded.
pub fn selector(s: &str) -> CapResult<()> {
    let ok = s.len() <= 1024
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=!,() ".contains(c));
    if ok {
        Ok(())
    } else {
        Err(CapError::InvalidArgument(format!(
            "{s:?} is not a label selector (e.g. app=web,tier!=db)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_as_the_api_server_does() {
        for ok in ["default", "kube-system", "a", "web-1"] {
            assert!(namespace(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(64), "../etc"] {
            assert!(namespace(bad).is_err(), "{bad}");
        }
        for ok in ["web", "web-7d4b9c-abcde", "a.b.c"] {
            assert!(name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Web", "a..b", "a/b", "web?x=1", &"x".repeat(254)] {
            assert!(name(bad).is_err(), "{bad}");
        }
        assert!(selector("app=web,tier in (a, b),!canary").is_ok());
        assert!(selector("app=web&x=1").is_err());
    }
}
