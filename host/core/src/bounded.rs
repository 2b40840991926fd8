//! Values kept in records stay small: anything larger than its budget is replaced by its size, a
//! digest and a short preview, so one hostile output cannot make one record (or the host) huge.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const PREVIEW_CHARS: usize = 240;

/// `value`, or its summary when its JSON is larger than `max_bytes`.
pub fn bound(value: Value, max_bytes: usize) -> Value {
    let Ok(bytes) = serde_json::to_vec(&value) else {
        return json!({ "summarised": true, "error": "not serialisable" });
    };
    bound_serialised(value, &bytes, max_bytes)
}

/// [`bound`] for a value whose serialisation the caller already has: it is not made again.
pub fn bound_serialised(value: Value, bytes: &[u8], max_bytes: usize) -> Value {
    if bytes.len() <= max_bytes {
        return value;
    }
    summary(bytes)
}

/// The summary of JSON bytes that were too large to keep.
pub fn summary(bytes: &[u8]) -> Value {
    let preview: String = String::from_utf8_lossy(&bytes[..bytes.len().min(PREVIEW_CHARS * 4)])
        .chars()
        .take(PREVIEW_CHARS)
        .collect();
    json!({
        "summarised": true,
        "bytes": bytes.len(),
        "sha256": hex::encode(Sha256::digest(bytes)),
        "preview": preview,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_stay_and_large_ones_become_a_digest() {
        assert_eq!(bound(json!({"a": 1}), 100), json!({"a": 1}));
        let big = json!({ "log": "x".repeat(10_000) });
        let b = bound(big, 1000);
        assert_eq!(b["summarised"], true);
        assert_eq!(b["bytes"], 10_010);
        assert!(serde_json::to_vec(&b).expect("json").len() < 1000);
    }
}
