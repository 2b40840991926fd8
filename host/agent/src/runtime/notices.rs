//! Firing alerts nobody acts on are not dropped: each one an agent does not own, or gave up on,
//! reaches the humans (the log, Slack when configured) — once per alert and window, and at most
//! [`MAX_PER_WINDOW`] messages per budget and window: one budget for alerts no agent owns, one
//! per agent for those it gave up on (one agent failing every alert cannot silence another's),
//! so a flood of them (every alert failing while a database is away) reaches a channel as at
//! most 60 messages an hour per agent, and the rest are audited as suppressed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one alert (name + fingerprint) is not told again. Alertmanager repeats a
/// firing alert every `repeat_interval` (4 h by default).
pub const WINDOW: Duration = Duration::from_secs(3600);
/// The most messages of one kind per window; beyond it they are audited as suppressed.
pub const MAX_PER_WINDOW: usize = 60;
/// The most alerts remembered at once (bounded memory whatever arrives).
const MAX_REMEMBERED: usize = 10_000;

/// What to do about one firing alert nobody acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First time in the window: tell the humans.
    Tell,
    /// Told already in this window.
    Repeat,
    /// Over the window's budget of messages: recorded, not sent.
    Suppressed,
}

/// One budget of messages: the runtime's for alerts no agent owns, each agent's own for the
/// alerts it gave up on.
#[derive(Default)]
pub struct Notices {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    told: HashMap<String, Instant>,
    window_start: Option<Instant>,
    told_in_window: usize,
}

impl Notices {
    pub fn judge(&self, name: &str, fingerprint: &str, now: Instant) -> Verdict {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.window_start
            .is_none_or(|t| now.duration_since(t) >= WINDOW)
        {
            s.window_start = Some(now);
            s.told_in_window = 0;
        }
        let key = format!("{name}\0{fingerprint}");
        if s.told
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < WINDOW)
        {
            return Verdict::Repeat;
        }
        if s.told_in_window >= MAX_PER_WINDOW {
            return Verdict::Suppressed;
        }
        if s.told.len() >= MAX_REMEMBERED {
            s.told.retain(|_, t| now.duration_since(*t) < WINDOW);
            if s.told.len() >= MAX_REMEMBERED {
                return Verdict::Suppressed;
            }
        }
        s.told.insert(key, now);
        s.told_in_window += 1;
        Verdict::Tell
    }

    /// Takes back a [`Verdict::Tell`] whose message never left (its record failed): the alert
    /// is told when next judged, and the budget gets its place back.
    pub fn forget(&self, name: &str, fingerprint: &str) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.told.remove(&format!("{name}\0{fingerprint}")).is_some() {
            s.told_in_window = s.told_in_window.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn told_once_per_window_and_never_more_than_the_budget() {
        let u = Notices::default();
        let t0 = Instant::now();
        assert_eq!(u.judge("A", "f1", t0), Verdict::Tell);
        assert_eq!(
            u.judge("A", "f1", t0 + Duration::from_secs(60)),
            Verdict::Repeat
        );
        assert_eq!(
            u.judge("A", "f1", t0 + WINDOW + Duration::from_secs(1)),
            Verdict::Tell
        );
        let later = t0 + WINDOW * 3;
        let told = (0..MAX_PER_WINDOW + 10)
            .filter(|i| u.judge("B", &format!("f{i}"), later) == Verdict::Tell)
            .count();
        assert_eq!(told, MAX_PER_WINDOW);
        assert_eq!(u.judge("C", "x", later), Verdict::Suppressed);
    }

    #[test]
    fn a_tell_taken_back_is_told_again_and_gives_its_place_back() {
        let u = Notices::default();
        let t0 = Instant::now();
        for i in 0..MAX_PER_WINDOW {
            assert_eq!(u.judge("A", &format!("f{i}"), t0), Verdict::Tell);
        }
        assert_eq!(u.judge("A", "late", t0), Verdict::Suppressed);
        u.forget("A", "f0");
        // Forgetting what was never told changes nothing.
        u.forget("A", "never");
        assert_eq!(u.judge("A", "late", t0), Verdict::Tell);
        assert_eq!(u.judge("A", "f0", t0), Verdict::Suppressed);
        u.forget("A", "late");
        assert_eq!(u.judge("A", "f0", t0), Verdict::Tell);
        assert_eq!(u.judge("A", "f0", t0), Verdict::Repeat);
    }
}
