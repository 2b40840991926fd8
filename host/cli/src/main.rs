//! The `themis` command: argument parsing and dispatch. No logic of its own: building a host
//! from the command line is in `host`, human answers in `answer`, output formatting in
//! `render`, the demo in `demo`, keys and signatures in `signing`.

/// `print!` that ends the command with a message, not a panic, when stdout cannot be written.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write(format_args!($($arg)*))
    };
}

/// `outln!` that ends the command with a message, not a panic, when stdout cannot be written.
macro_rules! outln {
    () => {
        $crate::output::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// jemalloc, not glibc's malloc: the service allocates per alert and per request on many
/// threads at once, where glibc's arenas cost a quarter of the intake's CPU time.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod answer;
mod authoring;
mod backends;
mod demo;
mod guard;
mod host;
mod output;
mod remote;
mod render;
mod serve;
mod signing;
mod state;

use clap::{Args, Parser, Subcommand, ValueEnum};
use host::{agent_files, fail, sandbox};
use std::path::PathBuf;
use std::process::ExitCode;
use themis_sandbox::loaded::LoadedRunbook;
use themis_testkit::scenario;

/// The compiled-component cache of every command but `themis serve`.
const DEFAULT_CACHE_DIR: &str = ".themis/cache";

#[derive(Debug, Parser)]
#[command(
    name = "themis",
    version,
    about = "Agentic SRE runbook engine: sandboxed WebAssembly runbook steps, audited",
    long_about = "Themis runs runbooks whose steps are sandboxed WebAssembly components, each with a \
precondition, an action, a postcondition and a rollback, calling only the capabilities its \
manifest grants. One agent per domain triages alerts, chooses a runbook and runs it, or asks a \
human.\n\nStart with `themis demo`, `themis runbook validate runbooks/kafka/check-broker-health` \
and `themis run --scenario tests/scenarios/kafka-gc-pause.yaml`."
)]
pub struct Cli {
    /// Where compiled components are cached between starts (created if missing; entries this
    /// host did not write are never loaded) [default: .themis/cache; for `themis serve`, its
    /// file's `cache_dir:`, else <state_dir>/cache].
    #[arg(long, global = true, value_name = "DIR", env = "THEMIS_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// The development escape hatch, shared by every command that loads runbooks to run them.
#[derive(Debug, Args, Clone, Copy)]
pub struct Unsigned {
    /// DEVELOPMENT ONLY: load runbook bundles that carry no signature. Warns on every start and
    /// marks every audit record of the run. A present signature is still checked.
    #[arg(long)]
    pub allow_unsigned: bool,
}

impl Unsigned {
    /// The loud warning, on stderr, every time the flag is used.
    pub fn warn(self) {
        if self.allow_unsigned {
            eprintln!(
                "WARNING: --allow-unsigned: runbook bundles without a signature will be loaded and run.\n\
                 WARNING: this is for development only; every audit record of this run is marked `mode: allow-unsigned`."
            );
        }
    }
}

#[derive(Debug, Args, Clone)]
pub struct Place {
    /// Where agent state and incidents are kept. One process acts on a state directory at a
    /// time; another waits (see --lock-wait), then says who holds it.
    #[arg(long, value_name = "DIR", default_value = ".themis")]
    state_dir: PathBuf,
    /// The folder of agent definitions (*.yaml).
    #[arg(long, value_name = "DIR", default_value = "agents")]
    agents: PathBuf,
    /// The audit log [default: <state-dir>/audit.jsonl].
    #[arg(long, value_name = "FILE")]
    audit: Option<PathBuf>,
    /// How long to wait for another themis process that holds the state directory.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    lock_wait: humantime::Duration,
    #[command(flatten)]
    unsigned: Unsigned,
}

impl Place {
    fn audit_path(&self) -> PathBuf {
        self.audit
            .clone()
            .unwrap_or_else(|| self.state_dir.join("audit.jsonl"))
    }
}

/// Who answers: the OS user running the command, or a configured approver with their token.
#[derive(Debug, Args, Clone)]
pub struct Answerer {
    /// Answer as this configured approver; needs their token in THEMIS_TOKEN. Without it, the
    /// answer is the OS user's running this command.
    #[arg(long = "as", value_name = "NAME")]
    who: Option<String>,
    /// The host configuration with the approvers (name → token hash) that --as checks against.
    #[arg(long, value_name = "FILE", env = "THEMIS_CONFIG")]
    config: Option<PathBuf>,
    /// Answer through a running `themis serve` at this URL (e.g. http://127.0.0.1:9464): you
    /// are the approver whose token you send (THEMIS_TOKEN or --token-file).
    #[arg(long, value_name = "URL", env = "THEMIS_SERVER")]
    server: Option<String>,
    /// With --server: a file whose first line is your approver token.
    #[arg(long, value_name = "FILE", requires = "server")]
    token_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with runbook bundles (a folder with manifest.yaml and components/).
    #[command(subcommand)]
    Runbook(RunbookCommand),
    /// Run a scenario: one runbook, or an agent from alert to the end, against mocked capabilities.
    ///
    /// Nothing real is touched: every capability is answered by the scenario's `mocks:`. With
    /// `dry_run: true` in the scenario, mutations are recorded as "would do" and not even sent to
    /// the mocks.
    ///
    /// Exit status: 0 when the scenario's expectations hold (or, if it has none, when the runbook
    /// succeeded), 1 otherwise, 2 when the scenario or runbook cannot be loaded.
    Run {
        /// The scenario file (YAML).
        #[arg(long, value_name = "FILE")]
        scenario: PathBuf,
        /// Print one JSON object instead of the human-readable table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        unsigned: Unsigned,
    },
    /// Score triage on every agent scenario of one or more folders, in dry run against its
    /// mocks: runbook choice accuracy, escalation accuracy, safety violations (must be 0),
    /// decision latency p50/p99, LLM tokens, per domain, and the calibration of the stated
    /// confidence (with its expected calibration error). Nobody answers escalations: the
    /// decision is what is measured.
    ///
    /// Exit status: 0 when there is no safety violation, 1 when there is one, else 2 when a
    /// folder cannot be read or a scenario cannot be loaded or run (every other file is still
    /// scored and reported).
    Eval {
        /// The folders of scenario files (runbook scenarios in them are skipped).
        #[arg(required = true, value_name = "DIR")]
        dirs: Vec<PathBuf>,
        /// Who chooses: the agents' rules, or an LLM (the agents' `llm:` endpoint, or the one
        /// given with --llm-base-url and --llm-model).
        #[arg(long, value_enum, default_value = "rules")]
        selector: EvalSelector,
        /// An OpenAI-compatible endpoint for --selector llm, e.g. http://127.0.0.1:8080/v1.
        #[arg(long, value_name = "URL", env = "THEMIS_LLM_BASE_URL")]
        llm_base_url: Option<String>,
        /// The model name to ask for.
        #[arg(long, value_name = "NAME", env = "THEMIS_LLM_MODEL")]
        llm_model: Option<String>,
        /// The environment variable holding the API key (local servers need none).
        #[arg(long, value_name = "VAR")]
        llm_api_key_env: Option<String>,
        /// Per-request timeout.
        #[arg(long, value_name = "DURATION", default_value = "60s")]
        llm_timeout: humantime::Duration,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Also write JUnit XML to FILE (one suite per agent, one case per scenario), for CI.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
    },
    /// Make an Ed25519 key pair for signing runbook bundles: <NAME>.key (private, mode 0600)
    /// and <NAME>.pub (give it to the agents that should trust you).
    Keygen {
        /// Path and name stem of the pair, e.g. keys/kafka-team.
        #[arg(long, value_name = "NAME")]
        out: PathBuf,
    },
    /// The playbook's use case end to end on mocked capabilities: a consumer-lag alert, triage,
    /// broker diagnosis, a 2.5 s GC pause, a proposed broker change that needs a human, the
    /// approval, the change, idle again.
    Demo(demo::DemoArgs),
    /// Hand a scenario's alert to the agents, its mocks standing in for the systems. State and
    /// audit persist in --state-dir, so `themis approve|reject|adjust` can answer later.
    ///
    /// With --alertmanager, replay a real notification instead: every alert of an Alertmanager
    /// webhook payload (version 4, as Alertmanager POSTs it or as `amtool`/a receiver log shows
    /// it) goes to its agent exactly as `themis serve` would take it — firing ones are triaged,
    /// resolved ones recorded on their incident — against the scenario's mocks.
    Alert {
        /// A scenario file with `alert:` and `mocks:` (its `expect:` is ignored).
        #[arg(long, value_name = "FILE")]
        scenario: PathBuf,
        /// An Alertmanager webhook payload (JSON) to replay instead of the scenario's alert.
        #[arg(long, value_name = "PAYLOAD.json")]
        alertmanager: Option<PathBuf>,
        #[command(flatten)]
        place: Place,
    },
    /// Run the sidecar service: Alertmanager's webhook and Themis' alert JSON in, approvals
    /// over HTTP and Slack, a JSON read API and an event stream; configured by one themis.yaml.
    ///
    /// Stops on SIGTERM or SIGINT: new alerts get 503, requests in flight have 10 s to finish,
    /// every agent finishes its current command (the alerts still queued wait on disk for the
    /// next start), then it exits 0. The compiled-component cache is --cache-dir (or
    /// THEMIS_CACHE_DIR), else the file's `cache_dir:`, else <state_dir>/cache.
    Serve(serve::ServeArgs),
    /// Connect to every agent's real backends as themis.yaml configures them and say, per
    /// agent, what is reachable and which privileges are missing (PostgreSQL: pg_monitor and
    /// pg_signal_backend, nothing else). Exit 0 when all is well, 1 naming each problem.
    Doctor {
        /// The service configuration (see examples/themis.yaml).
        #[arg(long, value_name = "FILE", env = "THEMIS_CONFIG")]
        config: PathBuf,
    },
    /// Each agent's current state and its pending approvals.
    Agents {
        #[command(flatten)]
        place: Place,
        #[arg(long)]
        json: bool,
        /// Ask a running `themis serve` at this URL instead of reading the state directory
        /// (token in THEMIS_TOKEN or --token-file).
        #[arg(long, value_name = "URL", env = "THEMIS_SERVER")]
        server: Option<String>,
        /// With --server: a file whose first line is your token.
        #[arg(long, value_name = "FILE", requires = "server")]
        token_file: Option<PathBuf>,
        /// With --server: after the states, print every transition, phase and escalation as it
        /// happens, until the service stops or Ctrl-C.
        #[arg(long, requires = "server")]
        watch: bool,
    },
    /// Approve a pending plan; its runbook then runs, preconditions re-checked first.
    ///
    /// The approval covers exactly the plan you were shown: pass its digest (`--digest`, as the
    /// escalation prints it), or run it on a terminal to see the plan and confirm. The host
    /// compares the digest with the proposal as the audit recorded it and refuses a mismatch.
    Approve {
        /// The approval id (apr-…) from the escalation.
        id: String,
        /// The plan digest you approve (sha256:…, from the escalation).
        #[arg(long, value_name = "DIGEST")]
        digest: Option<String>,
        #[command(flatten)]
        answerer: Answerer,
        #[command(flatten)]
        place: Place,
    },
    /// Reject a pending plan: nothing runs.
    Reject {
        id: String,
        #[arg(long, default_value = "rejected by a human")]
        reason: String,
        #[command(flatten)]
        answerer: Answerer,
        #[command(flatten)]
        place: Place,
    },
    /// Replace a pending plan (or give an escalated incident one): another runbook of the
    /// catalog and/or other parameters. The adjusted plan goes through the same policy.
    Adjust {
        /// The approval id (apr-…) or incident id (inc-…).
        id: String,
        #[arg(long)]
        runbook: String,
        /// A parameter, `name=value`; repeat for more.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        #[command(flatten)]
        answerer: Answerer,
        #[command(flatten)]
        place: Place,
    },
    /// Read and check the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The host's state as a whole: export it.
    #[command(subcommand)]
    State(StateCommand),
    /// The guard rails against remediation loops: which targets are busy, which circuit
    /// breakers are open, what ran recently; and an approver clearing a breaker.
    #[command(subcommand)]
    Guard(GuardCommand),
    /// Print the agent state machine's transition table (or Mermaid / DOT).
    Fsm {
        #[arg(long, value_enum, default_value = "table")]
        format: FsmFormat,
    },
}

#[derive(Debug, Subcommand)]
enum GuardCommand {
    /// Busy targets, open breakers (with the command that clears each), recent runs. Reads the
    /// state directory without its lock: works next to a running host.
    List {
        #[command(flatten)]
        place: Place,
        #[arg(long)]
        json: bool,
    },
    /// Clear a target's circuit breakers and cooldown so automatic runs may resume. Needs an
    /// approver of an agent of the target's domain; audited.
    Clear {
        /// The target as `themis guard list` shows it, e.g. kubernetes:name=checkout,namespace=shop.
        target: String,
        /// Only this runbook's breaker on the target [default: every runbook's].
        #[arg(long, value_name = "ID")]
        runbook: Option<String>,
        #[command(flatten)]
        answerer: Answerer,
        #[command(flatten)]
        place: Place,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum EvalSelector {
    Rules,
    Llm,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FsmFormat {
    Table,
    Mermaid,
    Dot,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum NewDomain {
    Kafka,
    #[value(alias = "kubernetes")]
    K8s,
    Postgres,
}

#[derive(Debug, Subcommand)]
enum RunbookCommand {
    /// Start a runbook: manifest.yaml, one step crate on the SDK with all four phases, a native
    /// unit test against the SDK's mocks and one scenario. It builds, tests and passes as made:
    /// `themis runbook build DIR && themis runbook test DIR --allow-unsigned && cargo test
    /// --manifest-path DIR/Cargo.toml`.
    New {
        /// The new runbook's folder (must not exist, or be empty).
        dir: PathBuf,
        /// The domain its steps act on: which capabilities they may be granted.
        #[arg(long, value_enum)]
        domain: NewDomain,
        /// The runbook id [default: the folder's name].
        #[arg(long)]
        id: Option<String>,
        /// The runbook SDK's folder [default: this checkout's runbook-sdk/].
        #[arg(long, value_name = "DIR", env = "THEMIS_SDK")]
        sdk: Option<PathBuf>,
    },
    /// Build every step crate under DIR/steps/ for wasm32-wasip2, put each component at
    /// components/<step>.wasm and validate the bundle. Sign it afterwards (`runbook sign`).
    Build {
        #[arg(required = true, value_name = "DIR")]
        dirs: Vec<PathBuf>,
        /// Place the components without validating the bundles (for deliberately broken test
        /// fixtures).
        #[arg(long)]
        no_validate: bool,
    },
    /// Run each runbook's scenarios (DIR/scenarios/*.yaml) in the real sandbox against their
    /// mocks: a line per scenario; exit 1 when one fails, 2 when none can be found.
    Test {
        #[arg(required = true, value_name = "DIR")]
        dirs: Vec<PathBuf>,
        /// Also write JUnit XML to FILE, for CI.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        #[command(flatten)]
        unsigned: Unsigned,
    },
    /// Push a signed bundle to an OCI registry as one artifact (manifest, components and
    /// signature as layers). The repository must end in the runbook's id, e.g.
    /// oci://registry.example.com/sre/restart-consumer-group:1.3.0. Prints the digest to pin.
    /// Credentials: THEMIS_REGISTRY_USERNAME and THEMIS_REGISTRY_PASSWORD(_FILE), else the
    /// Docker config (`docker login`); plain HTTP only for loopback registries.
    Push {
        dir: PathBuf,
        /// oci://HOST/REPOSITORY:TAG
        reference: String,
        #[arg(long)]
        json: bool,
    },
    /// Pull a bundle (by tag, or pinned with @sha256:…) into a new folder, verified exactly as
    /// the host verifies a local one — every blob's digest, the signature by a trusted key,
    /// minimum versions — before the folder appears. A refused pull leaves nothing behind.
    Pull {
        /// oci://HOST/REPOSITORY:TAG or oci://HOST/REPOSITORY@sha256:DIGEST
        reference: String,
        /// The folder to create.
        dir: PathBuf,
        /// A trusted .pub file, or a folder of them; repeat for more.
        #[arg(long, value_name = "FILE_OR_DIR")]
        trust: Vec<PathBuf>,
        /// Verify against this agent's trust policy (its keys and minimum versions).
        #[arg(long, value_name = "FILE")]
        agent: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Load runbooks, check every component's imports against the domain's world, validate the
    /// graph, parameters and grants. Exit 0 when all are valid.
    Validate {
        /// Runbook folders (each holds manifest.yaml).
        #[arg(required = true, value_name = "DIR")]
        dirs: Vec<PathBuf>,
    },
    /// Sign runbook bundles: write runbook.sig next to each manifest, covering the manifest
    /// bytes, every component's sha256, the runbook id and version and the signer's key id.
    Sign {
        #[arg(required = true, value_name = "DIR")]
        dirs: Vec<PathBuf>,
        /// The private key (<name>.key from `themis keygen`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Check bundles' signatures against trusted keys, without compiling anything. Exit 0 when
    /// every bundle is intact and signed by a trusted key; 1 with the reason otherwise.
    Verify {
        #[arg(required = true, value_name = "DIR")]
        dirs: Vec<PathBuf>,
        /// A trusted .pub file, or a folder of them; repeat for more.
        #[arg(long, required = true, value_name = "FILE_OR_DIR")]
        trust: Vec<PathBuf>,
    },
    /// The catalog each agent loads: id, version, digest and signer of every runbook, verified
    /// against the agent's trust policy. Exit 1 if any bundle is refused.
    List {
        /// The folder of agent definitions.
        #[arg(long, value_name = "DIR", default_value = "agents")]
        agents: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        unsigned: Unsigned,
    },
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Write the host's journal — every audit record, byte for byte — as one JSONL file that
    /// `themis audit verify` accepts. Checked first: the chain holds, and every incident in the
    /// store (JSON, SQLite or PostgreSQL) has records in it; otherwise nothing is written, exit
    /// 1. Reads without the state directory's lock: works next to a running host.
    Export {
        /// The host's state directory: its store (whichever kind) is found there.
        #[arg(long, value_name = "DIR", default_value = ".themis")]
        state_dir: PathBuf,
        /// The audit log [default: <state-dir>/audit.jsonl].
        #[arg(long, value_name = "FILE")]
        audit: Option<PathBuf>,
        /// Write here (0600, replaced whole) [default: standard output].
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// The host's audit public key: also check every signed checkpoint.
        #[arg(long, value_name = "PUB")]
        key: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain, byte for byte. Exit 0 when intact; otherwise name the first bad
    /// record, exit 1. With the host's audit key, also every signed checkpoint (a recomputed
    /// chain fails them); with the head file the host keeps beside that key, that the file still
    /// reaches its newest checkpoint (a cut tail fails). The sealed segments beside the file
    /// (`<name>.segments/`) are checked first, as one chain; a chain that starts after record 1
    /// holds only where a record on it says retention removed what came before.
    Verify {
        /// The audit log (JSON lines): the active file, e.g. `.themis/audit.jsonl`.
        file: PathBuf,
        /// The host's audit public key (`<audit_signing_key>.pub`); repeatable.
        #[arg(long, value_name = "PUB")]
        key: Vec<PathBuf>,
        /// The newest checkpoint the host mirrored beside its key (`<key>.head.json`).
        #[arg(long, value_name = "FILE")]
        head: Option<PathBuf>,
    },
    /// An incident's timeline, as a human reads it.
    Show {
        /// The incident id (inc-…).
        incident: String,
        /// The audit log.
        #[arg(long, value_name = "FILE", default_value = ".themis/audit.jsonl")]
        audit: PathBuf,
    },
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so a closed pipe (`themis … | head`) becomes a write error; a
    // command line tool should simply end, as the shell's tools do.
    sigpipe(SigHandler::SigDfl);
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => e.exit(),
        // --help and --version: clap ignores a failed write, and says nothing of it.
        Err(e) => {
            let text = e.render();
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                out!("{}", text.ansi());
            } else {
                out!("{text}");
            }
            return ExitCode::SUCCESS;
        }
    };
    if let Command::Serve(args) = &cli.command
        && args.serves()
    {
        // The service outlives whoever reads its output and logs: a log reader going away
        // must not kill it (its writes fail instead, and are let go).
        sigpipe(SigHandler::SigIgn);
    }
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(dispatch(cli))
}

use nix::sys::signal::SigHandler;

fn sigpipe(handler: SigHandler) {
    // SAFETY: SIG_DFL and SIG_IGN run no code of ours in the handler, and this runs before any
    // other thread exists.
    let _ = unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, handler) };
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("THEMIS_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn dispatch(cli: Cli) -> ExitCode {
    // `themis serve` has a default of its own (its file's `cache_dir:`): only a flag given beats it.
    let cache_dir_flag = cli.cache_dir.clone();
    let cache_dir = cli
        .cache_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR));
    let cache = Some(cache_dir.clone());
    let sandbox = || sandbox(cache.clone());
    match cli.command {
        Command::Runbook(RunbookCommand::Validate { dirs }) => validate(&dirs, |_| {}),
        Command::Run {
            scenario,
            json,
            unsigned,
        } => {
            unsigned.warn();
            let sandbox = match sandbox() {
                Ok(s) => s,
                Err(code) => return code,
            };
            match scenario::run(&sandbox, &scenario, unsigned.allow_unsigned).await {
                Ok(run) => {
                    if json {
                        match serde_json::to_string_pretty(&run) {
                            Ok(text) => outln!("{text}"),
                            Err(e) => return fail(2, format!("cannot render JSON: {e}")),
                        }
                    } else {
                        out!("{}", render::scenario_run(&run));
                    }
                    let ok = if run.expectations_checked > 0 {
                        run.passed()
                    } else {
                        run.report.as_ref().is_some_and(|r| {
                            r.outcome == themis_sandbox::executor::Outcome::Succeeded
                        })
                    };
                    if ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => fail(2, e),
            }
        }
        Command::Demo(args) => demo::run(args, &cache_dir).await,
        Command::Keygen { out } => signing::keygen(&out),
        Command::Eval {
            dirs,
            selector,
            llm_base_url,
            llm_model,
            llm_api_key_env,
            llm_timeout,
            json,
            junit,
        } => {
            let choice = match (selector, llm_base_url, llm_model) {
                (EvalSelector::Rules, _, _) => themis_agent::SelectorChoice::Rules,
                (EvalSelector::Llm, Some(url), Some(model)) => {
                    match themis_agent::triage::llm::config::LlmConfig::new(&url, &model) {
                        Ok(mut config) => {
                            config.api_key_env = llm_api_key_env;
                            config.timeout = llm_timeout.into();
                            themis_agent::SelectorChoice::Llm(Some(config))
                        }
                        Err((field, problem)) => return fail(2, format!("{field}: {problem}")),
                    }
                }
                (EvalSelector::Llm, None, None) => themis_agent::SelectorChoice::Llm(None),
                (EvalSelector::Llm, _, _) => {
                    return fail(
                        2,
                        "give both --llm-base-url and --llm-model (or neither, to use each agent's `llm:`)",
                    );
                }
            };
            let sandbox = match sandbox() {
                Ok(s) => s,
                Err(code) => return code,
            };
            match themis_testkit::eval::run(&sandbox, &dirs, &choice).await {
                Ok(report) => {
                    if json {
                        match serde_json::to_string_pretty(&report) {
                            Ok(text) => outln!("{text}"),
                            Err(e) => return fail(2, format!("cannot render JSON: {e}")),
                        }
                    } else {
                        out!("{}", themis_testkit::eval::render::table(&report));
                    }
                    if let Some(path) = junit {
                        let written =
                            themis_testkit::eval::render::junit(&report).and_then(|xml| {
                                std::fs::write(&path, xml)
                                    .map_err(|e| format!("{}: cannot write: {e}", path.display()))
                            });
                        if let Err(e) = written {
                            return fail(2, e);
                        }
                    }
                    if !report.failed.is_empty() {
                        let code = fail(
                            2,
                            format!(
                                "{} scenario file(s) could not be loaded or run: {}",
                                report.failed.len(),
                                report
                                    .failed
                                    .iter()
                                    .map(|f| f.file.display().to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        );
                        // A safety violation outranks files that could not run.
                        if report.safety_violations == 0 {
                            code
                        } else {
                            ExitCode::from(1)
                        }
                    } else if report.safety_violations == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => fail(2, e),
            }
        }
        Command::Runbook(RunbookCommand::New {
            dir,
            domain,
            id,
            sdk,
        }) => authoring_new(&dir, domain, id.as_deref(), sdk.as_deref()),
        Command::Runbook(RunbookCommand::Build { dirs, no_validate }) => {
            authoring_build(&dirs, no_validate)
        }
        Command::Runbook(RunbookCommand::Test {
            dirs,
            junit,
            unsigned,
        }) => {
            unsigned.warn();
            let sandbox = match sandbox() {
                Ok(s) => s,
                Err(code) => return code,
            };
            authoring_test(&sandbox, &dirs, junit.as_deref(), unsigned.allow_unsigned).await
        }
        Command::Runbook(RunbookCommand::Push {
            dir,
            reference,
            json,
        }) => authoring::oci::push(&dir, &reference, json).await,
        Command::Runbook(RunbookCommand::Pull {
            reference,
            dir,
            trust,
            agent,
            json,
        }) => match authoring::oci::pull_policy(&trust, agent.as_deref()) {
            Ok(policy) => authoring::oci::pull(&reference, &dir, &policy, json).await,
            Err(e) => fail(2, e),
        },
        Command::Runbook(RunbookCommand::Sign { dirs, key }) => signing::sign(&dirs, &key),
        Command::Runbook(RunbookCommand::Verify { dirs, trust }) => signing::verify(&dirs, &trust),
        Command::Runbook(RunbookCommand::List {
            agents,
            json,
            unsigned,
        }) => {
            unsigned.warn();
            let sandbox = match sandbox() {
                Ok(s) => s,
                Err(code) => return code,
            };
            signing::list(
                &sandbox,
                &agents,
                &cache_dir.join("bundles"),
                json,
                unsigned.allow_unsigned,
            )
        }
        Command::Agents {
            place,
            json,
            server,
            token_file,
            watch,
        } => match server {
            Some(server) => remote::agents(&server, token_file.as_deref(), json, watch).await,
            None => host::agents(&place, json).await,
        },
        Command::Alert {
            scenario,
            alertmanager,
            place,
        } => match alertmanager {
            None => host::alert(&scenario, &place, &cache_dir).await,
            Some(payload) => host::replay(&scenario, &payload, &place, &cache_dir).await,
        },
        Command::Approve {
            id,
            digest,
            answerer,
            place,
        } => match &answerer.server {
            Some(server) => {
                remote::approve(server, answerer.token_file.as_deref(), &id, digest).await
            }
            None => answer::approve(&id, digest, &answerer, &place, &cache_dir).await,
        },
        Command::Reject {
            id,
            reason,
            answerer,
            place,
        } => match &answerer.server {
            Some(server) => {
                remote::reject(server, answerer.token_file.as_deref(), &id, &reason).await
            }
            None => answer::reject(&id, &reason, &answerer, &place, &cache_dir).await,
        },
        Command::Adjust {
            id,
            runbook,
            params,
            answerer,
            place,
        } => match &answerer.server {
            Some(server) => match answer::params(&params) {
                Ok(map) => {
                    remote::adjust(server, answerer.token_file.as_deref(), &id, &runbook, &map)
                        .await
                }
                Err(code) => code,
            },
            None => answer::adjust(&id, &runbook, &params, &answerer, &place, &cache_dir).await,
        },
        Command::Serve(args) => serve::run(args, cache_dir_flag).await,
        Command::Doctor { config } => {
            let loaded = match serve::load(&config, &themis_server::Overrides::default()) {
                Ok(l) => l,
                Err(code) => return code,
            };
            outln!("themis doctor: {}", loaded.config.file.display());
            let mut findings = backends::doctor(&loaded.provider, &loaded.names).await;
            findings.extend(backends::store_finding(loaded.config.store.as_ref()).await);
            if serve::report(&findings) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Audit(AuditCommand::Verify { file, key, head }) => {
            let mut options = themis_agent::audit::verify::Options::default();
            for k in &key {
                match themis_core::trust::keys::PublicKey::read(k) {
                    Ok(k) => options.keys.push(k),
                    Err(e) => return fail(2, e),
                }
            }
            if let Some(h) = &head {
                match themis_agent::audit::checkpoint::Checkpoint::read(h) {
                    Ok(h) => options.head = Some(h),
                    Err(e) => return fail(2, e),
                }
            }
            match themis_agent::audit::verify::verify_with(&file, &options) {
                Ok(Ok(intact)) => {
                    if intact.first > 1 {
                        outln!(
                            "ok  {}: records {} to {}, chain intact, last hash {}",
                            file.display(),
                            intact.first,
                            intact.records,
                            intact.last_hash
                        );
                        outln!(
                            "    records before {} were removed by retention, as a record on the chain says",
                            intact.first
                        );
                    } else {
                        outln!(
                            "ok  {}: {} records, chain intact, last hash {}",
                            file.display(),
                            intact.records,
                            intact.last_hash
                        );
                    }
                    let checked = if intact.signatures_checked {
                        "signatures checked"
                    } else {
                        "signatures not checked: give --key"
                    };
                    match &intact.last_checkpoint {
                        Some(cp) => outln!(
                            "    {} checkpoint(s), {checked}; the last signs record {} at {}",
                            intact.checkpoints,
                            cp.seq,
                            cp.at
                        ),
                        None if intact.signatures_checked => outln!(
                            "    no checkpoints on the chain, though a key was given: a host with that key would have signed some, unless it was stopped early; a cut tail is ruled out only by --head"
                        ),
                        None => outln!("    no checkpoints (the host had no audit signing key)"),
                    }
                    if intact.head_checked {
                        outln!("    reaches the newest checkpoint the host kept beside its key");
                    } else {
                        outln!(
                            "    a cut tail is not ruled out: give --head <audit_signing_key>.head.json"
                        );
                    }
                    if let Some(bytes) = intact.unfinished {
                        outln!(
                            "    its last line is not whole ({bytes} bytes, no newline): an append under way, or one a crash cut short (never acknowledged), which the host's next start moves aside"
                        );
                    }
                    ExitCode::SUCCESS
                }
                Ok(Err(broken)) => fail(1, format!("{}: {broken}", file.display())),
                Err(e) => fail(2, format!("{}: cannot read: {e}", file.display())),
            }
        }
        Command::Audit(AuditCommand::Show { incident, audit }) => {
            match themis_agent::audit::read_all(&audit) {
                Ok((records, unreadable)) => {
                    let mine: Vec<_> = records
                        .iter()
                        .filter(|r| r.incident.as_deref() == Some(incident.as_str()))
                        .collect();
                    if mine.is_empty() {
                        return fail(
                            1,
                            format!("{}: no records for incident {incident}", audit.display()),
                        );
                    }
                    out!("{}", render::timeline(&mine));
                    if unreadable > 0 {
                        eprintln!(
                            "warning: {unreadable} unreadable line(s) skipped: run `themis audit verify {}`",
                            audit.display()
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(2, format!("{}: cannot read: {e}", audit.display())),
            }
        }
        Command::State(StateCommand::Export {
            state_dir,
            audit,
            out,
            key,
        }) => {
            let audit = audit.unwrap_or_else(|| state_dir.join("audit.jsonl"));
            state::export(&state_dir, &audit, out.as_deref(), &key).await
        }
        Command::Guard(GuardCommand::List { place, json }) => guard::list(&place, json).await,
        Command::Guard(GuardCommand::Clear {
            target,
            runbook,
            answerer,
            place,
        }) => guard::clear(&target, runbook.as_deref(), &answerer, &place, &cache_dir).await,
        Command::Fsm { format } => {
            out!(
                "{}",
                match format {
                    FsmFormat::Table => themis_core::fsm::table_text(),
                    FsmFormat::Mermaid => themis_core::fsm::mermaid(),
                    FsmFormat::Dot => themis_core::fsm::dot(),
                }
            );
            ExitCode::SUCCESS
        }
    }
}

fn authoring_new(
    dir: &std::path::Path,
    domain: NewDomain,
    id: Option<&str>,
    sdk: Option<&std::path::Path>,
) -> ExitCode {
    use themis_core::capability::Domain;
    let domain = match domain {
        NewDomain::Kafka => Domain::Kafka,
        NewDomain::K8s => Domain::Kubernetes,
        NewDomain::Postgres => Domain::Postgres,
    };
    let sdk = match authoring::new::find_sdk(sdk) {
        Ok(s) => s,
        Err(e) => return fail(2, e),
    };
    match authoring::new::create(dir, domain, id, &sdk) {
        Ok(created) => {
            outln!(
                "created  runbook {} in {}",
                created.id,
                created.dir.display()
            );
            for f in &created.files {
                outln!("         {}", f.display());
            }
            let d = created.dir.display();
            if !created.own_workspace {
                outln!(
                    "note     its steps are members of the enclosing Cargo workspace (`cargo test -p` runs their unit tests)"
                );
            }
            outln!("next     themis runbook build {d}");
            outln!("         themis runbook test {d} --allow-unsigned");
            if created.own_workspace {
                outln!("         cargo test --manifest-path {d}/Cargo.toml");
            }
            outln!("         themis runbook sign {d} --key TEAM.key");
            ExitCode::SUCCESS
        }
        Err(e) => fail(2, e),
    }
}

fn authoring_build(dirs: &[PathBuf], no_validate: bool) -> ExitCode {
    let built = match authoring::build::build(dirs, false) {
        Ok(b) => b,
        Err(e) => return fail(1, e),
    };
    for (bundle, components) in &built {
        outln!(
            "built    {} ({} component{})",
            bundle.display(),
            components.len(),
            if components.len() == 1 { "" } else { "s" }
        );
    }
    if no_validate {
        return ExitCode::SUCCESS;
    }
    validate(dirs, |dir| {
        if dir
            .join(themis_core::trust::bundle::SIGNATURE_FILE)
            .is_file()
        {
            outln!(
                "note     {} changed: sign it again (`themis runbook sign {} --key TEAM.key`)",
                dir.display(),
                dir.display()
            );
        }
    })
}

/// Load each bundle without a signature check, as the host would compile it; say what is wrong
/// with each that does not load (exit 1), and let `after` add a word per bundle.
fn validate(dirs: &[PathBuf], after: impl Fn(&std::path::Path)) -> ExitCode {
    // Validation compiles unverified bundles: it must not fill the shared cache.
    let sandbox = match sandbox(None) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut failed = false;
    for dir in dirs {
        match LoadedRunbook::load_unverified(&sandbox, dir) {
            Ok(loaded) => outln!("{}", render::validated(&loaded)),
            Err(e) => {
                failed = true;
                eprintln!("error: {e}");
            }
        }
        after(dir);
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

async fn authoring_test(
    sandbox: &std::sync::Arc<themis_sandbox::Sandbox>,
    dirs: &[PathBuf],
    junit: Option<&std::path::Path>,
    allow_unsigned: bool,
) -> ExitCode {
    let mut cases = Vec::new();
    for dir in dirs {
        let files = match authoring::test::scenarios(dir) {
            Ok(f) => f,
            Err(e) => return fail(2, e),
        };
        for file in files {
            let case = authoring::test::run(sandbox, dir, &file, allow_unsigned).await;
            if case.passed() {
                outln!("ok       {}  {}", file.display(), case.name);
            } else {
                outln!("FAILED   {}  {}", file.display(), case.name);
                for f in &case.failures {
                    outln!("           {f}");
                }
            }
            cases.push(case);
        }
    }
    let failed = cases.iter().filter(|c| !c.passed()).count();
    outln!(
        "{} scenario{}: {} passed, {failed} failed",
        cases.len(),
        if cases.len() == 1 { "" } else { "s" },
        cases.len() - failed
    );
    if let Some(file) = junit {
        let written = authoring::test::junit(&cases)
            .and_then(|xml| std::fs::write(file, xml).map_err(|e| e.to_string()));
        if let Err(e) = written {
            return fail(
                2,
                format!("{}: cannot write JUnit XML: {e}", file.display()),
            );
        }
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
