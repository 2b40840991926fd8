//! Typed runbook parameters: declared in the manifest, bound from untyped input (a scenario, the
//! CLI, a selector's answer) before any step runs.
//!
//! A string parameter may declare a `pattern:` (a regular expression the whole value must
//! match). Values often come from alert labels or a model's answer; a pattern such as
//! `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$` keeps `checkout; delete namespace prod` from ever
//! becoming a plan.

use crate::types::{Param, ParamValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
}

impl std::fmt::Display for ParamType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawParameter {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    required: Option<bool>,
    #[serde(default)]
    default: Option<Value>,
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    minimum: Option<serde_json::Number>,
    #[serde(default)]
    maximum: Option<serde_json::Number>,
}

/// A string parameter's pattern, matched against the whole value.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    anchored: regex::Regex,
}

/// The most parameters one runbook may declare.
pub const MAX_PARAMETERS: usize = 32;
/// The longest `pattern:` a parameter may declare, in bytes.
pub const MAX_PATTERN_LEN: usize = 512;
/// What one pattern's compiled program and its lazy DFA may take: a manifest is read (and its
/// patterns compiled) before its signature is checked against the components, and every agent's
/// bundles at start — a pattern such as `\w{150}` must not cost the host megabytes each.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, String> {
        if source.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "{} bytes long, over the host's {MAX_PATTERN_LEN}",
                source.len()
            ));
        }
        let anchored = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(PATTERN_SIZE_LIMIT)
            .dfa_size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Pattern {
            source: source.to_owned(),
            anchored,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn matches(&self, value: &str) -> bool {
        self.anchored.is_match(value)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// A declared parameter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Parameter {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ParamType,
    pub description: String,
    /// Required parameters without a default must be given.
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// String parameters only: the whole value must match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<Pattern>,
    /// Integer and number parameters: the smallest value accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum: Option<serde_json::Number>,
    /// Integer and number parameters: the largest value accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum: Option<serde_json::Number>,
}

impl Parameter {
    /// Is `value` within the declared range? (Only integers and numbers have one.)
    fn in_range(&self, value: &ParamValue) -> bool {
        let (min, max) = (self.minimum.as_ref(), self.maximum.as_ref());
        match value {
            ParamValue::Integer(i) => {
                min.and_then(|m| m.as_i64()).is_none_or(|m| *i >= m)
                    && max.and_then(|m| m.as_i64()).is_none_or(|m| *i <= m)
            }
            ParamValue::Number(n) => {
                min.and_then(|m| m.as_f64()).is_none_or(|m| *n >= m)
                    && max.and_then(|m| m.as_f64()).is_none_or(|m| *n <= m)
            }
            _ => true,
        }
    }
}

/// Parameters that could not be bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParameterError {
    #[error("parameter `{0}` is not declared by the runbook")]
    Unknown(String),
    #[error("parameter `{0}` is required and has no default")]
    Missing(String),
    #[error("parameter `{name}` must be a {kind}, got {got}")]
    WrongType {
        name: String,
        kind: ParamType,
        got: String,
    },
    #[error("parameter `{name}` is {value:?}, which does not match its pattern `{pattern}`")]
    NoMatch {
        name: String,
        value: String,
        pattern: String,
    },
    #[error("parameter `{name}` is {value}, outside its declared range {range}")]
    OutOfRange {
        name: String,
        value: String,
        range: String,
    },
}

type FieldError = (String, String, String);

