//! `themis runbook build DIR…`: every step crate under DIR/steps/ built for wasm32-wasip2 (one
//! cargo call per Cargo workspace), each component put where the manifest expects it
//! (components/<step>.wasm), then the bundle validated as the host would load it.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const TARGET: &str = "wasm32-wasip2";

/// One step crate and where its component goes.
#[derive(Debug, Clone)]
pub struct StepCrate {
    pub bundle: PathBuf,
    pub step: String,
    pub package: String,
    pub lib: String,
}

/// What a build placed: (bundle, components written).
pub type Built = Vec<(PathBuf, Vec<PathBuf>)>;

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Is the target installed? `None` when rustup is not there to ask (cargo will say).
fn target_installed() -> Option<bool> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .ok()?;
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == TARGET),
    )
}

fn metadata(manifest: &Path) -> Result<Value, String> {
    let out = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .map_err(|e| format!("cannot run cargo: {e} (is Rust installed? https://rustup.rs)"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo cannot read {}: {}",
            manifest.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata: {e}"))
}

/// The step crates of `bundle`, grouped by (workspace root, target dir).
fn discover(
    bundle: &Path,
    into: &mut BTreeMap<(PathBuf, PathBuf), Vec<StepCrate>>,
) -> Result<(), String> {
    let steps = bundle.join("steps");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&steps)
        .map_err(|e| format!("{}: cannot list step crates: {e} (a runbook keeps one crate per step under steps/)", steps.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(format!(
            "{}: no step crate (steps/<step>/Cargo.toml)",
            bundle.display()
        ));
    }
    for dir in dirs {
        let manifest = dir
            .join("Cargo.toml")
            .canonicalize()
            .map_err(|e| e.to_string())?;
        let meta = metadata(&manifest)?;
        let text = |v: &Value| v.as_str().map(PathBuf::from).unwrap_or_default();
        let root = text(&meta["workspace_root"]);
        let target = text(&meta["target_directory"]);
        let package = meta["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))
            .ok_or_else(|| {
                format!(
                    "{} is not a member of the workspace at {}: add its folder to `members`",
                    manifest.display(),
                    root.display()
                )
            })?;
        let lib = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
            })
            .and_then(|t| t["name"].as_str())
            .ok_or_else(|| {
                format!(
                    "{}: the crate has no cdylib target: add `[lib] crate-type = [\"cdylib\", \"rlib\"]`",
                    manifest.display()
                )
            })?;
        into.entry((root, target)).or_default().push(StepCrate {
            bundle: bundle.to_path_buf(),
            step: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            package: package["name"].as_str().unwrap_or_default().to_owned(),
            lib: lib.replace('-', "_"),
        });
    }
    Ok(())
}

/// Build every step of `bundles` and put the components in place.
pub fn build(bundles: &[PathBuf], quiet: bool) -> Result<Built, String> {
    if target_installed() == Some(false) {
        return Err(format!(
            "the {TARGET} target is not installed: run `rustup target add {TARGET}` and build again"
        ));
    }
    let mut groups = BTreeMap::new();
    for bundle in bundles {
        discover(bundle, &mut groups)?;
    }
    let mut built: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for ((root, target), crates) in &groups {
        let mut cmd = cargo();
        cmd.args(["build", "--release", "--target", TARGET, "--manifest-path"])
            .arg(root.join("Cargo.toml"));
        if quiet {
            cmd.arg("--quiet");
        }
        for c in crates {
            cmd.args(["-p", &c.package]);
        }
        let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!(
                "cargo could not build the steps in {} (its errors are above)",
                root.display()
            ));
        }
        for c in crates {
            let from = target
                .join(TARGET)
                .join("release")
                .join(format!("{}.wasm", c.lib));
            let dir = c.bundle.join("components");
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let to = dir.join(format!("{}.wasm", c.step));
            std::fs::copy(&from, &to)
                .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))?;
            built.entry(c.bundle.clone()).or_default().push(to);
        }
    }
    Ok(built.into_iter().collect())
}
