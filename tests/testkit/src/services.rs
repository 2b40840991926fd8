//! Real services for tests — Prometheus, Alertmanager, postgres_exporter, the OCI registry — started on loopback
//! from the Debian binaries, each in a temporary directory, killed when dropped. A service that
//! is not installed skips its test, unless `THEMIS_REQUIRE_SERVICES=1` (CI, where scripts/test
//! installs them) makes that a failure naming the package.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Does this run insist on real services?
pub fn required() -> bool {
    std::env::var("THEMIS_REQUIRE_SERVICES").as_deref() == Ok("1")
}

/// Is `binary` installed? When not: skip (say so) or, when required, fail naming the package.
pub fn installed(binary: &str, package: &str) -> bool {
    let runs = Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    runs || missing(binary, package)
}

/// A service that is not installed: skip (false) or, when required, fail naming the package.
fn missing(binary: &str, package: &str) -> bool {
    assert!(
        !required(),
        "{binary} is not installed (apt-get install {package}); THEMIS_REQUIRE_SERVICES=1 needs it"
    );
    eprintln!("skipped: {binary} is not installed (apt-get install {package})");
    false
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A running service: its process, base URL and scratch directory.
pub struct Service {
    pub name: &'static str,
    pub url: String,
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// Start `command` (its stdout and stderr to `<dir>/log`) and wait until `ready_path`
    /// answers 2xx, failing with the log's tail when it does not within 30 s.
    pub async fn start(
        name: &'static str,
        mut command: Command,
        dir: tempfile::TempDir,
        port: u16,
        ready_path: &str,
    ) -> Service {
        let log = std::fs::File::create(dir.path().join("log"))
            .unwrap_or_else(|e| panic!("{name}: log file: {e}"));
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("{name}: log file: {e}"));
        let child = command
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("{name} did not start: {e}"));
        let mut service = Service {
            name,
            url: format!("http://127.0.0.1:{port}"),
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client
                .get(format!("{}{ready_path}", service.url))
                .send()
                .await
                && r.status().is_success()
            {
                return service;
            }
            if let Ok(Some(status)) = service.child.try_wait() {
                panic!(
                    "{name} exited ({status}) before it was ready:\n{}",
                    service.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{name} was not ready within 30 s:\n{}",
                service.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of the service's log, for a failure message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("themis-{name}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("{name}: tempdir: {e}"))
}

fn write(dir: &Path, file: &str, text: &str) -> String {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path.display().to_string()
}

/// Prometheus with `config` (its `rule_files` may name files copied next to it from `rules`).
pub async fn prometheus(config: &str, rules: &[&Path]) -> Option<Service> {
    if !installed("prometheus", "prometheus") {
        return None;
    }
    let dir = scratch("prometheus");
    for rule in rules {
        let name = rule.file_name().unwrap_or_default();
        std::fs::copy(rule, dir.path().join(name))
            .unwrap_or_else(|e| panic!("{}: {e}", rule.display()));
    }
    let config = write(dir.path(), "prometheus.yml", config);
    let port = free_port();
    let mut command = Command::new("prometheus");
    command
        .current_dir(dir.path())
        .arg(format!("--config.file={config}"))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    Some(Service::start("prometheus", command, dir, port, "/-/ready").await)
}

/// Alertmanager with `config`, no clustering.
pub async fn alertmanager(config: &str) -> Option<Service> {
    if !installed("prometheus-alertmanager", "prometheus-alertmanager") {
        return None;
    }
    let dir = scratch("alertmanager");
    let config = write(dir.path(), "alertmanager.yml", config);
    let port = free_port();
    let mut command = Command::new("prometheus-alertmanager");
    command
        .arg(format!("--config.file={config}"))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=");
    Some(Service::start("alertmanager", command, dir, port, "/-/ready").await)
}

/// postgres_exporter on `dsn`, with the extra queries of `queries` (`--extend.query-path`).
pub async fn postgres_exporter(dsn: &str, queries: &Path) -> Option<Service> {
    if !installed(
        "prometheus-postgres-exporter",
        "prometheus-postgres-exporter",
    ) {
        return None;
    }
    let dir = scratch("postgres-exporter");
    let port = free_port();
    let mut command = Command::new("prometheus-postgres-exporter");
    command
        .env("DATA_SOURCE_NAME", dsn)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!("--extend.query-path={}", queries.display()));
    Some(Service::start("postgres_exporter", command, dir, port, "/metrics").await)
}

/// The CNCF distribution registry (Debian's `docker-registry`), storing in its scratch directory
/// (`<dir>/data`, so a test can reach a blob on disk). With `htpasswd` (a bcrypt line as
/// `htpasswd -B` writes it), basic auth is required.
pub async fn registry(htpasswd: Option<&str>) -> Option<Service> {
    if !installed_at(
        "docker-registry",
        "/usr/bin/docker-registry",
        "docker-registry",
    ) {
        return None;
    }
    let dir = scratch("registry");
    let port = free_port();
    let auth = match htpasswd {
        Some(line) => {
            let file = write(dir.path(), "htpasswd", &format!("{line}\n"));
            format!("auth:\n  htpasswd: {{ realm: themis-test, path: {file} }}\n")
        }
        None => String::new(),
    };
    let config = write(
        dir.path(),
        "config.yml",
        &format!(
            "version: 0.1\nlog: {{ level: warn }}\nstorage:\n  filesystem: {{ rootdirectory: {} }}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
            dir.path().join("data").display()
        ),
    );
    let mut command = Command::new("docker-registry");
    command.arg("serve").arg(config);
    // With auth on, /v2/ answers 401; the ready probe is the unauthenticated debug-free root.
    let ready = if htpasswd.is_some() { "/" } else { "/v2/" };
    Some(Service::start("docker-registry", command, dir, port, ready).await)
}

/// Like [`installed`], for a binary without `--version`.
fn installed_at(binary: &str, path: &str, package: &str) -> bool {
    Path::new(path).is_file() || missing(binary, package)
}
