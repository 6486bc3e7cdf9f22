//! How registry-gate's watches (policy, namespaces, sources, copies) retry when the API server
//! is away.
//!
//! kube-runtime's default follows client-go: 0.8 s doubling to 30 s, with up to as much again of
//! jitter, reset only after 120 s without an error. After an API server restart of about ten
//! seconds that held every trigger of the controller back for 11-30 s more (a rotated source
//! reached its copies 25-28 s after the API server was ready again, in the end-to-end restart
//! test), and it would hold a policy edit back as long. registry-gate runs one watch per kind,
//! not thousands, so a shorter ceiling costs the API server little: 0.5 s doubling to 5 s,
//! reset by the first event that gets through.

use std::time::Duration;

use kube::runtime::utils::Backoff;

const FIRST: Duration = Duration::from_millis(500);
const CEILING: Duration = Duration::from_secs(5);

/// The backoff for every watch registry-gate runs.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (delay * 2).min(CEILING);
        Some(delay)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_a_ceiling_and_resets() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<u64> = backoff.by_ref().take(6).map(|d| d.as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(FIRST));
    }
}
