//! Per-client-IP limits shared by every listener: concurrent connections, recipients per hour
//! and invalid recipients per hour (Directory Harvest Attack Prevention, DHAP).
//! IPv6 clients are counted per network (`/64` by default): one host owns a whole /64, so
//! counting each address apart would let it escape every limit.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
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

/// IPv6 prefix length counted as one client unless configured (`per_ip.ipv6_prefix`).
pub(crate) const DEFAULT_IPV6_PREFIX: u8 = 64;

/// How often the server drops entries that no longer limit anything.
pub(crate) const PRUNE_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct PerIp {
    connections: u64,
    /// Start of the current one-hour window and recipients counted in it.
    window_start: Option<Instant>,
    recipients: u64,
    /// Start of the current one-hour DHAP window and invalid recipients counted in it: a
    /// window of its own, so a burst of valid mail does not restart the harvest count.
    invalid_window_start: Option<Instant>,
    invalid: u64,
}

impl PerIp {
    fn is_idle(&self, now: Instant) -> bool {
        let over = |w: Option<Instant>| w.is_none_or(|s| now.duration_since(s) >= HOUR);
        self.connections == 0 && over(self.window_start) && over(self.invalid_window_start)
    }

    /// Invalid recipients counted in the DHAP window running at `now` (0 once it is over).
    fn invalid_now(&self, now: Instant) -> u64 {
        match self.invalid_window_start {
            Some(s) if now.duration_since(s) < HOUR => self.invalid,
            _ => 0,
        }
    }
}

/// An IP's invalid-recipient count after one more was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhapCount {
    /// Invalid recipients in the current hour, this one included (0 when unlimited).
    pub count: u64,
    /// The count is now above `max_invalid_recipients_per_hour`.
    pub exceeded: bool,
}

/// Shared per-IP counters, keyed by IPv4 address or IPv6 network.
#[derive(Debug)]
pub struct RateLimiter {
    clock: Arc<dyn Clock>,
    ipv6_prefix: u8,
    table: Mutex<HashMap<IpAddr, PerIp>>,
}

/// Holds one connection slot for an IP; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    limiter: Arc<RateLimiter>,
    /// `None` when the limit is unlimited: nothing was counted.
    key: Option<IpAddr>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let now = self.limiter.clock.now();
        let mut t = self.limiter.lock();
        if let Some(e) = t.get_mut(&key) {
            e.connections = e.connections.saturating_sub(1);
            if e.is_idle(now) {
                t.remove(&key);
            }
        }
    }
}

impl RateLimiter {
    /// A limiter on the given clock, counting IPv6 clients per /64.
    pub fn new(clock: Arc<dyn Clock>) -> Arc<Self> {
        Self::with_ipv6_prefix(clock, DEFAULT_IPV6_PREFIX)
    }

    /// A limiter counting IPv6 clients per `/ipv6_prefix` network (at most 128).
    pub(crate) fn with_ipv6_prefix(clock: Arc<dyn Clock>, ipv6_prefix: u8) -> Arc<Self> {
        Arc::new(RateLimiter {
            clock,
            ipv6_prefix: ipv6_prefix.min(128),
            table: Mutex::new(HashMap::new()),
        })
    }

