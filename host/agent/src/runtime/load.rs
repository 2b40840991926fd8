//! Loading agents: definitions, then every runbook and probe verified against the agent's trust
//! policy and compiled, then the checks that make a definition coherent (domains, read-only
//! probes, pins, rules naming loaded runbooks, destructive grants declaring their targets).

use super::{RuntimeError, RuntimeOptions, RuntimeParts, UNSIGNED_MODE};
use crate::def::{AgentDef, mutating_grants};
use crate::triage::Selector;
use crate::triage::llm::LlmSelector;
use crate::triage::llm::config::LlmConfig;
use crate::triage::rules::RuleSelector;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use themis_core::capability;
use themis_core::manifest::Runbook;
use themis_core::manifest::bind_params;
use themis_core::rules::Rule;
use themis_core::trust::Provenance;
use themis_sandbox::loaded::{LoadedRunbook, RunbookLoadError};

/// Which selector the agents use.
#[derive(Debug, Clone, Default)]
pub enum SelectorChoice {
    /// The agent's `llm:` if it has one, else its rules.
    #[default]
    AsConfigured,
    /// The rules, whatever the agent configures.
    Rules,
    /// An LLM: this endpoint, or (`None`) the agent's own `llm:`.
    Llm(Option<LlmConfig>),
}

/// A loaded agent: its definition, its verified catalog and probes, its selector.
pub struct Agent {
    pub def: AgentDef,
    pub catalog: BTreeMap<String, LoadedRunbook>,
    pub probes: Vec<LoadedRunbook>,
    /// Catalog runbooks that could not be fetched this start (registry down, not yet cached):
    /// id → why. Choosing one escalates; the rest of the agent works.
    pub unavailable: BTreeMap<String, String>,
    pub selector: Arc<dyn Selector>,
}

impl Agent {
    /// The provenance of a catalog runbook, for audit records that name one.
    pub fn provenance(&self, runbook: Option<&str>) -> Option<Provenance> {
        runbook
            .and_then(|id| self.catalog.get(id))
            .map(LoadedRunbook::provenance)
    }
}

fn build_selector(
    def: &AgentDef,
    choice: &SelectorChoice,
) -> Result<Arc<dyn Selector>, RuntimeError> {
    let rules = RuleSelector::new(def.rules.clone());
    let llm = match choice {
        SelectorChoice::AsConfigured => def.llm.clone(),
        SelectorChoice::Rules => None,
        SelectorChoice::Llm(Some(config)) => Some(config.clone()),
        SelectorChoice::Llm(None) => Some(def.llm.clone().ok_or_else(|| RuntimeError::Agent {
            agent: def.name.clone(),
            message: "the LLM selector was asked for, but the agent has no `llm:` endpoint (configure one, or pass --llm-base-url and --llm-model)".into(),
        })?),
    };
    Ok(match llm {
        None => Arc::new(rules),
        Some(config) => {
            Arc::new(
                LlmSelector::new(config, rules).map_err(|message| RuntimeError::Agent {
                    agent: def.name.clone(),
                    message,
                })?,
            )
        }
    })
}

