//! Fix verification: did a runbook that succeeded fix what the alert was about? Pure: the
//! runtime feeds it what the alert source and the metric said, with times in seconds since the
//! Unix epoch, and asks for a verdict.
//!
//! A runbook's postconditions passing is not a fix: the alert may keep firing. After a success
//! the host watches, within the runbook's `verify:` window, for (a) the alert source saying the
//! alert resolved (Alertmanager's `resolved`) and (b) the declared metric condition holding after
//! the settle time. The verdict is
//! - `effective` once every signal there is says recovered and the settle time has passed without
//!   the alert firing again;
//! - `ineffective` when the alert fired again after resolving, kept firing past the window, or the
//!   metric had not recovered by then;
//! - `unknown` when there is no signal to judge by (a source that never reports resolution and no
//!   metric, or a metric without data). Missing data is never success.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10 * 60);
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2 * 60);
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Metric readings kept per verification (the newest).
pub const MAX_READINGS: usize = 32;

/// A runbook's `verify:` section, resolved. Every field has a default, so every runbook is
/// verified by its alert at least.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifySpec {
    /// How long after the run the host waits for the signals (seconds).
    pub window_secs: u64,
    /// How long the fix must hold before it counts: the metric is read after it, and a resolved
    /// alert must stay resolved through it (seconds).
    pub settle_secs: u64,
    /// PromQL, `{params.NAME}` placeholders bound to the plan's parameters.
    #[serde(default)]
    pub metric: Option<String>,
    #[serde(default)]
    pub expect: Option<Expectation>,
}

impl Default for VerifySpec {
    fn default() -> Self {
        VerifySpec {
            window_secs: DEFAULT_WINDOW.as_secs(),
            settle_secs: DEFAULT_SETTLE.as_secs(),
            metric: None,
            expect: None,
        }
    }
}

impl VerifySpec {
    /// The metric query with the plan's parameters bound, each value escaped for a PromQL
    /// string literal (the only place a placeholder may stand). A placeholder without a value
    /// makes no query: verifying against the wrong series would be worse than not at all.
    pub fn bound_metric(
        &self,
        params: &std::collections::BTreeMap<String, serde_json::Value>,
    ) -> Result<Option<String>, String> {
        let Some(template) = &self.metric else {
            return Ok(None);
        };
        let mut out = String::with_capacity(template.len());
        let mut rest = template.as_str();
        while let Some(start) = rest.find("{params.") {
            out.push_str(&rest[..start]);
            let after = &rest[start + "{params.".len()..];
            let Some(end) = after.find('}') else {
                return Err(format!("unclosed placeholder in `{template}`"));
            };
            let name = &after[..end];
            let value = match params.get(name) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Null) | None => {
                    return Err(format!("the plan has no value for parameter `{name}`"));
                }
                Some(other) => other.to_string(),
            };
            for c in value.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c if c.is_control() => {}
                    c => out.push(c),
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(Some(out))
    }

    /// The parameters the metric's placeholders name.
    pub fn metric_params(&self) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = self.metric.as_deref().unwrap_or("");
        while let Some(start) = rest.find("{params.") {
            let after = &rest[start + "{params.".len()..];
            let Some(end) = after.find('}') else { break };
            names.push(after[..end].to_owned());
            rest = &after[end + 1..];
        }
        names
    }
}

