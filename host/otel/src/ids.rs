//! Deterministic ids: a trace per incident, a span per thing that happened in it.

use sha2::{Digest, Sha256};

fn hash(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

/// The trace of an incident.
pub fn trace(incident: &str) -> [u8; 16] {
    let h = hash(&["themis-trace-v1", incident]);
    let mut id = [0; 16];
    id.copy_from_slice(&h[..16]);
    id
}

/// A span of an incident, named by what it covers (`incident`, `state:triaging:3`, …).
pub fn span(incident: &str, what: &str) -> [u8; 8] {
    let h = hash(&["themis-span-v1", incident, what]);
    let mut id = [0; 8];
    id.copy_from_slice(&h[..8]);
    // An all-zero id is invalid in OTel; a hash landing there is astronomically unlikely, but
    // the id must never be invalid.
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}
