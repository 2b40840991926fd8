//! Runbook manifests: the YAML a team writes next to its step components, parsed, validated and
//! resolved into a [`Runbook`].
//!
//! ```yaml
//! id: restart-consumer-group
//! version: 1.0.0
//! domain: kafka
//! description: What the selector reads to decide whether this runbook fits.
//! parameters:
//!   - { name: group, type: string, description: "consumer group" }
//!   - { name: max_lag, type: integer, required: false, default: 10000 }
//! steps:
//!   - id: check-lag
//!     component: components/check-lag.wasm
//!     capabilities: [kafka.consumer-lag]
//!     timeout: 5s
//!     on: { next: restart }          # branch label -> step id or `end`
//!   - id: restart
//!     component: components/restart.wasm
//!     idempotent: false              # may the action run again after a host stop mid-action?
//!     postcondition_wait: 2m         # read the postcondition again until it holds, this long
//!     capabilities: [kafka.describe-consumers, kafka.restart-consumers]
//!     mutations:                     # what the step may change, bound to the plan
//!       kafka.restart-consumers: { args: { group: "{params.group}" }, max_calls: 1 }
//! verify:                            # how the host tells the fix worked (all optional)
//!   window: 10m                      # wait this long for the alert to resolve
//!   settle: 2m                       # ... and for it to hold this long
//!   metric: 'sum(kafka_consumergroup_lag{consumergroup="{params.group}"})'
//!   expect: "< 100"
//! ```
//!
//! `mutations:` binds a mutating capability's arguments to the runbook's parameters (or to fixed
//! values): every call must pass exactly those, so an approval of the plan covers exactly its
//! targets; `max_calls` caps the calls in one execution. A capability the catalogue marks
//! destructive must be declared with every argument bound.
//!
//! `verify:` is read after a success: the incident is `verifying` until the alert's source says
//! it resolved (and it stayed so for `settle`) and the metric, read after `settle`, meets
//! `expect`; see [`crate::verify`].
//!
//! A step without `on` has the single branch `next` leading to `end`. Component paths resolve
//! inside the runbook's own folder, through cap-std: absolute paths and `..` are refused.

mod params;

pub use params::{
    ParamType, Parameter, ParameterError, bind as bind_params, parse_text as parse_param_text,
};

use crate::capability::{self, Destructive, Domain, Effect};
use crate::files::limits;
use crate::grant::MutationScope;
use crate::graph::{self, Graph};
use crate::types::Param;
use crate::verify::{self, VerifySpec};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component as PathComponent, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const MANIFEST_FILE: &str = "manifest.yaml";
/// The label an action takes unless it names another (the SDK's `DEFAULT_BRANCH`).
pub const DEFAULT_BRANCH: &str = "next";
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// A whole run's wall-clock budget unless the manifest declares one: every step may wait its
/// timeout in every phase, so steps × phases × timeout alone bounds nothing a human would wait
/// for.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The longest run budget a manifest may declare.
pub const MAX_RUN_TIMEOUT: Duration = Duration::from_secs(2 * 60 * 60);
/// The most steps one runbook may have. Every step is loaded, compiled and kept before the
/// bundle's signature can be checked (the signature covers every component's digest), so an
/// unverified manifest must not be able to name an unbounded number of them.
pub const MAX_STEPS: usize = 64;
/// The most component bytes one runbook may hold in all (each distinct file read once, each
/// at most `files::limits::COMPONENT`).
pub const MAX_COMPONENT_BYTES: u64 = 64 << 20;

/// A manifest problem: which file, which field, what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    pub field: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.problem)?;
        if !self.fix.is_empty() {
            write!(f, " ({})", self.fix)?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    id: String,
    version: String,
    domain: String,
    description: String,
    #[serde(default)]
    parameters: Vec<params::RawParameter>,
    steps: Vec<RawStep>,
    /// The whole run's wall-clock budget.
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    verify: Option<RawVerify>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    settle: Option<String>,
    #[serde(default)]
    metric: Option<String>,
    #[serde(default)]
    expect: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    id: String,
    component: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    on: Option<BTreeMap<String, String>>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    mutations: BTreeMap<String, RawMutation>,
    #[serde(default)]
    idempotent: bool,
    #[serde(default)]
    postcondition_wait: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMutation {
    #[serde(default)]
    args: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    max_calls: Option<u32>,
}

/// Where a declared mutation's argument comes from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Binding {
    /// `"{params.<name>}"`: the plan's value of that parameter.
    Param(String),
    /// A fixed value.
    Value(serde_json::Value),
    /// `"{params.<name>[]}"`: any one of the comma-separated values of that (string) parameter —
    /// for a step that acts on a list the plan names, e.g. the pids an approval covers.
    OneOf(String),
}

