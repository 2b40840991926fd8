//! Label selectors as the API server reads `labelSelector`: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
//! `k notin (a,b)`, `k`, `!k`, joined by commas. And the one field selector kubectl sends,
//! `metadata.name=NAME`.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

/// A parsed selector; an unparseable one is a 400 at the caller.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector(Vec<Req>);

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        for part in split_top(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some((k, rest)) = part.split_once(" notin ") {
                Req::NotIn(k.trim().into(), set(rest)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Req::In(k.trim().into(), set(rest)?)
            } else if let Some((k, v)) = part.split_once("!=") {
                Req::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Req::Absent(k.trim().into())
            } else {
                Req::Exists(part.into())
            };
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    /// Does an object with these labels match?
    pub fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::Ne(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Req::Exists(k) => get(k).is_some(),
            Req::Absent(k) => get(k).is_none(),
        })
    }
}

/// Commas outside parentheses.
fn split_top(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn set(text: &str) -> Result<Vec<String>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("unable to parse requirement: expected (values) in {text:?}"))?;
    Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

/// The fields a field selector may name here, and where each is in an object.
const FIELDS: &[(&str, &[&str])] = &[
    ("metadata.name", &["metadata", "name"]),
    ("involvedObject.name", &["involvedObject", "name"]),
    ("involvedObject.kind", &["involvedObject", "kind"]),
];

/// A field selector (`metadata.name=NAME,involvedObject.kind=Pod`, `=` or `==`): each term as
/// (path in the object, value). Other fields are refused, as the API server refuses fields a
/// resource does not index.
pub fn fields(text: &str) -> Result<Vec<(&'static [&'static str], String)>, String> {
    let mut out = Vec::new();
    for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (field, value) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .ok_or_else(|| format!("invalid field selector: {term}"))?;
        let path = FIELDS
            .iter()
            .find(|(name, _)| *name == field)
            .map(|(_, path)| *path)
            .ok_or_else(|| format!("field label not supported by this fake: {field}"))?;
        out.push((path, value.to_owned()));
    }
    Ok(out)
}

/// Does `object` hold every (path, value) of `fields`?
pub fn fields_match(fields: &[(&[&str], String)], object: &serde_json::Value) -> bool {
    fields
        .iter()
        .all(|(path, want)| path.iter().fold(object, |v, k| &v[*k]).as_str() == Some(want.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_match_as_the_api_server_does() {
        let labels = json!({ "app": "web", "tier": "front" });
        for (sel, want) in [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app in (api, web)", true),
            ("tier notin (front)", false),
            ("app", true),
            ("!missing", true),
            ("missing", false),
            ("", true),
        ] {
            assert_eq!(
                Selector::parse(sel).expect(sel).matches(&labels),
                want,
                "{sel}"
            );
        }
        assert!(Selector::parse("app in web").is_err());
        let web = json!({ "metadata": { "name": "x" }, "involvedObject": { "kind": "Pod", "name": "web-1" } });
        let f = fields("metadata.name=x").expect("ok");
        assert!(fields_match(&f, &web));
        let f = fields("involvedObject.name==web-1,involvedObject.kind=Pod").expect("ok");
        assert!(fields_match(&f, &web));
        let f = fields("involvedObject.name=web-2").expect("ok");
        assert!(!fields_match(&f, &web));
        assert!(fields("spec.nodeName=n").is_err());
        assert!(fields("status.phase=Running").is_err());
    }
}
