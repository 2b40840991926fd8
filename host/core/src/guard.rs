//! Guard rails against remediation loops: what may run automatically on a target, given what
//! already ran there. Pure: the book is a value the runtime keeps (and persists); time is passed
//! in as seconds since the Unix epoch.
//!
//! Rails, checked before an automatic run (a human's approval still runs through the first):
//! - **one at a time per target**: a target (what a runbook's declared mutations bind: a
//!   consumer group, a deployment, a broker, a backend) runs one execution, across incidents and
//!   agents — this one holds for every run, approved or not;
//! - **cooldown** per (target, runbook) after a run;
//! - **circuit breaker** per (target, runbook): N failed runs within a window block automatic
//!   runs for a period, until it expires or an approver clears it;
//! - **backoff** between automatic attempts on one fingerprint, doubling to a ceiling;
//! - **rate limit** of mutating executions per agent per hour.
//!
//! The book is bounded: histories keep the last [`HISTORY`] runs, and everything older than the
//! longest window is dropped by [`GuardBook::prune`].

use crate::verify::Effect;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Runs remembered per (target, runbook).
pub const HISTORY: usize = 16;
/// Targets, fingerprints and agents remembered at most (oldest forgotten first).
pub const MAX_KEYS: usize = 10_000;

/// An agent's rails, from its `guard:` section. Defaults are the safe ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rails {
    pub cooldown: Duration,
    pub breaker_failures: u32,
    pub breaker_window: Duration,
    pub breaker_open: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Mutating executions per agent per hour; 0 means none run automatically.
    pub max_runs_per_hour: u32,
    /// Runs verified ineffective within the breaker's window after which a runbook is not run
    /// on that target again without a human.
    pub ineffective_limit: u32,
}

impl Default for Rails {
    fn default() -> Self {
        Rails {
            cooldown: Duration::from_secs(5 * 60),
            breaker_failures: 3,
            breaker_window: Duration::from_secs(3600),
            breaker_open: Duration::from_secs(3600),
            backoff_initial: Duration::from_secs(60),
            backoff_max: Duration::from_secs(600),
            max_runs_per_hour: 20,
            ineffective_limit: 2,
        }
    }
}

/// Which rail held a run back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rail {
    TargetBusy,
    Cooldown,
    CircuitBreaker,
    Backoff,
    RateLimit,
    Ineffective,
}

impl Rail {
    pub const ALL: [Rail; 6] = [
        Rail::TargetBusy,
        Rail::Cooldown,
        Rail::CircuitBreaker,
        Rail::Backoff,
        Rail::RateLimit,
        Rail::Ineffective,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rail::TargetBusy => "target-busy",
            Rail::Cooldown => "cooldown",
            Rail::CircuitBreaker => "circuit-breaker",
            Rail::Backoff => "backoff",
            Rail::RateLimit => "rate-limit",
            Rail::Ineffective => "ineffective",
        }
    }
}

/// A run held back: the rail, in words, and until when (seconds) if it lapses by itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Blocked {
    pub rail: Rail,
    pub why: String,
    pub until: Option<u64>,
}

/// One run the rails are asked about.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunKey {
    pub agent: String,
    pub incident: String,
    pub runbook: String,
    pub target: String,
    pub fingerprint: String,
}

impl RunKey {
    fn pair(&self) -> String {
        pair(&self.target, &self.runbook)
    }
}

