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

pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
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