/// A mutation a step declares: its bound arguments and its cap per execution.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MutationDecl {
    pub args: BTreeMap<String, Binding>,
    pub max_calls: Option<u32>,
}

/// One step of a validated runbook.
#[derive(Clone)]
pub struct StepDef {
    pub id: String,
    pub description: Option<String>,
    /// The component path as written in the manifest (relative to the runbook folder).
    pub component: String,
    pub component_digest: String,
    pub component_bytes: Arc<[u8]>,
    pub capabilities: BTreeSet<String>,
    pub timeout: Duration,
    /// Declared mutations, by capability.
    pub mutations: BTreeMap<String, MutationDecl>,
    /// Running the action twice does what running it once does: after a host stop mid-action
    /// whose postcondition does not hold, the action may run again (else the steps are rolled
    /// back). Default false.
    pub idempotent: bool,
    /// How long a postcondition that does not hold yet is read again before it counts as failed:
    /// what converges (a rollout, a rebalance) is waited for, bounded. None: read once.
    pub postcondition_wait: Option<Duration>,
}

/// The values of a list parameter (`"101,102"`), typed for the argument they bind; anything
/// that is not a well-formed list binds to nothing, which no call matches: fail closed.
fn list_values(value: &serde_json::Value, numeric: bool) -> Vec<serde_json::Value> {
    let Some(text) = value.as_str() else {
        return Vec::new();
    };
    let items: Vec<&str> = text.split(',').map(str::trim).collect();
    if items.iter().any(|i| i.is_empty()) {
        return Vec::new();
    }
    if numeric {
        let parsed: Option<Vec<i64>> = items.iter().map(|i| i.parse().ok()).collect();
        parsed
            .map(|v| v.into_iter().map(serde_json::Value::from).collect())
            .unwrap_or_default()
    } else {
        items.into_iter().map(serde_json::Value::from).collect()
    }
}

impl StepDef {
    /// The declared mutations bound to one execution's parameters. A parameter the plan lacks
    /// binds to `null`, which no call matches: fail closed.
    pub fn scopes(&self, params: &[Param]) -> BTreeMap<String, MutationScope> {
        self.mutations
            .iter()
            .map(|(cap, decl)| {
                let value_of = |name: &str| {
                    params
                        .iter()
                        .find(|p| p.name == name)
                        .map(|p| p.value.to_json())
                        .unwrap_or(serde_json::Value::Null)
                };
                let mut args = BTreeMap::new();
                let mut one_of = BTreeMap::new();
                for (arg, binding) in &decl.args {
                    match binding {
                        Binding::Value(v) => {
                            args.insert(arg.clone(), v.clone());
                        }
                        Binding::Param(name) => {
                            args.insert(arg.clone(), value_of(name));
                        }
                        Binding::OneOf(name) => {
                            let numeric = capability::args_of(cap).iter().any(|(n, kind)| {
                                n == arg
                                    && matches!(
                                        kind,
                                        capability::ArgKind::Id | capability::ArgKind::Count(_)
                                    )
                            });
                            one_of.insert(arg.clone(), list_values(&value_of(name), numeric));
                        }
                    }
                }
                (
                    cap.clone(),
                    MutationScope {
                        args,
                        one_of,
                        max_calls: decl.max_calls,
                    },
                )
            })
            .collect()
    }
}