    /// The key `ip` is counted under: the IPv4 address, or the IPv6 address's network.
    pub(crate) fn key(&self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.ipv6_prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
            v4 => v4,
        }
    }

    /// The key in the shared store (docs/shared-state.md): the IPv4 address, or the IPv6
    /// network with its length (`2001:db8:1::/64`), so nodes configured with different
    /// `per_ip.ipv6_prefix` values never add up counts of different networks.
    pub(crate) fn shared_key(&self, ip: IpAddr) -> String {
        match self.key(ip) {
            IpAddr::V6(net) => format!("{net}/{}", self.ipv6_prefix),
            v4 => v4.to_string(),
        }
    }

    /// A limiter on the system clock.
    pub fn system() -> Arc<Self> {
        Self::new(Arc::new(SystemClock))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, PerIp>> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a connection slot unless `ip` already holds `max` (None = unlimited: nothing
    /// is counted).
    pub(crate) fn try_connect(
        self: &Arc<Self>,
        ip: IpAddr,
        max: Option<u64>,
    ) -> Option<ConnectionSlot> {
        let Some(max) = max else {
            return Some(ConnectionSlot {
                limiter: self.clone(),
                key: None,
            });
        };
        let key = self.key(ip);
        let mut t = self.lock();
        let e = t.entry(key).or_default();
        if e.connections >= max {
            return None;
        }
        e.connections += 1;
        Some(ConnectionSlot {
            limiter: self.clone(),
            key: Some(key),
        })
    }

    /// Counts one recipient for `ip` unless that would pass `max` in the current hour
    /// (None = unlimited: nothing is counted).
    pub(crate) fn try_recipient(&self, ip: IpAddr, max: Option<u64>) -> bool {
        let Some(max) = max else { return true };
        let now = self.clock.now();
        let key = self.key(ip);
        let mut t = self.lock();
        let e = t.entry(key).or_default();
        match e.window_start {
            Some(s) if now.duration_since(s) < HOUR => {}
            _ => {
                e.window_start = Some(now);
                e.recipients = 0;
            }
        }
        if e.recipients >= max {
            return false;
        }
        e.recipients += 1;
        true
    }

    /// Counts one invalid recipient for `ip` (`max_invalid_recipients_per_hour`; None =
    /// unlimited: nothing is counted). The window starts at the first invalid recipient and
    /// lasts an hour; `exceeded` once the count passes `max` (the 26th of 25).
    pub(crate) fn record_invalid(&self, ip: IpAddr, max: Option<u64>) -> DhapCount {
        let Some(max) = max else {
            return DhapCount {
                count: 0,
                exceeded: false,
            };
        };
        self.in_invalid_window(ip, |e| {
            e.invalid = e.invalid.saturating_add(1);
            DhapCount {
                count: e.invalid,
                exceeded: e.invalid > max,
            }
        })
    }

    /// Runs `f` on `ip`'s entry with its invalid-recipient window current (a new one starts
    /// at zero when none runs).
    fn in_invalid_window<R>(&self, ip: IpAddr, f: impl FnOnce(&mut PerIp) -> R) -> R {
        let now = self.clock.now();
        let key = self.key(ip);
        let mut t = self.lock();
        let e = t.entry(key).or_default();
        if e.invalid_now(now) == 0 {
            e.invalid_window_start = Some(now);
            e.invalid = 0;
        }
        f(e)
    }

    /// Raises `ip`'s invalid-recipient count to `global`, the count every node together
    /// has (from the shared store): the local decision then sees what other nodes saw.
    /// Never lowers it; starts a window if none runs.
    pub(crate) fn observe_invalid(&self, ip: IpAddr, global: u64) {
        if global == 0 {
            return;
        }
        self.in_invalid_window(ip, |e| e.invalid = e.invalid.max(global));
    }

    /// True when `ip` already passed `max` invalid recipients this hour: every further
    /// recipient gets the DHAP refusal until its window ends. Counts nothing.
    pub(crate) fn dhap_exceeded(&self, ip: IpAddr, max: Option<u64>) -> bool {
        let Some(max) = max else { return false };
        let now = self.clock.now();
        let key = self.key(ip);
        self.lock()
            .get(&key)
            .is_some_and(|e| e.invalid_now(now) > max)
    }

    /// Drops every entry that limits nothing any more: no open connection and no recipient
    /// (valid or invalid) counted in the last hour. The server calls this every [`PRUNE_EVERY`].
    pub(crate) fn prune(&self) {
        let now = self.clock.now();
        self.lock().retain(|_, e| !e.is_idle(now));
    }

    /// Number of IPs currently tracked.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A clock tests move by hand.
    #[derive(Debug)]
    pub(crate) struct ManualClock(pub(crate) Mutex<Instant>);

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    impl ManualClock {
        pub(crate) fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }

    #[test]
    fn shared_keys_carry_the_ipv6_prefix_length() {
        let l = RateLimiter::with_ipv6_prefix(manual(), 64);
        assert_eq!(l.shared_key("192.0.2.7".parse().unwrap()), "192.0.2.7");
        // An IPv4-mapped client counts as its IPv4 address.
        assert_eq!(
            l.shared_key("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7"
        );
        assert_eq!(
            l.shared_key("2001:db8:1:2:3::9".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        let wide = RateLimiter::with_ipv6_prefix(manual(), 48);
        assert_eq!(
            wide.shared_key("2001:db8:1:2:3::9".parse().unwrap()),
            "2001:db8:1::/48"
        );
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

    fn manual() -> Arc<ManualClock> {
        Arc::new(ManualClock(Mutex::new(Instant::now())))
    }

    #[test]
    fn trust_09_entries_are_pruned_once_their_hour_has_passed() {
        let clock = manual();
        let l = RateLimiter::new(clock.clone());
        // A spray of clients, each with one recipient: their windows keep them until pruned.
        for i in 0..1000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0xC633_6400 + i));
            assert!(l.try_recipient(ip, Some(10)));
        }
        let held: IpAddr = "192.0.2.1".parse().unwrap();
        let slot = l.try_connect(held, Some(5)).unwrap();
        assert_eq!(l.tracked(), 1001);
        clock.advance(Duration::from_secs(3599));
        l.prune();
        assert_eq!(l.tracked(), 1001, "windows still running");
        clock.advance(Duration::from_secs(1));
        l.prune();
        assert_eq!(l.tracked(), 1, "only the open connection is left");
        drop(slot);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn trust_09_unlimited_limits_count_nothing() {
        let l = RateLimiter::new(manual());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let _slot = l.try_connect(ip, None).unwrap();
        assert!(l.try_recipient(ip, None));
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn trust_09_ipv6_clients_are_counted_per_network() {
        let l = RateLimiter::new(manual());
        let a: IpAddr = "2001:db8:1:2::a".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::b".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::a".parse().unwrap();
        let _s = l.try_connect(a, Some(1)).unwrap();
        assert!(l.try_connect(b, Some(1)).is_none(), "same /64");
        assert!(l.try_connect(other, Some(1)).is_some(), "next /64");
        assert!(l.try_recipient(a, Some(2)));
        assert!(l.try_recipient(b, Some(2)));
        assert!(
            !l.try_recipient(a, Some(2)),
            "the /64 shares one hourly budget"
        );

        // A configured /128 counts every address apart; /48 counts both /64s together.
        let l = RateLimiter::with_ipv6_prefix(manual(), 128);
        let _s = l.try_connect(a, Some(1)).unwrap();
        assert!(l.try_connect(b, Some(1)).is_some());
        let l = RateLimiter::with_ipv6_prefix(manual(), 48);
        let _s = l.try_connect(a, Some(1)).unwrap();
        assert!(l.try_connect(other, Some(1)).is_none());
        // IPv4 (and IPv4-mapped) clients are counted per address.
        let l = RateLimiter::new(manual());
        let _s = l
            .try_connect("192.0.2.1".parse().unwrap(), Some(1))
            .unwrap();
        assert!(l
            .try_connect("::ffff:192.0.2.1".parse().unwrap(), Some(1))
            .is_none());
        assert!(l
            .try_connect("192.0.2.2".parse().unwrap(), Some(1))
            .is_some());
    }

    #[test]
    fn dhap_25_invalid_pass_the_26th_exceeds_for_an_hour() {
        let clock = manual();
        let l = RateLimiter::new(clock.clone());
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        for n in 1..=25 {
            assert_eq!(
                l.record_invalid(ip, Some(25)),
                DhapCount {
                    count: n,
                    exceeded: false
                }
            );
            assert!(!l.dhap_exceeded(ip, Some(25)), "after {n}");
        }
        assert_eq!(
            l.record_invalid(ip, Some(25)),
            DhapCount {
                count: 26,
                exceeded: true
            }
        );
        assert!(l.dhap_exceeded(ip, Some(25)));
        // Another client is unaffected.
        let other: IpAddr = "198.51.100.8".parse().unwrap();
        assert!(!l.dhap_exceeded(other, Some(25)));
        assert_eq!(l.record_invalid(other, Some(25)).count, 1);
        // The window runs an hour from the first invalid recipient, then starts over.
        clock.advance(Duration::from_secs(3599));
        assert!(l.dhap_exceeded(ip, Some(25)));
        l.prune();
        assert_eq!(l.tracked(), 2, "a running DHAP window keeps its entry");
        clock.advance(Duration::from_secs(1));
        assert!(!l.dhap_exceeded(ip, Some(25)));
        assert_eq!(l.record_invalid(ip, Some(25)).count, 1);
        clock.advance(Duration::from_secs(3600));
        l.prune();
        assert_eq!(l.tracked(), 0, "pruned with the other per-IP entries");
    }

    #[test]
    fn dhap_unlimited_counts_nothing_and_has_its_own_window() {
        let clock = manual();
        let l = RateLimiter::new(clock.clone());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            l.record_invalid(ip, None),
            DhapCount {
                count: 0,
                exceeded: false
            }
        );
        assert!(!l.dhap_exceeded(ip, None));
        assert_eq!(l.tracked(), 0);
        // Recipients per hour and invalid recipients are separate budgets.
        assert!(l.try_recipient(ip, Some(1)));
        clock.advance(Duration::from_secs(1800));
        assert_eq!(l.record_invalid(ip, Some(1)).count, 1);
        assert!(!l.try_recipient(ip, Some(1)));
        clock.advance(Duration::from_secs(1800));
        assert!(l.try_recipient(ip, Some(1)), "recipient window restarted");
        assert_eq!(
            l.record_invalid(ip, Some(1)),
            DhapCount {
                count: 2,
                exceeded: true
            },
            "DHAP window still running"
        );
    }

    #[test]
    fn dhap_ipv6_clients_are_counted_per_network() {
        let l = RateLimiter::new(manual());
        let a: IpAddr = "2001:db8:1:2::a".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::b".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::a".parse().unwrap();
        assert!(!l.record_invalid(a, Some(1)).exceeded);
        assert!(l.record_invalid(b, Some(1)).exceeded, "same /64");
        assert!(l.dhap_exceeded(a, Some(1)));
        assert!(!l.dhap_exceeded(other, Some(1)), "next /64");
        // IPv4-mapped addresses count as the IPv4 client.
        let v4: IpAddr = "192.0.2.9".parse().unwrap();
        l.record_invalid(v4, Some(1));
        l.record_invalid("::ffff:192.0.2.9".parse().unwrap(), Some(1));
        assert!(l.dhap_exceeded(v4, Some(1)));
    }

    #[test]
    fn idle_entries_are_forgotten() {
        let l = RateLimiter::system();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        drop(l.try_connect(ip, None));
        assert_eq!(l.tracked(), 0);
    }
}
