//! Human-readable output of the CLI.

use std::fmt::Write;
use themis_agent::audit::Record;
use themis_agent::store::{Incident, IncidentStatus};
use themis_core::types::Phase;
use themis_sandbox::CallMode;
use themis_sandbox::executor::{ExecutionReport, PhaseRecord, PhaseStatus};
use themis_sandbox::loaded::LoadedRunbook;
use themis_testkit::scenario::{ScenarioRun, outcome_parts};

pub fn incident_line(i: &Incident) -> String {
    let status = serde_json::to_value(i.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut line = format!("incident {} ({} agent): {status}", i.id, i.agent);
    if let Some(p) = &i.proposal {
        line.push_str(&format!(
            " — waiting for approval {} of {} {}",
            p.id,
            p.plan.runbook_id,
            serde_json::to_string(&p.plan.params).unwrap_or_default()
        ));
    }
    if let Some(r) = &i.reason {
        line.push_str(&format!(" — {r}"));
    }
    if let Some(w) = &i.verification {
        match &w.verdict {
            Some(v) if i.status == IncidentStatus::Resolved => {
                line.push_str(&format!(" — fix {}: {}", v.effect, v.why));
            }
            Some(_) => {}
            None => line.push_str(&format!(
                " — watching whether {} fixed it for up to {} after the run ({})",
                w.runbook,
                humantime::format_duration(std::time::Duration::from_secs(w.spec.window_secs)),
                match (w.alert_tracked, &w.metric) {
                    (true, Some(m)) => format!("the alert's resolution and {m}"),
                    (true, None) => "the alert's resolution".to_owned(),
                    (false, Some(m)) => m.clone(),
                    (false, None) => "no signal".to_owned(),
                }
            )),
        }
    }
    line
}

/// An incident's audit records as a timeline.
pub fn timeline(records: &[&Record]) -> String {
    let mut out = String::new();
    for r in records {
        let _ = writeln!(
            out,
            "{}  #{:<4} {}",
            r.ts,
            r.seq,
            themis_agent::audit::describe::line(r)
        );
    }
    out
}

pub fn validated(loaded: &LoadedRunbook) -> String {
    let rb = &loaded.runbook;
    let grants: usize = rb.steps.iter().map(|s| s.capabilities.len()).sum();
    format!(
        "ok  {} {} ({}) {} — {} step(s), {} grant(s), {} parameter(s)",
        rb.id,
        rb.version,
        rb.domain,
        rb.digest,
        rb.steps.len(),
        grants,
        rb.parameters.len()
    )
}

pub fn scenario_run(run: &ScenarioRun) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "scenario  {}", run.scenario);
    if let Some(a) = &run.agent {
        let _ = writeln!(out, "agent     {} · incident {}", a.agent, a.incident);
        let _ = writeln!(out, "states    {}", a.states.join(" → "));
        let _ = writeln!(out, "decision  {}", a.decision);
        for reason in &a.escalations {
            let _ = writeln!(out, "escalated {reason}");
        }
        for p in &a.proposals {
            let _ = writeln!(out, "proposed  {p}");
        }
        let _ = writeln!(
            out,
            "end       agent {}, incident {}, {} audit records (chain intact)",
            a.final_state, a.incident_status, a.audit_records
        );
        for r in &run.reports {
            let _ = writeln!(out);
            out.push_str(&report(r));
        }
    } else if let Some(r) = &run.report {
        out.push_str(&report(r));
    }
    if run.expectations_checked > 0 {
        if run.failures.is_empty() {
            let _ = writeln!(
                out,
                "expect    all {} expectations met",
                run.expectations_checked
            );
        } else {
            let _ = writeln!(
                out,
                "expect    {} of {} expectations FAILED:",
                run.failures.len(),
                run.expectations_checked
            );
            for f in &run.failures {
                let _ = writeln!(out, "          - {f}");
            }
        }
    }
    out
}

/// One execution: every phase with its evidence, calls and logs, then the outcome.
pub fn report(r: &ExecutionReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "runbook   {} {} {}{}",
        r.runbook_id,
        r.runbook_version,
        r.runbook_digest,
        if r.dry_run {
            "  (dry run: mutations recorded, not performed)"
        } else {
            ""
        }
    );
    let width = r
        .phases
        .iter()
        .map(|p| p.step.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let pad = |out: &mut String, label: &str, text: &str| {
        let _ = writeln!(out, "  {:width$}  {:13}  {:7}  {label}{text}", "", "", "");
    };
    let mut last_step = "";
    for p in &r.phases {
        let step = if p.step == last_step && p.phase != Phase::Rollback {
            ""
        } else {
            p.step.as_str()
        };
        last_step = &p.step;
        let _ = writeln!(
            out,
            "  {step:<width$}  {:<13}  {:<7}  {}{}",
            p.phase.to_string(),
            status_word(p.status),
            p.summary,
            branch(p)
        );
        if !p.evidence.is_empty() {
            let ev: Vec<String> = p.evidence.iter().map(|(k, v)| format!("{k}={v}")).collect();
            pad(&mut out, "evidence: ", &ev.join(" "));
        }
        for c in &p.calls {
            let mark = match c.mode {
                CallMode::Performed => "call: ",
                CallMode::WouldDo => "would do: ",
                CallMode::Refused => "REFUSED: ",
            };
            pad(&mut out, mark, &format!("{} {}", c.capability, c.args));
        }
        for l in &p.logs {
            pad(&mut out, "log: ", &format!("{} {}", l.level, l.message));
        }
        if !p.stderr.trim().is_empty() {
            pad(&mut out, "stderr: ", p.stderr.trim());
        }
    }
    let (status, step) = outcome_parts(&r.outcome);
    let _ = writeln!(
        out,
        "outcome   {status}{}",
        step.map(|s| format!(" at step {s}")).unwrap_or_default()
    );
    let calls: Vec<_> = r.calls().collect();
    let refused = calls.iter().filter(|c| c.mode == CallMode::Refused).count();
    let would = calls.iter().filter(|c| c.mode == CallMode::WouldDo).count();
    let _ = writeln!(
        out,
        "calls     {} ({refused} refused, {would} would-do)",
        calls.len()
    );
    out
}

fn status_word(s: PhaseStatus) -> &'static str {
    match s {
        PhaseStatus::Passed => "passed",
        PhaseStatus::Failed => "FAILED",
        PhaseStatus::Fault => "FAULT",
        PhaseStatus::Refused => "REFUSED",
    }
}

fn branch(p: &PhaseRecord) -> String {
    match (&p.branch, p.status) {
        (Some(b), PhaseStatus::Passed) => format!("  → {b}"),
        _ => String::new(),
    }
}
