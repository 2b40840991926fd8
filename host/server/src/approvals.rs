//! Human answers over HTTP: `POST /api/v1/approvals/{id}/approve | reject | adjust`. The
//! approver is the owner of the bearer token; the policy rules (no self-approval, approvers
//! list, expiry, the digest of the plan shown, a second human for a destructive adjusted plan)
//! apply unchanged, in the agent's worker, which claims an approval exactly once: a replayed or
//! concurrent second answer is a 409 and changes nothing.

use crate::app::{AppState, runtime_error};
use crate::auth;
use crate::error::{ApiError, parse_json};
use crate::intake::body;
use crate::views::IncidentView;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use themis_agent::RuntimeError;
use themis_agent::store::Incident;
use themis_core::identity::Identity;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Approve {
    /// The digest of the plan the approver was shown (`GET /api/v1/approvals`).
    plan_digest: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reject {
    reason: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Adjust {
    runbook: String,
    #[serde(default, deserialize_with = "param_texts")]
    #[schema(schema_with = params_schema)]
    params: BTreeMap<String, String>,
    /// The incident's `escalated_at` as the sender saw it: the adjustment answers that
    /// escalation only, and is refused (409) if the incident was escalated again since.
    #[serde(default)]
    escalated_at: Option<String>,
}

/// The documented shape of an adjustment's parameters: what [`param_texts`] takes.
fn params_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    let value = OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .item(ObjectBuilder::new().schema_type(Type::Boolean));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "the runbook's parameters by name: a string, or a number or boolean as `GET /api/v1/approvals` shows a typed one; each is typed again against the runbook's declaration",
        ))
        .additional_properties(Some(utoipa::openapi::schema::Schema::OneOf(value.build())))
        .build()
}

/// Parameters as `GET /api/v1/approvals` shows them: strings, or the numbers and booleans a
/// typed parameter is shown as — each taken as its text, which the agent types again against
/// the runbook's declaration (so `1.5` for an integer is still refused there, by name).
fn param_texts<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    use serde::de::Error;
    let raw: BTreeMap<String, serde_json::Value> = Deserialize::deserialize(d)?;
    raw.into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(s) => Ok((key, s)),
            serde_json::Value::Number(n) => Ok((key, n.to_string())),
            serde_json::Value::Bool(b) => Ok((key, b.to_string())),
            other => Err(D::Error::custom(format!(
                "params.{key}: a string, a number or a boolean, not {}",
                match other {
                    serde_json::Value::Null => "null",
                    serde_json::Value::Array(_) => "a list",
                    _ => "an object",
                }
            ))),
        })
        .collect()
}

/// Who answers (from the token), which approval (checked), and what (the body).
fn answer<T: serde::de::DeserializeOwned>(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(Identity, T), ApiError> {
    let by = auth::approver(state, headers)?;
    check_id(id)?;
    Ok((by, parse_json(&body(raw)?)?))
}

/// The incident an answer leaves, or why it was refused.
fn answered(result: Result<Incident, RuntimeError>) -> Result<Json<IncidentView>, ApiError> {
    result
        .map(|incident| Json(IncidentView::of(&incident)))
        .map_err(runtime_error)
}

fn check_id(id: &str) -> Result<(), ApiError> {
    let ok = id.len() <= 128
        && (id.starts_with("apr-") || id.starts_with("inc-"))
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "`{id}` is not an approval (apr-…) or incident (inc-…) id"
        )))
    }
}

/// Approve exactly the plan shown (its digest); the runbook runs before the answer returns.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/approve", tag = "approvals",
    params(("id" = String, Path, description = "approval id, apr-…")),
    request_body = Approve, security(("approver_token" = [])),
    responses((status = 200, description = "the incident after the answer", body = IncidentView),
        (status = 400, description = "malformed body; `field` names what", body = ApiError),
        (status = 401, description = "no or unknown approver token", body = ApiError),
        (status = 403, description = "policy refuses this answer (self-approval, not an approver, expired, another plan)", body = ApiError),
        (status = 404, description = "no such approval or incident", body = ApiError),
        (status = 409, description = "already answered, or not waiting for an answer", body = ApiError),
        (status = 413, description = "body over the limit", body = ApiError),
        (status = 503, description = "the record could not be written: nothing was done", body = ApiError),
    ))]
