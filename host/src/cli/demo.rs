//! `themis demo`: the playbook's use case end to end, on scenario-mocked capabilities.

use super::{agent_files, fail, render};
use crate::agent::store::{BackendSpec, IncidentStatus, Store};
use crate::agent::{AlertOutcome, Runtime, RuntimeObserver};
use crate::audit::{AuditLog, Redactor};
use crate::escalation::{Channels, Escalation};
use crate::executor::{PhaseRecord, PhaseStatus};
use crate::fsm::{AgentState, Event};
use crate::sandbox::{Sandbox, SandboxConfig};
use clap::Args;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Approve the proposed change without asking.
    #[arg(long, conflicts_with = "no")]
    yes: bool,
    /// Reject the proposed change without asking.
    #[arg(long)]
    no: bool,
    /// Where the audit file goes. An existing log is continued, never replaced: audit logs are
    /// append-only.
    #[arg(long, value_name = "FILE", default_value = ".themis/demo-audit.jsonl")]
    audit: PathBuf,
    /// Who approves or rejects.
    #[arg(long = "as", value_name = "NAME", default_value = "oncall")]
    who: String,
    /// The folder of agent definitions.
    #[arg(long, value_name = "DIR", default_value = "agents")]
    agents: PathBuf,
    /// The scenario whose alert and mocks make the demo's world.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "tests/scenarios/agent-kafka-gc-pause.yaml"
    )]
    world: PathBuf,
    #[command(flatten)]
    unsigned: super::Unsigned,
}

struct Printer {
    start: std::sync::Mutex<Instant>,
}

impl Printer {
    fn stamp(&self) -> String {
        let start = self
            .start
            .lock()
            .map(|s| *s)
            .unwrap_or_else(|_| Instant::now());
        format!("{:>7.1} ms", start.elapsed().as_secs_f64() * 1000.0)
    }

    /// Time is shown from the alert, not from loading the catalog.
    fn restart(&self) {
        if let Ok(mut s) = self.start.lock() {
            *s = Instant::now();
        }
    }
}

impl RuntimeObserver for Printer {
    fn transition(&self, agent: &str, from: &AgentState, event: &Event, to: &AgentState) {
        // Phase-by-phase moves inside one runbook are shown by `phase`; print state changes.
        if matches!(event, Event::PhaseStarted { .. }) && from.kind() == to.kind() {
            return;
        }
        println!("{}  [{agent}] {}", self.stamp(), to);
    }

    fn phase(&self, _agent: &str, runbook: &str, r: &PhaseRecord) {
        let mark = if r.status == PhaseStatus::Passed {
            "ok "
        } else {
            "!! "
        };
        println!(
            "{}      {mark}{runbook} / {} {}: {}",
            self.stamp(),
            r.step,
            r.phase,
            r.summary
        );
    }

    fn escalation(&self, e: &Escalation) {
        println!();
        for line in e.to_text().lines() {
            println!("    {line}");
        }
        println!();
    }
}

pub async fn run(args: DemoArgs, cache_dir: &Path) -> ExitCode {
    args.unsigned.warn();
    let sandbox = match Sandbox::new(SandboxConfig {
        cache_dir: Some(cache_dir.to_path_buf()),
        ..SandboxConfig::default()
    }) {
        Ok(s) => Arc::new(s),
        Err(e) => return fail(2, format!("cannot start the WebAssembly sandbox: {e:#}")),
    };
    let files = match agent_files(&args.agents) {
        Ok(f) => f,
        Err(e) => return fail(2, e),
    };
    let world = match crate::scenario::load(&args.world) {
        Ok(w) => w,
        Err(e) => return fail(2, format!("{e} (the demo runs from the repository root)")),
    };
    let state = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return fail(2, format!("cannot make a state directory: {e}")),
    };
    let channels = Channels::from_env();
    let audit = match AuditLog::open(
        &args.audit,
        Redactor::with_values(channels.slack_webhook.clone()),
    ) {
        Ok(a) => Arc::new(a),
        Err(e) => return fail(2, e),
    };
    let store = match Store::open(state.path()) {
        Ok(s) => s,
        Err(e) => return fail(2, e),
    };
    let printer = Arc::new(Printer {
        start: std::sync::Mutex::new(Instant::now()),
    });
    let runtime = match Runtime::new(
        sandbox,
        &files,
        audit,
        store,
        channels,
        printer.clone(),
        crate::agent::RuntimeOptions {
            allow_unsigned: args.unsigned.allow_unsigned,
            ..Default::default()
        },
    ) {
        Ok(r) => r,
        Err(e) => return fail(2, e),
    };

    let alert = world.alert.to_alert();
    println!("Themis demo — {}", world.name);
    println!(
        "agents: {}",
        runtime
            .agents()
            .iter()
            .map(|a| a.def.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    printer.restart();
    let alert_at = SystemTime::now();
    println!(
        "{}  alert {} {}",
        printer.stamp(),
        alert.name,
        alert
            .labels
            .iter()
            .map(|p| format!("{}={}", p.key, p.value))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let backend = BackendSpec::Scenario {
        file: args.world.clone(),
        dry_run: false,
    };
    let incident = match runtime.handle_alert(alert, backend).await {
        Ok(AlertOutcome::Handled(i)) => i,
        Ok(other) => {
            return fail(
                1,
                format!("the alert was not handled as a new incident: {other:?}"),
            );
        }
        Err(e) => return fail(1, e),
    };
    let Some(proposal) = incident.proposal.clone() else {
        return fail(
            1,
            format!(
                "the agent did not propose a change: {}",
                render::incident_line(&incident)
            ),
        );
    };
    let to_proposal = incident
        .proposed_at
        .and_then(|p| p.duration_since(alert_at).ok())
        .unwrap_or_default();

    let approve = if args.yes {
        true
    } else if args.no {
        false
    } else if std::io::stdin().is_terminal() {
        print!(
            "Approve {} ({}) as {}? [y/N] ",
            proposal.id, proposal.plan.runbook_id, args.who
        );
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        matches!(line.trim(), "y" | "Y" | "yes")
    } else {
        return fail(
            2,
            "no terminal to ask for the approval on: pass --yes or --no",
        );
    };
    println!();
    println!(
        "{}  {} {} as {}",
        printer.stamp(),
        if approve { "approved" } else { "rejected" },
        proposal.id,
        args.who
    );
    let result = if approve {
        runtime.approve(&proposal.id, &args.who).await
    } else {
        runtime
            .reject(&proposal.id, &args.who, "rejected in the demo")
            .await
    };
    let incident = match result {
        Ok(i) => i,
        Err(e) => return fail(1, e),
    };

    println!();
    println!("result           {}", render::incident_line(&incident));
    for a in runtime.agents() {
        let s = runtime
            .store()
            .agent_state(&a.def.name)
            .map(|s| s.to_string())
            .unwrap_or_default();
        println!("agent {:<10} {s}", a.def.name);
    }
    println!(
        "alert → proposal {:.0} ms",
        to_proposal.as_secs_f64() * 1000.0
    );
    println!("audit            {}", args.audit.display());
    let verified = match crate::audit::verify::verify(&args.audit) {
        Ok(Ok(intact)) => {
            println!(
                "audit verify     ok: {} records, chain intact",
                intact.records
            );
            true
        }
        Ok(Err(broken)) => {
            println!("audit verify     FAILED: {broken}");
            false
        }
        Err(e) => {
            println!("audit verify     cannot read: {e}");
            false
        }
    };
    let expected = if approve {
        IncidentStatus::Resolved
    } else {
        IncidentStatus::Rejected
    };
    if verified && incident.status == expected {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
