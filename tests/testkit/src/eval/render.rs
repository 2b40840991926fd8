//! The eval's report as a table for a terminal and as JUnit XML for CI.

use super::Report;
use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};
use std::time::Duration;

fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn pct(n: usize, of: usize) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * n as f64 / of as f64
    }
}

/// The human-readable table.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<58} {:<11} {:<24} {:<24} {:>4} {:>4} {:>8}\n",
        "SCENARIO", "AGENT", "EXPECTED", "CHOSEN", "OK", "ESC", "MS"
    ));
    for c in &report.per_scenario {
        out.push_str(&format!(
            "{:<58} {:<11} {:<24} {:<24} {:>4} {:>4} {:>8}\n",
            file_name(&c.file),
            c.agent,
            c.expected,
            c.chosen,
            if c.correct { "yes" } else { "NO" },
            if c.escalation_correct { "yes" } else { "NO" },
            c.latency_ms
                .map(|l| format!("{l:.1}"))
                .unwrap_or_else(|| "-".into()),
        ));
        for v in &c.safety_violations {
            out.push_str(&format!("    SAFETY VIOLATION: {v}\n"));
        }
        if let Some(note) = &c.note {
            out.push_str(&format!("    note: {note}\n"));
        }
    }
    for f in &report.failed {
        out.push_str(&format!(
            "{:<58} NOT RUN: {}\n",
            file_name(&f.file),
            f.reason
        ));
    }
    out.push_str(&format!(
        "\nselector {} · {} scenarios ({} runbook scenarios skipped, {} could not run)\n",
        report.selector,
        report.scenarios,
        report.skipped.len(),
        report.failed.len()
    ));
    out.push_str(&format!(
        "runbook choice accuracy   {}/{} ({:.1} %)\n",
        report.correct,
        report.scenarios,
        pct(report.correct, report.scenarios)
    ));
    out.push_str(&format!(
        "escalation accuracy       {}/{} ({:.1} %)\n",
        report.escalations_correct,
        report.scenarios,
        pct(report.escalations_correct, report.scenarios)
    ));
    out.push_str(&format!(
        "safety violations         {}\n",
        report.safety_violations
    ));
    out.push_str(&format!(
        "decision latency          p50 {:.2} ms · p99 {:.2} ms\n",
        report.latency_ms_p50, report.latency_ms_p99
    ));
    out.push_str(&format!(
        "LLM tokens                {}\n",
        report
            .tokens
            .map(|t| t.to_string())
            .unwrap_or_else(|| "- (none reported)".into())
    ));
    out.push_str("\nper domain                scenarios  choice        escalation    safety\n");
    for (domain, d) in &report.per_domain {
        out.push_str(&format!(
            "  {:<23} {:>9}  {:>3} ({:>5.1} %)  {:>3} ({:>5.1} %)  {:>6}\n",
            domain,
            d.scenarios,
            d.correct,
            pct(d.correct, d.scenarios),
            d.escalations_correct,
            pct(d.escalations_correct, d.scenarios),
            d.safety_violations
        ));
    }
    out.push_str("\ncalibration (runbooks chosen, by stated confidence)\n");
    if report.calibration.is_empty() {
        out.push_str("  - (no runbook was chosen)\n");
    }
    for b in &report.calibration {
        out.push_str(&format!(
            "  [{:.1}, {:.1}{}  {:>4} chosen  stated {:.2}  right {:.2}\n",
            b.from,
            b.to,
            if b.to >= 1.0 { "]" } else { ")" },
            b.choices,
            b.mean_confidence,
            b.accuracy
        ));
    }
    if let Some(ece) = report.expected_calibration_error {
        out.push_str(&format!("expected calibration error {ece:.3}\n"));
    }
    out
}

/// JUnit XML: one test suite per agent, one test case per scenario; a wrong choice or a wrong
/// escalation is a failure, a safety violation or a file that could not run an error.
pub fn junit(report: &Report) -> Result<String, String> {
    let mut xml = quick_junit::Report::new(format!("themis eval ({})", report.selector));
    let mut suites: std::collections::BTreeMap<String, TestSuite> = Default::default();
    for c in &report.per_scenario {
        let status = if !c.safety_violations.is_empty() {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
            s.set_message(format!(
                "safety violation: {}",
                c.safety_violations.join("; ")
            ));
            s
        } else if !c.correct || !c.escalation_correct {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(format!(
                "expected {}, chose {}{}",
                c.expected,
                c.chosen,
                if c.escalation_correct {
                    ""
                } else if c.expected_escalation {
                    " (a human should have been asked)"
                } else {
                    " (a human was asked needlessly)"
                }
            ));
            s
        } else {
            TestCaseStatus::success()
        };
        let mut case = TestCase::new(file_name(&c.file), status);
        case.set_classname(format!("eval.{}", c.agent));
        if let Some(ms) = c.latency_ms {
            case.set_time(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
        }
        suites
            .entry(c.agent.clone())
            .or_insert_with(|| TestSuite::new(c.agent.clone()))
            .add_test_case(case);
    }
    if !report.failed.is_empty() {
        let mut suite = TestSuite::new("not-run");
        for f in &report.failed {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
            s.set_message(f.reason.clone());
            suite.add_test_case(TestCase::new(file_name(&f.file), s));
        }
        suites.insert("~not-run".into(), suite);
    }
    xml.add_test_suites(suites.into_values());
    xml.to_string()
        .map_err(|e| format!("cannot write JUnit XML: {e}"))
}
