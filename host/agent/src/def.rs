//! Agent definitions (`agents/*.yaml`): name, domain, the runbooks it may choose from, the probes
//! it runs first, the alerts it owns, its policy and its rules.
//!
//! ```yaml
//! name: kafka
//! domain: kafka
//! description: Kafka brokers and consumer groups.
//! runbooks: [../runbooks/kafka/check-broker-health, ...]   # relative to this file, or
//!   # oci://HOST/REPO/<id>@sha256:<digest>: pulled into the bundle cache at start (pinned only)
//! probes: [../runbooks/kafka/triage-probe]                   # read-only runbooks run first
//! probe_params:                                             # the operator's values of probe
//!   triage-probe: { cpu_query: 'sum by (broker) (…)' }      #   parameters (queries for your
//!                                                           #   metric names); labels never
//!                                                           #   override them
//! trust:                                                    # who may publish to this agent
//!   keys: [../keys/demo/kafka-team.pub]                     # .pub files or folders of them
//!   min_versions: { restart-consumer-group: 1.0.0 }         # older signed bundles are refused
//! llm: { base_url: http://127.0.0.1:11434/v1, model: m }   # optional; see triage::llm::config
//! labels:                                                   # parameters from real labels,
//!   group: [consumergroup, group, consumer_group]           #   the first present wins
//! routes:
//!   - alert: KafkaConsumerLag                               # alert name
//!     labels: { severity: critical }                        # optional label conditions
//!   - matchers: ['alertname=~"KubePod(CrashLooping|NotReady)"', 'namespace!~"kube-.*"']
//! policy:
//!   min_confidence: 0.8
//!   destructive: [kafka.set-broker-config]                  # adds to the catalogue's list
//!   destructive_opt_out:                                    # removes one, by name, with why
//!     k8s.rollout-restart: "stateless tier behind a load balancer"
//!   approvers: []                                           # empty: anyone but the requester
//!   approval_ttl: 30m
//!   follow_up_depth: 3                                      # follow-ups chained per incident
//!   suggestion_floor: 0.4                                   # a model's plan below: suggestion only
//! guard:                                                    # remediation-loop rails (defaults shown)
//!   cooldown: 5m                                            # per (target, runbook) after a run
//!   breaker: { failures: 3, window: 1h, open_for: 1h }      # per (target, runbook)
//!   backoff: { initial: 60s, max: 10m }                     # per alert fingerprint
//!   max_runs_per_hour: 20                                   # changing runs of this agent
//!   ineffective_limit: 2                                    # verified no-fixes, then a human
//! rules: [ { runbook: ..., when: {...}, params: {...}, confidence: 0.9, reasoning: ... } ]
//! follow_ups:                                               # after a runbook, propose another
//!   - { after: check-broker-health, runbook: adjust-broker-gc, when: {...}, ... }
//! ```

use crate::triage::llm::config::{LlmConfig, RawLlm};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use themis_core::capability::{self, Destructive, Domain, Effect};
use themis_core::conditions;
use themis_core::guard::Rails;
use themis_core::label_map::LabelMap;
use themis_core::matchers::Matcher;
use themis_core::policy::{
    DEFAULT_APPROVAL_TTL, DEFAULT_FOLLOW_UP_DEPTH, DestructiveList, Policy,
    default_suggestion_floor,
};
use themis_core::rules::Rule;
use themis_core::trust::TrustPolicy;
use themis_registry::BundleRef;

/// The shortest `policy.approval_ttl` taken: a zero one would expire every proposal before
/// anyone could answer it (tests answer within a second; people take minutes).
const MIN_APPROVAL_TTL: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The alert's name exactly (`alertname`).
    #[serde(default)]
    pub alert: Option<String>,
    /// Conditions on label values (`severity: critical`, `"> 0"`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Alertmanager's matchers over the labels and `alertname`: `alertname=~"KubePod.*"`.
    #[serde(default)]
    pub matchers: Vec<Matcher>,
}

