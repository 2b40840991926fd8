//! Signed bundles through a real OCI registry (Debian's `docker-registry`, the CNCF distribution
//! registry): push, pull by tag and by digest, what a pull refuses — a tampered blob, a wrong
//! pin, an untrusted signer, a registry that is down — and never leaves half a bundle; basic
//! auth; an agent's catalog pinned by digest, cached, and unavailable (not fatal) when the
//! registry is down.

use crate::common::{HostSpec, records, repo, text, world_alert};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use themis_agent::store::IncidentStatus;
use themis_testkit::services::{self, Service};

const BUNDLE: &str = "runbooks/kafka/scale-consumer";
const KAFKA_KEY: &str = "keys/demo/demo-kafka-team.pub";
/// `htpasswd -nbB themis test-only-password`: a test fixture, not a secret.
const HTPASSWD: &str = "themis:$2y$05$8iblGQ65gzEYjMU0n8ZdXeS0ixF2tOzLP2gbepu3qhw2b.xlA2EW2";

fn themis(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_themis"));
    c.args(args)
        .current_dir(repo())
        // No developer's `docker login` leaks into what these tests see.
        .env("DOCKER_CONFIG", "/nonexistent")
        .env_remove("THEMIS_REGISTRY_USERNAME")
        .env_remove("THEMIS_REGISTRY_PASSWORD");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("themis runs")
}

fn host_of(service: &Service) -> String {
    service.url.trim_start_matches("http://").to_owned()
}

fn push(service: &Service, env: &[(&str, &str)]) -> Value {
    let reference = format!("oci://{}/sre/scale-consumer:1.2.0", host_of(service));
    let out = themis(&["runbook", "push", BUNDLE, &reference, "--json"], env);
    assert!(out.status.success(), "push: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("push prints JSON")
}

/// `themis runbook pull REFERENCE DEST` with `extra` arguments (the trust) and environment.
fn pull(reference: &str, dest: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let dest = dest.display().to_string();
    let mut args = vec!["runbook", "pull", reference, &dest];
    args.extend_from_slice(extra);
    themis(&args, env)
}

/// No folder, and no staging folder, is left in `parent`.
fn nothing_left(parent: &Path, dest: &Path) {
    assert!(!dest.exists(), "{} was left behind", dest.display());
    let staged: Vec<PathBuf> = std::fs::read_dir(parent)
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".themis-pull"))
        })
        .collect();
    assert!(staged.is_empty(), "staging left behind: {staged:?}");
}

fn same_bytes(a: &Path, b: &Path) {
    for f in ["manifest.yaml", "runbook.sig", "components/scale-out.wasm"] {
        assert_eq!(
            std::fs::read(a.join(f)).expect("source"),
            std::fs::read(b.join(f)).expect("pulled"),
            "{f} differs after the round trip"
        );
    }
}

