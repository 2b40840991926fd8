//! The step context with typed accessors, and a builder for native unit tests.

use crate::types::{Alert, Pair, Param, ParamValue, StepContext, StepOutput};

/// What a phase is told: the alert, the runbook's parameters, earlier steps' outputs, dry-run.
#[derive(Debug, Clone, PartialEq)]
pub struct Context(StepContext);

/// A parameter was missing or of another type than the step reads it as. The host validates
/// parameters against the manifest before a step runs, so in practice this means the manifest and
/// the step disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    pub name: String,
    pub wanted: &'static str,
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "parameter `{}` is missing or not {}: declare it in the manifest with that type",
            self.name, self.wanted
        )
    }
}

impl std::error::Error for ParamError {}

impl Context {
    pub fn new(raw: StepContext) -> Self {
        Context(raw)
    }

    /// Start a context for a unit test: alert `name`, no labels, no parameters, not dry-run.
    pub fn builder(alert_name: &str) -> ContextBuilder {
        ContextBuilder(StepContext {
            execution_id: "test-execution".into(),
            runbook_id: "test-runbook".into(),
            runbook_version: "0.0.0".into(),
            step_id: "test-step".into(),
            alert: Alert {
                name: alert_name.into(),
                fingerprint: "test-fingerprint".into(),
                labels: Vec::new(),
                annotations: Vec::new(),
            },
            params: Vec::new(),
            outputs: Vec::new(),
            dry_run: false,
        })
    }

    pub fn raw(&self) -> &StepContext {
        &self.0
    }

    pub fn alert(&self) -> &Alert {
        &self.0.alert
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        lookup(&self.0.alert.labels, key)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        lookup(&self.0.alert.annotations, key)
    }

    pub fn dry_run(&self) -> bool {
        self.0.dry_run
    }

    pub fn step_id(&self) -> &str {
        &self.0.step_id
    }

    fn param(&self, name: &str) -> Option<&ParamValue> {
        self.0
            .params
            .iter()
            .find(|p| p.name == name)
            .map(|p| &p.value)
    }

    pub fn param_str(&self, name: &str) -> Result<&str, ParamError> {
        match self.param(name) {
            Some(ParamValue::Text(s)) => Ok(s),
            _ => Err(ParamError {
                name: name.into(),
                wanted: "a string",
            }),
        }
    }

    pub fn param_i64(&self, name: &str) -> Result<i64, ParamError> {
        match self.param(name) {
            Some(ParamValue::Integer(i)) => Ok(*i),
            _ => Err(ParamError {
                name: name.into(),
                wanted: "an integer",
            }),
        }
    }

    /// An integer parameter the step passes where WIT wants an `s32` (a broker id, a pid): the
    /// value must fit, or this is an error — never a silent truncation (4294967297 is not 1).
    /// Declare the range in the manifest (`minimum`/`maximum`) so the host refuses it first.
    pub fn param_i32(&self, name: &str) -> Result<i32, ParamError> {
        self.param_i64(name).and_then(|v| {
            i32::try_from(v).map_err(|_| ParamError {
                name: name.into(),
                wanted: "an integer that fits in 32 bits (declare minimum/maximum in the manifest)",
            })
        })
    }

    /// An integer parameter the step passes where WIT wants a `u32` (replicas, lines): the value
    /// must fit, or this is an error.
    pub fn param_u32(&self, name: &str) -> Result<u32, ParamError> {
        self.param_i64(name).and_then(|v| {
            u32::try_from(v).map_err(|_| ParamError {
                name: name.into(),
                wanted: "a non-negative integer that fits in 32 bits (declare minimum/maximum in the manifest)",
            })
        })
    }

    /// A number parameter; integers are accepted too.
    pub fn param_f64(&self, name: &str) -> Result<f64, ParamError> {
        match self.param(name) {
            Some(ParamValue::Number(n)) => Ok(*n),
            Some(ParamValue::Integer(i)) => Ok(*i as f64),
            _ => Err(ParamError {
                name: name.into(),
                wanted: "a number",
            }),
        }
    }

    pub fn param_bool(&self, name: &str) -> Result<bool, ParamError> {
        match self.param(name) {
            Some(ParamValue::Boolean(b)) => Ok(*b),
            _ => Err(ParamError {
                name: name.into(),
                wanted: "a boolean",
            }),
        }
    }

    /// An output an earlier step of this execution produced.
    pub fn output(&self, step: &str, key: &str) -> Option<&str> {
        self.0
            .outputs
            .iter()
            .find(|o| o.step == step && o.key == key)
            .map(|o| o.value.as_str())
    }
}

fn lookup<'a>(pairs: &'a [Pair], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|p| p.key == key)
        .map(|p| p.value.as_str())
}

/// Builds a [`Context`] for native unit tests.
pub struct ContextBuilder(StepContext);

impl ContextBuilder {
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0.alert.labels.push(Pair {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0.alert.annotations.push(Pair {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    pub fn param(mut self, name: &str, value: ParamValue) -> Self {
        self.0.params.push(Param {
            name: name.into(),
            value,
        });
        self
    }

    pub fn output(mut self, step: &str, key: &str, value: &str) -> Self {
        self.0.outputs.push(StepOutput {
            step: step.into(),
            key: key.into(),
            value: value.into(),
        });
        self
    }

    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.0.dry_run = dry_run;
        self
    }

    pub fn build(self) -> Context {
        Context(self.0)
    }
}
