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
}

impl Approvers {
    /// `name`, authenticated by `token`.
    pub fn authenticate(&self, name: &str, token: Option<&str>) -> Result<Identity, AuthError> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AuthError::NoToken(name.into()))?;
        let approver = self
            .0
            .get(name)
            .ok_or_else(|| AuthError::Unknown(name.into()))?;
        let Some(want) = approver
            .token_sha256
            .as_deref()
            .and_then(|h| h.strip_prefix("sha256:"))
            .and_then(|h| hex::decode(h).ok())
        else {
            return Err(AuthError::WrongToken(name.into()));
        };
        let got = Sha256::digest(token.as_bytes());
        // Constant time: compare every byte whatever the first difference.
        let same = want.len() == got.len()
            && want
                .iter()
                .zip(got.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
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
                slack_user: None,
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
    }
}
