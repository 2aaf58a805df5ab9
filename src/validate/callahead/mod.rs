//! The `callahead` method: ask the internal SMTP server whether it would take a recipient
//! (`MAIL FROM:<>`, `RCPT TO:<addr>`), over a small pool of kept-open connections to one
//! destination (RSET between probes), so a dictionary attack cannot flood it:
//! at most `max_concurrency` probes at once, more than `max_waiting` waiters are shed at
//! once (`TempFail(Shed)`), and identical lookups in flight share one probe.
//!
//! Reply mapping: RCPT 250/251/252 → Valid; RCPT 5xx → Invalid; RCPT 4xx, timeout, I/O →
//! TempFail; MAIL refused → TempFail (a misconfiguration, e.g. the null sender refused). The
//! server's text goes into [`Answer::detail`] for the log only, never into a reply.
//!
//! TLS: a pool made with [`ProbePool::with_tls`] negotiates STARTTLS on each new connection
//! exactly as delivery to the destination does ([`ProbeTls::for_route_host`]: the same mode,
//! CA bundle, server name and verify identity; the relay client's handshake and certificate
//! check), and keeps the encrypted session for the connection's later probes. A `required*`
//! mode that cannot get TLS (or, `required-verify*`, a certificate that checks) answers
//! `TempFail(Tls)`. [`ProbePool::new`] probes in plaintext (mode `no`).
//!
//! Parts: `conn` (one connection: greeting, EHLO, STARTTLS, RSET/MAIL/RCPT, reply mapping),
//! `tls` ([`ProbeTls`]) and this module (the pool: slots, shedding, coalescing, idle
//! connections).

mod conn;
#[cfg(test)]
mod tests;
mod tls;

pub use conn::classify_rcpt;
pub use tls::ProbeTls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::time::{timeout, timeout_at, Instant};

use super::verdict::{Answer, TempFailCause};
use conn::ProbeConn;

/// Call-ahead settings (`callahead:` of `policies/validation.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallaheadSettings {
    /// Name sent in EHLO.
    pub helo_name: String,
    /// Probe sender without brackets; empty for the null sender `<>`.
    pub mail_from: String,
    /// Bound on one lookup, the wait for a probe slot included (10 s).
    pub timeout: Duration,
    /// Probes at once to the destination, i.e. open connections at most (4).
    pub max_concurrency: usize,
    /// Lookups that may wait for a slot; more are shed at once (64).
    pub max_waiting: usize,
    /// Probes on one connection before it is closed (100).
    pub max_probes_per_connection: u32,
    /// Refused RCPTs (4xx/5xx) on one connection before it is closed (8): Postfix counts
    /// the refusals of a session and from about the tenth (`smtpd_soft_error_limit`) sleeps
    /// `smtpd_error_sleep_time` (1 s) before each reply (measured: 11 unknown addresses on
    /// one connection 3 s, on two 0.07 s); past `smtpd_hard_error_limit` (20) it
    /// disconnects. A fresh connection keeps probes fast during a harvest.
    pub max_refusals_per_connection: u32,
    /// An idle connection older than this is not reused (30 s).
    pub idle_timeout: Duration,
}

impl Default for CallaheadSettings {
    fn default() -> Self {
        CallaheadSettings {
            helo_name: "localhost".into(),
            mail_from: String::new(),
            timeout: Duration::from_secs(10),
            max_concurrency: 4,
            max_waiting: 64,
            max_probes_per_connection: 100,
            max_refusals_per_connection: 8,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Bound on the courtesy QUIT when closing idle connections.
const QUIT_TIMEOUT: Duration = Duration::from_secs(2);

/// The probe connections and limits of one destination.
#[derive(Debug)]
pub struct ProbePool {
    addr: SocketAddr,
    settings: CallaheadSettings,
    tls: Option<ProbeTls>,
    permits: Semaphore,
    waiting: AtomicUsize,
    idle: Mutex<Vec<IdleConn>>,
    inflight: Mutex<HashMap<String, watch::Receiver<Option<Answer>>>>,
    connects: AtomicU64,
    probes: AtomicU64,
}

/// [`ProbeConn`] in the idle list (Debug without the socket details).
struct IdleConn(ProbeConn);

impl std::fmt::Debug for IdleConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdleConn({} probes)", self.0.probes)
    }
}

/// A lookup's part in coalescing: the first asks, the others wait for its answer.
enum Role {
    Leader(watch::Sender<Option<Answer>>),
    Follower(watch::Receiver<Option<Answer>>),
}

/// Removes an in-flight entry however its probe ends (done or cancelled).
struct InflightGuard<'a> {
    pool: &'a ProbePool,
    key: &'a str,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        lock(&self.pool.inflight).remove(self.key);
    }
}

/// Counts a waiter until it has a slot (or is cancelled).
struct WaitGuard<'a>(&'a AtomicUsize);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Locks a mutex; the data (a list, a map) stays consistent across a panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ProbePool {
    /// A pool for the internal server at `addr`, probing in plaintext (TLS mode `no`).
    pub fn new(addr: SocketAddr, settings: CallaheadSettings) -> Self {
        Self::build(addr, settings, None)
    }

    /// A pool for the internal server at `tls.target.addr`, negotiating STARTTLS as `tls`
    /// says (see [`ProbeTls::for_route_host`]).
    pub fn with_tls(settings: CallaheadSettings, tls: ProbeTls) -> Self {
        Self::build(tls.target.addr, settings, Some(tls))
    }

    fn build(addr: SocketAddr, settings: CallaheadSettings, tls: Option<ProbeTls>) -> Self {
        ProbePool {
            addr,
            tls,
            permits: Semaphore::new(settings.max_concurrency.max(1)),
            settings,
            waiting: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
            inflight: Mutex::new(HashMap::new()),
            connects: AtomicU64::new(0),
            probes: AtomicU64::new(0),
        }
    }

