//! Checking a model's answer on our side: a model that ignores the schema is caught here. Pure.

use super::ESCALATE;
use crate::triage::Candidate;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use themis_core::manifest::bind_params;

/// Why an answer cannot be used. Each leads to one retry, then to escalation with this reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplyError {
    #[error("the model refused: {0}")]
    Refused(String),
    #[error("the answer is empty")]
    Empty,
    #[error("the answer was cut off at the token limit")]
    Truncated,
    #[error("the answer is not the JSON object the schema asks for: {0}")]
    Malformed(String),
    #[error("`{0}` is not a runbook of the catalog")]
    UnknownRunbook(String),
    #[error("the parameters do not fit runbook `{runbook}`: {problem}")]
    BadParameters { runbook: String, problem: String },
    #[error("confidence {0} is not a number between 0 and 1")]
    BadConfidence(f64),
}

impl ReplyError {
    /// A stable name for the audit and the eval.
    pub fn code(&self) -> &'static str {
        match self {
            ReplyError::Refused(_) => "refusal",
            ReplyError::Empty => "empty",
            ReplyError::Truncated => "truncated",
            ReplyError::Malformed(_) => "malformed-json",
            ReplyError::UnknownRunbook(_) => "unknown-runbook",
            ReplyError::BadParameters { .. } => "bad-parameters",
            ReplyError::BadConfidence(_) => "bad-confidence",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    reasoning: String,
    runbook: String,
    #[serde(default, deserialize_with = "unique_keys")]
    parameters: Map<String, Value>,
    confidence: f64,
}

/// A JSON object whose keys are each given once: a parameter named twice is refused, never
/// settled by whichever came last (an auditor reading the raw answer sees the first).
fn unique_keys<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = Map<String, Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of parameters")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Map::new();
            while let Some((key, value)) = map.next_entry::<String, Value>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!(
                        "parameter `{key}` is given twice"
                    )));
                }
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Unique)
}

/// A usable answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// `None`: the model chose to escalate.
    pub runbook: Option<String>,
    pub params: BTreeMap<String, Value>,
    pub confidence: f64,
    pub reasoning: String,
}

/// The most of a model's reasoning the host keeps: it is shown to a human and goes into the
/// incident, the escalation and the audit; a triage's reasons fit in a few sentences.
pub const MAX_REASONING: usize = 4 << 10;
/// The longest text a model may give as one parameter's value: a name, an id, a list of pids.
pub const MAX_PARAM_TEXT: usize = 1 << 10;

/// Check the text a model returned against the candidates.
pub fn check(content: &str, candidates: &[Candidate]) -> Result<Answer, ReplyError> {
    let text = strip_fence(content.trim());
    if text.is_empty() {
        return Err(ReplyError::Empty);
    }
    let mut raw: Raw =
        serde_json::from_str(text).map_err(|e| ReplyError::Malformed(e.to_string()))?;
    raw.reasoning = themis_sandbox::limits::truncate(raw.reasoning, MAX_REASONING).0;
    if !raw.confidence.is_finite() || !(0.0..=1.0).contains(&raw.confidence) {
        return Err(ReplyError::BadConfidence(raw.confidence));
    }
    let params: BTreeMap<String, Value> = raw.parameters.into_iter().collect();
    if raw.runbook == ESCALATE {
        return Ok(Answer {
            runbook: None,
            params: BTreeMap::new(),
            confidence: raw.confidence,
            reasoning: raw.reasoning,
        });
    }
    let candidate = candidates
        .iter()
        .find(|c| c.id == raw.runbook)
        .ok_or_else(|| {
            ReplyError::UnknownRunbook(themis_sandbox::limits::truncate(raw.runbook.clone(), 256).0)
        })?;
    if let Some((name, text)) = params.iter().find_map(|(n, v)| {
        v.as_str()
            .filter(|t| t.len() > MAX_PARAM_TEXT)
            .map(|t| (n, t))
    }) {
        return Err(ReplyError::BadParameters {
            runbook: candidate.id.clone(),
            problem: format!(
                "parameter `{name}` is {} bytes long, over the {MAX_PARAM_TEXT} a value may be",
                text.len()
            ),
        });
    }
    bind_params(&candidate.parameters, &params).map_err(|e| ReplyError::BadParameters {
        runbook: candidate.id.clone(),
        problem: e.to_string(),
    })?;
    Ok(Answer {
        runbook: Some(candidate.id.clone()),
        params,
        confidence: raw.confidence,
        reasoning: raw.reasoning,
    })
}

