//! Proposals the host withdraws: one that expired unanswered (it must not leave its incident
//! pending for good, swallowing every later firing of its alert), and one whose alert resolved
//! at its source before anyone answered (the destructive fix must not run for an alert that is
//! gone). Review defects, found by trying the service as an attacker would.

use crate::common::{HostSpec, TestHost, patched_agent, records, world_alert};
use themis_agent::AlertOutcome;
use themis_agent::store::{IncidentStatus, IncidentStore};
use themis_core::identity::Identity;

const WORLD: &str = "agent-postgres-lock-waits.yaml";

async fn host(dir: &std::path::Path, ttl: &str) -> TestHost {
    let agent = patched_agent(
        dir,
        "agents/postgres.yaml",
        &[("approval_ttl: 15m", &format!("approval_ttl: {ttl}"))],
    );
    let mut spec = HostSpec::new(dir, "agents/postgres.yaml", WORLD);
    spec.agents = vec![agent];
    spec.start().await.expect("host")
}

/// The on-call human approves `proposal` as it was shown.
/// `host` stopped and a new one started on its directory, as after a restart.
async fn restarted(host_before: TestHost, dir: &std::path::Path) -> TestHost {
    let TestHost { runtime, store, .. } = host_before;
    runtime.stop().await;
    // The store's lock goes with its last handle: the next host takes the directory over.
    drop(store);
    host(dir, "15m").await
}

async fn approve_as_oncall(
    host: &TestHost,
    proposal: &themis_core::policy::ApprovalRequest,
) -> Result<themis_agent::store::Incident, themis_agent::RuntimeError> {
    host.runtime
        .approve(
            &proposal.id,
            Identity::scenario("oncall"),
            Some(proposal.plan_digest.clone()),
        )
        .await
}

/// An answer to `incident` was refused on the record, saying `why`, and nothing was adjusted
/// or run.
fn refused_and_nothing_ran(audit: &std::path::Path, incident: &str, why: &str) {
    let records = records(audit);
    assert!(
        !records
            .iter()
            .any(|r| r["kind"] == "adjustment" || r["kind"] == "execution-start"),
        "nothing was adjusted or run"
    );
    assert!(
        records.iter().any(|r| r["kind"] == "approval-refused"
            && r["incident"] == incident
            && r["data"]["error"].as_str().is_some_and(|e| e.contains(why))),
        "the refusal is on the record, saying {why:?}"
    );
}

fn withdrawn(audit: &std::path::Path, incident: &str) -> Vec<serde_json::Value> {
    records(audit)
        .into_iter()
        .filter(|r| r["kind"] == "proposal-withdrawn" && r["incident"] == incident)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_whose_alert_resolved_is_withdrawn_and_cannot_be_approved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = host(dir.path(), "15m").await;
    let alert = world_alert(WORLD);
    let incident = host.new_incident(alert.clone()).await;
    let proposal = incident.proposal.clone().expect("a destructive plan waits");
    let resolved = host
        .runtime
        .handle_resolved(alert.clone())
        .await
        .expect("resolved")
        .expect("recorded on the incident");
    assert_eq!(resolved.status, IncidentStatus::Rejected, "{resolved:#?}");
    assert!(resolved.source_resolved_at.is_some());
    assert!(
        resolved
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("resolved at its source")),
        "{:?}",
        resolved.reason
    );
    let late = approve_as_oncall(&host, &proposal).await;
    let refusal = late
        .expect_err("a withdrawn proposal cannot be approved")
        .to_string();
    // Said as what it is: withdrawn by the host, with the reason — not "answered".
    assert!(
        refusal.contains("withdrawn by the host") && refusal.contains("resolved at its source"),
        "{refusal}"
    );
    assert_eq!(withdrawn(&host.audit_path, &incident.id).len(), 1);
    let terminated = records(&host.audit_path)
        .iter()
        .filter(|r| r["kind"] == "capability-intent")
        .count();
    assert_eq!(terminated, 0, "nothing acted for an alert that was gone");
    // Not pending any more, anywhere the API looks.
    let (all, _) = host.store.scan().await.expect("scan");
    assert!(
        all.iter()
            .all(|i| i.status != IncidentStatus::PendingApproval)
    );
    host.runtime.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_proposal_is_withdrawn_and_the_next_firing_is_triaged_afresh() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = host(dir.path(), "1s").await;
    let alert = world_alert(WORLD);
    let first = host.new_incident(alert.clone()).await;
    assert_eq!(first.status, IncidentStatus::PendingApproval);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    // Alertmanager sends the still-firing alert again: it is not swallowed by the stale
    // incident but opens a new one with a new proposal.
    let second = match host
        .runtime
        .handle_alert(alert.clone())
        .await
        .expect("handled")
    {
        AlertOutcome::Handled(i) => i,
        other => panic!("a new incident, not {other:?}"),
    };
    assert_ne!(second.id, first.id);
    assert_eq!(second.status, IncidentStatus::PendingApproval);
    let old = host.store.get(&first.id).await.expect("first");
    assert_eq!(old.status, IncidentStatus::Rejected);
    assert!(
        old.reason
            .as_deref()
            .is_some_and(|r| r.contains("expired unanswered")),
        "{:?}",
        old.reason
    );
    assert_eq!(withdrawn(&host.audit_path, &first.id).len(), 1);

    // Nobody answers the second either: the service's tick withdraws it without any alert.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    host.runtime.verify_due().await.expect("tick");
    let now = host.store.get(&second.id).await.expect("second");
    assert_eq!(now.status, IncidentStatus::Rejected, "{now:#?}");
    assert_eq!(withdrawn(&host.audit_path, &second.id).len(), 1);
    // A second tick finds nothing more to do.
    host.runtime.verify_due().await.expect("tick");
    assert_eq!(withdrawn(&host.audit_path, &second.id).len(), 1);
    host.runtime.stop().await;
}

