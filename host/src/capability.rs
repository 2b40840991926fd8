//! The catalogue of capabilities: every function of every capability interface in `wit/`, by
//! name (`<interface>.<function>`), with its domain and whether it changes anything.
//!
//! Pure data. The manifest loader checks grants against it, the dry-run recorder and the sandbox
//! use `Effect` to tell reads from mutations. A unit test keeps it in step with the WIT files.

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    pub scope: Scope,
    pub effect: Effect,
}

const fn cap(name: &'static str, scope: Scope, effect: Effect) -> Capability {
    Capability {
        name,
        scope,
        effect,
    }
}

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
    cap("kafka.scale-consumers", KAFKA, Mutate),
    cap("kafka.set-broker-config", KAFKA, Mutate),
    cap("kafka.broker-restart", KAFKA, Mutate),
    cap("k8s.get-deployment", K8S, Read),
    cap("k8s.list-pods", K8S, Read),
    cap("k8s.pod-logs", K8S, Read),
    cap("k8s.rollout-restart", K8S, Mutate),
    cap("k8s.scale-deployment", K8S, Mutate),
    cap("k8s.delete-pod", K8S, Mutate),
    cap("postgres.activity", PG, Read),
    cap("postgres.blockers", PG, Read),
    cap("postgres.replication-lag", PG, Read),
    cap("postgres.cancel-backend", PG, Mutate),
    cap("postgres.terminate-backend", PG, Mutate),
];

/// Capabilities that need a human approval unless a policy says otherwise: they restart, kill or
/// delete. Agents' policies (agents/*.yaml) carry their own lists.
pub const DEFAULT_DESTRUCTIVE: &[&str] = &[
    "kafka.broker-restart",
    "k8s.rollout-restart",
    "k8s.delete-pod",
    "postgres.terminate-backend",
];

pub fn lookup(name: &str) -> Option<&'static Capability> {
    CAPABILITIES.iter().find(|c| c.name == name)
}

impl Capability {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `name: func(` in a capability interface of `wit/` is in the table, and nothing else.
    #[test]
    fn table_matches_the_wit_files() {
        let wit_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../wit");
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
}
