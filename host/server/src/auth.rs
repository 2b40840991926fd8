//! Who is calling: the bearer token of `Authorization: Bearer …` (what Alertmanager's
//! `http_config.authorization` sends), checked against the intake tokens or the approvers'.
//! The identity of an answer comes from the token, never from the body.

use crate::app::AppState;
use crate::error::ApiError;
use axum::http::{HeaderMap, header};
use themis_core::identity::Identity;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// An alert source: one of the intake tokens.
pub fn intake(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    intake_by(&state.config, headers)
}

/// An alert source, by `config`'s intake tokens (a host standing by has no runtime yet).
pub fn intake_by(config: &crate::config::ServeConfig, headers: &HeaderMap) -> Result<(), ApiError> {
    match bearer(headers) {
        Some(token) if config.intake_token_ok(token) => Ok(()),
        Some(_) => Err(ApiError::unauthorized(
            "the bearer token is not an intake token",
        )),
        None => Err(ApiError::unauthorized(
            "missing `Authorization: Bearer <intake token>`",
        )),
    }
}

/// A human: the approver the token belongs to.
pub fn approver(state: &AppState, headers: &HeaderMap) -> Result<Identity, ApiError> {
    let token = bearer(headers).ok_or_else(|| {
        ApiError::unauthorized("missing `Authorization: Bearer <approver token>`")
    })?;
    state
        .config
        .approvers
        .identify(token)
        .map_err(|e| ApiError::unauthorized(e.to_string()))
}

/// A reader of the read API: an approver or an alert source — by bearer token, or by the
/// operator page's session cookie (a browser's event stream cannot send a token).
pub fn reader(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    reader_kind(state, headers).map(|_| ())
}

/// Who reads: an approver, or only a reader (an intake token, or a reader's page session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderKind {
    Approver,
    Reader,
}

/// [`reader`], saying which kind: what is kept for approvers (event streams) is not for
/// the lowest-trust credential to take.
pub fn reader_kind(state: &AppState, headers: &HeaderMap) -> Result<ReaderKind, ApiError> {
    if bearer(headers).is_none()
        && let Some(session) = state.page.sessions.get(headers)
    {
        return Ok(match session.who {
            Some(_) => ReaderKind::Approver,
            None => ReaderKind::Reader,
        });
    }
    match bearer(headers) {
        Some(token) if state.config.approvers.identify(token).is_ok() => Ok(ReaderKind::Approver),
        Some(token) if state.config.intake_token_ok(token) => Ok(ReaderKind::Reader),
        Some(_) => Err(ApiError::unauthorized(
            "the bearer token is neither an approver's nor an intake token",
        )),
        None => Err(ApiError::unauthorized(
            "missing `Authorization: Bearer <token>`",
        )),
    }
}
