//! The playbook's Kafka case on real protocols, everything on loopback: consumer lag from real
//! offsets in librdkafka's mock cluster (the Kafka protocol over TCP); each broker's JMX
//! exporter (its JVM collectors' metric names) scraped by Debian's Prometheus; the Kafka agent's
//! triage and broker diagnosis finding one broker's long GC pauses; the proposed pause-target
//! change and broker restart escalated (a broker restart is destructive); the approval over
//! HTTP; the setting patched into the cluster's Strimzi `Kafka` resource and the broker's pod
//! deleted, both in the fake API server; the restart's postcondition (the cluster whole, every
//! partition replicated) read through rdkafka.
//!
//! The agent is the shipped one with its queries named for the JMX exporter in its file
//! (`probe_params:` for the triage probe, rule parameters for the diagnosis), as an operator's is.

use crate::playbook::{BUDGET, until};
use crate::serve::{AM, INTAKE, ONCALL, ServeSpec, Served, notification};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use themis_fake_kube::FakeKube;
use themis_fake_kube::cluster::{KAFKAS, PODS};
use themis_testkit::services::{self, Service};

/// The mean old-generation pause per broker over the window, from the JMX exporter's summary.
const GC_PAUSE_QUERY: &str = r#"max by (broker) (rate(jvm_gc_collection_seconds_sum{job="kafka"}[15s]) / rate(jvm_gc_collection_seconds_count{job="kafka"}[15s]))"#;
/// Each broker's CPU, in cores, from the exporter's process collector.
const CPU_QUERY: &str = r#"avg by (broker) (rate(process_cpu_seconds_total{job="kafka"}[15s]))"#;

/// One broker's JMX exporter on loopback: its process burning `cpu` cores, and one old-generation
/// collection a second, each `pause` seconds long — counters that grow with wall time, as the
/// exporter's process and JVM collectors report them.
async fn jmx_exporter(cpu: f64, pause: f64) -> (String, tokio::task::JoinHandle<()>) {
    let born = Instant::now();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            // Up an hour before the trial began, as a broker would be.
            let t = 3600.0 + born.elapsed().as_secs_f64();
            format!(
                "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}\n\
                 # TYPE jvm_gc_collection_seconds summary\n\
                 jvm_gc_collection_seconds_count{{gc=\"G1 Old Generation\"}} {t}\n\
                 jvm_gc_collection_seconds_sum{{gc=\"G1 Old Generation\"}} {}\n",
                t * cpu,
                t * pause
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("exporter port");
    let addr = listener.local_addr().expect("exporter address");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr.to_string(), task)
}

