//! Who may answer as whom: configured approvers, each with the SHA-256 of a secret token (and,
//! with the service, a Slack user id). A `--as NAME` on the command line is accepted only with
//! NAME's token; without one, a local answer is the OS user running the command.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use themis_core::identity::{Identity, Via};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approver {
    /// `sha256:<hex>` of the approver's token (`printf %s TOKEN | sha256sum`).
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// Or: the environment variable that holds the approver's token (read when the host
    /// starts; the token itself is never in the file).
    #[serde(default)]
    pub token_env: Option<String>,
    /// The approver's Slack user id, for signed interactive answers.
    #[serde(default)]
    pub slack_user: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Approvers(pub BTreeMap<String, Approver>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "`--as {0}` needs {0}'s approver token in THEMIS_TOKEN (or no --as, to answer as the OS user running the command)"
    )]
    NoToken(String),
    #[error("{0} is not a configured approver (approvers are listed in the host configuration)")]
    Unknown(String),
    #[error("the token given is not {0}'s")]
    WrongToken(String),
    #[error(
        "{0}'s token is configured by `token_env`, which only the service reads: answer through it with `--server URL` (or configure `token_sha256`)"
    )]
    ServiceOnly(String),
    #[error("the bearer token is no configured approver's")]
    UnknownToken,
    #[error("Slack user {0} is no configured approver's `slack_user`")]
    UnknownSlackUser(String),
}

impl Approver {
    /// The SHA-256 this approver's token must have: the configured hash, or (`from_env`: only
    /// in the service, whose environment is the host's) the hash of the token in `token_env`;
    /// an unset or empty variable matches nothing.
    fn expected_hash(&self, from_env: bool) -> Option<Vec<u8>> {
        if let Some(h) = self
            .token_sha256
            .as_deref()
            .and_then(|h| h.strip_prefix("sha256:"))
        {
            return hex::decode(h).ok();
        }
        if !from_env {
            return None;
        }
        let token = std::env::var(self.token_env.as_deref()?).ok()?;
        (!token.is_empty()).then(|| Sha256::digest(token.as_bytes()).to_vec())
    }
}

/// Constant time: compare every byte whatever the first difference.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Approvers {
    /// The approver a bearer token belongs to (the service: identity from the token alone).
    /// Every approver is compared, so the time taken does not say which one matched.
    pub fn identify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::UnknownToken);
        }
        let got = Sha256::digest(token.as_bytes());
        let mut found = None;
        for (name, approver) in &self.0 {
            if approver
                .expected_hash(true)
                .is_some_and(|want| same_bytes(&want, &got))
                && found.is_none()
            {
                found = Some(name.clone());
            }
        }
        found
            .map(|name| Identity {
                name,
                via: Via::Token,
            })
            .ok_or(AuthError::UnknownToken)
    }

    /// The approver a verified Slack user is.
    pub fn by_slack_user(&self, user: &str) -> Result<Identity, AuthError> {
        self.0
            .iter()
            .find(|(_, a)| a.slack_user.as_deref() == Some(user))
            .map(|(name, _)| Identity {
                name: name.clone(),
                via: Via::Slack {
                    user: user.to_owned(),
                },
            })
            .ok_or_else(|| AuthError::UnknownSlackUser(user.into()))
    }

    /// `name`, authenticated by `token` against the configured `token_sha256` (the local
    /// command line path).
    pub fn authenticate(&self, name: &str, token: Option<&str>) -> Result<Identity, AuthError> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AuthError::NoToken(name.into()))?;
        let approver = self
            .0
            .get(name)
            .ok_or_else(|| AuthError::Unknown(name.into()))?;
        // A local command's environment is the caller's: a token_env there proves nothing.
        let Some(want) = approver.expected_hash(false) else {
            if approver.token_env.is_some() {
                return Err(AuthError::ServiceOnly(name.into()));
            }
            return Err(AuthError::WrongToken(name.into()));
        };
        let got = Sha256::digest(token.as_bytes());
        if !same_bytes(&want, &got) {
            return Err(AuthError::WrongToken(name.into()));
        }
        Ok(Identity {
            name: name.into(),
            via: Via::Token,
        })
    }
}

/// `sha256:<hex>` of a token, as the configuration stores it.
pub fn token_hash(token: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_token_speaks_for_a_name() {
        let approvers = Approvers(BTreeMap::from([(
            "alice".to_string(),
            Approver {
                token_sha256: Some(token_hash("alice-secret")),
                token_env: None,
                slack_user: Some("U0ALICE".into()),
            },
        )]));
        assert_eq!(
            approvers
                .authenticate("alice", Some("alice-secret"))
                .map(|i| i.name),
            Ok("alice".into())
        );
        assert_eq!(
            approvers.authenticate("alice", Some("bob-secret")),
            Err(AuthError::WrongToken("alice".into()))
        );
        assert_eq!(
            approvers.authenticate("alice", None),
            Err(AuthError::NoToken("alice".into()))
        );
        assert_eq!(
            approvers.authenticate("mallory", Some("x")),
            Err(AuthError::Unknown("mallory".into()))
        );
        assert_eq!(
            approvers.identify("alice-secret").map(|i| i.name),
            Ok("alice".into())
        );
        assert_eq!(
            approvers.identify("bob-secret"),
            Err(AuthError::UnknownToken)
        );
        assert_eq!(approvers.identify(""), Err(AuthError::UnknownToken));
        assert_eq!(
            approvers.by_slack_user("U0ALICE").map(|i| i.name),
            Ok("alice".into())
        );
        assert!(approvers.by_slack_user("U0MALLORY").is_err());
    }

    #[test]
    fn a_token_env_approver_is_never_proven_by_the_callers_environment() {
        let approvers = Approvers(BTreeMap::from([(
            "carol".to_string(),
            Approver {
                token_sha256: None,
                token_env: Some("PATH".into()),
                slack_user: None,
            },
        )]));
        // PATH is set in every test environment: a local command must still not accept it.
        let path = std::env::var("PATH").unwrap_or_default();
        assert_eq!(
            approvers.authenticate("carol", Some(&path)),
            Err(AuthError::ServiceOnly("carol".into()))
        );
        // The service reads the variable from its own environment.
        assert_eq!(
            approvers.identify(&path).map(|i| i.name),
            Ok("carol".into())
        );
    }
}
