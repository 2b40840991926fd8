//! Alertmanager's label matchers, for routes: `name="value"`, `name!="value"`, `name=~"regex"`,
//! `name!~"regex"`. As in Alertmanager, a regex matches the whole value (it is anchored) and a
//! label the alert does not carry has the empty value, so `team!="db"` holds without `team` and
//! `team=""` means "no team". Pure.

use regex::{Regex, RegexBuilder};
use std::collections::BTreeMap;
use std::fmt;

/// The largest compiled regex a matcher may hold (agent files are configuration, not input,
/// but a typo must not cost the host memory).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone)]
enum Op {
    Equal(String),
    NotEqual(String),
    Matches(Regex),
    NotMatches(Regex),
}

/// One matcher, as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Matcher {
    pub label: String,
    text: String,
    op: Op,
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

fn valid_label(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The value after the operator: `"quoted"` (with `\"` and `\\` escapes) or bare.
fn value(text: &str) -> Result<String, String> {
    let text = text.trim();
    let Some(inner) = text.strip_prefix('"') else {
        return Ok(text.to_owned());
    };
    let Some(inner) = inner.strip_suffix('"') else {
        return Err(format!(
            "`{text}`: an opening quote without its closing quote"
        ));
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('"' | '\\')) => out.push(e),
                Some('n') => out.push('\n'),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => return Err(format!("`{text}`: ends in a lone backslash")),
            },
            '"' => return Err(format!("`{text}`: an unescaped quote inside the value")),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn regex(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("`{pattern}` is not a regular expression: {e}"))
}

impl TryFrom<String> for Matcher {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        // The first operator character ends the name; `!=`/`!~`/`=~` are two characters.
        let at = text
            .find(['=', '!'])
            .ok_or_else(|| format!("`{text}`: no operator (=, !=, =~, !~)"))?;
        let label = text[..at].trim().to_owned();
        if !valid_label(&label) {
            return Err(format!("`{text}`: `{label}` is not a label name"));
        }
        let rest = &text[at..];
        let (op, raw) = if let Some(v) = rest.strip_prefix("=~") {
            ("=~", v)
        } else if let Some(v) = rest.strip_prefix("!~") {
            ("!~", v)
        } else if let Some(v) = rest.strip_prefix("!=") {
            ("!=", v)
        } else if let Some(v) = rest.strip_prefix('=') {
            ("=", v)
        } else {
            return Err(format!("`{text}`: no operator (=, !=, =~, !~)"));
        };
        let v = value(raw)?;
        let op = match op {
            "=" => Op::Equal(v),
            "!=" => Op::NotEqual(v),
            "=~" => Op::Matches(regex(&v)?),
            _ => Op::NotMatches(regex(&v)?),
        };
        Ok(Matcher { label, text, op })
    }
}

impl Matcher {
    /// Does the alert with these labels satisfy this matcher? (A missing label is empty.)
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let have = labels.get(&self.label).map(String::as_str).unwrap_or("");
        match &self.op {
            Op::Equal(v) => have == v,
            Op::NotEqual(v) => have != v,
            Op::Matches(r) => r.is_match(have),
            Op::NotMatches(r) => !r.is_match(have),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn m(text: &str) -> Matcher {
        Matcher::try_from(text.to_owned()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_four_operators_as_alertmanager_reads_them() {
        let alert = labels(&[("alertname", "KubePodCrashLooping"), ("namespace", "shop")]);
        for (matcher, want) in [
            (r#"alertname="KubePodCrashLooping""#, true),
            ("alertname=KubePodCrashLooping", true),
            (r#"alertname!="KubePodCrashLooping""#, false),
            (r#"alertname=~"KubePod.*""#, true),
            // Anchored: a part of the value is not a match.
            (r#"alertname=~"PodCrash""#, false),
            (r#"alertname!~"Kube(Pod|Deployment).*""#, false),
            (r#"namespace!~"kube-.*""#, true),
            // A missing label is the empty value.
            (r#"team!="db""#, true),
            (r#"team="""#, true),
            (r#"team=~".+""#, false),
        ] {
            assert_eq!(m(matcher).matches(&alert), want, "{matcher}");
        }
    }

    #[test]
    fn malformed_matchers_say_what_is_wrong() {
        for (text, says) in [
            ("alertname", "no operator"),
            (r#"9x="a""#, "not a label name"),
            (r#"a=~"(""#, "not a regular expression"),
            (r#"a="b"#, "closing quote"),
            (r#"a="b"c""#, "unescaped quote"),
        ] {
            let e = Matcher::try_from(text.to_owned()).err().unwrap_or_default();
            assert!(e.contains(says), "{text}: {e}");
        }
        assert!(m(r#"a="x\"y""#).matches(&labels(&[("a", "x\"y")])));
    }
}
