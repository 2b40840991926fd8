//! Human answers from the command line: who is answering (the OS user, or a configured approver
//! proven by their token), and what they approve (the plan digest they were shown, given or
//! confirmed on a terminal).

use crate::{Answerer, Place, fail, host, render};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use themis_agent::approvers::Approvers;
use themis_agent::store::Incident;
use themis_agent::{Runtime, RuntimeError};
use themis_core::identity::{Identity, Via};

/// The OS user running this process (uid → name).
pub fn os_user() -> Identity {
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid-{uid}"));
    Identity {
        name,
        via: Via::OsUser { uid: uid.as_raw() },
    }
}

/// Who answers: `--as NAME` proven by NAME's token (THEMIS_TOKEN) against the configured
/// approvers, or else the OS user.
pub(crate) fn identity(answerer: &Answerer) -> Result<Identity, String> {
    let Some(name) = &answerer.who else {
        return Ok(os_user());
    };
    let Some(config) = &answerer.config else {
        return Err(format!(
            "`--as {name}` needs the host configuration with the approvers (--config FILE or THEMIS_CONFIG) and {name}'s token in THEMIS_TOKEN; without --as you answer as the OS user"
        ));
    };
    let text = themis_core::files::read_text(config, themis_core::files::limits::DEFINITION)
        .map_err(|e| format!("{}: {e}", config.display()))?;
    let parsed: AnswerConfig =
        themis_core::yaml::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    let token = std::env::var("THEMIS_TOKEN").ok();
    parsed
        .approvers
        .authenticate(name, token.as_deref())
        .map_err(|e| e.to_string())
}

/// The host configuration as far as answers need it: the `approvers:` section (the rest of the
/// file is the service's).
#[derive(Debug, Default, Deserialize)]
struct AnswerConfig {
    #[serde(default)]
    approvers: Approvers,
}

/// The digest the human approves: given, or confirmed on a terminal after seeing the plan.
async fn shown_digest(id: &str, given: Option<String>, place: &Place) -> Result<String, ExitCode> {
    if let Some(digest) = given {
        return Ok(digest);
    }
    if !std::io::stdin().is_terminal() {
        return Err(fail(
            2,
            format!(
                "say which plan you approve: `themis approve {id} --digest sha256:…` with the plan digest the escalation printed (or run this on a terminal to see the plan and confirm)"
            ),
        ));
    }
    let store = themis_agent::store::open_read_only(&place.state_dir)
        .await
        .map_err(|e| fail(2, e))?;
    let incident = store
        .by_approval(id)
        .await
        .map_err(|e| fail(1, e))?
        .ok_or_else(|| {
            fail(
                1,
                format!("no approval {id} in {}", place.state_dir.display()),
            )
        })?;
    let Some(p) = incident.proposal.filter(|p| p.id == id) else {
        return Err(fail(1, format!("{id} is not waiting for an approval")));
    };
    outln!(
        "approval   {id} · incident {} · agent {}",
        incident.id,
        incident.agent
    );
    outln!("alert      {}", incident.alert.name);
    outln!(
        "runbook    {} {} ({})",
        p.plan.runbook_id,
        p.plan.runbook_version,
        p.plan.runbook_digest
    );
    outln!(
        "parameters {}",
        serde_json::to_string(&p.plan.params).unwrap_or_default()
    );
    outln!("target     {}", p.plan.target);
    outln!(
        "requested  by {} · expires {}",
        p.requested_by,
        humantime::format_rfc3339_seconds(p.expires_at)
    );
    outln!("plan       {}", p.plan_digest);
    out!("Approve exactly this plan? [y/N] ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(p.plan_digest)
    } else {
        Err(fail(1, "not approved"))
    }
}

pub async fn approve(
    id: &str,
    digest: Option<String>,
    answerer: &Answerer,
    place: &Place,
    cache_dir: &Path,
) -> ExitCode {
    let who = match identity(answerer) {
        Ok(who) => who,
        Err(e) => return fail(2, e),
    };
    let shown = match shown_digest(id, digest, place).await {
        Ok(d) => d,
        Err(code) => return code,
    };
    answer(place, cache_dir, async |rt| {
        rt.approve(id, who, Some(shown)).await
    })
    .await
}

/// Start a runtime over `place`, give it the answer, print the incident it leaves.
async fn answer(
    place: &Place,
    cache_dir: &Path,
    give: impl AsyncFnOnce(&Runtime) -> Result<Incident, RuntimeError>,
) -> ExitCode {
    let rt = match host::runtime(place, cache_dir).await {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let code = match give(&rt).await {
        Ok(incident) => {
            outln!("{}", render::incident_line(&incident));
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e),
    };
    rt.shutdown().await;
    code
}

pub async fn reject(
    id: &str,
    reason: &str,
    answerer: &Answerer,
    place: &Place,
    cache_dir: &Path,
) -> ExitCode {
    let who = match identity(answerer) {
        Ok(who) => who,
        Err(e) => return fail(2, e),
    };
    answer(place, cache_dir, async |rt| {
        rt.reject(id, who, reason).await
    })
    .await
}

pub async fn adjust(
    id: &str,
    runbook: &str,
    params: &[String],
    answerer: &Answerer,
    place: &Place,
    cache_dir: &Path,
) -> ExitCode {
    let map = match self::params(params) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let who = match identity(answerer) {
        Ok(who) => who,
        Err(e) => return fail(2, e),
    };
    answer(place, cache_dir, async |rt| {
        rt.adjust(id, who, runbook, &map).await
    })
    .await
}

/// `--param name=value`, repeated.
pub fn params(params: &[String]) -> Result<BTreeMap<String, String>, ExitCode> {
    let mut map = BTreeMap::new();
    for p in params {
        let Some((k, v)) = p.split_once('=') else {
            return Err(fail(2, format!("--param {p}: write it as name=value")));
        };
        map.insert(k.trim().to_owned(), v.to_owned());
    }
    Ok(map)
}
