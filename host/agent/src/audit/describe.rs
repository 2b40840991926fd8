//! One audit record as a line a human reads: the CLI's `themis audit show` and the operator
//! page's incident timeline say the same thing.

use super::Record;

/// What the record says, in one line (its kind and the few fields that matter).
pub fn line(r: &Record) -> String {
    let d = &r.data;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
    match r.kind.as_str() {
        "alert" => format!(
            "alert {} (fingerprint {})",
            s(&d["alert"]["name"]),
            s(&d["fingerprint"])
        ),
        "transition" => format!(
            "{} → {}  ({})",
            state(&d["from"]),
            state(&d["to"]),
            s(&d["event"]["event"])
        ),
        "illegal-transition" => format!("ILLEGAL {}", s(&d["error"])),
        "probe" => format!("probe {}: {}", s(&d["runbook"]), s(&d["outcome"]["status"])),
        "selection" => format!(
            "selection by {}: {} at confidence {} — {}",
            s(&d["output"]["selector"]),
            d["output"]["runbook"].as_str().unwrap_or("escalate"),
            d["output"]["confidence"],
            s(&d["output"]["reasoning"])
        ),
        "decision" => format!(
            "decision {}: {} — {}",
            s(&d["plan"]["runbook_id"]),
            s(&d["verdict"]["decision"]),
            s(&d["reason"])
        ),
        "phase" => format!(
            "{} / {} {} {}: {} ({} calls)",
            s(&d["runbook"]),
            s(&d["record"]["step"]),
            s(&d["record"]["phase"]),
            s(&d["record"]["status"]),
            s(&d["record"]["summary"]),
            d["record"]["calls"].as_array().map(Vec::len).unwrap_or(0)
        ),
        "escalation" => format!(
            "ESCALATED: {}",
            d["escalation"]["reason"]
                .as_str()
                .or(d["reason"].as_str())
                .unwrap_or("")
        ),
        "escalation-delivery" => format!("delivered: {}", d["deliveries"]),
        "approval" => format!(
            "approved by {} (plan {})",
            who(&d["approver"]),
            s(&d["plan_digest"])
        ),
        "approval-refused" => format!(
            "approval REFUSED for {}: {}",
            who(&d["approver"]),
            s(&d["error"])
        ),
        "rejection" => format!("rejected by {}: {}", who(&d["by"]), s(&d["reason"])),
        "adjustment" => format!(
            "adjusted by {} to {}: {}",
            who(&d["by"]),
            s(&d["plan"]["runbook_id"]),
            s(&d["reason"])
        ),
        "execution-start" => format!(
            "run {} {} as {}",
            s(&d["runbook_id"]),
            s(&d["runbook_version"]),
            s(&d["execution_id"])
        ),
        "result" => format!(
            "result of {}: {}",
            s(&d["runbook_id"]),
            s(&d["outcome"]["status"])
        ),
        "verification-start" => format!(
            "verifying {} for up to {}s: alert resolution {}, metric {}",
            s(&d["runbook"]),
            d["window_secs"],
            if d["alert_tracked"].as_bool() == Some(true) {
                "watched"
            } else {
                "not reported by its source"
            },
            d["metric"].as_str().unwrap_or("none")
        ),
        "verification" => format!(
            "fix of {} {}: {}",
            s(&d["runbook"]),
            s(&d["effect"]),
            s(&d["why"])
        ),
        "alert-resolved" => "the alert's source says it resolved".to_owned(),
        "capability-intent" => format!(
            "intent: {} {}{}",
            s(&d["intent"]["capability"]),
            d["intent"]["args"],
            d["intent"]["approval"]["approved_by"]["name"]
                .as_str()
                .map(|n| format!(" (approved by {n})"))
                .unwrap_or_default()
        ),
        "capability-result" => format!(
            "result: {} {} ({}, {} µs)",
            s(&d["call"]["capability"]),
            s(&d["call"]["status"]),
            s(&d["call"]["mode"]),
            d["call"]["duration_us"]
        ),
        "checkpoint" => format!(
            "checkpoint: record {} signed by key {}",
            d["seq"],
            s(&d["key_id"])
        ),
        "recovered" => format!("recovered: {}", s(&d["action"])),
        other => format!("{other} {d}"),
    }
}

fn state(v: &serde_json::Value) -> String {
    let s = v["state"].as_str().unwrap_or("?");
    match (
        v["runbook"].as_str(),
        v["step"].as_str(),
        v["phase"].as_str(),
    ) {
        (Some(rb), Some(step), Some(phase)) => format!("{s}[{rb}/{step}/{phase}]"),
        (Some(rb), Some(step), None) => format!("{s}[{rb}/{step}]"),
        _ => s.to_owned(),
    }
}

/// A person as recorded: an identity (`{"name": …, "via": …}`) or, in older records, a name.
fn who(v: &serde_json::Value) -> String {
    v["name"].as_str().or(v.as_str()).unwrap_or("?").to_owned()
}
