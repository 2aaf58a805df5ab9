//! One validation destination (a call-ahead route or an LDAP directory) with its circuit
//! breaker, in front of the shared verdict cache: the order of plan §2.3 — cache hit first,
//! then the breaker (open: `TempFail(BreakerOpen)` at once), then the lookup (which sheds
//! and coalesces itself), then the cache (valid/invalid only) and the breaker record.
//!
//! Background refresh of valid entries is left to the caller: [`Checked::refresh_due`]
//! says when; the caller runs [`Destination::refresh`] only when a probe slot is free.

use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::breaker::{Admit, BreakerSettings, CircuitBreaker, Transition};
use super::cache::VerdictCache;
use super::callahead::ProbePool;
use super::ldap::LdapDirectory;
use super::verdict::{Answer, TempFailCause, Verdict};

/// Time for the validator: monotonic for the breaker, unix seconds for the cache (which is
/// persisted). Injected so tests never sleep.
pub trait ValidationClock: Send + Sync {
    /// Monotonic now.
    fn now(&self) -> Instant;
    /// Unix seconds now.
    fn unix(&self) -> u64;
}

/// The real clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClocks;

impl ValidationClock for SystemClocks {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn unix(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// The lookup method of a destination.
#[derive(Debug)]
pub enum Method {
    /// SMTP call-ahead to one internal server.
    Callahead(ProbePool),
    /// LDAP accept query.
    Ldap(LdapDirectory),
}

impl Method {
    async fn ask(&self, address: &str) -> Answer {
        match self {
            Method::Callahead(p) => p.check(address).await,
            Method::Ldap(d) => d.lookup(address).await,
        }
    }

    /// The `method` label of the metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Method::Callahead(_) => "callahead",
            Method::Ldap(_) => "ldap",
        }
    }
}

/// Where an answer came from (the log says "cached since ..." for a cache hit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The cache; the answer was obtained at `stored` (unix seconds).
    Cache {
        /// When the cached answer was obtained.
        stored: u64,
    },
    /// A lookup just now.
    Lookup,
    /// Nothing was asked: the breaker is open.
    Breaker,
}

/// The outcome of [`Destination::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The answer (detail for the log only).
    pub answer: Answer,
    /// Where it came from.
    pub source: Source,
    /// A valid cache entry is due for a background refresh.
    pub refresh_due: bool,
    /// The breaker changed state (a log line and a metric).
    pub transition: Option<Transition>,
}

/// A destination: its method id (`callahead:<route>` / `ldap:<NAME>`), method and breaker.
#[derive(Debug)]
pub struct Destination {
    id: String,
    method: Method,
    breaker: Mutex<CircuitBreaker>,
    detect_catch_all: bool,
    /// One catch-all detection at a time: lookups arriving meanwhile wait for its finding
    /// instead of each probing a random address of their own.
    detecting: tokio::sync::Mutex<()>,
}

/// A local part no real mailbox has, for catch-all detection (Exim's `callout=random`).
fn random_local_part() -> String {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let h = std::collections::hash_map::RandomState::new().hash_one((n, t));
    format!("mxgate-probe-{h:016x}")
}

impl Destination {
    /// A destination with a closed breaker.
    pub fn new(id: impl Into<String>, method: Method, breaker: BreakerSettings) -> Self {
        Destination {
            id: id.into(),
            method,
            breaker: Mutex::new(CircuitBreaker::new(breaker)),
            detect_catch_all: false,
            detecting: tokio::sync::Mutex::new(()),
        }
    }

    /// Call-ahead only: before the first probe of a domain, probe a random address of it;
    /// when that is accepted the domain is a catch-all (every address looks valid) and its
    /// addresses are valid without a probe each, for `valid_ttl`. The finding is cached as
    /// the address `@domain`.
    pub fn with_catch_all_detection(mut self) -> Self {
        self.detect_catch_all = matches!(self.method, Method::Callahead(_));
        self
    }

    /// The method id (first part of the cache key).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// True while the breaker refuses lookups (the gauge).
    pub fn is_breaker_open(&self) -> bool {
        self.breaker().is_open()
    }

