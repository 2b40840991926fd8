//! Building a host from the command line: the sandbox, the audit log, the state directory (and
//! its lock), the agents' backends, the escalation channels; and the commands that only need
//! that (`alert`, `agents`).

use crate::{Place, render};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use themis_agent::audit::{AuditLog, Redactor};
use themis_agent::escalation::Channels;
use themis_agent::store::StoreChoice;
use themis_agent::{AlertOutcome, Quiet, Runtime, RuntimeOptions, RuntimeParts};
use themis_caps::provider::{BackendProvider, Unconfigured};
use themis_sandbox::{Sandbox, SandboxConfig};
use themis_testkit::provider::World;

pub fn sandbox(cache_dir: Option<PathBuf>) -> Result<Arc<Sandbox>, ExitCode> {
    Sandbox::new(SandboxConfig {
        cache_dir,
        ..SandboxConfig::default()
    })
    .map(Arc::new)
    .map_err(|e| {
        eprintln!("error: cannot start the WebAssembly sandbox: {e:#}");
        ExitCode::from(2)
    })
}

pub fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

/// Every `*.yaml` in the agents folder, sorted.
pub fn agent_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let files = themis_core::yaml::files_in(dir).map_err(|e| {
        format!(
            "{}: cannot read the agents folder: {e} (pass --agents DIR)",
            dir.display()
        )
    })?;
    if files.is_empty() {
        return Err(format!("{}: no agent definitions (*.yaml)", dir.display()));
    }
    Ok(files)
}

/// The agents' backends for this state directory: the scenario world it is bound to
/// (`themis alert --scenario`), or none at all — every capability call then fails closed.
fn provider(place: &Place) -> Result<Arc<dyn BackendProvider>, ExitCode> {
    match World::bound(&place.state_dir) {
        Some(world) => world
            .provider(&place.state_dir)
            .map(|p| Arc::new(p) as Arc<dyn BackendProvider>)
            .map_err(|e| fail(2, e)),
        None => Ok(Arc::new(Unconfigured)),
    }
}

/// A runtime over `place`: takes the state directory's lock (waiting up to --lock-wait), opens
/// the audit log, loads and verifies every agent, recovers what a previous run left unfinished.
pub async fn runtime(place: &Place, cache_dir: &Path) -> Result<Runtime, ExitCode> {
    place.unsigned.warn();
    let sandbox = sandbox(Some(cache_dir.to_path_buf()))?;
    let files = agent_files(&place.agents).map_err(|e| fail(2, e))?;
    let wait = place.lock_wait.into();
    // The state directory first, then its audit log: always in this order, so two processes
    // never hold one each while waiting for the other.
    let store = themis_agent::store::open(&place.state_dir, None, StoreChoice::Json, wait)
        .await
        .map_err(|e| fail(2, e))?;
    let channels = Channels::from_env();
    let redactor = Redactor::with_values(channels.slack_webhook.clone());
    let replica = store.audit_replica().map_err(|e| fail(2, e))?;
    let audit = AuditLog::open_replicated(&place.audit_path(), redactor, wait, replica)
        .map_err(|e| fail(2, e))?;
    Runtime::start(
        RuntimeParts {
            sandbox,
            agent_files: files,
            audit: Arc::new(audit),
            store,
            channels,
            observer: Arc::new(Quiet),
            provider: provider(place)?,
        },
        RuntimeOptions {
            allow_unsigned: place.unsigned.allow_unsigned,
            bundle_cache: Some(cache_dir.join("bundles")),
            ..RuntimeOptions::default()
        },
    )
    .await
    .map_err(|e| fail(2, e))
}

