//! Triage: the agent's read-only probes run first, then its selector chooses one runbook of the
//! catalog (or escalates). A selector that fails escalates; it never guesses.

use super::execute::{PhaseAudit, probe_result};
use super::journal::AuditJournal;
use super::worker::Worker;
use super::{RuntimeError, new_id, provenance};
use crate::store::Incident;
use crate::triage::{Candidate, ProbeResult, Selection, SelectionInput};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use themis_core::label_map::Resolution;
use themis_core::manifest::{bind_params, parse_param_text};
use themis_sandbox::executor::{self, ExecutionRequest, Outcome};
use themis_sandbox::loaded::LoadedRunbook;

impl Worker {
    pub(crate) async fn triage(&mut self, incident: &mut Incident) -> Result<(), RuntimeError> {
        let ctx = self.ctx.clone();
        let agent = &ctx.agent;
        let name = agent.def.name.clone();
        if !agent.probes.is_empty() || !agent.selector.answers_at_once() {
            // It will wait on probes or a model: shown meanwhile. Its records are durable
            // first; the write itself is not waited for (triage only reads).
            ctx.store.stage(incident).await?;
        }
        let mapped = agent.def.labels.resolve(&incident.alert);
        let mut probes = Vec::new();
        // Labels present but holding a value their parameter refuses (a path, SQL, control
        // characters): the probe does not run without them as if they were absent — that would
        // look at the wrong thing — and no plan is made from this alert.
        let mut malformed = Vec::new();
        for probe in &agent.probes {
            let fixed = agent.def.probe_params.get(&probe.runbook.id);
            let (given, unfit) = probe_params(probe, &mapped, fixed);
            if !unfit.is_empty() {
                let note = format!("not run: {}", unfit.join("; "));
                ctx.audit.append_deferred(&name, Some(&incident.id), "probe", json!({ "runbook": probe.runbook.id, "provenance": probe.provenance(), "outcome": { "status": "not-run" }, "note": note }))?;
                probes.push(redacted(
                    &ctx.audit,
                    ProbeResult {
                        runbook: probe.runbook.id.clone(),
                        outcome: "not-run".into(),
                        outputs: BTreeMap::new(),
                        evidence: Vec::new(),
                        note: Some(note),
                    },
                ));
                malformed.extend(unfit);
                continue;
            }
            let request = self.request(incident, probe, given, None)?;
            let mut observer = PhaseAudit::new(&ctx, None, &incident.id, probe);
            let report =
                executor::execute_observed(&ctx.sandbox, probe, &request, &mut observer).await;
            ctx.observer.execution(&name, &report);
            if let Outcome::Halted { reason, .. } = &report.outcome {
                return Err(RuntimeError::Agent {
                    agent: name,
                    message: format!("probe {} halted: {reason}", probe.runbook.id),
                });
            }
            let result = redacted(&ctx.audit, probe_result(&report));
            ctx.audit.append_deferred(&name, Some(&incident.id), "probe", json!({ "runbook": probe.runbook.id, "provenance": probe.provenance(), "execution_id": report.execution_id, "outcome": report.outcome, "outputs": result.outputs, "note": result.note }))?;
            probes.push(result);
        }
        let input = SelectionInput {
            agent: name.clone(),
            alert: incident.alert.clone(),
            candidates: agent
                .catalog
                .values()
                .map(|rb| Candidate {
                    id: rb.runbook.id.clone(),
                    version: rb.runbook.version.to_string(),
                    description: rb.runbook.description.clone(),
                    parameters: rb.runbook.parameters.clone(),
                })
                .collect(),
            probes,
            params: mapped.values(),
            history: self.target_history(&mapped.values()).await,
        };
        let selection = if !malformed.is_empty() {
            Selection::escalate(
                "runtime",
                format!(
                    "the alert carries a label no parameter accepts, so no plan is made from it: {}",
                    malformed.join("; ")
                ),
            )
        } else {
            match agent.selector.select(&input).await {
                Ok(s) => s,
                Err(e) => Selection::escalate(
                    agent.selector.name(),
                    format!("the selector failed, so the agent does not guess: {e}"),
                ),
            }
        };
        let selection_json = json!({
            "provenance": provenance(agent, selection.runbook.as_deref()),
            "selector": selection.selector,
            "input": { "candidates": input.candidates.iter().map(|c| &c.id).collect::<Vec<_>>(), "probes": input.probes, "labels": mapped, "history": input.history },
            "output": selection,
        });
        ctx.audit.append_deferred(
            &name,
            Some(&incident.id),
            "selection",
            selection_json.clone(),
        )?;
        ctx.observer.selection(&name, &selection);
        incident.selection = Some(selection_json);
        let mut evidence = label_evidence(&mapped, &agent.probes, &input.probes);
        evidence.extend(probe_evidence(&input.probes));
        self.decide(incident, selection, evidence, &input.facts())
            .await
    }

