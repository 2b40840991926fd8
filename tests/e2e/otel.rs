//! OpenTelemetry out of `themis serve`: a loopback OTLP/HTTP receiver decodes what the service
//! exports (protobuf, as a collector would) and checks one trace per incident whose spans nest
//! as the work did — incident, agent states, probe, phases, capability calls, selection, policy,
//! the approved run — that audit records arrive as log records in that trace, and that no secret
//! the audit redacts reaches the collector.

use crate::serve::{AM, BOB, INTAKE, LAG, ServeSpec, notification};
use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An OTLP/HTTP receiver on loopback: every request body kept with its path.
async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let keep = |path: &'static str, got: Received| {
        move |body: Bytes| {
            let got = got.clone();
            async move {
                got.lock()
                    .expect("lock")
                    .push((path.to_owned(), body.to_vec()));
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }
    };
    let app = axum::Router::new()
        .route("/v1/traces", post(keep("traces", got.clone())))
        .route("/v1/logs", post(keep("logs", got.clone())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

fn spans(got: &Received) -> Vec<Span> {
    got.lock()
        .expect("lock")
        .iter()
        .filter(|(p, _)| p == "traces")
        .flat_map(|(_, body)| {
            ExportTraceServiceRequest::decode(body.as_slice())
                .expect("a trace export decodes")
                .resource_spans
        })
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incident_is_one_trace_of_nested_spans_and_its_audit_records_are_logs_in_it() {
    let (collector, got) = receiver().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let webhook_secret = "T000/B000/otel-secret-webhook-path";
    let mut spec = ServeSpec::new(dir.path());
    // Slack's webhook URL is a secret the audit redacts: it must not reach the collector.
    spec.slack_webhook = Some(format!("http://127.0.0.1:9/services/{webhook_secret}"));
    spec.env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("OTEL_BLRP_SCHEDULE_DELAY", "100".into()),
        ("OTEL_SERVICE_NAME", "themis-under-test".into()),
    ];
    let s = spec.start();
    // A label carrying a configured secret (the intake token): redacted before anything leaves.
    let labels: Vec<(&str, &str)> = LAG.iter().copied().chain([("note", INTAKE)]).collect();
    let (status, body) = s
        .post(
            AM,
            INTAKE,
            &notification("firing", &[("KafkaConsumerLag", "fp-otel", &labels)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.incidents_until("the proposal", |l| {
        l.iter().any(|i| i["status"] == "pending-approval")
    })
    .await;
    let (_, approvals) = s.get("/api/v1/approvals", BOB).await;
    let id = approvals[0]["id"].as_str().expect("id").to_owned();
    let digest = approvals[0]["plan_digest"]
        .as_str()
        .expect("digest")
        .to_owned();
    let (status, body) = s
        .post(
            &format!("/api/v1/approvals/{id}/approve"),
            BOB,
            &json!({ "plan_digest": digest }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let incident = s.kinds("alert")[0]["incident"]
        .as_str()
        .expect("incident")
        .to_owned();
    let trace = themis_otel::ids::trace(&incident).to_vec();

    // Wait for the approved run to be exported whole: its call, its run, and every parent any
    // exported span names (a parent ends, and is exported, after its children).
    let deadline = Instant::now() + Duration::from_secs(30);
    let all = loop {
        let all = spans(&got);
        let ids: BTreeSet<&[u8]> = all.iter().map(|s| s.span_id.as_slice()).collect();
        let complete = all
            .iter()
            .all(|s| s.parent_span_id.is_empty() || ids.contains(s.parent_span_id.as_slice()));
        let named = |n: &str| all.iter().any(|s| s.name == n);
        if complete
            && named("kafka.set-broker-config")
            && named("run adjust-broker-gc")
            && all.iter().any(|s| s.name.starts_with("incident "))
        {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "spans so far: {:?}",
            all.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mine: Vec<&Span> = all.iter().filter(|s| s.trace_id == trace).collect();
    assert_eq!(
        mine.len(),
        all.len(),
        "every span is in the incident's trace"
    );
    let by_id: BTreeMap<&[u8], &Span> = mine.iter().map(|s| (s.span_id.as_slice(), *s)).collect();
    let parent_of = |s: &Span| by_id.get(s.parent_span_id.as_slice()).copied();
    let named = |n: &str| {
        *mine
            .iter()
            .find(|s| s.name == n)
            .unwrap_or_else(|| panic!("no span {n}"))
    };
    let root = named("incident KafkaConsumerLag");
    assert!(root.parent_span_id.is_empty(), "the incident is the root");
    // Every other span reaches the root through parents the trace has.
    for span in &mine {
        let mut at = *span;
        let mut hops = 0;
        while !at.parent_span_id.is_empty() {
            at = parent_of(at)
                .unwrap_or_else(|| panic!("{} has a parent the trace lacks", span.name));
            hops += 1;
            assert!(hops < 10);
        }
        assert_eq!(
            at.span_id, root.span_id,
            "{} does not lead to the incident",
            span.name
        );
    }
    let names = |parent: &Span| -> BTreeSet<String> {
        mine.iter()
            .filter(|s| s.parent_span_id == parent.span_id)
            .map(|s| s.name.clone())
            .collect()
    };
    let triaging = named("triaging");
    assert_eq!(
        parent_of(triaging).map(|p| p.span_id.clone()),
        Some(root.span_id.clone())
    );
    let under_triage = names(triaging);
    for expected in ["probe triage-probe", "select", "policy"] {
        assert!(
            under_triage.contains(expected),
            "{expected} not under triaging: {under_triage:?}"
        );
    }
    let probe = named("probe triage-probe");
    assert!(
        names(probe).iter().any(|n| n == "lag-and-cpu action"),
        "{:?}",
        names(probe)
    );
    let probe_action = *mine
        .iter()
        .find(|s| s.name == "lag-and-cpu action" && s.parent_span_id == probe.span_id)
        .expect("phase");
    assert!(
        names(probe_action).contains("kafka.consumer-lag"),
        "{:?}",
        names(probe_action)
    );
    let run = named("run adjust-broker-gc");
    assert_eq!(
        parent_of(run).map(|p| p.name.as_str()),
        Some("executing-runbook")
    );
    let call = named("kafka.set-broker-config");
    let phase = parent_of(call).expect("the call's phase");
    assert_eq!(
        parent_of(phase).map(|p| p.span_id.clone()),
        Some(run.span_id.clone())
    );

    // The audit records, as log records of the same trace.
    let logs: Vec<_> = got
        .lock()
        .expect("lock")
        .iter()
        .filter(|(p, _)| p == "logs")
        .flat_map(|(_, body)| {
            ExportLogsServiceRequest::decode(body.as_slice())
                .expect("decodes")
                .resource_logs
        })
        .flat_map(|r| r.scope_logs)
        .flat_map(|s| s.log_records)
        .collect();
    let in_trace = logs.iter().filter(|l| l.trace_id == trace).count();
    assert!(
        in_trace >= 5,
        "{in_trace} of {} log records in the incident's trace",
        logs.len()
    );
    // The token is redacted in the audit file itself, and nothing redacted there reaches the
    // collector, in any export.
    let audit = std::fs::read_to_string(s.state.join("audit.jsonl")).expect("audit");
    assert!(
        !audit.contains(INTAKE),
        "the intake token is in the audit file"
    );
    for (path, body) in got.lock().expect("lock").iter() {
        let text = String::from_utf8_lossy(body);
        assert!(
            !text.contains(INTAKE),
            "the intake token reached /v1/{path}"
        );
        assert!(
            !text.contains(webhook_secret),
            "the webhook URL reached /v1/{path}"
        );
    }
}
