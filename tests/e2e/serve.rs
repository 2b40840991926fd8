//! `themis serve` end to end: the real binary, real HTTP on loopback, the real agents and
//! sandbox over the scenario worlds named in the configuration.

use crate::common::{patched_agent, records, repo, text, themis};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use themis_testkit::services::{self, Service};

pub const INTAKE: &str = "intake-token-for-tests";
pub const ONCALL: &str = "oncall-token-for-tests";
pub const BOB: &str = "bob-token-for-tests";
pub const SLACK_SECRET: &str = "slack-signing-secret-for-tests";

/// A running `themis serve`, killed when dropped.
pub struct Served {
    pub child: Child,
    pub url: String,
    pub state: PathBuf,
    pub http: reqwest::Client,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a test configures on top of the shipped agents.
pub struct ServeSpec<'a> {
    pub dir: &'a Path,
    /// `agent: scenario file under tests/scenarios` for the backends section.
    pub backends: &'a [(&'a str, &'a str)],
    /// Further `backends:` entries as YAML (real systems), indented two spaces.
    pub real_backends: String,
    pub queue: usize,
    pub body_bytes: usize,
    /// The loopback URL prefix Slack's response_url may have (Slack on).
    pub slack: Option<&'a str>,
    /// Slack's incoming webhook (escalations and unowned alerts are posted there).
    pub slack_webhook: Option<String>,
    /// More environment for the service (name, value).
    pub env: Vec<(&'static str, String)>,
    /// The agents folder (default: the shipped `agents/`).
    pub agents: Option<PathBuf>,
}

impl<'a> ServeSpec<'a> {
    pub fn new(dir: &'a Path) -> Self {
        ServeSpec {
            dir,
            backends: &[("kafka", "agent-kafka-gc-pause.yaml")],
            real_backends: String::new(),
            queue: 64,
            body_bytes: 1 << 20,
            slack: None,
            slack_webhook: None,
            env: Vec::new(),
            agents: None,
        }
    }

    pub fn config(&self) -> PathBuf {
        let mut backends = String::new();
        for (agent, scenario) in self.backends {
            backends.push_str(&format!(
                "  {agent}: {{ scenario: {} }}\n",
                repo().join("tests/scenarios").join(scenario).display()
            ));
        }
        backends.push_str(&self.real_backends);
        let slack = match self.slack {
            Some(prefix) => format!(
                "slack:\n  signing_secret: {{ env: TEST_SLACK_SECRET }}\n  response_url_prefix: \"{prefix}\"\n"
            ),
            None => String::new(),
        };
        let text = format!(
            "listen: 127.0.0.1:0\nagents: {agents}\nstate_dir: state\naudit_signing_key: keys/audit.key\n\
             intake:\n  tokens: [ {{ env: TEST_INTAKE_TOKEN }} ]\n\
             approvers:\n  oncall: {{ token_env: TEST_ONCALL_TOKEN, slack_user: U0ONCALL }}\n  bob: {{ token_sha256: \"{bob}\" }}\n\
             {slack}backends:\n{backends}limits: {{ queue: {queue}, body_bytes: {body}, verify_every: 1s }}\n",
            agents = self
                .agents
                .clone()
                .unwrap_or_else(|| repo().join("agents"))
                .display(),
            bob = themis_agent::approvers::token_hash(BOB),
            queue = self.queue,
            body = self.body_bytes,
        );
        let file = self.dir.join("themis.yaml");
        std::fs::write(&file, text).expect("config");
        file
    }

    /// `themis serve` with this spec's configuration and environment.
    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_themis"));
        match &self.slack_webhook {
            Some(url) => command.env("THEMIS_SLACK_WEBHOOK_URL", url),
            None => command.env_remove("THEMIS_SLACK_WEBHOOK_URL"),
        };
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
            .args(["serve", "--config"])
            .arg(self.config())
            .env("TEST_INTAKE_TOKEN", INTAKE)
            .env("TEST_ONCALL_TOKEN", ONCALL)
            .env("TEST_SLACK_SECRET", SLACK_SECRET)
            .env("THEMIS_CACHE_DIR", repo().join("target/e2e-cache"))
            .env_remove("THEMIS_LISTEN")
            .env_remove("THEMIS_STATE_DIR")
            .current_dir(self.dir);
        command
    }

    pub fn start(&self) -> Served {
        self.start_until("themis serve: listening on ")
    }

    /// Start a host on a shared state database another holds: returned once it stands by.
    pub fn start_standing_by(&self) -> Served {
        self.start_until("themis serve: standing by on ")
    }

    /// Start, and return once the service prints `prefix` followed by its URL.
    fn start_until(&self, prefix: &str) -> Served {
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("themis serve starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix(prefix) {
                        break url.to_owned();
                    }
                }
                _ => panic!("themis serve exited before listening"),
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Served {
            child,
            url,
            state: self.dir.join("state"),
            http: reqwest::Client::new(),
        }
    }
}

impl ServeSpec<'_> {
    /// Start `themis serve` expecting it to refuse: its exit code and what it said.
    pub fn refused(&self) -> (Option<i32>, String) {
        let mut child = self
            .command()
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("themis serve starts");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("themis serve did not refuse to start");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
        }
        (status.code(), err)
    }
}