    /// What the rails remember of each catalog runbook on the target this alert's parameters
    /// name (a runbook whose target the alert does not fully name has none to show).
    async fn target_history(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Vec<themis_core::guard::RunbookHistory> {
        let values: BTreeMap<String, serde_json::Value> = params
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let mut history = Vec::new();
        for rb in self.ctx.agent.catalog.values() {
            let Some(target) = rb.runbook.target(&values) else {
                continue;
            };
            if target.contains("=?") {
                continue;
            }
            if let Some(h) = self.ctx.guard.history(&target, &rb.runbook.id).await {
                history.push(h);
            }
        }
        history
    }

    /// An execution request for `loaded` in `incident`, with a fresh execution id.
    pub(crate) fn request(
        &self,
        incident: &Incident,
        loaded: &LoadedRunbook,
        params: BTreeMap<String, serde_json::Value>,
        approval: Option<themis_core::grant::Approval>,
    ) -> Result<ExecutionRequest, RuntimeError> {
        let ctx = &self.ctx;
        let params = themis_core::manifest::bind_params(&loaded.runbook.parameters, &params)
            .map_err(|e| RuntimeError::Agent {
                agent: ctx.agent.def.name.clone(),
                message: format!("runbook {}: {e}", loaded.runbook.id),
            })?;
        let execution_id = approval
            .as_ref()
            .map(|a| a.execution_id.clone())
            .unwrap_or_else(|| new_id("exe"));
        Ok(ExecutionRequest {
            execution_id,
            alert: incident.alert.clone(),
            params,
            backends: ctx.backends.clone(),
            destructive: ctx.destructive.clone(),
            approval,
            journal: Arc::new(AuditJournal {
                audit: ctx.audit.clone(),
                store: ctx.store.clone(),
                agent: ctx.agent.def.name.clone(),
                incident: incident.id.clone(),
                opted_out: ctx.destructive.opted_out.clone(),
            }),
            clock: ctx.clock.clone(),
        })
    }
}

/// What a probe found, as it may be shown to a model or a human.
fn redacted(audit: &crate::audit::AuditLog, mut result: ProbeResult) -> ProbeResult {
    let r = audit.redactor();
    for (k, v) in result.outputs.iter_mut() {
        *v = r.redact_pair(k, v);
    }
    for (k, v) in result.evidence.iter_mut() {
        *v = r.redact_pair(k, v);
    }
    result.note = result.note.map(|n| r.redact_text(&n));
    result
}

/// `probe`'s parameters: the operator's (`probe_params:`, checked at load), then the values the
/// agent's label map found for the rest. A label value that does not fit its parameter (type,
/// pattern, range) is left out, and the reason is returned: the probe then says what it is
/// missing, and the human reads why.
fn probe_params(
    probe: &LoadedRunbook,
    mapped: &Resolution,
    fixed: Option<&BTreeMap<String, serde_json::Value>>,
) -> (BTreeMap<String, serde_json::Value>, Vec<String>) {
    let mut given = fixed.cloned().unwrap_or_default();
    let mut unfit = Vec::new();
    for decl in &probe.runbook.parameters {
        if given.contains_key(&decl.name) {
            continue;
        }
        let Some(found) = mapped.found.get(&decl.name) else {
            continue;
        };
        let value = parse_param_text(decl.kind, &found.value);
        let one = BTreeMap::from([(decl.name.clone(), value.clone())]);
        match bind_params(std::slice::from_ref(decl), &one) {
            Ok(_) => {
                given.insert(decl.name.clone(), value);
            }
            Err(e) => unfit.push(format!(
                "label `{}` does not fit parameter `{}`: {e}",
                found.label, decl.name
            )),
        }
    }
    (given, unfit)
}

/// What the label map read, for the human: values taken from a label of another name, and — when
/// a probe could not do its work — the probes' parameters no label gave.
fn label_evidence(
    mapped: &Resolution,
    probes: &[LoadedRunbook],
    results: &[ProbeResult],
) -> Vec<String> {
    let all_ran = results.iter().all(|r| r.note.is_none());
    let renamed = mapped
        .found
        .iter()
        .filter(|(param, m)| m.label != **param)
        .map(|(param, m)| format!("labels: {param}={} (from label `{}`)", m.value, m.label));
    let missing = mapped
        .missing
        .keys()
        .filter(|_| !all_ran)
        .filter(|param| {
            probes
                .iter()
                .any(|p| p.runbook.parameters.iter().any(|d| &d.name == *param))
        })
        .filter_map(|param| {
            mapped
                .why_missing(param)
                .map(|why| format!("labels: {param} unknown: {why}"))
        });
    renamed.chain(missing).collect()
}

fn probe_evidence(probes: &[ProbeResult]) -> Vec<String> {
    probes
        .iter()
        .flat_map(|p| {
            let found = p
                .evidence
                .iter()
                .map(move |(k, v)| format!("{}: {k}={v}", p.runbook));
            let why = p
                .note
                .iter()
                .map(move |note| format!("{}: {} — {note}", p.runbook, p.outcome));
            found.chain(why)
        })
        .collect()
}
