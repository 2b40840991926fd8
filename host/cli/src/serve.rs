//! `themis serve`: read `themis.yaml`, choose each agent's backends from its `backends:`
//! section (an agent with none fails every capability call closed), start the runtime with the
//! service's event observer, and serve until SIGTERM/SIGINT.

use crate::Unsigned;
use crate::host::{agent_files, fail, sandbox};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use themis_agent::audit::{AuditLog, Redactor};
use themis_agent::escalation::Channels;
use themis_agent::store::JsonStore;
use themis_agent::{Runtime, RuntimeOptions, RuntimeParts};
use themis_caps::Backends;
use themis_caps::provider::{BackendProvider, ProviderError, Unconfigured};
use themis_core::capability::Domain;
use themis_server::config::{BackendSpec, ServeConfig, process_env};
use themis_server::{Events, Overrides};
use themis_testkit::provider::ScenarioProvider;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The service configuration (see examples/themis.yaml).
    #[arg(long, value_name = "FILE", env = "THEMIS_CONFIG")]
    config: PathBuf,
    /// Listen on this address:port instead of the file's `listen:` (or THEMIS_LISTEN).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Keep state here instead of the file's `state_dir:` (or THEMIS_STATE_DIR).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Check the configuration and the agent definitions it names, print what would run, and
    /// exit: 0 when it would start, 2 naming the file, field and fix when not.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    unsigned: Unsigned,
}

/// Each agent's backends as the configuration says: its scenario world, or none at all.
struct Configured {
    scenarios: BTreeMap<String, ScenarioProvider>,
}

impl BackendProvider for Configured {
    fn backends(&self, agent: &str, domain: Domain) -> Result<Backends, ProviderError> {
        match self.scenarios.get(agent) {
            Some(p) => p.backends(agent, domain),
            None => Unconfigured.backends(agent, domain),
        }
    }
}

fn provider(backends: &BTreeMap<String, BackendSpec>) -> Result<Configured, String> {
    let mut scenarios = BTreeMap::new();
    for (agent, spec) in backends {
        let p = ScenarioProvider::from_file(&spec.scenario, spec.dry_run)
            .map_err(|e| format!("backends.{agent}.scenario: {e}"))?;
        scenarios.insert(agent.clone(), p);
    }
    Ok(Configured { scenarios })
}

/// Agent names the backends section names but no agent file defines: a typo would otherwise
/// leave an agent silently unconfigured.
fn unknown_backends(config: &ServeConfig, agents: &[String]) -> Result<(), String> {
    match config.backends.keys().find(|k| !agents.contains(k)) {
        Some(k) => Err(format!(
            "{}: backends.{k}: no agent named `{k}` in {} (agents: {})",
            config.file.display(),
            config.agents.display(),
            agents.join(", ")
        )),
        None => Ok(()),
    }
}

pub async fn run(args: ServeArgs, cache_dir_flag: Option<PathBuf>) -> ExitCode {
    let overrides = Overrides {
        listen: args.listen.clone(),
        state_dir: args.state_dir.clone(),
    };
    let config = match ServeConfig::load(&args.config, &overrides, &process_env()) {
        Ok(c) => c,
        Err(e) => return fail(2, e),
    };
    let files = match agent_files(&config.agents) {
        Ok(f) => f,
        Err(e) => return fail(2, e),
    };
    let mut names = Vec::new();
    for file in &files {
        match themis_agent::AgentDef::load(file) {
            Ok(def) => names.push(def.name),
            Err(e) => return fail(2, e),
        }
    }
    if let Err(e) = unknown_backends(&config, &names) {
        return fail(2, e);
    }
    let provider = match provider(&config.backends) {
        Ok(p) => p,
        Err(e) => return fail(2, format!("{}: {e}", config.file.display())),
    };
    if args.check {
        println!("ok  {}", config.file.display());
        println!("    listen     {}", config.listen);
        println!("    state      {}", config.state_dir.display());
        println!("    audit      {}", config.audit.display());
        for name in &names {
            let backend = match config.backends.get(name) {
                Some(b) => format!(
                    "scenario {}{}",
                    b.scenario.display(),
                    if b.dry_run { " (dry run)" } else { "" }
                ),
                None => "none: every capability call fails closed".into(),
            };
            println!("    agent      {name:<12} {backend}");
        }
        println!(
            "    approvers  {}",
            config
                .approvers
                .0
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "    slack      {}",
            if config.slack.is_some() {
                "interactions on"
            } else {
                "off"
            }
        );
        return ExitCode::SUCCESS;
    }

    args.unsigned.warn();
    let cache_dir = cache_dir_flag.unwrap_or_else(|| config.cache_dir.clone());
    let sandbox = match sandbox(Some(cache_dir)) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let store = match JsonStore::open(&config.state_dir) {
        Ok(s) => Arc::new(s),
        Err(e) => return fail(2, e),
    };
    let mut channels = Channels::from_env();
    if let Some(url) = config.slack.as_ref().and_then(|s| s.webhook_url.as_ref()) {
        channels.slack_webhook = Some(url.expose().to_owned());
    }
    let mut secrets = config.secret_values();
    secrets.extend(channels.slack_webhook.clone());
    let redactor = Redactor::with_values(secrets);
    let audit = match AuditLog::open(&config.audit, redactor.clone()) {
        Ok(a) => Arc::new(a),
        Err(e) => return fail(2, e),
    };
    let events = Arc::new(Events::new(redactor));
    let runtime = match Runtime::start(
        RuntimeParts {
            sandbox,
            agent_files: files,
            audit,
            store,
            channels,
            observer: events.clone(),
            provider: Arc::new(provider),
        },
        RuntimeOptions {
            allow_unsigned: args.unsigned.allow_unsigned,
            queue_capacity: config.queue,
            ..RuntimeOptions::default()
        },
    )
    .await
    {
        Ok(rt) => rt,
        Err(e) => return fail(2, e),
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            runtime.shutdown().await;
            return fail(
                2,
                format!("cannot listen on {}: {e} (--listen ADDR)", config.listen),
            );
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.listen.to_string());
    // Scripts and tests read this line to learn the port when listening on :0.
    println!("themis serve: listening on http://{addr}");
    tracing::info!(%addr, agents = names.len(), "listening");
    match themis_server::serve(config, runtime, events, listener, themis_server::signal()).await {
        Ok(()) => {
            println!("themis serve: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, format!("the service failed: {e}")),
    }
}