pub(super) fn validate(raw: &[RawParameter]) -> Result<Vec<Parameter>, FieldError> {
    if raw.len() > MAX_PARAMETERS {
        return Err((
            "parameters".into(),
            format!("{} parameters, over the host's {MAX_PARAMETERS}", raw.len()),
            "a runbook takes the few values a plan binds; split the work into runbooks".into(),
        ));
    }
    let mut out: Vec<Parameter> = Vec::with_capacity(raw.len());
    for (i, p) in raw.iter().enumerate() {
        let field = |name: &str| format!("parameters[{i}].{name}");
        if p.name.is_empty()
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err((
                field("name"),
                format!("`{}` is not a valid parameter name", p.name),
                "use lowercase letters, digits and underscores".into(),
            ));
        }
        if out.iter().any(|q| q.name == p.name) {
            return Err((
                field("name"),
                format!("parameter `{}` is declared twice", p.name),
                "remove one".into(),
            ));
        }
        let kind = match p.kind.as_str() {
            "string" => ParamType::String,
            "integer" => ParamType::Integer,
            "number" => ParamType::Number,
            "boolean" => ParamType::Boolean,
            other => {
                return Err((
                    field("type"),
                    format!("unknown parameter type `{other}`"),
                    "use string, integer, number or boolean".into(),
                ));
            }
        };
        let pattern = match (&p.pattern, kind) {
            (None, _) => None,
            (Some(source), ParamType::String) => Some(Pattern::new(source).map_err(|e| {
                (
                    field("pattern"),
                    format!("not a usable pattern: {e}"),
                    "write e.g. ^[a-z0-9-]{1,63}$ (an ASCII class such as [A-Za-z0-9_] compiles far smaller than \\w)".into(),
                )
            })?),
            (Some(_), other) => {
                return Err((
                    field("pattern"),
                    format!("a {other} parameter cannot have a pattern"),
                    "patterns are for string parameters".into(),
                ));
            }
        };
        let numeric = matches!(kind, ParamType::Integer | ParamType::Number);
        for (name, bound) in [("minimum", &p.minimum), ("maximum", &p.maximum)] {
            match (bound, kind) {
                (None, _) => {}
                (Some(_), _) if !numeric => {
                    return Err((
                        field(name),
                        format!("a {kind} parameter cannot have a {name}"),
                        "ranges are for integer and number parameters".into(),
                    ));
                }
                (Some(b), ParamType::Integer) if b.as_i64().is_none() => {
                    return Err((
                        field(name),
                        format!("the {name} of an integer parameter must be an integer, got {b}"),
                        "write a whole number".into(),
                    ));
                }
                _ => {}
            }
        }
        if let Some(Err(got)) = p.default.as_ref().map(|d| convert(kind, d)) {
            return Err((
                field("default"),
                format!("the default must be a {kind}, got {got}"),
                "fix the default or the type".into(),
            ));
        }
        out.push(Parameter {
            name: p.name.clone(),
            kind,
            description: p.description.clone(),
            required: p.required.unwrap_or(true),
            default: p.default.clone(),
            pattern,
            minimum: p.minimum.clone(),
            maximum: p.maximum.clone(),
        });
    }
    Ok(out)
}

/// Bind untyped values to the declared parameters: unknown names, missing required ones and
/// wrong types are refused; defaults fill the rest.
pub fn bind(
    declared: &[Parameter],
    given: &BTreeMap<String, Value>,
) -> Result<Vec<Param>, ParameterError> {
    if let Some(unknown) = given
        .keys()
        .find(|k| !declared.iter().any(|p| &p.name == *k))
    {
        return Err(ParameterError::Unknown(unknown.clone()));
    }
    let mut out = Vec::new();
    for p in declared {
        let value = match (given.get(&p.name), &p.default) {
            (Some(v), _) => v,
            (None, Some(default)) => default,
            (None, None) if p.required => return Err(ParameterError::Missing(p.name.clone())),
            (None, None) => continue,
        };
        let value = convert(p.kind, value).map_err(|got| ParameterError::WrongType {
            name: p.name.clone(),
            kind: p.kind,
            got,
        })?;
        if let (Some(pattern), ParamValue::Text(text)) = (&p.pattern, &value)
            && !pattern.matches(text)
        {
            return Err(ParameterError::NoMatch {
                name: p.name.clone(),
                value: text.chars().take(120).collect(),
                pattern: pattern.as_str().to_owned(),
            });
        }
        if !p.in_range(&value) {
            let show = |b: &Option<serde_json::Number>| {
                b.as_ref()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "…".into())
            };
            return Err(ParameterError::OutOfRange {
                name: p.name.clone(),
                value: value.to_json().to_string(),
                range: format!("[{}, {}]", show(&p.minimum), show(&p.maximum)),
            });
        }
        out.push(Param {
            name: p.name.clone(),
            value,
        });
    }
    Ok(out)
}

