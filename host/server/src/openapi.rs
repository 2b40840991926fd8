//! The OpenAPI document of the whole API, generated from the handlers' annotations and the
//! request and response types (utoipa), served at `/api/v1/openapi.json`.

use crate::{alertmanager, approvals, error, intake, metrics, read, slack, views};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Themis", description = "The sidecar API of Themis, the agentic SRE runbook engine: alert intake, human answers, agents and incidents."),
    paths(
        intake::alertmanager, intake::own,
        read::approvals, approvals::approve, approvals::reject, approvals::adjust,
        approvals::guard_clear,
        slack::interactions,
        read::agents, read::guard, read::incidents, read::incident, read::events,
        read::healthz, read::readyz, metrics::scrape,
    ),
    components(schemas(
        error::ApiError, alertmanager::Notification, alertmanager::AmAlert, alertmanager::OwnAlert,
        intake::IntakeResponse, intake::Taken, views::IncidentView, views::VerificationView, views::ApprovalView,
        views::AnswerView, read::AgentStatus, read::IncidentList, read::IncidentDetail, read::Ready,
        read::GuardStatus, read::BusyTarget, read::OpenBreaker, read::RecentRuns,
        approvals::GuardClear, approvals::GuardCleared,
    )),
    modifiers(&Tokens),
)]
pub struct ApiDoc;

/// The two bearer tokens: alert sources' and approvers'.
struct Tokens;

impl Modify for Tokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["intake_token", "approver_token"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
