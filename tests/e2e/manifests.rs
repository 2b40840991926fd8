//! Manifest validation: every error names the file, the field and what is wrong.

use crate::common::{repo, sandbox};
use themis_core::manifest::Runbook;
use themis_sandbox::loaded::LoadedRunbook;

/// A runbook folder with `manifest` and a real component at components/ok.wasm.
fn folder(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("components")).expect("mkdir");
    std::fs::copy(
        repo().join("tests/runbooks/misbehaving/components/trivial.wasm"),
        dir.path().join("components/ok.wasm"),
    )
    .expect("copy the trivial component (run scripts/build-runbooks first)");
    std::fs::write(dir.path().join("manifest.yaml"), manifest).expect("write");
    dir
}

const HEAD: &str = "id: t\nversion: 1.0.0\ndomain: kafka\ndescription: test\n";

#[test]
fn invalid_manifests_are_refused_with_field_and_reason() {
    let one_step = |extra: &str| {
        format!("{HEAD}steps:\n  - id: a\n    component: components/ok.wasm\n{extra}")
    };
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!(
                "{HEAD}steps:\n  - {{ id: a, component: components/ok.wasm, on: {{ next: zz }} }}\n"
            ),
            "steps",
            "step `a` branch `next` leads to `zz`, which is not a step",
        ),
        (
            format!(
                "{HEAD}steps:\n  - {{ id: a, component: components/ok.wasm, on: {{ next: b }} }}\n  - {{ id: b, component: components/ok.wasm, on: {{ next: a }} }}\n"
            ),
            "steps",
            "the steps form a cycle: a -> b -> a",
        ),
        (
            format!(
                "{HEAD}steps:\n  - {{ id: a, component: components/ok.wasm }}\n  - {{ id: b, component: components/ok.wasm }}\n"
            ),
            "steps",
            "step `b` cannot be reached from the first step",
        ),
        (
            one_step("    capabilities: [k8s.rollout-restart]\n"),
            "steps[0].capabilities[0]",
            "`k8s.rollout-restart` is not a capability of the kafka domain",
        ),
        (
            one_step("    capabilities: [kafka.launch-missiles]\n"),
            "steps[0].capabilities[0]",
            "unknown capability `kafka.launch-missiles`",
        ),
        (
            format!("{HEAD}steps:\n  - {{ id: a, component: ../outside.wasm }}\n"),
            "steps[0].component",
            "`../outside.wasm` leaves the runbook's folder",
        ),
        (
            format!("{HEAD}steps:\n  - {{ id: a, component: /etc/passwd }}\n"),
            "steps[0].component",
            "`/etc/passwd` leaves the runbook's folder",
        ),
        (
            format!("{HEAD}steps:\n  - {{ id: a, component: components/missing.wasm }}\n"),
            "steps[0].component",
            "cannot read `components/missing.wasm`",
        ),
        (
            format!(
                "{HEAD}parameters:\n  - {{ name: n, type: float }}\nsteps:\n  - {{ id: a, component: components/ok.wasm }}\n"
            ),
            "parameters[0].type",
            "unknown parameter type `float`",
        ),
        (
            format!(
                "{HEAD}parameters:\n  - {{ name: n, type: integer, default: lots }}\nsteps:\n  - {{ id: a, component: components/ok.wasm }}\n"
            ),
            "parameters[0].default",
            "the default must be a integer",
        ),
        (
            "id: t\nversion: 1.0.0\ndomain: mainframe\ndescription: x\nsteps: []\n".into(),
            "domain",
            "unknown domain `mainframe`",
        ),
        (
            "id: t\nversion: one\ndomain: kafka\ndescription: x\nsteps: []\n".into(),
            "version",
            "`one` is not a semantic version",
        ),
        (
            one_step("    timeout: forever\n"),
            "steps[0].timeout",
            "`forever` is not a duration",
        ),
        (
            one_step("    on: {}\n"),
            "steps[0].on",
            "declares no branch",
        ),
        // A pattern is compiled before the bundle's components are checked against its
        // signature: one that would take megabytes is refused, not built.
        (
            format!(
                "{HEAD}parameters:\n  - {{ name: n, type: string, pattern: '\\w{{150}}|a' }}\nsteps:\n  - {{ id: a, component: components/ok.wasm }}\n"
            ),
            "parameters[0].pattern",
            "not a usable pattern",
        ),
        (
            format!(
                "{HEAD}parameters:\n  - {{ name: n, type: string, pattern: '{}' }}\nsteps:\n  - {{ id: a, component: components/ok.wasm }}\n",
                "a".repeat(513)
            ),
            "parameters[0].pattern",
            "513 bytes long, over the host's 512",
        ),
        (
            format!(
                "{HEAD}parameters:\n{}steps:\n  - {{ id: a, component: components/ok.wasm }}\n",
                (0..33)
                    .map(|i| format!(
                        "  - {{ name: p{i}, type: string, required: false, default: x }}\n"
                    ))
                    .collect::<String>()
            ),
            "parameters",
            "33 parameters, over the host's 32",
        ),
        (
            format!("{HEAD}timeout: 3h\nsteps:\n  - {{ id: a, component: components/ok.wasm }}\n"),
            "timeout",
            "`3h` is not a duration between 1ms and 2h",
        ),
        (
            format!("{HEAD}timeout: 0s\nsteps:\n  - {{ id: a, component: components/ok.wasm }}\n"),
            "timeout",
            "`0s` is not a duration between 1ms and 2h",
        ),
        (
            format!(
                "{HEAD}steps:\n{}",
                (0..=themis_core::manifest::MAX_STEPS)
                    .map(|i| format!("  - {{ id: s{i}, component: components/ok.wasm }}\n"))
                    .collect::<String>()
            ),
            "steps",
            "65 steps, over the host's 64",
        ),
        (
            format!("{HEAD}steps: []\n"),
            "steps",
            "the runbook has no steps",
        ),
        (one_step("    retries: 3\n"), "", "unknown field `retries`"),
        (
            one_step("    capabilities: [kafka.broker-restart]\n"),
            "steps[0].mutations",
            "`kafka.broker-restart` is destructive and its argument(s) broker_id are not bound",
        ),
        // Destructive by an argument (to zero): its target is bound all the same, or an
        // approval of one group's scaling would let the step take any other group to zero.
        (
            one_step("    capabilities: [kafka.scale-consumers]\n"),
            "steps[0].mutations",
            "`kafka.scale-consumers` is destructive (with replicas = 0) and its argument(s) group are not bound",
        ),
    ];
    for (manifest, field, problem) in cases {
        let dir = folder(&manifest);
        let err = Runbook::load(dir.path()).expect_err(&manifest);
        assert_eq!(err.file, dir.path().join("manifest.yaml"));
        assert_eq!(err.field, field, "{err}");
        assert!(
            err.problem.contains(problem),
            "expected {problem:?} in {err}"
        );
        assert!(!err.fix.is_empty(), "every error says what to do: {err}");
    }
    // Bound to the plan's group, the count left to the step: accepted.
    let bound = folder(&format!(
        "{HEAD}parameters:\n  - {{ name: group, type: string }}\nsteps:\n  - id: a\n    component: components/ok.wasm\n    capabilities: [kafka.scale-consumers]\n    mutations:\n      kafka.scale-consumers: {{ args: {{ group: \"{{params.group}}\" }}, max_calls: 2 }}\n"
    ));
    Runbook::load(bound.path()).expect("a bound target with a free count loads");
}

