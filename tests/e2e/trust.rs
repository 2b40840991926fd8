//! Signed bundles and per-agent trust: every refusal with its precise reason, nothing refused
//! ever reaching the compiler, the audit of refusals and of unsigned mode, provenance on every
//! runbook record, and the compiled-component cache refusing entries it did not write.

use crate::common::{HostSpec, TestHost, demo_trust, repo, text, themis, world_alert};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use themis_core::trust::bundle::{SIGNATURE_FILE, SignatureFile};
use themis_core::trust::keys::SecretKey;
use themis_core::trust::{Refusal, TrustPolicy};
use themis_sandbox::loaded::{LoadedRunbook, RunbookLoadError};
use themis_sandbox::{Sandbox, SandboxConfig};

/// A copy of a shipped (built and signed) bundle in a temporary folder, to tamper with.
fn copy_bundle(relative: &str) -> tempfile::TempDir {
    let from = repo().join(relative);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("components")).expect("mkdir");
    for name in ["manifest.yaml", SIGNATURE_FILE] {
        std::fs::copy(from.join(name), dir.path().join(name))
            .unwrap_or_else(|e| panic!("{relative}/{name}: {e} (run scripts/build-runbooks)"));
    }
    for entry in std::fs::read_dir(from.join("components")).expect("components") {
        let entry = entry.expect("entry");
        std::fs::copy(
            entry.path(),
            dir.path().join("components").join(entry.file_name()),
        )
        .expect("copy component");
    }
    dir
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).expect("read");
    let i = at.min(bytes.len() - 1);
    bytes[i] ^= 0x01;
    std::fs::write(path, bytes).expect("write");
}

fn fresh_sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig::default()).expect("sandbox")
}

/// Load with a sandbox that has compiled nothing; return the refusal and prove nothing of the
/// bundle reached `Component::new`.
fn refusal(dir: &Path, trust: &TrustPolicy) -> Refusal {
    let sandbox = fresh_sandbox();
    let Err(err) = LoadedRunbook::load(&sandbox, dir, trust) else {
        panic!("{} loaded; it must be refused", dir.display());
    };
    assert_eq!(
        sandbox.stats().compiles,
        0,
        "a refused bundle must never reach the compiler"
    );
    let text = err.to_string();
    assert!(
        text.contains(&dir.display().to_string()),
        "the error names the bundle: {text}"
    );
    match err {
        RunbookLoadError::Refused { reason, .. } => reason,
        other => panic!("expected a trust refusal, got {other}"),
    }
}

const KAFKA: &str = "runbooks/kafka/restart-consumer-group";

#[test]
fn an_intact_bundle_signed_by_a_trusted_key_loads_and_names_its_signer() {
    let dir = copy_bundle(KAFKA);
    let sandbox = fresh_sandbox();
    let loaded = LoadedRunbook::load(&sandbox, dir.path(), &demo_trust(KAFKA)).expect("loads");
    let p = loaded.provenance();
    let sig: SignatureFile = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(SIGNATURE_FILE)).expect("sig"),
    )
    .expect("parses");
    assert_eq!(p.signer, sig.key_id);
    assert_eq!(
        (p.runbook.as_str(), p.version.as_str()),
        ("restart-consumer-group", "1.4.0")
    );
    assert!(sandbox.stats().compiles > 0);
}

#[test]
fn an_unsigned_bundle_is_refused() {
    let dir = copy_bundle(KAFKA);
    std::fs::remove_file(dir.path().join(SIGNATURE_FILE)).expect("rm");
    assert_eq!(refusal(dir.path(), &demo_trust(KAFKA)), Refusal::Unsigned);
}

#[test]
fn one_changed_byte_of_the_manifest_is_refused_before_parsing() {
    let dir = copy_bundle(KAFKA);
    flip_byte(&dir.path().join("manifest.yaml"), 40);
    let reason = refusal(dir.path(), &demo_trust(KAFKA));
    assert!(
        matches!(reason, Refusal::ManifestChanged { .. }),
        "{reason}"
    );
}