/// Parse a `--param k=v` text value by the declared type.
pub fn parse_text(kind: ParamType, text: &str) -> Value {
    match kind {
        ParamType::String => Value::String(text.into()),
        _ => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into())),
    }
}

fn convert(kind: ParamType, value: &Value) -> Result<ParamValue, String> {
    let got = || match value {
        Value::Null => "null".to_string(),
        Value::String(s) => format!("the string {s:?}"),
        other => other.to_string(),
    };
    match (kind, value) {
        (ParamType::String, Value::String(s)) => Ok(ParamValue::Text(s.clone())),
        (ParamType::Integer, Value::Number(n)) => {
            n.as_i64().map(ParamValue::Integer).ok_or_else(got)
        }
        (ParamType::Number, Value::Number(n)) => n.as_f64().map(ParamValue::Number).ok_or_else(got),
        (ParamType::Boolean, Value::Bool(b)) => Ok(ParamValue::Boolean(*b)),
        _ => Err(got()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn declared() -> Vec<Parameter> {
        vec![
            Parameter {
                name: "group".into(),
                kind: ParamType::String,
                description: String::new(),
                required: true,
                default: None,
                pattern: Some(Pattern::new("[a-z0-9._-]{1,64}").expect("pattern")),
                minimum: None,
                maximum: None,
            },
            Parameter {
                name: "replicas".into(),
                kind: ParamType::Integer,
                description: String::new(),
                required: true,
                default: Some(json!(3)),
                pattern: None,
                minimum: Some(0.into()),
                maximum: Some(i64::from(i32::MAX).into()),
            },
        ]
    }

    #[test]
    fn binds_given_values_and_defaults() {
        let given = BTreeMap::from([("group".to_string(), json!("orders"))]);
        let bound = bind(&declared(), &given).expect("binds");
        assert_eq!(bound[0].value, ParamValue::Text("orders".into()));
        assert_eq!(bound[1].value, ParamValue::Integer(3));
    }

    #[test]
    fn refuses_unknown_missing_and_mistyped() {
        let unknown = BTreeMap::from([
            ("group".to_string(), json!("x")),
            ("nope".to_string(), json!(1)),
        ]);
        assert_eq!(
            bind(&declared(), &unknown),
            Err(ParameterError::Unknown("nope".into()))
        );
        assert_eq!(
            bind(&declared(), &BTreeMap::new()),
            Err(ParameterError::Missing("group".into()))
        );
        let mistyped = BTreeMap::from([
            ("group".to_string(), json!("x")),
            ("replicas".to_string(), json!(2.5)),
        ]);
        assert!(matches!(
            bind(&declared(), &mistyped),
            Err(ParameterError::WrongType { .. })
        ));
        // The whole value must match, so a valid prefix does not smuggle the rest through.
        let injected = BTreeMap::from([("group".to_string(), json!("orders; drop table x"))]);
        assert!(matches!(
            bind(&declared(), &injected),
            Err(ParameterError::NoMatch { .. })
        ));
        // 4294967297 would become 1 in an i32: the declared range refuses it before any step.
        let wide = BTreeMap::from([
            ("group".to_string(), json!("x")),
            ("replicas".to_string(), json!(4_294_967_297i64)),
        ]);
        assert!(matches!(
            bind(&declared(), &wide),
            Err(ParameterError::OutOfRange { .. })
        ));
    }
}
