//! What the host keeps of a phase's capability calls and log lines.

use serde::Serialize;
use serde_json::Value;

/// What became of one capability call.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum CallOutcome {
    /// The backend answered with a value.
    Ok { result: Value },
    /// The backend answered with an error (also: the call timed out, or its result was too big).
    Error { error: Value },
    /// The host refused the call; the backend was never asked.
    Denied { reason: String },
}

/// One capability call, as the audit records it (arguments and result bounded in size).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapabilityCall {
    pub capability: String,
    pub args: Value,
    #[serde(flatten)]
    pub outcome: CallOutcome,
    /// `would-do` when a dry run recorded a mutation instead of performing it.
    pub mode: CallMode,
    pub duration_us: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallMode {
    Performed,
    WouldDo,
    Refused,
}

/// A structured log line from the guest (truncated to the line limit).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogLine {
    pub level: String,
    pub message: String,
    pub fields: Vec<(String, String)>,
}
