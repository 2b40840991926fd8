//! `themis serve`: read `themis.yaml`, choose each agent's backends from its `backends:`
//! section (an agent with none fails every capability call closed), start the runtime with the
//! service's event observer, and serve until SIGTERM/SIGINT.

use crate::Unsigned;
use crate::backends::{self, Configured};
use crate::host::{agent_files, fail, sandbox};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use themis_agent::Fanout;
use themis_agent::audit::{AuditLog, Redactor};
use themis_agent::escalation::Channels;
use themis_agent::store::StoreChoice;
use themis_agent::{Runtime, RuntimeOptions, RuntimeParts};
use themis_server::config::{BackendSource, BackendSpec, ServeConfig, process_env};
use themis_server::{Events, Metrics, Overrides};

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
    /// exit: 0 when it would start, 2 naming the file, field and fix when not. Real backends
    /// are connected to and reported on (as `themis doctor` does), without changing the code.
    #[arg(long)]
    check: bool,
    /// Shadow mode for every agent: read the real systems, record every mutating capability
    /// call as "would do" (in the audit and the API) and change nothing.
    /// (THEMIS_DRY_RUN=1|true|yes|on; 0|false|no|off or unset: live).
    #[arg(long, env = "THEMIS_DRY_RUN", value_parser = clap::builder::BoolishValueParser::new())]
    dry_run: bool,
    #[command(flatten)]
    unsigned: Unsigned,
}

