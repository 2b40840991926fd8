//! `GET /metrics` scraped by a real Prometheus (Debian's 2.42) after a scripted incident — an
//! alert, a proposal, an approval, the runbook run — and read back through Prometheus' HTTP
//! API; `promtool check metrics` passes on what the service exposes.

use crate::serve::{INTAKE, ONCALL, ServeSpec};
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use themis_testkit::services;

/// Prometheus' whole answer to one instant query.
async fn answer(prom: &services::Service, promql: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}/api/v1/query", prom.url))
        .query(&[("query", promql)])
        .send()
        .await
        .expect("prometheus answers")
        .json()
        .await
        .expect("json")
}

/// One instant query's samples as (labels, value).
async fn query(prom: &services::Service, promql: &str) -> Vec<(Value, f64)> {
    answer(prom, promql).await["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|s| {
            let v = s["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            (s["metric"].clone(), v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_what_an_incident_did() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ServeSpec::new(dir.path()).start();
    let (id, digest) = s.proposal("fp-metrics").await;
    let (status, body) = s
        .post(
            &format!("/api/v1/approvals/{id}/approve"),
            ONCALL,
            &json!({ "plan_digest": digest }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.incidents_until("the fix to be watched", |l| {
        l.iter().any(|i| i["status"] == "verifying")
    })
    .await;
    // Alertmanager says resolved, then the alert fires again: the fix did not hold.
    for status in ["resolved", "firing"] {
        let (code, body) = s
            .post(
                "/api/v1/alerts/alertmanager",
                INTAKE,
                &crate::serve::notification(
                    status,
                    &[("KafkaConsumerLag", "fp-metrics", crate::serve::LAG)],
                ),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        if status == "resolved" {
            s.incidents_until("the resolution on the watch", |l| {
                l.iter().any(|i| i["source_resolved_at"].is_string())
            })
            .await;
        }
    }
    s.incidents_until("the ineffective fix to reach a human", |l| {
        l.iter().any(|i| i["status"] == "escalated")
    })
    .await;
    // An alert nobody owns, counted as such.
    let (status, _) = s
        .post(
            "/api/v1/alerts/alertmanager",
            INTAKE,
            &crate::serve::notification("firing", &[("NobodyOwnsThis", "fp-none", &[])]),
        )
        .await;
    assert_eq!(status, 200);

    // What Prometheus asks for: OpenMetrics.
    let r = s
        .http
        .get(format!("{}/metrics", s.url))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status().as_u16(), 200);
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = r.text().await.expect("text");
    assert!(
        !text.contains("inc-"),
        "no incident id as a label value:\n{text}"
    );
    assert!(text.ends_with("# EOF\n"));
    // What `curl` or promtool gets: the text format 0.0.4.
    let text = s
        .http
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("# TYPE themis_alerts_total counter"),
        "{text}"
    );
    assert!(
        text.contains(
            "themis_runbook_effectiveness_total{runbook=\"adjust-broker-gc\",outcome=\"ineffective\"} 1"
        ),
        "{text}"
    );

    if services::installed("promtool", "prometheus") {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool check metrics:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let target = s.url.trim_start_matches("http://").to_owned();
    let Some(prom) = services::prometheus(
        &format!(
            "global: {{ scrape_interval: 1s }}\nscrape_configs:\n  - job_name: themis\n    static_configs: [ {{ targets: ['{target}'] }} ]\n"
        ),
        &[],
    )
    .await
    else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if query(&prom, "up{job=\"themis\"} == 1").await.len() == 1
            && !query(&prom, "themis_runbook_runs_total").await.is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the service:\n{}",
            prom.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // (query, expected value, or the least it may be when `at_least`).
    let expected: &[(&str, f64, bool)] = &[
        (
            r#"themis_agent_state{agent="kafka",state="idle"}"#,
            1.0,
            false,
        ),
        // Exactly one state at a time.
        (r#"sum(themis_agent_state{agent="kafka"})"#, 1.0, false),
        // The alert, then its re-fire after the resolution.
        (
            r#"themis_alerts_total{agent="kafka",outcome="accepted"}"#,
            2.0,
            false,
        ),
        (
            r#"themis_alerts_total{agent="kafka",outcome="resolved"}"#,
            1.0,
            false,
        ),
        (
            r#"themis_runbook_effectiveness_total{runbook="adjust-broker-gc",outcome="ineffective"}"#,
            1.0,
            false,
        ),
        (
            r#"themis_alerts_total{agent="none",outcome="unrouted"}"#,
            1.0,
            false,
        ),
        (
            r#"themis_runbook_runs_total{agent="kafka",runbook="adjust-broker-gc",result="succeeded",mode="live"}"#,
            1.0,
            false,
        ),
        (
            r#"sum(themis_decisions_total{agent="kafka",selector="rules"})"#,
            1.0,
            true,
        ),
        // The destructive plan went to a human, who answered it; then the fix that did not hold.
        (r#"themis_escalations_total{agent="kafka"}"#, 2.0, false),
        ("themis_approvals_pending", 0.0, false),
        ("themis_approval_wait_seconds_count", 1.0, false),
        (
            r#"sum(themis_capability_calls_total{outcome="ok"})"#,
            1.0,
            true,
        ),
        (r#"themis_audit_appends_total{result="ok"}"#, 5.0, true),
        ("themis_audit_append_seconds_count", 5.0, true),
        (
            r#"sum(themis_step_phase_seconds_count{runbook="adjust-broker-gc"})"#,
            1.0,
            true,
        ),
        ("count(themis_build_info)", 1.0, false),
    ];
    for (promql, value, at_least) in expected {
        let got = query(&prom, promql).await.first().map(|(_, v)| *v);
        let ok = got.is_some_and(|v| if *at_least { v >= *value } else { v == *value });
        assert!(
            ok,
            "{promql}: {got:?}, expected {}{value}",
            if *at_least { "≥ " } else { "" }
        );
    }

    // Every query of the shipped Grafana dashboard is PromQL Prometheus accepts.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            crate::common::repo().join("deploy/grafana/themis-dashboard.json"),
        )
        .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 9, "{exprs:?}");
    for expr in exprs {
        let expr = expr.replace("$__rate_interval", "1m").replace("$job", ".*");
        let body = answer(&prom, &expr).await;
        assert_eq!(body["status"], "success", "{expr}: {body}");
    }
}
