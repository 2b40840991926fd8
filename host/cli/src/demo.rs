//! `themis demo`: the playbook's use case end to end, on scenario-mocked capabilities.

use crate::{agent_files, fail, render};
use clap::Args;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use themis_agent::audit::{AuditLog, Redactor};
use themis_agent::escalation::{Channels, Escalation};
use themis_agent::store::{IncidentStatus, JsonStore};
use themis_agent::{AlertOutcome, Runtime, RuntimeObserver, RuntimeParts};
use themis_core::clock::Clock;
use themis_core::fsm::{AgentState, Event};
use themis_core::identity::Identity;
use themis_sandbox::executor::{PhaseRecord, PhaseStatus};
use themis_sandbox::{Sandbox, SandboxConfig};
use themis_testkit::provider::ScenarioProvider;

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
    /// Who approves or rejects in the demo's script [default: the OS user running it].
    #[arg(long = "as", value_name = "NAME")]
    who: Option<String>,
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
    unsigned: crate::Unsigned,
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
        if let Event::FixVerified { effect, .. } = event {
            outln!("{}  [{agent}] fix {effect}; {to}", self.stamp());
            return;
        }
        outln!("{}  [{agent}] {}", self.stamp(), to);
    }

    fn phase(&self, _agent: &str, runbook: &str, r: &PhaseRecord) {
        let mark = if r.status == PhaseStatus::Passed {
            "ok "
        } else {
            "!! "
        };
        outln!(
            "{}      {mark}{runbook} / {} {}: {}",
            self.stamp(),
            r.step,
            r.phase,
            r.summary
        );
    }

    fn escalation(&self, e: &Escalation) {
        outln!();
        for line in e.to_text().lines() {
            outln!("    {line}");
        }
        outln!();
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
    let world = match themis_testkit::scenario::load(&args.world) {
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
    let store = match JsonStore::open(state.path()) {
        Ok(s) => Arc::new(s),
        Err(e) => return fail(2, e),
    };
    let provider = match ScenarioProvider::from_file(&args.world, false) {
        Ok(p) => Arc::new(p),
        Err(e) => return fail(2, e),
    };
    let clock = Clock::manual(SystemTime::now());
    let printer = Arc::new(Printer {
        start: std::sync::Mutex::new(Instant::now()),
    });
    let runtime = match Runtime::start(
        RuntimeParts {
            sandbox,
            agent_files: files,
            audit,
            store,
            channels,
            observer: printer.clone(),
            provider,
        },
        themis_agent::RuntimeOptions {
            allow_unsigned: args.unsigned.allow_unsigned,
            // The world's timeline (Alertmanager resolving the alert minutes later) is played
            // on a clock of the demo's own, so verifying the fix takes no waiting.
            clock: clock.clone(),
            verify_tick: None,
            ..Default::default()
        },
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return fail(2, e),
    };
    let who = match &args.who {
        Some(name) => Identity::scenario(name),
        None => crate::answer::os_user(),
    };

    let alert = world.alert.to_alert();
    outln!("Themis demo — {}", world.name);
    outln!(
        "agents: {}",
        runtime
            .agents()
            .iter()
            .map(|a| a.def.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    outln!();
    printer.restart();
    let alert_at = SystemTime::now();
    outln!(
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
    let incident = match runtime.handle_alert(alert).await {
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
        out!(
            "Approve {} ({} {}, plan {}) as {}? [y/N] ",
            proposal.id,
            proposal.plan.runbook_id,
            serde_json::to_string(&proposal.plan.params).unwrap_or_default(),
            proposal.plan_digest,
            who.name
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
    outln!();
    outln!(
        "{}  {} {} as {}",
        printer.stamp(),
        if approve { "approved" } else { "rejected" },
        proposal.id,
        who.name
    );
    let result = if approve {
        runtime
            .approve(&proposal.id, who, Some(proposal.plan_digest.clone()))
            .await
    } else {
        runtime
            .reject(&proposal.id, who, "rejected in the demo")
            .await
    };
    let mut incident = match result {
        Ok(i) => i,
        Err(e) => return fail(1, e),
    };
    if approve && !world.timeline.is_empty() {
        match play_timeline(&runtime, &world, &clock).await {
            Ok(()) => {}
            Err(e) => return fail(1, e),
        }
        incident = match runtime.store().get(&incident.id).await {
            Ok(i) => i,
            Err(e) => return fail(1, e),
        };
    }

    outln!();
    outln!("result           {}", render::incident_line(&incident));
    for a in runtime.states() {
        outln!("agent {:<10} {}", a.name, a.state);
    }
    outln!(
        "alert → proposal {:.0} ms",
        to_proposal.as_secs_f64() * 1000.0
    );
    outln!("audit            {}", args.audit.display());
    runtime.shutdown().await;
    let verified = match themis_agent::audit::verify::verify(&args.audit) {
        Ok(Ok(intact)) => {
            outln!(
                "audit verify     ok: {} records, chain intact",
                intact.records
            );
            true
        }
        Ok(Err(broken)) => {
            outln!("audit verify     FAILED: {broken}");
            false
        }
        Err(e) => {
            outln!("audit verify     cannot read: {e}");
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

/// What the alert's source does after the change, as the world's `timeline:` says, on the demo's
/// clock: each moment printed as simulated time, then the agent looks at the fix it verifies.
async fn play_timeline(
    runtime: &Runtime,
    world: &themis_testkit::scenario::Scenario,
    clock: &Clock,
) -> Result<(), String> {
    use themis_testkit::scenario::Notification;
    let offsets = world.timeline_offsets()?;
    let start = clock.now();
    outln!();
    for (moment, after) in world.timeline.iter().zip(offsets) {
        clock.advance_to(start + after);
        let mut alert = world.alert.with_labels(&moment.labels);
        match moment.alert {
            Some(Notification::Resolved) => {
                outln!(
                    "  +{:<6} (simulated) Alertmanager: {} resolved",
                    moment.after,
                    alert.name
                );
                if let Some(source) = alert.source.as_mut() {
                    source.status = "resolved".into();
                }
                runtime
                    .handle_resolved(alert)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Some(Notification::Firing) => {
                outln!(
                    "  +{:<6} (simulated) Alertmanager: {} firing",
                    moment.after,
                    alert.name
                );
                runtime
                    .handle_alert(alert)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            None => outln!("  +{:<6} (simulated) time passes", moment.after),
        }
        runtime.verify_due().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