/// What an unverified manifest can make the host read before the signature is checked (it
/// covers every component's digest) is bounded: each distinct file once, and all of them
/// together at most `MAX_COMPONENT_BYTES`.
#[test]
fn a_manifest_cannot_make_the_host_read_unbounded_component_bytes() {
    use themis_core::manifest::{MAX_COMPONENT_BYTES, MAX_STEPS};
    // As many steps as allowed, all naming one component: read once, shared by every step.
    let chain: String = (0..MAX_STEPS)
        .map(|i| {
            let next = if i + 1 == MAX_STEPS {
                "end".to_owned()
            } else {
                format!("s{}", i + 1)
            };
            format!("  - {{ id: s{i}, component: components/ok.wasm, on: {{ next: {next} }} }}\n")
        })
        .collect();
    let dir = folder(&format!("{HEAD}steps:\n{chain}"));
    let runbook = Runbook::load(dir.path()).expect("64 steps load");
    assert_eq!(runbook.steps.len(), MAX_STEPS);
    assert!(
        runbook
            .steps
            .iter()
            .all(|s| std::sync::Arc::ptr_eq(&s.component_bytes, &runbook.steps[0].component_bytes)),
        "one file named by every step is held once"
    );
    assert_eq!(
        runbook.timeout,
        themis_core::manifest::DEFAULT_RUN_TIMEOUT,
        "a manifest without `timeout` gets the default run budget"
    );
    // Three distinct files, each under the per-file limit, over the total.
    let each = MAX_COMPONENT_BYTES / 3 + 1;
    let big = folder(&format!(
        "{HEAD}steps:\n  - {{ id: a, component: components/a.wasm, on: {{ next: b }} }}\n  - {{ id: b, component: components/b.wasm, on: {{ next: c }} }}\n  - {{ id: c, component: components/c.wasm }}\n"
    ));
    for name in ["a", "b", "c"] {
        std::fs::File::create(big.path().join(format!("components/{name}.wasm")))
            .and_then(|f| f.set_len(each))
            .expect("a large file");
    }
    let err = Runbook::load(big.path()).expect_err("over the total");
    assert_eq!(err.field, "steps[2].component", "{err}");
    assert!(err.problem.contains("more than 64 MiB in all"), "{err}");
}