/// `< 100`, `>= 0.5`, `== 0`: what the metric's value must be for the fix to count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Expectation {
    pub op: Op,
    pub value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Expectation {
    pub fn parse(text: &str) -> Result<Expectation, String> {
        let t = text.trim();
        let ops = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<", Op::Lt),
            (">", Op::Gt),
        ];
        let Some((sym, op)) = ops.iter().find(|(s, _)| t.starts_with(s)) else {
            return Err(format!(
                "`{text}` does not start with a comparison (<, <=, >, >=, ==, !=)"
            ));
        };
        let number = t[sym.len()..].trim();
        let value: f64 = number
            .parse()
            .map_err(|_| format!("`{number}` is not a number"))?;
        if !value.is_finite() {
            return Err(format!("`{number}` is not a finite number"));
        }
        Ok(Expectation { op: *op, value })
    }

    /// NaN holds nothing: a metric that cannot be compared has not recovered.
    pub fn holds(&self, v: f64) -> bool {
        match self.op {
            Op::Lt => v < self.value,
            Op::Le => v <= self.value,
            Op::Gt => v > self.value,
            Op::Ge => v >= self.value,
            Op::Eq => v == self.value,
            Op::Ne => !v.is_nan() && v != self.value,
        }
    }
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        };
        write!(f, "{op} {}", self.value)
    }
}

/// One read of the metric: its value, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub at: u64,
    #[serde(default)]
    pub value: Option<f64>,
    /// No value: the query failed, or returned no series (said here).
    #[serde(default)]
    pub missing: Option<String>,
}

/// What became of a fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    Effective,
    Ineffective,
    Unknown,
}

impl Effect {
    pub const ALL: [Effect; 3] = [Effect::Effective, Effect::Ineffective, Effect::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Effective => "effective",
            Effect::Ineffective => "ineffective",
            Effect::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub effect: Effect,
    pub why: String,
}

/// One fix being watched: what the runtime records as the signals arrive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Watch {
    pub runbook: String,
    /// What the run changed (the guard rails' target), when it changed anything.
    #[serde(default)]
    pub target: Option<String>,
    /// When the run succeeded: the window and the settle time count from here.
    pub started: u64,
    pub spec: VerifySpec,
    /// The metric query as bound to the plan, if the runbook declares one.
    #[serde(default)]
    pub metric: Option<String>,
    /// Does the alert's source say when it stops firing (Alertmanager does)?
    pub alert_tracked: bool,
    #[serde(default)]
    pub resolved_at: Option<u64>,
    #[serde(default)]
    pub refired_at: Option<u64>,
    #[serde(default)]
    pub readings: Vec<Reading>,
    #[serde(default)]
    pub verdict: Option<Verdict>,
}

