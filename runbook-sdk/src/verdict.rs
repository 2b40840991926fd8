//! Builders for what a phase returns: a verdict, a summary, evidence and outputs.

use crate::types::{ActionResult, CheckResult, Pair};
use std::fmt::Display;

fn pair(key: impl Into<String>, value: impl Display) -> Pair {
    Pair {
        key: key.into(),
        value: value.to_string(),
    }
}

/// The verdict of a precondition, postcondition or rollback.
#[derive(Debug, Clone, PartialEq)]
pub struct Check(CheckResult);

impl Check {
    pub fn pass(summary: impl Into<String>) -> Self {
        Self::new(true, summary)
    }

    pub fn fail(summary: impl Into<String>) -> Self {
        Self::new(false, summary)
    }

    /// `pass` when `passed`, else `fail`, with the same summary: for checks that compare.
    pub fn from_bool(passed: bool, summary: impl Into<String>) -> Self {
        Self::new(passed, summary)
    }

    /// The rollback of a step that changes nothing: there is nothing to undo.
    pub fn nothing_to_undo() -> Self {
        Self::pass("read-only step: nothing to undo")
    }

    fn new(passed: bool, summary: impl Into<String>) -> Self {
        Check(CheckResult {
            passed,
            summary: summary.into(),
            evidence: Vec::new(),
            outputs: Vec::new(),
        })
    }

    /// A fact the verdict rests on, shown to humans in the audit.
    pub fn evidence(mut self, key: impl Into<String>, value: impl Display) -> Self {
        self.0.evidence.push(pair(key, value));
        self
    }

    /// A value later steps can read with [`crate::Context::output`].
    pub fn output(mut self, key: impl Into<String>, value: impl Display) -> Self {
        self.0.outputs.push(pair(key, value));
        self
    }

    pub fn passed(&self) -> bool {
        self.0.passed
    }

    pub fn summary(&self) -> &str {
        &self.0.summary
    }

    /// The value of an evidence key, for assertions in a step's unit tests.
    pub fn evidence_value(&self, key: &str) -> Option<&str> {
        find(&self.0.evidence, key)
    }

    pub fn output_value(&self, key: &str) -> Option<&str> {
        find(&self.0.outputs, key)
    }

    pub fn into_result(self) -> CheckResult {
        self.0
    }
}

/// The result of an action.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome(ActionResult);

impl Outcome {
    /// A successful action taking the default branch `next`.
    pub fn ok(summary: impl Into<String>) -> Self {
        Self::new(true, summary)
    }

    pub fn failed(summary: impl Into<String>) -> Self {
        Self::new(false, summary)
    }

    fn new(ok: bool, summary: impl Into<String>) -> Self {
        Outcome(ActionResult {
            ok,
            summary: summary.into(),
            evidence: Vec::new(),
            outputs: Vec::new(),
            branch: crate::DEFAULT_BRANCH.to_string(),
        })
    }

    /// Take a named branch; the manifest must declare it for this step or the host refuses it.
    pub fn branch(mut self, label: impl Into<String>) -> Self {
        self.0.branch = label.into();
        self
    }

    pub fn evidence(mut self, key: impl Into<String>, value: impl Display) -> Self {
        self.0.evidence.push(pair(key, value));
        self
    }

    pub fn output(mut self, key: impl Into<String>, value: impl Display) -> Self {
        self.0.outputs.push(pair(key, value));
        self
    }

    pub fn is_ok(&self) -> bool {
        self.0.ok
    }

    pub fn branch_label(&self) -> &str {
        &self.0.branch
    }

    pub fn summary(&self) -> &str {
        &self.0.summary
    }

    pub fn evidence_value(&self, key: &str) -> Option<&str> {
        find(&self.0.evidence, key)
    }

    pub fn output_value(&self, key: &str) -> Option<&str> {
        find(&self.0.outputs, key)
    }

    pub fn into_result(self) -> ActionResult {
        self.0
    }
}

fn find<'a>(pairs: &'a [Pair], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|p| p.key == key)
        .map(|p| p.value.as_str())
}