pub(super) async fn load_agents(
    parts: &RuntimeParts,
    options: &RuntimeOptions,
) -> Result<Vec<Agent>, RuntimeError> {
    let audit = &parts.audit;
    let allow_unsigned = options.allow_unsigned;
    if allow_unsigned {
        audit.set_mode(UNSIGNED_MODE);
        tracing::warn!(
            mode = UNSIGNED_MODE,
            "--allow-unsigned: runbook bundles without a signature will be loaded and run; never use this outside development"
        );
        audit.append("host", None, "unsigned-mode", json!({ "warning": "bundles without a signature are accepted; every record of this run is marked" }))?;
    }
    let mut agents: Vec<Agent> = Vec::new();
    for file in &parts.agent_files {
        let mut def = AgentDef::load(file)?;
        if agents.iter().any(|a| a.def.name == def.name) {
            return Err(RuntimeError::Agent {
                agent: def.name.clone(),
                message: format!(
                    "{} defines an agent of the same name as another file",
                    file.display()
                ),
            });
        }
        def.trust.allow_unsigned = allow_unsigned;
        let fail = |message: String| RuntimeError::Agent {
            agent: def.name.clone(),
            message,
        };
        let load = |dir: &Path| match LoadedRunbook::load(&parts.sandbox, dir, &def.trust) {
            Ok(loaded) => Ok(loaded),
            Err(e) => {
                if let RunbookLoadError::Refused { bundle, reason } = &e {
                    audit.append(&def.name, None, "bundle-refused", json!({ "bundle": bundle, "reason": reason.code(), "message": reason.to_string() }))?;
                }
                Err(fail(e.to_string()))
            }
        };
        let (fetched, unavailable) =
            fetch_oci_runbooks(&def, options.bundle_cache.as_deref(), audit).await?;
        let mut runbooks = Vec::new();
        for dir in def.runbooks.iter().chain(&fetched) {
            runbooks.push(load(dir)?);
        }
        let mut probes = Vec::new();
        for dir in &def.probes {
            probes.push(load(dir)?);
        }
        check_catalog(
            &def,
            &runbooks.iter().map(|r| &r.runbook).collect::<Vec<_>>(),
            &probes.iter().map(|r| &r.runbook).collect::<Vec<_>>(),
        )
        .map_err(fail)?;
        let catalog: BTreeMap<String, LoadedRunbook> = runbooks
            .into_iter()
            .map(|rb| (rb.runbook.id.clone(), rb))
            .collect();
        warn_demo_keys(&def, audit)?;
        warn_opt_outs(&def, audit)?;
        let selector = build_selector(&def, &options.selector)?;
        agents.push(Agent {
            def,
            catalog,
            probes,
            unavailable,
            selector,
        });
    }
    Ok(agents)
}

/// Fetch the agent's OCI catalog entries into the bundle cache (or find them there). A registry
/// that cannot be reached makes that runbook unavailable — audited, and the agent still starts
/// with the rest of its catalog; anything the registry answered that does not verify stops the
/// agent, exactly as a refused local bundle does.
async fn fetch_oci_runbooks(
    def: &AgentDef,
    cache: Option<&Path>,
    audit: &crate::audit::AuditLog,
) -> Result<(Vec<std::path::PathBuf>, BTreeMap<String, String>), RuntimeError> {
    let mut dirs = Vec::new();
    let mut unavailable = BTreeMap::new();
    if def.oci_runbooks.is_empty() {
        return Ok((dirs, unavailable));
    }
    let fail = |message: String| RuntimeError::Agent {
        agent: def.name.clone(),
        message,
    };
    let cache = cache.ok_or_else(|| {
        fail("the agent names runbooks by OCI reference, but no bundle cache is configured (set `cache_dir:` in themis.yaml or THEMIS_CACHE_DIR)".into())
    })?;
    for r in &def.oci_runbooks {
        match themis_registry::fetch_pinned(r, cache, &def.trust).await {
            Ok(fetch) => {
                match &fetch {
                    themis_registry::CatalogFetch::Pulled(dir) => {
                        audit.append(
                            &def.name,
                            None,
                            "bundle-pulled",
                            json!({ "reference": r.to_string(), "dir": dir }),
                        )?;
                    }
                    themis_registry::CatalogFetch::Replaced { dir, why } => {
                        audit.append(
                            &def.name,
                            None,
                            "bundle-pulled",
                            json!({ "reference": r.to_string(), "dir": dir, "replaced_cached": why }),
                        )?;
                    }
                    themis_registry::CatalogFetch::Cached(_) => {}
                }
                dirs.push(fetch.dir().to_path_buf());
            }
            Err(e) if e.leaves_unavailable() => {
                let why = e.to_string();
                tracing::warn!(agent = %def.name, reference = %r, %why, "catalog runbook unavailable: the registry could not be asked and the bundle is not cached");
                audit.append(
                    &def.name,
                    None,
                    "bundle-unavailable",
                    json!({ "reference": r.to_string(), "runbook": r.runbook_id(), "reason": why }),
                )?;
                unavailable.insert(
                    r.runbook_id().to_owned(),
                    format!("its bundle {r} is not cached and could not be pulled: {why}"),
                );
            }
            Err(e) => {
                audit.append(
                    &def.name,
                    None,
                    "bundle-refused",
                    json!({ "bundle": r.to_string(), "reason": "oci", "message": e.to_string() }),
                )?;
                return Err(fail(format!("{r}: {e}")));
            }
        }
    }
    Ok((dirs, unavailable))
}

