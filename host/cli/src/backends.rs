//! Each agent's backends as `themis.yaml` says — a scenario's mocked world, or the real systems
//! (PostgreSQL through sqlx, Kafka through rdkafka, Kubernetes through kube, metrics through
//! Prometheus), optionally in shadow mode — and the
//! doctor that connects to them and says what is reachable and which privileges are missing.

use std::collections::BTreeMap;
use std::sync::Arc;
use themis_backend_kafka::KafkaBackend;
use themis_backend_kubernetes::KubernetesBackend;
use themis_backend_kubernetes::kafka_workloads::KafkaOnKubernetes;
use themis_backend_postgres::PostgresBackend;
use themis_backend_prometheus::PrometheusBackend;
use themis_caps::Backends;
use themis_caps::KafkaCaps;
use themis_caps::provider::{BackendProvider, NoBackend, ProviderError, Unconfigured};
use themis_core::capability::Domain;
use themis_server::config::{BackendSource, BackendSpec};
use themis_testkit::provider::ScenarioProvider;

enum AgentBackends {
    Scenario(ScenarioProvider),
    Real {
        postgres: Option<Arc<PostgresBackend>>,
        metrics: Option<Arc<PrometheusBackend>>,
        kafka: Option<Arc<KafkaBackend>>,
        /// What the Kafka agent's steps call: the Kafka backend, with its actions on the bound
        /// workloads when `kafka.workloads` is configured.
        kafka_caps: Option<Arc<dyn KafkaCaps>>,
        kubernetes: Option<Arc<KubernetesBackend>>,
        dry_run: bool,
    },
}

/// The provider `themis serve` hands the runtime.
pub struct Configured {
    agents: BTreeMap<String, AgentBackends>,
}

impl BackendProvider for Configured {
    fn backends(&self, agent: &str, domain: Domain) -> Result<Backends, ProviderError> {
        match self.agents.get(agent) {
            Some(AgentBackends::Scenario(p)) => p.backends(agent, domain),
            Some(AgentBackends::Real {
                postgres,
                metrics,
                kafka_caps,
                kubernetes,
                dry_run,
                ..
            }) => {
                let none = NoBackend::for_agent(agent);
                let live = Backends::live(
                    match metrics {
                        Some(m) => m.clone(),
                        None => none.clone(),
                    },
                    match kafka_caps {
                        Some(k) => k.clone(),
                        None => none.clone(),
                    },
                    match kubernetes {
                        Some(k) => k.clone(),
                        None => none.clone(),
                    },
                    match postgres {
                        Some(p) => p.clone(),
                        None => none,
                    },
                );
                Ok(if *dry_run { live.dry_run() } else { live })
            }
            None => Unconfigured.backends(agent, domain),
        }
    }
}

/// Build every agent's backends. Real ones connect lazily: an unreachable system fails calls
/// (closed), not the start. A scenario world keeps its state in `state_dir` (what was done to
/// it outlives a restart of the host, as a real system's state does).
pub fn provider(
    backends: &BTreeMap<String, BackendSpec>,
    state_dir: &std::path::Path,
) -> Result<Configured, String> {
    let mut agents = BTreeMap::new();
    for (agent, spec) in backends {
        let built =
            match &spec.source {
                BackendSource::Scenario(file) => AgentBackends::Scenario(
                    ScenarioProvider::kept(file, spec.dry_run, state_dir, agent)
                        .map_err(|e| format!("backends.{agent}.scenario: {e}"))?,
                ),
                BackendSource::Real {
                    postgres,
                    metrics,
                    kafka,
                    kubernetes,
                    kafka_workloads,
                } => {
                    let kubernetes = kubernetes
                        .as_ref()
                        .map(|settings| Arc::new(KubernetesBackend::new(agent, settings.clone())));
                    let kafka = match kafka {
                        Some(settings) => Some(Arc::new(
                            KafkaBackend::new(agent, settings.clone())
                                .map_err(|e| format!("backends.{agent}.kafka: {e}"))?,
                        )),
                        None => None,
                    };
                    let kafka_caps: Option<Arc<dyn KafkaCaps>> =
                        match (&kafka, &kubernetes, kafka_workloads) {
                            (Some(k), Some(k8s), Some(w)) => Some(Arc::new(
                                KafkaOnKubernetes::new(k.clone(), k8s.clone(), w.clone()),
                            )),
                            (Some(k), ..) => Some(k.clone()),
                            (None, ..) => None,
                        };
                    AgentBackends::Real {
                        kubernetes,
                        kafka,
                        kafka_caps,
                        postgres: match postgres {
                            Some(settings) => Some(Arc::new(
                                PostgresBackend::new(agent, settings.clone())
                                    .map_err(|e| format!("backends.{agent}.postgres: {e}"))?,
                            )),
                            None => None,
                        },
                        metrics: match metrics {
                            Some(settings) => Some(Arc::new(
                                PrometheusBackend::new(settings.clone())
                                    .map_err(|e| format!("backends.{agent}.metrics: {e}"))?,
                            )),
                            None => None,
                        },
                        dry_run: spec.dry_run,
                    }
                }
            };
        agents.insert(agent.clone(), built);
    }
    Ok(Configured { agents })
}

