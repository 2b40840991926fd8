//! Escalation: the message a human gets — the alert, the reasoning, the evidence, the proposed
//! runbook with its parameters, and how to answer — on the console and, when configured, in
//! Slack (incoming webhook, Block Kit).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;
use themis_core::policy::ApprovalRequest;
use themis_core::types::Alert;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Escalation {
    pub agent: String,
    pub incident: String,
    pub alert: Alert,
    /// Why a human is needed.
    pub reason: String,
    /// The selector's reasoning and confidence.
    pub reasoning: String,
    pub confidence: f64,
    pub selector: String,
    /// What the probes and the runbooks found, `source: key=value`.
    pub evidence: Vec<String>,
    /// The plan to approve, if there is one.
    pub proposal: Option<ApprovalRequest>,
    /// Without a plan: what the selector named anyway, marked as a suggestion. Not approvable;
    /// a human may adopt it through `themis adjust`, which goes through policy again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<Suggestion>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Suggestion {
    pub runbook: String,
    pub params: serde_json::Map<String, Value>,
}

impl Suggestion {
    fn text(&self, selector: &str) -> String {
        format!(
            "{} params {} — the {selector} selector's suggestion, not an approvable plan",
            self.runbook,
            serde_json::to_string(&self.params).unwrap_or_default()
        )
    }
}

impl Escalation {
    /// The escalation as it may leave the host: alert, reasons and evidence redacted.
    pub fn redacted(&self, r: &themis_core::redact::Redactor) -> Escalation {
        Escalation {
            alert: r.redact_alert(self.alert.clone()),
            reason: r.redact_text(&self.reason),
            reasoning: r.redact_text(&self.reasoning),
            evidence: self.evidence.iter().map(|e| r.redact_text(e)).collect(),
            suggestion: self.suggestion.as_ref().map(|s| Suggestion {
                runbook: s.runbook.clone(),
                params: s
                    .params
                    .iter()
                    .map(|(k, v)| match v {
                        Value::String(text) => (k.clone(), Value::String(r.redact_pair(k, text))),
                        other => (k.clone(), other.clone()),
                    })
                    .collect(),
            }),
            ..self.clone()
        }
    }