/// Every check the start makes of an agent's catalog and probes beyond each bundle's own
/// verification (signature, trust, digests, minimum versions), on the runbooks as loaded: pure,
/// so `themis serve --check` asks exactly what a start refuses. The agent's registry entries
/// count by the id their reference names, fetched or not.
pub fn check_catalog(
    def: &AgentDef,
    runbooks: &[&Runbook],
    probes: &[&Runbook],
) -> Result<(), String> {
    // One id once, whether the registry is up or not: the references name theirs.
    let mut ids: BTreeMap<&str, String> = BTreeMap::new();
    for r in &def.oci_runbooks {
        if let Some(first) = ids.insert(r.runbook_id(), r.to_string()) {
            return Err(format!(
                "runbook `{}` is in the catalog twice ({first} and {r}): name one bundle per runbook id",
                r.runbook_id()
            ));
        }
    }
    for rb in runbooks {
        if rb.domain != def.domain {
            return Err(format!(
                "runbook `{}` is a {} runbook; a {} agent can only run its own domain's",
                rb.id, rb.domain, def.domain
            ));
        }
        check_destructive_targets(def, rb)?;
        // Which of two bundles of one id would run must never depend on the load order. A
        // fetched bundle is the one its reference names (the pull checked it): not a second.
        let fetched = def
            .oci_runbooks
            .iter()
            .any(|r| r.runbook_id() == rb.id && !def.runbooks.contains(&rb.dir));
        if fetched {
            continue;
        }
        if let Some(first) = ids.insert(&rb.id, rb.dir.display().to_string()) {
            return Err(format!(
                "runbook `{}` is in the catalog twice ({first} and {}): name one bundle per runbook id",
                rb.id,
                rb.dir.display()
            ));
        }
    }
    for probe in probes {
        let mutating = mutating_grants(probe);
        if !mutating.is_empty() {
            return Err(format!(
                "probe `{}` is granted {}: probes must be read-only",
                probe.id,
                mutating.join(", ")
            ));
        }
        check_probe_params(def, probe)?;
    }
    if let Some(id) = def
        .probe_params
        .keys()
        .find(|id| !probes.iter().any(|p| &p.id == *id))
    {
        return Err(format!(
            "probe_params.{id}: no probe of this agent is `{id}`"
        ));
    }
    // A pin on a name the agent does not load protects nothing: most likely a typo.
    if let Some(pinned) = def
        .trust
        .min_versions
        .keys()
        .find(|id| !ids.contains_key(id.as_str()) && !probes.iter().any(|p| &p.id == *id))
    {
        return Err(format!(
            "trust.min_versions pins `{pinned}`, which is none of the agent's runbooks or probes"
        ));
    }
    let rules: Vec<&Rule> = def
        .rules
        .iter()
        .chain(def.follow_ups.iter().map(|f| &f.rule))
        .collect();
    if let Some(r) = rules.iter().find(|r| !ids.contains_key(r.runbook.as_str())) {
        return Err(format!(
            "a rule names runbook `{}`, which is not in the agent's runbooks",
            r.runbook
        ));
    }
    check_param_facts(def, &rules)
}

/// A probe is given its parameters from the alert's labels through the agent's `labels:` map, and
/// an alert may lack any label: so each parameter must come from the map or a default, and one
/// the map gives must be optional (the probe then says why it cannot look, rather than the alert
/// failing to bind).
fn check_probe_params(def: &AgentDef, probe: &Runbook) -> Result<(), String> {
    let fixed = def.probe_params.get(&probe.id);
    for (name, value) in fixed.into_iter().flatten() {
        let Some(decl) = probe.parameters.iter().find(|p| &p.name == name) else {
            return Err(format!(
                "probe_params.{}.{name}: probe `{}` has no parameter `{name}`",
                probe.id, probe.id
            ));
        };
        let one = BTreeMap::from([(name.clone(), value.clone())]);
        if let Err(e) = bind_params(std::slice::from_ref(decl), &one) {
            return Err(format!("probe_params.{}.{name}: {e}", probe.id));
        }
    }
    for p in &probe.parameters {
        if fixed.is_some_and(|f| f.contains_key(&p.name)) {
            continue;
        }
        let mapped = def.labels.params().any(|m| m == p.name);
        if p.default.is_none() && !mapped {
            return Err(format!(
                "probe `{}` takes parameter `{}`, which has no default and no `labels:` entry of the agent gives it: add `labels: {{ {}: [<label>, ...] }}`",
                probe.id, p.name, p.name
            ));
        }
        if mapped && p.required && p.default.is_none() {
            return Err(format!(
                "probe `{}` requires parameter `{}`, but an alert may lack its labels: declare it `required: false` and let the probe's precondition say what is missing",
                probe.id, p.name
            ));
        }
    }
    Ok(())
}

