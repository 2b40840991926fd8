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
