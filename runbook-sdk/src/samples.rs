//! Helpers for reading PromQL samples.

use crate::caps::Sample;

/// The value of label `key` on a sample.
pub fn label<'a>(sample: &'a Sample, key: &str) -> Option<&'a str> {
    sample
        .labels
        .iter()
        .find(|p| p.key == key)
        .map(|p| p.value.as_str())
}

/// The sample with the largest value (NaNs ignored).
pub fn max(samples: &[Sample]) -> Option<&Sample> {
    samples
        .iter()
        .filter(|s| !s.value.is_nan())
        .max_by(|a, b| a.value.total_cmp(&b.value))
}

/// A sample for unit tests: `sample(&[("broker", "1")], 2.5)`.
pub fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
    Sample {
        labels: labels
            .iter()
            .map(|(k, v)| crate::types::Pair {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        value,
    }
}