pub async fn approve(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<IncidentView>, ApiError> {
    let (by, answer): (_, Approve) = self::answer(&state, &id, &headers, raw)?;
    if !answer.plan_digest.starts_with("sha256:") {
        return Err(ApiError::bad_request(
            "plan_digest",
            "the `sha256:…` digest of the plan you were shown",
        ));
    }
    answered(
        state
            .runtime
            .approve(&id, by, Some(answer.plan_digest))
            .await,
    )
}

/// Reject a pending plan: nothing runs.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/reject", tag = "approvals",
    params(("id" = String, Path, description = "approval id, apr-…")),
    request_body = Reject, security(("approver_token" = [])),
    responses((status = 200, description = "the incident after the answer", body = IncidentView),
        (status = 400, description = "malformed body; `field` names what", body = ApiError),
        (status = 401, description = "no or unknown approver token", body = ApiError),
        (status = 403, description = "policy refuses this answer (self-approval, not an approver, expired, another plan)", body = ApiError),
        (status = 404, description = "no such approval or incident", body = ApiError),
        (status = 409, description = "already answered, or not waiting for an answer", body = ApiError),
        (status = 413, description = "body over the limit", body = ApiError),
        (status = 503, description = "the record could not be written: nothing was done", body = ApiError),
    ))]
pub async fn reject(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<IncidentView>, ApiError> {
    let (by, answer): (_, Reject) = self::answer(&state, &id, &headers, raw)?;
    if answer.reason.trim().is_empty() {
        return Err(ApiError::bad_request("reason", "say why, for the record"));
    }
    answered(state.runtime.reject(&id, by, &answer.reason).await)
}

/// Another runbook of the catalog and/or other parameters; the same policy judges it.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/adjust", tag = "approvals",
    params(("id" = String, Path, description = "approval id (apr-…) or incident id (inc-…)")),
    request_body = Adjust, security(("approver_token" = [])),
    responses((status = 200, description = "the incident after the answer", body = IncidentView),
        (status = 400, description = "malformed body, a runbook not in the agent's catalog, or a parameter the runbook does not declare or that does not fit its type or range; `field` names what (`runbook`, `params.<name>`)", body = ApiError),
        (status = 401, description = "no or unknown approver token", body = ApiError),
        (status = 403, description = "policy refuses this answer (self-approval, not an approver, expired, another plan)", body = ApiError),
        (status = 404, description = "no such approval or incident", body = ApiError),
        (status = 409, description = "already answered, or not waiting for an answer", body = ApiError),
        (status = 413, description = "body over the limit", body = ApiError),
        (status = 503, description = "the record could not be written: nothing was done", body = ApiError),
    ))]