/// `themis alert --scenario FILE`: bind the state directory to the scenario's world and hand its
/// alert to the agents.
pub async fn alert(scenario: &Path, place: &Place, cache_dir: &Path) -> ExitCode {
    let world = match themis_testkit::scenario::load(scenario) {
        Ok(w) => w,
        Err(e) => return fail(2, e),
    };
    if let Err(e) = World::bind(&place.state_dir, scenario, world.dry_run) {
        return fail(
            2,
            format!(
                "{}: cannot record the scenario world: {e}",
                place.state_dir.display()
            ),
        );
    }
    let rt = match runtime(place, cache_dir).await {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let code = match rt.handle_alert(world.alert.to_alert()).await {
        Ok(AlertOutcome::Handled(i)) => {
            outln!("{}", render::incident_line(&i));
            ExitCode::SUCCESS
        }
        Ok(AlertOutcome::Attached(i)) => {
            outln!("attached to the open {}", render::incident_line(&i));
            ExitCode::SUCCESS
        }
        Ok(AlertOutcome::Unrouted) => {
            fail(1, format!("no agent owns alert {}", world.alert.name()))
        }
        Ok(AlertOutcome::QueueFull { agent }) => fail(
            1,
            format!("agent {agent} is busy and its queue is full; retry"),
        ),
        Err(e) => fail(1, e),
    };
    // The rest of the scenario's notification, as the service would take it.
    for other in &world.group {
        let alert = other.to_alert();
        let name = alert.name.clone();
        if other.is_firing() {
            match rt.handle_alert(alert).await {
                Ok(AlertOutcome::Handled(i)) => outln!("{}", render::incident_line(&i)),
                Ok(AlertOutcome::Attached(i)) => {
                    outln!("attached to the open {}", render::incident_line(&i))
                }
                Ok(AlertOutcome::Unrouted) => outln!("{name}: no agent owns it; recorded"),
                Ok(AlertOutcome::QueueFull { agent }) => {
                    outln!("{name}: agent {agent}'s queue is full; not taken")
                }
                Err(e) => outln!("{name}: {e}"),
            }
        } else {
            match rt.handle_resolved(alert).await {
                Ok(Some(i)) => outln!("{name} resolved: recorded on {}", i.id),
                Ok(None) => outln!("{name} resolved: recorded (no open incident of it)"),
                Err(e) => outln!("{name} resolved: {e}"),
            }
        }
    }
    rt.shutdown().await;
    code
}

/// How many alerts one replayed notification may hold (Alertmanager's own default cap is 0,
/// unlimited; a notification file larger than this is not one notification).
const REPLAY_MAX_ALERTS: usize = 1000;

/// `themis alert --alertmanager PAYLOAD`: every alert of a webhook notification, as the service
/// would take it, against the scenario's mocks.
pub async fn replay(scenario: &Path, payload: &Path, place: &Place, cache_dir: &Path) -> ExitCode {
    let world = match themis_testkit::scenario::load(scenario) {
        Ok(w) => w,
        Err(e) => return fail(2, e),
    };
    let text = match themis_core::files::read_text(payload, themis_core::files::limits::DEFINITION)
    {
        Ok(t) => t,
        Err(e) => return fail(2, format!("{}: {e}", payload.display())),
    };
    let notification: themis_server::alertmanager::Notification = match serde_json::from_str(&text)
    {
        Ok(n) => n,
        Err(e) => {
            return fail(
                2,
                format!(
                    "{}: not an Alertmanager webhook payload (version 4): {e}",
                    payload.display()
                ),
            );
        }
    };
    let incoming = match notification.into_incoming(REPLAY_MAX_ALERTS) {
        Ok(i) => i,
        Err(e) => return fail(2, format!("{}: {e}", payload.display())),
    };
    if let Err(e) = World::bind(&place.state_dir, scenario, world.dry_run) {
        return fail(
            2,
            format!(
                "{}: cannot record the scenario world: {e}",
                place.state_dir.display()
            ),
        );
    }
    let rt = match runtime(place, cache_dir).await {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let mut code = ExitCode::SUCCESS;
    for i in incoming {
        let name = i.alert.name.clone();
        let fingerprint = i.alert.fingerprint.clone();
        // A resolved alert is recorded on its incident, never triaged: through the same intake
        // as the service's, which the shutdown below drains.
        if i.status == themis_agent::AlertStatus::Resolved {
            match rt.submit(i.alert, i.status, i.source) {
                Ok(themis_agent::Submitted::Queued { agent }) => {
                    outln!("{name} ({fingerprint}) resolved: recorded by the {agent} agent")
                }
                Ok(themis_agent::Submitted::Unrouted) => {
                    outln!("{name} ({fingerprint}) resolved: no agent owns it")
                }
                Ok(themis_agent::Submitted::QueueFull { agent }) => {
                    code = fail(
                        1,
                        format!("agent {agent} is busy and its queue is full; retry"),
                    )
                }
                Err(e) => code = fail(1, e),
            }
            continue;
        }
        match rt.handle_alert(i.alert).await {
            Ok(AlertOutcome::Handled(i)) => outln!("{}", render::incident_line(&i)),
            Ok(AlertOutcome::Attached(i)) => {
                outln!("attached to the open {}", render::incident_line(&i))
            }
            Ok(AlertOutcome::Unrouted) => {
                outln!("{name} ({fingerprint}): no agent owns it; recorded as unrouted")
            }
            Ok(AlertOutcome::QueueFull { agent }) => {
                code = fail(
                    1,
                    format!("agent {agent} is busy and its queue is full; retry"),
                )
            }
            Err(e) => code = fail(1, e),
        }
    }
    rt.shutdown().await;
    code
}

/// `themis agents`: what each agent is doing and what waits for a human. Reads the state
/// without taking its lock, so it answers next to a running host.
pub async fn agents(place: &Place, json: bool) -> ExitCode {
    let files = match agent_files(&place.agents) {
        Ok(f) => f,
        Err(e) => return fail(2, e),
    };
    let store = match themis_agent::store::open_read_only(&place.state_dir).await {
        Ok(s) => s,
        Err(e) => return fail(2, e),
    };
    let incidents = match store.list().await {
        Ok(i) => i,
        Err(e) => return fail(2, e),
    };
    let mut rows = Vec::new();
    for file in files {
        let def = match themis_agent::AgentDef::load(&file) {
            Ok(d) => d,
            Err(e) => return fail(2, e),
        };
        let state = store
            .agent_state(&def.name)
            .await
            .map_err(|e| e.to_string());
        let pending: Vec<String> = incidents
            .iter()
            .filter(|i| i.agent == def.name)
            .filter(|i| i.status == themis_agent::store::IncidentStatus::PendingApproval)
            .filter_map(|i| {
                i.proposal
                    .as_ref()
                    .map(|p| format!("{} ({})", p.id, p.plan.runbook_id))
            })
            .collect();
        rows.push((def.name.clone(), def.domain.to_string(), state, pending));
    }
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, d, s, p)| {
                let state = match s {
                    Ok(s) => serde_json::to_value(s).unwrap_or_default(),
                    Err(e) => serde_json::json!({ "state": "unknown", "error": e }),
                };
                serde_json::json!({ "agent": n, "domain": d, "state": state, "pending_approvals": p })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        outln!("{:<12} {:<12} {:<60} PENDING", "AGENT", "DOMAIN", "STATE");
        for (n, d, s, p) in rows {
            let s = match s {
                Ok(s) => s.to_string(),
                Err(e) => format!("unknown ({e})"),
            };
            outln!(
                "{n:<12} {d:<12} {s:<60} {}",
                if p.is_empty() {
                    "-".into()
                } else {
                    p.join(", ")
                }
            );
        }
    }
    ExitCode::SUCCESS
}