#[cfg(unix)]
#[test]
fn a_symlink_out_of_the_runbook_folder_is_refused() {
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("evil.wasm");
    std::fs::copy(
        repo().join("tests/runbooks/misbehaving/components/trivial.wasm"),
        &target,
    )
    .expect("copy");
    let dir = folder(&format!(
        "{HEAD}steps:\n  - {{ id: a, component: components/link.wasm }}\n"
    ));
    std::os::unix::fs::symlink(&target, dir.path().join("components/link.wasm")).expect("symlink");
    let err = Runbook::load(dir.path()).expect_err("refused");
    assert_eq!(err.field, "steps[0].component");
    assert!(
        err.problem.contains("cannot read `components/link.wasm`"),
        "{err}"
    );
}

#[test]
fn a_valid_runbook_loads_with_a_stable_digest_and_shared_compilation() {
    let dir = folder(&format!(
        "{HEAD}parameters:\n  - {{ name: n, type: integer, required: false, default: 3 }}\nsteps:\n  - {{ id: a, component: components/ok.wasm, on: {{ next: b, other: end }} }}\n  - {{ id: b, component: components/ok.wasm, capabilities: [metrics.query] }}\n"
    ));
    let first = LoadedRunbook::load_unverified(sandbox(), dir.path()).expect("loads");
    let second = LoadedRunbook::load_unverified(sandbox(), dir.path()).expect("loads");
    assert_eq!(first.runbook.digest, second.runbook.digest);
    assert!(first.runbook.digest.starts_with("sha256:"));
    assert_eq!(first.components[0].digest, first.components[1].digest);
    // Any byte of the manifest changes the digest.
    std::fs::write(
        dir.path().join("manifest.yaml"),
        std::fs::read_to_string(dir.path().join("manifest.yaml"))
            .expect("read")
            .replace("test", "tesT"),
    )
    .expect("write");
    let changed = Runbook::load(dir.path()).expect("loads");
    assert_ne!(changed.digest, first.runbook.digest);
}