impl ServeArgs {
    /// Whether this runs the service (not `--check`): a process that lives on after whoever
    /// reads its output may be gone.
    pub fn serves(&self) -> bool {
        !self.check
    }
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

/// What `themis serve` and `themis doctor` both start from: the configuration, the agent
/// definitions it names and each agent's backends.
pub struct Loaded {
    pub config: ServeConfig,
    pub files: Vec<PathBuf>,
    pub names: Vec<String>,
    pub provider: Configured,
}

pub fn load(file: &std::path::Path, overrides: &Overrides) -> Result<Loaded, ExitCode> {
    let config = ServeConfig::load(file, overrides, &process_env()).map_err(|e| fail(2, e))?;
    let files = agent_files(&config.agents).map_err(|e| fail(2, e))?;
    let mut names = Vec::new();
    for file in &files {
        let def = themis_agent::AgentDef::load(file).map_err(|e| fail(2, e))?;
        names.push(def.name);
    }
    unknown_backends(&config, &names).map_err(|e| fail(2, e))?;
    let provider = backends::provider(&config.backends, &config.state_dir)
        .map_err(|e| fail(2, format!("{}: {e}", config.file.display())))?;
    Ok(Loaded {
        config,
        files,
        names,
        provider,
    })
}

/// Print the doctor's findings; true when nothing is wrong.
pub fn report(findings: &[backends::Finding]) -> bool {
    for f in findings {
        outln!(
            "    {}  {:<12} {:<9} {}",
            if f.ok { "ok " } else { "BAD" },
            f.agent,
            f.what,
            f.says
        );
    }
    findings.iter().all(|f| f.ok)
}

pub async fn run(args: ServeArgs, cache_dir_flag: Option<PathBuf>) -> ExitCode {
    let overrides = Overrides {
        listen: args.listen.clone(),
        state_dir: args.state_dir.clone(),
        dry_run: args.dry_run,
    };
    let Loaded {
        config,
        files,
        names,
        provider,
    } = match load(&args.config, &overrides) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let cache_dir = cache_dir_flag.unwrap_or_else(|| config.cache_dir.clone());
    if args.check {
        // Every bundle an agent names is verified against the keys it trusts, as a start
        // verifies it (not compiled; a registry's are checked when fetched), before `ok`.
        let mut runbooks = Vec::new();
        for file in &files {
            match verify_catalog(file, args.unsigned.allow_unsigned) {
                Ok(lines) => runbooks.extend(lines),
                Err(e) => return fail(2, e),
            }
        }
        outln!("ok  {}", config.file.display());
        outln!("    listen     {}", config.listen);
        outln!("    state      {}", config.state_dir.display());
        if let Some(StoreChoice::Postgres(target)) = &config.store {
            outln!("    store      {} (PostgreSQL)", target.url);
        }
        outln!("    audit      {}", config.audit.display());
        outln!("    cache      {}", cache_dir.display());
        for name in &names {
            let backend = match config.backends.get(name) {
                Some(BackendSpec {
                    source: BackendSource::Scenario(file),
                    dry_run,
                }) => format!(
                    "scenario {}{}",
                    file.display(),
                    if *dry_run { " (dry run)" } else { "" }
                ),
                Some(BackendSpec {
                    source:
                        BackendSource::Real {
                            postgres,
                            metrics,
                            kafka,
                            kubernetes,
                            kafka_workloads,
                        },
                    dry_run,
                }) => {
                    let mut parts = Vec::new();
                    if let Some(k) = kafka {
                        parts.push(format!("kafka {}", k.bootstrap_servers));
                    }
                    if let Some(w) = kafka_workloads {
                        parts.push(format!(
                            "kafka workloads: {} group(s){}",
                            w.groups.len(),
                            if w.brokers.is_some() {
                                ", broker pods"
                            } else {
                                ""
                            }
                        ));
                    }
                    if let Some(k) = kubernetes {
                        parts.push(match (&k.kubeconfig, &k.context) {
                            (Some(file), Some(ctx)) => {
                                format!("kubernetes {} ({ctx})", file.display())
                            }
                            (Some(file), None) => format!("kubernetes {}", file.display()),
                            (None, _) => "kubernetes (in-cluster or $KUBECONFIG)".into(),
                        });
                    }
                    if let Some(pg) = postgres {
                        parts.push(format!("postgres {}", pg.url));
                    }
                    if let Some(m) = metrics {
                        parts.push(format!("metrics {}", m.url));
                    }
                    format!(
                        "{}{}",
                        parts.join(", "),
                        if *dry_run { " (dry run)" } else { "" }
                    )
                }
                None => "none: every capability call fails closed".into(),
            };
            outln!("    agent      {name:<12} {backend}");
        }
        outln!(
            "    approvers  {}",
            config
                .approvers
                .0
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        outln!(
            "    slack      {}",
            if config.slack.is_some() {
                "interactions on"
            } else {
                "off"
            }
        );
        outln!("    runbooks");
        for line in runbooks {
            outln!("      {line}");
        }
        outln!("    backends");
        // Reported, not fatal: the service starts with a system down and fails its calls closed.
        let mut findings = backends::doctor(&provider, &names).await;
        findings.extend(backends::store_finding(config.store.as_ref()).await);
        report(&findings);
        return ExitCode::SUCCESS;
    }

    args.unsigned.warn();
    let bundle_cache = cache_dir.join("bundles");
    let sandbox = match sandbox(Some(cache_dir)) {
        Ok(s) => s,
        Err(code) => return code,
    };
    // A shared state database is held by one host; another stands by in the server's lock
    // queue, for as long as it takes, and holds the state the moment the holder's session (its
    // lease) ends.
    // Meanwhile it takes alerts into the database's inbox, for whichever host holds the state.
    let (wait, shared) = match &config.store {
        Some(StoreChoice::Postgres(target)) => {
            outln!(
                "themis serve: taking the state database {} (standing by while another host holds it)",
                target.url
            );
            let inbox =
                match themis_agent::store::pg_inbox::PgInbox::connect(target, &config.state_dir) {
                    Ok(i) => Arc::new(i),
                    Err(e) => return fail(2, e),
                };
            let listener = match listen(&config).await {
                Ok(l) => l,
                Err(code) => return code,
            };
            (STANDBY_WAIT, Some((inbox, listener)))
        }
        _ => (themis_agent::lock::DEFAULT_WAIT, None),
    };
    let (shared, standby) = match shared {
        Some((inbox, listener)) => match stand_by(&config, inbox.clone(), listener) {
            Ok((listener, stop, serving)) => (Some((inbox, listener)), Some((stop, serving))),
            Err(code) => return code,
        },
        None => (None, None),
    };
    let store = match themis_agent::store::open(
        &config.state_dir,
        config.store.as_ref(),
        StoreChoice::Sqlite,
        wait,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => return fail(2, e),
    };
    let mut channels = Channels::from_env();
    if let Some(url) = config.slack.as_ref().and_then(|s| s.webhook_url.as_ref()) {
        channels.slack_webhook = Some(url.expose().to_owned());
    }
    let mut secrets = config.secret_values();
    secrets.extend(channels.slack_webhook.clone());
    let redactor = Redactor::with_values(secrets);
    // A shared store shares the chain too: opened after the store, whose lock this host holds.
    let replica = match store.audit_replica() {
        Ok(r) => r,
        Err(e) => return fail(2, e),
    };
    let audit = match AuditLog::open_replicated(
        &config.audit,
        redactor.clone(),
        themis_agent::lock::DEFAULT_WAIT,
        replica,
    ) {
        Ok(a) => Arc::new(a),
        Err(e) => return fail(2, e),
    };
    audit.set_segment_bytes(config.audit_segment_bytes);
    let events = Arc::new(Events::new(redactor));
    let metrics = Arc::new(Metrics::new(&names));
    let watching = metrics.clone();
    if audit
        .observe_appends(Box::new(move |took, ok| watching.audit_append(took, ok)))
        .is_err()
    {
        return fail(2, "the audit log already has an observer");
    }
    if let Err(e) = enable_checkpoints(&audit, config.audit_signing_key.as_deref(), &metrics) {
        return fail(2, e);
    }
    // OpenTelemetry only when the standard variables name an endpoint. Built off the runtime's
    // threads: the OTLP exporter's HTTP client is a blocking one.
    let otel = match tokio::task::spawn_blocking(themis_otel::Exporter::from_env).await {
        Ok(Ok(exporter)) => exporter.map(Arc::new),
        Ok(Err(e)) => {
            return fail(
                2,
                format!("OpenTelemetry: {e} (check the OTEL_EXPORTER_OTLP_* variables)"),
            );
        }
        Err(e) => return fail(2, format!("OpenTelemetry: {e}")),
    };
    if let Some(exporter) = otel.clone()
        && audit
            .observe_records(Box::new(move |record| exporter.record(record)))
            .is_err()
    {
        return fail(2, "the audit log already has a record observer");
    }
    let audit_at_exit = audit.clone();
    let runtime = match Runtime::start(
        RuntimeParts {
            sandbox,
            agent_files: files,
            audit,
            store,
            channels,
            observer: Arc::new(Fanout(vec![events.clone(), metrics.clone()])),
            provider: Arc::new(provider),
        },
        RuntimeOptions {
            allow_unsigned: args.unsigned.allow_unsigned,
            queue_capacity: config.queue,
            verify_tick: Some(config.verify_every),
            bundle_cache: Some(bundle_cache),
            keep_closed: config.keep_closed,
            audit_budget: Some(themis_agent::runtime::AuditBudget::new(
                config.audit_max_bytes,
            )),
            ..RuntimeOptions::default()
        },
    )
    .await
    {
        Ok(rt) => rt,
        Err(e) => return fail(2, e),
    };
    if let Some(host) = runtime.store().holder() {
        metrics.leading(&names, &host);
    }
    // Proposals already waiting from before this start count as pending.
    match runtime.store().scan().await {
        Ok((incidents, _)) => metrics.pending_at_start(&incidents),
        Err(e) => tracing::warn!("pending approvals not counted at start: {e}"),
    }
    // Holding the state, recovered: the standby's service — which kept taking alerts while the
    // runtime started and recovered — ends (its requests in flight finish), and the whole
    // service takes the same socket.
    if let Some((stop, serving)) = standby {
        let _ = stop.send(());
        let _ = serving.await;
    }
    let (inbox, listener) = match shared {
        Some((inbox, listener)) => (Some(inbox), listener),
        None => match listen(&config).await {
            Ok(l) => (None, l),
            Err(code) => {
                runtime.shutdown().await;
                return code;
            }
        },
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.listen.to_string());
    // Where the hosts standing by pass answers and reads on to (a shared state database).
    if inbox.is_some() {
        // By default the address listened on; on every address, this machine's name.
        let advertise = config.advertise.clone().or_else(|| {
            let a = listener.local_addr().ok()?;
            if !a.ip().is_unspecified() {
                return Some(format!("http://{a}"));
            }
            let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
            let name = name.trim();
            (!name.is_empty()).then(|| format!("http://{name}:{}", a.port()))
        });
        match advertise {
            Some(url) => {
                tracing::info!(%url, "hosts standing by pass answers and reads on to this one at this address (`advertise:` to set another)");
                if listener.local_addr().is_ok_and(|a| a.ip().is_loopback())
                    && config.advertise.is_none()
                {
                    tracing::warn!(%url, "listening on a loopback address with no `advertise:`: only hosts on this machine can pass answers and reads on to this one");
                }
                if let Err(e) = runtime.store().advertise(&url).await {
                    tracing::warn!(error = %e, "where this host serves could not be told to the hosts standing by");
                }
            }
            None => tracing::warn!(
                "listening on every address with no `advertise:`: hosts standing by cannot pass answers and reads on to this one"
            ),
        }
    }
    // Scripts and tests read this line to learn the port when listening on :0.
    crate::output::best_effort(format_args!("themis serve: listening on http://{addr}\n"));
    tracing::info!(%addr, agents = names.len(), "listening");
    // A host whose state database another host took over stops (fenced: it could write
    // nothing more), the way a signal stops it, and says why. So does a holder of a shared
    // state whose audit failed closed: it could act on nothing again, and holding on would keep
    // the hosts standing by from taking over.
    let store = runtime.store().clone();
    let shared = matches!(store.audit_replica(), Ok(Some(_)));
    let audit = runtime.audit().clone();
    let lost = async move {
        loop {
            if let Some(why) = store.lost() {
                return why;
            }
            if shared && let Some(why) = audit.closed_by() {
                return format!(
                    "the audit failed closed ({why}): the state is let go for a host standing by"
                );
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    };
    let why_stopped = Arc::new(std::sync::Mutex::new(None));
    let stop = {
        let why_stopped = why_stopped.clone();
        async move {
            tokio::select! {
                () = themis_server::signal() => {}
                why = lost => {
                    tracing::error!(reason = %why, "stopping: this host can hold the state no longer");
                    *why_stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                }
            }
        }
    };
    match themis_server::serve(config, runtime, events, metrics, listener, inbox, stop).await {
        Ok(()) => {
            // The chain's head as it stands at the end, signed.
            let checkpoint = audit_at_exit.checkpoint_now();
            flush_otel(otel).await;
            if let Err(e) = checkpoint {
                return fail(1, format!("the last audit checkpoint failed: {e}"));
            }
            if let Some(why) = why_stopped.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return fail(1, format!("stopped: {why}"));
            }
            crate::output::best_effort(format_args!("themis serve: stopped\n"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            flush_otel(otel).await;
            fail(1, format!("the service failed: {e}"))
        }
    }
}

/// Export what the OpenTelemetry batches still hold, off the runtime's threads.
async fn flush_otel(otel: Option<Arc<themis_otel::Exporter>>) {
    if let Some(exporter) = otel {
        let _ = tokio::task::spawn_blocking(move || exporter.shutdown()).await;
    }
}

/// The service's socket, bound.
async fn listen(config: &ServeConfig) -> Result<tokio::net::TcpListener, ExitCode> {
    tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            fail(
                2,
                format!("cannot listen on {}: {e} (--listen ADDR)", config.listen),
            )
        })
}

/// Serve the standby's API (alerts into the shared inbox) on a second handle of `listener`'s
/// socket until told to stop: (the socket for the whole service, the stop, the serving task).
type Standing = (
    tokio::net::TcpListener,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

fn stand_by(
    config: &ServeConfig,
    inbox: Arc<themis_agent::store::pg_inbox::PgInbox>,
    listener: tokio::net::TcpListener,
) -> Result<Standing, ExitCode> {
    // Two handles of one socket: the standby's is dropped when it ends, while the other stays
    // open for the whole service (connections queue in the kernel meanwhile).
    let (listener, second) = listener
        .into_std()
        .and_then(|std| {
            let second = std.try_clone()?;
            Ok((
                tokio::net::TcpListener::from_std(std)?,
                tokio::net::TcpListener::from_std(second)?,
            ))
        })
        .map_err(|e| fail(2, format!("cannot serve while standing by: {e}")))?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.listen.to_string());
    crate::output::best_effort(format_args!("themis serve: standing by on http://{addr}\n"));
    let state = Arc::new(themis_server::standby::Standby {
        config: Arc::new(config.clone()),
        inbox,
        redactor: Redactor::with_values(config.secret_values()),
        http: themis_server::standby::Standby::client()
            .map_err(|e| fail(2, format!("cannot serve while standing by: {e}")))?,
        holder: Default::default(),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(themis_server::app::serve_http(
        second,
        themis_server::standby::router(state),
        async move {
            let _ = stopped.await;
        },
        themis_server::app::DRAIN,
        themis_server::app::HEADER_READ_TIMEOUT,
    ));
    Ok((listener, stop, serving))
}

/// How long a host stands by for a shared state database another holds: in effect for ever
/// (the server's longest lock wait); after it the host stops and its supervisor starts it again.
const STANDBY_WAIT: std::time::Duration = std::time::Duration::from_secs(24 * 24 * 3600);

/// Sign the audit chain's head every 1000 records or minute with the host's key (created on
/// first use), or say loudly — and on the record — that nothing does.
fn enable_checkpoints(
    audit: &AuditLog,
    key: Option<&std::path::Path>,
    metrics: &Arc<Metrics>,
) -> Result<(), String> {
    use themis_agent::audit::checkpoint::{self, Checkpointer};
    let Some(path) = key else {
        tracing::warn!(
            "no audit_signing_key: the audit chain is not checkpointed, so a cut tail or a recomputed chain cannot be shown"
        );
        audit
            .append("host", None, "audit-checkpoints-off", serde_json::json!({ "why": "no audit_signing_key is configured: set one outside the audit's folder" }))
            .map_err(|e| e.to_string())?;
        return Ok(());
    };
    let key = checkpoint::load_or_create_key(path)?;
    checkpoint::reaches_head(audit, &key, &path.with_extension("head.json"))?;
    audit
        .append("host", None, "audit-checkpoints-on", serde_json::json!({ "key_id": key.id.to_string(), "every_records": checkpoint::DEFAULT_EVERY_RECORDS, "every_secs": checkpoint::DEFAULT_EVERY.as_secs() }))
        .map_err(|e| e.to_string())?;
    let checkpointer = Checkpointer::new(
        key,
        path.with_extension("head.json"),
        checkpoint::DEFAULT_EVERY_RECORDS,
        checkpoint::DEFAULT_EVERY,
    );
    if !audit.enable_checkpoints(checkpointer) {
        return Err("the audit log is already checkpointed".into());
    }
    let watching = metrics.clone();
    if audit
        .observe_checkpoints(Box::new(move |cp| watching.audit_checkpoint(cp.seq)))
        .is_err()
    {
        return Err("the audit log's checkpoints already have an observer".into());
    }
    Ok(())
}

/// One agent file's local bundles, verified as a start verifies them: a line per bundle, or
/// the refusal a start would stop on.
fn verify_catalog(file: &std::path::Path, allow_unsigned: bool) -> Result<Vec<String>, String> {
    let mut def = themis_agent::AgentDef::load(file).map_err(|e| e.to_string())?;
    def.trust.allow_unsigned = allow_unsigned;
    let mut lines = Vec::new();
    let mut verified = Vec::new();
    for dir in def.runbooks.iter().chain(&def.probes) {
        let (runbook, signer) = themis_sandbox::loaded::LoadedRunbook::verify(dir, &def.trust)
            .map_err(|e| format!("agent `{}`: {e}", def.name))?;
        let signed = match signer {
            themis_core::trust::Signer::Key(id) => format!("signed by key {id}"),
            themis_core::trust::Signer::Unsigned => "unsigned, allowed by --allow-unsigned".into(),
        };
        lines.push(format!(
            "{:<12} {} {} ({signed})",
            def.name, runbook.id, runbook.version
        ));
        verified.push(runbook);
    }
    // What a start refuses of the catalog as a whole (domains, probes read-only, rules naming
    // its runbooks, one id once, …), asked the same way.
    let (runbooks, probes) = verified.split_at(def.runbooks.len());
    themis_agent::check_catalog(
        &def,
        &runbooks.iter().collect::<Vec<_>>(),
        &probes.iter().collect::<Vec<_>>(),
    )
    .map_err(|e| format!("agent `{}`: {e}", def.name))?;
    if !def.oci_runbooks.is_empty() {
        lines.push(format!(
            "{:<12} {} from a registry: verified when the start fetches them",
            def.name,
            def.oci_runbooks.len()
        ));
    }
    Ok(lines)
}