/// A form on an escalated incident's page names the incident. Sent after a plan was proposed
/// for that incident, it must not answer the plan its sender never saw: a waiting proposal is
/// answered by its own id only, and the refusal is on the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_proposal_is_not_answered_by_its_incidents_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = host(dir.path(), "15m").await;
    let incident = host.new_incident(world_alert(WORLD)).await;
    let proposal = incident.proposal.clone().expect("a destructive plan waits");
    let adjusted = host
        .runtime
        .adjust(
            &incident.id,
            Identity::scenario("oncall"),
            &proposal.plan.runbook_id,
            &Default::default(),
        )
        .await
        .expect_err("an incident-id answer while a proposal waits")
        .to_string();
    assert!(
        adjusted.contains("proposal waiting") && adjusted.contains(&proposal.id),
        "{adjusted}"
    );
    let rejected = host
        .runtime
        .reject(
            &incident.id,
            Identity::scenario("oncall"),
            "from an old form",
        )
        .await
        .expect_err("an incident-id rejection while a proposal waits")
        .to_string();
    assert!(rejected.contains("proposal waiting"), "{rejected}");
    // An approval by the incident's id names the proposal to approve, not a contradiction.
    let approved = host
        .runtime
        .approve(
            &incident.id,
            Identity::scenario("oncall"),
            Some(proposal.plan_digest.clone()),
        )
        .await
        .expect_err("an incident-id approval while a proposal waits")
        .to_string();
    assert!(
        approved.contains("proposal waiting") && approved.contains(&proposal.id),
        "{approved}"
    );
    let now = host.store.get(&incident.id).await.expect("incident");
    assert_eq!(now.status, IncidentStatus::PendingApproval);
    assert_eq!(now.proposal.as_ref().map(|p| &p.id), Some(&proposal.id));
    let refusals = records(&host.audit_path)
        .into_iter()
        .filter(|r| r["kind"] == "approval-refused" && r["incident"] == incident.id.as_str())
        .count();
    assert_eq!(refusals, 3, "each refusal is on the record");
    // The proposal itself is still answerable by its id.
    let approved = approve_as_oncall(&host, &proposal)
        .await
        .expect("approved by its id");
    assert_ne!(approved.status, IncidentStatus::PendingApproval);
    host.runtime.stop().await;
}