impl Route {
    /// Does this route own an alert named `alert_name` with these labels? The alert's name and
    /// its `alertname` label are one thing.
    pub fn owns(&self, alert_name: &str, labels: &BTreeMap<String, String>) -> bool {
        let mut with_name = labels.clone();
        with_name.insert("alertname".into(), alert_name.to_owned());
        self.alert.as_deref().is_none_or(|a| a == alert_name)
            && self
                .labels
                .iter()
                .all(|(k, cond)| with_name.get(k).is_some_and(|v| conditions::holds(cond, v)))
            && self.matchers.iter().all(|m| m.matches(&with_name))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    min_confidence: f64,
    #[serde(default)]
    destructive: Vec<String>,
    #[serde(default)]
    destructive_opt_out: BTreeMap<String, String>,
    #[serde(default)]
    approvers: Vec<String>,
    #[serde(default)]
    approval_ttl: Option<String>,
    #[serde(default)]
    follow_up_depth: Option<usize>,
    #[serde(default)]
    suggestion_floor: Option<f64>,
}

/// After runbook `after` finishes, propose `rule.runbook` when `rule.when` holds over its outputs
/// (`outputs.<step>.<key>`) and the alert's facts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowUp {
    pub after: String,
    #[serde(flatten)]
    pub rule: Rule,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuard {
    #[serde(default)]
    cooldown: Option<String>,
    #[serde(default)]
    breaker: RawBreaker,
    #[serde(default)]
    backoff: RawBackoff,
    #[serde(default)]
    max_runs_per_hour: Option<u32>,
    #[serde(default)]
    ineffective_limit: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    #[serde(default)]
    failures: Option<u32>,
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    open_for: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    #[serde(default)]
    initial: Option<String>,
    #[serde(default)]
    max: Option<String>,
}

impl RawGuard {
    /// The rails, defaults filled in; `(field, problem)` for a value that cannot work.
    fn rails(&self) -> Result<Rails, (String, String)> {
        let d = Rails::default();
        let dur = |field: &str, v: &Option<String>, default| match v {
            None => Ok(default),
            Some(t) => humantime::parse_duration(t)
                .map_err(|e| (field.to_owned(), format!("`{t}` is not a duration: {e}"))),
        };
        let rails = Rails {
            cooldown: dur("guard.cooldown", &self.cooldown, d.cooldown)?,
            breaker_failures: self.breaker.failures.unwrap_or(d.breaker_failures),
            breaker_window: dur(
                "guard.breaker.window",
                &self.breaker.window,
                d.breaker_window,
            )?,
            breaker_open: dur(
                "guard.breaker.open_for",
                &self.breaker.open_for,
                d.breaker_open,
            )?,
            backoff_initial: dur(
                "guard.backoff.initial",
                &self.backoff.initial,
                d.backoff_initial,
            )?,
            backoff_max: dur("guard.backoff.max", &self.backoff.max, d.backoff_max)?,
            max_runs_per_hour: self.max_runs_per_hour.unwrap_or(d.max_runs_per_hour),
            ineffective_limit: self.ineffective_limit.unwrap_or(d.ineffective_limit),
        };
        if rails.ineffective_limit == 0 {
            return Err((
                "guard.ineffective_limit".into(),
                "at least 1: the number of runs verified ineffective after which a human decides"
                    .into(),
            ));
        }
        if rails.breaker_failures == 0 {
            return Err((
                "guard.breaker.failures".into(),
                "at least 1: the number of failed runs that opens the breaker".into(),
            ));
        }
        if rails.backoff_max < rails.backoff_initial {
            return Err((
                "guard.backoff.max".into(),
                "must be at least guard.backoff.initial".into(),
            ));
        }
        Ok(rails)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    #[serde(default)]
    keys: Vec<PathBuf>,
    #[serde(default)]
    min_versions: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: String,
    domain: Domain,
    #[serde(default)]
    description: String,
    runbooks: Vec<PathBuf>,
    #[serde(default)]
    probes: Vec<PathBuf>,
    #[serde(default)]
    probe_params: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    trust: RawTrust,
    #[serde(default)]
    llm: Option<RawLlm>,
    #[serde(default)]
    labels: LabelMap,
    routes: Vec<Route>,
    policy: RawPolicy,
    #[serde(default)]
    guard: RawGuard,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    follow_ups: Vec<FollowUp>,
}

/// A validated agent definition; runbook paths are resolved against the file's folder.
#[derive(Debug, Clone)]
pub struct AgentDef {
    pub name: String,
    pub domain: Domain,
    pub description: String,
    pub file: PathBuf,
    pub runbooks: Vec<PathBuf>,
    /// Catalog runbooks named by OCI reference, pinned by digest (`oci://HOST/REPO@sha256:…`):
    /// fetched into the bundle cache at start and verified like local ones.
    pub oci_runbooks: Vec<BundleRef>,
    pub probes: Vec<PathBuf>,
    /// Probe id → parameter → value, set by the operator (checked against the probe when it is
    /// loaded). They win over what the `labels:` map finds: an alert never changes them.
    pub probe_params: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// The publishers this agent trusts; `allow_unsigned` is set by the caller, never by a file.
    pub trust: TrustPolicy,
    /// The LLM endpoint; without one the agent's rules choose.
    pub llm: Option<LlmConfig>,
    /// Where the parameters probes, rules and the model use come from in an alert's labels.
    pub labels: LabelMap,
    pub routes: Vec<Route>,
    pub policy: Policy,
    /// The rails against remediation loops (`guard:`; safe defaults).
    pub guard: Rails,
    pub rules: Vec<Rule>,
    pub follow_ups: Vec<FollowUp>,
}

#[derive(Debug, thiserror::Error)]
#[error("{}: {}{}", .file.display(), field_prefix(.field), .problem)]
pub struct AgentDefError {
    pub file: PathBuf,
    /// Empty when the problem is the whole file (unreadable, not YAML).
    pub field: String,
    pub problem: String,
}

/// `field: `, or nothing for a problem of the whole file.
fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

impl AgentDef {
    pub fn load(file: &Path) -> Result<AgentDef, AgentDefError> {
        let err = |field: &str, problem: String| AgentDefError {
            file: file.to_path_buf(),
            field: field.into(),
            problem,
        };
        let text = themis_core::files::read_text(file, themis_core::files::limits::DEFINITION)
            .map_err(|e| err("", e.to_string()))?;
        let raw: RawAgent = themis_core::yaml::from_str(&text)
            .map_err(|e| err("", format!("not a valid agent definition: {e}")))?;
        let base = file.parent().unwrap_or(Path::new("."));
        if !(0.0..=1.0).contains(&raw.policy.min_confidence) {
            return Err(err(
                "policy.min_confidence",
                "must be between 0 and 1".into(),
            ));
        }
        for (i, cap) in raw.policy.destructive.iter().enumerate() {
            if !capability::lookup(cap).is_some_and(|c| c.effect == Effect::Mutate) {
                return Err(err(
                    &format!("policy.destructive[{i}]"),
                    format!("`{cap}` is not a capability that changes anything"),
                ));
            }
        }
        for (cap, why) in &raw.policy.destructive_opt_out {
            let field = format!("policy.destructive_opt_out.{cap}");
            if !capability::lookup(cap).is_some_and(|c| c.destructive != Destructive::No) {
                return Err(err(
                    &field,
                    format!(
                        "`{cap}` is not on the catalogue's destructive list: there is nothing to opt out of"
                    ),
                ));
            }
            if why.trim().is_empty() {
                return Err(err(
                    &field,
                    "say why this agent may run it without a human (the reason is audited)".into(),
                ));
            }
            if raw.policy.destructive.contains(cap) {
                return Err(err(
                    &field,
                    format!("`{cap}` is also listed under policy.destructive: choose one"),
                ));
            }
        }
        let suggestion_floor = raw
            .policy
            .suggestion_floor
            .unwrap_or(default_suggestion_floor(raw.policy.min_confidence));
        if !(0.0..=raw.policy.min_confidence).contains(&suggestion_floor) {
            return Err(err(
                "policy.suggestion_floor",
                "must be between 0 and policy.min_confidence".into(),
            ));
        }
        let follow_up_depth = raw
            .policy
            .follow_up_depth
            .unwrap_or(DEFAULT_FOLLOW_UP_DEPTH);
        if follow_up_depth > 10 {
            return Err(err(
                "policy.follow_up_depth",
                "at most 10 follow-ups per incident".into(),
            ));
        }
        let ttl = match &raw.policy.approval_ttl {
            None => DEFAULT_APPROVAL_TTL,
            Some(t) => humantime::parse_duration(t).map_err(|e| {
                err(
                    "policy.approval_ttl",
                    format!("`{t}` is not a duration: {e}"),
                )
            })?,
        };
        if ttl < MIN_APPROVAL_TTL {
            return Err(err(
                "policy.approval_ttl",
                format!(
                    "{} leaves no time to answer: every proposal would expire before a human could read it; at least {}",
                    humantime::format_duration(ttl),
                    humantime::format_duration(MIN_APPROVAL_TTL)
                ),
            ));
        }
        raw.labels
            .check()
            .map_err(|(field, problem)| err(&field, problem))?;
        let guard = raw
            .guard
            .rails()
            .map_err(|(field, problem)| err(&field, problem))?;
        if raw.routes.is_empty() {
            return Err(err("routes", "an agent must own at least one alert".into()));
        }
        if let Some(i) = raw
            .routes
            .iter()
            .position(|r| r.alert.is_none() && r.matchers.is_empty())
        {
            return Err(err(
                &format!("routes[{i}]"),
                "owns every alert: give `alert: NAME` or `matchers: ['alertname=~\"...\"']`".into(),
            ));
        }
        let all_rules = raw
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("rules[{i}]"), r))
            .chain(
                raw.follow_ups
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (format!("follow_ups[{i}]"), &f.rule)),
            );
        for (field, rule) in all_rules {
            if !(0.0..=1.0).contains(&rule.confidence) {
                return Err(err(
                    &format!("{field}.confidence"),
                    "must be between 0 and 1".into(),
                ));
            }
            for (fact, cond) in &rule.when {
                conditions::check(cond).map_err(|p| err(&format!("{field}.when.{fact}"), p))?;
            }
        }
        let mut local = Vec::new();
        let mut oci_runbooks = Vec::new();
        for (i, entry) in raw.runbooks.iter().enumerate() {
            match entry.to_str() {
                Some(text) if text.starts_with(themis_registry::reference::SCHEME) => {
                    let field = format!("runbooks[{i}]");
                    let r = BundleRef::parse(text).map_err(|e| err(&field, e.to_string()))?;
                    if r.digest().is_none() {
                        return Err(err(
                            &field,
                            format!(
                                "{r} is not pinned: name it as oci://HOST/REPOSITORY@sha256:DIGEST (`themis runbook push` prints it), so the registry cannot change what runs"
                            ),
                        ));
                    }
                    oci_runbooks.push(r);
                }
                _ => local.push(base.join(entry)),
            }
        }
        let mut trust = TrustPolicy::default();
        for (i, path) in raw.trust.keys.iter().enumerate() {
            trust
                .trust_keys_at(&base.join(path))
                .map_err(|e| err(&format!("trust.keys[{i}]"), e.to_string()))?;
        }
        for (runbook, version) in &raw.trust.min_versions {
            let v = semver::Version::parse(version).map_err(|e| {
                err(
                    &format!("trust.min_versions.{runbook}"),
                    format!("`{version}` is not a semantic version: {e}"),
                )
            })?;
            trust.min_versions.insert(runbook.clone(), v);
        }
        let llm = match raw.llm {
            None => None,
            Some(l) => {
                Some(LlmConfig::from_raw(l).map_err(|(field, problem)| err(&field, problem))?)
            }
        };
        Ok(AgentDef {
            name: raw.name,
            domain: raw.domain,
            description: raw.description,
            file: file.to_path_buf(),
            runbooks: local,
            oci_runbooks,
            probes: raw.probes.iter().map(|p| base.join(p)).collect(),
            probe_params: raw.probe_params,
            trust,
            llm,
            labels: raw.labels,
            routes: raw.routes,
            policy: Policy {
                min_confidence: raw.policy.min_confidence,
                suggestion_floor,
                destructive: DestructiveList {
                    added: raw.policy.destructive.into_iter().collect(),
                    opted_out: raw.policy.destructive_opt_out,
                },
                approvers: raw.policy.approvers.into_iter().collect::<BTreeSet<_>>(),
                approval_ttl: ttl,
                follow_up_depth,
            },
            guard,
            rules: raw.rules,
            follow_ups: raw.follow_ups,
        })
    }

    /// Does this agent own the alert?
    pub fn routes(&self, alert_name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.routes.iter().any(|r| r.owns(alert_name, labels))
    }
}

