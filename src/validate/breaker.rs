//! The circuit breaker of one validation destination (an SMTP route or an LDAP directory):
//! pure, `now` passed in. After `failures` failed lookups in a row it opens for `cooldown`
//! (lookups get `TempFail(BreakerOpen)` at once, so a down server costs no per-RCPT
//! timeout); then one trial lookup is let through (half-open): success closes it, failure
//! opens it again.

use std::time::{Duration, Instant};

/// Breaker settings (`breaker: {failures: 5, cooldown: 30s}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker (at least 1).
    pub failures: u32,
    /// How long it stays open before a trial.
    pub cooldown: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Lookups go through; `failures` in a row so far.
    Closed {
        /// Consecutive failures.
        failures: u32,
    },
    /// No lookups until `until`.
    Open {
        /// End of the cool-down.
        until: Instant,
    },
    /// One trial lookup is under way since `since`.
    HalfOpen {
        /// When the trial was admitted.
        since: Instant,
    },
}

/// What [`CircuitBreaker::admit`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: look up.
    Yes,
    /// The cool-down is over: this lookup is the trial; its result decides.
    Trial,
    /// Open (or a trial is under way): answer `TempFail(BreakerOpen)` without asking.
    No,
}

/// A change of state worth a log line and a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Closed → open after `failures` consecutive failures.
    Opened {
        /// The failures in a row that opened it.
        failures: u32,
    },
    /// The trial failed: open again for another cool-down.
    Reopened,
    /// The trial succeeded: closed.
    Closed,
}

/// A pure circuit breaker.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    state: BreakerState,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        CircuitBreaker {
            settings,
            state: BreakerState::Closed { failures: 0 },
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// True while lookups are refused without asking (the `breaker_open` gauge).
    pub fn is_open(&self) -> bool {
        !matches!(self.state, BreakerState::Closed { .. })
    }

    /// May a lookup go to the destination now?
    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            BreakerState::Closed { .. } => Admit::Yes,
            BreakerState::Open { until } if now < until => Admit::No,
            BreakerState::Open { .. } => {
                self.state = BreakerState::HalfOpen { since: now };
                Admit::Trial
            }
            // A trial whose result never came (its lookup was cancelled) must not keep the
            // breaker half-open for ever: after one more cool-down another trial goes.
            BreakerState::HalfOpen { since } if now >= since + self.settings.cooldown => {
                self.state = BreakerState::HalfOpen { since: now };
                Admit::Trial
            }
            BreakerState::HalfOpen { .. } => Admit::No,
        }
    }

    /// Records the result of an admitted lookup (`ok`: the destination answered, valid or
    /// invalid). Returns the transition it caused, if any.
    pub fn record(&mut self, now: Instant, ok: bool) -> Option<Transition> {
        match (self.state, ok) {
            (BreakerState::Closed { .. }, true) => {
                self.state = BreakerState::Closed { failures: 0 };
                None
            }
            (BreakerState::Closed { failures }, false) => {
                let failures = failures + 1;
                if failures >= self.settings.failures.max(1) {
                    self.state = BreakerState::Open {
                        until: now + self.settings.cooldown,
                    };
                    Some(Transition::Opened { failures })
                } else {
                    self.state = BreakerState::Closed { failures };
                    None
                }
            }
            (BreakerState::HalfOpen { .. }, true) => {
                self.state = BreakerState::Closed { failures: 0 };
                Some(Transition::Closed)
            }
            (BreakerState::HalfOpen { .. }, false) => {
                self.state = BreakerState::Open {
                    until: now + self.settings.cooldown,
                };
                Some(Transition::Reopened)
            }
            // Results of lookups admitted before the breaker opened change nothing: the
            // trial decides.
            (BreakerState::Open { .. }, _) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(30);

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerSettings {
            failures: 3,
            cooldown: COOL,
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let t0 = Instant::now();
        let mut b = breaker();
        assert_eq!(b.record(t0, false), None);
        assert_eq!(b.record(t0, false), None);
        // A success in between resets the count.
        assert_eq!(b.record(t0, true), None);
        assert_eq!(b.record(t0, false), None);
        assert_eq!(b.record(t0, false), None);
        assert_eq!(b.admit(t0), Admit::Yes);
        assert_eq!(
            b.record(t0, false),
            Some(Transition::Opened { failures: 3 })
        );
        assert!(b.is_open());
        assert_eq!(b.admit(t0), Admit::No);
        assert_eq!(b.admit(t0 + COOL - Duration::from_millis(1)), Admit::No);
        // A late result of a lookup admitted before opening changes nothing.
        assert_eq!(b.record(t0, true), None);
        assert!(b.is_open());
    }

    #[test]
    fn one_trial_after_the_cooldown_decides() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.record(t0, false);
        }
        let t1 = t0 + COOL;
        assert_eq!(b.admit(t1), Admit::Trial);
        // Only one trial at a time.
        assert_eq!(b.admit(t1), Admit::No);
        assert_eq!(b.record(t1, false), Some(Transition::Reopened));
        assert_eq!(b.admit(t1 + Duration::from_secs(1)), Admit::No);
        let t2 = t1 + COOL;
        assert_eq!(b.admit(t2), Admit::Trial);
        assert_eq!(b.record(t2, true), Some(Transition::Closed));
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
        assert_eq!(b.admit(t2), Admit::Yes);
    }

    #[test]
    fn a_lost_trial_is_retried_after_another_cooldown() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.record(t0, false);
        }
        assert_eq!(b.admit(t0 + COOL), Admit::Trial);
        // Its result never comes (the lookup was cancelled).
        assert_eq!(b.admit(t0 + COOL + COOL / 2), Admit::No);
        assert_eq!(b.admit(t0 + COOL * 2), Admit::Trial);
    }
}
