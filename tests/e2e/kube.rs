//! The fake Kubernetes API server (`tests/fake-kube`) checked with the real client: Debian's
//! `kubectl` gets, restarts, waits for, scales and deletes against it and must see what it sees
//! on a real cluster. Where the fake differs from a real cluster the test says so.

use std::process::Command;
use std::time::Duration;
use themis_fake_kube::FakeKube;

fn kubectl_present() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Kubectl(std::path::PathBuf);

impl Kubectl {
    /// (exit ok, stdout, stderr)
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.0)
            .args(args)
            .env_remove("KUBECONFIG")
            .output()
            .expect("kubectl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "kubectl {args:?}: {err}{out}");
        out
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_sees_the_fake_api_server_as_a_cluster() {
    if !kubectl_present() {
        assert!(
            std::env::var_os("THEMIS_REQUIRE_SERVICES").is_none(),
            "kubectl is required (Debian's kubectl package; scripts/test installs it)"
        );
        eprintln!("skipped: no kubectl");
        return;
    }
    let fake = FakeKube::start(Duration::from_millis(20))
        .await
        .expect("fake api server");
    let dir = tempfile::tempdir().expect("tempdir");
    let k = Kubectl(fake.kubeconfig(dir.path()).expect("kubeconfig"));
    fake.deployment("shop", "web", 3, "web:1.0");
    assert!(
        fake.rolled_out("shop", "web", Duration::from_secs(10))
            .await
    );

    // get: the deployment's status and its pods by label.
    let ready = k.ok(&[
        "-n",
        "shop",
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.status.readyReplicas}",
    ]);
    assert_eq!(ready, "3");
    let pods = k.ok(&["-n", "shop", "get", "pods", "-l", "app=web", "-o", "name"]);
    assert_eq!(pods.lines().count(), 3, "{pods}");
    assert!(pods.lines().all(|l| l.starts_with("pod/web-")), "{pods}");
    // A custom resource by discovery: Strimzi's Kafka, read and merge-patched as a Strimzi user
    // (and the Kafka agent) would.
    fake.strimzi_kafka(
        "kafka",
        "my-cluster",
        serde_json::json!({ "kafka": { "replicas": 3 } }),
    );
    let replicas = k.ok(&[
        "-n",
        "kafka",
        "get",
        "kafka",
        "my-cluster",
        "-o",
        "jsonpath={.spec.kafka.replicas}",
    ]);
    assert_eq!(replicas, "3");
    k.ok(&[
        "-n",
        "kafka",
        "patch",
        "kafkas.kafka.strimzi.io",
        "my-cluster",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"kafka":{"jvmOptions":{"-XX":{"MaxGCPauseMillis":"200"}}}}}"#,
    ]);
    let pause = k.ok(&[
        "-n",
        "kafka",
        "get",
        "kafka",
        "my-cluster",
        "-o",
        "jsonpath={.spec.kafka.jvmOptions.-XX.MaxGCPauseMillis}",
    ]);
    assert_eq!(pause, "200");
    // Events about one object, as `kubectl get events --field-selector` asks for them.
    fake.event(
        "shop",
        ("Pod", "web-x1"),
        "Warning",
        "BackOff",
        "Back-off restarting failed container",
        3,
        Duration::from_secs(10),
    );
    fake.event(
        "shop",
        ("Pod", "web-y2"),
        "Normal",
        "Pulled",
        "image present",
        1,
        Duration::from_secs(10),
    );
    let reasons = k.ok(&[
        "-n",
        "shop",
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web-x1",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert_eq!(reasons, "BackOff");
    // Without -o kubectl asks for a server-side Table; the fake sends the list as JSON and
    // kubectl prints the names (a real server adds READY/STATUS/RESTARTS/AGE columns).
    let (_, out, err) = k.run(&["-n", "shop", "get", "pods"]);
    assert!(out.contains("web-") || err.is_empty(), "{out}{err}");

    // rollout restart: the restartedAt annotation by patch, a new generation, a new replica
    // set; rollout status waits for it through a watch.
    let restarted = k.ok(&["-n", "shop", "rollout", "restart", "deployment/web"]);
    assert_eq!(restarted.trim(), "deployment.apps/web restarted");
    let d = fake
        .get(themis_fake_kube::cluster::DEPLOYMENTS, "shop", "web")
        .expect("web");
    assert!(
        d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string(),
        "{d}"
    );
    assert_eq!(d["metadata"]["generation"], 2);
    let status = k.ok(&[
        "-n",
        "shop",
        "rollout",
        "status",
        "deployment/web",
        "--timeout=30s",
    ]);
    assert!(
        status.contains("deployment \"web\" successfully rolled out"),
        "{status}"
    );
    let history = k.ok(&["-n", "shop", "rollout", "history", "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // scale through the scale subresource.
    let scaled = k.ok(&["-n", "shop", "scale", "deployment/web", "--replicas=5"]);
    assert_eq!(scaled.trim(), "deployment.apps/web scaled");
    k.ok(&[
        "-n",
        "shop",
        "rollout",
        "status",
        "deployment/web",
        "--timeout=30s",
    ]);
    assert_eq!(fake.pods("shop").len(), 5);

    // delete a pod: gone, and its replica set replaces it.
    let victim = fake.pods("shop")[0].clone();
    let deleted = k.ok(&["-n", "shop", "delete", "pod", &victim, "--timeout=30s"]);
    assert_eq!(deleted.trim(), format!("pod \"{victim}\" deleted"));
    assert!(!fake.pods("shop").contains(&victim));
    // The replacement comes a controller pass later (status lags the pods, as on a cluster).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fake.pods("shop").len() < 5 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fake.pods("shop").len(), 5);

    // Errors as a real API server words them.
    let (ok, _, err) = k.run(&["-n", "shop", "get", "deployment", "missing"]);
    assert!(!ok);
    assert!(
        err.contains("Error from server (NotFound): deployments.apps \"missing\" not found"),
        "{err}"
    );
    fake.deny("patch", "deployments/scale");
    let (ok, _, err) = k.run(&["-n", "shop", "scale", "deployment/web", "--replicas=2"]);
    assert!(!ok);
    assert!(
        err.contains("Error from server (Forbidden)")
            && err.contains("cannot patch resource \"deployments/scale\" in API group \"apps\""),
        "{err}"
    );
}

/// The Kubernetes agent on the real backend: `themis serve` reads a crash loop from the API
/// server, proposes a rollout restart (destructive: a human approves), restarts the deployment
/// exactly as kubectl does, and its postcondition waits for the rollout to finish.
#[tokio::test(flavor = "multi_thread")]
async fn the_kubernetes_agent_restarts_a_crash_looping_deployment_through_the_api_server() {
    use crate::serve::{AM, INTAKE, ONCALL, ServeSpec, notification};
    use serde_json::json;
    use themis_fake_kube::cluster::DEPLOYMENTS;

    let fake = FakeKube::start(Duration::from_millis(50))
        .await
        .expect("fake api server");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = fake.kubeconfig(dir.path()).expect("kubeconfig");
    fake.deployment("shop", "checkout", 3, "checkout:2.1");
    assert!(
        fake.rolled_out("shop", "checkout", Duration::from_secs(10))
            .await
    );
    let sick: Vec<String> = fake.pods("shop").into_iter().take(2).collect();
    for pod in &sick {
        fake.pod_status(
            "shop",
            pod,
            json!({
                "conditions": [ { "type": "Ready", "status": "False" } ],
                "containerStatuses": [ { "name": "checkout", "image": "checkout:2.1", "ready": false, "restartCount": 14,
                    "state": { "waiting": { "reason": "CrashLoopBackOff" } },
                    "lastState": { "terminated": { "reason": "Error", "exitCode": 1 } } } ],
            }),
        );
        fake.logs(
            "shop",
            pod,
            &["connecting to payments…", "payments unreachable: giving up"],
        );
        fake.event(
            "shop",
            ("Pod", pod),
            "Warning",
            "BackOff",
            &format!("Back-off restarting failed container checkout in pod {pod}"),
            14,
            Duration::from_secs(30),
        );
    }

    let s = ServeSpec {
        real_backends: format!(
            "  kubernetes:\n    kubernetes: {{ kubeconfig: {}, timeout: 5s }}\n",
            kubeconfig.display()
        ),
        ..ServeSpec::new(dir.path())
    }
    .start();
    let labels = [
        ("namespace", "shop"),
        ("deployment", "checkout"),
        ("severity", "warning"),
    ];
    let (status, body) = s
        .post(
            AM,
            INTAKE,
            &notification("firing", &[("KubePodCrashLooping", "fp-checkout", &labels)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.incidents_until("the proposal", |l| {
        l.iter().any(|i| i["status"] == "pending-approval")
    })
    .await;
    let (_, approvals) = s.get("/api/v1/approvals", ONCALL).await;
    let approval = &approvals[0];
    assert_eq!(approval["runbook"], "restart-deployment", "{approval}");
    // The cluster's own account of the crash loop reached the evidence the human reads.
    let probe = s
        .audit()
        .into_iter()
        .find(|r| {
            r["kind"] == "phase"
                && r["data"]["runbook"] == "pod-health-probe"
                && r["data"]["record"]["phase"] == "action"
        })
        .expect("the probe's action");
    let evidence = probe["data"]["record"]["evidence"].to_string();
    assert!(evidence.contains("BackOff ×14"), "{evidence}");
    s.approve(approval).await;
    let list = s
        .incidents_until("the restart to be done", |l| {
            l.iter().any(|i| {
                matches!(
                    i["status"].as_str(),
                    Some("verifying" | "unverified" | "resolved" | "failed")
                )
            })
        })
        .await;
    assert_ne!(list[0]["status"], "failed", "{list:#?}\n{:#?}", s.audit());

    // The API server saw the restart kubectl would have made, once, and the rollout finished:
    // the crash-looping pods are gone, replaced by the new replica set's.
    let d = fake.get(DEPLOYMENTS, "shop", "checkout").expect("checkout");
    assert!(
        d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string(),
        "{d}"
    );
    assert_eq!(d["metadata"]["generation"], 2);
    assert!(fake.pods("shop").iter().all(|p| !sick.contains(p)));
    let restarts = s
        .kinds("capability-intent")
        .into_iter()
        .filter(|r| r["data"]["intent"]["capability"] == "k8s.rollout-restart")
        .count();
    assert_eq!(restarts, 1);
    let posts: Vec<String> = s
        .kinds("phase")
        .into_iter()
        .filter(|r| r["data"]["record"]["phase"] == "postcondition")
        .map(|r| {
            r["data"]["record"]["status"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(
        posts.last().map(String::as_str),
        Some("passed"),
        "{posts:?}"
    );
}

/// The Kafka agent's actions on the workloads around a real-protocol cluster (librdkafka's mock
/// cluster) running on the fake API server: the consumers' Deployment restarted and scaled
/// (never past the partitions its group is assigned), a broker's pod deleted only while every
/// partition is replicated, an unbound group never guessed.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_actions_act_on_the_bound_workloads_through_the_api_server() {
    use rdkafka::mocking::MockCluster;
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use themis_backend_kafka::{KafkaBackend, KafkaSettings};
    use themis_backend_kubernetes::kafka_workloads::{
        BrokerPods, GroupWorkload, KafkaOnKubernetes, KafkaWorkloads,
    };
    use themis_backend_kubernetes::{KubernetesBackend, KubernetesSettings};
    use themis_caps::KafkaCaps;
    use themis_caps::types::CapError;
    use themis_fake_kube::cluster::{DEPLOYMENTS, KAFKAS, PODS};

    let cluster = MockCluster::new(3).unwrap_or_else(|e| panic!("mock cluster: {e}"));
    let bootstrap = cluster.bootstrap_servers();
    cluster
        .create_topic("orders", 6, 3)
        .unwrap_or_else(|e| panic!("{e}"));
    let fake = FakeKube::start(Duration::from_millis(10))
        .await
        .expect("fake api server");
    let dir = tempfile::tempdir().expect("tempdir");
    fake.deployment("shop", "orders-consumer", 3, "orders-consumer:4");
    fake.strimzi_kafka(
        "kafka",
        "my-cluster",
        json!({ "kafka": { "replicas": 3, "config": { "num.io.threads": 8 }, "jvmOptions": { "-Xmx": "4g" } } }),
    );
    fake.broker_pods("kafka", "my-cluster", 0..3);
    assert!(
        fake.rolled_out("shop", "orders-consumer", Duration::from_secs(10))
            .await
    );
    let mut settings = KafkaSettings::new(bootstrap.clone());
    settings.timeout = Duration::from_secs(5);
    let kafka = Arc::new(KafkaBackend::new("kafka", settings).unwrap_or_else(|e| panic!("{e}")));
    let k8s = Arc::new(KubernetesBackend::new(
        "kafka",
        KubernetesSettings {
            kubeconfig: Some(fake.kubeconfig(dir.path()).expect("kubeconfig")),
            context: None,
            timeout: Duration::from_secs(5),
        },
    ));
    let caps = KafkaOnKubernetes::new(
        kafka,
        k8s,
        KafkaWorkloads {
            groups: BTreeMap::from([(
                "orders-consumer".to_string(),
                GroupWorkload {
                    namespace: "shop".into(),
                    deployment: "orders-consumer".into(),
                    topics: vec!["orders".into()],
                },
            )]),
            brokers: Some(BrokerPods {
                namespace: "kafka".into(),
                pod: "my-cluster-kafka-{id}".into(),
                strimzi_kafka: Some("my-cluster".into()),
            }),
        },
    );

    let w = caps
        .describe_consumers("orders-consumer")
        .await
        .expect("workload");
    assert_eq!(
        (w.replicas_desired, w.replicas_ready, w.revision.as_str()),
        (3, 3, "1")
    );
    let after = caps
        .restart_consumers("orders-consumer")
        .await
        .expect("restart");
    assert_eq!(after.revision, "2");
    let d = fake
        .get(DEPLOYMENTS, "shop", "orders-consumer")
        .expect("deployment");
    assert!(
        d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string()
    );
    assert!(
        fake.rolled_out("shop", "orders-consumer", Duration::from_secs(10))
            .await
    );
    let w = caps
        .describe_consumers("orders-consumer")
        .await
        .expect("workload");
    assert_eq!((w.replicas_ready, w.revision.as_str()), (3, "2"));

    // Scaling stops at the partitions of the group's topics (read from the cluster).
    let too_many = caps.scale_consumers("orders-consumer", 7).await;
    let Err(CapError::InvalidArgument(why)) = too_many else {
        panic!("7 consumers for 6 partitions must be refused: {too_many:?}");
    };
    assert!(why.contains("6 partitions"), "{why}");
    caps.scale_consumers("orders-consumer", 6)
        .await
        .expect("scale to the partitions");
    let d = fake
        .get(DEPLOYMENTS, "shop", "orders-consumer")
        .expect("deployment");
    assert_eq!(d["spec"]["replicas"], 6);

    let Err(CapError::Unavailable(why)) = caps.restart_consumers("payments").await else {
        panic!("an unbound group is never guessed");
    };
    assert!(why.contains("workloads.groups"), "{why}");

    // A broker's configuration is the cluster's Strimzi resource: read, changed by a merge patch
    // of the one field, read back; a key Strimzi manages, or a broker the cluster lacks, refused.
    let settings = |pairs: Vec<themis_core::types::Pair>| -> Vec<(String, String)> {
        pairs.into_iter().map(|p| (p.key, p.value)).collect()
    };
    let before = caps.broker_config(1).await.expect("config");
    assert_eq!(
        settings(before),
        [("jvm.heap.max", "4g"), ("num.io.threads", "8")].map(|(k, v)| (k.into(), v.into()))
    );
    caps.set_broker_config(1, "jvm.gc.max-pause-millis", "150")
        .await
        .expect("set");
    let stored = fake
        .get(KAFKAS, "kafka", "my-cluster")
        .expect("the Kafka resource");
    assert_eq!(
        stored["spec"]["kafka"]["jvmOptions"],
        json!({ "-Xmx": "4g", "-XX": { "MaxGCPauseMillis": "150" } })
    );
    assert_eq!(stored["metadata"]["generation"], 2, "a spec change");
    assert!(
        settings(caps.broker_config(1).await.expect("config"))
            .contains(&("jvm.gc.max-pause-millis".into(), "150".into()))
    );
    let managed = caps
        .set_broker_config(1, "listeners", "PLAINTEXT://:9092")
        .await;
    assert!(matches!(managed, Err(CapError::Denied(_))), "{managed:?}");
    let unknown = caps.set_broker_config(42, "num.io.threads", "16").await;
    assert!(matches!(unknown, Err(CapError::NotFound(_))), "{unknown:?}");
    fake.deny("patch", "kafkas");
    let Err(CapError::Denied(why)) = caps.set_broker_config(1, "num.io.threads", "16").await else {
        panic!("a role without patch on kafkas is refused");
    };
    assert!(
        why.contains("`patch` on `kafkas.kafka.strimzi.io`"),
        "{why}"
    );

    caps.broker_restart(1).await.expect("broker pod deleted");
    assert!(fake.get(PODS, "kafka", "my-cluster-kafka-1").is_none());
    assert!(fake.get(PODS, "kafka", "my-cluster-kafka-0").is_some());
}