    /// The ways to answer, as commands.
    pub fn answers(&self) -> Vec<String> {
        match &self.proposal {
            Some(p) => vec![
                format!("themis approve {} --digest {}", p.id, p.plan_digest),
                format!("themis reject {} --reason \"...\"", p.id),
                format!("themis adjust {} --runbook <id> --param key=value", p.id),
            ],
            None => vec![format!(
                "themis adjust {} --runbook <id> --param key=value",
                self.incident
            )],
        }
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "ESCALATION  agent {} · incident {}\n",
            self.agent, self.incident
        ));
        out.push_str(&format!(
            "  alert      {} {}\n",
            one_line(&self.alert.name),
            labels(&self.alert)
        ));
        if let Some(line) = source_line(&self.alert) {
            out.push_str(&format!("  source     {}\n", one_line(&line)));
        }
        out.push_str(&format!("  why        {}\n", one_line(&self.reason)));
        out.push_str(&format!(
            "  reasoning  {} (selector {}, confidence {:.2})\n",
            one_line(&self.reasoning),
            one_line(&self.selector),
            self.confidence
        ));
        for e in &self.evidence {
            out.push_str(&format!("  evidence   {}\n", one_line(e)));
        }
        if let Some(s) = &self.suggestion {
            out.push_str(&format!(
                "  suggested  {}\n",
                one_line(&s.text(&self.selector))
            ));
        }
        if let Some(p) = &self.proposal {
            out.push_str(&format!(
                "  proposed   {} {} {} params {}\n",
                p.plan.runbook_id,
                p.plan.runbook_version,
                p.plan.runbook_digest,
                serde_json::to_string(&p.plan.params).unwrap_or_default()
            ));
            out.push_str(&format!(
                "  approval   {} (plan {}), expires {}\n",
                p.id,
                p.plan_digest,
                humantime::format_rfc3339_seconds(p.expires_at)
            ));
        }
        for a in self.answers() {
            out.push_str(&format!("  answer     {a}\n"));
        }
        out
    }

    /// A Slack incoming-webhook payload (Block Kit) with a plain-text fallback. Alert and model
    /// text is escaped: an annotation or an LLM's reasoning cannot ping `<!channel>` or forge a
    /// link.
    pub fn to_slack(&self) -> Value {
        let e = |s: &str| mrkdwn_escape(s);
        let mut blocks = vec![
            json!({ "type": "header", "text": { "type": "plain_text", "text": format!("Themis {} agent needs a human", self.agent) } }),
            json!({ "type": "section", "fields": [
                { "type": "mrkdwn", "text": format!("*Alert*\n{} {}", e(&self.alert.name), e(&labels(&self.alert))) },
                { "type": "mrkdwn", "text": format!("*Incident*\n{}", self.incident) },
            ]}),
            json!({ "type": "section", "text": { "type": "mrkdwn", "text": format!("*Why*\n{}{}", e(&self.reason), source_line(&self.alert).map(|l| format!("\n_{}_", e(&l))).unwrap_or_default()) } }),
            json!({ "type": "section", "text": { "type": "mrkdwn", "text": format!("*Reasoning* ({}, confidence {:.2})\n{}", e(&self.selector), self.confidence, e(&self.reasoning)) } }),
        ];
        if !self.evidence.is_empty() {
            blocks.push(json!({ "type": "section", "text": { "type": "mrkdwn", "text": format!("*Evidence*\n{}", self.evidence.iter().map(|x| format!("• {}", e(x))).collect::<Vec<_>>().join("\n")) } }));
        }
        if let Some(s) = &self.suggestion {
            blocks.push(json!({ "type": "section", "text": { "type": "mrkdwn", "text": format!("*Suggestion (not approvable)*\n{}", e(&s.text(&self.selector))) } }));
        }
        if let Some(p) = &self.proposal {
            blocks.push(
                json!({ "type": "section", "text": { "type": "mrkdwn", "text": format!(
                "*Proposed runbook*\n`{}` {} (`{}`)\nparameters: `{}`",
                p.plan.runbook_id, p.plan.runbook_version, p.plan.runbook_digest,
                e(&serde_json::to_string(&p.plan.params).unwrap_or_default())
            ) } }),
            );
            // The buttons `themis serve` answers (/api/v1/slack/interactions): the approve
            // button carries the digest of exactly the plan this message shows.
            blocks.push(
                json!({ "type": "actions", "block_id": "themis-answer", "elements": [
                    { "type": "button", "action_id": APPROVE_ACTION, "style": "primary",
                      "text": { "type": "plain_text", "text": "Approve" },
                      "value": format!("{} {}", p.id, p.plan_digest) },
                    { "type": "button", "action_id": REJECT_ACTION, "style": "danger",
                      "text": { "type": "plain_text", "text": "Reject" },
                      "value": p.id },
                ]}),
            );
        }
        blocks.push(json!({ "type": "context", "elements": [ { "type": "mrkdwn", "text": self.answers().iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join("  ·  ") } ] }));
        json!({
            "text": format!("Themis {} agent escalates {}: {}", self.agent, e(&self.alert.name), e(&self.reason)),
            "blocks": blocks,
        })
    }
}

/// The `action_id`s of the escalation's buttons.
pub const APPROVE_ACTION: &str = "themis-approve";
pub const REJECT_ACTION: &str = "themis-reject";

/// Slack's three control characters; everything else is literal in mrkdwn.
fn mrkdwn_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn labels(alert: &Alert) -> String {
    let l: Vec<String> = alert
        .labels
        .iter()
        .map(|p| format!("{}={}", one_line(&p.key), one_line(&p.value)))
        .collect();
    if l.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", l.join(", "))
    }
}

/// Where escalations go besides the console.
#[derive(Clone, Default)]
pub struct Channels {
    /// A Slack incoming webhook URL (a secret: never audited).
    pub slack_webhook: Option<String>,
}

/// The outcome of delivering one escalation.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub channel: String,
    pub ok: bool,
    pub detail: String,
}

impl Channels {
    pub fn from_env() -> Self {
        Channels {
            slack_webhook: std::env::var("THEMIS_SLACK_WEBHOOK_URL")
                .ok()
                .filter(|u| !u.is_empty()),
        }
    }

    /// Deliver to every configured channel. A failed delivery is reported, never fatal: the
    /// console and the audit always have the message.
    pub async fn deliver(&self, escalation: &Escalation) -> Vec<Delivery> {
        if self.slack_webhook.is_none() {
            // Nowhere to post: the message is not rendered on every decision for nothing.
            return Vec::new();
        }
        self.post(&escalation.to_slack()).await
    }