#[test]
fn one_changed_byte_of_a_component_is_refused() {
    let dir = copy_bundle(KAFKA);
    let component = dir.path().join("components/restart-consumers.wasm");
    flip_byte(&component, 5000);
    let reason = refusal(dir.path(), &demo_trust(KAFKA));
    match reason {
        Refusal::ComponentChanged { path, .. } => {
            assert_eq!(path, "components/restart-consumers.wasm")
        }
        other => panic!("expected component-changed, got {other}"),
    }
}

#[test]
fn one_changed_byte_of_the_signature_is_refused() {
    let dir = copy_bundle(KAFKA);
    let sig_path = dir.path().join(SIGNATURE_FILE);
    let mut sig: SignatureFile =
        serde_json::from_str(&std::fs::read_to_string(&sig_path).expect("read")).expect("parse");
    let mut raw = hex::decode(&sig.signature).expect("hex");
    raw[10] ^= 0x01;
    sig.signature = hex::encode(raw);
    std::fs::write(&sig_path, sig.to_json()).expect("write");
    let reason = refusal(dir.path(), &demo_trust(KAFKA));
    assert!(matches!(reason, Refusal::BadSignature { .. }), "{reason}");

    // Editing a signed field (here: claiming another version) breaks the signature as well.
    let dir = copy_bundle(KAFKA);
    let sig_path = dir.path().join(SIGNATURE_FILE);
    let text = std::fs::read_to_string(&sig_path).expect("read");
    std::fs::write(
        &sig_path,
        text.replace("\"version\": \"1.4.0\"", "\"version\": \"9.0.0\""),
    )
    .expect("write");
    let reason = refusal(dir.path(), &demo_trust(KAFKA));
    assert!(matches!(reason, Refusal::BadSignature { .. }), "{reason}");

    // And a signature file that is not one at all is named as such.
    std::fs::write(&sig_path, "{ not json").expect("write");
    let reason = refusal(dir.path(), &demo_trust(KAFKA));
    assert!(matches!(reason, Refusal::Malformed(_)), "{reason}");
}

#[test]
fn a_bundle_signed_by_another_team_is_refused_by_this_agent() {
    // The Postgres team's bundle, validly signed, offered to an agent that trusts the Kafka team.
    let dir = copy_bundle("runbooks/postgres/terminate-blocker");
    let reason = refusal(dir.path(), &demo_trust(KAFKA));
    match &reason {
        Refusal::UntrustedKey { trusted, .. } => {
            assert!(trusted.contains("demo-kafka-team"), "{reason}")
        }
        other => panic!("expected untrusted-key, got {other}"),
    }
    // …and loads for the agent that trusts its publisher.
    LoadedRunbook::load(
        &fresh_sandbox(),
        dir.path(),
        &demo_trust("runbooks/postgres/terminate-blocker"),
    )
    .expect("the postgres agent trusts it");
}

#[test]
fn a_component_swapped_for_another_validly_signed_component_is_refused() {
    // restart-consumer-group's `restart` step replaced by scale-consumer's `scale-out` — both
    // built and signed by the same, trusted Kafka key.
    let dir = copy_bundle(KAFKA);
    std::fs::copy(
        repo().join("runbooks/kafka/scale-consumer/components/scale-out.wasm"),
        dir.path().join("components/restart-consumers.wasm"),
    )
    .expect("swap");
    let reason = refusal(dir.path(), &demo_trust(KAFKA));
    assert!(
        matches!(&reason, Refusal::ComponentChanged { path, .. } if path == "components/restart-consumers.wasm"),
        "{reason}"
    );
}

#[test]
fn an_older_signed_version_than_the_pinned_minimum_is_refused() {
    let dir = copy_bundle(KAFKA);
    let mut trust = demo_trust(KAFKA);
    trust.min_versions.insert(
        "restart-consumer-group".into(),
        semver::Version::new(1, 5, 0),
    );
    let reason = refusal(dir.path(), &trust);
    assert_eq!(
        reason,
        Refusal::Downgrade {
            runbook: "restart-consumer-group".into(),
            version: "1.4.0".into(),
            minimum: "1.5.0".into()
        }
    );
    // The pin at the bundle's own version admits it.
    trust.min_versions.insert(
        "restart-consumer-group".into(),
        semver::Version::new(1, 4, 0),
    );
    LoadedRunbook::load(&fresh_sandbox(), dir.path(), &trust).expect("at the minimum loads");
}

