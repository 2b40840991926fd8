//! The Kubernetes backend against the fake API server (`tests/fake-kube`, whose fidelity the
//! e2e suite checks with the real kubectl), over real HTTP through kube.

use std::time::Duration;
use themis_backend_kubernetes::{KubernetesBackend, KubernetesSettings};
use themis_caps::KubernetesCaps;
use themis_caps::types::CapError;
use themis_fake_kube::FakeKube;
use themis_fake_kube::cluster::DEPLOYMENTS;

async fn setup() -> (FakeKube, KubernetesBackend, tempfile::TempDir) {
    let fake = FakeKube::start(Duration::from_millis(10))
        .await
        .expect("fake api server");
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = KubernetesBackend::new(
        "kubernetes",
        KubernetesSettings {
            kubeconfig: Some(fake.kubeconfig(dir.path()).expect("kubeconfig")),
            context: None,
            timeout: Duration::from_secs(5),
        },
    );
    fake.deployment("shop", "web", 3, "web:1.0");
    assert!(
        fake.rolled_out("shop", "web", Duration::from_secs(10))
            .await
    );
    (fake, backend, dir)
}

/// Wait as a step's postcondition does: until the rollout is complete.
async fn rolled_out(b: &KubernetesBackend, replicas: u32) -> themis_caps::types::Deployment {
    for _ in 0..500 {
        let d = b.get_deployment("shop", "web").await.expect("deployment");
        if d.observed_generation == d.generation
            && d.replicas_updated == replicas
            && d.replicas_available == replicas
        {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never rolled out");
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_report_the_cluster_as_it_is() {
    let (fake, b, _dir) = setup().await;
    let d = b.get_deployment("shop", "web").await.expect("deployment");
    assert_eq!(
        (
            d.replicas_desired,
            d.replicas_ready,
            d.replicas_updated,
            d.replicas_available
        ),
        (3, 3, 3, 3)
    );
    assert_eq!((d.generation, d.observed_generation), (1, 1));
    assert!(
        d.conditions
            .iter()
            .any(|c| c.kind == "Available" && c.status == "True")
    );

    let pods = b.list_pods("shop", "app=web").await.expect("pods");
    assert_eq!(pods.len(), 3);
    assert!(
        pods.iter()
            .all(|p| p.phase == "Running" && p.ready && p.restarts == 0)
    );
    assert!(
        b.list_pods("shop", "app=other")
            .await
            .expect("pods")
            .is_empty()
    );

    // A crash-looping container: why, and how often.
    let sick = pods[0].name.clone();
    fake.pod_status(
        "shop",
        &sick,
        serde_json::json!({
            "conditions": [ { "type": "Ready", "status": "False" } ],
            "containerStatuses": [ { "name": "web", "ready": false, "restartCount": 7, "image": "web:1.0",
                "state": { "waiting": { "reason": "CrashLoopBackOff" } },
                "lastState": { "terminated": { "reason": "OOMKilled", "exitCode": 137 } } } ],
        }),
    );
    let pods = b.list_pods("shop", "app=web").await.expect("pods");
    let p = pods.iter().find(|p| p.name == sick).expect("the sick pod");
    assert_eq!(
        (p.ready, p.restarts, p.reason.as_deref()),
        (false, 7, Some("CrashLoopBackOff"))
    );

    fake.logs("shop", &sick, &["one", "two", "three"]);
    assert_eq!(
        b.pod_logs("shop", &sick, 2).await.expect("logs"),
        ["two", "three"]
    );
    let owner = b
        .pod_owner("shop", &sick)
        .await
        .expect("owner")
        .expect("owned");
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Deployment", "web")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_scale_delete_and_undo_act_as_kubectl_does() {
    let (fake, b, _dir) = setup().await;
    b.rollout_restart("shop", "web").await.expect("restart");
    let d = rolled_out(&b, 3).await;
    assert_eq!(d.generation, 2);
    let raw = fake.get(DEPLOYMENTS, "shop", "web").expect("web");
    assert!(
        raw["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string()
    );
    let history = b.rollout_history("shop", "web").await.expect("history");
    assert_eq!(
        history.iter().map(|r| r.revision).collect::<Vec<_>>(),
        [2, 1]
    );
    assert_eq!(history[0].images, ["web:1.0"]);
    assert_eq!(history[0].ready, 3);

    // Back to revision 1: its template without the restart annotation, as revision 3.
    b.rollout_undo("shop", "web", 1).await.expect("undo");
    rolled_out(&b, 3).await;
    let raw = fake.get(DEPLOYMENTS, "shop", "web").expect("web");
    assert!(
        raw["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_null(),
        "{raw}"
    );
    assert!(raw["spec"]["template"]["metadata"]["labels"]["pod-template-hash"].is_null());
    let history = b.rollout_history("shop", "web").await.expect("history");
    assert_eq!(history[0].revision, 3);
    assert!(matches!(
        b.rollout_undo("shop", "web", 9).await,
        Err(CapError::NotFound(_))
    ));

    b.scale_deployment("shop", "web", 5).await.expect("scale");
    rolled_out(&b, 5).await;
    assert_eq!(b.list_pods("shop", "app=web").await.expect("pods").len(), 5);

    let victim = fake.pods("shop")[0].clone();
    b.delete_pod("shop", &victim).await.expect("delete");
    assert!(!fake.pods("shop").contains(&victim));
    assert!(matches!(
        b.delete_pod("shop", &victim).await,
        Err(CapError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_that_loses_a_race_is_read_again_once() {
    let (fake, b, _dir) = setup().await;
    b.rollout_restart("shop", "web").await.expect("restart");
    rolled_out(&b, 3).await;
    fake.races(1);
    b.rollout_undo("shop", "web", 1)
        .await
        .expect("undone after one re-read");
    fake.races(2);
    let Err(CapError::Failed(why)) = b.rollout_undo("shop", "web", 0).await else {
        panic!("two lost races in a row must fail");
    };
    assert!(why.contains("kept changing"), "{why}");
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_say_what_is_wrong_and_bad_names_never_leave() {
    let (fake, b, _dir) = setup().await;
    assert!(matches!(
        b.get_deployment("shop", "nope").await,
        Err(CapError::NotFound(_))
    ));
    assert!(matches!(
        b.get_deployment("no-such-ns", "web").await,
        Err(CapError::NotFound(_))
    ));
    for (ns, name) in [("Shop", "web"), ("shop", "../web"), ("shop", "web?watch=1")] {
        assert!(
            matches!(
                b.get_deployment(ns, name).await,
                Err(CapError::InvalidArgument(_))
            ),
            "{ns}/{name}"
        );
    }
    assert!(matches!(
        b.list_pods("shop", "app=web&x").await,
        Err(CapError::InvalidArgument(_))
    ));
    fake.deny("patch", "deployments/scale");
    let Err(CapError::Denied(why)) = b.scale_deployment("shop", "web", 2).await else {
        panic!("a missing RBAC verb is a denial");
    };
    assert!(why.contains("`patch` on `deployments/scale`"), "{why}");
    assert_eq!(fake.pods("shop").len(), 3, "nothing scaled");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_api_server_is_unavailable_in_bounded_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("kubeconfig");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    std::fs::write(
        &file,
        format!("apiVersion: v1\nkind: Config\ncurrent-context: x\nclusters:\n- name: x\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: x\n  context:\n    cluster: x\n    user: x\nusers:\n- name: x\n  user: {{}}\n"),
    )
    .expect("kubeconfig");
    let b = KubernetesBackend::new(
        "kubernetes",
        KubernetesSettings {
            kubeconfig: Some(file),
            context: None,
            timeout: Duration::from_millis(500),
        },
    );
    let started = std::time::Instant::now();
    assert!(matches!(
        b.get_deployment("shop", "web").await,
        Err(CapError::Unavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(b.doctor().await.is_err());
}

/// A StatefulSet's rollout as its status reports it, and the events about one object, newest
/// first, counted rather than repeated, bounded.
#[tokio::test(flavor = "multi_thread")]
async fn statefulsets_and_events_are_read_as_the_api_server_keeps_them() {
    use serde_json::json;
    use themis_fake_kube::cluster::STATEFULSETS;
    let (fake, b, _dir) = setup().await;
    fake.with(|c| {
        c.ensure_namespace("kafka");
        c.create(
            STATEFULSETS,
            "kafka",
            json!({
                "metadata": { "name": "my-cluster-kafka" },
                "spec": { "replicas": 3, "serviceName": "my-cluster-kafka-brokers",
                          "selector": { "matchLabels": { "app": "kafka" } },
                          "template": { "metadata": { "labels": { "app": "kafka" } }, "spec": { "containers": [] } } },
                "status": { "replicas": 3, "readyReplicas": 2, "updatedReplicas": 1,
                            "currentRevision": "my-cluster-kafka-6d5", "updateRevision": "my-cluster-kafka-7f9",
                            "observedGeneration": 1 },
            }),
        );
    });
    let s = b
        .get_statefulset("kafka", "my-cluster-kafka")
        .await
        .expect("statefulset");
    assert_eq!(
        (s.replicas_desired, s.replicas_ready, s.replicas_updated),
        (3, 2, 1)
    );
    assert_eq!(
        (s.current_revision.as_str(), s.update_revision.as_str()),
        ("my-cluster-kafka-6d5", "my-cluster-kafka-7f9"),
        "a rollout under way"
    );
    assert_eq!((s.generation, s.observed_generation), (1, 1));
    assert!(matches!(
        b.get_statefulset("kafka", "nope").await,
        Err(CapError::NotFound(_))
    ));

    let pod = "web-abc12";
    fake.event(
        "shop",
        ("Pod", pod),
        "Normal",
        "Pulled",
        "Container image \"web:1.0\" already present on machine",
        1,
        Duration::from_secs(300),
    );
    fake.event(
        "shop",
        ("Pod", pod),
        "Warning",
        "BackOff",
        "Back-off restarting failed container web in pod web-abc12",
        14,
        Duration::from_secs(20),
    );
    fake.event(
        "shop",
        ("Pod", "other-pod"),
        "Warning",
        "Failed",
        "not this one",
        1,
        Duration::from_secs(5),
    );
    for n in 0..60 {
        fake.event(
            "shop",
            ("Pod", "noisy"),
            "Normal",
            "Scheduled",
            &format!("event {n}"),
            1,
            Duration::from_secs(1000 + n),
        );
    }
    let events = b.list_events("shop", pod).await.expect("events");
    let seen: Vec<(&str, &str, u32)> = events
        .iter()
        .map(|e| (e.kind.as_str(), e.reason.as_str(), e.count))
        .collect();
    assert_eq!(seen, [("Warning", "BackOff", 14), ("Normal", "Pulled", 1)]);
    assert_eq!(
        (
            events[0].object_kind.as_str(),
            events[0].object_name.as_str()
        ),
        ("Pod", pod)
    );
    assert!(
        (15.0..120.0).contains(&events[0].age_seconds),
        "{}",
        events[0].age_seconds
    );
    assert_eq!(
        b.list_events("shop", "noisy").await.expect("events").len(),
        50
    );
    assert!(matches!(
        b.list_events("shop", "Not_A_Name").await,
        Err(CapError::InvalidArgument(_))
    ));
}
