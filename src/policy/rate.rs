//! Per-client-IP limits shared by every listener: concurrent connections and recipients per hour.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A source of "now", injectable so tests never sleep.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
struct PerIp {
    connections: u64,
    /// Start of the current one-hour window and recipients counted in it.
    window_start: Option<Instant>,
    recipients: u64,
}

impl PerIp {
    fn is_idle(&self, now: Instant) -> bool {
        self.connections == 0
            && self
                .window_start
                .is_none_or(|s| now.duration_since(s) >= HOUR)
    }
}

/// Shared per-IP counters.
#[derive(Debug)]
pub struct RateLimiter {
    clock: Arc<dyn Clock>,
    table: Mutex<HashMap<IpAddr, PerIp>>,
}

/// Holds one connection slot for an IP; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    limiter: Arc<RateLimiter>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let now = self.limiter.clock.now();
        let mut t = self.limiter.lock();
        if let Some(e) = t.get_mut(&self.ip) {
            e.connections = e.connections.saturating_sub(1);
            if e.is_idle(now) {
                t.remove(&self.ip);
            }
        }
    }
}

impl RateLimiter {
    /// A limiter on the given clock.
    pub fn new(clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(RateLimiter {
            clock,
            table: Mutex::new(HashMap::new()),
        })
    }

    /// A limiter on the system clock.
    pub fn system() -> Arc<Self> {
        Self::new(Arc::new(SystemClock))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, PerIp>> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a connection slot unless `ip` already holds `max` (None = unlimited).
    pub fn try_connect(self: &Arc<Self>, ip: IpAddr, max: Option<u64>) -> Option<ConnectionSlot> {
        let mut t = self.lock();
        let e = t.entry(ip).or_default();
        if max.is_some_and(|m| e.connections >= m) {
            return None;
        }
        e.connections += 1;
        Some(ConnectionSlot {
            limiter: self.clone(),
            ip,
        })
    }

    /// Counts one recipient for `ip` unless that would pass `max` in the current hour.
    pub fn try_recipient(&self, ip: IpAddr, max: Option<u64>) -> bool {
        let now = self.clock.now();
        let mut t = self.lock();
        let e = t.entry(ip).or_default();
        match e.window_start {
            Some(s) if now.duration_since(s) < HOUR => {}
            _ => {
                e.window_start = Some(now);
                e.recipients = 0;
            }
        }
        if max.is_some_and(|m| e.recipients >= m) {
            return false;
        }
        e.recipients += 1;
        true
    }

    /// Number of IPs currently tracked (for tests and memory checks).
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A clock tests move by hand.
    #[derive(Debug)]
    pub struct ManualClock(pub Mutex<Instant>);

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    impl ManualClock {
        pub fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }

    #[test]
    fn concurrency_slots_release_on_drop() {
        let l = RateLimiter::system();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = l.try_connect(ip, Some(2)).unwrap();
        let _b = l.try_connect(ip, Some(2)).unwrap();
        assert!(l.try_connect(ip, Some(2)).is_none());
        assert!(l
            .try_connect("192.0.2.2".parse().unwrap(), Some(2))
            .is_some());
        drop(a);
        assert!(l.try_connect(ip, Some(2)).is_some());
    }

    #[test]
    fn recipients_per_hour_window() {
        let clock = Arc::new(ManualClock(Mutex::new(Instant::now())));
        let l = RateLimiter::new(clock.clone());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(l.try_recipient(ip, Some(2)));
        assert!(l.try_recipient(ip, Some(2)));
        assert!(!l.try_recipient(ip, Some(2)));
        clock.advance(Duration::from_secs(3599));
        assert!(!l.try_recipient(ip, Some(2)));
        clock.advance(Duration::from_secs(1));
        assert!(l.try_recipient(ip, Some(2)));
    }

    #[test]
    fn idle_entries_are_forgotten() {
        let l = RateLimiter::system();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        drop(l.try_connect(ip, None));
        assert_eq!(l.tracked(), 0);
    }
}