#[test]
fn allow_unsigned_admits_an_unsigned_bundle_but_never_a_tampered_one() {
    let dir = copy_bundle(KAFKA);
    let mut trust = demo_trust(KAFKA);
    trust.allow_unsigned = true;
    flip_byte(&dir.path().join("components/restart-consumers.wasm"), 5000);
    let reason = refusal(dir.path(), &trust);
    assert!(
        matches!(reason, Refusal::ComponentChanged { .. }),
        "{reason}"
    );
    let dir = copy_bundle(KAFKA);
    std::fs::remove_file(dir.path().join(SIGNATURE_FILE)).expect("rm");
    let loaded = LoadedRunbook::load(&fresh_sandbox(), dir.path(), &trust).expect("loads");
    assert_eq!(loaded.provenance().signer, "unsigned");
}

/// An agent file in `dir` whose only runbook is `bundle` and which trusts `key`.
fn agent_file(dir: &Path, bundle: &Path, key: &str) -> PathBuf {
    let file = dir.join("agent.yaml");
    std::fs::write(
        &file,
        format!(
            "name: postgres\ndomain: postgres\nrunbooks: [{}]\ntrust: {{ keys: [{}] }}\nroutes: [ {{ alert: PostgresLockWaits }} ]\npolicy: {{ min_confidence: 0.8, destructive: [postgres.terminate-backend] }}\nrules:\n  - {{ runbook: terminate-blocker, params: {{ pid: \"{{labels.pid}}\" }}, confidence: 0.9, reasoning: test }}\n",
            bundle.display(),
            repo().join(format!("keys/demo/{key}.pub")).display()
        ),
    )
    .expect("write agent");
    file
}

async fn start(
    dir: &Path,
    agent: &Path,
    allow_unsigned: bool,
    world: &str,
) -> Result<TestHost, String> {
    HostSpec {
        agents: vec![agent.to_path_buf()],
        sandbox: Arc::new(fresh_sandbox()),
        dry_run: true,
        options: themis_agent::RuntimeOptions {
            allow_unsigned,
            ..Default::default()
        },
        ..HostSpec::new(dir, "agents/postgres.yaml", world)
    }
    .start()
    .await
    .map_err(|e| e.to_string())
}

fn audit_records(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .expect("audit")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect()
}

#[tokio::test]
async fn a_refused_bundle_stops_the_agent_and_the_refusal_is_audited() {
    let work = tempfile::tempdir().expect("tempdir");
    let bundle = repo().join("runbooks/postgres/terminate-blocker");
    let agent = agent_file(work.path(), &bundle, "demo-kafka-team");
    let err = start(work.path(), &agent, false, "agent-postgres-lock-waits.yaml")
        .await
        .err()
        .expect("refused");
    assert!(err.contains("terminate-blocker"), "{err}");
    assert!(err.contains("not trusted"), "{err}");
    let records = audit_records(work.path());
    let refusal = records
        .iter()
        .find(|r| r["kind"] == "bundle-refused")
        .expect("the refusal is audited");
    assert_eq!(refusal["data"]["reason"], "untrusted-key");
    assert_eq!(refusal["agent"], "postgres");
    assert!(
        themis_agent::audit::verify::verify(&work.path().join("audit.jsonl"))
            .expect("reads")
            .is_ok()
    );
}

#[tokio::test]
async fn unsigned_mode_marks_every_record_and_provenance_says_unsigned() {
    let work = tempfile::tempdir().expect("tempdir");
    let bundle = copy_bundle("runbooks/postgres/terminate-blocker");
    std::fs::remove_file(bundle.path().join(SIGNATURE_FILE)).expect("rm");
    let agent = agent_file(work.path(), bundle.path(), "demo-postgres-team");
    let world = "agent-postgres-lock-waits.yaml";
    assert!(
        start(work.path(), &agent, false, world)
            .await
            .err()
            .expect("refused without the flag")
            .contains("unsigned")
    );
    let host = start(work.path(), &agent, true, world)
        .await
        .expect("starts with --allow-unsigned");
    let mut alert = world_alert(world);
    alert.labels.push(themis_core::types::Pair {
        key: "pid".into(),
        value: "4242".into(),
    });
    host.runtime.handle_alert(alert).await.expect("handled");
    let records = audit_records(work.path());
    let since_flag: Vec<&Value> = records
        .iter()
        .skip_while(|r| r["kind"] != "unsigned-mode")
        .collect();
    assert!(since_flag.len() > 3, "the alert was audited");
    for r in &since_flag {
        assert_eq!(r["mode"], "allow-unsigned", "unmarked record: {r}");
    }
    let decision = since_flag
        .iter()
        .find(|r| r["kind"] == "decision")
        .expect("a decision");
    assert_eq!(decision["data"]["provenance"]["signer"], "unsigned");
}

