//! `metrics.query` against the Prometheus HTTP API (`GET /api/v1/query`).
//!
//! What a step gets: a vector's samples as they are; a scalar as one sample without labels; a
//! matrix (an instant query of a range selector) as each series' newest point. A value
//! Prometheus cannot give (`NaN`, a series that does not exist) is *unknown*: `NaN` stays `NaN`
//! and a missing series is an empty list — never a 0 a rule could mistake for "healthy".
//! Prometheus' own errors become capability errors: a bad query is `invalid-argument`, a query
//! timeout or an unreachable server `unavailable` (tried again with backoff: every call is a
//! read), anything else `failed`.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use themis_caps::MetricsCaps;
use themis_caps::types::{CapError, CapResult, Sample};
use themis_core::types::Pair;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most series one query may answer; a broader query is refused, not truncated.
pub const MAX_SERIES: usize = 2_000;
/// The largest answer read from Prometheus.
pub const MAX_BODY_BYTES: usize = 4 << 20;
const ATTEMPTS: u32 = 3;
const BACKOFF: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct PrometheusSettings {
    /// The server's base URL, e.g. `http://127.0.0.1:9090` (a path prefix is kept).
    pub url: String,
    pub bearer_token: Option<String>,
    /// Sent as the query's `timeout` and enforced on the request.
    pub timeout: Duration,
}

