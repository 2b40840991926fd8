//! `themis runbook test DIR…`: each runbook's scenarios (DIR/scenarios/*.yaml) in the real
//! sandbox against their mocks — a line per scenario, JUnit XML for CI.

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use themis_sandbox::Sandbox;

pub struct Case {
    pub bundle: PathBuf,
    pub file: PathBuf,
    pub name: String,
    pub failures: Vec<String>,
    pub time: Duration,
}

impl Case {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// The scenario files of a runbook folder, sorted.
pub fn scenarios(bundle: &Path) -> Result<Vec<PathBuf>, String> {
    let dir = bundle.join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| {
            format!(
                "{}: {e} (a runbook's scenarios live in its scenarios/ folder; `themis runbook new` makes one)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no scenario files (*.yaml)", dir.display()));
    }
    Ok(files)
}

pub async fn run(sandbox: &Arc<Sandbox>, bundle: &Path, file: &Path, allow_unsigned: bool) -> Case {
    let started = Instant::now();
    let (name, failures) = match themis_testkit::scenario::run(sandbox, file, allow_unsigned).await
    {
        Ok(run) => {
            let mut failures = run.failures.clone();
            if run.expectations_checked == 0 {
                failures.push("the scenario checks nothing: give it an `expect:`".into());
            }
            (run.scenario.clone(), failures)
        }
        Err(e) => (
            file.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            vec![format!("cannot run: {e}")],
        ),
    };
    Case {
        bundle: bundle.to_path_buf(),
        file: file.to_path_buf(),
        name,
        failures,
        time: started.elapsed(),
    }
}

pub fn junit(cases: &[Case]) -> Result<String, String> {
    let mut report = Report::new("themis runbook test");
    let mut suites: std::collections::BTreeMap<String, TestSuite> = Default::default();
    for c in cases {
        let suite = c.bundle.display().to_string();
        let mut status = if c.passed() {
            TestCaseStatus::success()
        } else {
            TestCaseStatus::non_success(NonSuccessKind::Failure)
        };
        if !c.passed() {
            status.set_message(c.failures.join("; "));
        }
        let mut case = TestCase::new(c.name.clone(), status);
        case.set_classname(c.file.display().to_string());
        case.set_time(c.time);
        suites
            .entry(suite.clone())
            .or_insert_with(|| TestSuite::new(suite))
            .add_test_case(case);
    }
    report.add_test_suites(suites.into_values());
    report.to_string().map_err(|e| e.to_string())
}
