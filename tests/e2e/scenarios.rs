//! Every scenario under tests/scenarios runs against its mocks and meets its expectations.

use crate::common::{repo, sandbox};

#[tokio::test]
async fn every_scenario_meets_its_expectations() {
    let dir = repo().join("tests/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/scenarios exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 15,
        "expected the scenario corpus, found {}",
        files.len()
    );
    let mut failed = Vec::new();
    for file in &files {
        let run = themis_testkit::scenario::run(sandbox(), file, false)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            run.expectations_checked > 0,
            "{} expects nothing",
            file.display()
        );
        if !run.passed() {
            failed.push(format!("{}: {:?}", file.display(), run.failures));
        }
    }
    assert!(
        failed.is_empty(),
        "scenarios failed:\n{}",
        failed.join("\n")
    );
}

#[tokio::test]
async fn a_wrong_expectation_is_caught() {
    // The checker must be able to fail: flip one expectation of a passing scenario.
    let src =
        std::fs::read_to_string(repo().join("tests/scenarios/kafka-gc-pause.yaml")).expect("read");
    let tmp = tempfile::tempdir().expect("tempdir");
    let edited = src
        .replace("../../", &format!("{}/", repo().display()))
        .replace("gc-pause.broker: \"1\"", "gc-pause.broker: \"2\"")
        .replace("outcome: succeeded", "outcome: rolled-back");
    let file = tmp.path().join("s.yaml");
    std::fs::write(&file, edited).expect("write");
    let run = themis_testkit::scenario::run(sandbox(), &file, false)
        .await
        .expect("runs");
    assert_eq!(run.failures.len(), 2, "{:?}", run.failures);
    assert!(run.failures[0].starts_with("outcome: expected rolled-back, got succeeded"));
}
