//! Intake throughput of `themis serve`: Alertmanager notifications posted from a loopback
//! client over keep-alive connections — one alert each, and grouped as Alertmanager groups them
//! (50 alerts each) — at 1 %, 50 % and 99 % duplicate alerts, and the service's RSS afterwards
//! and the backlog its agent has yet to take up (accepted alerts wait on disk). The baseline, measured in the same run with the same client,
//! is an axum endpoint that parses the same payload and answers 200 without recording it: the
//! ratio is what recording, routing and queueing cost over HTTP and JSON alone.
//!
//! `just bench intake`, i.e. `CARGO_PROFILE_DEV_OPT_LEVEL=2 cargo bench -p themis --bench intake
//! --profile dev` (the dev profile optimises every dependency, the variable our crates too;
//! without it this measures debug code). THEMIS_BENCH_ALERTS sets the alerts
//! per mix (default 100 000), THEMIS_BENCH_CLIENTS the concurrent connections (default 8).

mod common;

use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const INTAKE: &str = "bench-intake-token";

fn notification(fingerprints: &[String]) -> Value {
    let alerts: Vec<Value> = fingerprints
        .iter()
        .map(|fingerprint| {
            json!({
                "status": "firing",
                "labels": { "alertname": "KafkaConsumerLag", "topic": "orders", "group": "orders-consumer", "severity": "critical" },
                "annotations": { "summary": "lag" }, "startsAt": "2026-11-30T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus", "fingerprint": fingerprint,
            })
        })
        .collect();
    json!({
        "version": "4", "groupKey": "{}:{alertname=\"KafkaConsumerLag\"}", "truncatedAlerts": 0,
        "status": "firing", "receiver": "themis", "groupLabels": {}, "commonLabels": {},
        "commonAnnotations": {}, "externalURL": "http://alertmanager", "alerts": alerts,
    })
}

struct Run {
    accepted: usize,
    refused: usize,
    seconds: f64,
}

/// Post `total` alerts in notifications of `group` from `clients` keep-alive connections;
/// `duplicate` of them (a fraction) repeat one fingerprint, the rest are new.
async fn load(url: &str, total: usize, group: usize, clients: usize, duplicate: f64) -> Run {
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, accepted, refused) = (next.clone(), accepted.clone(), refused.clone());
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("client");
            loop {
                let first = next.fetch_add(group, Ordering::Relaxed);
                if first >= total {
                    break;
                }
                // Deterministic mix: every i whose fraction falls under `duplicate` repeats.
                let fps: Vec<String> = (first..(first + group).min(total))
                    .map(|i| {
                        if ((i as f64 * 0.618_033_988_7) % 1.0) < duplicate {
                            "dup-0".to_owned()
                        } else {
                            format!("new-{i}")
                        }
                    })
                    .collect();
                let r = http
                    .post(&url)
                    .bearer_auth(INTAKE)
                    .json(&notification(&fps))
                    .send()
                    .await;
                match r.map(|r| r.status().as_u16()) {
                    Ok(200) => accepted.fetch_add(fps.len(), Ordering::Relaxed),
                    _ => refused.fetch_add(fps.len(), Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Run {
        accepted: accepted.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// The baseline: same route shape, same parse, no recording.
async fn baseline() -> String {
    use axum::{Router, body::Bytes, routing::post};
    let app = Router::new().route(
        "/api/v1/alerts/alertmanager",
        post(|body: Bytes| async move {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if v["version"] == "4" { "ok" } else { "bad" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/api/v1/alerts/alertmanager")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let total: usize = std::env::var("THEMIS_BENCH_ALERTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let clients: usize = std::env::var("THEMIS_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("themis.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nagents: {agents}\nstate_dir: state\n\
             intake: {{ tokens: [ {{ env: BENCH_INTAKE }} ] }}\n\
             backends:\n  kafka: {{ scenario: {world} }}\nlimits: {{ queue: 1000000 }}\n",
            agents = repo.join("agents").display(),
            world = repo
                .join("tests/scenarios/agent-kafka-gc-pause.yaml")
                .display(),
        ),
    )
    .expect("config");
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    println!("intake: {total} alerts per mix, {clients} keep-alive clients");
    println!(
        "{:<36} {:>9} {:>9} {:>11} {:>12} {:>9} {:>9}",
        "subject", "accepted", "refused", "alerts/s", "vs baseline", "RSS MiB", "backlog"
    );
    for group in [1usize, 50] {
        let base_url = rt.block_on(baseline());
        let base = rt.block_on(load(&base_url, total, group, clients, 0.5));
        let base_rate = base.accepted as f64 / base.seconds;
        println!(
            "{:<36} {:>9} {:>9} {:>11.0} {:>12}",
            format!("baseline (parse, 200), {group}/notif."),
            base.accepted,
            base.refused,
            base_rate,
            "1.00"
        );
        for duplicate in [0.01, 0.5, 0.99] {
            bench_serve(
                &rt,
                &repo,
                dir.path(),
                &config,
                total,
                group,
                clients,
                duplicate,
                base_rate,
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn bench_serve(
    rt: &tokio::runtime::Runtime,
    repo: &std::path::Path,
    dir: &std::path::Path,
    config: &std::path::Path,
    total: usize,
    group: usize,
    clients: usize,
    duplicate: f64,
    base_rate: f64,
) {
    {
        let state = dir.join("state");
        let _ = std::fs::remove_dir_all(&state);
        let served = common::serve(
            config,
            dir,
            &[("BENCH_INTAKE", INTAKE)],
            &repo.join("target/bench-cache"),
        );
        let base = served.url.clone();
        let url = format!("{base}/api/v1/alerts/alertmanager");
        let run = rt.block_on(load(&url, total, group, clients, duplicate));
        let rate = run.accepted as f64 / run.seconds;
        std::thread::sleep(Duration::from_millis(200));
        let rss = rss_kib(served.child.id());
        let backlog = rt.block_on(async {
            let agents: Value = reqwest::Client::new()
                .get(format!("{base}/api/v1/agents"))
                .bearer_auth(INTAKE)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            agents
                .as_array()?
                .iter()
                .map(|a| a["backlog"].as_u64())
                .sum::<Option<u64>>()
        });
        println!(
            "{:<36} {:>9} {:>9} {:>11.0} {:>12.3} {:>9} {:>9}",
            format!(
                "themis serve, {group}/notif., {:.0} % dup",
                duplicate * 100.0
            ),
            run.accepted,
            run.refused,
            rate,
            rate / base_rate,
            rss / 1024,
            backlog.map_or("?".into(), |b| b.to_string()),
        );
    }
}