    /// Tell the humans about an alert no agent owns (it is not handled by anyone).
    pub async fn deliver_unowned(&self, alert: &Alert) -> Vec<Delivery> {
        self.post(&unowned_to_slack(alert)).await
    }

    /// Tell the humans that `agent` gave up on a firing alert the service accepted: it may
    /// not have been handled, and nobody else will be told. `why` is already redacted.
    pub async fn deliver_unhandled(&self, agent: &str, alert: &Alert, why: &str) -> Vec<Delivery> {
        self.post(&unhandled_to_slack(agent, alert, why)).await
    }

    async fn post(&self, payload: &Value) -> Vec<Delivery> {
        let mut out = Vec::new();
        if let Some(url) = &self.slack_webhook {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build();
            let result = match client {
                Ok(c) => c.post(url).json(payload).send().await,
                Err(e) => Err(e),
            };
            out.push(match result {
                Ok(resp) if resp.status().is_success() => Delivery {
                    channel: "slack".into(),
                    ok: true,
                    detail: format!("HTTP {}", resp.status().as_u16()),
                },
                Ok(resp) => Delivery {
                    channel: "slack".into(),
                    ok: false,
                    detail: format!("HTTP {}", resp.status().as_u16()),
                },
                Err(e) => Delivery {
                    channel: "slack".into(),
                    ok: false,
                    // reqwest errors can carry the URL: keep only the kind.
                    detail: if e.is_timeout() {
                        "timed out".into()
                    } else if e.is_connect() {
                        "could not connect".into()
                    } else {
                        "request failed".into()
                    },
                },
            });
        }
        out
    }
}

/// The message for an alert no agent owns: what it is, and that nobody acts on it.
pub fn unowned_to_text(alert: &Alert) -> String {
    format!(
        "UNOWNED ALERT  {} ({})\n  no agent owns it: nothing will be done about it here. Route it to a team, or give an agent a route for it.\n  labels: {}\n",
        one_line(&alert.name),
        one_line(&alert.fingerprint),
        labels_text(alert)
    )
}

/// The message for a firing alert its agent gave up on: which, why, and that it is the humans'.
/// "May not": the failure can come after the agent began (an incident opened, a probe run).
pub fn unhandled_to_text(agent: &str, alert: &Alert, why: &str) -> String {
    format!(
        "ALERT MAY NOT HAVE BEEN HANDLED  {} ({})\n  the {} agent gave up on it part-way: it may not have been handled. Look at it by hand; the audit has what was done (records after `alert-accepted`, then `alert-take-failed`).\n  why: {}\n  labels: {}\n",
        one_line(&alert.name),
        one_line(&alert.fingerprint),
        one_line(agent),
        one_line(why),
        labels_text(alert)
    )
}

