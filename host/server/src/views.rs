//! What the read API returns: incidents, approvals and agents as plain JSON with RFC 3339
//! times (the store's own types are for the store).

use serde::Serialize;
use serde_json::Value;
use std::time::SystemTime;
use themis_agent::store::{Incident, IncidentStatus};
use themis_core::types::Pair;
use utoipa::ToSchema;

/// A label or annotation (the schema of `themis_core::types::Pair`).
#[derive(Serialize, ToSchema)]
#[schema(as = Pair)]
#[allow(dead_code)]
pub struct PairDoc {
    pub key: String,
    pub value: String,
}

pub fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovalView {
    pub id: String,
    pub incident: String,
    pub agent: String,
    pub runbook: String,
    pub runbook_version: String,
    #[schema(value_type = Object)]
    pub params: Value,
    pub target: String,
    pub plan_digest: String,
    pub requested_by: String,
    pub requested_at: String,
    pub expires_at: String,
}

impl ApprovalView {
    pub fn of(incident: &Incident) -> Option<ApprovalView> {
        let p = incident.proposal.as_ref()?;
        Some(ApprovalView {
            id: p.id.clone(),
            incident: incident.id.clone(),
            agent: incident.agent.clone(),
            runbook: p.plan.runbook_id.clone(),
            runbook_version: p.plan.runbook_version.clone(),
            params: serde_json::to_value(&p.plan.params).unwrap_or(Value::Null),
            target: p.plan.target.clone(),
            plan_digest: p.plan_digest.clone(),
            requested_by: p.requested_by.name.clone(),
            requested_at: time(p.requested_at),
            expires_at: time(p.expires_at),
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AnswerView {
    pub approval_id: String,
    #[schema(value_type = String, example = "approved")]
    pub kind: Value,
    pub by: String,
    pub via: String,
    pub at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IncidentView {
    pub id: String,
    pub agent: String,
    pub status: IncidentStatus,
    pub alertname: String,
    pub fingerprint: String,
    #[schema(value_type = Vec<PairDoc>)]
    pub labels: Vec<Pair>,
    pub opened_at: String,
    /// Later notifications of the same alert while it was open.
    pub attached_alerts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the source said the alert stopped firing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_resolved_at: Option<String>,
    /// When a human was last told and asked. An adjustment of an incident with no plan waiting
    /// sends it back (`escalated_at`): one sent for an earlier escalation is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalated_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<AnswerView>,
    pub runbooks: Vec<String>,
    /// Whether the last successful run fixed the alert.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationView>,
}

/// A fix being verified, or its verdict.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerificationView {
    pub runbook: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// When the run succeeded (the window counts from here).
    pub started_at: String,
    /// When the watch ends at the latest.
    pub window_ends_at: String,
    /// `effective`, `ineffective`, `unknown`, or `pending` while watched.
    #[schema(example = "effective")]
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The bound PromQL query, if the runbook declares one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Does the alert's source report when it stops firing?
    pub alert_tracked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refired_at: Option<String>,
    /// The newest metric reading's value, if any was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reading: Option<f64>,
}

impl VerificationView {
    fn of(w: &themis_core::verify::Watch) -> VerificationView {
        let at = |secs: u64| time(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        VerificationView {
            runbook: w.runbook.clone(),
            target: w.target.clone(),
            started_at: at(w.started),
            window_ends_at: at(w.ends_at()),
            outcome: w
                .verdict
                .as_ref()
                .map(|v| v.effect.to_string())
                .unwrap_or_else(|| "pending".into()),
            why: w.verdict.as_ref().map(|v| v.why.clone()),
            metric: w.metric.clone(),
            alert_tracked: w.alert_tracked,
            resolved_at: w.resolved_at.map(at),
            refired_at: w.refired_at.map(at),
            last_reading: w.readings.last().and_then(|r| r.value),
        }
    }
}

impl IncidentView {
    pub fn of(i: &Incident) -> IncidentView {
        IncidentView {
            id: i.id.clone(),
            agent: i.agent.clone(),
            status: i.status,
            alertname: i.alert.name.clone(),
            fingerprint: i.fingerprint.clone(),
            labels: i.alert.labels.clone(),
            opened_at: time(i.opened_at),
            attached_alerts: i.attached_alerts,
            reason: i.reason.clone(),
            source_resolved_at: i.source_resolved_at.map(time),
            escalated_at: i.escalated_at.map(time),
            approval: ApprovalView::of(i),
            answer: i.answer.as_ref().map(|a| AnswerView {
                approval_id: a.approval_id.clone(),
                kind: serde_json::to_value(a.kind).unwrap_or(Value::Null),
                by: a.by.name.clone(),
                via: a.by.how(),
                at: time(a.at),
            }),
            runbooks: i.chain.clone(),
            verification: i.verification.as_ref().map(VerificationView::of),
        }
    }
}
