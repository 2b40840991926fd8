//! The catalogue of capabilities: every function of every capability interface in `wit/`, by
//! name (`<interface>.<function>`), with its domain and whether it changes anything.
//!
//! Pure data. The manifest loader checks grants against it, the dry-run recorder and the sandbox
//! use `Effect` to tell reads from mutations, and policy starts every agent's destructive list
//! from the capabilities marked [`Destructive`] here (an agent may add to them, and remove one
//! only by a named opt-out). A unit test keeps the table in step with the WIT files.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An agent's domain; each has its own WIT world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    Kafka,
    Kubernetes,
    Postgres,
}

impl Domain {
    pub const ALL: [Domain; 3] = [Domain::Kafka, Domain::Kubernetes, Domain::Postgres];

    /// The WIT world a step of this domain is checked and linked against.
    pub fn world(self) -> &'static str {
        match self {
            Domain::Kafka => "kafka-step",
            Domain::Kubernetes => "kubernetes-step",
            Domain::Postgres => "postgres-step",
        }
    }

    /// The capability interface this domain owns (`themis:runbook/<interface>`).
    pub fn interface(self) -> &'static str {
        match self {
            Domain::Kafka => "kafka",
            Domain::Kubernetes => "k8s",
            Domain::Postgres => "postgres",
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Domain::Kafka => "kafka",
            Domain::Kubernetes => "kubernetes",
            Domain::Postgres => "postgres",
        })
    }
}

/// Whether a call only reads or changes the system. Dry runs perform reads and record mutations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Read,
    Mutate,
}

/// Where a capability may be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Any domain may be granted it (metrics).
    Shared,
    Domain(Domain),
}

/// Whether a capability is inherently destructive: it restarts, kills or deletes, or (for
/// scaling) takes a workload down to nothing. Such calls always need a human approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destructive {
    No,
    Always,
    /// Destructive when this integer argument is zero (scale to zero).
    WhenZero(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    pub scope: Scope,
    pub effect: Effect,
    pub destructive: Destructive,
}

const fn cap(name: &'static str, scope: Scope, effect: Effect) -> Capability {
    Capability {
        name,
        scope,
        effect,
        destructive: Destructive::No,
    }
}

const fn destroys(name: &'static str, scope: Scope, destructive: Destructive) -> Capability {
    Capability {
        name,
        scope,
        effect: Effect::Mutate,
        destructive,
    }
}

use Destructive::{Always, WhenZero};
use Effect::{Mutate, Read};
const KAFKA: Scope = Scope::Domain(Domain::Kafka);
const K8S: Scope = Scope::Domain(Domain::Kubernetes);
const PG: Scope = Scope::Domain(Domain::Postgres);

/// Every grantable capability. `log.emit` is not here: logging is always allowed (and audited).
pub const CAPABILITIES: &[Capability] = &[
    cap("metrics.query", Scope::Shared, Read),
    cap("kafka.describe-cluster", KAFKA, Read),
    cap("kafka.describe-consumer-group", KAFKA, Read),
    cap("kafka.consumer-lag", KAFKA, Read),
    cap("kafka.list-topics", KAFKA, Read),
    cap("kafka.describe-consumers", KAFKA, Read),
    cap("kafka.broker-config", KAFKA, Read),
    cap("kafka.restart-consumers", KAFKA, Mutate),
    destroys("kafka.scale-consumers", KAFKA, WhenZero("replicas")),
    cap("kafka.set-broker-config", KAFKA, Mutate),
    destroys("kafka.broker-restart", KAFKA, Always),
    cap("kafka.partition-leadership", KAFKA, Read),
    cap("kafka.elect-preferred-leaders", KAFKA, Mutate),
    cap("k8s.get-deployment", K8S, Read),
    cap("k8s.get-statefulset", K8S, Read),
    cap("k8s.list-events", K8S, Read),
    cap("k8s.list-pods", K8S, Read),
    cap("k8s.pod-logs", K8S, Read),
    cap("k8s.pod-owner", K8S, Read),
    cap("k8s.rollout-history", K8S, Read),
    destroys("k8s.rollout-restart", K8S, Always),
    destroys("k8s.scale-deployment", K8S, WhenZero("replicas")),
    destroys("k8s.delete-pod", K8S, Always),
    destroys("k8s.rollout-undo", K8S, Always),
    cap("postgres.activity", PG, Read),
    cap("postgres.blockers", PG, Read),
    cap("postgres.replication-lag", PG, Read),
    cap("postgres.connection-usage", PG, Read),
    cap("postgres.cancel-backend", PG, Mutate),
    destroys("postgres.terminate-backend", PG, Always),
];

