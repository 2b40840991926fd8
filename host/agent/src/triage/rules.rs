//! The deterministic selector: the agent's rules ([`themis_core::rules`]) behind the
//! [`Selector`] trait.

use super::{Selection, SelectionInput, Selector, SelectorError};
use async_trait::async_trait;
use themis_core::conditions::Facts;
use themis_core::rules;
pub use themis_core::rules::Rule;

pub struct RuleSelector {
    rules: Vec<Rule>,
}

impl RuleSelector {
    pub fn new(rules: Vec<Rule>) -> Self {
        RuleSelector { rules }
    }

    /// The pure choice as a selection: used by `select` and by follow-ups.
    pub fn choose(rules: &[Rule], facts: &Facts) -> Selection {
        let choice = rules::choose(rules, facts);
        Selection {
            runbook: choice.runbook,
            params: choice.params,
            confidence: choice.confidence,
            reasoning: choice.reasoning,
            selector: "rules".into(),
            ..Selection::default()
        }
    }
}

#[async_trait]
impl Selector for RuleSelector {
    fn name(&self) -> &str {
        "rules"
    }

    fn answers_at_once(&self) -> bool {
        true
    }

    async fn select(&self, input: &SelectionInput) -> Result<Selection, SelectorError> {
        Ok(Self::choose(&self.rules, &input.facts()))
    }
}
