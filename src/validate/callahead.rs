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
//! Plain TCP only for now: STARTTLS per the destination's TLS mode is to come with the probe
//! on the relay client (`relay/client/probe.rs`, issue 13 plan §2.3).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::time::{timeout, timeout_at, Instant};

use crate::relay::client::ReplyParser;
use crate::smtp::reply::Reply;

use super::verdict::{Answer, TempFailCause, Verdict};

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
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Longest reply line read from the internal server.
const MAX_LINE: usize = 4096;
/// Bound on the courtesy QUIT when closing idle connections.
const QUIT_TIMEOUT: Duration = Duration::from_secs(2);

/// A failed step on a probe connection.
#[derive(Debug)]
enum StepError {
    Io(io::Error),
    Closed,
    Protocol(String),
}

impl StepError {
    fn cause(&self) -> TempFailCause {
        match self {
            StepError::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                TempFailCause::Refused
            }
            StepError::Io(_) | StepError::Closed => TempFailCause::Io,
            StepError::Protocol(_) => TempFailCause::Protocol,
        }
    }

    fn text(&self) -> String {
        match self {
            StepError::Io(e) => e.to_string(),
            StepError::Closed => "connection closed by server".into(),
            StepError::Protocol(m) => m.clone(),
        }
    }
}

/// One open connection to the internal server, past EHLO.
struct ProbeConn {
    stream: TcpStream,
    buf: Vec<u8>,
    last_used: Instant,
    probes: u32,
    /// A MAIL was accepted since the last RSET: the next probe starts with RSET.
    in_transaction: bool,
}