pub fn lookup(name: &str) -> Option<&'static Capability> {
    CAPABILITIES.iter().find(|c| c.name == name)
}

/// Every capability the catalogue marks destructive, always or by argument.
pub fn inherently_destructive() -> impl Iterator<Item = &'static Capability> {
    CAPABILITIES
        .iter()
        .filter(|c| c.destructive != Destructive::No)
}

impl Capability {
    /// Is this call destructive by the catalogue, given its arguments?
    pub fn destroys(&self, args: &serde_json::Value) -> bool {
        match self.destructive {
            Destructive::No => false,
            Destructive::Always => true,
            Destructive::WhenZero(arg) => args.get(arg).and_then(|v| v.as_i64()) == Some(0),
        }
    }

    /// May a step of `domain` be granted this capability?
    pub fn allowed_in(&self, domain: Domain) -> bool {
        match self.scope {
            Scope::Shared => true,
            Scope::Domain(d) => d == domain,
        }
    }
}

/// The capabilities a domain's steps may be granted, for error messages.
pub fn names_for(domain: Domain) -> Vec<&'static str> {
    CAPABILITIES
        .iter()
        .filter(|c| c.allowed_in(domain))
        .map(|c| c.name)
        .collect()
}

/// What an argument of a capability call may be. Values often come from alert labels or a model:
/// the host checks every argument against its kind before the call, so a label like
/// `../../../api/v1/secrets` or `x\0; drop` never reaches a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    /// A Kubernetes namespace: a DNS-1123 label.
    K8sNamespace,
    /// A Kubernetes object name: a DNS-1123 subdomain.
    K8sName,
    /// A Kubernetes label selector (`app=web,tier in (a,b)`).
    K8sSelector,
    /// A Kafka topic or consumer group name.
    KafkaName,
    /// A broker configuration key (`log.retention.ms`).
    ConfigKey,
    /// A broker configuration value: printable text.
    ConfigValue,
    /// A PromQL expression: printable text.
    PromQl,
    /// A non-negative id (broker, pid).
    Id,
    /// A count (replicas, log lines) up to a ceiling.
    Count(u32),
    /// Seconds: finite, not negative.
    Seconds,
}

/// The arguments of every capability, by the names the host records them under.
pub fn args_of(capability: &str) -> &'static [(&'static str, ArgKind)] {
    use ArgKind::*;
    match capability {
        "metrics.query" => &[("promql", PromQl)],
        "kafka.describe-consumer-group"
        | "kafka.describe-consumers"
        | "kafka.restart-consumers" => &[("group", KafkaName)],
        "kafka.elect-preferred-leaders" => &[("topic", KafkaName)],
        "kafka.consumer-lag" => &[("group", KafkaName), ("topic", KafkaName)],
        "kafka.scale-consumers" => &[("group", KafkaName), ("replicas", Count(10_000))],
        "kafka.broker-config" | "kafka.broker-restart" => &[("broker_id", Id)],
        "kafka.set-broker-config" => &[
            ("broker_id", Id),
            ("key", ConfigKey),
            ("value", ConfigValue),
        ],
        "k8s.get-deployment"
        | "k8s.get-statefulset"
        | "k8s.rollout-restart"
        | "k8s.delete-pod"
        | "k8s.rollout-history" => &[("namespace", K8sNamespace), ("name", K8sName)],
        "k8s.list-events" => &[("namespace", K8sNamespace), ("object", K8sName)],
        "k8s.scale-deployment" => &[
            ("namespace", K8sNamespace),
            ("name", K8sName),
            ("replicas", Count(10_000)),
        ],
        "k8s.rollout-undo" => &[
            ("namespace", K8sNamespace),
            ("name", K8sName),
            ("to_revision", Id),
        ],
        "k8s.list-pods" => &[("namespace", K8sNamespace), ("selector", K8sSelector)],
        "k8s.pod-owner" => &[("namespace", K8sNamespace), ("pod", K8sName)],
        "k8s.pod-logs" => &[
            ("namespace", K8sNamespace),
            ("pod", K8sName),
            ("tail_lines", Count(10_000)),
        ],
        "postgres.activity" => &[("min_query_seconds", Seconds)],
        "postgres.connection-usage" => &[("min_idle_seconds", Seconds)],
        "postgres.cancel-backend" | "postgres.terminate-backend" => &[("pid", Id)],
        _ => &[],
    }
}

