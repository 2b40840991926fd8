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
    let late = host
        .runtime
        .approve(
            &proposal.id,
            Identity::scenario("oncall"),
            Some(proposal.plan_digest.clone()),
        )
        .await;
    let refusal = late
        .expect_err("a withdrawn proposal cannot be approved")
        .to_string();
    assert!(refusal.contains("already answered"), "{refusal}");
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