#[tokio::test]
async fn a_pushed_bundle_pulls_by_tag_and_by_digest_verified_and_byte_identical() {
    let Some(registry) = services::registry(None).await else {
        return;
    };
    let pushed = push(&registry, &[]);
    let digest = pushed["digest"].as_str().expect("digest");
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{pushed}"
    );
    let pinned = pushed["pinned"].as_str().expect("pinned");
    assert!(
        pinned.ends_with(&format!("/sre/scale-consumer@{digest}")),
        "{pinned}"
    );

    let work = tempfile::tempdir().expect("tempdir");
    let by_tag = work.path().join("by-tag");
    let reference = format!("oci://{}/sre/scale-consumer:1.2.0", host_of(&registry));
    let out = pull(&reference, &by_tag, &["--trust", KAFKA_KEY, "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pulled: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(pulled["digest"], digest);
    assert_eq!(pulled["runbook"], "scale-consumer");
    same_bytes(&repo().join(BUNDLE), &by_tag);

    // By digest, against an agent's whole trust policy (keys and minimum versions).
    let by_digest = work.path().join("by-digest");
    let out = pull(pinned, &by_digest, &["--agent", "agents/kafka.yaml"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    same_bytes(&repo().join(BUNDLE), &by_digest);
    let out = themis(
        &[
            "runbook",
            "verify",
            &by_digest.display().to_string(),
            "--trust",
            KAFKA_KEY,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A pin that is not this manifest's digest is refused, whatever the tag says.
    let wrong = format!(
        "oci://{}/sre/scale-consumer@sha256:{}",
        host_of(&registry),
        "0".repeat(64)
    );
    let dest = work.path().join("wrong-pin");
    let out = pull(&wrong, &dest, &["--trust", KAFKA_KEY], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    nothing_left(work.path(), &dest);

    // The repository must carry the runbook's id: that is what agents check a pull against.
    let out = themis(
        &[
            "runbook",
            "push",
            BUNDLE,
            &format!("oci://{}/sre/other:1", host_of(&registry)),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("must end in the runbook's id"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn a_tampered_blob_or_an_untrusted_signer_is_refused_and_nothing_is_left() {
    let Some(registry) = services::registry(None).await else {
        return;
    };
    push(&registry, &[]);
    let reference = format!("oci://{}/sre/scale-consumer:1.2.0", host_of(&registry));
    let work = tempfile::tempdir().expect("tempdir");
    let component =
        std::fs::read(repo().join(BUNDLE).join("components/scale-out.wasm")).expect("wasm");
    let hex = themis_core::digest(&component)
        .trim_start_matches("sha256:")
        .to_owned();
    let blob = registry
        .dir
        .path()
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(&hex)
        .join("data");

    // Signed by the Kafka team, trusted only as the Postgres team's: refused from the
    // signature alone, before any component is fetched — the component's blob is taken out of
    // the registry meanwhile, and its absence is never noticed.
    let aside = blob.with_extension("aside");
    std::fs::rename(&blob, &aside).expect("take the component's blob out");
    let dest = work.path().join("untrusted");
    let out = pull(
        &reference,
        &dest,
        &["--trust", "keys/demo/demo-postgres-team.pub"],
        &[],
    );
    std::fs::rename(&aside, &blob).expect("put the blob back");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("not trusted"),
        "refused for the signer, not for the missing blob: {}",
        text(&out.stderr)
    );
    nothing_left(work.path(), &dest);

    // Alter the component's blob where the registry stores it: its digest no longer holds.
    let mut bytes = std::fs::read(&blob).expect("the blob is where distribution keeps it");
    bytes[4000] ^= 0xff;
    std::fs::write(&blob, bytes).expect("tamper");
    let dest = work.path().join("tampered");
    let out = pull(&reference, &dest, &["--trust", KAFKA_KEY], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("does not match its digest"),
        "{}",
        text(&out.stderr)
    );
    nothing_left(work.path(), &dest);
}

#[tokio::test]
async fn basic_auth_needs_credentials_and_never_prints_them() {
    let Some(registry) = services::registry(Some(HTPASSWD)).await else {
        return;
    };
    let reference = format!("oci://{}/sre/scale-consumer:1.2.0", host_of(&registry));
    let out = themis(&["runbook", "push", BUNDLE, &reference], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("refused the credentials") && err.contains("THEMIS_REGISTRY_USERNAME"),
        "{err}"
    );

    let creds = [
        ("THEMIS_REGISTRY_USERNAME", "themis"),
        ("THEMIS_REGISTRY_PASSWORD", "test-only-password"),
    ];
    let wrong = [
        ("THEMIS_REGISTRY_USERNAME", "themis"),
        ("THEMIS_REGISTRY_PASSWORD", "not-the-password"),
    ];
    let out = themis(&["runbook", "push", BUNDLE, &reference], &wrong);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !text(&out.stderr).contains("not-the-password"),
        "{}",
        text(&out.stderr)
    );
    push(&registry, &creds);

    let work = tempfile::tempdir().expect("tempdir");
    let dest = work.path().join("pulled");
    let trust = ["--trust", KAFKA_KEY];
    let out = pull(&reference, &dest, &trust, &[]);
    assert_eq!(out.status.code(), Some(1), "an anonymous pull is refused");
    nothing_left(work.path(), &dest);
    let out = pull(&reference, &dest, &trust, &creds);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for o in [&out.stdout, &out.stderr] {
        assert!(!text(o).contains("test-only-password"));
    }
}

#[tokio::test]
async fn a_registry_that_is_down_is_a_clear_error_and_leaves_nothing() {
    let port = services::free_port();
    let work = tempfile::tempdir().expect("tempdir");
    let dest = work.path().join("pulled");
    let reference = format!("oci://127.0.0.1:{port}/sre/scale-consumer:1.2.0");
    let out = pull(&reference, &dest, &["--trust", KAFKA_KEY], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach the registry"),
        "{}",
        text(&out.stderr)
    );
    nothing_left(work.path(), &dest);
    let out = themis(&["runbook", "push", BUNDLE, &reference], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach the registry"),
        "{}",
        text(&out.stderr)
    );
}

/// A registry that answers every request with `status` and `body`, for as long as the test
/// runs: its address.
fn answering(status: &'static str, body: &'static str) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut request = [0u8; 8192];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// A registry down behind a proxy (a 5xx) could not be asked, as one that cannot be reached:
/// not a refusal of the bundle. And what a registry says reaches the terminal and the audit
/// bounded, on one line.
#[test]
fn a_registry_answering_5xx_is_unreachable_and_its_words_are_bounded() {
    let work = tempfile::tempdir().expect("tempdir");
    for (status, name) in [
        ("503 Service Unavailable", "down"),
        // Rate-limited (Docker Hub's TOOMANYREQUESTS): not asked now, not refused.
        ("429 Too Many Requests", "limited"),
    ] {
        let code = &status[..3];
        let down = answering(status, "upstream connect error");
        let stderr = refused_pull(&down, work.path(), name, &[]);
        assert!(
            stderr.contains("cannot reach the registry")
                && stderr.contains(&format!("HTTP {code}")),
            "{stderr}"
        );
    }

    static LONG: std::sync::LazyLock<&'static str> = std::sync::LazyLock::new(|| {
        Box::leak(format!("bad\u{1b}[31m{}", "x".repeat(300_000)).into_boxed_str())
    });
    let odd = answering("418 I'm a teapot", &LONG);
    let stderr = refused_pull(&odd, work.path(), "odd", &[]);
    assert!(stderr.len() < 4096, "{} bytes of error", stderr.len());
    assert!(
        !stderr.contains('\u{1b}'),
        "a control character reached the terminal"
    );
}

/// Pulls the Kafka bundle from the registry at `addr` expecting a refusal: nothing is left in
/// `work`, and what the pull said is returned.
fn refused_pull(addr: &str, work: &Path, name: &str, env: &[(&str, &str)]) -> String {
    let dest = work.join(name);
    let out = pull(
        &format!("oci://{addr}/sre/scale-consumer:1.2.0"),
        &dest,
        &["--trust", KAFKA_KEY],
        env,
    );
    assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out.stdout));
    nothing_left(work, &dest);
    text(&out.stderr)
}

/// How a scripted registry answers a request (its request line and headers).
type Script = Box<dyn Fn(&str) -> Answer + Send + Sync>;

/// What a scripted registry answers one request with.
struct Answer {
    status: &'static str,
    headers: String,
    /// `None`: a body without end (no length, written until the client hangs up).
    body: Option<String>,
}

/// A registry that answers each request as `script` says from its request line and headers;
/// its address, and the bytes of body it got to send (a client that stops reading hangs up).
fn scripted(
    script: impl Fn(&str) -> Answer + Send + Sync + 'static,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = sent.clone();
    let script = std::sync::Arc::new(script);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (script, sent) = (script.clone(), counted.clone());
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut request = [0u8; 8192];
                let n = stream.read(&mut request).unwrap_or(0);
                let answer = script(&String::from_utf8_lossy(&request[..n]));
                let length = answer
                    .body
                    .as_ref()
                    .map(|b| format!("content-length: {}\r\n", b.len()))
                    .unwrap_or_default();
                let head = format!(
                    "HTTP/1.1 {}\r\n{}{length}connection: close\r\n\r\n",
                    answer.status, answer.headers
                );
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                match answer.body {
                    Some(body) => {
                        let _ = stream.write_all(body.as_bytes());
                    }
                    // A GiB on offer: far past any bound, and written only as fast as read.
                    None => {
                        let chunk = vec![b'{'; 64 << 10];
                        for _ in 0..(1u64 << 30) / chunk.len() as u64 {
                            if stream.write_all(&chunk).is_err() {
                                break;
                            }
                            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    (addr, sent)
}

/// A registry (or what answers in its place) that sends a manifest, a token or an error
/// without end does not make the pull hold it: each is read within its bound, the rest never
/// read, and the error says which bound. The bearer flow goes through a token service as the
/// distribution spec has it: the token it gives is the one the manifest is asked with.
#[test]
fn what_a_registry_sends_without_end_is_read_within_a_bound() {
    use std::sync::atomic::Ordering;
    // Far less than the GiB on offer: what the client read, plus what the kernel buffered.
    const READ_AT_MOST: u64 = 64 << 20;
    let work = tempfile::tempdir().expect("tempdir");
    let endless = |status| Answer {
        status,
        headers: String::new(),
        body: None,
    };
    let cases: [(&str, Script, &str); 3] = [
        (
            "manifest",
            Box::new(move |_| endless("200 OK")),
            "longer than 262144 bytes",
        ),
        (
            "error",
            Box::new(move |_| endless("400 Bad Request")),
            "answered: HTTP 400",
        ),
        (
            "token",
            Box::new(move |request: &str| {
                if request.starts_with("GET /token") {
                    endless("200 OK")
                } else {
                    let realm = request
                        .lines()
                        .find_map(|l| l.strip_prefix("host: ").or(l.strip_prefix("Host: ")))
                        .unwrap_or_default()
                        .trim()
                        .to_owned();
                    Answer {
                        status: "401 Unauthorized",
                        headers: format!(
                            "www-authenticate: Bearer realm=\"http://{realm}/token\",service=\"registry\"\r\n"
                        ),
                        body: Some(String::new()),
                    }
                }
            }),
            "answer ran past 65536 bytes",
        ),
    ];
    for (what, script, says) in cases {
        let (addr, sent) = scripted(script);
        let stderr = refused_pull(&addr, work.path(), what, &[]);
        assert!(stderr.contains(says), "{what}: {stderr}");
        assert!(
            stderr.len() < 4096,
            "{what}: {} bytes of error",
            stderr.len()
        );
        let sent = sent.load(Ordering::Relaxed);
        assert!(sent < READ_AT_MOST, "{what}: {sent} bytes were taken in");
    }

    // The token the service gives is the one the manifest is asked with; asked without it,
    // the registry challenges, and a manifest it does not have is named as such.
    let (addr, _) = scripted(|request: &str| {
        let host = request
            .lines()
            .find_map(|l| l.strip_prefix("host: ").or(l.strip_prefix("Host: ")))
            .unwrap_or_default()
            .trim()
            .to_owned();
        let lower = request.to_ascii_lowercase();
        if request.starts_with("GET /token") {
            assert!(
                lower.contains("scope=repository%3asre%2fscale-consumer%3apull"),
                "{request}"
            );
            Answer {
                status: "200 OK",
                headers: String::new(),
                body: Some(r#"{"token":"t0k3n"}"#.into()),
            }
        } else if lower.contains("authorization: bearer t0k3n") {
            Answer {
                status: "404 Not Found",
                headers: String::new(),
                body: Some(
                    r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#
                        .into(),
                ),
            }
        } else {
            Answer {
                status: "401 Unauthorized",
                headers: format!(
                    "www-authenticate: Bearer realm=\"http://{host}/token\",service=\"registry\"\r\n"
                ),
                body: Some(String::new()),
            }
        }
    });
    let stderr = refused_pull(&addr, work.path(), "bearer", &[]);
    assert!(
        stderr.contains("does not exist in the registry"),
        "{stderr}"
    );

    // A realm on another machine over plain HTTP is not sent the credentials.
    let (addr, _) = scripted(|_: &str| Answer {
        status: "401 Unauthorized",
        headers: "www-authenticate: Bearer realm=\"http://auth.example.invalid/token\"\r\n".into(),
        body: Some(String::new()),
    });
    let stderr = refused_pull(
        &addr,
        work.path(),
        "clear",
        &[
            ("THEMIS_REGISTRY_USERNAME", "themis"),
            ("THEMIS_REGISTRY_PASSWORD", "never-sent"),
        ],
    );
    assert!(
        stderr.contains("is not HTTPS; credentials are not sent in the clear"),
        "{stderr}"
    );
    assert!(!stderr.contains("never-sent"), "{stderr}");
}

/// The Kafka agent with scale-consumer named by `reference` instead of its folder.
fn agent_with(dir: &Path, reference: &str) -> PathBuf {
    crate::common::patched_agent(
        dir,
        "agents/kafka.yaml",
        &[(
            &format!("  - {}/runbooks/kafka/scale-consumer\n", repo().display()),
            &format!("  - {reference}\n"),
        )],
    )
}

/// The scale alert on `host` runs its runbook instead of going to a human.
async fn runs_the_alert(host: &crate::common::TestHost) -> themis_agent::store::Incident {
    let incident = host
        .new_incident(world_alert("agent-kafka-scale.yaml"))
        .await;
    assert_ne!(
        incident.status,
        IncidentStatus::Escalated,
        "{:?}",
        incident.reason
    );
    incident
}

async fn start(dir: &Path, agent: &Path, cache: &Path) -> Result<crate::common::TestHost, String> {
    HostSpec {
        agents: vec![agent.to_path_buf()],
        options: themis_agent::RuntimeOptions {
            bundle_cache: Some(cache.to_path_buf()),
            ..Default::default()
        },
        dry_run: true,
        ..HostSpec::new(dir, "agents/kafka.yaml", "agent-kafka-scale.yaml")
    }
    .start()
    .await
    .map_err(|e| e.to_string())
}

#[tokio::test]
async fn an_agent_catalog_pinned_by_digest_is_pulled_once_and_survives_the_registry_going_down() {
    let Some(registry) = services::registry(None).await else {
        return;
    };
    let pinned = push(&registry, &[])["pinned"]
        .as_str()
        .expect("pinned")
        .to_owned();
    let work = tempfile::tempdir().expect("tempdir");
    let agent = agent_with(work.path(), &pinned);
    let cache = work.path().join("cache");

    // First start: pulled into the cache, verified, in the catalog; the alert runs it.
    let run1 = work.path().join("run1");
    std::fs::create_dir_all(&run1).expect("mkdir");
    let host = start(&run1, &agent, &cache).await.expect("starts");
    let incident = runs_the_alert(&host).await;
    assert_eq!(
        incident
            .selection
            .as_ref()
            .and_then(|s| s["output"]["runbook"].as_str()),
        Some("scale-consumer")
    );
    host.runtime.shutdown().await;
    let recs = records(&run1.join("audit.jsonl"));
    assert!(
        recs.iter().any(|r| r["kind"] == "bundle-pulled"),
        "the pull is audited"
    );

    // The registry goes away: the cached bundle still loads (verified again, like any bundle).
    drop(registry);
    let run2 = work.path().join("run2");
    std::fs::create_dir_all(&run2).expect("mkdir");
    let host = start(&run2, &agent, &cache)
        .await
        .expect("starts from the cache");
    runs_the_alert(&host).await;
    host.runtime.shutdown().await;
    assert!(
        !records(&run2.join("audit.jsonl"))
            .iter()
            .any(|r| r["kind"] == "bundle-pulled")
    );

    let cached = std::fs::read_dir(cache.join("oci"))
        .expect("cache")
        .next()
        .expect("one")
        .expect("entry")
        .path();
    // A bundle cached by a version that did not keep the registry's manifest: with the
    // registry down it is used as it is (still verified against the trust when it loads).
    let kept = cached.join(themis_registry::client::OCI_MANIFEST_FILE);
    let manifest = std::fs::read(&kept).expect("the pull keeps the registry's manifest");
    std::fs::remove_file(&kept).expect("as an older version left it");
    let legacy = work.path().join("legacy");
    std::fs::create_dir_all(&legacy).expect("mkdir");
    let host = start(&legacy, &agent, &cache)
        .await
        .expect("starts from the older cache");
    runs_the_alert(&host).await;
    host.runtime.shutdown().await;
    std::fs::write(&kept, manifest).expect("put back");

    // A cached bundle altered on disk is not what its pin names: it is removed, never loaded,
    // and pulled again — here the registry is down, so the runbook is unavailable, the host
    // starts, and the record says why.
    std::fs::write(cached.join("manifest.yaml"), "id: scale-consumer\n").expect("tamper");
    let run3 = work.path().join("run3");
    std::fs::create_dir_all(&run3).expect("mkdir");
    let host = start(&run3, &agent, &cache)
        .await
        .expect("starts without the altered runbook");
    host.runtime.shutdown().await;
    assert!(!cached.exists(), "the altered bundle is removed");
    let unavailable: Vec<Value> = records(&run3.join("audit.jsonl"))
        .into_iter()
        .filter(|r| r["kind"] == "bundle-unavailable")
        .collect();
    assert_eq!(unavailable.len(), 1, "{unavailable:?}");
    let reason = unavailable[0]["data"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("not what its pin names") && reason.contains("manifest.yaml"),
        "{reason}"
    );

    // Nothing cached and no registry: the host starts, the runbook is unavailable (audited), and
    // an alert that would choose it goes to a human with the reason.
    let run4 = work.path().join("run4");
    std::fs::create_dir_all(&run4).expect("mkdir");
    let empty = work.path().join("empty-cache");
    let host = start(&run4, &agent, &empty)
        .await
        .expect("starts without the runbook");
    let kafka = host
        .runtime
        .agents()
        .iter()
        .find(|a| a.def.name == "kafka")
        .expect("the kafka agent");
    assert!(
        kafka
            .unavailable
            .get("scale-consumer")
            .is_some_and(|why| why.contains("could not be pulled: cannot reach the registry")),
        "{:?}",
        kafka.unavailable
    );
    let incident = host
        .new_incident(world_alert("agent-kafka-scale.yaml"))
        .await;
    assert_eq!(incident.status, IncidentStatus::Escalated);
    let reason = incident.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("unavailable") && reason.contains("scale-consumer"),
        "{reason}"
    );
    host.runtime.shutdown().await;
    let unavailable = records(&run4.join("audit.jsonl"))
        .into_iter()
        .find(|r| r["kind"] == "bundle-unavailable")
        .expect("audited");
    assert_eq!(unavailable["data"]["runbook"], "scale-consumer");
}

#[test]
fn an_unpinned_catalog_entry_is_refused_at_load() {
    let work = tempfile::tempdir().expect("tempdir");
    let agent = agent_with(work.path(), "oci://127.0.0.1:5000/sre/scale-consumer:1.2.0");
    let err = themis_agent::AgentDef::load(&agent).expect_err("refused");
    let err = err.to_string();
    assert!(
        err.contains("runbooks[2]") && err.contains("not pinned"),
        "{err}"
    );
}

/// A bundle whose component lives where a pull refuses it (not `components/NAME.wasm`) loads
/// locally but could never be pulled: it is not pushed, and the author is told where to move
/// it — before anything is sent (the registry here is not even listening).
#[test]
fn a_bundle_a_pull_would_refuse_is_not_pushed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("scale-consumer");
    std::fs::create_dir_all(bundle.join("bin")).expect("mkdir");
    std::fs::copy(
        repo().join(BUNDLE).join("components/scale-out.wasm"),
        bundle.join("bin/scale-out.wasm"),
    )
    .expect("copy component (run scripts/build-runbooks)");
    let manifest = std::fs::read_to_string(repo().join(BUNDLE).join("manifest.yaml"))
        .expect("manifest")
        .replace("components/scale-out.wasm", "bin/scale-out.wasm");
    std::fs::write(bundle.join("manifest.yaml"), manifest).expect("write");
    let dir_arg = bundle.display().to_string();
    let key = repo().join("keys/demo/demo-test-fixtures.key");
    let signed = themis(
        &[
            "runbook",
            "sign",
            &dir_arg,
            "--key",
            &key.display().to_string(),
        ],
        &[],
    );
    assert!(signed.status.success(), "{}", text(&signed.stderr));
    let out = themis(
        &[
            "runbook",
            "push",
            &dir_arg,
            "oci://127.0.0.1:1/sre/scale-consumer:1.3.0",
        ],
        &[],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("component `bin/scale-out.wasm` could not be pulled")
            && !stderr.contains("cannot reach the registry"),
        "{stderr}"
    );
}
