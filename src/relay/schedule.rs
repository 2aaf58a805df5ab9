//! Retry schedule: exponential backoff between attempts, bounded by the queue lifetime.

use std::time::Duration;

/// Retry settings (mxgate.yaml `delivery:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt.
    pub initial: Duration,
    /// Longest delay between attempts.
    pub max: Duration,
    /// How long a message may stay queued before it bounces.
    pub max_queue_lifetime: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(3600),
            max_queue_lifetime: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// Delay before the next attempt after `attempts` failed ones (1 m, 2 m, 4 m ... capped).
    pub(crate) fn delay_after(&self, attempts: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempts.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// True when a message received at `received` (epoch seconds) has been queued too long.
    pub(crate) fn is_expired(&self, received: u64, now: u64) -> bool {
        now.saturating_sub(received) >= self.max_queue_lifetime.as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        let d: Vec<u64> = (1..=9).map(|a| p.delay_after(a).as_secs()).collect();
        assert_eq!(d, vec![60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(p.delay_after(200).as_secs(), 3600);
        assert!(!p.is_expired(1000, 1000 + 5 * 24 * 3600 - 1));
        assert!(p.is_expired(1000, 1000 + 5 * 24 * 3600));
    }
}