fn human(s: u64) -> String {
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

impl Watch {
    pub fn settle_at(&self) -> u64 {
        self.started.saturating_add(self.spec.settle_secs)
    }

    pub fn ends_at(&self) -> u64 {
        self.started.saturating_add(self.spec.window_secs)
    }

    /// Should the metric be read now? Only after the settle time, and only while undecided.
    pub fn wants_reading(&self, now: u64) -> bool {
        self.metric.is_some() && self.verdict.is_none() && now >= self.settle_at()
    }

    pub fn record(&mut self, reading: Reading) {
        self.readings.push(reading);
        if self.readings.len() > MAX_READINGS {
            let extra = self.readings.len() - MAX_READINGS;
            self.readings.drain(..extra);
        }
    }

    /// The source said resolved. Only the first counts; a resolution after a re-fire is still
    /// a fix that did not hold.
    pub fn resolved(&mut self, at: u64) {
        if self.resolved_at.is_none() {
            self.resolved_at = Some(at);
        }
    }

    /// The source says the alert is firing. Before it resolved that is the same alert still
    /// firing (a repeat notification); after, it came back.
    pub fn firing(&mut self, at: u64) {
        if self.resolved_at.is_some() && self.refired_at.is_none() {
            self.refired_at = Some(at);
        }
    }

    /// The verdict at `now`, or `None` while it is too early to tell.
    pub fn judge(&self, now: u64) -> Option<Verdict> {
        let verdict = |effect, why: String| Some(Verdict { effect, why });
        if let (Some(resolved), Some(refired)) = (self.resolved_at, self.refired_at) {
            return verdict(
                Effect::Ineffective,
                format!(
                    "the alert resolved {} after {} and fired again {} later",
                    human(resolved.saturating_sub(self.started)),
                    self.runbook,
                    human(refired.saturating_sub(resolved))
                ),
            );
        }
        let metric = self.metric.as_deref();
        if !self.alert_tracked && metric.is_none() {
            return verdict(
                Effect::Unknown,
                format!(
                    "nothing to verify {} by: the alert's source does not report when an alert stops firing, and the runbook declares no `verify.metric`",
                    self.runbook
                ),
            );
        }
        let latest = self
            .readings
            .iter()
            .rev()
            .find(|r| r.at >= self.settle_at());
        let expect = self.spec.expect;
        let metric_says = |r: &Reading| match (r.value, expect) {
            (Some(v), Some(e)) => format!("{} = {v} (expected {e})", metric.unwrap_or("")),
            (Some(v), None) => format!("{} = {v}", metric.unwrap_or("")),
            (None, _) => format!(
                "{} has no value: {}",
                metric.unwrap_or(""),
                r.missing.as_deref().unwrap_or("no data")
            ),
        };
        let metric_ok = latest.and_then(|r| r.value.map(|v| expect.is_none_or(|e| e.holds(v))));
        let alert_ok = !self.alert_tracked || self.resolved_at.is_some();
        if now >= self.settle_at() && alert_ok && (metric.is_none() || metric_ok == Some(true)) {
            let mut said = Vec::new();
            if let Some(r) = self.resolved_at {
                said.push(format!(
                    "the alert resolved {} after the run and stayed resolved",
                    human(r.saturating_sub(self.started))
                ));
            }
            if let Some(r) = latest {
                said.push(metric_says(r));
            }
            return verdict(Effect::Effective, said.join("; "));
        }
        if now < self.ends_at() {
            return None;
        }
        let window = human(self.spec.window_secs);
        if !alert_ok {
            return verdict(
                Effect::Ineffective,
                format!(
                    "the alert was still firing {window} after {} succeeded (no `resolved` from its source)",
                    self.runbook
                ),
            );
        }
        match (metric_ok, latest) {
            (Some(false), Some(r)) => verdict(
                Effect::Ineffective,
                format!("{window} after {}: {}", self.runbook, metric_says(r)),
            ),
            (_, Some(r)) => verdict(
                Effect::Unknown,
                format!("{}; missing data is never success", metric_says(r)),
            ),
            _ => verdict(
                Effect::Unknown,
                format!(
                    "{} was never read within {window}; missing data is never success",
                    metric.unwrap_or("the metric")
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(tracked: bool, metric: bool) -> Watch {
        Watch {
            runbook: "restart-consumer-group".into(),
            target: None,
            started: 1000,
            spec: VerifySpec {
                window_secs: 600,
                settle_secs: 120,
                metric: metric.then(|| "lag".to_string()),
                expect: metric.then(|| Expectation::parse("< 100").expect("valid")),
            },
            metric: metric.then(|| "lag".to_string()),
            alert_tracked: tracked,
            resolved_at: None,
            refired_at: None,
            readings: Vec::new(),
            verdict: None,
        }
    }

    fn read(w: &mut Watch, at: u64, value: Option<f64>) {
        w.record(Reading {
            at,
            value,
            missing: value.is_none().then(|| "no series".to_string()),
        });
    }

    #[test]
    fn a_resolved_alert_counts_once_it_held_through_the_settle_time() {
        let mut w = watch(true, false);
        assert_eq!(w.judge(1010), None);
        w.firing(1030); // a repeat notification: still the same alert
        w.resolved(1060);
        assert_eq!(w.judge(1100), None, "settling");
        let v = w.judge(1120).expect("decided");
        assert_eq!(v.effect, Effect::Effective, "{}", v.why);
        assert!(v.why.contains("resolved 1m after"), "{}", v.why);
    }

    #[test]
    fn firing_again_after_resolving_or_past_the_window_is_ineffective() {
        let mut w = watch(true, false);
        w.resolved(1060);
        w.firing(1090);
        let v = w.judge(1091).expect("decided at once");
        assert_eq!(v.effect, Effect::Ineffective);
        assert!(v.why.contains("fired again 30s later"), "{}", v.why);

        let w = watch(true, false);
        assert_eq!(w.judge(1599), None);
        let v = w.judge(1600).expect("window over");
        assert_eq!(v.effect, Effect::Ineffective);
        assert!(v.why.contains("still firing 10m"), "{}", v.why);
    }

    #[test]
    fn the_metric_must_hold_after_settling_and_missing_data_is_never_success() {
        let mut w = watch(false, true);
        read(&mut w, 1050, Some(10.0)); // before settling: does not count
        assert_eq!(w.judge(1130), None);
        read(&mut w, 1130, Some(500.0));
        assert_eq!(w.judge(1130), None, "may still recover");
        read(&mut w, 1300, Some(42.0));
        assert_eq!(w.judge(1300).map(|v| v.effect), Some(Effect::Effective));

        let mut w = watch(false, true);
        read(&mut w, 1590, Some(500.0));
        let v = w.judge(1600).expect("window over");
        assert_eq!(v.effect, Effect::Ineffective);
        assert!(v.why.contains("lag = 500 (expected < 100)"), "{}", v.why);

        let mut w = watch(false, true);
        read(&mut w, 1590, None);
        let v = w.judge(1600).expect("window over");
        assert_eq!(v.effect, Effect::Unknown);
        assert!(v.why.contains("missing data is never success"), "{}", v.why);
        let never = watch(false, true).judge(1600).expect("window over");
        assert_eq!(never.effect, Effect::Unknown);
    }

    #[test]
    fn both_signals_must_agree_and_no_signal_is_unknown_at_once() {
        let mut w = watch(true, true);
        w.resolved(1030);
        read(&mut w, 1200, Some(900.0));
        assert_eq!(w.judge(1200), None, "the metric has not recovered yet");
        let v = w.judge(1600).expect("window over");
        assert_eq!(v.effect, Effect::Ineffective, "{}", v.why);

        let v = watch(false, false).judge(1000).expect("at once");
        assert_eq!(v.effect, Effect::Unknown);
    }

    #[test]
    fn expectations_parse_and_compare() {
        let e = Expectation::parse(" <= 0.5").expect("valid");
        assert!(e.holds(0.5) && !e.holds(0.6) && !e.holds(f64::NAN));
        assert_eq!(e.to_string(), "<= 0.5");
        assert!(!Expectation::parse("!= 0").expect("valid").holds(f64::NAN));
        for bad in ["100", "< x", "=< 3", "< inf", ""] {
            assert!(Expectation::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metric_placeholders_bind_escaped_and_refuse_missing_values() {
        let spec = VerifySpec {
            metric: Some(r#"sum(kafka_consumergroup_lag{consumergroup="{params.group}"})"#.into()),
            ..VerifySpec::default()
        };
        let mut params = std::collections::BTreeMap::new();
        params.insert("group".to_string(), serde_json::json!(r#"a"b\c"#));
        assert_eq!(
            spec.bound_metric(&params).expect("bound").as_deref(),
            Some(r#"sum(kafka_consumergroup_lag{consumergroup="a\"b\\c"})"#)
        );
        assert_eq!(spec.metric_params(), vec!["group".to_string()]);
        assert!(spec.bound_metric(&Default::default()).is_err());
    }

    #[test]
    fn readings_stay_bounded() {
        let mut w = watch(false, true);
        for i in 0..(MAX_READINGS as u64 * 3) {
            read(&mut w, 1200 + i, Some(1.0));
        }
        assert_eq!(w.readings.len(), MAX_READINGS);
        assert_eq!(
            w.readings.last().map(|r| r.at),
            Some(1200 + MAX_READINGS as u64 * 3 - 1)
        );
    }
}
