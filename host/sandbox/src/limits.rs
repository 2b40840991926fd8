//! What one phase may cost the host: log lines and bytes, capability calls (per phase and per
//! second), the size of a result handed to the guest, of a value kept in a record, of stderr and
//! of the verdict. Whatever a step does, what the host keeps of one phase is bounded by these.
//! Logs over the limit are truncated and counted; calls over the limit end the phase (a fault,
//! recorded once).

use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PhaseLimits {
    /// Log lines kept per phase; later ones are counted, not kept.
    pub log_lines: usize,
    /// Log bytes kept per phase (messages and fields).
    pub log_bytes: usize,
    /// One log line's message or field value is cut to this many bytes.
    pub log_line_bytes: usize,
    /// Capability calls per phase, refused ones included.
    pub calls_per_phase: u32,
    /// Capability calls per second of a phase.
    pub calls_per_second: u32,
    /// A capability result larger than this (as JSON) is not handed to the guest.
    pub result_bytes: usize,
    /// A call's arguments or result larger than this is kept in the record as a digest.
    pub recorded_value_bytes: usize,
    /// What the guest may write to stderr (panic messages).
    pub stderr_bytes: usize,
    /// Evidence or output pairs kept from one verdict.
    pub verdict_pairs: usize,
    /// A verdict's summary, or one evidence or output value, is cut to this many bytes.
    pub verdict_text_bytes: usize,
}

impl Default for PhaseLimits {
    fn default() -> Self {
        PhaseLimits {
            log_lines: 200,
            log_bytes: 64 << 10,
            log_line_bytes: 4 << 10,
            calls_per_phase: 200,
            calls_per_second: 100,
            result_bytes: 1 << 20,
            recorded_value_bytes: 16 << 10,
            stderr_bytes: 16 << 10,
            verdict_pairs: 64,
            verdict_text_bytes: 4 << 10,
        }
    }
}

/// A phase went over one of its limits; the guest is stopped with this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: more than {limit} in one phase; the host stopped the step")]
pub struct LimitExceeded {
    pub what: &'static str,
    pub limit: u64,
}

/// What is left of one phase's limits.
pub(crate) struct Budget {
    pub(crate) limits: PhaseLimits,
    calls: u32,
    window_start: Instant,
    window_calls: u32,
    log_bytes: usize,
    pub(crate) logs_dropped: u64,
    pub(crate) logs_truncated: u64,
    pub(crate) denials: u64,
}

pub(crate) enum LogAdmit {
    Keep,
    Drop,
}

impl Budget {
    pub(crate) fn new(limits: PhaseLimits) -> Self {
        Budget {
            limits,
            calls: 0,
            window_start: Instant::now(),
            window_calls: 0,
            log_bytes: 0,
            logs_dropped: 0,
            logs_truncated: 0,
            denials: 0,
        }
    }

    /// Count one capability call, or say which limit it breaks.
    pub(crate) fn take_call(&mut self) -> Result<(), LimitExceeded> {
        self.calls += 1;
        if self.calls > self.limits.calls_per_phase {
            return Err(LimitExceeded {
                what: "capability calls",
                limit: u64::from(self.limits.calls_per_phase),
            });
        }
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.window_calls = 0;
        }
        self.window_calls += 1;
        if self.window_calls > self.limits.calls_per_second {
            return Err(LimitExceeded {
                what: "capability calls per second",
                limit: u64::from(self.limits.calls_per_second),
            });
        }
        Ok(())
    }

    /// May one more log line of `bytes` (after truncation) be kept?
    pub(crate) fn admit_log(&mut self, kept: usize, bytes: usize) -> LogAdmit {
        if kept >= self.limits.log_lines || self.log_bytes + bytes > self.limits.log_bytes {
            self.logs_dropped += 1;
            return LogAdmit::Drop;
        }
        self.log_bytes += bytes;
        LogAdmit::Keep
    }
}

/// The most a phase's outputs may take in all (keys and values): they are kept on its audit
/// record, which a resume and a follow-up read back whole, and which the audit cuts to a
/// digest past its own bound. A step returning more is refused, not cut: a later step or a
/// follow-up would read an output that is not there.
pub const OUTPUT_BYTES: usize = 32 << 10;
/// The most a phase's evidence may take in all: informational, so what is past it is cut.
pub const EVIDENCE_BYTES: usize = 32 << 10;

/// The most of a fault's message (a trap, a failed instantiation) the host keeps. A trap's
/// text carries wasmtime's backtrace, whose frame names come from the component's own name
/// section: a hostile step could make it hundreds of megabytes.
pub const FAULT_MESSAGE_BYTES: usize = 4 << 10;

/// `value` displayed into at most `max` bytes (on a character boundary), saying when it was
/// cut. The text beyond `max` is never built: a `Display` that would write a gigabyte stops at
/// the first write past the bound.
pub fn display_bounded(value: &dyn std::fmt::Display, max: usize) -> String {
    struct Upto {
        out: String,
        max: usize,
        cut: bool,
    }
    impl std::fmt::Write for Upto {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let room = self.max - self.out.len();
            if s.len() <= room {
                self.out.push_str(s);
                return Ok(());
            }
            let mut end = room;
            while end > 0 && !s.is_char_boundary(end) {
                end -= 1;
            }
            self.out.push_str(&s[..end]);
            self.cut = true;
            Err(std::fmt::Error)
        }
    }
    let mut upto = Upto {
        out: String::new(),
        max,
        cut: false,
    };
    // An error here is the bound (or the value's own Display failing): what was written stays.
    let _ = std::fmt::write(&mut upto, format_args!("{value}"));
    if upto.cut {
        upto.out
            .push_str(&format!("…[cut: longer than {max} bytes]"));
    }
    upto.out
}

/// `text` cut to at most `max` bytes on a character boundary, saying how much was cut.
pub fn truncate(text: String, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end;
    let mut out = text;
    out.truncate(end);
    out.push_str(&format!("…[{cut} bytes cut]"));
    (out, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_display_is_cut_at_the_bound_without_building_the_rest() {
        /// Writes its text in pieces for ever, as a backtrace of endless frames would: only a
        /// writer that stops at the bound returns.
        struct Endless;
        impl std::fmt::Display for Endless {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                loop {
                    f.write_str("frame é ")?;
                }
            }
        }
        let text = display_bounded(&Endless, 100);
        assert!(text.starts_with("frame é frame"), "{text}");
        assert!(text.ends_with("…[cut: longer than 100 bytes]"), "{text}");
        assert!(text.len() <= 100 + "…[cut: longer than 100 bytes]".len());
        assert_eq!(display_bounded(&"short", 100), "short");
        // Cut inside the two-byte `é`: on the boundary before it.
        assert_eq!(
            display_bounded(&"ab é", 4),
            "ab …[cut: longer than 4 bytes]"
        );
    }

    #[test]
    fn calls_past_the_phase_budget_are_refused() {
        let mut b = Budget::new(PhaseLimits {
            calls_per_phase: 3,
            ..PhaseLimits::default()
        });
        for _ in 0..3 {
            assert!(b.take_call().is_ok());
        }
        assert_eq!(
            b.take_call(),
            Err(LimitExceeded {
                what: "capability calls",
                limit: 3
            })
        );
    }

    #[test]
    fn truncation_keeps_character_boundaries() {
        let (t, cut) = truncate("ééé".into(), 3);
        assert!(cut);
        assert!(t.starts_with('é') && t.contains("bytes cut"), "{t}");
        assert_eq!(truncate("ok".into(), 3), ("ok".into(), false));
    }
}
