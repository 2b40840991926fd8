//! The JSON schema the model's answer is constrained to. Pure.
//!
//! ```json
//! { "reasoning": "…", "runbook": "<candidate id>|escalate",
//!   "parameters": { … the chosen runbook's declared parameters … }, "confidence": 0.0..1.0 }
//! ```
//!
//! `runbook` is an enum of the candidates plus `escalate`; `parameters` is one of the candidates'
//! parameter objects (or the empty object for `escalate`). Every property is required and no
//! other is allowed, which is what OpenAI's strict mode asks for; a declared parameter with a
//! default is still required here (the description gives the default), so strict servers accept
//! the schema. `reasoning` comes first so a model writes its reasons before its choice.
//!
//! The schema narrows what a model can say; it is not trusted to have done so:
//! [`super::reply`] checks every answer again.

use super::ESCALATE;
use crate::triage::Candidate;
use serde_json::{Map, Value, json};
use themis_core::manifest::ParamType;

/// The response schema for these candidates.
pub fn response_schema(candidates: &[Candidate]) -> Value {
    let mut ids: Vec<Value> = candidates.iter().map(|c| json!(c.id)).collect();
    ids.push(json!(ESCALATE));
    let mut variants: Vec<Value> = candidates.iter().map(parameters_schema).collect();
    variants.push(json!({ "type": "object", "properties": {}, "required": [], "additionalProperties": false }));
    json!({
        "type": "object",
        "properties": {
            "reasoning": { "type": "string", "description": "why, citing the evidence; at most three sentences" },
            "runbook": { "type": "string", "enum": ids },
            "parameters": { "anyOf": variants },
            "confidence": { "type": "number", "minimum": 0, "maximum": 1 },
        },
        "required": ["reasoning", "runbook", "parameters", "confidence"],
        "additionalProperties": false,
    })
}

/// One candidate's declared parameters as an object schema.
pub fn parameters_schema(candidate: &Candidate) -> Value {
    let mut properties = Map::new();
    for p in &candidate.parameters {
        let kind = match p.kind {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
        };
        let mut description = format!("{}: {}", candidate.id, p.description);
        if let Some(default) = &p.default {
            description.push_str(&format!(" (default {default})"));
        }
        let mut schema = json!({ "type": kind, "description": description });
        if let Some(pattern) = &p.pattern {
            schema["pattern"] = json!(format!("^(?:{})$", pattern.as_str()));
        }
        if let Some(min) = &p.minimum {
            schema["minimum"] = json!(min);
        }
        if let Some(max) = &p.maximum {
            schema["maximum"] = json!(max);
        }
        properties.insert(p.name.clone(), schema);
    }
    let required: Vec<&str> = candidate
        .parameters
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use themis_core::manifest::Parameter;

    fn candidate(id: &str, params: &[(&str, ParamType)]) -> Candidate {
        Candidate {
            id: id.into(),
            version: "1.0.0".into(),
            description: format!("{id} does things"),
            parameters: params
                .iter()
                .map(|(n, k)| Parameter {
                    name: (*n).into(),
                    kind: *k,
                    description: format!("the {n}"),
                    required: true,
                    default: None,
                    pattern: None,
                    minimum: None,
                    maximum: None,
                })
                .collect(),
        }
    }

    #[test]
    fn runbook_is_an_enum_of_candidates_plus_escalate_and_parameters_follow_each_schema() {
        let s = response_schema(&[
            candidate("restart-consumer-group", &[("group", ParamType::String)]),
            candidate("scale-consumer", &[("replicas", ParamType::Integer)]),
        ]);
        assert_eq!(
            s["properties"]["runbook"]["enum"],
            json!(["restart-consumer-group", "scale-consumer", "escalate"])
        );
        let variants = s["properties"]["parameters"]["anyOf"]
            .as_array()
            .expect("anyOf");
        assert_eq!(variants.len(), 3);
        assert_eq!(
            variants[1]["properties"]["replicas"]["type"],
            json!("integer")
        );
        assert_eq!(variants[1]["required"], json!(["replicas"]));
        assert_eq!(variants[2]["properties"], json!({}));
        assert_eq!(s["additionalProperties"], json!(false));
    }
}