/// A validated runbook: manifest, graph, and the bytes of every component it names.
#[derive(Clone)]
pub struct Runbook {
    pub id: String,
    pub version: semver::Version,
    pub domain: Domain,
    pub description: String,
    pub parameters: Vec<Parameter>,
    pub steps: Vec<StepDef>,
    pub graph: Graph,
    pub dir: PathBuf,
    pub manifest_bytes: Arc<[u8]>,
    /// How the host tells whether a success fixed the alert (defaults when not declared).
    pub verify: VerifySpec,
    /// The whole run's wall-clock budget: past it no step starts a new phase, and what acted
    /// is rolled back.
    pub timeout: Duration,
    /// `sha256:` over the manifest bytes and every step's id and component digest: what an
    /// approval and the audit bind to.
    pub digest: String,
}

// Hand-written so a debug print shows digests and sizes, not megabytes of component bytes.
impl fmt::Debug for StepDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepDef")
            .field("id", &self.id)
            .field("component", &self.component)
            .field("component_digest", &self.component_digest)
            .field("component_len", &self.component_bytes.len())
            .field("capabilities", &self.capabilities)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Runbook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runbook")
            .field("id", &self.id)
            .field("version", &self.version.to_string())
            .field("domain", &self.domain)
            .field("dir", &self.dir)
            .field("digest", &self.digest)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl Runbook {
    /// Load and validate the runbook in `dir` (which holds `manifest.yaml`).
    pub fn load(dir: &Path) -> Result<Runbook, ManifestError> {
        let file = dir.join(MANIFEST_FILE);
        let err = |field: &str, problem: String, fix: &str| ManifestError {
            file: file.clone(),
            field: field.into(),
            problem,
            fix: fix.into(),
        };
        let root = Dir::open_ambient_dir(dir, ambient_authority()).map_err(|e| {
            err(
                "",
                format!("cannot open the runbook folder: {e}"),
                "pass the folder that holds manifest.yaml",
            )
        })?;
        let bytes = crate::files::read_in(&root, Path::new(MANIFEST_FILE), limits::MANIFEST)
            .map_err(|e| {
                err(
                    "",
                    e.to_string(),
                    "every runbook folder needs a manifest.yaml, a regular file of at most 1 MiB",
                )
            })?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| err("", format!("not UTF-8: {e}"), "save the manifest as UTF-8"))?;
        let raw: RawManifest = crate::yaml::from_str(text).map_err(|e| {
            err(
                "",
                format!("not a valid manifest: {e}"),
                "see the manifest format in docs/ARCHITECTURE.md",
            )
        })?;
        Self::validate(raw, &root, dir, &file, Arc::from(bytes))
    }

    fn validate(
        raw: RawManifest,
        root: &Dir,
        dir: &Path,
        file: &Path,
        manifest_bytes: Arc<[u8]>,
    ) -> Result<Runbook, ManifestError> {
        let err = |field: String, problem: String, fix: String| ManifestError {
            file: file.to_path_buf(),
            field,
            problem,
            fix,
        };
        if !is_identifier(&raw.id) {
            return Err(err(
                "id".into(),
                format!("`{}` is not a valid runbook id", raw.id),
                "use lowercase letters, digits and dashes, e.g. restart-consumer-group".into(),
            ));
        }
        let version = semver::Version::parse(&raw.version).map_err(|e| {
            err(
                "version".into(),
                format!("`{}` is not a semantic version: {e}", raw.version),
                "write it as MAJOR.MINOR.PATCH, e.g. 1.0.0".into(),
            )
        })?;
        let domain = match raw.domain.as_str() {
            "kafka" => Domain::Kafka,
            "kubernetes" => Domain::Kubernetes,
            "postgres" => Domain::Postgres,
            other => {
                return Err(err(
                    "domain".into(),
                    format!("unknown domain `{other}`"),
                    "use kafka, kubernetes or postgres".into(),
                ));
            }
        };
        if raw.description.trim().is_empty() {
            return Err(err(
                "description".into(),
                "is empty".into(),
                "say what situation this runbook fixes: the selector chooses on it".into(),
            ));
        }
        let parameters = params::validate(&raw.parameters)
            .map_err(|(field, problem, fix)| err(field, problem, fix))?;

        if raw.steps.len() > MAX_STEPS {
            return Err(err(
                "steps".into(),
                format!("{} steps, over the host's {MAX_STEPS}", raw.steps.len()),
                "split the work into runbooks of fewer steps".into(),
            ));
        }
        let run_timeout = match &raw.timeout {
            None => DEFAULT_RUN_TIMEOUT,
            Some(text) => humantime::parse_duration(text)
                .ok()
                .filter(|d| *d >= Duration::from_millis(1) && *d <= MAX_RUN_TIMEOUT)
                .ok_or_else(|| {
                    err(
                        "timeout".into(),
                        format!("`{text}` is not a duration between 1ms and 2h"),
                        "write e.g. 15m: the whole run's budget (a rollback is never cut short, so it may end after it)"
                            .into(),
                    )
                })?,
        };
        let mut steps = Vec::with_capacity(raw.steps.len());
        let mut shape = Vec::with_capacity(raw.steps.len());
        // Each distinct component file is read once, and all of them together are bounded.
        let mut components: BTreeMap<&str, (String, Arc<[u8]>)> = BTreeMap::new();
        let mut component_bytes_total: u64 = 0;
        for (i, step) in raw.steps.iter().enumerate() {
            let field = |name: &str| format!("steps[{i}].{name}");
            if !is_identifier(&step.id) {
                return Err(err(
                    field("id"),
                    format!("`{}` is not a valid step id", step.id),
                    "use lowercase letters, digits and dashes".into(),
                ));
            }
            let mut capabilities = BTreeSet::new();
            for (j, name) in step.capabilities.iter().enumerate() {
                let Some(cap) = capability::lookup(name) else {
                    return Err(err(
                        format!("steps[{i}].capabilities[{j}]"),
                        format!("unknown capability `{name}`"),
                        format!(
                            "a {domain} step may be granted: {}",
                            capability::names_for(domain).join(", ")
                        ),
                    ));
                };
                if !cap.allowed_in(domain) {
                    return Err(err(
                        format!("steps[{i}].capabilities[{j}]"),
                        format!("`{name}` is not a capability of the {domain} domain"),
                        format!(
                            "a {domain} runbook may be granted only: {}",
                            capability::names_for(domain).join(", ")
                        ),
                    ));
                }
                capabilities.insert(name.clone());
            }
            let timeout = match &step.timeout {
                None => DEFAULT_STEP_TIMEOUT,
                Some(text) => humantime::parse_duration(text)
                    .ok()
                    .filter(|d| !d.is_zero() && *d <= MAX_STEP_TIMEOUT)
                    .ok_or_else(|| {
                        err(
                            field("timeout"),
                            format!("`{text}` is not a duration between 1ms and 10m"),
                            "write e.g. 500ms, 5s or 2m".into(),
                        )
                    })?,
            };
            let (component_digest, component_bytes) = match components.get(step.component.as_str())
            {
                Some(read) => read.clone(),
                None => {
                    let bytes = read_component(root, &step.component).map_err(|problem| {
                        err(
                            field("component"),
                            problem,
                            "name a .wasm file inside this runbook's folder (build it with scripts/build-runbooks)"
                                .into(),
                        )
                    })?;
                    component_bytes_total += bytes.len() as u64;
                    if component_bytes_total > MAX_COMPONENT_BYTES {
                        return Err(err(
                            field("component"),
                            format!(
                                "the runbook's components come to more than {} MiB in all",
                                MAX_COMPONENT_BYTES >> 20
                            ),
                            "build the components in release mode, or share one component between steps".into(),
                        ));
                    }
                    let read = (crate::digest(&bytes), Arc::<[u8]>::from(bytes));
                    components.insert(step.component.as_str(), read.clone());
                    read
                }
            };
            let branches = match &step.on {
                Some(on) if on.is_empty() => {
                    return Err(err(
                        field("on"),
                        "declares no branch".into(),
                        "leave `on` out for a single `next` branch to the end".into(),
                    ));
                }
                Some(on) => on.iter().map(|(l, t)| (l.clone(), t.clone())).collect(),
                None => vec![(DEFAULT_BRANCH.to_owned(), graph::END.to_owned())],
            };
            let mutations = mutations(i, step, &capabilities, &parameters)
                .map_err(|(field, problem, fix)| err(field, problem, fix))?;
            let postcondition_wait = match &step.postcondition_wait {
                None => None,
                Some(text) => Some(
                    humantime::parse_duration(text)
                        .ok()
                        .filter(|d| !d.is_zero() && *d <= MAX_STEP_TIMEOUT)
                        .ok_or_else(|| {
                            err(
                                field("postcondition_wait"),
                                format!("`{text}` is not a duration between 1ms and 10m"),
                                "write e.g. 30s or 2m: how long a rollout may take to converge"
                                    .into(),
                            )
                        })?,
                ),
            };
            shape.push((step.id.clone(), branches));
            steps.push(StepDef {
                id: step.id.clone(),
                description: step.description.clone(),
                component: step.component.clone(),
                component_digest,
                component_bytes,
                capabilities,
                timeout,
                mutations,
                idempotent: step.idempotent,
                postcondition_wait,
            });
        }
        let graph = Graph::build(&shape).map_err(|e| {
            err(
                "steps".into(),
                e.to_string(),
                "a runbook is an acyclic graph entered at its first step; branch targets are step ids or `end`"
                    .into(),
            )
        })?;
        let verify = verify_spec(raw.verify.unwrap_or_default(), &parameters)
            .map_err(|(field, problem, fix)| err(field, problem, fix))?;
        let digest = runbook_digest(&manifest_bytes, &steps);
        Ok(Runbook {
            id: raw.id,
            version,
            domain,
            description: raw.description,
            parameters,
            steps,
            graph,
            dir: dir.to_path_buf(),
            manifest_bytes,
            verify,
            timeout: run_timeout,
            digest,
        })
    }

    /// Find a step by id.
    pub fn step(&self, id: &str) -> Option<&StepDef> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// What a plan of this runbook changes, for the guard rails: the domain and every mutation
    /// argument bound to a parameter, with the plan's values (`kubernetes:name=checkout,
    /// namespace=shop`). A runbook that mutates without binding a target locks itself
    /// (`postgres:cancel-long-queries`); one that changes nothing has no target.
    pub fn target(&self, params: &BTreeMap<String, serde_json::Value>) -> Option<String> {
        let mutates = self.steps.iter().any(|s| {
            s.capabilities
                .iter()
                .any(|c| capability::lookup(c).is_some_and(|c| c.effect == Effect::Mutate))
        });
        if !mutates {
            return None;
        }
        let bound: BTreeMap<&str, String> = self
            .steps
            .iter()
            .flat_map(|s| s.mutations.values())
            .flat_map(|m| m.args.iter())
            .filter_map(|(arg, binding)| match binding {
                Binding::Param(p) => Some((
                    arg.as_str(),
                    match params.get(p) {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        None => "?".to_owned(),
                    },
                )),
                Binding::OneOf(p) => Some((
                    arg.as_str(),
                    params
                        .get(p)
                        .and_then(|v| v.as_str())
                        .unwrap_or("?")
                        .to_owned(),
                )),
                Binding::Value(_) => None,
            })
            .collect();
        Some(if bound.is_empty() {
            format!("{}:{}", self.domain, self.id)
        } else {
            let parts: Vec<String> = bound.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{}:{}", self.domain, parts.join(","))
        })
    }
}

