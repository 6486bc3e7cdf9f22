//! The audit log's budget: one line per denied or audited review, at most
//! [`LINES_PER_SECOND`] a second across the process.
//!
//! A denial flood (a crash-looping controller re-creating a Pod with a bad image, or a hostile
//! client) must not turn into a log flood: one 1 MB review with 20,000 denied images used to
//! write 8.9 MB of log. Each review now writes one line that names its first denied image and
//! counts the rest, and lines past the rate are dropped, counted
//! (`registry_gate_audit_lines_suppressed_total`), and reported on the next line written
//! (`suppressed_before`), so the log says what it left out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Audit lines written per second at most; at about 1 KiB a line, 100 KiB/s of log.
pub const LINES_PER_SECOND: u64 = 100;

/// A fixed one-second window, lock-free: the second it counts, lines written in it, and lines
/// dropped since the last one written.
pub struct RateLimit {
    limit: u64,
    window: AtomicU64,
    written: AtomicU64,
    suppressed: AtomicU64,
    suppressed_total: AtomicU64,
}

/// Leave to write one line; `suppressed_before` lines were dropped since the last one.
#[derive(Debug, PartialEq, Eq)]
pub struct Permit {
    pub suppressed_before: u64,
}

impl RateLimit {
    pub const fn new(limit: u64) -> Self {
        RateLimit {
            limit,
            window: AtomicU64::new(0),
            written: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            suppressed_total: AtomicU64::new(0),
        }
    }

    /// Lines dropped since the process started, for the metric.
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total.load(Ordering::Relaxed)
    }

    /// A permit to write a line in second `now`, or `None` when this second's lines are spent.
    pub fn permit_at(&self, now: u64) -> Option<Permit> {
        let window = self.window.load(Ordering::Relaxed);
        if window != now
            && self.window.compare_exchange(window, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.written.store(0, Ordering::Relaxed);
        }
        if self.written.fetch_add(1, Ordering::Relaxed) < self.limit {
            Some(Permit { suppressed_before: self.suppressed.swap(0, Ordering::Relaxed) })
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            self.suppressed_total.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// [`RateLimit::permit_at`] the current second.
    pub fn permit(&self) -> Option<Permit> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.permit_at(now)
    }
}

/// The process's audit log budget.
pub static AUDIT_LINES: RateLimit = RateLimit::new(LINES_PER_SECOND);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_rate_are_dropped_and_counted_on_the_next_line() {
        let limit = RateLimit::new(3);
        let granted = (0..10).filter(|_| limit.permit_at(100).is_some()).count();
        assert_eq!(granted, 3);
        assert_eq!(limit.permit_at(101), Some(Permit { suppressed_before: 7 }));
        assert_eq!(limit.permit_at(101), Some(Permit { suppressed_before: 0 }));
        assert_eq!(limit.suppressed_total(), 7);
    }
}