/// `param.<name>` in a rule's conditions or templates must be a parameter the `labels:` map
/// gives; otherwise the rule could never hold (or render), which is a typo.
fn check_param_facts(def: &AgentDef, rules: &[&Rule]) -> Result<(), String> {
    for rule in rules {
        let templates = rule.params.values().filter_map(|v| v.as_str());
        let named = rule
            .when
            .keys()
            .filter_map(|k| k.strip_prefix("param."))
            .map(str::to_owned)
            .chain(templates.flat_map(|t| {
                t.split("{param.")
                    .skip(1)
                    .filter_map(|rest| rest.split('}').next())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            }));
        for name in named {
            if !def.labels.params().any(|m| m == name) {
                return Err(format!(
                    "a rule for `{}` reads `param.{name}`, which no `labels:` entry of the agent gives",
                    rule.runbook
                ));
            }
        }
    }
    Ok(())
}

/// A capability the agent adds to the destructive list must, like the catalogue's own, be
/// declared with its target in every runbook that is granted it: an approval then covers
/// exactly that target.
fn check_destructive_targets(def: &AgentDef, rb: &Runbook) -> Result<(), String> {
    for step in &rb.steps {
        for cap in step
            .capabilities
            .intersection(&def.policy.destructive.added)
        {
            let bound: BTreeSet<&str> = step
                .mutations
                .get(cap)
                .map(|m| m.args.keys().map(String::as_str).collect())
                .unwrap_or_default();
            let targets: Vec<&str> = capability::args_of(cap)
                .iter()
                .map(|(name, kind)| (*name, *kind))
                .filter(|(_, kind)| !matches!(kind, capability::ArgKind::Count(_)))
                .map(|(name, _)| name)
                .filter(|name| !bound.contains(name))
                .collect();
            if !targets.is_empty() {
                return Err(format!(
                    "runbook `{}` step `{}` is granted {cap}, which this agent marks destructive, without binding {} under `mutations:`; an approval could not say what it covers",
                    rb.id,
                    step.id,
                    targets.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// Demo keys: logged once per process and agent (an eval starts a runtime per scenario),
/// audited on every start.
fn warn_demo_keys(def: &AgentDef, audit: &crate::audit::AuditLog) -> Result<(), RuntimeError> {
    let demo: Vec<String> = def
        .trust
        .keys
        .values()
        .filter(|k| themis_core::trust::keys::DEMO_KEY_IDS.contains(&k.id.as_str()))
        .map(|k| format!("{} ({})", k.id, k.name))
        .collect();
    if demo.is_empty() {
        return Ok(());
    }
    static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let first = WARNED
        .lock()
        .map(|mut w| w.insert(def.name.clone()))
        .unwrap_or(true);
    if first {
        tracing::warn!(agent = %def.name, keys = %demo.join(", "), "the agent trusts a committed DEMO key whose private half is public: fine for the demo and tests, never in production");
    }
    audit.append(&def.name, None, "demo-key-trusted", json!({ "keys": demo }))?;
    Ok(())
}

/// A destructive capability this agent runs without a human: warned and audited on every start.
fn warn_opt_outs(def: &AgentDef, audit: &crate::audit::AuditLog) -> Result<(), RuntimeError> {
    let opted = &def.policy.destructive.opted_out;
    if opted.is_empty() {
        return Ok(());
    }
    for (cap, why) in opted {
        tracing::warn!(agent = %def.name, capability = %cap, reason = %why, "destructive capability opted out of human approval by the agent file");
    }
    audit.append(
        &def.name,
        None,
        "destructive-opt-out",
        json!({ "opted_out": opted, "file": def.file }),
    )?;
    Ok(())
}
