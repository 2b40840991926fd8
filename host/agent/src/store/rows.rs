//! What the database stores share: a row holds a value's JSON as written and a MAC under the
//! host key over its table, its key and that JSON, so a row edited by hand, or moved from one key
//! to another, is refused as the JSON store refuses a changed file. The columns beside the body
//! are an index only; the sealed body is what counts.

use super::mac::HostKey;
use super::{Answer, ClaimError, Incident, IncidentStatus, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::time::SystemTime;

/// Seals and opens the rows of one database, named `place` in messages (a file, or a URL
/// without its password).
pub(super) struct Sealer {
    pub(super) key: HostKey,
    pub(super) place: String,
}

/// A row as read: its key, its JSON and its MAC.
pub(super) type Row = (String, String, String);

impl Sealer {
    /// Where a row is, for messages: the database and the row's table and key.
    pub(super) fn row(&self, table: &str, key: &str) -> PathBuf {
        PathBuf::from(format!("{}#{table}/{key}", self.place))
    }

    /// A database error, naming the database.
    pub(super) fn fail(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Database {
            path: PathBuf::from(&self.place),
            message: e.to_string(),
        }
    }

    /// A value's JSON and its MAC, bound to the row it goes in.
    pub(super) fn seal<T: Serialize>(
        &self,
        table: &str,
        key: &str,
        value: &T,
    ) -> Result<(String, String), StoreError> {
        let body = serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
            path: self.row(table, key),
            message: e.to_string(),
        })?;
        let mac = self.key.tag(&sealed_bytes(table, key, &body));
        Ok((body, mac))
    }

    /// A row's value, refused when its MAC does not verify for this row.
    pub(super) fn open<T: DeserializeOwned>(
        &self,
        table: &str,
        key: &str,
        body: &str,
        mac: &str,
    ) -> Result<T, StoreError> {
        if !self.key.verify(&sealed_bytes(table, key, body), mac) {
            return Err(StoreError::Tampered {
                path: self.row(table, key),
            });
        }
        serde_json::from_str(body).map_err(|e| StoreError::Corrupt {
            path: self.row(table, key),
            message: e.to_string(),
        })
    }

    pub(super) fn incident(&self, id: &str, body: &str, mac: &str) -> Result<Incident, StoreError> {
        let incident: Incident = self.open("incidents", id, body, mac)?;
        if incident.id != id {
            return Err(StoreError::Tampered {
                path: self.row("incidents", id),
            });
        }
        Ok(incident)
    }

    /// Rows as incidents, each checked against its MAC; one whose sealed body `keeps` refuses
    /// (its index columns said otherwise: changed by hand) is a problem, not an incident.
    pub(super) fn incidents(
        &self,
        rows: Vec<Row>,
        keeps: impl Fn(&Incident) -> bool,
    ) -> (Vec<Incident>, Vec<StoreError>) {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for (id, body, mac) in rows {
            match self.incident(&id, &body, &mac) {
                Ok(i) if keeps(&i) => out.push(i),
                Ok(_) => problems.push(StoreError::Tampered {
                    path: self.row("incidents", &id),
                }),
                Err(e) => problems.push(e),
            }
        }
        (out, problems)
    }

    /// Retention's candidates, chosen by the index columns, narrowed to the rows whose sealed
    /// body says they are `agent`'s and closed: a status column edited by hand never gets an
    /// open incident deleted. Each kept row comes with its MAC, so the delete takes exactly the
    /// row that was checked. The others stay, for a read to report as changed.
    pub(super) fn prunable(&self, agent: &str, rows: Vec<Row>) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(rows.len());
        for (id, body, mac) in rows {
            match self.incident(&id, &body, &mac) {
                Ok(i) if i.agent == agent && !i.status.is_open() => out.push((id, mac)),
                Ok(i) => tracing::warn!(
                    incident = %id,
                    status = ?i.status,
                    "retention: the row's columns say closed, its sealed body does not; not removed"
                ),
                Err(e) => tracing::warn!(incident = %id, error = %e, "retention: not removed"),
            }
        }
        out
    }

    /// The claim's decision, once its transaction has read the incident's row (locked): the
    /// incident with `answer` recorded and `next` as its status, or why the answer is refused.
    pub(super) fn claimed(
        &self,
        id: &str,
        row: Option<(String, String)>,
        answer: Answer,
        next: IncidentStatus,
    ) -> Result<Incident, ClaimError> {
        let approval_id = answer.approval_id.clone();
        let Some(mut incident) = row
            .map(|(body, mac)| self.incident(id, &body, &mac))
            .transpose()?
            .filter(|i| i.names_approval(&approval_id))
        else {
            return Err(StoreError::UnknownIncident(approval_id).into());
        };
        if let Some(refusal) = incident.refuses_answer(&approval_id) {
            return Err(refusal);
        }
        incident.answer = Some(answer);
        incident.status = next;
        Ok(incident)
    }

    /// A value of a one-row or keyed table, or `None` when the row is not there.
    pub(super) fn optional<T: DeserializeOwned>(
        &self,
        table: &str,
        key: &str,
        row: Option<(String, String)>,
    ) -> Result<Option<T>, StoreError> {
        row.map(|(body, mac)| self.open(table, key, &body, &mac))
            .transpose()
    }

    /// An identifier of the host key that reveals nothing of it: a database records whose
    /// state it holds, and another host's key is named rather than every row refused.
    pub(super) fn key_id(&self) -> String {
        self.key.tag(b"themis state key id")[..16].to_string()
    }
}

fn sealed_bytes(table: &str, key: &str, body: &str) -> Vec<u8> {
    format!("{table}\0{key}\0{body}").into_bytes()
}

/// A status as its index column holds it: its JSON name.
pub(crate) fn status_name(status: IncidentStatus) -> String {
    match serde_json::to_value(status) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{status:?}"),
    }
}

pub(super) fn millis(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Every status that absorbs further alerts, by name: what `open_for` looks among.
pub(super) fn open_statuses() -> Vec<String> {
    [
        IncidentStatus::Triaging,
        IncidentStatus::Executing,
        IncidentStatus::PendingApproval,
        IncidentStatus::Escalated,
        IncidentStatus::Interrupted,
        IncidentStatus::Verifying,
        IncidentStatus::Resolved,
        IncidentStatus::Unverified,
        IncidentStatus::Failed,
        IncidentStatus::Rejected,
        IncidentStatus::Closed,
    ]
    .into_iter()
    .filter(|s| s.is_open())
    .map(status_name)
    .collect()
}