#[tokio::test]
async fn every_record_about_a_runbook_carries_its_provenance() {
    let work = tempfile::tempdir().expect("tempdir");
    let world = "agent-kafka-scale.yaml";
    let host = HostSpec {
        sandbox: Arc::new(fresh_sandbox()),
        ..HostSpec::new(work.path(), "agents/kafka.yaml", world)
    }
    .start()
    .await
    .expect("runtime");
    host.runtime
        .handle_alert(world_alert(world))
        .await
        .expect("handled");
    let kafka_key =
        themis_core::trust::keys::PublicKey::read(&repo().join("keys/demo/demo-kafka-team.pub"))
            .expect("key");
    let records = audit_records(work.path());
    let mut seen = std::collections::BTreeSet::new();
    for r in &records {
        let kind = r["kind"].as_str().unwrap_or_default();
        if ["probe", "decision", "execution-start", "phase", "result"].contains(&kind) {
            let p = &r["data"]["provenance"];
            assert_eq!(p["signer"], kafka_key.id.as_str(), "{kind}: {r}");
            assert!(
                p["digest"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("sha256:"))
            );
            assert!(p["version"].is_string() && p["runbook"].is_string(), "{r}");
            seen.insert(kind.to_owned());
        }
        assert!(r.get("mode").is_none(), "signed mode marks nothing");
    }
    assert_eq!(seen.len(), 5, "saw {seen:?}");
}

#[tokio::test]
async fn a_planted_cache_entry_is_never_executed() {
    let cache = tempfile::tempdir().expect("tempdir");
    let config = || SandboxConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..SandboxConfig::default()
    };
    let trust = demo_trust("tests/runbooks/scripted");
    // Warm the cache with two different components.
    let first = Sandbox::new(config()).expect("sandbox");
    let scripted = LoadedRunbook::load(&first, &repo().join("tests/runbooks/scripted"), &trust)
        .expect("loads");
    let misbehaving =
        LoadedRunbook::load(&first, &repo().join("tests/runbooks/misbehaving"), &trust)
            .expect("loads");
    let victim = scripted.components[0].digest.clone();
    let planted = misbehaving.components[0].digest.clone();
    assert_ne!(victim, planted);
    let compiled_first = first.stats().compiles;
    assert!(compiled_first >= 2);
    drop(first);

    // A second host start reads everything from the cache and compiles nothing.
    let warm = Sandbox::new(config()).expect("sandbox");
    LoadedRunbook::load(&warm, &repo().join("tests/runbooks/scripted"), &trust).expect("loads");
    assert_eq!(warm.stats().compiles, 0, "{:?}", warm.stats());
    assert!(warm.stats().cache_hits > 0);
    drop(warm);

    // Plant: a genuine entry this host wrote — for another component — under the victim's name,
    // and junk under the name of every other scripted component.
    let namer = themis_sandbox::cache::CompiledCache::open(
        cache.path(),
        Sandbox::new(SandboxConfig::default())
            .expect("sandbox")
            .engine(),
    )
    .expect("cache");
    let victim_file = cache.path().join(namer.entry_name(&victim));
    std::fs::copy(cache.path().join(namer.entry_name(&planted)), &victim_file).expect("plant");
    for c in &scripted.components[1..] {
        if c.digest != victim {
            std::fs::write(cache.path().join(namer.entry_name(&c.digest)), b"junk").expect("junk");
        }
    }

    let after = Sandbox::new(config()).expect("sandbox");
    let reloaded = LoadedRunbook::load(&after, &repo().join("tests/runbooks/scripted"), &trust)
        .expect("loads");
    let stats = after.stats();
    assert!(stats.cache_rejected >= 1, "{stats:?}");
    assert_eq!(
        stats.compiles, stats.cache_rejected,
        "every refused entry is recompiled: {stats:?}"
    );
    // What runs is the victim's own code: the scripted executor scenarios pass on this sandbox
    // (the planted misbehaving component would loop, trap or blow its memory instead)…
    let after = Arc::new(after);
    for scenario in ["executor-branch.yaml", "executor-rollback-order.yaml"] {
        let run = themis_testkit::scenario::run(
            &after,
            &repo().join("tests/scenarios").join(scenario),
            false,
        )
        .await
        .expect("runs");
        assert!(run.passed(), "{scenario}: {:?}", run.failures);
    }
    assert_eq!(reloaded.components[0].digest, victim);
    // …and the entry was rewritten by this host, so the next start hits it again.
    let again = Sandbox::new(config()).expect("sandbox");
    LoadedRunbook::load(&again, &repo().join("tests/runbooks/scripted"), &trust).expect("loads");
    assert_eq!(again.stats().compiles, 0, "{:?}", again.stats());
    assert_eq!(again.stats().cache_rejected, 0);
}