impl Served {
    pub async fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Fire the lag alert with `fingerprint` and wait for its proposal: (approval id, digest).
    pub async fn proposal(&self, fingerprint: &str) -> (String, String) {
        let (status, body) = self
            .post(
                AM,
                INTAKE,
                &notification("firing", &[("KafkaConsumerLag", fingerprint, LAG)]),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        self.incidents_until("the proposal", |l| {
            l.iter().any(|i| i["status"] == "pending-approval")
        })
        .await;
        let (status, approvals) = self.get("/api/v1/approvals", ONCALL).await;
        assert_eq!(status, 200, "{approvals}");
        let id = approvals[0]["id"].as_str().expect("id").to_owned();
        let digest = approvals[0]["plan_digest"]
            .as_str()
            .expect("digest")
            .to_owned();
        (id, digest)
    }

    /// Approve `approval` (as `/api/v1/approvals` lists it) as the on-call approver, with the
    /// digest it shows; the answer must be a 200.
    pub async fn approve(&self, approval: &Value) {
        let id = approval["id"].as_str().expect("approval id");
        let (status, body) = self
            .post(
                &format!("/api/v1/approvals/{id}/approve"),
                ONCALL,
                &json!({ "plan_digest": approval["plan_digest"] }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    pub fn audit(&self) -> Vec<Value> {
        records(&self.state.join("audit.jsonl"))
    }

    pub fn kinds(&self, kind: &str) -> Vec<Value> {
        self.audit()
            .into_iter()
            .filter(|r| r["kind"] == kind)
            .collect()
    }

    /// Wait until `check` holds for the incidents list (the agents work after the 200).
    pub async fn incidents_until(
        &self,
        what: &str,
        check: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.get("/api/v1/incidents?limit=1000", ONCALL).await;
            assert_eq!(status, 200, "{body}");
            let list = body["incidents"].as_array().cloned().unwrap_or_default();
            if check(&list) {
                return list;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {list:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One alert of a test notification: name, fingerprint, labels.
pub type TestAlert<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// An Alertmanager webhook v4 notification, as Alertmanager 0.25 sends it.
pub fn notification(status: &str, alerts: &[TestAlert]) -> Value {
    let alerts: Vec<Value> = alerts
        .iter()
        .map(|(name, fingerprint, labels)| {
            let mut l = serde_json::Map::new();
            l.insert("alertname".into(), json!(name));
            for (k, v) in *labels {
                l.insert((*k).into(), json!(v));
            }
            json!({
                "status": status, "labels": l, "annotations": { "summary": "test" },
                "startsAt": "2026-11-30T10:00:00.000Z", "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus/graph", "fingerprint": fingerprint,
            })
        })
        .collect();
    json!({
        "version": "4", "groupKey": "{}:{alertname=\"test\"}", "truncatedAlerts": 0,
        "status": status, "receiver": "themis", "groupLabels": {}, "commonLabels": {},
        "commonAnnotations": {}, "externalURL": "http://alertmanager", "alerts": alerts,
    })
}

pub const LAG: &[(&str, &str)] = &[
    ("topic", "orders"),
    ("group", "orders-consumer"),
    ("severity", "critical"),
];

pub const AM: &str = "/api/v1/alerts/alertmanager";

#[tokio::test(flavor = "multi_thread")]
async fn intake_authenticates_checks_by_field_and_records_before_the_200() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ServeSpec {
        body_bytes: 4096,
        ..ServeSpec::new(dir.path())
    }
    .start();
    let n = notification("firing", &[("KafkaConsumerLag", "fp-1", LAG)]);

    // Unknown or missing token: 401, nothing recorded.
    let before = s.audit().len();
    let (status, body) = s.post(AM, "not-a-token", &n).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let r = s
        .http
        .post(format!("{}{AM}", s.url))
        .json(&n)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 401);
    // An approver's token is not an intake token.
    assert_eq!(s.post(AM, ONCALL, &n).await.0, 401);
    assert_eq!(
        s.audit().len(),
        before,
        "a refused request leaves no record"
    );

    // Malformed JSON, a wrong version, a missing alertname: 400 naming the field.
    let r = s
        .http
        .post(format!("{}{AM}", s.url))
        .bearer_auth(INTAKE)
        .body("{\"version\":")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 400);
    let mut v3 = n.clone();
    v3["version"] = json!("3");
    let (status, body) = s.post(AM, INTAKE, &v3).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("version")),
        "{body}"
    );
    let mut nameless = n.clone();
    nameless["alerts"][0]["labels"]
        .as_object_mut()
        .expect("labels")
        .remove("alertname");
    let (status, body) = s.post(AM, INTAKE, &nameless).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("alerts[0].labels.alertname")),
        "{body}"
    );
    let mut wrong_type = n.clone();
    wrong_type["alerts"][0]["labels"]["severity"] = json!(3);
    let (status, body) = s.post(AM, INTAKE, &wrong_type).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["field"]
            .as_str()
            .is_some_and(|f| f.contains("alerts[0].labels")),
        "{body}"
    );
    // Over the body limit: 413 as JSON.
    let big = notification(
        "firing",
        &[("KafkaConsumerLag", "fp-big", &[("note", &"x".repeat(5000))])],
    );
    let (status, body) = s.post(AM, INTAKE, &big).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("payload-too-large"))
    );
    // Without a token the body is never read: 401, whatever its size, and nothing recorded.
    let (status, _) = s.post(AM, "not-a-token", &big).await;
    assert_eq!(status, 401);
    for answer in ["/api/v1/approvals/apr-0/approve", "/api/v1/guard/clear"] {
        let (status, _) = s.post(answer, "not-a-token", &big).await;
        assert_eq!(status, 401, "{answer}: the token before the body");
    }
    // The sender was authenticated: what it sent is lost (Alertmanager does not retry a 4xx),
    // so each refusal is on the record — and nothing else is.
    let refused = s.kinds("alert-refused");
    assert_eq!(
        refused
            .iter()
            .map(|r| r["data"]["status"].as_u64().unwrap_or(0))
            .collect::<Vec<_>>(),
        vec![400, 400, 400, 400, 413],
        "{refused:?}"
    );
    assert_eq!(refused[1]["data"]["field"], "version");
    assert_eq!(refused[4]["data"]["via"], "alertmanager");
    // A notification refused for one alert loses all of them: the record names each.
    assert_eq!(
        refused[2]["data"]["lost"],
        json!({ "count": 1, "alerts": [ { "alertname": null, "fingerprint": "fp-1" } ] }),
        "{refused:?}"
    );
    assert_eq!(
        refused[3]["data"]["lost"]["alerts"][0],
        json!({ "alertname": "KafkaConsumerLag", "fingerprint": "fp-1" })
    );
    assert_eq!(s.audit().len(), before + refused.len());

    // Alerts Alertmanager held back are never sent: the notification saying so is recorded.
    let mut held_back = notification("firing", &[]);
    held_back["truncatedAlerts"] = json!(7);
    let (status, body) = s.post(AM, INTAKE, &held_back).await;
    assert_eq!(status, 200, "{body}");
    let truncated = s.kinds("alerts-truncated");
    assert_eq!(truncated.len(), 1);
    assert_eq!(truncated[0]["data"]["count"], 7);

    // Accepted: on the record by the time the 200 arrives; an unowned alert is recorded too.
    let both = notification(
        "firing",
        &[
            ("KafkaConsumerLag", "fp-1", LAG),
            ("NobodyOwnsThis", "fp-x", &[("severity", "page")]),
        ],
    );
    let (status, body) = s.post(AM, INTAKE, &both).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), body["unrouted"].as_u64()),
        (Some(1), Some(1))
    );
    let accepted = s.kinds("alert-accepted");
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0]["data"]["alert"]["fingerprint"], "fp-1");
    assert_eq!(accepted[0]["data"]["source"]["via"], "alertmanager");
    assert_eq!(s.kinds("alert-unrouted").len(), 1);

    // The same fingerprint again is counted on the open incident, not a second incident.
    s.incidents_until("the proposal", |l| {
        l.iter().any(|i| i["status"] == "pending-approval")
    })
    .await;
    let (status, _) = s.post(AM, INTAKE, &n).await;
    assert_eq!(status, 200);
    let list = s
        .incidents_until("the attached alert", |l| {
            l.iter().any(|i| i["attached_alerts"] == 1)
        })
        .await;
    assert_eq!(list.len(), 1, "one open incident per fingerprint: {list:?}");

    // Resolved: recorded on the incident, never triaged.
    let triaged_before = s.kinds("selection").len();
    let (status, _) = s
        .post(
            AM,
            INTAKE,
            &notification("resolved", &[("KafkaConsumerLag", "fp-1", LAG)]),
        )
        .await;
    assert_eq!(status, 200);
    let list = s
        .incidents_until("the resolved notice", |l| {
            l.iter().any(|i| i["source_resolved_at"].is_string())
        })
        .await;
    assert_eq!(list.len(), 1);
    assert_eq!(s.kinds("selection").len(), triaged_before);
    assert_eq!(s.kinds("alert-resolved").len(), 1);

    // Themis' own JSON for other sources.
    let (status, body) = s
        .post(
            "/api/v1/alerts",
            INTAKE,
            &json!({ "name": "NobodyOwnsThis", "labels": { "a": "b" } }),
        )
        .await;
    assert_eq!(
        (status, body["unrouted"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    let (status, body) = s
        .post(
            "/api/v1/alerts",
            INTAKE,
            &json!({ "name": "X", "colour": "red" }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

/// What is wrong with one alert of a notification is not a reason to lose the others, nor is
/// a large group; an alert of Themis' own JSON says one name; an adjustment that does not fit
/// its runbook is a 400 naming the parameter, and the requester of an adjusted plan is told
/// they cannot adjust it again.
#[tokio::test(flavor = "multi_thread")]
async fn intake_keeps_whole_groups_and_adjust_names_the_parameter_at_fault() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ServeSpec::new(dir.path()).start();

    // A 3000-character description: the group is taken, the description cut and marked.
    let mut group = notification(
        "firing",
        &[
            ("NobodyOwnsThis", "fp-long", &[("severity", "page")]),
            ("NobodyOwnsThat", "fp-short", &[("severity", "page")]),
        ],
    );
    group["alerts"][0]["annotations"]["description"] = json!("d".repeat(3000));
    let (status, body) = s.post(AM, INTAKE, &group).await;
    assert_eq!(
        (status, body["unrouted"].as_u64()),
        (200, Some(2)),
        "{body}"
    );
    let recorded = s.kinds("alert-unrouted");
    let long = recorded
        .iter()
        .find(|r| r["data"]["alert"]["fingerprint"] == "fp-long")
        .expect("the long one is on the record");
    let description = long["data"]["alert"]["annotations"]
        .as_array()
        .expect("annotations")
        .iter()
        .find(|a| a["key"] == "description")
        .and_then(|a| a["value"].as_str())
        .expect("its description")
        .to_owned();
    assert!(
        description.starts_with("ddd") && description.ends_with("more characters cut by Themis]"),
        "{description}"
    );
    assert!(description.chars().count() <= 2048, "{description}");

    // More alerts than the 1000 the intake once refused whole: all on the record.
    let many: Vec<TestAlert> = (0..1001)
        .map(|_| ("NobodyOwnsThis", "fp-many", &[("severity", "page")][..]))
        .collect();
    let before = s.kinds("alert-unrouted").len();
    let (status, body) = s.post(AM, INTAKE, &notification("firing", &many)).await;
    assert_eq!(
        (status, body["unrouted"].as_u64()),
        (200, Some(1001)),
        "{body}"
    );
    assert_eq!(s.kinds("alert-unrouted").len(), before + 1001);

    // Themis' own JSON: `name` routes; a `labels.alertname` saying another name is refused.
    let (status, body) = s
        .post(
            "/api/v1/alerts",
            INTAKE,
            &json!({ "name": "KafkaConsumerLag", "labels": { "alertname": "PostgresLockWaits" } }),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("labels.alertname")),
        "{body}"
    );

    // Adjust: each part of the body that does not fit is named.
    let (id, _) = s.proposal("fp-adjust").await;
    let adjust = format!("/api/v1/approvals/{id}/adjust");
    for (params, runbook, field) in [
        (
            json!({ "broker_id": "99999999999999999999" }),
            "adjust-broker-gc",
            "params.broker_id",
        ),
        (
            json!({ "broker_id": "-1" }),
            "adjust-broker-gc",
            "params.broker_id",
        ),
        (
            json!({ "broker_id": "one" }),
            "adjust-broker-gc",
            "params.broker_id",
        ),
        (
            json!({ "broker_id": "1", "colour": "red" }),
            "adjust-broker-gc",
            "params.colour",
        ),
        (json!({}), "adjust-broker-gc", "params.broker_id"),
        (json!({}), "no-such-runbook", "runbook"),
    ] {
        let (status, body) = s
            .post(
                &adjust,
                BOB,
                &json!({ "runbook": runbook, "params": params }),
            )
            .await;
        assert_eq!(
            (status, body["error"].as_str(), body["field"].as_str()),
            (400, Some("bad-request"), Some(field)),
            "{params} {body}"
        );
    }
    assert!(s.kinds("adjustment").is_empty(), "nothing was adjusted");
    // A destructive adjusted plan waits for another human; its requester cannot adjust it again.
    let (status, adjusted) = s
        .post(
            &adjust,
            BOB,
            &json!({ "runbook": "adjust-broker-gc", "params": { "broker_id": "1" } }),
        )
        .await;
    assert_eq!(status, 200, "{adjusted}");
    assert_eq!(adjusted["status"], "pending-approval", "{adjusted}");
    let incident = adjusted["id"].as_str().expect("incident id");
    let waiting = adjusted["approval"]["id"]
        .as_str()
        .expect("the new proposal");
    let (status, body) = s
        .post(
            &format!("/api/v1/approvals/{waiting}/adjust"),
            BOB,
            &json!({ "runbook": "adjust-broker-gc", "params": { "broker_id": "2" } }),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("cannot approve or adjust it"), "{body}");
    // Nor can anyone answer it by the incident's id, which a form sent before it was proposed
    // would carry: it is answered by its own id only.
    let (status, body) = s
        .post(
            &format!("/api/v1/approvals/{incident}/adjust"),
            ONCALL,
            &json!({ "runbook": "adjust-broker-gc", "params": { "broker_id": "2" } }),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains(waiting)),
        "{body}"
    );
}

/// A stop is bounded: a connection that sent half a request's headers (nobody needs a token to
/// open one) or nothing at all holds it for the drain time at most, and the runtime still
/// stops as usual, the audit's last checkpoint made.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_is_not_held_by_idle_or_half_sent_connections() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = ServeSpec::new(dir.path()).start();
    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut half = std::net::TcpStream::connect(&addr).expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("half a request");
    let _silent = std::net::TcpStream::connect(&addr).expect("connect");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let pid = nix::unistd::Pid::from_raw(s.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
    let status = loop {
        if let Some(status) = s.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(40),
            "still running 40 s after SIGTERM, held by two clients"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(25),
        "{:?}",
        asked.elapsed()
    );
    let audit = s.audit();
    assert_eq!(
        audit.last().map(|r| r["kind"].clone()),
        Some(json!("checkpoint")),
        "the runtime stopped and the head was signed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_is_a_429_with_retry_after_and_every_taken_alert_is_on_the_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ServeSpec {
        queue: 1,
        ..ServeSpec::new(dir.path())
    }
    .start();
    // Each alert costs the agent a triage in the sandbox; taking one costs an fsync: with room
    // for one waiting alert, a burst of distinct alerts overflows.
    let fingerprints: Vec<String> = (0..200).map(|i| format!("burst-{i}")).collect();
    let alerts: Vec<TestAlert> = fingerprints
        .iter()
        .map(|f| ("KafkaConsumerLag", f.as_str(), LAG))
        .collect();
    let r = s
        .http
        .post(format!("{}{AM}", s.url))
        .bearer_auth(INTAKE)
        .json(&notification("firing", &alerts))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"], "queue-full");
    // Everything taken is on the record, the refusal too; nothing else.
    let accepted = s.kinds("alert-accepted").len();
    assert!((1..200).contains(&accepted), "{accepted}");
    assert_eq!(s.kinds("alert-refused").len(), 1);
    // And every taken alert becomes an incident: nothing lost.
    s.incidents_until("every taken alert handled", |l| {
        l.len() == accepted && l.iter().all(|i| i["status"] != "triaging")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn approvals_over_http_identify_by_token_and_run_the_plan_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ServeSpec::new(dir.path()).start();
    let (id, digest) = s.proposal("fp-a").await;
    let approve = format!("/api/v1/approvals/{id}/approve");

    // Identity from the token only: an unknown token is refused; a name in the body is not
    // a field the API takes.
    assert_eq!(
        s.post(&approve, "nobody", &json!({ "plan_digest": digest }))
            .await
            .0,
        401
    );
    assert_eq!(
        s.post(&approve, INTAKE, &json!({ "plan_digest": digest }))
            .await
            .0,
        401
    );
    let (status, body) = s
        .post(
            &approve,
            BOB,
            &json!({ "plan_digest": digest, "as": "oncall" }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // The digest of another plan: refused by policy, nothing claimed.
    let (status, body) = s
        .post(&approve, BOB, &json!({ "plan_digest": "sha256:00" }))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(s.post(&approve, BOB, &json!({})).await.0, 400);
    assert_eq!(
        s.post(
            "/api/v1/approvals/apr-0000-0000/approve",
            BOB,
            &json!({ "plan_digest": digest })
        )
        .await
        .0,
        404
    );

    // Two approvers at once: exactly one runs the plan, the other gets 409.
    let body = json!({ "plan_digest": digest });
    let (a, b) = tokio::join!(
        s.post(&approve, BOB, &body),
        s.post(&approve, ONCALL, &body)
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{a:?} {b:?}");
    let winner = if a.0 == 200 { &a.1 } else { &b.1 };
    // Alertmanager's alert: the fix is verified against its `resolved` next.
    assert_eq!(winner["status"], "verifying", "{winner}");
    let runs: Vec<Value> = s
        .kinds("execution-start")
        .into_iter()
        .filter(|r| r["data"]["runbook_id"] == "adjust-broker-gc")
        .collect();
    assert_eq!(runs.len(), 1, "the approved plan ran exactly once");
    // A replay after the fact changes nothing either.
    assert_eq!(s.post(&approve, BOB, &body).await.0, 409);
    let reject = format!("/api/v1/approvals/{id}/reject");
    assert_eq!(
        s.post(&reject, BOB, &json!({ "reason": "late" })).await.0,
        409
    );

    // The read API: the incident's timeline from the audit, the agent back to idle.
    let incident = winner["id"].as_str().expect("incident id");
    let (status, detail) = s.get(&format!("/api/v1/incidents/{incident}"), BOB).await;
    assert_eq!(status, 200);
    let kinds: Vec<&str> = detail["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|r| r["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"approval") && kinds.contains(&"alert"),
        "{kinds:?}"
    );
    assert_eq!(detail["answer"]["via"], "approver token");
    let (status, agents) = s.get("/api/v1/agents", ONCALL).await;
    assert_eq!(status, 200);
    assert!(
        agents
            .as_array()
            .expect("agents")
            .iter()
            .all(|a| a["state"]["state"] == "idle")
    );
    assert_eq!(s.get("/api/v1/agents", "nobody").await.0, 401);
    // The guard rails as the service holds them; an approver clears a target over HTTP.
    let (status, guard) = s.get("/api/v1/guard", ONCALL).await;
    assert_eq!(status, 200, "{guard}");
    for key in ["busy", "breakers", "recent"] {
        assert!(guard[key].is_array(), "{guard}");
    }
    assert_eq!(s.get("/api/v1/guard", "nobody").await.0, 401);
    let (status, body) = s
        .post(
            "/api/v1/guard/clear",
            BOB,
            &json!({ "target": "postgres:pid=4242" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["breakers"], json!([]));
    let (status, body) = s
        .post(
            "/api/v1/guard/clear",
            BOB,
            &json!({ "target": "no-domain" }),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("target")),
        "{body}"
    );
    assert_eq!(s.get("/api/v1/incidents/inc-nope", BOB).await.0, 404);
    assert_eq!(s.get("/api/v1/incidents?status=bogus", BOB).await.0, 400);
    assert_eq!(s.get("/api/v1/incidents?limit=0", BOB).await.0, 400);

    // The OpenAPI document is generated from the handlers and covers every route.
    let r = s
        .http
        .get(format!("{}/api/v1/openapi.json", s.url))
        .send()
        .await
        .expect("openapi");
    assert_eq!(r.status().as_u16(), 200);
    let doc: Value = r.json().await.expect("json");
    let mut paths: Vec<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/api/v1/agents",
            "/api/v1/alerts",
            "/api/v1/alerts/alertmanager",
            "/api/v1/approvals",
            "/api/v1/approvals/{id}/adjust",
            "/api/v1/approvals/{id}/approve",
            "/api/v1/approvals/{id}/reject",
            "/api/v1/events",
            "/api/v1/guard",
            "/api/v1/guard/clear",
            "/api/v1/incidents",
            "/api/v1/incidents/{id}",
            "/api/v1/slack/interactions",
            "/healthz",
            "/metrics",
            "/readyz",
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_escalation_a_kill_cut_off_before_its_delivery_is_delivered_at_the_next_start() {
    // A Slack that takes the request and never answers: the kill comes while the host waits.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hang_addr = hang.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hang.accept().await {
            held.push(socket);
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ServeSpec::new(dir.path());
    spec.slack_webhook = Some(format!("http://{hang_addr}/webhook"));
    let s = spec.start();
    s.proposal("fp-cut").await;
    assert!(s.kinds("escalation-delivery").is_empty());
    drop(s);

    let (slack, posted) = response_url_recorder().await;
    spec.slack_webhook = Some(format!("{slack}webhook"));
    let s = spec.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.kinds("escalation-delivery").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the cut-off escalation was never delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = s.kinds("recovered");
    assert!(
        recovered
            .iter()
            .any(|r| r["data"]["action"] == "deliver the escalation"),
        "{recovered:?}"
    );
    let posted = posted.lock().expect("lock").clone();
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert!(posted[0].to_string().contains("KafkaConsumerLag"));
    // Delivered once: a further start has nothing to send again.
    drop(s);
    let s = spec.start();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.kinds("escalation-delivery").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alert_nobody_owns_reaches_the_humans_once_and_is_never_dropped() {
    let (slack, posted) = response_url_recorder().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ServeSpec::new(dir.path());
    spec.slack_webhook = Some(format!("{slack}webhook"));
    let s = spec.start();
    let nobody = [(
        "NobodysAlert",
        "fp-nobody",
        &[("team", "<!channel> payments")][..],
    )];
    for _ in 0..3 {
        let (status, body) = s.post(AM, INTAKE, &notification("firing", &nobody)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["unrouted"], 1, "{body}");
    }
    let (status, _) = s.post(AM, INTAKE, &notification("resolved", &nobody)).await;
    assert_eq!(status, 200);
    // Told once (Alertmanager repeats a firing alert; its resolution is no news), recorded.
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.kinds("unowned-alert-escalated").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the unowned alert was never escalated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let told = s.kinds("unowned-alert-escalated");
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["data"]["deliveries"][0]["ok"], true, "{told:?}");
    assert_eq!(
        s.kinds("alert-unrouted").len(),
        4,
        "every notification is on the record"
    );
    let posted = posted.lock().expect("lock").clone();
    assert_eq!(posted.len(), 1, "{posted:?}");
    let text = posted[0].to_string();
    assert!(
        text.contains("NobodysAlert") && text.contains("no agent owns"),
        "{text}"
    );
    assert!(
        !text.contains("<!channel>"),
        "alert text cannot ping a Slack channel: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_answers_through_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ServeSpec::new(dir.path()).start();
    let (id, digest) = s.proposal("fp-c").await;
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{BOB}\n")).expect("token file");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_themis"))
            .args(args)
            .env_remove("THEMIS_TOKEN")
            .output()
            .expect("themis runs")
    };
    let out = run(&["approve", &id, "--server", &s.url]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "no token: {}",
        text(&out.stderr)
    );
    let token = token.to_str().expect("utf-8 path");
    let out = run(&[
        "approve",
        &id,
        "--server",
        &s.url,
        "--token-file",
        token,
        "--digest",
        &digest,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("verifying"),
        "{}",
        text(&out.stdout)
    );
    let out = run(&[
        "approve",
        &id,
        "--server",
        &s.url,
        "--token-file",
        token,
        "--digest",
        &digest,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("409"), "{}", text(&out.stderr));
}

/// A loopback stand-in for Slack's response_url: records what the host posts.
async fn response_url_recorder() -> (String, crate::common::Posted) {
    let (base, got) = crate::common::webhook("/response/{n}").await;
    (format!("{base}/response/"), got)
}

/// A request signed as Slack signs it: `v0=` HMAC-SHA256 over `v0:<ts>:<body>`.
fn slack_request(
    s: &Served,
    secret: &str,
    ts: u64,
    user: &str,
    action: &str,
    value: &str,
    response_url: &str,
) -> reqwest::RequestBuilder {
    let payload = json!({
        "type": "block_actions", "user": { "id": user, "username": "someone" },
        "actions": [ { "action_id": action, "value": value, "type": "button" } ],
        "response_url": response_url,
    });
    let body = format!("payload={}", url_encode(&payload.to_string()));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac");
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    let signature = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
    s.http
        .post(format!("{}/api/v1/slack/interactions", s.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", signature)
        .body(body)
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[tokio::test(flavor = "multi_thread")]
async fn slack_answers_are_verified_used_once_even_across_a_restart_and_update_the_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (prefix, posted) = response_url_recorder().await;
    let spec = ServeSpec {
        slack: Some(&prefix),
        ..ServeSpec::new(dir.path())
    };
    let s = spec.start();
    let (id, digest) = s.proposal("fp-s").await;
    let value = format!("{id} {digest}");
    let url = format!("{prefix}1");

    // A bad signature, an old timestamp: 401, nothing done.
    let r = slack_request(
        &s,
        "not-the-secret",
        now(),
        "U0ONCALL",
        "themis-approve",
        &value,
        &url,
    )
    .send()
    .await
    .expect("request");
    assert_eq!(r.status().as_u16(), 401);
    let r = slack_request(
        &s,
        SLACK_SECRET,
        now() - 600,
        "U0ONCALL",
        "themis-approve",
        &value,
        &url,
    )
    .send()
    .await
    .expect("request");
    assert_eq!(r.status().as_u16(), 401);
    // A Slack user who is no approver: refused, recorded, told.
    let r = slack_request(
        &s,
        SLACK_SECRET,
        now(),
        "U0MALLORY",
        "themis-approve",
        &value,
        &url,
    )
    .send()
    .await
    .expect("request");
    assert_eq!(r.status().as_u16(), 403);
    let refused = s.kinds("slack-refused");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["data"]["reason"], "unknown-user");
    let (_, still) = s.get("/api/v1/approvals", ONCALL).await;
    assert_eq!(still.as_array().map(Vec::len), Some(1), "still pending");

    // The approver's signed click: accepted at once, applied, the message updated.
    let ts = now();
    let click = || {
        slack_request(
            &s,
            SLACK_SECRET,
            ts,
            "U0ONCALL",
            "themis-approve",
            &value,
            &url,
        )
    };
    let r = click().send().await.expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let list = s
        .incidents_until("the approval applied", |l| {
            l.iter().any(|i| i["status"] == "verifying")
        })
        .await;
    assert_eq!(list[0]["answer"]["by"], "oncall");
    assert_eq!(
        list[0]["answer"]["via"],
        "Slack user U0ONCALL, signed request"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while posted.lock().expect("lock").len() < 2 {
        assert!(Instant::now() < deadline, "no message update");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let updates = posted.lock().expect("lock").clone();
    assert!(
        updates[0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Refused")),
        "{updates:?}"
    );
    assert!(
        updates[1]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("approved by <@U0ONCALL>")),
        "{updates:?}"
    );

    // The same request again: a replay, refused — and after a restart too. Replayed in a
    // loop it is refused each time and audited once: a captured request cannot fill the audit.
    for _ in 0..4 {
        assert_eq!(
            click().send().await.expect("request").status().as_u16(),
            409
        );
    }
    let replays = s
        .kinds("slack-refused")
        .into_iter()
        .filter(|r| r["data"]["reason"] == "replay")
        .count();
    assert_eq!(replays, 1);
    let state = s.state.clone();
    drop(s);
    let s = spec.start();
    assert_eq!(s.state, state);
    let replay = slack_request(
        &s,
        SLACK_SECRET,
        ts,
        "U0ONCALL",
        "themis-approve",
        &value,
        &url,
    );
    assert_eq!(replay.send().await.expect("request").status().as_u16(), 409);
    let runs = s
        .kinds("execution-start")
        .into_iter()
        .filter(|r| r["data"]["runbook_id"] == "adjust-broker-gc")
        .count();
    assert_eq!(runs, 1, "the approved plan ran once");
    assert_eq!(s.kinds("approval").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_and_the_event_stream_shows_transitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = ServeSpec::new(dir.path()).start();
    let mut events = s
        .http
        .get(format!("{}/api/v1/events", s.url))
        .bearer_auth(ONCALL)
        .send()
        .await
        .expect("events");
    assert_eq!(events.status().as_u16(), 200);
    // And a terminal watching: `themis agents --watch` over the same stream.
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_themis"))
        .args(["agents", "--watch", "--server", &s.url])
        .env("THEMIS_TOKEN", ONCALL)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("watcher");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let watcher_out = watcher.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(watcher_out).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut watched = Vec::new();
    while !watched.iter().any(|l: &String| l.starts_with("watching ")) {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the watcher did not subscribe: {watched:?}"));
        watched.push(line);
    }
    s.post(
        AM,
        INTAKE,
        &notification("firing", &[("KafkaConsumerLag", "fp-e", LAG)]),
    )
    .await;
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains("event: escalation") {
        assert!(Instant::now() < deadline, "no escalation event: {seen}");
        match tokio::time::timeout(Duration::from_secs(5), events.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("event stream ended: {other:?} after {seen}"),
        }
    }
    assert!(seen.contains("event: transition"), "{seen}");
    assert!(seen.contains("\"alert-received\""), "{seen}");

    // SIGTERM: the service ends its streams, stops and exits 0; the audit is whole.
    let pid = nix::unistd::Pid::from_raw(s.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = s.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let ended = watcher.wait().expect("the watcher ends with the stream");
    assert!(ended.success(), "{ended:?}");
    // The reader ends at the watcher's end of output: every line is in.
    watched.extend(lines_rx.iter());
    let watched = watched.join("\n");
    assert!(watched.starts_with("AGENT"), "{watched}");
    assert!(
        watched.contains("kafka        idle → triaging"),
        "{watched}"
    );
    assert!(
        watched.contains("(the service closed the event stream)"),
        "{watched}"
    );
    // With the host's key and the head it kept beside it: every checkpoint signed, the last
    // one made at the stop, and the file reaches it.
    let keys = s.state.parent().expect("dir").join("keys");
    let audit = s.state.join("audit.jsonl");
    let out = themis(&[
        "audit",
        "verify",
        audit.to_str().expect("utf-8"),
        "--key",
        keys.join("audit.pub").to_str().expect("utf-8"),
        "--head",
        keys.join("audit.head.json").to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("signatures checked"), "{said}");
    assert!(said.contains("reaches the newest checkpoint"), "{said}");
    let records = std::fs::read_to_string(&audit).expect("audit");
    let last = records.lines().last().expect("a record");
    assert!(
        last.contains("\"kind\":\"checkpoint\""),
        "the stop signs the head: {last}"
    );
    // A cut tail: the chain alone still holds, the head beside the key does not.
    let cut: Vec<&str> = records.lines().collect();
    std::fs::write(&audit, cut[..cut.len() - 2].join("\n") + "\n").expect("cut");
    let out = themis(&[
        "audit",
        "verify",
        audit.to_str().expect("utf-8"),
        "--head",
        keys.join("audit.head.json").to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("cut from the end"),
        "{}",
        text(&out.stderr)
    );
    // Nor does the host sign over the cut: it refuses to start until a human has looked.
    let (code, err) = ServeSpec::new(dir.path()).refused();
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("does not reach the newest checkpoint") && err.contains("audit.head.json"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&audit)
            .expect("audit")
            .lines()
            .count(),
        cut.len() - 2,
        "nothing was written on the cut log"
    );
}

#[test]
fn check_names_file_field_and_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ServeSpec::new(dir.path());
    let config = spec.config();
    let config = config.to_str().expect("utf-8");
    let out = Command::new(env!("CARGO_BIN_EXE_themis"))
        .args(["serve", "--config", config, "--check"])
        .env_remove("TEST_INTAKE_TOKEN")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "themis.yaml: intake.tokens[0]: the environment variable TEST_INTAKE_TOKEN is not set"
        ),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_themis"))
        .args(["serve", "--config", config, "--check"])
        .env("TEST_INTAKE_TOKEN", INTAKE)
        .env("TEST_ONCALL_TOKEN", ONCALL)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("agent      kafka"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );

    // A short token is refused by field; so is the same secret for an alert source and an
    // approver, both fields named.
    let out = Command::new(env!("CARGO_BIN_EXE_themis"))
        .args(["serve", "--config", config, "--check"])
        .env("TEST_INTAKE_TOKEN", "t0k3n")
        .env("TEST_ONCALL_TOKEN", ONCALL)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!(
            "{config}: intake.tokens[0]: the token is 5 characters"
        )),
        "{}",
        text(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_themis"))
        .args(["serve", "--config", config, "--check"])
        .env("TEST_INTAKE_TOKEN", ONCALL)
        .env("TEST_ONCALL_TOKEN", ONCALL)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("approvers.oncall.token_env: the same token as intake.tokens[0]"),
        "{}",
        text(&out.stderr)
    );
    // Nor may two approvers share one: an approval names one person.
    let out = Command::new(env!("CARGO_BIN_EXE_themis"))
        .args(["serve", "--config", config, "--check"])
        .env("TEST_INTAKE_TOKEN", INTAKE)
        .env("TEST_ONCALL_TOKEN", BOB)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("the same token as approvers.")
            && text(&out.stderr).contains("give each approver a token of their own"),
        "{}",
        text(&out.stderr)
    );

    // A backend for an agent that does not exist is a typo, not silence.
    std::fs::write(
        dir.path().join("themis.yaml"),
        std::fs::read_to_string(dir.path().join("themis.yaml"))
            .expect("read")
            .replace("  kafka: {", "  kafak: {"),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_themis"))
        .args(["serve", "--config", config, "--check"])
        .env("TEST_INTAKE_TOKEN", INTAKE)
        .env("TEST_ONCALL_TOKEN", ONCALL)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("backends.kafak: no agent named `kafak`"),
        "{}",
        text(&out.stderr)
    );
}

/// A real Alertmanager on loopback whose webhook receiver is the service (`None`: not
/// installed, and the run does not require it).
pub async fn alertmanager(receiver: &str) -> Option<Service> {
    services::alertmanager(&format!(
        "route:\n  receiver: themis\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
         receivers:\n  - name: themis\n    webhook_configs:\n      - url: {receiver}/api/v1/alerts/alertmanager\n        send_resolved: true\n        \
         http_config:\n          authorization: {{ type: Bearer, credentials: {INTAKE} }}\n"
    ))
    .await
}

/// Fire (or, with `ended`, resolve) an alert through Alertmanager's own API.
async fn am_post(am: &Service, labels: &[(&str, &str)], ended: bool) {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    let mut alert =
        json!({ "labels": labels, "annotations": { "summary": "from a real Alertmanager" } });
    if ended {
        let past = SystemTime::now() - Duration::from_secs(1);
        alert["endsAt"] = json!(humantime::format_rfc3339_millis(past).to_string());
    }
    let r = reqwest::Client::new()
        .post(format!("{}/api/v2/alerts", am.url))
        .json(&json!([alert]))
        .send()
        .await
        .expect("alertmanager answers");
    assert!(r.status().is_success(), "{}", r.status());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_alertmanager_groups_deduplicates_and_resolves_through_the_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ServeSpec::new(dir.path()).start();
    let Some(am) = alertmanager(&s.url).await else {
        return;
    };
    let orders = [
        ("alertname", "KafkaConsumerLag"),
        ("topic", "orders"),
        ("group", "orders-consumer"),
        ("severity", "critical"),
    ];
    let payments = [
        ("alertname", "KafkaConsumerLag"),
        ("topic", "payments"),
        ("group", "payments-consumer"),
        ("severity", "critical"),
    ];
    am_post(&am, &orders, false).await;
    let first = s
        .incidents_until("the first alert's incident", |l| {
            l.len() == 1 && l[0]["status"] != "triaging"
        })
        .await;
    let fingerprint = first[0]["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned();

    // A second alert of the same group: Alertmanager sends the group again, both alerts. The
    // first is counted on its open incident, the second opens its own.
    am_post(&am, &payments, false).await;
    let list = s
        .incidents_until("the second incident and the attached repeat", |l| {
            l.len() == 2 && l.iter().any(|i| i["attached_alerts"].as_u64() >= Some(1))
        })
        .await;
    let attached = list
        .iter()
        .find(|i| i["fingerprint"] == fingerprint.as_str())
        .expect("the first incident");
    assert!(attached["attached_alerts"].as_u64() >= Some(1), "{list:?}");
    let groups: Vec<Value> = s
        .kinds("alert-accepted")
        .iter()
        .map(|r| r["data"]["source"]["group_key"].clone())
        .collect();
    assert!(
        groups.iter().all(|g| g == &groups[0] && g.is_string()),
        "{groups:?}"
    );
    assert!(groups.len() >= 3, "{groups:?}");

    // Resolved in Alertmanager: the notification reaches the incident, nothing is triaged.
    // (The second incident may still be triaging: count the first incident's selections.)
    let orders_id = attached["id"].as_str().expect("id").to_owned();
    let selections_of = |s: &Served| {
        s.kinds("selection")
            .iter()
            .filter(|r| r["incident"] == orders_id.as_str())
            .count()
    };
    s.incidents_until("the first incident's proposal", |l| {
        l.iter()
            .any(|i| i["id"] == orders_id.as_str() && i["status"] == "pending-approval")
    })
    .await;
    let selections = selections_of(&s);
    am_post(&am, &orders, true).await;
    let list = s
        .incidents_until("the resolved notice", |l| {
            l.iter().any(|i| {
                i["fingerprint"] == fingerprint.as_str() && i["source_resolved_at"].is_string()
            })
        })
        .await;
    assert_eq!(list.len(), 2);
    assert_eq!(selections_of(&s), selections);
}

#[tokio::test(flavor = "multi_thread")]
async fn closed_incidents_leave_the_store_after_keep_closed_and_the_audit_says_which() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ServeSpec::new(dir.path());
    spec.env.push(("THEMIS_KEEP_CLOSED", "1s".into()));
    let s = spec.start();
    let (id, _) = s.proposal("fp-retained").await;
    let (status, body) = s
        .post(
            &format!("/api/v1/approvals/{id}/reject"),
            ONCALL,
            &json!({ "reason": "not now" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let incident = s
        .incidents_until("the rejection", |l| {
            l.iter().any(|i| i["status"] == "rejected")
        })
        .await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // The verify tick (1s) prunes it once it has been closed for keep_closed.
    s.incidents_until("the pruning", |l| l.is_empty()).await;
    let pruned = s.kinds("incidents-pruned");
    assert_eq!(pruned.len(), 1, "{pruned:?}");
    assert_eq!(pruned[0]["data"]["incidents"], json!([incident]));
    assert_eq!(pruned[0]["data"]["keep_closed"], "1s");
    // Its history is still the audit's.
    assert!(
        s.audit()
            .iter()
            .any(|r| r["incident"] == incident.as_str() && r["kind"] == "rejection"),
        "the answer stays on the record"
    );
}

/// Eight labels of `pad` each (a label value is at most 2 048 characters): an alert that
/// fills the audit quickly.
pub fn padded_labels(pad: &str) -> Vec<(&'static str, &str)> {
    ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"]
        .into_iter()
        .map(|k| (k, pad))
        .collect()
}

/// Post unrouted alerts, each carrying `pad`, until the audit has `segments` sealed segments.
async fn fill_audit(s: &Served, pad: &str, segments: usize) {
    let labels = padded_labels(pad);
    let sealed = s.state.join("audit.segments");
    let count = || std::fs::read_dir(&sealed).map_or(0, |d| d.count());
    let start = count();
    for _ in 0..2000 {
        if count() >= start + segments {
            return;
        }
        let (status, body) = s
            .post(
                AM,
                INTAKE,
                &notification("firing", &[("NobodysAlert", "fp-filler", &labels)]),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    panic!("the audit was never sealed into {segments} more segment(s)");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_is_sealed_into_segments_and_kept_within_its_budget_except_what_open_work_needs()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ServeSpec::new(dir.path());
    spec.env
        .push(("THEMIS_AUDIT_SEGMENT_BYTES", (1 << 20).to_string()));
    spec.env
        .push(("THEMIS_AUDIT_MAX_BYTES", (2 << 20).to_string()));
    let pad = "p".repeat(2000);
    let s = spec.start();
    fill_audit(&s, &pad, 2).await;
    // An open incident whose proposal is on a later segment, then more on top of it.
    let (id, digest) = s.proposal("fp-kept").await;
    fill_audit(&s, &pad, 2).await;
    let sealed_before: Vec<String> = segment_names(&s.state);
    drop(s);

    // Killed and started again: retention looks at start, and removes the oldest segments up
    // to the one the pending proposal is on.
    let s = spec.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    let removal = loop {
        if let Some(r) = s.kinds("audit-segments-removed").pop() {
            break r;
        }
        assert!(Instant::now() < deadline, "no segment was removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let removed: Vec<u64> = removal["data"]["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|r| r["first_seq"].as_u64().expect("first_seq"))
        .collect();
    assert_eq!(removed[0], 1, "{removal}");
    // The record is written ahead of the removal it announces: the files go just after it,
    // one by one.
    let named = |k: &String| {
        removed
            .iter()
            .any(|r| k.trim_start_matches('0').starts_with(&format!("{r}.")))
    };
    let kept = loop {
        let kept = segment_names(&s.state);
        if !kept.iter().any(named) {
            break kept;
        }
        assert!(
            Instant::now() < deadline,
            "recorded but not removed: {kept:?} {removal}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        kept.len() < sealed_before.len(),
        "{kept:?} {sealed_before:?}"
    );
    assert!(
        kept.iter().all(|k| sealed_before.contains(k)),
        "only the oldest went"
    );
    // The proposal's segment stayed: the approval re-reads it from there and the plan runs.
    s.approve(&json!({ "id": id, "plan_digest": digest })).await;
    s.incidents_until("the approved run", |l| {
        l.iter()
            .any(|i| i["status"] != "pending-approval" && i["status"] != "executing")
    })
    .await;

    // Its size is on /metrics: the kept segments, and their bytes with the active file's.
    let metrics = s
        .http
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let kept = segment_names(&s.state);
    assert!(
        metrics.contains(&format!("themis_audit_segments {}\n", kept.len())),
        "{metrics}"
    );
    assert!(metrics.contains("themis_audit_bytes "), "{metrics}");

    let audit = s.state.join("audit.jsonl");
    let verify = themis(&[
        "audit",
        "verify",
        audit.to_str().expect("utf-8"),
        "--key",
        dir.path().join("keys/audit.pub").to_str().expect("utf-8"),
    ]);
    let said = text(&verify.stdout);
    assert!(verify.status.success(), "{said}{}", text(&verify.stderr));
    assert!(said.contains("removed by retention"), "{said}");
    // Every record of the incident is still readable, whichever file holds it.
    let incident = s.incidents_until("the incident", |l| !l.is_empty()).await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let show = themis(&[
        "audit",
        "show",
        &incident,
        "--audit",
        audit.to_str().expect("utf-8"),
    ]);
    assert!(show.status.success(), "{}", text(&show.stderr));
    assert!(
        text(&show.stdout).contains("approval"),
        "{}",
        text(&show.stdout)
    );
}

fn segment_names(state: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(state.join("audit.segments"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Review defect: `--check` said `ok` for agents whose bundles the start then refused (a key
/// not trusted): a deploy gate built on it passed a host that could not start. It verifies
/// every local bundle as a start does.
#[test]
fn check_refuses_the_bundles_a_start_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agents = dir.path().join("agents");
    std::fs::create_dir(&agents).expect("agents folder");
    let write_agents = |kafka_key: &str| {
        patched_agent(
            &agents,
            "agents/kafka.yaml",
            &[("demo-kafka-team.pub", kafka_key)],
        );
        patched_agent(&agents, "agents/kubernetes.yaml", &[]);
        patched_agent(&agents, "agents/postgres.yaml", &[]);
    };
    let mut spec = ServeSpec::new(dir.path());
    spec.agents = Some(agents.clone());
    let config = spec.config();
    let config = config.to_str().expect("utf-8");
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_themis"))
            .args(["serve", "--config", config, "--check"])
            .env("TEST_INTAKE_TOKEN", INTAKE)
            .env("TEST_ONCALL_TOKEN", ONCALL)
            .output()
            .expect("runs")
    };
    write_agents("demo-postgres-team.pub");
    let out = check();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("agent `kafka`") && text(&out.stderr).contains("not trusted"),
        "{}",
        text(&out.stderr)
    );
    write_agents("demo-kafka-team.pub");
    let out = check();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("kafka        restart-consumer-group")
            && text(&out.stdout).contains("signed by key"),
        "{}",
        text(&out.stdout)
    );
    // The catalog as a whole, as a start judges it: a rule naming a runbook the agent does not
    // have is refused by the check too, not first at the start.
    patched_agent(
        &agents,
        "agents/kafka.yaml",
        &[("runbook: scale-consumer", "runbook: scale-consumers")],
    );
    let out = check();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("a rule names runbook `scale-consumers`"),
        "{}",
        text(&out.stderr)
    );
}
