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

/// Every `*.yaml` / `*.yml` file directly in `dir`, sorted by name.
pub fn files_in(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}
