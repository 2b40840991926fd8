//! Who did something, and how the host knows. Every human answer (approve, reject, adjust) and
//! every request the host makes on its own carries one; policy compares identities by `name`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A person or the host itself, with the way it was identified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    #[serde(flatten)]
    pub via: Via,
}

/// How an identity was established. Only `os-user`, `token` (and, with the service, verified
/// Slack users) authenticate a person; `scenario` is the test kit's stand-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "kebab-case")]
pub enum Via {
    /// The operating-system user running a local command (uid → name).
    OsUser { uid: u32 },
    /// A configured approver's token: the name is the approver the token's hash belongs to.
    Token,
    /// A Slack user whose interactive answer carried a valid Slack request signature, mapped
    /// to a configured approver by `slack_user`.
    Slack { user: String },
    /// The host acting for an agent (`themis:<agent>`): the requester of its own proposals.
    Agent,
    /// A scripted human in a scenario file (tests, `themis run`, `themis eval`).
    Scenario,
}

impl Identity {
    /// The identity an agent requests approvals as.
    pub fn agent(agent: &str) -> Identity {
        Identity {
            name: format!("themis:{agent}"),
            via: Via::Agent,
        }
    }

    pub fn scenario(name: &str) -> Identity {
        Identity {
            name: name.to_owned(),
            via: Via::Scenario,
        }
    }

    /// How it was identified, in words for messages.
    pub fn how(&self) -> String {
        match &self.via {
            Via::OsUser { uid } => format!("OS user, uid {uid}"),
            Via::Token => "approver token".into(),
            Via::Slack { user } => format!("Slack user {user}, signed request"),
            Via::Agent => "the host itself".into(),
            Via::Scenario => "scenario file".into(),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.how())
    }
}
