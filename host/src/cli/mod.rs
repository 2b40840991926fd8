//! The `themis` command line: argument parsing and dispatch. Output formatting is in `render`.

mod render;

use crate::executor::LoadedRunbook;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::scenario;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "themis",
    version,
    about = "Agentic SRE runbook engine: sandboxed WebAssembly runbook steps, audited",
    long_about = "Themis runs runbooks whose steps are sandboxed WebAssembly components, each with a \
precondition, an action, a postcondition and a rollback, calling only the capabilities its \
manifest grants.\n\nStart with `themis runbook validate runbooks/kafka/check-broker-health` and \
`themis run --scenario tests/scenarios/kafka-gc-pause.yaml`."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with runbook bundles (a folder with manifest.yaml and components/).
    #[command(subcommand)]
    Runbook(RunbookCommand),
    /// Run one runbook against a scenario's mocked capabilities and print each step's phases.
    ///
    /// Nothing real is touched: every capability is answered by the scenario's `mocks:`. With
    /// `dry_run: true` in the scenario, mutations are recorded as "would do" and not even sent to
    /// the mocks.
    ///
    /// Exit status: 0 when the scenario's expectations hold (or, if it has none, when
    /// the runbook succeeded), 1 otherwise, 2 when the scenario or runbook cannot be loaded.
    Run {
        /// The scenario file (YAML).
        #[arg(long, value_name = "FILE")]
        scenario: PathBuf,
        /// Print one JSON object instead of the human-readable table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum RunbookCommand {
    /// Load runbooks, check every component's imports against the domain's world, validate the
    /// graph, parameters and grants. Exit 0 when all are valid.
    Validate {
        /// Runbook folders (each holds manifest.yaml).
        #[arg(required = true, value_name = "DIR")]
        dirs: Vec<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
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

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("THEMIS_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn sandbox() -> Result<Sandbox, ExitCode> {
    Sandbox::new(SandboxConfig::default()).map_err(|e| {
        eprintln!("error: cannot start the WebAssembly sandbox: {e:#}");
        ExitCode::from(2)
    })
}

async fn dispatch(cli: Cli) -> ExitCode {
    let sandbox = match sandbox() {
        Ok(s) => s,
        Err(code) => return code,
    };
    match cli.command {
        Command::Runbook(RunbookCommand::Validate { dirs }) => {
            let mut failed = false;
            for dir in dirs {
                match LoadedRunbook::load(&sandbox, &dir) {
                    Ok(loaded) => println!("{}", render::validated(&loaded)),
                    Err(e) => {
                        failed = true;
                        eprintln!("error: {e}");
                    }
                }
            }
            if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Run { scenario, json } => match scenario::run(&sandbox, &scenario).await {
            Ok(run) => {
                if json {
                    match serde_json::to_string_pretty(&run) {
                        Ok(text) => println!("{text}"),
                        Err(e) => {
                            eprintln!("error: cannot render JSON: {e}");
                            return ExitCode::from(2);
                        }
                    }
                } else {
                    print!("{}", render::scenario_run(&run));
                }
                let ok = if run.expectations_checked > 0 {
                    run.passed()
                } else {
                    run.report.outcome == crate::executor::Outcome::Succeeded
                };
                if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}
