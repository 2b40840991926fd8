//! Typed runbook parameters: declared in the manifest, bound from untyped input (a scenario, the
//! CLI, a selector's answer) before any step runs.

use crate::wit::types::{Param, ParamValue};
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
}

type FieldError = (String, String, String);

pub(super) fn validate(raw: &[RawParameter]) -> Result<Vec<Parameter>, FieldError> {
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
            },
            Parameter {
                name: "replicas".into(),
                kind: ParamType::Integer,
                description: String::new(),
                required: true,
                default: Some(json!(3)),
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
    }
}