fn pair(target: &str, runbook: &str) -> String {
    format!("{target} · {runbook}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Busy {
    pub agent: String,
    pub incident: String,
    pub runbook: String,
    pub since: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub at: u64,
    pub ok: bool,
    #[serde(default)]
    pub incident: String,
    /// Whether the run fixed the alert, once verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<Effect>,
}

impl Run {
    /// A failed run, or one that succeeded without fixing anything.
    fn failed(&self) -> bool {
        !self.ok || self.effect == Some(Effect::Ineffective)
    }
}

/// What a target's history says about one runbook, for triage's evidence.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunbookHistory {
    pub runbook: String,
    pub target: String,
    pub runs: u32,
    pub failed: u32,
    pub effective: u32,
    pub ineffective: u32,
    pub unknown: u32,
    /// The newest run's outcome: `failed`, `effective`, `ineffective`, `unknown`, or
    /// `unverified` while it is still being watched.
    pub last: Option<String>,
    pub last_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Breaker {
    pub target: String,
    pub runbook: String,
    pub opened: u64,
    pub until: u64,
    pub why: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Attempts {
    pub last: u64,
    pub count: u32,
}

/// What the rails remember. Serialisable: the runtime persists it after every change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuardBook {
    #[serde(default)]
    pub busy: BTreeMap<String, Busy>,
    /// `target · runbook` → its recent runs, oldest first.
    #[serde(default)]
    pub history: BTreeMap<String, VecDeque<Run>>,
    /// `target · runbook` → an open breaker.
    #[serde(default)]
    pub breakers: BTreeMap<String, Breaker>,
    /// Fingerprint → automatic attempts.
    #[serde(default)]
    pub attempts: BTreeMap<String, Attempts>,
    /// Agent → starts of mutating executions in the last hour.
    #[serde(default)]
    pub starts: BTreeMap<String, VecDeque<u64>>,
}

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

fn human(s: u64) -> String {
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

impl GuardBook {
    /// May this run start at all (approved or not)? Only the target lock.
    pub fn check_busy(&self, key: &RunKey) -> Result<(), Blocked> {
        match self.busy.get(&key.target) {
            Some(b) if b.incident != key.incident => Err(Blocked {
                rail: Rail::TargetBusy,
                why: format!(
                    "target {} is busy: incident {} ({} agent) is running {} on it since {}",
                    key.target,
                    b.incident,
                    b.agent,
                    b.runbook,
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs(b.since)
                    )
                ),
                until: None,
            }),
            _ => Ok(()),
        }
    }

    /// May this run start automatically, without a human? Every rail, the first that holds it
    /// back named.
    pub fn check(&self, rails: &Rails, now: u64, key: &RunKey) -> Result<(), Blocked> {
        self.check_busy(key)?;
        if let Some(b) = self.breakers.get(&key.pair())
            && b.until > now
        {
            return Err(Blocked {
                rail: Rail::CircuitBreaker,
                why: format!(
                    "the circuit breaker for {} on {} is open for another {}: {} (clear it with `themis guard clear`)",
                    key.runbook,
                    key.target,
                    human(b.until - now),
                    b.why
                ),
                until: Some(b.until),
            });
        }
        let since = now.saturating_sub(secs(rails.breaker_window));
        let ineffective: Vec<u64> = self
            .history
            .get(&key.pair())
            .map(|h| {
                h.iter()
                    .filter(|r| r.effect == Some(Effect::Ineffective) && r.at >= since)
                    .map(|r| r.at)
                    .collect()
            })
            .unwrap_or_default();
        if ineffective.len() >= rails.ineffective_limit.max(1) as usize {
            return Err(Blocked {
                rail: Rail::Ineffective,
                why: format!(
                    "{} did not fix {} the last {} time(s) it ran there (within {}): it is not run there again without a human",
                    key.runbook,
                    key.target,
                    ineffective.len(),
                    human(secs(rails.breaker_window))
                ),
                until: ineffective.first().map(|t| t + secs(rails.breaker_window)),
            });
        }
        if let Some(last) = self.history.get(&key.pair()).and_then(|h| h.back())
            && last.at + secs(rails.cooldown) > now
        {
            let until = last.at + secs(rails.cooldown);
            return Err(Blocked {
                rail: Rail::Cooldown,
                why: format!(
                    "{} ran on {} {} ago ({}); it is not run again automatically for another {}",
                    key.runbook,
                    key.target,
                    human(now.saturating_sub(last.at)),
                    if last.ok { "succeeded" } else { "failed" },
                    human(until - now)
                ),
                until: Some(until),
            });
        }
        if let Some(a) = self.attempts.get(&key.fingerprint) {
            let wait = backoff(rails, a.count);
            if a.last + wait > now {
                return Err(Blocked {
                    rail: Rail::Backoff,
                    why: format!(
                        "this alert (fingerprint {}) had {} automatic attempt(s), the last {} ago; the next may start in {}",
                        key.fingerprint,
                        a.count,
                        human(now.saturating_sub(a.last)),
                        human(a.last + wait - now)
                    ),
                    until: Some(a.last + wait),
                });
            }
        }
        let hour = now.saturating_sub(3600);
        let recent = self
            .starts
            .get(&key.agent)
            .map(|s| s.iter().filter(|t| **t > hour).count())
            .unwrap_or(0);
        if recent >= rails.max_runs_per_hour as usize {
            let until = self
                .starts
                .get(&key.agent)
                .and_then(|s| s.iter().find(|t| **t > hour))
                .map(|t| t + 3600);
            return Err(Blocked {
                rail: Rail::RateLimit,
                why: format!(
                    "the {} agent started {recent} changing runbook(s) in the last hour, its limit is {}",
                    key.agent, rails.max_runs_per_hour
                ),
                until,
            });
        }
        Ok(())
    }

    /// A run starts: it holds the target; an automatic one counts an attempt on its
    /// fingerprint; every one counts against its agent's hourly budget.
    pub fn begin(&mut self, now: u64, key: &RunKey, automatic: bool) -> Result<(), Blocked> {
        self.check_busy(key)?;
        self.busy.insert(
            key.target.clone(),
            Busy {
                agent: key.agent.clone(),
                incident: key.incident.clone(),
                runbook: key.runbook.clone(),
                since: now,
            },
        );
        if automatic {
            let a = self
                .attempts
                .entry(key.fingerprint.clone())
                .or_insert(Attempts {
                    last: now,
                    count: 0,
                });
            a.last = now;
            a.count = a.count.saturating_add(1);
        }
        self.starts
            .entry(key.agent.clone())
            .or_default()
            .push_back(now);
        Ok(())
    }

    /// A run ended: the target is free, the run is history, and `breaker_failures` failures
    /// within the window open the breaker. Returns the breaker if this run opened it.
    pub fn end(&mut self, rails: &Rails, now: u64, key: &RunKey, ok: bool) -> Option<Breaker> {
        if self
            .busy
            .get(&key.target)
            .is_some_and(|b| b.incident == key.incident)
        {
            self.busy.remove(&key.target);
        }
        let history = self.history.entry(key.pair()).or_default();
        history.push_back(Run {
            at: now,
            ok,
            incident: key.incident.clone(),
            effect: None,
        });
        while history.len() > HISTORY {
            history.pop_front();
        }
        if ok {
            return None;
        }
        self.maybe_open(rails, now, &key.target, &key.runbook)
    }

    /// A successful run of `incident` was verified: remembered on its run, and an ineffective
    /// one counts as a failure for the breaker. Returns the breaker if this opened it.
    pub fn verdict(
        &mut self,
        rails: &Rails,
        now: u64,
        target: &str,
        runbook: &str,
        incident: &str,
        effect: Effect,
    ) -> Option<Breaker> {
        let run = self
            .history
            .get_mut(&pair(target, runbook))?
            .iter_mut()
            .rev()
            .find(|r| r.incident == incident)?;
        run.effect = Some(effect);
        if effect != Effect::Ineffective {
            return None;
        }
        self.maybe_open(rails, now, target, runbook)
    }

    /// Open the breaker if the failures within the window reached the limit.
    fn maybe_open(
        &mut self,
        rails: &Rails,
        now: u64,
        target: &str,
        runbook: &str,
    ) -> Option<Breaker> {
        let since = now.saturating_sub(secs(rails.breaker_window));
        let failures = self
            .history
            .get(&pair(target, runbook))
            .map(|h| h.iter().filter(|r| r.failed() && r.at >= since).count())
            .unwrap_or(0);
        if failures < rails.breaker_failures.max(1) as usize {
            return None;
        }
        let breaker = Breaker {
            target: target.to_owned(),
            runbook: runbook.to_owned(),
            opened: now,
            until: now + secs(rails.breaker_open),
            why: format!(
                "{failures} failed or ineffective run(s) within {}",
                human(secs(rails.breaker_window))
            ),
        };
        self.breakers.insert(pair(target, runbook), breaker.clone());
        Some(breaker)
    }

    /// What the runs of `runbook` on `target` came to, newest last.
    pub fn history_of(&self, target: &str, runbook: &str) -> Option<RunbookHistory> {
        let runs = self.history.get(&pair(target, runbook))?;
        let mut h = RunbookHistory {
            runbook: runbook.to_owned(),
            target: target.to_owned(),
            ..RunbookHistory::default()
        };
        for r in runs {
            h.runs += 1;
            match (r.ok, r.effect) {
                (false, _) => h.failed += 1,
                (true, Some(Effect::Effective)) => h.effective += 1,
                (true, Some(Effect::Ineffective)) => h.ineffective += 1,
                (true, Some(Effect::Unknown)) => h.unknown += 1,
                (true, None) => {}
            }
        }
        let last = runs.back()?;
        h.last = Some(match (last.ok, last.effect) {
            (false, _) => "failed".to_owned(),
            (true, Some(e)) => e.to_string(),
            (true, None) => "unverified".to_owned(),
        });
        h.last_at = Some(last.at);
        Some(h)
    }

    /// An approver clears the breakers (and the cooldown history) of a target, or of one
    /// runbook on it. Returns what was cleared.
    pub fn clear(&mut self, target: &str, runbook: Option<&str>) -> Vec<Breaker> {
        let hit = |k: &String| match runbook {
            Some(r) => *k == pair(target, r),
            None => k.starts_with(&format!("{target} · ")),
        };
        let keys: Vec<String> = self.breakers.keys().filter(|k| hit(k)).cloned().collect();
        let cleared = keys
            .iter()
            .filter_map(|k| self.breakers.remove(k))
            .collect();
        self.history.retain(|k, _| !hit(k));
        cleared
    }

    /// Forget a target's lock held by a run that cannot be running any more (the host
    /// restarted): recovery's, at start.
    pub fn release_all(&mut self) -> Vec<(String, Busy)> {
        std::mem::take(&mut self.busy).into_iter().collect()
    }

    /// Drop what no rail can look at any more, and keep every map within [`MAX_KEYS`].
    pub fn prune(&mut self, rails: &Rails, now: u64) {
        let horizon = secs(rails.breaker_window)
            .max(secs(rails.cooldown))
            .max(3600)
            .max(secs(rails.backoff_max) * 2);
        let old = now.saturating_sub(horizon);
        self.history.retain(|_, h| {
            h.retain(|r| r.at >= old);
            !h.is_empty()
        });
        self.breakers.retain(|_, b| b.until > now);
        self.attempts
            .retain(|_, a| a.last + secs(rails.backoff_max) * 2 > now);
        let hour = now.saturating_sub(3600);
        self.starts.retain(|_, s| {
            s.retain(|t| *t > hour);
            !s.is_empty()
        });
        cap(&mut self.history, |h| h.back().map(|r| r.at).unwrap_or(0));
        cap(&mut self.attempts, |a| a.last);
        cap(&mut self.starts, |s| s.back().copied().unwrap_or(0));
    }
}

/// The wait after `count` automatic attempts: the initial backoff doubling, up to the ceiling.
pub fn backoff(rails: &Rails, count: u32) -> u64 {
    if count == 0 {
        return 0;
    }
    let doubled = secs(rails.backoff_initial).saturating_mul(1u64 << (count - 1).min(20));
    doubled.min(secs(rails.backoff_max))
}

/// Keep the newest [`MAX_KEYS`] entries of a map, by `at`.
fn cap<V>(map: &mut BTreeMap<String, V>, at: impl Fn(&V) -> u64) {
    if map.len() <= MAX_KEYS {
        return;
    }
    let mut ages: Vec<(u64, String)> = map.iter().map(|(k, v)| (at(v), k.clone())).collect();
    ages.sort();
    for (_, k) in ages.into_iter().take(map.len() - MAX_KEYS) {
        map.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(incident: &str, fingerprint: &str) -> RunKey {
        RunKey {
            agent: "kubernetes".into(),
            incident: incident.into(),
            runbook: "restart-deployment".into(),
            target: "kubernetes:name=checkout,namespace=shop".into(),
            fingerprint: fingerprint.into(),
        }
    }

    #[test]
    fn a_target_runs_one_execution_at_a_time_across_incidents() {
        let mut book = GuardBook::default();
        let rails = Rails::default();
        book.begin(100, &key("inc-1", "f1"), true).expect("free");
        let held = book.check_busy(&key("inc-2", "f2")).expect_err("busy");
        assert_eq!(held.rail, Rail::TargetBusy);
        assert!(held.why.contains("incident inc-1"), "{}", held.why);
        assert!(book.begin(101, &key("inc-2", "f2"), false).is_err());
        // The same incident may go on (a follow-up on its own target).
        assert!(book.check_busy(&key("inc-1", "f1")).is_ok());
        book.end(&rails, 160, &key("inc-1", "f1"), true);
        assert!(book.check_busy(&key("inc-2", "f2")).is_ok());
    }

    #[test]
    fn cooldown_then_backoff_then_the_rate_limit_hold_automatic_runs_back() {
        let rails = Rails {
            max_runs_per_hour: 2,
            ..Rails::default()
        };
        let mut book = GuardBook::default();
        book.begin(1000, &key("inc-1", "f1"), true).expect("free");
        book.end(&rails, 1030, &key("inc-1", "f1"), true);
        // Cooldown: 5 minutes after the run, whatever the alert.
        let b = book
            .check(&rails, 1100, &key("inc-2", "f2"))
            .expect_err("cooling");
        assert_eq!((b.rail, b.until), (Rail::Cooldown, Some(1330)));
        // After it, the same fingerprint still backs off (60 s after one attempt: long past),
        // another runbook on another fingerprint is fine.
        assert!(book.check(&rails, 1331, &key("inc-2", "f1")).is_ok());
        book.begin(1331, &key("inc-2", "f1"), true).expect("free");
        book.end(&rails, 1332, &key("inc-2", "f1"), true);
        // Two attempts on f1: the next waits 120 s after the last; but the cooldown is longer.
        let mut other = key("inc-3", "f1");
        other.runbook = "delete-stuck-pod".into();
        let b = book.check(&rails, 1400, &other).expect_err("backoff");
        assert_eq!((b.rail, b.until), (Rail::Backoff, Some(1331 + 120)));
        // Two starts in the hour: the agent's budget of 2 is spent.
        other.fingerprint = "f9".into();
        let b = book.check(&rails, 1500, &other).expect_err("rate");
        assert_eq!((b.rail, b.until), (Rail::RateLimit, Some(1000 + 3600)));
        assert!(book.check(&rails, 4601, &other).is_ok());
    }

    #[test]
    fn failures_open_the_breaker_until_it_lapses_or_is_cleared() {
        let rails = Rails {
            cooldown: Duration::ZERO,
            backoff_initial: Duration::ZERO,
            ..Rails::default()
        };
        let mut book = GuardBook::default();
        for (i, at) in [100u64, 200, 300].iter().enumerate() {
            let k = key(&format!("inc-{i}"), &format!("f{i}"));
            book.begin(*at, &k, true).expect("free");
            let opened = book.end(&rails, at + 10, &k, false);
            assert_eq!(opened.is_some(), i == 2, "the third failure opens it");
        }
        let b = book
            .check(&rails, 400, &key("inc-9", "f9"))
            .expect_err("open");
        assert_eq!(b.rail, Rail::CircuitBreaker);
        assert!(
            b.why.contains("3 failed or ineffective run(s) within 1h"),
            "{}",
            b.why
        );
        assert_eq!(b.until, Some(310 + 3600));
        let cleared = book.clear("kubernetes:name=checkout,namespace=shop", None);
        assert_eq!(cleared.len(), 1);
        assert!(book.check(&rails, 400, &key("inc-9", "f9")).is_ok());
        // Failures outside the window do not count.
        let mut spaced = GuardBook::default();
        for (i, at) in [0u64, 4000, 8000].iter().enumerate() {
            let k = key(&format!("inc-{i}"), "f");
            spaced.begin(*at, &k, false).expect("free");
            assert!(spaced.end(&rails, *at, &k, false).is_none());
        }
    }

    #[test]
    fn ineffective_runs_count_for_the_breaker_and_twice_needs_a_human() {
        let rails = Rails {
            cooldown: Duration::ZERO,
            backoff_initial: Duration::ZERO,
            ..Rails::default()
        };
        let target = "kubernetes:name=checkout,namespace=shop";
        let mut book = GuardBook::default();
        for (i, at) in [100u64, 200].iter().enumerate() {
            let k = key(&format!("inc-{i}"), &format!("f{i}"));
            assert!(book.check(&rails, *at, &k).is_ok(), "run {i} may start");
            book.begin(*at, &k, true).expect("free");
            assert!(book.end(&rails, at + 5, &k, true).is_none());
            assert!(
                book.verdict(
                    &rails,
                    at + 50,
                    target,
                    &k.runbook,
                    &k.incident,
                    Effect::Ineffective
                )
                .is_none()
            );
        }
        let h = book.history_of(target, "restart-deployment").expect("ran");
        assert_eq!(
            (h.runs, h.ineffective, h.last.as_deref()),
            (2, 2, Some("ineffective"))
        );
        let b = book
            .check(&rails, 300, &key("inc-9", "f9"))
            .expect_err("twice");
        assert_eq!(b.rail, Rail::Ineffective);
        assert!(b.why.contains("did not fix"), "{}", b.why);
        // A third ineffective run (approved by a human) opens the breaker as a failure would.
        let k = key("inc-3", "f3");
        book.begin(400, &k, false).expect("free");
        book.end(&rails, 405, &k, true);
        let opened = book.verdict(
            &rails,
            450,
            target,
            &k.runbook,
            "inc-3",
            Effect::Ineffective,
        );
        assert!(opened.is_some_and(|b| b.why.contains("3 failed or ineffective")));
        // An effective verdict is remembered and opens nothing; an unknown run is no history.
        assert!(
            book.verdict(&rails, 460, target, &k.runbook, "inc-0", Effect::Effective)
                .is_none()
        );
        assert!(
            book.verdict(
                &rails,
                460,
                "elsewhere",
                &k.runbook,
                "inc-0",
                Effect::Effective
            )
            .is_none()
        );
        assert_eq!(
            book.history_of(target, "restart-deployment")
                .map(|h| h.effective),
            Some(1)
        );
    }

    #[test]
    fn backoff_doubles_to_its_ceiling_and_the_book_stays_bounded() {
        let rails = Rails::default();
        let waits: Vec<u64> = (0..7).map(|n| backoff(&rails, n)).collect();
        assert_eq!(waits, vec![0, 60, 120, 240, 480, 600, 600]);
        assert_eq!(backoff(&rails, u32::MAX), 600);
        let mut book = GuardBook::default();
        for i in 0..(MAX_KEYS + 50) {
            let k = RunKey {
                fingerprint: format!("f{i}"),
                target: format!("t{i}"),
                incident: format!("i{i}"),
                ..key("x", "y")
            };
            book.begin(5000 + i as u64, &k, true).expect("free");
            book.end(&rails, 5000 + i as u64, &k, true);
        }
        book.prune(&rails, 5000 + MAX_KEYS as u64 + 50);
        assert!(book.history.len() <= MAX_KEYS);
        assert!(book.attempts.len() <= MAX_KEYS);
        assert!(book.busy.is_empty());
        // Everything lapses with time.
        book.prune(&rails, 1_000_000);
        assert!(book.history.is_empty() && book.attempts.is_empty() && book.starts.is_empty());
    }
}