fn pattern(kind: ArgKind) -> Option<&'static regex::Regex> {
    use std::sync::OnceLock;
    static NAMESPACE: OnceLock<regex::Regex> = OnceLock::new();
    static NAME: OnceLock<regex::Regex> = OnceLock::new();
    static SELECTOR: OnceLock<regex::Regex> = OnceLock::new();
    static KAFKA: OnceLock<regex::Regex> = OnceLock::new();
    static KEY: OnceLock<regex::Regex> = OnceLock::new();
    let compile = |cell: &'static OnceLock<regex::Regex>, source: &str| {
        Some(cell.get_or_init(|| regex::Regex::new(source).expect("a valid built-in pattern")))
    };
    match kind {
        ArgKind::K8sNamespace => compile(&NAMESPACE, r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"),
        ArgKind::K8sName => compile(&NAME, r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"),
        ArgKind::K8sSelector => compile(&SELECTOR, r"^[A-Za-z0-9._/=!, ()-]{0,1024}$"),
        ArgKind::KafkaName => compile(&KAFKA, r"^[A-Za-z0-9._-]{1,249}$"),
        ArgKind::ConfigKey => compile(&KEY, r"^[A-Za-z0-9._-]{1,255}$"),
        _ => None,
    }
}

/// Check every argument of a call against its declared kind. `Err` names the argument and why.
pub fn check_args(capability: &str, args: &serde_json::Value) -> Result<(), String> {
    for (name, kind) in args_of(capability) {
        let value = args.get(*name).unwrap_or(&serde_json::Value::Null);
        let shown = || {
            let text = value.to_string();
            let short: String = text.chars().take(80).collect();
            if short.len() < text.len() {
                format!("{short}…")
            } else {
                short
            }
        };
        let ok = match kind {
            ArgKind::Id => value.as_i64().is_some_and(|n| n >= 0),
            ArgKind::Count(max) => value.as_u64().is_some_and(|n| n <= u64::from(*max)),
            ArgKind::Seconds => value.as_f64().is_some_and(|n| n.is_finite() && n >= 0.0),
            ArgKind::ConfigValue | ArgKind::PromQl => value.as_str().is_some_and(|s| {
                s.len() <= 8192 && !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
            }),
            ArgKind::K8sSelector => value.as_str().is_some_and(|s| {
                !s.contains("..")
                    && !s.starts_with('/')
                    && pattern(*kind).is_some_and(|p| p.is_match(s))
            }),
            other => value
                .as_str()
                .is_some_and(|s| pattern(*other).is_some_and(|p| p.is_match(s))),
        };
        if !ok {
            return Err(format!(
                "argument `{name}` of {capability} is {}, which is not a valid {}",
                shown(),
                kind.describe()
            ));
        }
    }
    Ok(())
}

impl ArgKind {
    fn describe(self) -> String {
        match self {
            ArgKind::K8sNamespace => "Kubernetes namespace (DNS-1123 label)".into(),
            ArgKind::K8sName => "Kubernetes name (DNS-1123 subdomain)".into(),
            ArgKind::K8sSelector => "Kubernetes label selector".into(),
            ArgKind::KafkaName => "Kafka topic or group name ([A-Za-z0-9._-], 1-249)".into(),
            ArgKind::ConfigKey => "configuration key".into(),
            ArgKind::ConfigValue => "configuration value (printable, at most 8 KiB)".into(),
            ArgKind::PromQl => "PromQL expression (printable, at most 8 KiB)".into(),
            ArgKind::Id => "id (a non-negative integer)".into(),
            ArgKind::Count(max) => format!("count from 0 to {max}"),
            ArgKind::Seconds => "number of seconds (finite, not negative)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `name: func(` in a capability interface of `wit/` is in the table, and nothing else.
    #[test]
    fn table_matches_the_wit_files() {
        let wit_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../wit");
        let mut from_wit = Vec::new();
        for file in ["kafka.wit", "k8s.wit", "postgres.wit", "types.wit"] {
            let text = std::fs::read_to_string(format!("{wit_dir}/{file}")).expect("read wit");
            let mut interface = None;
            for line in text.lines().map(str::trim) {
                if let Some(rest) = line.strip_prefix("interface ") {
                    interface = rest.split_whitespace().next().map(str::to_owned);
                } else if let (Some(iface), Some((name, _))) =
                    (&interface, line.split_once(": func("))
                    && iface != "step"
                    && iface != "log"
                {
                    from_wit.push(format!("{iface}.{name}"));
                }
            }
        }
        from_wit.sort();
        let mut table: Vec<String> = CAPABILITIES.iter().map(|c| c.name.to_owned()).collect();
        table.sort();
        assert_eq!(from_wit, table);
    }

    #[test]
    fn domains_cannot_be_granted_each_others_capabilities() {
        let restart = lookup("k8s.rollout-restart").expect("known");
        assert!(restart.allowed_in(Domain::Kubernetes));
        assert!(!restart.allowed_in(Domain::Kafka));
        assert!(
            lookup("metrics.query")
                .expect("known")
                .allowed_in(Domain::Postgres)
        );
        assert!(lookup("kafka.nope").is_none());
    }

    #[test]
    fn arguments_from_labels_are_checked_against_their_kind() {
        use serde_json::json;
        assert!(
            check_args(
                "k8s.get-deployment",
                &json!({"namespace": "shop", "name": "api"})
            )
            .is_ok()
        );
        for (cap, args) in [
            (
                "k8s.get-deployment",
                json!({"namespace": "../../../api/v1", "name": "x"}),
            ),
            (
                "k8s.list-pods",
                json!({"namespace": "shop", "selector": "app=../../secrets"}),
            ),
            (
                "k8s.pod-logs",
                json!({"namespace": "shop", "pod": "p", "tail_lines": 1_000_000}),
            ),
            (
                "kafka.consumer-lag",
                json!({"group": "a\u{0}; rm", "topic": "t"}),
            ),
            ("metrics.query", json!({"promql": "up\u{0}"})),
            ("postgres.terminate-backend", json!({"pid": -1})),
        ] {
            assert!(check_args(cap, &args).is_err(), "{cap} {args}");
        }
        // Every capability's argument list names only arguments it has.
        for c in CAPABILITIES {
            for (name, _) in args_of(c.name) {
                assert!(!name.is_empty());
            }
        }
    }

    #[test]
    fn the_catalogue_marks_what_restarts_kills_deletes_or_scales_to_zero() {
        let always: Vec<&str> = inherently_destructive()
            .filter(|c| c.destructive == Destructive::Always)
            .map(|c| c.name)
            .collect();
        assert_eq!(
            always,
            [
                "kafka.broker-restart",
                "k8s.rollout-restart",
                "k8s.delete-pod",
                "k8s.rollout-undo",
                "postgres.terminate-backend"
            ]
        );
        let scale = lookup("k8s.scale-deployment").expect("known");
        assert!(scale.destroys(&serde_json::json!({ "replicas": 0 })));
        assert!(!scale.destroys(&serde_json::json!({ "replicas": 3 })));
        assert!(inherently_destructive().all(|c| c.effect == Effect::Mutate));
    }
}
