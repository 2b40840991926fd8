//! What time it is, as one value the runtime is given: the system's clock in a service, a
//! hand-moved one in scenario tests (a verification window of ten minutes is walked through in
//! milliseconds, and the rails see the same time).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone)]
pub struct Clock(Source);

#[derive(Clone)]
enum Source {
    System,
    Manual(Arc<Mutex<SystemTime>>),
}

impl Default for Clock {
    fn default() -> Self {
        Clock(Source::System)
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::System => f.write_str("Clock::system"),
            Source::Manual(_) => write!(f, "Clock::manual({:?})", self.now()),
        }
    }
}

impl Clock {
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock that stands still at `start` until [`Clock::advance`] moves it.
    pub fn manual(start: SystemTime) -> Clock {
        Clock(Source::Manual(Arc::new(Mutex::new(start))))
    }

    pub fn now(&self) -> SystemTime {
        match &self.0 {
            Source::System => SystemTime::now(),
            Source::Manual(at) => *at.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Seconds since the Unix epoch (0 before it: a clock that far off fails every window).
    pub fn secs(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// Move a manual clock forward (never back); the system clock ignores it.
    pub fn advance_to(&self, to: SystemTime) {
        if let Source::Manual(at) = &self.0 {
            let mut at = at.lock().unwrap_or_else(PoisonError::into_inner);
            if to > *at {
                *at = to;
            }
        }
    }

    pub fn advance(&self, by: Duration) {
        self.advance_to(self.now() + by);
    }

    /// A hand-moved clock: waiting on it is moving it (a scenario walks a two-minute wait in no
    /// time, its mocks answering each reading in turn).
    pub fn is_manual(&self) -> bool {
        matches!(self.0, Source::Manual(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_forward_and_only_when_told() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000);
        let clock = Clock::manual(start);
        let copy = clock.clone();
        assert_eq!(clock.secs(), 1_000);
        copy.advance(Duration::from_secs(90));
        assert_eq!(clock.secs(), 1_090, "clones share the time");
        clock.advance_to(start);
        assert_eq!(clock.secs(), 1_090, "never back");
        assert!(Clock::system().secs() > 1_700_000_000);
    }
}