impl PrometheusSettings {
    pub fn new(url: impl Into<String>) -> Self {
        PrometheusSettings {
            url: url.into(),
            bearer_token: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl fmt::Debug for PrometheusSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusSettings")
            .field("url", &self.url)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

pub struct PrometheusBackend {
    client: reqwest::Client,
    settings: PrometheusSettings,
}

/// Prometheus' answer envelope.
#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Vector(Vec<Series>),
    Matrix(Vec<Series>),
    Scalar(Point),
    String(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct Series {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    #[serde(default)]
    value: Option<Point>,
    #[serde(default)]
    values: Vec<Point>,
}

/// `[unix seconds, "value"]`.
#[derive(Deserialize)]
struct Point(#[allow(dead_code)] f64, String);

/// What `status/buildinfo` says, for `themis doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doctor {
    pub version: String,
}

impl PrometheusBackend {
    pub fn new(settings: PrometheusSettings) -> Result<Self, String> {
        let base = reqwest::Url::parse(&settings.url)
            .map_err(|e| format!("url `{}`: {e}", settings.url))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(format!("url `{}`: use http:// or https://", settings.url));
        }
        let client = reqwest::Client::builder()
            .timeout(settings.timeout + Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(PrometheusBackend { client, settings })
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}/{path}", self.settings.url.trim_end_matches('/'))
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.get(self.endpoint(path));
        match &self.settings.bearer_token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Reach the server and read its version.
    pub async fn doctor(&self) -> Result<Doctor, String> {
        let body = self
            .fetch(self.get("api/v1/status/buildinfo"))
            .await
            .map_err(|e| e.to_string())?;
        let version = body
            .pointer("/data/version")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned();
        Ok(Doctor { version })
    }

    /// Send, read a bounded body, and decode Prometheus' envelope (its errors included).
    async fn fetch(&self, request: reqwest::RequestBuilder) -> CapResult<Value> {
        let mut response = request
            .send()
            .await
            .map_err(|e| CapError::Unavailable(format!("Prometheus unreachable: {}", chain(&e))))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| CapError::Unavailable(format!("Prometheus answer cut off: {e}")))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(CapError::Failed(format!(
                    "Prometheus answered more than {MAX_BODY_BYTES} bytes: narrow the query"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let value: Value = serde_json::from_slice(&body).map_err(|e| {
            let kind = if status.is_server_error() {
                CapError::Unavailable
            } else {
                CapError::Failed
            };
            kind(format!(
                "Prometheus answered {status} that is not its API's JSON: {e}"
            ))
        })?;
        if value.get("status").and_then(Value::as_str) == Some("error") {
            let envelope: Envelope = serde_json::from_value(value)
                .map_err(|e| CapError::Failed(format!("Prometheus error not understood: {e}")))?;
            return Err(api_error(&envelope, status));
        }
        if !status.is_success() {
            return Err(CapError::Failed(format!("Prometheus answered {status}")));
        }
        Ok(value)
    }

    async fn query_once(&self, promql: &str) -> CapResult<Vec<Sample>> {
        let timeout = format!("{}ms", self.settings.timeout.as_millis());
        let value = self
            .fetch(
                self.get("api/v1/query")
                    .query(&[("query", promql), ("timeout", timeout.as_str())]),
            )
            .await?;
        let envelope: Envelope = serde_json::from_value(value)
            .map_err(|e| CapError::Failed(format!("Prometheus answer not understood: {e}")))?;
        if envelope.status != "success" {
            return Err(api_error(&envelope, reqwest::StatusCode::OK));
        }
        samples(envelope.data)
    }
}

/// An error with its causes ("error sending request" alone does not say "connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn api_error(envelope: &Envelope, status: reqwest::StatusCode) -> CapError {
    let kind = envelope.error_type.as_deref().unwrap_or("unknown");
    let message = format!(
        "Prometheus: {kind}: {}",
        envelope.error.as_deref().unwrap_or("no message")
    );
    match kind {
        "bad_data" => CapError::InvalidArgument(message),
        "timeout" | "canceled" | "unavailable" => CapError::Unavailable(message),
        _ if status.is_server_error() => CapError::Unavailable(message),
        _ => CapError::Failed(message),
    }
}

fn value(point: &Point) -> CapResult<f64> {
    // Prometheus writes NaN, +Inf and -Inf as those words; Rust parses all three.
    point.1.parse::<f64>().map_err(|_| {
        CapError::Failed(format!(
            "Prometheus sample value `{}` is not a number",
            point.1
        ))
    })
}

fn labels(metric: BTreeMap<String, String>) -> Vec<Pair> {
    metric
        .into_iter()
        .map(|(key, value)| Pair { key, value })
        .collect()
}

fn samples(data: Option<Data>) -> CapResult<Vec<Sample>> {
    let Some(data) = data else {
        return Err(CapError::Failed(
            "Prometheus answered success without data".into(),
        ));
    };
    let series = match data {
        Data::Scalar(point) => {
            return Ok(vec![Sample {
                labels: Vec::new(),
                value: value(&point)?,
            }]);
        }
        Data::String(_) => {
            return Err(CapError::InvalidArgument(
                "the query yields a string, not samples".into(),
            ));
        }
        Data::Vector(series) | Data::Matrix(series) => series,
    };
    if series.len() > MAX_SERIES {
        return Err(CapError::Failed(format!(
            "the query matched {} series, more than {MAX_SERIES}: narrow it with labels or an aggregation",
            series.len()
        )));
    }
    let mut out = Vec::with_capacity(series.len());
    for s in series {
        // A vector's series has `value`; a matrix's its newest of `values`.
        let point = match (s.value, s.values.last()) {
            (Some(p), _) => value(&p)?,
            (None, Some(p)) => value(p)?,
            (None, None) => continue,
        };
        out.push(Sample {
            labels: labels(s.metric),
            value: point,
        });
    }
    Ok(out)
}

#[async_trait]
impl MetricsCaps for PrometheusBackend {
    async fn query(&self, promql: &str) -> CapResult<Vec<Sample>> {
        let mut backoff = BACKOFF;
        let mut attempt = 1;
        loop {
            match self.query_once(promql).await {
                Err(CapError::Unavailable(why)) if attempt < ATTEMPTS => {
                    tracing::warn!(attempt, %why, "Prometheus query failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(v: Value) -> CapResult<Vec<Sample>> {
        let e: Envelope = serde_json::from_value(v).map_err(|e| CapError::Failed(e.to_string()))?;
        samples(e.data)
    }

    #[test]
    fn nan_stays_unknown_and_a_matrix_gives_the_newest_point() {
        let v = decode(
            json!({"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"job":"pg"},"value":[1.0,"NaN"]}]}}),
        );
        let v = v.unwrap_or_default();
        assert_eq!(v.len(), 1);
        assert!(v[0].value.is_nan());
        let m = decode(
            json!({"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{},"values":[[1.0,"1"],[2.0,"7"]]}]}}),
        );
        assert_eq!(m.map(|s| s[0].value).ok(), Some(7.0));
    }

    #[test]
    fn a_string_result_is_not_samples() {
        let s =
            decode(json!({"status":"success","data":{"resultType":"string","result":[1.0,"x"]}}));
        assert!(matches!(s, Err(CapError::InvalidArgument(_))));
    }
}