/// Review defect: an expired proposal could still be answered by adjusting it — a plan
/// nobody approved in time run under a human's name after all. Expired is expired, whatever
/// the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_proposal_cannot_be_adjusted_either() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = host(dir.path(), "1s").await;
    let incident = host.new_incident(world_alert(WORLD)).await;
    let proposal = incident.proposal.clone().expect("a destructive plan waits");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let late = host
        .runtime
        .adjust(
            &proposal.id,
            Identity::scenario("oncall"),
            &proposal.plan.runbook_id,
            &Default::default(),
        )
        .await
        .expect_err("an expired proposal is not adjusted")
        .to_string();
    assert!(late.contains("expired"), "{late}");
    refused_and_nothing_ran(&host.audit_path, &incident.id, "expired");
    host.runtime.stop().await;
}

/// A stop between recording a `resolved` on a waiting proposal and withdrawing it leaves a plan
/// that could still be approved for an alert that is gone. The next start finds it and
/// withdraws it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_whose_alert_resolved_before_a_stop_is_withdrawn_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = host(dir.path(), "15m").await;
    let incident = first.new_incident(world_alert(WORLD)).await;
    let proposal = incident.proposal.clone().expect("a destructive plan waits");
    // What the stop left: the resolve saved on the incident, the withdrawal never made.
    let mut left = first.store.get(&incident.id).await.expect("incident");
    left.source_resolved_at = Some(std::time::SystemTime::now());
    first.store.save(&left).await.expect("save");
    let second = restarted(first, dir.path()).await;
    let now = second.store.get(&incident.id).await.expect("incident");
    assert_eq!(now.status, IncidentStatus::Rejected, "{now:#?}");
    assert_eq!(withdrawn(&second.audit_path, &incident.id).len(), 1);
    let late = approve_as_oncall(&second, &proposal).await;
    assert!(
        late.is_err(),
        "a withdrawn proposal cannot be approved: {late:?}"
    );
    second.runtime.stop().await;
}

/// Review defect: an escalation with no plan claims nothing, so an adjustment retried while
/// the run it asked for was still going (a client that timed out, a form sent twice) ran that
/// plan again once the run failed and escalated the incident anew. An answer answers only the
/// escalation it was sent after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_sent_before_the_incident_was_escalated_again_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = host(dir.path(), "15m").await;
    let incident = host.new_incident(world_alert(WORLD)).await;
    let plan = &incident
        .proposal
        .as_ref()
        .expect("a destructive plan waits")
        .plan;
    let runbook = plan.runbook_id.clone();
    // The same plan, as a human types it.
    let params = plan.params_as_text();
    // As a failed run leaves it: escalated with no plan — here, after the answer below is sent.
    let mut escalated = host.store.get(&incident.id).await.expect("incident");
    escalated.status = IncidentStatus::Escalated;
    escalated.proposal = None;
    escalated.escalated_at =
        Some(std::time::SystemTime::now() + std::time::Duration::from_secs(3600));
    host.store.save(&escalated).await.expect("save");
    let late = host
        .runtime
        .adjust(
            &incident.id,
            Identity::scenario("oncall"),
            &runbook,
            &params,
        )
        .await
        .expect_err("an answer sent before the escalation it would answer")
        .to_string();
    assert!(late.contains("escalated again"), "{late}");
    refused_and_nothing_ran(&host.audit_path, &incident.id, "escalated again");
    // Sent now, but for an earlier escalation (a form loaded before the last one, the page's
    // hidden `escalated_at`): refused too.
    let last = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    escalated.escalated_at = Some(last);
    host.store.save(&escalated).await.expect("save");
    let shown = |t: std::time::SystemTime| humantime::format_rfc3339_millis(t).to_string();
    let stale_form = host
        .runtime
        .adjust_seen(
            &incident.id,
            Identity::scenario("oncall"),
            &runbook,
            &params,
            Some(shown(last - std::time::Duration::from_secs(60))),
        )
        .await
        .expect_err("an answer to an earlier escalation")
        .to_string();
    assert!(stale_form.contains("escalated again"), "{stale_form}");
    // For the escalation on the table, the same answer is taken.
    host.runtime
        .adjust_seen(
            &incident.id,
            Identity::scenario("oncall"),
            &runbook,
            &params,
            Some(shown(last)),
        )
        .await
        .expect("an answer to the escalation on the table");
    assert!(
        crate::common::records(&host.audit_path)
            .iter()
            .any(|r| r["kind"] == "adjustment" && r["incident"] == incident.id.as_str()),
        "the adjustment is on the record"
    );
    host.runtime.stop().await;
}