/// Every capability granted to any step of a runbook that mutates: a probe must have none.
pub fn mutating_grants(runbook: &themis_core::manifest::Runbook) -> Vec<String> {
    runbook
        .steps
        .iter()
        .flat_map(|s| s.capabilities.iter())
        .filter(|c| capability::lookup(c).is_some_and(|c| c.effect == Effect::Mutate))
        .cloned()
        .collect()
}

#[cfg(test)]
mod route_tests {
    use super::Route;
    use std::collections::BTreeMap;

    fn route(yaml: &str) -> Route {
        themis_core::yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_route_owns_by_name_conditions_and_matchers_with_alertname_as_a_label() {
        let labels: BTreeMap<String, String> = [("namespace".to_owned(), "shop".to_owned())].into();
        let family = route(
            "matchers: ['alertname=~\"KubePod(CrashLooping|NotReady)\"', 'namespace!~\"kube-.*\"']",
        );
        assert!(family.owns("KubePodCrashLooping", &labels));
        assert!(family.owns("KubePodNotReady", &labels));
        assert!(!family.owns("KubeNodeNotReady", &labels));
        let system: BTreeMap<String, String> =
            [("namespace".to_owned(), "kube-system".to_owned())].into();
        assert!(!family.owns("KubePodCrashLooping", &system));
        let exact = route("alert: PostgresLockWaits\nlabels: { severity: critical }");
        let critical: BTreeMap<String, String> =
            [("severity".to_owned(), "critical".to_owned())].into();
        assert!(exact.owns("PostgresLockWaits", &critical));
        assert!(!exact.owns("PostgresLockWaits", &labels));
        // `alertname` in a condition is the alert's name.
        let by_label =
            route("labels: { alertname: PostgresLockWaits }\nmatchers: ['severity=\"critical\"']");
        assert!(by_label.owns("PostgresLockWaits", &critical));
    }

    #[test]
    fn a_bad_matcher_is_refused_when_the_agent_file_is_read() {
        let e = themis_core::yaml::from_str::<Route>("matchers: ['alertname=~\"(\"']")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("not a regular expression"), "{e}");
    }
}