/// Prometheus' answer to `query`: one (broker, value) per series.
async fn instant(prom: &Service, query: &str) -> Vec<(String, f64)> {
    let Ok(r) = reqwest::Client::new()
        .get(format!("{}/api/v1/query", prom.url))
        .query(&[("query", query)])
        .send()
        .await
    else {
        return Vec::new();
    };
    let body: Value = r.json().await.unwrap_or(Value::Null);
    body["data"]["result"]
        .as_array()
        .map(|series| {
            series
                .iter()
                .filter_map(|s| {
                    let broker = s["metric"]["broker"].as_str()?.to_owned();
                    let value = s["value"][1].as_str()?.parse().ok()?;
                    Some((broker, value))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `count` records on each partition of `topic`, through the protocol.
fn produce(bootstrap: &str, topic: &str, partitions: i32, count: usize) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    for partition in 0..partitions {
        for n in 0..count {
            let payload = format!("order {n}");
            producer
                .send(
                    BaseRecord::<(), _>::to(topic)
                        .partition(partition)
                        .payload(&payload),
                )
                .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        }
    }
    producer
        .flush(Duration::from_secs(10))
        .expect("records delivered");
}

/// The group's committed offset on every partition of `topic`.
fn commit(bootstrap: &str, group: &str, topic: &str, partitions: i32, offset: i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions {
        tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset))
            .expect("offset");
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .unwrap_or_else(|e| panic!("commit: {e}"));
}

/// The shipped Kafka agent naming its queries for the JMX exporter (what an operator's agent
/// file does), over a window this trial fills: `rate` over a window a series is younger than
/// reads low, as it would for a broker that just started.
fn agent_for_jmx(dir: &Path) -> std::path::PathBuf {
    let folder = dir.join("agents");
    std::fs::create_dir_all(&folder).expect("agents folder");
    let cpu = format!("cpu_query: '{CPU_QUERY}'");
    crate::common::patched_agent(
        &folder,
        "agents/kafka.yaml",
        &[
            (
                "\ntrust:\n",
                &format!("\nprobe_params:\n  triage-probe: {{ {cpu} }}\ntrust:\n"),
            ),
            (
                "  - runbook: check-broker-health\n",
                &format!(
                    "  - runbook: check-broker-health\n    params: {{ {cpu}, gc_pause_query: '{GC_PAUSE_QUERY}' }}\n"
                ),
            ),
        ],
    );
    folder
}

/// The Kafka agent's incident once it waits for an approval; else what the audit says it did.
async fn proposed(s: &Served, started: Instant) -> Value {
    loop {
        let (_, body) = s.get("/api/v1/incidents?agent=kafka", ONCALL).await;
        let list = body["incidents"].as_array().cloned().unwrap_or_default();
        if let Some(i) = list.iter().find(|i| i["status"] == "pending-approval") {
            return i.clone();
        }
        if started.elapsed() > BUDGET || list.iter().any(|i| i["status"] == "escalated") {
            let said: Vec<String> = s
                .audit()
                .iter()
                .filter(|r| r["agent"] == "kafka")
                .map(|r| format!("{} {}", r["kind"], r["data"]))
                .collect();
            panic!(
                "no proposal ({} s into the trial): incidents {list:#?}\n{}",
                started.elapsed().as_secs(),
                said.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kafka_gc_pause_playbook_runs_on_real_protocols() {
    const PARTITIONS: i32 = 6;
    let started = Instant::now();
    // The cluster: three brokers, a topic replicated on all of them, a group 40 records behind
    // on every partition.
    let cluster = MockCluster::new(3).unwrap_or_else(|e| panic!("mock cluster: {e}"));
    let bootstrap = cluster.bootstrap_servers();
    cluster
        .create_topic("orders", PARTITIONS, 3)
        .unwrap_or_else(|e| panic!("{e}"));
    produce(&bootstrap, "orders", PARTITIONS, 50);
    commit(&bootstrap, "orders-consumer", "orders", PARTITIONS, 10);

    // Where it runs: the fake API server, with Strimzi's resource and the broker pods.
    let fake = FakeKube::start(Duration::from_millis(20))
        .await
        .expect("fake api server");
    let dir = tempfile::tempdir().expect("tempdir");
    fake.deployment("shop", "orders-consumer", 3, "orders-consumer:4");
    fake.strimzi_kafka(
        "kafka",
        "my-cluster",
        json!({ "kafka": { "replicas": 3, "jvmOptions": { "-Xmx": "4g" } } }),
    );
    fake.broker_pods("kafka", "my-cluster", 1..=3);

    // Each broker's exporter; broker 2 is the sick one: 97 % of a core, 2.5 s GC pauses.
    let mut exporters = Vec::new();
    let mut targets = String::new();
    for (broker, cpu, pause) in [(1, 0.30, 0.02), (2, 0.97, 2.5), (3, 0.25, 0.03)] {
        let (address, task) = jmx_exporter(cpu, pause).await;
        targets.push_str(&format!(
            "      - {{ targets: ['{address}'], labels: {{ broker: '{broker}' }} }}\n"
        ));
        exporters.push(task);
    }
    let Some(prom) = services::prometheus(
        &format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             scrape_configs:\n  - job_name: kafka\n    static_configs:\n{targets}"
        ),
        &[],
    )
    .await
    else {
        return;
    };
    // The window filled: the sick broker's CPU reads as it burns.
    until(
        "Prometheus to have a window of every broker",
        started,
        || async {
            let cpu = instant(&prom, CPU_QUERY).await;
            (cpu.len() == 3 && cpu.iter().any(|(_, v)| *v >= 0.9)).then_some(())
        },
    )
    .await;

    let mut spec = ServeSpec::new(dir.path());
    spec.backends = &[];
    spec.agents = Some(agent_for_jmx(dir.path()));
    spec.real_backends = format!(
        "  kafka:\n    kafka:\n      bootstrap_servers: \"{bootstrap}\"\n      timeout: 5s\n      workloads:\n\
         \x20       groups: {{ orders-consumer: {{ namespace: shop, deployment: orders-consumer, topics: [orders] }} }}\n\
         \x20       brokers: {{ namespace: kafka, pod: \"my-cluster-kafka-{{id}}\", strimzi_kafka: my-cluster }}\n\
         \x20   kubernetes: {{ kubeconfig: {}, timeout: 5s }}\n\
         \x20   metrics: {{ url: \"{}\" }}\n",
        fake.kubeconfig(dir.path()).expect("kubeconfig").display(),
        prom.url
    );
    let s = spec.start();

    // The alert as kafka_exporter's rules label it.
    let alert_sent = Instant::now();
    let (status, body) = s
        .post(
            AM,
            INTAKE,
            &notification(
                "firing",
                &[(
                    "KafkaConsumerLag",
                    "fp-orders-lag",
                    &[("topic", "orders"), ("consumergroup", "orders-consumer")],
                )],
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let incident = proposed(&s, started).await;
    let to_proposal = alert_sent.elapsed();
    let approval = &incident["approval"];
    assert_eq!(approval["runbook"], "adjust-broker-gc", "{incident}");
    assert_eq!(
        approval["params"]["broker_id"],
        json!(2),
        "the diagnosis named the broker with the long pauses: {incident}"
    );
    let id = incident["id"].as_str().expect("incident id").to_owned();
    let timeline = |kind: &str| -> Vec<Value> {
        s.audit()
            .into_iter()
            .filter(|r| r["incident"] == id.as_str() && r["kind"] == kind)
            .collect()
    };
    // The evidence came from the real parts: lag from the offsets (6 partitions × (50 − 10)),
    // the CPU and the pause from Prometheus.
    let probe = timeline("probe").into_iter().next().expect("the probe");
    let outputs = &probe["data"]["outputs"];
    assert_eq!(outputs["lag-and-cpu.lag"], "240", "{probe}");
    assert_eq!(outputs["lag-and-cpu.busiest_broker"], "2", "{probe}");
    let diagnosis = timeline("result")
        .into_iter()
        .find(|r| r["data"]["runbook_id"] == "check-broker-health")
        .expect("the diagnosis ran");
    assert_eq!(
        diagnosis["data"]["outcome"]["status"], "succeeded",
        "{diagnosis}"
    );
    assert!(
        timeline("capability-intent").is_empty(),
        "nothing is changed before the approval"
    );
    let before = fake.get(KAFKAS, "kafka", "my-cluster").expect("Kafka");
    assert_eq!(before["metadata"]["generation"], 1);

    s.approve(approval).await;
    let result = until("the runbook's result", started, || async {
        timeline("result")
            .into_iter()
            .find(|r| r["data"]["runbook_id"] == "adjust-broker-gc")
    })
    .await;
    assert_eq!(result["data"]["runbook_id"], "adjust-broker-gc");
    assert_eq!(result["data"]["outcome"]["status"], "succeeded", "{result}");

    // The pause target is in the cluster's resource (the operator rolls it out), the sick
    // broker's pod was deleted, the others untouched.
    let after = fake.get(KAFKAS, "kafka", "my-cluster").expect("Kafka");
    assert_eq!(
        after["spec"]["kafka"]["jvmOptions"],
        json!({ "-Xmx": "4g", "-XX": { "MaxGCPauseMillis": "200" } })
    );
    assert!(fake.get(PODS, "kafka", "my-cluster-kafka-2").is_none());
    for id in [1, 3] {
        assert!(
            fake.get(PODS, "kafka", &format!("my-cluster-kafka-{id}"))
                .is_some()
        );
    }
    // One intent per mutation, each of exactly the approved broker.
    let intents: Vec<(String, Value)> = timeline("capability-intent")
        .into_iter()
        .map(|r| {
            (
                r["data"]["intent"]["capability"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                r["data"]["intent"]["args"]["broker_id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        intents,
        [
            ("kafka.set-broker-config".to_owned(), json!(2)),
            ("kafka.broker-restart".to_owned(), json!(2)),
        ],
    );
    println!(
        "Kafka playbook on real protocols: alert → proposal {:.1} s (the playbook's budget: 90 s); whole trial {:.1} s",
        to_proposal.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    for task in exporters {
        task.abort();
    }
}

/// `probe_params:` in an agent file: the probe reads the operator's value, and a value for a probe
/// or a parameter that does not exist, or of the wrong type, stops the agent at start, named.
#[tokio::test]
async fn the_agent_file_names_its_probes_queries() {
    use crate::common::{HostSpec, patched_agent, world_alert};
    let world = "agent-kafka-gc-pause.yaml";
    let with = |dir: &Path, params: &str| {
        patched_agent(
            dir,
            "agents/kafka.yaml",
            &[("\ntrust:\n", &format!("\nprobe_params:\n{params}trust:\n"))],
        )
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = with(
        dir.path(),
        "  triage-probe: { cpu_query: 'sum by (broker) (rate(broker_cpu_seconds{job=\"kafka\"}[1m]))' }\n",
    );
    let host = HostSpec {
        agents: vec![agent],
        ..HostSpec::new(dir.path(), "agents/kafka.yaml", world)
    }
    .start()
    .await
    .expect("runtime");
    host.new_incident(world_alert(world)).await;
    let queries: Vec<String> = host
        .mock
        .calls()
        .into_iter()
        .filter(|c| c.capability == "metrics.query")
        .filter_map(|c| c.args["promql"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        queries.first().map(String::as_str),
        Some(r#"sum by (broker) (rate(broker_cpu_seconds{job="kafka"}[1m]))"#),
        "{queries:?}"
    );

    for (params, says) in [
        (
            "  no-such-probe: { cpu_query: up }\n",
            "probe_params.no-such-probe",
        ),
        (
            "  triage-probe: { cpu_querry: up }\n",
            "probe_params.triage-probe.cpu_querry: probe `triage-probe` has no parameter",
        ),
        (
            "  triage-probe: { cpu_query: 5 }\n",
            "probe_params.triage-probe.cpu_query",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = with(dir.path(), params);
        let refused = HostSpec {
            agents: vec![agent],
            ..HostSpec::new(dir.path(), "agents/kafka.yaml", world)
        }
        .start()
        .await;
        let Err(e) = refused else {
            panic!("{params} was accepted");
        };
        assert!(e.to_string().contains(says), "{params}: {e}");
    }
}