#[test]
fn keygen_sign_and_verify_from_the_command_line() {
    let work = tempfile::tempdir().expect("tempdir");
    let stem = work.path().join("platform-team");
    let out = themis(&["keygen", "--out", &stem.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let secret = work.path().join("platform-team.key");
    let public = work.path().join("platform-team.pub");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret)
            .expect("key")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
    let key = SecretKey::read(&secret).expect("reads");
    assert!(text(&out.stdout).contains(key.id.as_str()));
    assert!(
        !text(&out.stdout).contains(
            std::fs::read_to_string(&secret)
                .expect("secret")
                .lines()
                .last()
                .and_then(|l| l.split_whitespace().last())
                .expect("seed")
        ),
        "keygen never prints the private key"
    );
    let again = themis(&["keygen", "--out", &stem.display().to_string()]);
    assert_eq!(again.status.code(), Some(2), "never overwrites a key");

    let bundle = copy_bundle(KAFKA);
    let dir = bundle.path().display().to_string();
    let sign = themis(&[
        "runbook",
        "sign",
        &dir,
        "--key",
        &secret.display().to_string(),
    ]);
    assert!(sign.status.success(), "{}", text(&sign.stderr));
    let verify = |trust: &Path| {
        themis(&[
            "runbook",
            "verify",
            &dir,
            "--trust",
            &trust.display().to_string(),
        ])
    };
    let ok = verify(&public);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains(key.id.as_str()));
    // A folder of keys works too; a key that did not sign it does not.
    assert!(verify(work.path()).status.success());
    let wrong = verify(&repo().join("keys/demo/demo-kafka-team.pub"));
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        text(&wrong.stderr).contains("not trusted"),
        "{}",
        text(&wrong.stderr)
    );

    flip_byte(
        &bundle.path().join("components/restart-consumers.wasm"),
        100,
    );
    let tampered = verify(&public);
    assert_eq!(tampered.status.code(), Some(1));
    assert!(
        text(&tampered.stderr).contains(
            "component `components/restart-consumers.wasm` is not the one that was signed"
        ),
        "{}",
        text(&tampered.stderr)
    );

    // A `runbook.sig` that is a symlink is replaced, never written through.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let victim = elsewhere.path().join("victim.txt");
    std::fs::write(&victim, "not a signature").expect("victim");
    let sig = bundle.path().join(SIGNATURE_FILE);
    std::fs::remove_file(&sig).expect("rm runbook.sig");
    std::os::unix::fs::symlink(&victim, &sig).expect("symlink");
    let resign = themis(&[
        "runbook",
        "sign",
        &dir,
        "--key",
        &secret.display().to_string(),
    ]);
    assert!(resign.status.success(), "{}", text(&resign.stderr));
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "not a signature",
        "signing wrote through the symlink"
    );
    assert!(
        !std::fs::symlink_metadata(&sig)
            .expect("runbook.sig")
            .file_type()
            .is_symlink(),
        "runbook.sig is a file of its own now"
    );
    assert!(
        verify(&public).status.success(),
        "the re-signed bundle verifies"
    );

    // A private key others can read is refused, with the fix.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let loose = themis(&[
        "runbook",
        "sign",
        &dir,
        "--key",
        &secret.display().to_string(),
    ]);
    assert_eq!(loose.status.code(), Some(2));
    assert!(
        text(&loose.stderr).contains("chmod 600"),
        "{}",
        text(&loose.stderr)
    );
}