    /// Records a failed lookup that was cut short from outside (the whole-lookup bound), so
    /// a server that never answers still opens the breaker.
    pub fn record_failure(&self, clock: &dyn ValidationClock) -> Option<Transition> {
        self.breaker().record(clock.now(), false)
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, CircuitBreaker> {
        // The breaker is a plain value updated in one call: consistent across a panic.
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The verdict for `address`: from the cache, or the breaker, or a lookup.
    pub async fn validate(
        &self,
        cache: &VerdictCache,
        clock: &dyn ValidationClock,
        address: &str,
    ) -> Checked {
        if let Some(hit) = self.cached(cache, clock, address) {
            return hit;
        }
        if self.detect_catch_all {
            if let Some(done) = self.catch_all(cache, clock, address).await {
                return done;
            }
            // A lookup of the same address may have answered while this one waited.
            if let Some(hit) = self.cached(cache, clock, address) {
                return hit;
            }
        }
        self.lookup(cache, clock, address).await
    }

    /// The cached answer for `address`, if any.
    fn cached(
        &self,
        cache: &VerdictCache,
        clock: &dyn ValidationClock,
        address: &str,
    ) -> Option<Checked> {
        let hit = cache.get(&cache.key(&self.id, address), clock.unix())?;
        Some(Checked {
            answer: Answer::new(hit.verdict, self.id.clone()),
            source: Source::Cache { stored: hit.stored },
            refresh_due: hit.refresh_due,
            transition: None,
        })
    }

    /// Valid at once when the address's domain is a known catch-all (detecting it first if
    /// unknown); `None` when it is not one, so the address itself is probed.
    async fn catch_all(
        &self,
        cache: &VerdictCache,
        clock: &dyn ValidationClock,
        address: &str,
    ) -> Option<Checked> {
        let domain = address.rsplit_once('@')?.1;
        let marker = format!("@{domain}");
        let key = cache.key(&self.id, &marker);
        let detail = format!("{}: {domain} accepts any address (catch-all)", self.id);
        let known = |hit: super::cache::Hit| match hit.verdict {
            Verdict::Valid => Some(Some(Checked {
                answer: Answer::new(Verdict::Valid, detail.clone()),
                source: Source::Cache { stored: hit.stored },
                // The finding is not refreshed: it expires and is detected again.
                refresh_due: false,
                transition: None,
            })),
            _ => Some(None),
        };
        if let Some(found) = cache.get(&key, clock.unix()).and_then(known) {
            return found;
        }
        let _one = self.detecting.lock().await;
        // Found by the detection this lookup waited for.
        if let Some(found) = cache.get(&key, clock.unix()).and_then(known) {
            return found;
        }
        let probe = format!("{}@{domain}", random_local_part());
        let mut checked = self.lookup(cache, clock, &probe).await;
        // The random address itself is not worth a cache entry; the finding is.
        cache.remove(&cache.key(&self.id, &probe));
        match checked.answer.verdict {
            Verdict::Valid => {
                cache.insert(key, Verdict::Valid, clock.unix());
                checked.answer.detail = detail;
                Some(checked)
            }
            Verdict::Invalid => {
                cache.insert(key, Verdict::Invalid, clock.unix());
                None
            }
            Verdict::TempFail(_) => Some(checked),
        }
    }

    /// Looks `address` up (bypassing the cache, as a refresh or `--no-cache` does) and
    /// stores the answer.
    pub async fn refresh(
        &self,
        cache: &VerdictCache,
        clock: &dyn ValidationClock,
        address: &str,
    ) -> Checked {
        self.lookup(cache, clock, address).await
    }

    async fn lookup(
        &self,
        cache: &VerdictCache,
        clock: &dyn ValidationClock,
        address: &str,
    ) -> Checked {
        let admit = self.breaker().admit(clock.now());
        if admit == Admit::No {
            return Checked {
                answer: Answer::temp(
                    TempFailCause::BreakerOpen,
                    format!("{}: breaker open", self.id),
                ),
                source: Source::Breaker,
                refresh_due: false,
                transition: None,
            };
        }
        let mut answer = self.method.ask(address).await;
        // The log names the destination first (`callahead:example.com: probe ...`).
        answer.detail = format!("{}: {}", self.id, answer.detail);
        let transition = match answer.verdict {
            Verdict::TempFail(c) if !c.counts_for_breaker() => None,
            v => self.breaker().record(clock.now(), !v.is_temporary()),
        };
        cache.insert(cache.key(&self.id, address), answer.verdict, clock.unix());
        Checked {
            answer,
            source: Source::Lookup,
            refresh_due: false,
            transition,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::cache::CacheSettings;
    use crate::validate::callahead::CallaheadSettings;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// A clock moved by hand.
    struct ManualClock {
        base: Instant,
        offset: AtomicU64,
    }

    impl ManualClock {
        fn advance(&self, secs: u64) {
            self.offset.fetch_add(secs, Ordering::SeqCst);
        }
    }

    impl ValidationClock for ManualClock {
        fn now(&self) -> Instant {
            self.base + Duration::from_secs(self.offset.load(Ordering::SeqCst))
        }
        fn unix(&self) -> u64 {
            1_764_950_000 + self.offset.load(Ordering::SeqCst)
        }
    }

    /// An internal server that knows alice only and counts RCPTs.
    async fn server(rcpts: std::sync::Arc<AtomicU64>) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let rcpts = rcpts.clone();
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut r = BufReader::new(r);
                    let _ = w.write_all(b"220 internal.test\r\n").await;
                    let mut line = String::new();
                    while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                        let reply: &[u8] = if line.starts_with("RCPT") {
                            rcpts.fetch_add(1, Ordering::SeqCst);
                            if line.contains("<alice@") {
                                b"250 2.1.5 Ok\r\n"
                            } else {
                                b"550 5.1.1 User unknown\r\n"
                            }
                        } else {
                            b"250 Ok\r\n"
                        };
                        let _ = w.write_all(reply).await;
                        line.clear();
                    }
                });
            }
        });
        addr
    }

    fn clock() -> ManualClock {
        ManualClock {
            base: Instant::now(),
            offset: AtomicU64::new(0),
        }
    }

    #[tokio::test]
    async fn a_second_lookup_is_answered_from_the_cache() {
        let rcpts = std::sync::Arc::new(AtomicU64::new(0));
        let addr = server(rcpts.clone()).await;
        let d = Destination::new(
            "callahead:example.test",
            Method::Callahead(ProbePool::new(addr, CallaheadSettings::default())),
            BreakerSettings::default(),
        );
        let cache = VerdictCache::new(CacheSettings::default());
        let c = clock();
        let first = d.validate(&cache, &c, "nobody@example.test").await;
        assert_eq!(
            (first.answer.verdict, first.source),
            (Verdict::Invalid, Source::Lookup)
        );
        c.advance(60);
        let again = d.validate(&cache, &c, "Nobody@example.test").await;
        assert_eq!(again.answer.verdict, Verdict::Invalid);
        assert_eq!(
            again.source,
            Source::Cache {
                stored: 1_764_950_000
            }
        );
        assert_eq!(rcpts.load(Ordering::SeqCst), 1, "no second probe");
        // After the invalid TTL (1 h) the internal server is asked again.
        c.advance(3600);
        let later = d.validate(&cache, &c, "nobody@example.test").await;
        assert_eq!(later.source, Source::Lookup);
        assert_eq!(rcpts.load(Ordering::SeqCst), 2);
        // A valid answer is refreshed after a day, and kept meanwhile.
        d.validate(&cache, &c, "alice@example.test").await;
        c.advance(86_400);
        let hit = d.validate(&cache, &c, "alice@example.test").await;
        assert!(matches!(hit.source, Source::Cache { .. }) && hit.refresh_due);
    }

    #[tokio::test]
    async fn a_down_server_opens_the_breaker_and_is_answered_at_once() {
        // A port nobody listens on.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let d = Destination::new(
            "callahead:example.test",
            Method::Callahead(ProbePool::new(addr, CallaheadSettings::default())),
            BreakerSettings {
                failures: 3,
                cooldown: Duration::from_secs(30),
            },
        );
        let cache = VerdictCache::new(CacheSettings::default());
        let c = clock();
        for i in 0..3 {
            let r = d.validate(&cache, &c, &format!("u{i}@example.test")).await;
            assert_eq!(r.answer.verdict, Verdict::TempFail(TempFailCause::Refused));
            assert_eq!(r.source, Source::Lookup);
            let opened = (i == 2).then_some(Transition::Opened { failures: 3 });
            assert_eq!(r.transition, opened);
        }
        assert!(d.is_breaker_open());
        // Tempfails are not cached; the breaker answers without asking.
        let r = d.validate(&cache, &c, "u0@example.test").await;
        assert_eq!(
            r.answer.verdict,
            Verdict::TempFail(TempFailCause::BreakerOpen)
        );
        assert_eq!(r.source, Source::Breaker);
        assert_eq!(cache.counts(), (0, 0));
        // After the cool-down one trial goes; still down: open again.
        c.advance(30);
        let r = d.validate(&cache, &c, "u0@example.test").await;
        assert_eq!(r.source, Source::Lookup);
        assert_eq!(r.transition, Some(Transition::Reopened));
    }

    #[tokio::test]
    async fn a_catch_all_domain_is_detected_once_and_not_probed_per_address() {
        let rcpts = std::sync::Arc::new(AtomicU64::new(0));
        let addr = server(rcpts.clone()).await;
        let d = Destination::new(
            "callahead:example.test",
            Method::Callahead(ProbePool::new(addr, CallaheadSettings::default())),
            BreakerSettings::default(),
        )
        .with_catch_all_detection();
        let cache = VerdictCache::new(CacheSettings::default());
        let c = clock();
        // The scripted server knows alice only: not a catch-all, the address is probed.
        let r = d.validate(&cache, &c, "nobody@example.test").await;
        assert_eq!(r.answer.verdict, Verdict::Invalid);
        assert_eq!(
            rcpts.load(Ordering::SeqCst),
            2,
            "random address, then the address"
        );
        let r = d.validate(&cache, &c, "alice@example.test").await;
        assert_eq!(r.answer.verdict, Verdict::Valid);
        assert_eq!(rcpts.load(Ordering::SeqCst), 3, "the finding is cached");
        // A catch-all: the random address is accepted.
        let all = std::sync::Arc::new(AtomicU64::new(0));
        let d = Destination::new(
            "callahead:catchall.test",
            Method::Callahead(ProbePool::new(
                accept_all(all.clone()).await,
                CallaheadSettings::default(),
            )),
            BreakerSettings::default(),
        )
        .with_catch_all_detection();
        for who in ["a", "b", "c", "d"] {
            let r = d
                .validate(&cache, &c, &format!("{who}@catchall.test"))
                .await;
            assert_eq!(r.answer.verdict, Verdict::Valid);
            assert!(r.answer.detail.contains("catch-all"), "{}", r.answer.detail);
        }
        assert_eq!(all.load(Ordering::SeqCst), 1, "one probe for the domain");
        let keys: Vec<String> = cache
            .entries(c.unix())
            .iter()
            .map(|(k, _)| k.address().to_string())
            .filter(|a| a.starts_with("mxgate-probe-"))
            .collect();
        assert!(keys.is_empty(), "{keys:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_lookups_of_a_domain_share_one_catch_all_detection() {
        let all = std::sync::Arc::new(AtomicU64::new(0));
        let d = std::sync::Arc::new(
            Destination::new(
                "callahead:catchall.test",
                Method::Callahead(ProbePool::new(
                    accept_all(all.clone()).await,
                    CallaheadSettings::default(),
                )),
                BreakerSettings::default(),
            )
            .with_catch_all_detection(),
        );
        let cache = std::sync::Arc::new(VerdictCache::new(CacheSettings::default()));
        let mut tasks = Vec::new();
        for i in 0..12 {
            let (d, cache) = (d.clone(), cache.clone());
            tasks.push(tokio::spawn(async move {
                let c = ManualClock {
                    base: Instant::now(),
                    offset: AtomicU64::new(0),
                };
                d.validate(&cache, &c, &format!("u{i}@catchall.test"))
                    .await
                    .answer
                    .verdict
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Verdict::Valid);
        }
        assert_eq!(
            all.load(Ordering::SeqCst),
            1,
            "twelve first lookups, one random-address probe"
        );
    }

    /// An internal server that accepts every RCPT and counts them.
    async fn accept_all(rcpts: std::sync::Arc<AtomicU64>) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let rcpts = rcpts.clone();
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut r = BufReader::new(r);
                    let _ = w.write_all(b"220 internal.test\r\n").await;
                    let mut line = String::new();
                    while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                        if line.starts_with("RCPT") {
                            rcpts.fetch_add(1, Ordering::SeqCst);
                        }
                        let _ = w.write_all(b"250 Ok\r\n").await;
                        line.clear();
                    }
                });
            }
        });
        addr
    }
}
