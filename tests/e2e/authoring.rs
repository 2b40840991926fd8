//! The runbook author's path on the real CLI: `themis runbook new` for each domain gives a
//! runbook that builds for wasm32-wasip2, passes its native unit test and its scenario in the
//! real sandbox out of the box; a failing scenario fails the run and the JUnit report.

use crate::common::{repo, text};
use std::path::Path;
use std::process::{Command, Output};

/// One target directory for every generated runbook, across runs: the SDK and wit-bindgen are
/// compiled for wasm32-wasip2 once, not per test.
fn target_dir() -> std::path::PathBuf {
    repo().join("target/authoring")
}

fn themis_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_themis"))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .expect("themis runs")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\n{}\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn a_new_runbook_of_each_domain_builds_tests_and_passes_out_of_the_box() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    for domain in ["kafka", "k8s", "postgres"] {
        let name = format!("fix-{domain}");
        let out = ok(
            &themis_in(dir, &["runbook", "new", &name, "--domain", domain]),
            "new",
        );
        assert!(out.contains("next     themis runbook build"), "{out}");
        for file in ["manifest.yaml", "Cargo.toml", "scenarios"] {
            assert!(dir.join(&name).join(file).exists(), "{name}/{file}");
        }
    }
    // One build call for the three (three workspaces, one cargo call each).
    let out = ok(
        &themis_in(
            dir,
            &["runbook", "build", "fix-kafka", "fix-k8s", "fix-postgres"],
        ),
        "build",
    );
    assert_eq!(out.matches("built    ").count(), 3, "{out}");
    assert_eq!(
        out.matches("ok  fix-").count(),
        3,
        "each bundle validates: {out}"
    );

    let junit = dir.join("junit.xml");
    let out = ok(
        &themis_in(
            dir,
            &[
                "runbook",
                "test",
                "fix-kafka",
                "fix-k8s",
                "fix-postgres",
                "--allow-unsigned",
                "--junit",
                &junit.display().to_string(),
            ],
        ),
        "test",
    );
    assert!(out.contains("3 scenarios: 3 passed, 0 failed"), "{out}");
    let xml = std::fs::read_to_string(&junit).expect("junit");
    assert!(
        xml.contains("tests=\"3\"") && xml.contains("failures=\"0\""),
        "{xml}"
    );

    // The native unit test against the SDK's mocks.
    for name in ["fix-kafka", "fix-k8s", "fix-postgres"] {
        let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["test", "--quiet", "--manifest-path"])
            .arg(dir.join(name).join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", target_dir())
            .output()
            .expect("cargo runs");
        let said = ok(&out, "cargo test");
        assert!(said.contains("1 passed"), "{name}: {said}");
        // What `new` writes is what rustfmt would write: a team's `fmt --check` passes on it.
        let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["fmt", "--check", "--manifest-path"])
            .arg(dir.join(name).join("Cargo.toml"))
            .output()
            .expect("cargo fmt runs");
        ok(&out, "cargo fmt --check");
    }

    // Signed, it verifies; a scenario whose expectation no longer holds fails, in JUnit too.
    let key = dir.join("team");
    ok(
        &themis_in(dir, &["keygen", "--out", &key.display().to_string()]),
        "keygen",
    );
    ok(
        &themis_in(
            dir,
            &[
                "runbook",
                "sign",
                "fix-postgres",
                "--key",
                &format!("{}.key", key.display()),
            ],
        ),
        "sign",
    );
    ok(
        &themis_in(
            dir,
            &[
                "runbook",
                "verify",
                "fix-postgres",
                "--trust",
                &format!("{}.pub", key.display()),
            ],
        ),
        "verify",
    );
    let scenario = dir.join("fix-postgres/scenarios/cancel.yaml");
    let body = std::fs::read_to_string(&scenario).expect("scenario");
    let body = body
        .replace(
            "# trust: [../../keys/your-team.pub]",
            "trust: [../../team.pub]",
        )
        .replace("outcome: succeeded", "outcome: precondition-failed");
    std::fs::write(&scenario, body).expect("edit");
    let out = themis_in(
        dir,
        &[
            "runbook",
            "test",
            "fix-postgres",
            "--junit",
            &junit.display().to_string(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("FAILED"),
        "{}",
        text(&out.stdout)
    );
    let xml = std::fs::read_to_string(&junit).expect("junit");
    assert!(xml.contains("failures=\"1\""), "{xml}");
}

#[test]
fn new_refuses_what_it_would_overwrite_or_cannot_name() {
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::write(work.path().join("notes.txt"), "mine").expect("write");
    let out = themis_in(
        work.path(),
        &["runbook", "new", ".", "--domain", "kafka", "--id", "x"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not empty"),
        "{}",
        text(&out.stderr)
    );
    let out = themis_in(
        work.path(),
        &["runbook", "new", "Bad_Name", "--domain", "kafka"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a runbook id"),
        "{}",
        text(&out.stderr)
    );
    assert!(!work.path().join("Bad_Name").exists());
    let out = themis_in(work.path(), &["runbook", "test", "."]);
    assert_eq!(out.status.code(), Some(2), "no scenarios folder");
}