impl ProbeConn {
    async fn read_reply(&mut self) -> Result<Reply, StepError> {
        let mut parser = ReplyParser::default();
        loop {
            while let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let line = line.strip_suffix(b"\n").unwrap_or(&line);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if let Some(r) = parser.push_line(line).map_err(StepError::Protocol)? {
                    return Ok(r);
                }
            }
            if self.buf.len() > MAX_LINE {
                return Err(StepError::Protocol("reply line too long".into()));
            }
            let mut chunk = [0u8; 2048];
            let n = self.stream.read(&mut chunk).await.map_err(StepError::Io)?;
            if n == 0 {
                return Err(StepError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn command(&mut self, cmd: &str) -> Result<Reply, StepError> {
        self.stream
            .write_all(cmd.as_bytes())
            .await
            .map_err(StepError::Io)?;
        self.read_reply().await
    }
}

/// A reply for the log: code, enhanced code and text on one line.
fn reply_text(r: &Reply) -> String {
    let text = r.text.replace('\n', " ");
    match r.enhanced {
        Some(e) => format!("{} {e} {text}", r.code),
        None => format!("{} {text}", r.code),
    }
}

/// The verdict of a RCPT reply.
pub fn classify_rcpt(code: u16) -> Verdict {
    match code {
        250..=252 => Verdict::Valid,
        500..=599 => Verdict::Invalid,
        400..=499 => Verdict::TempFail(TempFailCause::Server4xx),
        _ => Verdict::TempFail(TempFailCause::Protocol),
    }
}

/// The probe connections and limits of one destination.
#[derive(Debug)]
pub struct ProbePool {
    addr: SocketAddr,
    settings: CallaheadSettings,
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
    /// A pool for the internal server at `addr`.
    pub fn new(addr: SocketAddr, settings: CallaheadSettings) -> Self {
        ProbePool {
            addr,
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
        let key = address.to_lowercase();
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
        let Ok(Ok(_permit)) = permit else {
            return Answer::temp(
                TempFailCause::Timeout,
                format!(
                    "probe {dest}: no probe slot within {:?}",
                    self.settings.timeout
                ),
            );
        };
        match timeout_at(deadline, self.probe_with_slot(address)).await {
            Ok(a) => a,
            Err(_) => Answer::temp(
                TempFailCause::Timeout,
                format!("probe {dest}: no answer within {:?}", self.settings.timeout),
            ),
        }
    }

    /// A kept-open connection that is still fresh, if any.
    fn take_idle(&self) -> Option<ProbeConn> {
        let mut idle = lock(&self.idle);
        while let Some(IdleConn(c)) = idle.pop() {
            if c.last_used.elapsed() < self.settings.idle_timeout {
                return Some(c);
            }
        }
        None
    }

    async fn probe_with_slot(&self, address: &str) -> Answer {
        let dest = self.addr;
        // A kept-open connection may have been closed by the server meanwhile: a failure
        // before the RCPT on it is retried once on a new connection.
        if let Some(conn) = self.take_idle() {
            match self.ask(conn, address).await {
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
        let conn = match self.open().await {
            Ok(c) => c,
            Err(a) => return a,
        };
        match self.ask(conn, address).await {
            Ok((answer, conn)) => {
                self.keep(conn);
                answer
            }
            Err((e, _)) => Answer::temp(e.cause(), format!("probe {dest}: {}", e.text())),
        }
    }

    /// Returns a sound connection to the idle list unless it did its share of probes.
    fn keep(&self, mut conn: Option<ProbeConn>) {
        if let Some(mut c) = conn.take() {
            if c.probes < self.settings.max_probes_per_connection {
                c.last_used = Instant::now();
                lock(&self.idle).push(IdleConn(c));
            }
        }
    }

    /// Connects, reads the greeting and says EHLO (HELO when EHLO is refused).
    async fn open(&self) -> Result<ProbeConn, Answer> {
        let dest = self.addr;
        let fail = |e: StepError, stage: &str| {
            Answer::temp(e.cause(), format!("probe {dest}: {stage}: {}", e.text()))
        };
        let stream = TcpStream::connect(dest)
            .await
            .map_err(|e| fail(StepError::Io(e), "connect"))?;
        self.connects.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let mut c = ProbeConn {
            stream,
            buf: Vec::new(),
            last_used: Instant::now(),
            probes: 0,
            in_transaction: false,
        };
        let refused = |r: &Reply, stage: &str| {
            Answer::temp(
                TempFailCause::SessionRefused,
                format!("probe {dest}: {stage}: {}", reply_text(r)),
            )
        };
        let greeting = c.read_reply().await.map_err(|e| fail(e, "greeting"))?;
        if greeting.code != 220 {
            return Err(refused(&greeting, "greeting"));
        }
        let helo = &self.settings.helo_name;
        let ehlo = c
            .command(&format!("EHLO {helo}\r\n"))
            .await
            .map_err(|e| fail(e, "EHLO"))?;
        if ehlo.code / 100 == 2 {
            return Ok(c);
        }
        if ehlo.code / 100 != 5 {
            return Err(refused(&ehlo, "EHLO"));
        }
        let r = c
            .command(&format!("HELO {helo}\r\n"))
            .await
            .map_err(|e| fail(e, "HELO"))?;
        if r.code / 100 == 2 {
            Ok(c)
        } else {
            Err(refused(&r, "HELO"))
        }
    }

    /// RSET (when needed), MAIL and RCPT on `conn`. On success, the answer and the
    /// connection when it may be reused. On failure, the error and whether the RCPT was
    /// already sent (then a retry on a new connection would probe twice).
    async fn ask(
        &self,
        mut c: ProbeConn,
        address: &str,
    ) -> Result<(Answer, Option<ProbeConn>), (StepError, bool)> {
        let dest = self.addr;
        if c.in_transaction {
            let r = c.command("RSET\r\n").await.map_err(|e| (e, false))?;
            if r.code / 100 != 2 {
                return Err((
                    StepError::Protocol(format!("RSET answered {}", reply_text(&r))),
                    false,
                ));
            }
            c.in_transaction = false;
        }
        let from = &self.settings.mail_from;
        let r = c
            .command(&format!("MAIL FROM:<{from}>\r\n"))
            .await
            .map_err(|e| (e, false))?;
        if r.code / 100 != 2 {
            // No transaction was opened: the connection stays usable.
            let a = Answer::temp(
                TempFailCause::MailRefused,
                format!(
                    "probe {dest}: MAIL FROM:<{from}> refused: {}",
                    reply_text(&r)
                ),
            );
            return Ok((a, Some(c)));
        }
        c.in_transaction = true;
        self.probes.fetch_add(1, Ordering::Relaxed);
        let r = c
            .command(&format!("RCPT TO:<{address}>\r\n"))
            .await
            .map_err(|e| (e, true))?;
        c.probes += 1;
        let verdict = classify_rcpt(r.code);
        let detail = format!("probe {dest}: {}", reply_text(&r));
        Ok((Answer::new(verdict, detail), Some(c)))
    }

    /// Says QUIT on every idle connection and closes it (shutdown, or tests that read the
    /// internal server's log).
    pub async fn close_idle(&self) {
        let conns: Vec<IdleConn> = std::mem::take(&mut *lock(&self.idle));
        for IdleConn(mut c) in conns {
            let _ = timeout(QUIT_TIMEOUT, c.command("QUIT\r\n")).await;
            let _ = timeout(QUIT_TIMEOUT, c.stream.shutdown()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::TcpListener;

    #[test]
    fn rcpt_codes_map_to_verdicts() {
        for c in [250, 251, 252] {
            assert_eq!(classify_rcpt(c), Verdict::Valid);
        }
        for c in [550, 551, 553, 554] {
            assert_eq!(classify_rcpt(c), Verdict::Invalid);
        }
        assert_eq!(
            classify_rcpt(450),
            Verdict::TempFail(TempFailCause::Server4xx)
        );
        assert_eq!(
            classify_rcpt(354),
            Verdict::TempFail(TempFailCause::Protocol)
        );
    }

    /// A scripted SMTP server: `rcpt` answers each RCPT; counts connections.
    async fn server(
        rcpt: fn(&str) -> &'static str,
        mail: &'static str,
    ) -> (SocketAddr, std::sync::Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns = std::sync::Arc::new(AtomicUsize::new(0));
        let n = conns.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                n.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut r = BufReader::new(r);
                    w.write_all(b"220 internal.test ESMTP\r\n").await.unwrap();
                    let mut line = String::new();
                    while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                        let up = line.to_ascii_uppercase();
                        let reply = if up.starts_with("EHLO") {
                            "250-internal.test\r\n250 PIPELINING\r\n"
                        } else if up.starts_with("MAIL") {
                            mail
                        } else if up.starts_with("RCPT") {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            rcpt(&line)
                        } else if up.starts_with("RSET") {
                            "250 2.0.0 Ok\r\n"
                        } else if up.starts_with("QUIT") {
                            let _ = w.write_all(b"221 2.0.0 Bye\r\n").await;
                            return;
                        } else {
                            "502 5.5.2 Error\r\n"
                        };
                        if w.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                        line.clear();
                    }
                });
            }
        });
        (addr, conns)
    }

    fn alice_only(line: &str) -> &'static str {
        if line.contains("<alice@") {
            "250 2.1.5 Ok\r\n"
        } else if line.contains("<busy@") {
            "450 4.2.1 Mailbox busy\r\n"
        } else {
            "550 5.1.1 <x>: Recipient address rejected: User unknown in relay recipient table\r\n"
        }
    }

    #[tokio::test]
    async fn probes_share_a_kept_open_connection() {
        let (addr, conns) = server(alice_only, "250 2.1.0 Ok\r\n").await;
        let pool = ProbePool::new(addr, CallaheadSettings::default());
        let a = pool.check("alice@example.test").await;
        assert_eq!(a.verdict, Verdict::Valid, "{a:?}");
        let a = pool.check("nobody@example.test").await;
        assert_eq!(a.verdict, Verdict::Invalid);
        assert!(a.detail.contains("550 5.1.1"), "{}", a.detail);
        let a = pool.check("busy@example.test").await;
        assert_eq!(a.verdict, Verdict::TempFail(TempFailCause::Server4xx));
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        assert_eq!(pool.connections_opened(), 1);
        pool.close_idle().await;
    }

    #[tokio::test]
    async fn identical_lookups_in_flight_make_one_probe() {
        let (addr, _) = server(alice_only, "250 2.1.0 Ok\r\n").await;
        let pool = ProbePool::new(addr, CallaheadSettings::default());
        let all = join_all((0..10).map(|_| pool.check("nobody@example.test")).collect()).await;
        assert!(all.iter().all(|a| a.verdict == Verdict::Invalid));
        assert_eq!(pool.probes_sent(), 1);
    }

    #[tokio::test]
    async fn over_the_waiting_cap_lookups_are_shed() {
        let (addr, conns) = server(alice_only, "250 2.1.0 Ok\r\n").await;
        let pool = ProbePool::new(
            addr,
            CallaheadSettings {
                max_concurrency: 1,
                max_waiting: 2,
                ..CallaheadSettings::default()
            },
        );
        let addrs: Vec<String> = (0..6).map(|i| format!("u{i}@example.test")).collect();
        let answers = join_all(addrs.iter().map(|a| pool.check(a)).collect()).await;
        let shed = answers
            .iter()
            .filter(|a| a.verdict == Verdict::TempFail(TempFailCause::Shed))
            .count();
        // One probing, two waiting, the rest shed.
        assert_eq!(shed, 3, "{answers:?}");
        assert_eq!(conns.load(Ordering::SeqCst), 1, "one connection at most");
    }

    /// Polls the lookups together, so they overlap in time.
    async fn join_all<F: std::future::Future<Output = Answer>>(fs: Vec<F>) -> Vec<Answer> {
        let mut futs: Vec<_> = fs.into_iter().map(Box::pin).collect();
        let mut done: Vec<Option<Answer>> = vec![None; futs.len()];
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (i, f) in futs.iter_mut().enumerate() {
                if done[i].is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(a) => done[i] = Some(a),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        done.into_iter().map(Option::unwrap).collect()
    }

    #[tokio::test]
    async fn a_refused_null_sender_is_a_tempfail() {
        let (addr, _) = server(alice_only, "553 5.1.7 Null sender not allowed\r\n").await;
        let pool = ProbePool::new(addr, CallaheadSettings::default());
        let a = pool.check("alice@example.test").await;
        assert_eq!(a.verdict, Verdict::TempFail(TempFailCause::MailRefused));
        assert!(
            a.detail.contains("MAIL FROM:<> refused: 553"),
            "{}",
            a.detail
        );
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout_and_a_closed_port_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let pool = ProbePool::new(
            addr,
            CallaheadSettings {
                timeout: Duration::from_millis(200),
                ..CallaheadSettings::default()
            },
        );
        let a = pool.check("alice@example.test").await;
        assert_eq!(a.verdict, Verdict::TempFail(TempFailCause::Timeout));
        drop(l);
        let a = pool.check("alice@example.test").await;
        assert_eq!(
            a.verdict,
            Verdict::TempFail(TempFailCause::Refused),
            "{a:?}"
        );
    }
}
