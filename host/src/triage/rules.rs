//! The deterministic selector: ordered rules with stated confidences, written in the agent
//! definition. The first rule whose conditions hold chooses; none holding escalates.

use super::conditions::{self, Facts};
use super::{Selection, SelectionInput, Selector, SelectorError};
use async_trait::async_trait;
use serde::Deserialize;
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

pub struct RuleSelector {
    rules: Vec<Rule>,
}

impl RuleSelector {
    pub fn new(rules: Vec<Rule>) -> Self {
        RuleSelector { rules }
    }

    /// Pure choice: used by `select` and directly by follow-ups.
    pub fn choose(rules: &[Rule], facts: &Facts) -> Selection {
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
                            return Selection::escalate(
                                "rules",
                                format!(
                                    "rule for {} matched but parameter `{name}` cannot be filled: {why}",
                                    rule.runbook
                                ),
                            );
                        }
                    },
                    other => other.clone(),
                };
                params.insert(name.clone(), value);
            }
            let because: Vec<String> = rule.when.iter().map(|(k, c)| format!("{k} {c}")).collect();
            return Selection {
                runbook: Some(rule.runbook.clone()),
                params,
                confidence: rule.confidence,
                reasoning: format!(
                    "{} (matched: {})",
                    rule.reasoning.trim(),
                    because.join(", ")
                ),
                selector: "rules".into(),
                ..Selection::default()
            };
        }
        Selection::escalate(
            "rules",
            "no rule of this agent matches the alert and the probe results",
        )
    }
}

#[async_trait]
impl Selector for RuleSelector {
    fn name(&self) -> &str {
        "rules"
    }

    async fn select(&self, input: &SelectionInput) -> Result<Selection, SelectorError> {
        Ok(Self::choose(&self.rules, &input.facts()))
    }
}