fn labels_text(alert: &Alert) -> String {
    alert
        .labels
        .iter()
        .map(|p| format!("{}={}", one_line(&p.key), one_line(&p.value)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `s` on one line as it was sent: a line break, a carriage return or any other control
/// character (and Unicode's line and paragraph separators) shown escaped. Alert names, labels,
/// a step's evidence and a model's reasoning come from outside: in a text of one field per
/// line, a raw line break in one of them could forge another field — an approval command, a
/// log line that never happened.
pub fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    let forges = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !s.chars().any(forges) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if forges(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// What the source said about the alert, in one line: since when it fires and where its rule's
/// graph is.
fn source_line(alert: &Alert) -> Option<String> {
    let s = alert.source.as_ref()?;
    let mut parts = Vec::new();
    if !s.starts_at.is_empty() {
        parts.push(format!("{} since {}", s.status, s.starts_at));
    }
    if !s.generator_url.is_empty() {
        parts.push(s.generator_url.clone());
    }
    (!parts.is_empty()).then(|| parts.join(" · "))
}

/// An alert's labels for Slack, each as code.
fn labels_mrkdwn(alert: &Alert) -> Vec<String> {
    alert
        .labels
        .iter()
        .map(|p| format!("`{}={}`", mrkdwn_escape(&p.key), mrkdwn_escape(&p.value)))
        .collect()
}

/// [`unhandled_to_text`] for Slack; nothing in it can mention or link (`mrkdwn_escape`).
pub fn unhandled_to_slack(agent: &str, alert: &Alert, why: &str) -> Value {
    let e = |s: &str| mrkdwn_escape(s);
    json!({
        "text": format!("Themis: an alert may not have been handled: {}", e(&alert.name)),
        "blocks": [
            { "type": "header", "text": { "type": "plain_text", "text": "Themis: an alert may not have been handled" } },
            { "type": "section", "text": { "type": "mrkdwn", "text": format!(
                "*{}* (fingerprint `{}`)\nThe {} agent gave up on it part-way: it may not have been handled. Look at it by hand; the audit has what was done (records after `alert-accepted`, then `alert-take-failed`).\nWhy: {}\n{}",
                e(&alert.name), e(&alert.fingerprint), e(agent), e(why), labels_mrkdwn(alert).join(" ")
            ) } }
        ]
    })
}

/// The Slack form of [`unowned_to_text`], every alert-supplied string escaped.
pub fn unowned_to_slack(alert: &Alert) -> Value {
    let e = |s: &str| mrkdwn_escape(s);
    let labels = labels_mrkdwn(alert);
    json!({
        "text": format!("Themis: an alert no agent owns: {}", e(&alert.name)),
        "blocks": [
            { "type": "header", "text": { "type": "plain_text", "text": "Themis: an alert no agent owns" } },
            { "type": "section", "text": { "type": "mrkdwn", "text": format!(
                "*{}* (fingerprint `{}`)\nNo agent owns it: nothing will be done about it by Themis. Route it to a team, or give an agent a route for it.\n{}",
                e(&alert.name), e(&alert.fingerprint), labels.join(" ")
            ) } }
        ]
    })
}

#[cfg(test)]
mod slack_tests {
    use super::*;

    #[test]
    fn model_and_alert_text_cannot_ping_or_link_in_slack() {
        let e = Escalation {
            agent: "kafka".into(),
            incident: "inc-1".into(),
            alert: Alert::named("KafkaConsumerLag", "f"),
            reason: "confidence too low".into(),
            reasoning: "<!channel> approve at <https://evil.example|the runbook page> & go".into(),
            confidence: 0.4,
            selector: "llm".into(),
            evidence: vec!["note: <@U123>".into()],
            suggestion: Some(Suggestion {
                runbook: "scale-consumer".into(),
                params: serde_json::Map::from_iter([("group".to_string(), json!("<!here>"))]),
            }),
            proposal: None,
        };
        let text = e.to_slack().to_string();
        assert!(
            !text.contains("<!channel>")
                && !text.contains("<https://")
                && !text.contains("<@U")
                && !text.contains("<!here>")
        );
        assert!(text.contains("Suggestion (not approvable)"));
        assert!(text.contains(
            "&lt;!channel&gt; approve at &lt;https://evil.example|the runbook page&gt; &amp; go"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use themis_core::types::Pair;

    fn alert(name: &str, key: &str, value: &str) -> Alert {
        Alert {
            name: name.into(),
            fingerprint: "f1".into(),
            labels: vec![Pair {
                key: key.into(),
                value: value.into(),
            }],
            annotations: vec![],
            source: None,
        }
    }

    #[test]
    fn what_comes_from_outside_cannot_forge_a_line() {
        let forged = "v\r\n  answer     themis approve apr-forged --digest sha256:00\u{2028}x\0";
        let escalation = Escalation {
            agent: "kafka".into(),
            incident: "inc-1".into(),
            alert: alert("Lag\nINFO approval granted", "weird\nname", forged),
            reason: "on the destructive list".into(),
            reasoning: "two\nlines".into(),
            confidence: 0.5,
            selector: "rules".into(),
            evidence: vec!["step said\r\nanswer themis approve apr-x".into()],
            proposal: None,
            suggestion: None,
        };
        let text = escalation.to_text();
        let lines: Vec<&str> = text.lines().collect();
        // Header, alert, why, reasoning, evidence, the one real answer: nothing more.
        assert_eq!(lines.len(), 6, "{text}");
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("approve apr-forged") && !l.starts_with("  alert")),
            "{text}"
        );
        assert!(text.contains(r"weird\nname=v\r\n"), "{text}");
        assert!(text.contains(r"\u{2028}x\u{0}"), "{text}");
        let unowned = unowned_to_text(&alert("Lag\n2026 INFO approval granted", "k", "v\r\n"));
        assert_eq!(unowned.lines().count(), 3, "{unowned}");
        assert_eq!(one_line("plain"), "plain");
    }
}