    /// The destination.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections opened so far.
    pub fn connections_opened(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// RCPT probes sent so far.
    pub fn probes_sent(&self) -> u64 {
        self.probes.load(Ordering::Relaxed)
    }

    /// Asks the internal server about `address`; lookups of the same address in flight at
    /// the same time share one probe.
    pub async fn check(&self, address: &str) -> Answer {
        if !conn::is_safe_path(address) || !conn::is_safe_path(&self.settings.mail_from) {
            return Answer::temp(
                TempFailCause::Protocol,
                format!("probe {}: address not probeable: {address:?}", self.addr),
            );
        }
        // Only the domain is folded: local parts may be case-sensitive on the internal server.
        let key = match address.rsplit_once('@') {
            Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
            None => address.to_string(),
        };
        loop {
            // Decide under the lock, act after it.
            let role = {
                let mut m = lock(&self.inflight);
                match m.get(&key) {
                    Some(rx) => Role::Follower(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        m.insert(key.clone(), rx);
                        Role::Leader(tx)
                    }
                }
            };
            match role {
                Role::Leader(tx) => {
                    let _guard = InflightGuard {
                        pool: self,
                        key: &key,
                    };
                    let answer = self.probe(address).await;
                    let _ = tx.send(Some(answer.clone()));
                    return answer;
                }
                Role::Follower(mut rx) => {
                    let answer = rx
                        .wait_for(Option::is_some)
                        .await
                        .ok()
                        .and_then(|a| a.clone());
                    if let Some(a) = answer {
                        return a;
                    }
                    // The leader was cancelled before answering: ask ourselves.
                }
            }
        }
    }

    /// One probe, bounded by `timeout` including the wait for a slot.
    async fn probe(&self, address: &str) -> Answer {
        let deadline = Instant::now() + self.settings.timeout;
        let dest = self.addr;
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.settings.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Answer::temp(
                TempFailCause::Shed,
                format!(
                    "probe {dest}: more than {} lookups waiting",
                    self.settings.max_waiting
                ),
            );
        }
        let wait = WaitGuard(&self.waiting);
        let permit = timeout_at(deadline, self.permits.acquire()).await;
        drop(wait);
        // Waiting for a slot says the pool is busy, not that the server is unwell: such a
        // tempfail must not open the breaker (cause `Shed`, which it does not count).
        let Ok(Ok(_permit)) = permit else {
            return Answer::temp(
                TempFailCause::Shed,
                format!(
                    "probe {dest}: no probe slot within {:?}",
                    self.settings.timeout
                ),
            );
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout_at(deadline, self.probe_with_slot(address)).await {
            Ok(a) => a,
            // A probe that got less than half the time after its wait is not the server's fault.
            Err(_) if left < self.settings.timeout / 2 => Answer::temp(
                TempFailCause::Shed,
                format!(
                    "probe {dest}: no answer within the {left:?} left after waiting for a slot"
                ),
            ),
            Err(_) => Answer::temp(
                TempFailCause::Timeout,
                format!("probe {dest}: no answer within {:?}", self.settings.timeout),
            ),
        }
    }

    /// A kept-open connection that is still fresh, if any.
    fn take_idle(&self) -> Option<ProbeConn> {
        let mut idle = lock(&self.idle);
        while let Some(IdleConn(mut c)) = idle.pop() {
            if c.last_used.elapsed() < self.settings.idle_timeout {
                return Some(c);
            }
            // Too old to trust: say goodbye in the background.
            tokio::spawn(async move { c.quit().await });
        }
        None
    }

    async fn probe_with_slot(&self, address: &str) -> Answer {
        let dest = self.addr;
        let from = &self.settings.mail_from;
        // A kept-open connection may have been closed by the server meanwhile: a failure
        // before the RCPT on it is retried once on a new connection.
        if let Some(conn) = self.take_idle() {
            match conn.ask(dest, from, address, &self.probes).await {
                Ok((answer, conn)) => {
                    self.keep(conn);
                    return answer;
                }
                Err((_, false)) => {}
                Err((e, true)) => {
                    return Answer::temp(e.cause(), format!("probe {dest}: {}", e.text()))
                }
            }
        }
        let conn =
            match ProbeConn::open(dest, &self.settings, self.tls.as_ref(), &self.connects).await {
                Ok(c) => c,
                Err(a) => return a,
            };
        match conn.ask(dest, from, address, &self.probes).await {
            Ok((answer, conn)) => {
                self.keep(conn);
                answer
            }
            Err((e, _)) => Answer::temp(e.cause(), format!("probe {dest}: {}", e.text())),
        }
    }

    /// Returns a sound connection to the idle list unless it did its share of probes (or
    /// of refusals).
    fn keep(&self, mut c: ProbeConn) {
        if c.probes < self.settings.max_probes_per_connection
            && c.refusals < self.settings.max_refusals_per_connection
        {
            c.last_used = Instant::now();
            lock(&self.idle).push(IdleConn(c));
        } else {
            // Retired, not lost: a QUIT in the background, so the internal server logs a
            // clean end instead of "lost connection" (and the lookup does not wait for it).
            tokio::spawn(async move { c.quit().await });
        }
    }

    /// Says QUIT on every idle connection and closes it (shutdown, or tests that read the
    /// internal server's log).
    pub async fn close_idle(&self) {
        let conns: Vec<IdleConn> = std::mem::take(&mut *lock(&self.idle));
        for IdleConn(mut c) in conns {
            let _ = timeout(QUIT_TIMEOUT, c.command("QUIT\r\n")).await;
            let _ = timeout(QUIT_TIMEOUT, c.shutdown()).await;
        }
    }
}
