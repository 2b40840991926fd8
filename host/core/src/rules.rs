//! Rules: ordered conditions with stated confidences, written in the agent definition. The first
//! rule whose conditions hold chooses; none holding escalates. Pure: the agent's rule selector
//! and its follow-ups call [`choose`].

use crate::conditions::{self, Facts};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// One rule: when these facts hold, choose this runbook with these parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub runbook: String,
    #[serde(default)]
    pub when: BTreeMap<String, String>,
    /// Parameter values; strings may hold `{fact}` templates.
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    pub confidence: f64,
    pub reasoning: String,
}

/// What the rules chose: a runbook with parameters (still text from templates), or nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Choice {
    /// `None`: escalate.
    pub runbook: Option<String>,
    pub params: BTreeMap<String, Value>,
    pub confidence: f64,
    pub reasoning: String,
}

impl Choice {
    pub fn escalate(reasoning: impl Into<String>) -> Self {
        Choice {
            reasoning: reasoning.into(),
            ..Choice::default()
        }
    }
}

/// The first rule that holds over `facts`, or an escalation saying none did.
pub fn choose(rules: &[Rule], facts: &Facts) -> Choice {
    for rule in rules {
        if !conditions::all_hold(&rule.when, facts) {
            continue;
        }
        let mut params = BTreeMap::new();
        for (name, value) in &rule.params {
            let value = match value {
                Value::String(t) => match conditions::render(t, facts) {
                    Ok(v) => Value::String(v),
                    Err(why) => {
                        return Choice::escalate(format!(
                            "rule for {} matched but parameter `{name}` cannot be filled: {why}",
                            rule.runbook
                        ));
                    }
                },
                other => other.clone(),
            };
            params.insert(name.clone(), value);
        }
        let because: Vec<String> = rule.when.iter().map(|(k, c)| format!("{k} {c}")).collect();
        return Choice {
            runbook: Some(rule.runbook.clone()),
            params,
            confidence: rule.confidence,
            reasoning: format!(
                "{} (matched: {})",
                rule.reasoning.trim(),
                because.join(", ")
            ),
        };
    }
    Choice::escalate("no rule of this agent matches the alert and the probe results")
}