/// Review defect: `approval_ttl: 0s` was taken, and every proposal expired before anyone could
/// read it — an agent nothing could ever be approved for.
#[test]
fn an_approval_ttl_too_short_to_answer_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for ttl in ["0s", "500ms"] {
        let file = patched_agent(
            dir.path(),
            "agents/postgres.yaml",
            &[("approval_ttl: 15m", &format!("approval_ttl: {ttl}"))],
        );
        let e = themis_agent::AgentDef::load(&file)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("policy.approval_ttl") && e.contains("leaves no time to answer"),
            "{ttl}: {e}"
        );
    }
}

/// A host in `dir` with a proposal waiting, and what a failure right after a rejecting claim
/// by `by` leaves: the claim saved, nothing after it.
async fn cut_off_after_a_claim(
    dir: &std::path::Path,
    by: Identity,
) -> (
    TestHost,
    themis_agent::store::Incident,
    themis_core::policy::ApprovalRequest,
) {
    let first = host(dir, "15m").await;
    let incident = first.new_incident(world_alert(WORLD)).await;
    let proposal = incident.proposal.clone().expect("a destructive plan waits");
    let mut left = first.store.get(&incident.id).await.expect("incident");
    left.status = IncidentStatus::Rejected;
    left.answer = Some(themis_agent::store::Answer {
        approval_id: proposal.id.clone(),
        kind: themis_agent::store::AnswerKind::Rejected,
        by,
        at: std::time::SystemTime::now(),
        execution_id: None,
    });
    first.store.save(&left).await.expect("save");
    (first, incident, proposal)
}

/// Review defect: a withdrawal (an expired proposal, a resolved alert) that a failure cut off
/// after its claim left the incident rejected with no `proposal-withdrawn` record, no reason
/// and nobody told — and recovery did not look at it again. It finishes it, claiming nothing
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_cut_off_after_its_claim_is_finished_at_start() {
    finished_at_start(
        Identity::agent("postgres"),
        "proposal-withdrawn",
        &["finished now"],
    )
    .await;
}

/// A claim by `by` cut off before its record (`kind`): the next start finishes it — the
/// proposal cleared, a reason saying so (`reason_has`), `kind` recorded once, the proposal no
/// longer approvable — and a start after it finds nothing more to do.
async fn finished_at_start(by: Identity, kind: &str, reason_has: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, incident, proposal) = cut_off_after_a_claim(dir.path(), by).await;
    let recorded = |audit: &std::path::Path| {
        records(audit)
            .into_iter()
            .filter(|r| r["kind"] == kind && r["incident"] == incident.id.as_str())
            .count()
    };
    assert_eq!(recorded(&first.audit_path), 0);
    let second = restarted(first, dir.path()).await;
    let now = second.store.get(&incident.id).await.expect("incident");
    assert_eq!(now.status, IncidentStatus::Rejected, "{now:#?}");
    assert!(now.proposal.is_none(), "{now:#?}");
    assert!(
        now.reason
            .as_deref()
            .is_some_and(|r| reason_has.iter().all(|part| r.contains(part))),
        "{now:#?}"
    );
    assert_eq!(recorded(&second.audit_path), 1);
    assert!(
        approve_as_oncall(&second, &proposal).await.is_err(),
        "a proposal answered already cannot be approved"
    );
    let third = restarted(second, dir.path()).await;
    assert_eq!(recorded(&third.audit_path), 1, "finished once");
    third.runtime.stop().await;
}

/// Review defect: a human's rejection that a failure (a kill) cut off after its claim left the
/// store rejected with the proposal still on the incident and no `rejection` on the audit. A
/// start finishes it: the record (once), the proposal cleared, and nothing claimed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_cut_off_after_its_claim_is_finished_at_start() {
    finished_at_start(
        Identity::scenario("oncall"),
        "rejection",
        &["rejected by oncall", "finished at start"],
    )
    .await;
}
