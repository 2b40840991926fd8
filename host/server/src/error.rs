//! Every error the API returns: a status and a JSON body `{ "error": code, "message": …,
//! "field"?: … }` that says what to do. Nothing internal (paths, secrets) leaks into it.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    /// A stable code, e.g. `unauthorized`, `bad-request`, `queue-full`.
    #[schema(value_type = String, example = "bad-request")]
    pub error: &'static str,
    pub message: String,
    /// The offending field of the request body, as a path (`alerts[3].labels`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Seconds to wait before retrying (429, 503).
    #[serde(skip)]
    pub retry_after: Option<u32>,
}

/// `field: message`, as a command line prints it.
impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            field: Some(field.into()),
            ..ApiError::new(StatusCode::BAD_REQUEST, "bad-request", message)
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// The host could not keep its record (audit, store): nothing was done.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(5),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(&self)).into_response();
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

/// A JSON body, parsed with the path of the first field that does not fit.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // Every body the API takes is one object; serde's "expected a string at [0]" for a list
    // says nothing of that.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::bad_request(
            "",
            "the body is a JSON list; send one JSON object per request (one alert, one notification, one answer)",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut e = ApiError::bad_request(path.clone(), format!("malformed JSON body: {inner}"));
        // serde_path_to_error says `.` or `?` when no field is at fault (the whole body is).
        if path == "." || path == "?" {
            e.field = None;
        }
        e
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request("", format!("malformed JSON body: {e}")))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::parse_json;

    #[test]
    fn a_list_where_one_object_goes_is_named_as_such() {
        let e = parse_json::<serde_json::Map<String, serde_json::Value>>(b"  [{\"name\":\"X\"}]")
            .expect_err("a list");
        assert!(
            e.message.contains("send one JSON object per request"),
            "{e:?}"
        );
        assert!(
            parse_json::<serde_json::Map<String, serde_json::Value>>(b"{\"name\":\"X\"}").is_ok()
        );
    }
}
