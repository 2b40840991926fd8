//! Human-readable output of the CLI.

use crate::executor::{LoadedRunbook, PhaseRecord, PhaseStatus};
use crate::sandbox::{CallMode, Phase};
use crate::scenario::{ScenarioRun, outcome_parts};
use std::fmt::Write;

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
    let r = &run.report;
    let mut out = String::new();
    let _ = writeln!(out, "scenario  {}", run.scenario);
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
    let _ = writeln!(out);
    let width = r
        .phases
        .iter()
        .map(|p| p.step.len())
        .max()
        .unwrap_or(4)
        .max(4);
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
            let _ = writeln!(
                out,
                "  {:width$}  {:13}  {:7}  evidence: {}",
                "",
                "",
                "",
                ev.join(" ")
            );
        }
        for c in &p.calls {
            let mark = match c.mode {
                CallMode::Performed => "call",
                CallMode::WouldDo => "would do",
                CallMode::Refused => "REFUSED",
            };
            let _ = writeln!(
                out,
                "  {:width$}  {:13}  {:7}  {mark}: {} {}",
                "", "", "", c.capability, c.args
            );
        }
        if !p.stderr.trim().is_empty() {
            let _ = writeln!(
                out,
                "  {:width$}  {:13}  {:7}  stderr: {}",
                "",
                "",
                "",
                p.stderr.trim()
            );
        }
    }
    let (status, step) = outcome_parts(&r.outcome);
    let _ = writeln!(out);
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