pub async fn adjust(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<IncidentView>, ApiError> {
    let (by, answer): (_, Adjust) = self::answer(&state, &id, &headers, raw)?;
    if answer.runbook.is_empty() {
        return Err(ApiError::bad_request(
            "runbook",
            "a runbook id of the agent's catalog",
        ));
    }
    check_adjustment(&state, &id, &answer).await?;
    answered(
        state
            .runtime
            .adjust_seen(
                &id,
                by,
                &answer.runbook,
                &answer.params,
                answer.escalated_at.clone(),
            )
            .await,
    )
}

/// The runbook and parameters of an adjustment checked against the catalog of the agent that
/// owns `id`, as the agent will check them: the runtime says only that the agent refused (a
/// 404, as for an agent that is gone), where the caller needs the field at fault. An id that
/// names nothing is left to the runtime's 404.
async fn check_adjustment(state: &AppState, id: &str, adjust: &Adjust) -> Result<(), ApiError> {
    use themis_core::manifest::{ParameterError, bind_params, parse_param_text};
    let store = state.runtime.store();
    let incident = if id.starts_with("inc-") {
        store.get(id).await.ok()
    } else {
        store.by_approval(id).await.ok().flatten()
    };
    let Some(agent) = incident.and_then(|incident| {
        state
            .runtime
            .agents()
            .iter()
            .find(|a| a.def.name == incident.agent)
            .cloned()
    }) else {
        return Ok(());
    };
    let Some(loaded) = agent.catalog.get(&adjust.runbook) else {
        return Err(ApiError::bad_request(
            "runbook",
            format!(
                "`{}` is not in agent `{}`'s catalog; choose one of: {}",
                adjust.runbook,
                agent.def.name,
                agent.catalog.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    };
    let declared = &loaded.runbook.parameters;
    let given: BTreeMap<String, serde_json::Value> = adjust
        .params
        .iter()
        .map(|(name, text)| {
            let kind = declared.iter().find(|p| &p.name == name).map(|p| p.kind);
            let value = match kind {
                Some(kind) => parse_param_text(kind, text),
                None => serde_json::Value::String(text.clone()),
            };
            (name.clone(), value)
        })
        .collect();
    bind_params(declared, &given).map(|_| ()).map_err(|e| {
        let name = match &e {
            ParameterError::Unknown(name) | ParameterError::Missing(name) => name,
            ParameterError::WrongType { name, .. }
            | ParameterError::NoMatch { name, .. }
            | ParameterError::OutOfRange { name, .. } => name,
        };
        let declared = declared
            .iter()
            .map(|p| format!("{} ({})", p.name, p.kind))
            .collect::<Vec<_>>()
            .join(", ");
        ApiError::bad_request(
            format!("params.{name}"),
            format!(
                "{e}; `{}` takes: {}",
                adjust.runbook,
                if declared.is_empty() {
                    "no parameters"
                } else {
                    &declared
                }
            ),
        )
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardClear {
    /// The target as `GET /api/v1/guard` shows it, e.g. `kubernetes:name=checkout,namespace=shop`.
    #[schema(pattern = "^[a-z0-9-]+:.+$", min_length = 3, max_length = 512)]
    target: String,
    /// Only this runbook's breaker and cooldown on the target [default: all of them].
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9][a-z0-9-]*$", max_length = 64)]
    runbook: Option<String>,
}

/// `<domain>:<what>`, exactly as the schema's pattern says (a line break is no target).
fn is_target(t: &str) -> bool {
    let n = t.chars().count();
    let Some((domain, what)) = t.split_once(':') else {
        return false;
    };
    (3..=512).contains(&n)
        && !domain.is_empty()
        && domain
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !what.is_empty()
        && !what
            .chars()
            .any(|c| matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}'))
}

/// A runbook id, as the schema's pattern says.
fn is_runbook_id(r: &str) -> bool {
    r.chars().count() <= 64
        && r.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// What a clear lifted.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct GuardCleared {
    pub target: String,
    /// The breakers that were open, by runbook.
    pub breakers: Vec<String>,
}

/// An approver clears a target's circuit breakers and cooldown: automatic runs may resume.
#[utoipa::path(post, path = "/api/v1/guard/clear", tag = "approvals",
    request_body = GuardClear, security(("approver_token" = [])),
    responses((status = 200, description = "what was cleared", body = GuardCleared),
        (status = 400, description = "malformed body; `field` names what", body = ApiError),
        (status = 401, description = "no or unknown approver token", body = ApiError),
        (status = 403, description = "not an approver of an agent of the target's domain", body = ApiError),
        (status = 404, description = "no agent acts on the target's domain", body = ApiError),
        (status = 413, description = "body over the limit", body = ApiError),
        (status = 503, description = "the record could not be written: nothing was done", body = ApiError),
    ))]
pub async fn guard_clear(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<GuardCleared>, ApiError> {
    let by = auth::approver(&state, &headers)?;
    let clear: GuardClear = parse_json(&body(raw)?)?;
    if !is_target(&clear.target) {
        return Err(ApiError::bad_request(
            "target",
            "a target as GET /api/v1/guard shows it: `<domain>:<what>`",
        ));
    }
    if clear.runbook.as_deref().is_some_and(|r| !is_runbook_id(r)) {
        return Err(ApiError::bad_request(
            "runbook",
            "a runbook id: lowercase letters, digits and dashes",
        ));
    }
    let cleared = state
        .runtime
        .clear_guard(&clear.target, clear.runbook.as_deref(), &by)
        .await
        .map_err(runtime_error)?;
    Ok(Json(GuardCleared {
        target: clear.target,
        breakers: cleared.into_iter().map(|b| b.runbook).collect(),
    }))
}

#[cfg(test)]
mod param_tests {
    use super::Adjust;

    #[test]
    fn an_adjustment_takes_parameters_as_the_approvals_list_shows_them() {
        let typed: Adjust = serde_json::from_str(
            r#"{"runbook":"adjust-broker-gc","params":{"broker_id":2,"force":true,"why":"gc"}}"#,
        )
        .expect("typed values as shown");
        assert_eq!(typed.params["broker_id"], "2");
        assert_eq!(typed.params["force"], "true");
        assert_eq!(typed.params["why"], "gc");
        let e = serde_json::from_str::<Adjust>(r#"{"runbook":"x","params":{"ids":[1,2]}}"#)
            .expect_err("a list is no parameter")
            .to_string();
        assert!(
            e.contains("params.ids: a string, a number or a boolean, not a list"),
            "{e}"
        );
    }
}