/// One line of the doctor's report.
pub struct Finding {
    pub agent: String,
    pub what: &'static str,
    pub ok: bool,
    pub says: String,
}

/// The host's own state database, when `store:` names one: reachable, whether a host can start
/// on it, who holds it. `None` for a store in the state directory.
pub async fn store_finding(store: Option<&themis_agent::store::StoreChoice>) -> Option<Finding> {
    let Some(themis_agent::store::StoreChoice::Postgres(target)) = store else {
        return None;
    };
    let finding = |ok, says: String| Finding {
        agent: "(host)".into(),
        what: "store",
        ok,
        says,
    };
    Some(match target.probe().await {
        Err(e) => finding(false, format!("unreachable: {e}")),
        Ok(p) => {
            let held = match &p.holder {
                Some((host, token)) => format!("; held last by {host} (token {token})"),
                None => "; no host has held it yet".into(),
            };
            if p.usable() {
                finding(
                    true,
                    format!(
                        "reachable: PostgreSQL {} as `{}` on `{}`{}{held}",
                        p.server_version,
                        p.user,
                        p.database,
                        if p.has_schema {
                            ", schema there"
                        } else {
                            ", schema to be made at start"
                        }
                    ),
                )
            } else {
                finding(
                    false,
                    format!(
                        "reachable, but `{}` cannot create the schema on `{}`: make the role the database's owner (`ALTER DATABASE {} OWNER TO {}`)",
                        p.user, p.database, p.database, p.user
                    ),
                )
            }
        }
    })
}

/// Connect to every real backend and report, per agent and system, what is reachable and which
/// privileges are missing. Scenario worlds and unconfigured agents are reported as such.
pub async fn doctor(provider: &Configured, agents: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    for agent in agents {
        let finding = |what, ok, says: String| Finding {
            agent: agent.clone(),
            what,
            ok,
            says,
        };
        match provider.agents.get(agent) {
            None => out.push(finding(
                "backends",
                true,
                "none configured: every capability call fails closed".into(),
            )),
            Some(AgentBackends::Scenario(_)) => out.push(finding(
                "backends",
                true,
                "a scenario's mocked world (nothing real is reached)".into(),
            )),
            Some(AgentBackends::Real {
                postgres,
                metrics,
                kafka,
                kubernetes,
                dry_run,
                ..
            }) => {
                if *dry_run {
                    out.push(finding(
                        "mode",
                        true,
                        "dry run: reads the real systems, records every mutation as \"would do\""
                            .into(),
                    ));
                }
                if let Some(pg) = postgres {
                    out.push(match pg.doctor().await {
                        Err(e) => finding("postgres", false, format!("unreachable: {e}")),
                        Ok(d) if d.superuser => finding(
                            "postgres",
                            true,
                            format!(
                                "reachable: PostgreSQL {} as `{}` on `{}` — a superuser, more than Themis needs (use a role with pg_monitor and pg_signal_backend only)",
                                d.server_version, d.user, d.database
                            ),
                        ),
                        Ok(d) if !d.missing.is_empty() => finding(
                            "postgres",
                            false,
                            format!(
                                "reachable: PostgreSQL {} as `{}` on `{}`; missing {}: GRANT {} TO {}",
                                d.server_version,
                                d.user,
                                d.database,
                                d.missing.join(", "),
                                d.missing.join(", "),
                                d.user
                            ),
                        ),
                        Ok(d) => finding(
                            "postgres",
                            true,
                            format!(
                                "reachable: PostgreSQL {} as `{}` on `{}`; privileges ok (pg_monitor, pg_signal_backend)",
                                d.server_version, d.user, d.database
                            ),
                        ),
                    });
                }
                if let Some(k) = kafka {
                    out.push(match k.doctor().await {
                        Ok(d) if d.controller < 0 => finding(
                            "kafka",
                            false,
                            format!("reachable: {} brokers, {} topics, but no controller named", d.brokers, d.topics),
                        ),
                        Ok(d) => finding(
                            "kafka",
                            true,
                            format!(
                                "reachable: {} brokers, {} topics, controller {}; actions act on the workloads bound under kafka.workloads (none bound: they escalate)",
                                d.brokers, d.topics, d.controller
                            ),
                        ),
                        Err(e) => finding("kafka", false, format!("unreachable: {e}")),
                    });
                }
                if let Some(k) = kubernetes {
                    out.push(match k.doctor().await {
                        Ok(d) => finding(
                            "kubernetes",
                            true,
                            format!("reachable: API server {}", d.server_version),
                        ),
                        Err(e) => finding("kubernetes", false, format!("unreachable: {e}")),
                    });
                }
                if let Some(m) = metrics {
                    out.push(match m.doctor().await {
                        Ok(d) => finding(
                            "metrics",
                            true,
                            format!("reachable: Prometheus {}", d.version),
                        ),
                        Err(e) => finding("metrics", false, format!("unreachable: {e}")),
                    });
                }
            }
        }
    }
    out
}
