//! The pure part: audit records in, the spans and log records they stand for out. No I/O, no
//! clock: times come from the records.

use crate::ids;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};
use themis_agent::audit::Record;

/// Incidents whose open spans are remembered; the oldest is forgotten past this (its open spans
/// are then never exported, its later records still are, as logs and closed spans).
pub const MAX_OPEN_INCIDENTS: usize = 1024;
/// Longest attribute text exported (a summary, a reason); the audit record itself is the body of
/// its log record.
const MAX_TEXT: usize = 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

pub type Attrs = Vec<(&'static str, Attr)>;

#[derive(Debug, Clone, PartialEq)]
pub struct SpanPlan {
    pub trace: [u8; 16],
    pub id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Attrs,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogPlan {
    /// The incident's trace and the innermost span open when the record was written.
    pub context: Option<([u8; 16], [u8; 8])>,
    pub time: SystemTime,
    /// The audit record as the file holds it.
    pub body: String,
    pub attributes: Attrs,
}

#[derive(Debug, Clone)]
struct Open {
    id: [u8; 8],
    name: String,
    start: SystemTime,
    attributes: Attrs,
}

#[derive(Debug)]
struct Incident {
    id: String,
    trace: [u8; 16],
    root: [u8; 8],
    root_start: SystemTime,
    root_attributes: Attrs,
    alert: Option<String>,
    root_sent: bool,
    state: Option<Open>,
    execution: Option<Open>,
    counter: u64,
    last: SystemTime,
}

impl Incident {
    fn new(id: &str, at: SystemTime) -> Incident {
        Incident {
            id: id.to_owned(),
            trace: ids::trace(id),
            root: ids::span(id, "incident"),
            root_start: at,
            root_attributes: vec![("themis.incident", Attr::Text(id.to_owned()))],
            alert: None,
            root_sent: false,
            state: None,
            execution: None,
            counter: 0,
            last: at,
        }
    }

    fn next_id(&mut self, what: &str) -> [u8; 8] {
        self.counter += 1;
        ids::span(&self.id, &format!("{what}:{}", self.counter))
    }

    /// Where a new span hangs: the open execution, else the open state, else the incident.
    fn parent(&self) -> [u8; 8] {
        self.execution
            .as_ref()
            .or(self.state.as_ref())
            .map_or(self.root, |o| o.id)
    }

    fn state_parent(&self) -> [u8; 8] {
        self.state.as_ref().map_or(self.root, |o| o.id)
    }

    fn close(
        &self,
        open: Open,
        parent: [u8; 8],
        end: SystemTime,
        error: Option<String>,
    ) -> SpanPlan {
        SpanPlan {
            trace: self.trace,
            id: open.id,
            parent: Some(parent),
            name: open.name,
            start: open.start,
            end: end.max(open.start),
            attributes: open.attributes,
            error,
        }
    }

    fn span(
        &self,
        id: [u8; 8],
        parent: [u8; 8],
        name: String,
        (start, end): (SystemTime, SystemTime),
        attributes: Attrs,
        error: Option<String>,
    ) -> SpanPlan {
        SpanPlan {
            trace: self.trace,
            id,
            parent: Some(parent),
            name,
            start,
            end: end.max(start),
            attributes,
            error,
        }
    }
}

/// The mapper's memory of open spans, per incident, bounded.
#[derive(Debug, Default)]
pub struct Mapper {
    incidents: HashMap<String, Incident>,
    order: VecDeque<String>,
}

/// What one record stands for.
#[derive(Debug, Default)]
pub struct Mapped {
    pub spans: Vec<SpanPlan>,
    pub log: Option<LogPlan>,
}

fn text(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    bounded(s)
}

fn bounded(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut cut = MAX_TEXT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn micros(v: &Value) -> Duration {
    Duration::from_micros(v.as_u64().unwrap_or(0))
}

/// A phase or call status that is not a success.
fn failure(status: &str, summary: &Value) -> Option<String> {
    match status {
        "passed" | "ok" | "skipped" => None,
        other => Some(format!("{other}: {}", text(summary))),
    }
}

impl Mapper {
    pub fn new() -> Mapper {
        Mapper::default()
    }

    pub fn map(&mut self, record: &Record) -> Mapped {
        let ts = humantime::parse_rfc3339(&record.ts).unwrap_or_else(|_| SystemTime::now());
        let mut out = Mapped::default();
        let context = match record.incident.as_deref() {
            Some(id) => {
                let incident = self.incident(id, ts);
                out.spans = map_record(incident, record, ts);
                incident.last = ts;
                Some((incident.trace, incident.parent()))
            }
            None => None,
        };
        out.log = Some(LogPlan {
            context,
            time: ts,
            body: serde_json::to_string(record).unwrap_or_default(),
            attributes: vec![
                ("themis.audit.kind", Attr::Text(record.kind.clone())),
                ("themis.audit.seq", Attr::Int(record.seq as i64)),
                ("themis.audit.hash", Attr::Text(record.hash.clone())),
                ("themis.agent", Attr::Text(record.agent.clone())),
            ]
            .into_iter()
            .chain(
                record
                    .incident
                    .clone()
                    .map(|i| ("themis.incident", Attr::Text(i))),
            )
            .collect(),
        });
        out
    }

    fn incident(&mut self, id: &str, at: SystemTime) -> &mut Incident {
        if !self.incidents.contains_key(id) {
            if self.order.len() >= MAX_OPEN_INCIDENTS
                && let Some(oldest) = self.order.pop_front()
            {
                self.incidents.remove(&oldest);
            }
            self.order.push_back(id.to_owned());
            self.incidents.insert(id.to_owned(), Incident::new(id, at));
        }
        self.incidents
            .get_mut(id)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }
}

fn map_record(inc: &mut Incident, r: &Record, ts: SystemTime) -> Vec<SpanPlan> {
    let d = &r.data;
    let mut spans = Vec::new();
    match r.kind.as_str() {
        "alert" => {
            let name = text(&d["alert"]["name"]);
            inc.alert = Some(name.clone());
            inc.root_attributes = vec![
                ("themis.incident", Attr::Text(inc.id.clone())),
                ("themis.agent", Attr::Text(r.agent.clone())),
                ("themis.alert.name", Attr::Text(name)),
                (
                    "themis.alert.fingerprint",
                    Attr::Text(text(&d["fingerprint"])),
                ),
            ];
        }
        "transition" => {
            let from = d["from"]["state"].as_str().unwrap_or_default();
            let to = d["to"]["state"].as_str().unwrap_or_default();
            if from != to {
                if let Some(open) = inc.state.take() {
                    if let Some(exec) = inc.execution.take() {
                        spans.push(inc.close(exec, open.id, ts, None));
                    }
                    spans.push(inc.close(open, inc.root, ts, None));
                }
                if to == "idle" {
                    if !inc.root_sent {
                        inc.root_sent = true;
                        let name = match &inc.alert {
                            Some(alert) => format!("incident {alert}"),
                            None => "incident".to_owned(),
                        };
                        spans.push(SpanPlan {
                            trace: inc.trace,
                            id: inc.root,
                            parent: None,
                            name,
                            start: inc.root_start,
                            end: ts.max(inc.root_start),
                            attributes: inc.root_attributes.clone(),
                            error: None,
                        });
                    }
                } else if !to.is_empty() {
                    let id = inc.next_id("state");
                    inc.state = Some(Open {
                        id,
                        name: to.to_owned(),
                        start: ts,
                        attributes: vec![
                            ("themis.state", Attr::Text(to.to_owned())),
                            ("themis.event", Attr::Text(text(&d["event"]["event"]))),
                        ],
                    });
                }
            }
        }
        "execution-start" => {
            let id = inc.next_id("execution");
            inc.execution = Some(Open {
                id,
                name: format!("run {}", text(&d["runbook_id"])),
                start: ts,
                attributes: vec![
                    ("themis.runbook", Attr::Text(text(&d["runbook_id"]))),
                    (
                        "themis.runbook.version",
                        Attr::Text(text(&d["runbook_version"])),
                    ),
                    (
                        "themis.runbook.digest",
                        Attr::Text(text(&d["runbook_digest"])),
                    ),
                    ("themis.execution", Attr::Text(text(&d["execution_id"]))),
                    (
                        "themis.dry_run",
                        Attr::Bool(d["dry_run"].as_bool().unwrap_or(false)),
                    ),
                ],
            });
        }
        "phase" => spans.extend(phase(inc, d, ts)),
        "probe" | "result" => {
            if let Some(mut exec) = inc.execution.take() {
                let outcome = text(&d["outcome"]["status"]).to_owned();
                let outcome = if outcome.is_empty() {
                    text(&d["outcome"])
                } else {
                    outcome
                };
                exec.attributes
                    .push(("themis.outcome", Attr::Text(outcome.clone())));
                let failed = !(outcome.contains("succeeded") || outcome.is_empty());
                let parent = inc.state_parent();
                spans.push(inc.close(exec, parent, ts, failed.then_some(outcome)));
            }
        }
        "selection" => spans.extend(selection(inc, d, ts)),
        "decision" => {
            let id = inc.next_id("decision");
            spans.push(inc.span(
                id,
                inc.state_parent(),
                "policy".into(),
                (inc.last, ts),
                vec![
                    ("themis.verdict", Attr::Text(text(&d["verdict"]))),
                    (
                        "themis.confidence",
                        Attr::Float(d["confidence"].as_f64().unwrap_or(0.0)),
                    ),
                    ("themis.reason", Attr::Text(text(&d["reason"]))),
                ],
                None,
            ));
        }
        "escalation" | "verification" | "approval" | "guard-blocked" => {
            let id = inc.next_id(&r.kind);
            spans.push(inc.span(
                id,
                inc.state_parent(),
                r.kind.clone(),
                (ts, ts),
                vec![("themis.audit.seq", Attr::Int(r.seq as i64))],
                None,
            ));
        }
        _ => {}
    }
    spans
}

/// A step phase, and each capability call it made, under the open execution (a probe's phases
/// open their execution themselves: probes have no start record).
fn phase(inc: &mut Incident, d: &Value, ts: SystemTime) -> Vec<SpanPlan> {
    let rec = &d["record"];
    let took = micros(&rec["duration_us"]);
    let start = ts.checked_sub(took).unwrap_or(ts);
    if inc.execution.is_none() {
        let id = inc.next_id("probe");
        inc.execution = Some(Open {
            id,
            name: format!("probe {}", text(&d["runbook"])),
            start,
            attributes: vec![("themis.runbook", Attr::Text(text(&d["runbook"])))],
        });
    }
    let parent = inc.parent();
    let id = inc.next_id("phase");
    let status = rec["status"].as_str().unwrap_or_default();
    let mut spans = vec![inc.span(
        id,
        parent,
        format!("{} {}", text(&rec["step"]), text(&rec["phase"])),
        (start, ts),
        vec![
            ("themis.runbook", Attr::Text(text(&d["runbook"]))),
            ("themis.step", Attr::Text(text(&rec["step"]))),
            ("themis.phase", Attr::Text(text(&rec["phase"]))),
            ("themis.status", Attr::Text(status.to_owned())),
            ("themis.summary", Attr::Text(text(&rec["summary"]))),
        ],
        failure(status, &rec["summary"]),
    )];
    // Calls carry their durations, not their start: laid end to end from the phase's start,
    // which is where they ran, in order.
    let mut at = start;
    for call in rec["calls"].as_array().into_iter().flatten() {
        let took = micros(&call["duration_us"]);
        let call_id = inc.next_id("call");
        let status = call["status"].as_str().unwrap_or_default();
        spans.push(inc.span(
            call_id,
            id,
            text(&call["capability"]),
            (at, at + took),
            vec![
                ("themis.capability", Attr::Text(text(&call["capability"]))),
                ("themis.capability.args", Attr::Text(text(&call["args"]))),
                ("themis.capability.status", Attr::Text(status.to_owned())),
                ("themis.capability.mode", Attr::Text(text(&call["mode"]))),
            ],
            failure(status, &call["error"]),
        ));
        at += took;
    }
    spans
}

/// The selection, and for a model the call to it with its model and tokens.
fn selection(inc: &mut Incident, d: &Value, ts: SystemTime) -> Vec<SpanPlan> {
    let out = &d["output"];
    let selector = text(&out["selector"]);
    let id = inc.next_id("selection");
    let mut spans = vec![inc.span(
        id,
        inc.state_parent(),
        "select".into(),
        (inc.last, ts),
        vec![
            ("themis.selector", Attr::Text(selector.clone())),
            ("themis.runbook", Attr::Text(text(&out["runbook"]))),
            (
                "themis.confidence",
                Attr::Float(out["confidence"].as_f64().unwrap_or(0.0)),
            ),
        ],
        None,
    )];
    if selector == "llm" {
        let attempts = out["attempts"].as_array().cloned().unwrap_or_default();
        let sum = |key: &str| -> i64 {
            attempts
                .iter()
                .filter_map(|a| a["usage"][key].as_i64())
                .sum()
        };
        let latency: u64 = attempts
            .iter()
            .filter_map(|a| a["latency_ms"].as_u64())
            .sum();
        let start = ts
            .checked_sub(Duration::from_millis(latency))
            .unwrap_or(ts)
            .max(inc.last);
        let llm = inc.next_id("llm");
        let model = text(&out["model"]);
        spans.push(
            inc.span(
                llm,
                id,
                format!("chat {model}"),
                (start, ts),
                vec![
                    ("gen_ai.operation.name", Attr::Text("chat".into())),
                    ("gen_ai.request.model", Attr::Text(model)),
                    ("gen_ai.usage.input_tokens", Attr::Int(sum("prompt_tokens"))),
                    (
                        "gen_ai.usage.output_tokens",
                        Attr::Int(sum("completion_tokens")),
                    ),
                    ("themis.llm.attempts", Attr::Int(attempts.len() as i64)),
                ],
                attempts
                    .last()
                    .and_then(|a| a["error"].as_str())
                    .map(str::to_owned),
            ),
        );
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(seq: u64, kind: &str, ms: u64, data: Value) -> Record {
        let at =
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + Duration::from_millis(ms);
        Record {
            seq,
            ts: humantime::format_rfc3339_millis(at).to_string(),
            agent: "kafka".into(),
            incident: Some("inc-1".into()),
            kind: kind.into(),
            data,
            mode: None,
            prev: String::new(),
            hash: format!("h{seq}"),
        }
    }

    fn transition(seq: u64, ms: u64, from: &str, to: &str) -> Record {
        record(
            seq,
            "transition",
            ms,
            json!({ "event": { "event": "e" }, "from": { "state": from }, "to": { "state": to } }),
        )
    }

    #[test]
    fn an_incident_is_one_trace_whose_spans_nest_as_the_work_did() {
        let mut m = Mapper::new();
        let phase = |seq, ms, runbook: &str, calls: Value| {
            record(
                seq,
                "phase",
                ms,
                json!({ "runbook": runbook, "record": { "step": "s", "phase": "action", "status": "passed", "duration_us": 2000, "calls": calls, "summary": "ok" } }),
            )
        };
        let records = vec![
            record(
                1,
                "alert",
                0,
                json!({ "alert": { "name": "KafkaConsumerLag" }, "fingerprint": "f" }),
            ),
            transition(2, 1, "idle", "triaging"),
            phase(
                3,
                10,
                "triage-probe",
                json!([{ "capability": "kafka.consumer-lag", "duration_us": 500, "status": "ok", "mode": "performed", "args": {} }]),
            ),
            record(4, "probe", 11, json!({ "outcome": "succeeded" })),
            record(
                5,
                "selection",
                12,
                json!({ "output": { "selector": "llm", "model": "m", "runbook": "scale", "confidence": 0.9, "attempts": [ { "latency_ms": 1, "usage": { "prompt_tokens": 30, "completion_tokens": 5 } } ] } }),
            ),
            record(
                6,
                "decision",
                13,
                json!({ "verdict": "run", "confidence": 0.9 }),
            ),
            transition(7, 14, "triaging", "executing-runbook"),
            record(
                8,
                "execution-start",
                15,
                json!({ "runbook_id": "scale", "execution_id": "exe-1" }),
            ),
            phase(
                9,
                20,
                "scale",
                json!([{ "capability": "kafka.scale-consumers", "duration_us": 800, "status": "ok", "mode": "performed", "args": { "replicas": 6 } }]),
            ),
            record(
                10,
                "result",
                21,
                json!({ "outcome": { "status": "succeeded" } }),
            ),
            transition(11, 22, "executing-runbook", "idle"),
        ];
        let mut spans = Vec::new();
        let mut logs = Vec::new();
        for r in &records {
            let out = m.map(r);
            spans.extend(out.spans);
            logs.extend(out.log);
        }
        let trace = ids::trace("inc-1");
        assert!(spans.iter().all(|s| s.trace == trace));
        let by_name = |n: &str| {
            spans
                .iter()
                .find(|s| s.name == n)
                .unwrap_or_else(|| panic!("no span {n}: {spans:?}"))
        };
        let root = by_name("incident KafkaConsumerLag");
        assert_eq!(root.parent, None);
        let triage = by_name("triaging");
        assert_eq!(triage.parent, Some(root.id));
        let probe = by_name("probe triage-probe");
        assert_eq!(probe.parent, Some(triage.id));
        let probe_phases: Vec<&SpanPlan> = spans
            .iter()
            .filter(|s| s.parent == Some(probe.id))
            .collect();
        assert_eq!(probe_phases.len(), 1);
        let lag = by_name("kafka.consumer-lag");
        assert_eq!(lag.parent, Some(probe_phases[0].id));
        let select = by_name("select");
        assert_eq!(select.parent, Some(triage.id));
        let llm = by_name("chat m");
        assert_eq!(llm.parent, Some(select.id));
        assert!(
            llm.attributes
                .contains(&("gen_ai.usage.input_tokens", Attr::Int(30)))
        );
        assert_eq!(by_name("policy").parent, Some(triage.id));
        let executing = by_name("executing-runbook");
        let run = by_name("run scale");
        assert_eq!(run.parent, Some(executing.id));
        let scale = by_name("kafka.scale-consumers");
        let action = spans
            .iter()
            .find(|s| Some(s.id) == scale.parent)
            .expect("its phase");
        assert_eq!(action.parent, Some(run.id));
        // Every span's parent is a span of the trace, and ids are unique.
        let ids: std::collections::BTreeSet<[u8; 8]> = spans.iter().map(|s| s.id).collect();
        assert_eq!(ids.len(), spans.len());
        assert!(
            spans
                .iter()
                .all(|s| s.parent.is_none_or(|p| ids.contains(&p)))
        );
        // One log per record, in the incident's trace, its body the record as written.
        assert_eq!(logs.len(), records.len());
        assert!(
            logs.iter()
                .all(|l| l.context.is_some_and(|(t, _)| t == trace))
        );
        assert!(logs[0].body.contains("\"hash\":\"h1\""));
    }

    #[test]
    fn what_it_remembers_is_bounded() {
        let mut m = Mapper::new();
        for i in 0..(MAX_OPEN_INCIDENTS + 10) {
            let mut r = transition(1, 0, "idle", "triaging");
            r.incident = Some(format!("inc-{i}"));
            m.map(&r);
        }
        assert_eq!(m.incidents.len(), MAX_OPEN_INCIDENTS);
        assert!(!m.incidents.contains_key("inc-0"));
    }
}
