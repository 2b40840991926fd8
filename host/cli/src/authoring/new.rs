//! `themis runbook new DIR --domain D`: a runbook that builds, tests and passes out of the box —
//! manifest, one step crate on the SDK with all four phases, a native unit test against the SDK's
//! mocks, one scenario — from the templates in `host/cli/templates/`.

use std::path::{Path, PathBuf};
use themis_core::capability::Domain;

const WORKSPACE: &str = include_str!("../../templates/workspace.toml");
const STEP_TOML: &str = include_str!("../../templates/step.toml");

struct Template {
    step: &'static str,
    manifest: &'static str,
    source: &'static str,
    scenario: &'static str,
}

fn template(domain: Domain) -> Template {
    match domain {
        Domain::Kafka => Template {
            step: "restart",
            manifest: include_str!("../../templates/kafka/manifest.yaml"),
            source: include_str!("../../templates/kafka/step.rs"),
            scenario: include_str!("../../templates/kafka/scenario.yaml"),
        },
        Domain::Kubernetes => Template {
            step: "restart",
            manifest: include_str!("../../templates/kubernetes/manifest.yaml"),
            source: include_str!("../../templates/kubernetes/step.rs"),
            scenario: include_str!("../../templates/kubernetes/scenario.yaml"),
        },
        Domain::Postgres => Template {
            step: "cancel",
            manifest: include_str!("../../templates/postgres/manifest.yaml"),
            source: include_str!("../../templates/postgres/step.rs"),
            scenario: include_str!("../../templates/postgres/scenario.yaml"),
        },
    }
}

/// What `new` made, for the message that says what to do next.
pub struct Created {
    pub dir: PathBuf,
    pub id: String,
    pub files: Vec<PathBuf>,
    /// The folder holds its own Cargo workspace (false: an enclosing one must list its steps).
    pub own_workspace: bool,
}

/// The runbook SDK to depend on: `--sdk`, else this checkout's `runbook-sdk/` (the SDK is not on
/// crates.io yet, so a path is the only honest dependency).
pub fn find_sdk(given: Option<&Path>) -> Result<PathBuf, String> {
    let candidate = match given {
        Some(p) => p.to_path_buf(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../runbook-sdk"),
    };
    let sdk = candidate.canonicalize().map_err(|_| {
        format!(
            "the runbook SDK is not at {}: pass --sdk PATH to a checkout's runbook-sdk/ (or set THEMIS_SDK)",
            candidate.display()
        )
    })?;
    if !sdk.join("Cargo.toml").is_file() {
        return Err(format!(
            "{} has no Cargo.toml: --sdk must name the runbook-sdk/ folder",
            sdk.display()
        ));
    }
    Ok(sdk)
}

/// An id is what agents, signatures and registries call the runbook: lowercase words and dashes.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && !id.ends_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{id}` is not a runbook id: use lowercase letters, digits and dashes, starting with a letter (e.g. restart-consumer-group); pass --id"
        ))
    }
}

/// The nearest folder above `dir` with a Cargo workspace, if any.
fn enclosing_workspace(dir: &Path) -> Option<PathBuf> {
    let mut at = dir.parent();
    while let Some(p) = at {
        if std::fs::read_to_string(p.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]")) {
            return Some(p.to_path_buf());
        }
        at = p.parent();
    }
    None
}

/// Does cargo read `manifest` as part of a workspace?
fn cargo_accepts(manifest: &Path) -> bool {
    std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
            "--manifest-path",
        ])
        .arg(manifest)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn create(dir: &Path, domain: Domain, id: Option<&str>, sdk: &Path) -> Result<Created, String> {
    if dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(format!(
            "{} exists and is not empty: choose a new folder",
            dir.display()
        ));
    }
    let id = match id {
        Some(id) => id.to_owned(),
        None => dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                format!(
                    "{} has no name to take the id from: pass --id",
                    dir.display()
                )
            })?,
    };
    check_id(&id)?;
    let t = template(domain);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    let abs = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let step_dir = abs.join("steps").join(t.step);
    let relative = |from: &Path| {
        pathdiff::diff_paths(sdk, from)
            .unwrap_or_else(|| sdk.to_path_buf())
            .display()
            .to_string()
    };
    let crate_name = format!("runbook-{id}-{}", t.step);
    // In its own workspace the SDK is named once, in DIR/Cargo.toml; as a member of an enclosing
    // workspace (whose `members` already match DIR/steps/*) the step names it itself.
    let files = |own_workspace: bool| {
        let sdk_dependency = if own_workspace {
            "themis-runbook-sdk.workspace = true".to_owned()
        } else {
            format!(
                "themis-runbook-sdk = {{ path = \"{}\" }}",
                relative(&step_dir)
            )
        };
        let fill = |text: &str| {
            text.replace("{{id}}", &id)
                .replace("{{step}}", t.step)
                .replace("{{crate}}", &crate_name)
                .replace("{{sdk_dependency}}", &sdk_dependency)
                .replace("{{sdk_from_workspace}}", &relative(&abs))
        };
        let mut files: Vec<(PathBuf, String)> = vec![
            (abs.join("manifest.yaml"), fill(t.manifest)),
            (step_dir.join("Cargo.toml"), fill(STEP_TOML)),
            (step_dir.join("src/lib.rs"), fill(t.source)),
            (
                abs.join("scenarios").join(format!("{}.yaml", t.step)),
                fill(t.scenario),
            ),
            (abs.join(".gitignore"), "/target\n".into()),
        ];
        if own_workspace {
            files.push((abs.join("Cargo.toml"), fill(WORKSPACE)));
        }
        files
    };
    let write = |files: &[(PathBuf, String)]| -> Result<(), String> {
        for (path, text) in files {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("{}: cannot create: {e}", parent.display()))?;
            }
            std::fs::write(path, text)
                .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
        }
        Ok(())
    };
    let mut own_workspace = enclosing_workspace(&abs).is_none();
    let mut written = files(own_workspace);
    write(&written)?;
    // Inside another workspace that does not list the new step, cargo would refuse to build it:
    // then the runbook gets a workspace of its own after all.
    if !own_workspace && !cargo_accepts(&step_dir.join("Cargo.toml")) {
        own_workspace = true;
        written = files(true);
        write(&written)?;
    }
    Ok(Created {
        dir: dir.to_path_buf(),
        id,
        files: written.into_iter().map(|(p, _)| p).collect(),
        own_workspace,
    })
}