type FieldError = (String, String, String);

/// Longest PromQL a `verify.metric` may be.
const MAX_METRIC_LEN: usize = 4096;

/// Validate `verify:`: durations within bounds, a metric only with what it must be, and its
/// placeholders naming declared parameters.
fn verify_spec(raw: RawVerify, parameters: &[Parameter]) -> Result<VerifySpec, FieldError> {
    let duration = |field: &str, text: &Option<String>, default: Duration| match text {
        None => Ok(default),
        Some(t) => humantime::parse_duration(t)
            .ok()
            .filter(|d| !d.is_zero() && *d <= verify::MAX_WINDOW)
            .ok_or_else(|| {
                (
                    format!("verify.{field}"),
                    format!("`{t}` is not a duration between 1s and 24h"),
                    "write e.g. 30s, 2m or 10m".to_string(),
                )
            }),
    };
    let window = duration("window", &raw.window, verify::DEFAULT_WINDOW)?;
    let settle = duration("settle", &raw.settle, verify::DEFAULT_SETTLE.min(window))?;
    if settle > window {
        return Err((
            "verify.settle".into(),
            format!(
                "settle ({}) is longer than the window ({})",
                humantime::format_duration(settle),
                humantime::format_duration(window)
            ),
            "the fix must be judged within the window: shorten settle or widen window".into(),
        ));
    }
    let expect = match &raw.expect {
        None => None,
        Some(t) => Some(verify::Expectation::parse(t).map_err(|problem| {
            (
                "verify.expect".to_string(),
                problem,
                "write a comparison and a number, e.g. \"< 100\"".to_string(),
            )
        })?),
    };
    match (&raw.metric, &expect) {
        (Some(m), None) => {
            return Err((
                "verify.metric".into(),
                format!("`{m}` has no `verify.expect`"),
                "say what the value must be once fixed, e.g. expect: \"< 100\"".into(),
            ));
        }
        (None, Some(_)) => {
            return Err((
                "verify.expect".into(),
                "there is no `verify.metric` to compare".into(),
                "add the PromQL query whose value it is".into(),
            ));
        }
        (Some(m), Some(_)) if m.trim().is_empty() || m.len() > MAX_METRIC_LEN => {
            return Err((
                "verify.metric".into(),
                format!("is empty or longer than {MAX_METRIC_LEN} bytes"),
                "give one PromQL query".into(),
            ));
        }
        _ => {}
    }
    let spec = VerifySpec {
        window_secs: window.as_secs(),
        settle_secs: settle.as_secs(),
        metric: raw.metric,
        expect,
    };
    if spec
        .metric
        .as_deref()
        .is_some_and(|m| m.matches("{params.").count() != spec.metric_params().len())
    {
        return Err((
            "verify.metric".into(),
            "has an unclosed `{params.` placeholder".into(),
            "write placeholders as {params.NAME}".into(),
        ));
    }
    for name in spec.metric_params() {
        if !parameters.iter().any(|p| p.name == name) {
            return Err((
                "verify.metric".into(),
                format!("`{{params.{name}}}` names no parameter of this runbook"),
                format!(
                    "declare `{name}` under parameters, or use one of: {}",
                    parameters
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    Ok(spec)
}

/// Validate a step's `mutations:` against its grant and the runbook's parameters.
fn mutations(
    i: usize,
    step: &RawStep,
    granted: &BTreeSet<String>,
    parameters: &[Parameter],
) -> Result<BTreeMap<String, MutationDecl>, FieldError> {
    let mut out = BTreeMap::new();
    for (cap, raw) in &step.mutations {
        let field = format!("steps[{i}].mutations.{cap}");
        let mutating = capability::lookup(cap).is_some_and(|c| c.effect == Effect::Mutate);
        if !granted.contains(cap) || !mutating {
            return Err((
                field,
                format!("`{cap}` is not a mutating capability granted to this step"),
                "declare only mutations the step's `capabilities` grant".into(),
            ));
        }
        let known = capability::args_of(cap);
        let mut args = BTreeMap::new();
        for (arg, value) in &raw.args {
            if !known.iter().any(|(name, _)| name == arg) {
                return Err((
                    format!("{field}.args.{arg}"),
                    format!("{cap} has no argument `{arg}`"),
                    format!(
                        "its arguments are: {}",
                        known.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            let list = value.as_str().and_then(|t| {
                t.strip_prefix("{params.")
                    .and_then(|rest| rest.strip_suffix("[]}"))
            });
            if let Some(name) = list {
                match parameters.iter().find(|p| p.name == name) {
                    Some(p) if p.kind == ParamType::String => {
                        args.insert(arg.clone(), Binding::OneOf(name.to_owned()));
                        continue;
                    }
                    Some(_) => {
                        return Err((
                            format!("{field}.args.{arg}"),
                            format!(
                                "`{{params.{name}[]}}` binds a list, but `{name}` is not a string parameter"
                            ),
                            "declare it `type: string` with a pattern for the comma-separated list"
                                .into(),
                        ));
                    }
                    None => {
                        return Err((
                            format!("{field}.args.{arg}"),
                            format!("`{{params.{name}[]}}` names no parameter of this runbook"),
                            "bind to a declared parameter, or write a fixed value".into(),
                        ));
                    }
                }
            }
            let binding = match value.as_str().and_then(|t| {
                t.strip_prefix("{params.")
                    .and_then(|rest| rest.strip_suffix('}'))
            }) {
                Some(name) if parameters.iter().any(|p| p.name == name) => {
                    Binding::Param(name.to_owned())
                }
                Some(name) => {
                    return Err((
                        format!("{field}.args.{arg}"),
                        format!("`{{params.{name}}}` names no parameter of this runbook"),
                        "bind to a declared parameter, or write a fixed value".into(),
                    ));
                }
                None => Binding::Value(value.clone()),
            };
            args.insert(arg.clone(), binding);
        }
        out.insert(
            cap.clone(),
            MutationDecl {
                args,
                max_calls: raw.max_calls,
            },
        );
    }
    // A destructive capability must say exactly what it acts on, so an approval covers that.
    // One destructive by an argument (scale to zero) binds its target the same way — every
    // other argument — or an approval of one deployment's scaling would let the step take
    // any other to zero; the count itself stays the step's to choose within its bounds.
    for cap in granted {
        let Some(c) = capability::lookup(cap) else {
            continue;
        };
        let free = match c.destructive {
            Destructive::Always => None,
            Destructive::WhenZero(arg) => Some(arg),
            Destructive::No => continue,
        };
        let unbound: Vec<&str> = capability::args_of(cap)
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| Some(*name) != free)
            .filter(|name| {
                !out.get(cap)
                    .is_some_and(|d: &MutationDecl| d.args.contains_key(*name))
            })
            .collect();
        if !unbound.is_empty() {
            return Err((
                format!("steps[{i}].mutations"),
                format!(
                    "`{cap}` is destructive{} and its argument(s) {} are not bound to the plan",
                    free.map(|a| format!(" (with {a} = 0)")).unwrap_or_default(),
                    unbound.join(", ")
                ),
                format!(
                    "declare `{cap}: {{ args: {{ {}: \"{{params.<name>}}\" }}, max_calls: 1 }}` so an approval covers exactly its target",
                    unbound.join(": …, ")
                ),
            ));
        }
        if free.is_none()
            && let Some(decl) = out.get_mut(cap)
            && decl.max_calls.is_none()
        {
            decl.max_calls = Some(1);
        }
    }
    Ok(out)
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn read_component(root: &Dir, path: &str) -> Result<Vec<u8>, String> {
    let p = Path::new(path);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, PathComponent::ParentDir | PathComponent::Prefix(_)))
    {
        return Err(format!(
            "`{path}` leaves the runbook's folder; components must live inside it"
        ));
    }
    // cap-std also refuses symlinks that lead outside the folder.
    crate::files::read_in(root, p, limits::COMPONENT)
        .map_err(|e| format!("cannot read `{path}`: {e}"))
}

fn runbook_digest(manifest: &[u8], steps: &[StepDef]) -> String {
    let mut h = Sha256::new();
    h.update(b"themis-runbook-digest-v1\n");
    h.update((manifest.len() as u64).to_be_bytes());
    h.update(manifest);
    for step in steps {
        h.update(step.id.as_bytes());
        h.update(b"\n");
        h.update(step.component_digest.as_bytes());
        h.update(b"\n");
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::list_values;
    use serde_json::json;

    #[test]
    fn a_list_parameter_binds_its_values_or_nothing() {
        assert_eq!(
            list_values(&json!("101, 102"), true),
            vec![json!(101), json!(102)]
        );
        assert_eq!(
            list_values(&json!("a,b"), false),
            vec![json!("a"), json!("b")]
        );
        for bad in [
            json!("101,,102"),
            json!("101,x"),
            json!(""),
            json!(7),
            json!(null),
        ] {
            assert!(list_values(&bad, true).is_empty(), "{bad} bound something");
        }
    }
}
