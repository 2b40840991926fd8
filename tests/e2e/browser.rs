//! The operator page in a real browser: tests/browser/page.mjs (playwright-core driving
//! Debian's Chromium, headless) against a live `themis serve`. scripts/test installs Chromium
//! and the npm package; elsewhere the test says it skips, unless THEMIS_REQUIRE_SERVICES=1.

use crate::common::repo;
use crate::serve::{INTAKE, ONCALL, ServeSpec};
use std::process::Command;
use themis_testkit::services;

#[test]
fn the_operator_page_works_in_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let driver = repo().join("tests/browser/node_modules/playwright-core");
    if !std::path::Path::new(&chromium).exists() || !driver.exists() {
        assert!(
            !services::required(),
            "the browser test needs {chromium} (apt-get install chromium) and playwright-core (npm ci in tests/browser); THEMIS_REQUIRE_SERVICES=1 needs them"
        );
        eprintln!("skipped: no Chromium or playwright-core (scripts/test installs both)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ServeSpec::new(dir.path()).start();
    let mut node = Command::new("node");
    node.arg(repo().join("tests/browser/page.mjs"))
        .env("THEMIS_URL", &s.url)
        .env("THEMIS_TOKEN", ONCALL)
        .env("THEMIS_INTAKE_TOKEN", INTAKE)
        .env("CHROMIUM", &chromium);
    if let Ok(shots) = std::env::var("THEMIS_SCREENSHOTS") {
        node.env("THEMIS_SCREENSHOTS", shots);
    }
    let out = node.output().expect("node runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    for step in [
        "saw kafka go triaging → escalating-human live",
        "an approve without a session is refused (401)",
        "approved from the page; the plan ran",
        "kafka is idle again and nothing waits",
    ] {
        assert!(said.contains(step), "{step} not in:\n{said}");
    }
}