#[test]
fn runbook_list_shows_each_agents_catalog_with_signers() {
    let out = themis(&["runbook", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    let kafka_key =
        themis_core::trust::keys::PublicKey::read(&repo().join("keys/demo/demo-kafka-team.pub"))
            .expect("key");
    let row = rows
        .iter()
        .find(|r| r["provenance"]["runbook"] == "restart-consumer-group")
        .expect("listed");
    assert_eq!(row["agent"], "kafka");
    assert_eq!(row["provenance"]["signer"], kafka_key.id.as_str());
    assert!(rows.iter().all(|r| r["status"] == "loaded"));
    assert!(rows.iter().any(|r| r["agent"] == "postgres"));
}

#[test]
fn a_cache_folder_others_can_write_or_a_readable_key_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let trust = demo_trust("tests/runbooks/scripted");
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let config = || SandboxConfig {
        cache_dir: Some(cache.clone()),
        ..SandboxConfig::default()
    };
    let load = |sandbox: &Sandbox| {
        LoadedRunbook::load(sandbox, &repo().join("tests/runbooks/scripted"), &trust)
            .expect("loads")
    };
    load(&Sandbox::new(config()).expect("sandbox"));
    let mode = std::fs::metadata(&cache)
        .expect("cache")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "a new cache folder is private");
    let warm = Sandbox::new(config()).expect("sandbox");
    load(&warm);
    assert_eq!(warm.stats().compiles, 0);

    // A key others can read could have been planted (or read, and used to forge entries).
    std::fs::set_permissions(
        cache.join("host.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let refused = Sandbox::new(config()).expect("sandbox starts without the cache");
    load(&refused);
    assert_eq!(refused.stats().cache_hits, 0, "{:?}", refused.stats());
    assert!(refused.stats().compiles > 0);
    std::fs::set_permissions(
        cache.join("host.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");

    // A folder anyone can write to is refused the same way.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let refused = Sandbox::new(config()).expect("sandbox starts without the cache");
    load(&refused);
    assert_eq!(refused.stats().cache_hits, 0, "{:?}", refused.stats());
}

#[test]
fn a_newer_signature_format_and_a_missing_folder_are_named_as_such() {
    let dir = copy_bundle(KAFKA);
    let sig_path = dir.path().join(SIGNATURE_FILE);
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(&sig_path).expect("read")).expect("json");
    v["format"] = "themis-runbook-signature/v2".into();
    v["transparency_log"] = "https://log.example/entry/1".into();
    std::fs::write(&sig_path, v.to_string()).expect("write");
    assert_eq!(
        refusal(dir.path(), &demo_trust(KAFKA)),
        Refusal::UnknownFormat("themis-runbook-signature/v2".into())
    );
    let missing = dir.path().join("no-such-bundle");
    assert!(matches!(
        refusal(&missing, &demo_trust(KAFKA)),
        Refusal::Unreadable(_)
    ));
}

#[tokio::test]
async fn a_version_pin_on_a_runbook_the_agent_does_not_load_is_refused() {
    let work = tempfile::tempdir().expect("tempdir");
    let bundle = repo().join("runbooks/postgres/terminate-blocker");
    let agent = agent_file(work.path(), &bundle, "demo-postgres-team");
    let text = std::fs::read_to_string(&agent).expect("read").replace(
        "trust: {",
        "trust: { min_versions: { terminate-blockr: 1.0.0 },",
    );
    std::fs::write(&agent, text).expect("write");
    let err = start(work.path(), &agent, false, "agent-postgres-lock-waits.yaml")
        .await
        .err()
        .expect("refused");
    assert!(err.contains("terminate-blockr"), "{err}");
}
