//! The one place that touches serde_yaml (archived upstream): swapping the YAML library later
//! means changing this module only.

use serde::de::DeserializeOwned;
use std::fmt;

/// A YAML document that did not parse or did not fit the expected shape.
#[derive(Debug)]
pub struct YamlError {
    /// `line:column` when the parser knows it.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, column)) => write!(f, "line {line} column {column}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for YamlError {}

/// How deeply flow collections (`[`, `{`) may nest. Real manifests and agent files use two or
/// three levels; deep nesting only makes the parser slow (quadratic).
pub const MAX_FLOW_DEPTH: usize = 32;

pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    check_depth(text)?;
    serde_yaml::from_str(text).map_err(|e| YamlError {
        location: e.location().map(|l| (l.line(), l.column())),
        message: e.to_string(),
    })
}

pub fn to_string<T: serde::Serialize>(value: &T) -> Result<String, YamlError> {
    serde_yaml::to_string(value).map_err(|e| YamlError {
        location: None,
        message: e.to_string(),
    })
}

/// Refuse flow collections nested deeper than [`MAX_FLOW_DEPTH`], before the parser sees them.
fn check_depth(text: &str) -> Result<(), YamlError> {
    let mut depth = 0usize;
    let (mut single, mut double, mut comment, mut escaped) = (false, false, false, false);
    let (mut line, mut column) = (1usize, 0usize);
    let mut previous = '\n';
    for c in text.chars() {
        column += 1;
        if c == '\n' {
            line += 1;
            column = 0;
            comment = false;
        } else if comment {
        } else if double {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => double = false,
                _ => escaped = false,
            }
        } else if single {
            if c == '\'' {
                single = false;
            }
        } else {
            match c {
                '#' if previous.is_whitespace() => comment = true,
                '"' => double = true,
                '\'' if !previous.is_alphanumeric() => single = true,
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Err(YamlError {
                            location: Some((line, column)),
                            message: format!(
                                "nested deeper than {MAX_FLOW_DEPTH} levels; no definition needs that"
                            ),
                        });
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        previous = c;
    }
    Ok(())
}

/// Every `*.yaml` / `*.yml` file directly in `dir`, sorted by name.
pub fn files_in(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_flow_nesting_is_refused_before_parsing() {
        let deep = format!("a: {}{}", "[".repeat(10_000), "]".repeat(10_000));
        let err = from_str::<serde_json::Value>(&deep).expect_err("refused");
        assert!(err.message.contains("nested deeper"), "{err}");
        assert_eq!(err.location, Some((1, 4 + MAX_FLOW_DEPTH)));
        let ok: serde_json::Value = from_str("a: [1, {b: \"[[[[\"}, 'it''s [']").expect("parses");
        assert_eq!(ok["a"][1]["b"], "[[[[");
    }
}
