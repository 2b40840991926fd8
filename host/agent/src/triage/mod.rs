//! Triage: choosing one runbook of the agent's catalog for an alert — or escalating.
//!
//! The selector only *chooses*: a runbook id from the candidates (or "escalate"), values for that
//! runbook's declared parameters, a confidence and its reasoning. Policy decides what happens
//! next. This module holds the trait, the facts a choice rests on, and the deterministic
//! [`rules::RuleSelector`].

pub mod llm;
pub mod rules;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use themis_core::guard::RunbookHistory;
use themis_core::manifest::Parameter;
use themis_core::types::Alert;

/// A runbook the selector may choose, as the selector sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub id: String,
    pub version: String,
    pub description: String,
    pub parameters: Vec<Parameter>,
}

/// What a read-only probe runbook found.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub runbook: String,
    pub outcome: String,
    /// `step.key` → value, from the probe's passing phases.
    pub outputs: BTreeMap<String, String>,
    pub evidence: Vec<(String, String)>,
    /// Why the probe found nothing, when it did not succeed: the phase that stopped it and its
    /// own words ("the alert has `pod` but no `deployment`; …"), for the human.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Everything a selector is given.
#[derive(Debug, Clone, Serialize)]
pub struct SelectionInput {
    pub agent: String,
    pub alert: Alert,
    pub candidates: Vec<Candidate>,
    pub probes: Vec<ProbeResult>,
    /// The parameters the agent's `labels:` map found in the alert.
    pub params: BTreeMap<String, String>,
    /// What earlier runs of the catalog's runbooks on this alert's target came to (the guard
    /// rails' record): a runbook that did not fix it before is evidence against it now.
    pub history: Vec<RunbookHistory>,
}

impl SelectionInput {
    /// The flat fact namespace conditions are written against: `alert`, `labels.<k>`,
    /// `annotations.<k>`, `param.<name>` (through the agent's `labels:` map),
    /// `probe.<step>.<key>`, `history.<runbook>.<runs|failed|effective|ineffective|unknown|last>`.
    pub fn facts(&self) -> BTreeMap<String, String> {
        let mut facts = BTreeMap::new();
        facts.insert("alert".to_string(), self.alert.name.clone());
        for p in &self.alert.labels {
            facts.insert(format!("labels.{}", p.key), p.value.clone());
        }
        for p in &self.alert.annotations {
            facts.insert(format!("annotations.{}", p.key), p.value.clone());
        }
        for (k, v) in &self.params {
            facts.insert(format!("param.{k}"), v.clone());
        }
        for probe in &self.probes {
            for (k, v) in &probe.outputs {
                facts.insert(format!("probe.{k}"), v.clone());
            }
        }
        for h in &self.history {
            let key = |k: &str| format!("history.{}.{k}", h.runbook);
            facts.insert(key("runs"), h.runs.to_string());
            facts.insert(key("failed"), h.failed.to_string());
            facts.insert(key("effective"), h.effective.to_string());
            facts.insert(key("ineffective"), h.ineffective.to_string());
            facts.insert(key("unknown"), h.unknown.to_string());
            if let Some(last) = &h.last {
                facts.insert(key("last"), last.clone());
            }
        }
        facts
    }
}

/// The selector's answer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Selection {
    /// A candidate's id, or `None` to escalate.
    pub runbook: Option<String>,
    pub params: BTreeMap<String, Value>,
    pub confidence: f64,
    pub reasoning: String,
    /// `rules` or `llm`.
    pub selector: String,
    /// For an LLM: the prompt and the raw output, for the audit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_output: Option<String>,
    /// For an LLM: every request made (at most two), its raw answer or why it failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<llm::Attempt>,
    /// For an LLM: prompt + completion tokens over all attempts, when the endpoint reports them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// For an LLM: the model asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Selection {
    pub fn escalate(selector: &str, reasoning: impl Into<String>) -> Self {
        Selection {
            runbook: None,
            params: BTreeMap::new(),
            confidence: 0.0,
            reasoning: reasoning.into(),
            selector: selector.into(),
            ..Selection::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    #[error("the selector is unavailable: {0}")]
    Unavailable(String),
    #[error("the selector's answer is invalid: {0}")]
    Invalid(String),
}

#[async_trait]
pub trait Selector: Send + Sync {
    fn name(&self) -> &str;
    /// Whether it answers from what it is given, waiting on nothing (no model, no network):
    /// then a triage with no probes never waits, and its incident is first written with the
    /// decision rather than staged while it triages.
    fn answers_at_once(&self) -> bool {
        false
    }
    async fn select(&self, input: &SelectionInput) -> Result<Selection, SelectorError>;
}