/// Servers without constrained decoding sometimes wrap JSON in a Markdown fence.
fn strip_fence(text: &str) -> &str {
    text.strip_prefix("```json")
        .or_else(|| text.strip_prefix("```"))
        .and_then(|t| t.strip_suffix("```"))
        .map(str::trim)
        .unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use themis_core::manifest::{ParamType, Parameter};

    fn catalog() -> Vec<Candidate> {
        vec![Candidate {
            id: "scale-consumer".into(),
            version: "1.0.0".into(),
            description: "scale".into(),
            parameters: vec![Parameter {
                name: "replicas".into(),
                kind: ParamType::Integer,
                description: "how many".into(),
                required: true,
                default: None,
                pattern: None,
                minimum: None,
                maximum: None,
            }],
        }]
    }

    #[test]
    fn a_reasoning_of_any_length_is_kept_to_its_bound() {
        let long = "why ".repeat(100_000);
        let text = serde_json::json!({
            "reasoning": long, "runbook": "scale-consumer",
            "parameters": { "replicas": 3 }, "confidence": 0.9,
        })
        .to_string();
        let answer = check(&text, &catalog()).expect("usable");
        assert!(
            answer.reasoning.len() <= MAX_REASONING + 64,
            "{}",
            answer.reasoning.len()
        );
        assert!(answer.reasoning.ends_with("bytes cut]"), "the cut is said");
        assert_eq!(answer.runbook.as_deref(), Some("scale-consumer"));
    }

    #[test]
    fn every_way_a_model_can_be_wrong_is_named() {
        let c = catalog();
        let cases = [
            ("", "empty"),
            ("I think you should scale", "malformed-json"),
            (
                r#"{"reasoning":"x","runbook":"rm-rf","parameters":{},"confidence":0.9}"#,
                "unknown-runbook",
            ),
            (
                r#"{"reasoning":"x","runbook":"scale-consumer","parameters":{"replicas":"many"},"confidence":0.9}"#,
                "bad-parameters",
            ),
            (
                r#"{"reasoning":"x","runbook":"scale-consumer","parameters":{"replicas":3,"force":true},"confidence":0.9}"#,
                "bad-parameters",
            ),
            (
                r#"{"reasoning":"x","runbook":"scale-consumer","parameters":{"replicas":3},"confidence":7}"#,
                "bad-confidence",
            ),
            (
                r#"{"reasoning":"x","runbook":"scale-consumer","parameters":{"replicas":3},"confidence":0.9,"also":"run this"}"#,
                "malformed-json",
            ),
            // A value no parameter needs, kept off the records.
            (
                &format!(
                    r#"{{"reasoning":"x","runbook":"scale-consumer","parameters":{{"replicas":"{}"}},"confidence":0.9}}"#,
                    "9".repeat(MAX_PARAM_TEXT + 1)
                ),
                "bad-parameters",
            ),
            // Named twice: refused, not settled by the last.
            (
                r#"{"reasoning":"x","runbook":"scale-consumer","parameters":{"replicas":3,"replicas":50},"confidence":0.9}"#,
                "malformed-json",
            ),
        ];
        for (text, code) in cases {
            assert_eq!(check(text, &c).expect_err(text).code(), code, "{text}");
        }
        let ok = check(
            "```json\n{\"reasoning\":\"x\",\"runbook\":\"scale-consumer\",\"parameters\":{\"replicas\":3},\"confidence\":0.9}\n```",
            &c,
        )
        .expect("valid");
        assert_eq!(ok.runbook.as_deref(), Some("scale-consumer"));
        let esc = check(
            r#"{"reasoning":"unclear","runbook":"escalate","parameters":{},"confidence":0.2}"#,
            &c,
        )
        .expect("valid");
        assert_eq!(esc.runbook, None);
    }
}
