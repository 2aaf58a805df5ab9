//! Issue 13's dictionary attack, as a benchmark (`#[ignore]`: `bench/validation-attack.sh`
//! runs it in release mode; the numbers are in BENCHMARKS.md). A private Postfix knows 50
//! users of example.test and is both the internal server that `validate: callahead` probes
//! and the delivery target. 20 harvester sessions, each from its own PROXY address, send
//! RCPTs for 500 random addresses each (10,000; a fifth of them repeats of addresses already
//! sent, 1 % real users), while one legitimate client sends a message to a real user every
//! 100 ms. Then the same legitimate load runs alone, on fresh servers, as the baseline.
//!
//! Postfix's maillog tells what the internal server saw: the probes (`rcpt=` of its
//! `disconnect from` lines, and one `NOQUEUE: reject` line per refused one) and how many probe
//! connections were open at once (`connect from` / `disconnect from` in log order, paired by
//! smtpd pid; mxgate's deliveries are the sessions with `data=`). The test asserts what the
//! issue says must hold: no more probe connections at once than `max_concurrency` (a
//! connection the pool dropped after a refusal counts as closed at that refusal's line:
//! Postfix may log its close after the replacement's `connect from`), repeated addresses
//! answered from the negative cache (at most a tenth probed again), and no more probes than
//! distinct addresses asked (plus the legitimate client's, the catch-all probes, re-asked
//! tempfails and those re-probes). Run A has no DHAP limit (`max_invalid_recipients_per_hour:
//! unlimited`); with `ATTACK_DHAP=25` (run B) the probes are also bounded by that limit per
//! harvester address.
//!
//! Knobs (environment): `ATTACK_SESSIONS` (20), `ATTACK_RCPTS` per session (500),
//! `ATTACK_REPEAT_PCT` (20), `ATTACK_VALID_USERS` (50), `ATTACK_LEGIT_INTERVAL_MS` (100; 0:
//! back to back), `ATTACK_MAX_CONCURRENCY` (4), `ATTACK_MAX_WAITING` (64), `ATTACK_DHAP`
//! (unset: no limit), `ATTACK_BASELINE` (1), `ATTACK_SEED`, `ATTACK_OUT` (append the report
//! there), `ATTACK_LOGS` (keep both servers' logs and mxgate's metrics there).

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use support::postfix::{start_or_skip, Postfix, PostfixOptions};
use support::Mxgate;

const DOMAIN: &str = "example.test";
/// The legitimate client's PROXY address; the harvesters are 203.0.113.1 and up.
const LEGIT_IP: &str = "198.51.100.77";
/// RCPTs a harvester pipelines in one transaction (then RSET).
const BATCH: usize = 25;
/// Bound on one reply: the lookup timeout is 10 s.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The run's parameters, from the environment.
#[derive(Debug, Clone)]
struct Knobs {
    sessions: usize,
    rcpts: usize,
    repeat_pct: u64,
    valid_users: usize,
    legit_interval: Duration,
    max_concurrency: usize,
    max_waiting: usize,
    dhap: Option<u32>,
    baseline: bool,
    seed: u64,
}

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?}: {e}")),
        _ => default,
    }
}

impl Knobs {
    fn from_env() -> Knobs {
        Knobs {
            sessions: env_num("ATTACK_SESSIONS", 20) as usize,
            rcpts: env_num("ATTACK_RCPTS", 500) as usize,
            repeat_pct: env_num("ATTACK_REPEAT_PCT", 20),
            valid_users: env_num("ATTACK_VALID_USERS", 50).max(1) as usize,
            legit_interval: Duration::from_millis(env_num("ATTACK_LEGIT_INTERVAL_MS", 100)),
            max_concurrency: env_num("ATTACK_MAX_CONCURRENCY", 4) as usize,
            max_waiting: env_num("ATTACK_MAX_WAITING", 64) as usize,
            dhap: std::env::var("ATTACK_DHAP")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| v.trim().parse().expect("ATTACK_DHAP is a number")),
            baseline: env_num("ATTACK_BASELINE", 1) != 0,
            seed: env_num("ATTACK_SEED", 13),
        }
    }
}

/// splitmix64: a seeded, reproducible address list without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn valid_users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user{i:03}@{DOMAIN}")).collect()
}

/// Each harvester's list, dealt round-robin from one sequence so a repeat is usually of an
/// address another session has just asked: `repeat_pct` % repeats of earlier addresses,
/// 1 % real users (a dictionary hit), the rest fresh random local parts (letters only, so
/// never a `userNNN`).
fn attack_lists(k: &Knobs, valid: &[String]) -> Vec<Vec<String>> {
    let mut rng = Rng(k.seed);
    let mut seen: Vec<String> = Vec::new();
    let mut known: HashSet<String> = HashSet::new();
    let mut lists = vec![Vec::with_capacity(k.rcpts); k.sessions];
    for j in 0..k.sessions * k.rcpts {
        let a = if !seen.is_empty() && (rng.below(100) as u64) < k.repeat_pct {
            seen[rng.below(seen.len())].clone()
        } else if rng.below(100) == 0 {
            valid[rng.below(valid.len())].clone()
        } else {
            let len = 6 + rng.below(5);
            let local: String = (0..len)
                .map(|_| (b'a' + rng.below(26) as u8) as char)
                .collect();
            format!("{local}@{DOMAIN}")
        };
        if known.insert(a.clone()) {
            seen.push(a.clone());
        }
        lists[j % k.sessions].push(a);
    }
    lists
}

/// A minimal SMTP client connection: no panics, every read bounded.
struct Conn {
    io: BufReader<TcpStream>,
}

impl Conn {
    async fn open(addr: SocketAddr, ip: &str) -> std::io::Result<Conn> {
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let h = format!("PROXY TCP4 {ip} 127.0.0.1 40000 {}\r\n", addr.port());
        s.write_all(h.as_bytes()).await?;
        Ok(Conn {
            io: BufReader::new(s),
        })
    }

    async fn send(&mut self, text: &str) -> bool {
        self.io.get_mut().write_all(text.as_bytes()).await.is_ok()
    }

    /// The last line of the next reply; `None` on EOF, error or timeout.
    async fn reply(&mut self) -> Option<String> {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(REPLY_TIMEOUT, self.io.read_line(&mut line))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Some(line.trim_end().to_string());
            }
        }
    }

    async fn expect(&mut self, code: &str) -> Result<(), String> {
        match self.reply().await {
            Some(r) if r.starts_with(code) => Ok(()),
            Some(r) => Err(r),
            None => Err("connection closed".into()),
        }
    }
}

/// What one harvester got.
#[derive(Debug, Default)]
struct AttackStats {
    /// RCPTs answered, and each address that got an answer.
    answered: Vec<String>,
    valid: u64,
    invalid: u64,
    /// 5xx other than 5.1.1 (the DHAP reply).
    refused_other: u64,
    tempfail: u64,
    /// Addresses never answered (the session gave up).
    unanswered: u64,
    connections: u64,
    /// Connections the server ended (421 or a close).
    closed_by_server: u64,
}

impl AttackStats {
    fn add(&mut self, o: AttackStats) {
        self.answered.extend(o.answered);
        self.valid += o.valid;
        self.invalid += o.invalid;
        self.refused_other += o.refused_other;
        self.tempfail += o.tempfail;
        self.unanswered += o.unanswered;
        self.connections += o.connections;
        self.closed_by_server += o.closed_by_server;
    }
}

/// One harvester: pipelined batches of RCPTs, RSET between them; reconnects when the
/// server closes, and gives up after three connections in a row taught it nothing.
async fn harvester(addr: SocketAddr, ip: String, list: Vec<String>) -> AttackStats {
    let mut st = AttackStats::default();
    let mut i = 0;
    let mut fruitless = 0;
    while i < list.len() && fruitless < 3 {
        st.connections += 1;
        let learnt = st.valid + st.invalid;
        if let Ok(mut c) = Conn::open(addr, &ip).await {
            let closed = harvest_on(&mut c, &list, &mut i, &mut st).await;
            if closed {
                st.closed_by_server += 1;
            } else {
                let _ = c.send("QUIT\r\n").await;
                let _ = c.reply().await;
            }
        }
        if st.valid + st.invalid == learnt {
            fruitless += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        } else {
            fruitless = 0;
        }
    }
    st.unanswered = (list.len() - i) as u64;
    st
}

/// One harvester connection from `list[*i]` on; true when the server ended it.
async fn harvest_on(c: &mut Conn, list: &[String], i: &mut usize, st: &mut AttackStats) -> bool {
    if c.expect("220").await.is_err()
        || !c.send("EHLO harvester.example\r\n").await
        || c.expect("250").await.is_err()
    {
        return true;
    }
    while *i < list.len() {
        if !c.send("MAIL FROM:<bulk@harvester.example>\r\n").await || c.expect("250").await.is_err()
        {
            return true;
        }
        let batch = &list[*i..(*i + BATCH).min(list.len())];
        let cmds: String = batch.iter().map(|a| format!("RCPT TO:<{a}>\r\n")).collect();
        if !c.send(&cmds).await {
            return true;
        }
        for a in batch {
            let Some(r) = c.reply().await else {
                return true;
            };
            *i += 1;
            st.answered.push(a.clone());
            match r.get(..3).unwrap_or("") {
                "250" | "251" | "252" => st.valid += 1,
                "550" if r.contains("5.1.1") => st.invalid += 1,
                "421" => {
                    st.tempfail += 1;
                    return true;
                }
                c if c.starts_with('4') => st.tempfail += 1,
                _ => st.refused_other += 1,
            }
        }
        if !c.send("RSET\r\n").await || c.expect("250").await.is_err() {
            return true;
        }
    }
    false
}

/// What the legitimate client got.
#[derive(Debug, Default)]
struct LegitStats {
    sent: u64,
    accepted: u64,
    /// Connect to the `250` after the final dot, of the accepted messages.
    latencies: Vec<Duration>,
    /// Of which the greeting (connect, PROXY, reverse DNS) and the RCPT (validation).
    greetings: Vec<Duration>,
    rcpts: Vec<Duration>,
    failures: Vec<String>,
    elapsed: Duration,
}

/// How long one legitimate message took.
struct Timing {
    /// Connect to the `250` after the dot.
    total: Duration,
    /// Connect to the `220`.
    greeting: Duration,
    /// RCPT to its `250`.
    rcpt: Duration,
}

/// One message to `to` on a new connection.
async fn send_one(addr: SocketAddr, to: &str) -> Result<Timing, String> {
    let t0 = Instant::now();
    let mut c = Conn::open(addr, LEGIT_IP)
        .await
        .map_err(|e| e.to_string())?;
    c.expect("220").await?;
    let greeting = t0.elapsed();
    c.send("EHLO mail.partner.example\r\n").await;
    c.expect("250").await?;
    c.send("MAIL FROM:<news@partner.example>\r\n").await;
    c.expect("250").await?;
    let t_rcpt = Instant::now();
    c.send(&format!("RCPT TO:<{to}>\r\n")).await;
    c.expect("250").await.map_err(|r| format!("RCPT: {r}"))?;
    let rcpt = t_rcpt.elapsed();
    c.send("DATA\r\n").await;
    c.expect("354").await?;
    c.send(&format!(
        "From: news@partner.example\r\nTo: {to}\r\nSubject: during the attack\r\n\r\nhello\r\n.\r\n"
    ))
    .await;
    c.expect("250").await.map_err(|r| format!("DATA: {r}"))?;
    let total = t0.elapsed();
    c.send("QUIT\r\n").await;
    let _ = c.reply().await;
    Ok(Timing {
        total,
        greeting,
        rcpt,
    })
}

/// Sends to the real users in turn, one message every `interval` (back to back when 0 or
/// when a message took longer), until `stop`.
async fn legit_client(
    addr: SocketAddr,
    users: Vec<String>,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> LegitStats {
    let mut st = LegitStats::default();
    let start = Instant::now();
    let mut next = start;
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep_until(next.into()).await;
        let begun = Instant::now();
        next = begun + interval;
        let to = &users[st.sent as usize % users.len()];
        st.sent += 1;
        match send_one(addr, to).await {
            Ok(t) => {
                st.accepted += 1;
                st.latencies.push(t.total);
                st.greetings.push(t.greeting);
                st.rcpts.push(t.rcpt);
            }
            Err(e) => {
                if st.failures.len() < 5 {
                    st.failures.push(e);
                }
            }
        }
    }
    st.elapsed = start.elapsed();
    st
}

/// A DNS server answering NXDOMAIN to everything: mxgate's reverse lookups of the PROXY
/// addresses stay on the machine and answer at once.
async fn nxdomain_dns() -> SocketAddr {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            if n < 12 {
                continue;
            }
            // Header: same id, QR + the client's RD, RA + NXDOMAIN, the question only.
            let mut end = 12;
            while end < n && buf[end] != 0 {
                end += 1 + buf[end] as usize;
            }
            end = (end + 5).min(n);
            let mut r = buf[..end].to_vec();
            r[2] = 0x80 | (buf[2] & 0x01);
            r[3] = 0x83;
            r[6..12].fill(0);
            let _ = s.send_to(&r, from).await;
        }
    });
    addr
}

/// mxgate's configuration: one public PROXY listener, RAT example.test with `validate:
/// callahead`, the route (and so the probes) to Postfix, no per-IP limits but DHAP's.
fn write_config(dir: &Path, postfix: SocketAddr, dns: SocketAddr, k: &Knobs) {
    let files = [
        (
            "mxgate.yaml",
            format!(
                "spool_dir: spool\nmail_log:\n  target: stdout\nmetrics:\n  listen: null\n\
                 dns:\n  resolvers: [\"{dns}\"]\n  timeout: 2s\n\
                 delivery:\n  hostname: mx.test.example\nshutdown_grace: 2s\n"
            ),
        ),
        (
            "listeners/inbound.yaml",
            "name: inbound\ntype: public\nbind: [\"127.0.0.1:0\"]\nhostname: mx.test.example\n\
             hat: inbound\nrat: inbound\nmax_connections: 5000\n\
             proxy_protocol:\n  trusted: [127.0.0.0/8]\n  timeout: 5s\n"
                .to_string(),
        ),
        (
            "policies/hat.yaml",
            "inbound:\n  sender_groups: []\n  default_policy: ACCEPTED\n".to_string(),
        ),
        (
            "policies/mail_flow.yaml",
            format!(
                "default:\n  tls: \"off\"\n  pre_greet_pause: 0s\n  max_recipients_per_hour: unlimited\n\
                 \x20 max_messages_per_connection: unlimited\n{}\
                 policies:\n  ACCEPTED:\n    action: accept\n",
                match k.dhap {
                    Some(n) => format!("  max_invalid_recipients_per_hour: {n}\n"),
                    None => "  max_invalid_recipients_per_hour: unlimited\n".to_string(),
                }
            ),
        ),
        (
            "policies/rat.yaml",
            format!("inbound:\n  entries:\n    - recipient: {DOMAIN}\n      validate: callahead\n"),
        ),
        (
            "policies/routes.yaml",
            format!(
                "routes:\n  - domain: {DOMAIN}\n    hosts: [{{host: {}, port: {}}}]\n",
                postfix.ip(),
                postfix.port()
            ),
        ),
        (
            "policies/destinations.yaml",
            "default:\n  tls: \"no\"\n".to_string(),
        ),
        (
            "policies/validation.yaml",
            format!(
                "cache:\n  invalid_ttl: 1h\ncallahead:\n  timeout: 10s\n  max_concurrency: {}\n  max_waiting: {}\n",
                k.max_concurrency, k.max_waiting
            ),
        ),
    ];
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// What Postfix's maillog shows.
#[derive(Debug, Default)]
struct PostfixSeen {
    probe_sessions: u64,
    delivery_sessions: u64,
    /// RCPTs in probe sessions, and how many of them Postfix accepted.
    probe_rcpts: u64,
    probe_rcpts_ok: u64,
    /// `NOQUEUE: reject: RCPT` lines, those of catch-all probes, and the refusals of an
    /// address already refused before (probes the negative cache did not save).
    rejects: u64,
    catch_all_probes: u64,
    re_refusals: u64,
    /// Probe connections open at once, from `connect from` to `disconnect from` in log
    /// order, and `connect from` lines above the cap.
    max_open_probes: u64,
    connects_over_cap: u64,
    /// The same, with a connection mxgate dropped after a refusal (Postfix: `lost connection
    /// after RCPT`) closed at that refusal's line: Postfix logs the close only after the
    /// replacement's `connect from` at times.
    max_open_probes_exact: u64,
    /// Every smtpd connection, deliveries included.
    max_open_all: u64,
}

fn smtpd_pid(line: &str) -> Option<&str> {
    let at = line.find("smtpd[")? + 6;
    let len = line[at..].find(']')?;
    Some(&line[at..at + len])
}

/// `rcpt=OK/TOTAL` (or `rcpt=N` when all were accepted): (ok, total).
fn rcpt_counts(line: &str) -> (u64, u64) {
    let Some(v) = line.split(' ').find_map(|w| w.strip_prefix("rcpt=")) else {
        return (0, 0);
    };
    let mut parts = v.split('/');
    let ok = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let total = parts.next().and_then(|n| n.parse().ok()).unwrap_or(ok);
    (ok, total)
}

/// One smtpd connection in the maillog (line numbers).
struct Session {
    connect: usize,
    /// `None` while open (at the end: still open, counted as a probe).
    disconnect: Option<usize>,
    last_reject: Option<usize>,
    lost_after_rcpt: bool,
    probe: bool,
}

/// The most intervals open at once, and how many starts found the count above `cap`.
fn max_open(mut events: Vec<(usize, i64)>, cap: u64) -> (u64, u64) {
    events.sort();
    let (mut open, mut max, mut over) = (0i64, 0i64, 0u64);
    for (_, d) in events {
        open += d;
        if d > 0 && open > cap as i64 {
            over += 1;
        }
        max = max.max(open);
    }
    (max as u64, over)
}

fn analyse(maillog: &str, cap: usize) -> PostfixSeen {
    let mut seen = PostfixSeen::default();
    let mut sessions: Vec<Session> = Vec::new();
    let mut open: HashMap<&str, usize> = HashMap::new();
    let mut refused: HashMap<&str, u64> = HashMap::new();
    let lines: Vec<&str> = maillog.lines().collect();
    for (n, line) in lines.iter().enumerate() {
        let pid = smtpd_pid(line);
        if line.contains(" connect from ") {
            let Some(pid) = pid else { continue };
            sessions.push(Session {
                connect: n,
                disconnect: None,
                last_reject: None,
                lost_after_rcpt: false,
                probe: true,
            });
            open.insert(pid, sessions.len() - 1);
        } else if line.contains(" disconnect from ") {
            let Some(i) = pid.and_then(|p| open.remove(p)) else {
                continue;
            };
            let s = &mut sessions[i];
            s.disconnect = Some(n);
            let (ok, total) = rcpt_counts(line);
            if line.contains(" data=") {
                seen.delivery_sessions += 1;
                s.probe = false;
            } else if line.contains("commands=0/0") {
                // The harness's readiness check.
                s.probe = false;
            } else {
                seen.probe_sessions += 1;
                seen.probe_rcpts += total;
                seen.probe_rcpts_ok += ok;
            }
        } else if line.contains("lost connection after RCPT") {
            if let Some(&i) = pid.and_then(|p| open.get(p)) {
                sessions[i].lost_after_rcpt = true;
            }
        } else if line.contains("NOQUEUE: reject: RCPT") {
            seen.rejects += 1;
            if let Some(&i) = pid.and_then(|p| open.get(p)) {
                sessions[i].last_reject = Some(n);
            }
            if let Some(to) = line.split(" to=<").nth(1).and_then(|t| t.split('>').next()) {
                if to.starts_with("mxgate-probe-") {
                    seen.catch_all_probes += 1;
                }
                *refused.entry(to).or_default() += 1;
            }
        }
    }
    seen.re_refusals = refused.values().map(|n| n - 1).sum();
    let end = lines.len();
    let mut raw = Vec::new();
    let mut exact = Vec::new();
    let mut all = Vec::new();
    for s in &sessions {
        let close = s.disconnect.unwrap_or(end);
        all.extend([(s.connect, 1), (close, -1)]);
        if s.probe {
            raw.extend([(s.connect, 1), (close, -1)]);
            let dropped = s.last_reject.filter(|_| s.lost_after_rcpt).unwrap_or(close);
            exact.extend([(s.connect, 1), (dropped, -1)]);
        }
    }
    (seen.max_open_probes, seen.connects_over_cap) = max_open(raw, cap as u64);
    seen.max_open_probes_exact = max_open(exact, cap as u64).0;
    seen.max_open_all = max_open(all, u64::MAX).0;
    seen
}

/// mxgate's own view: validation answers by result, lookups that probed and their mean
/// time (from `/metrics`), tempfail causes (from the mail log).
#[derive(Debug, Default)]
struct GateSeen {
    results: Vec<(String, u64)>,
    lookups: u64,
    lookup_mean_ms: f64,
    shed: u64,
    timeout: u64,
    breaker: u64,
    other_tempfail: u64,
    /// DHAP refusals and connection drops in the mail log.
    dhap_refusals: u64,
    dhap_drops: u64,
}

fn metrics_text(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

fn gate_seen(metrics: &str, log: &str) -> GateSeen {
    let mut g = GateSeen::default();
    let value = |l: &str| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
    let mut sum = 0.0;
    for l in metrics.lines() {
        if l.starts_with("mxgate_recipient_validation_total{") {
            let result = l
                .split("result=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?");
            g.results
                .push((result.to_string(), value(l).unwrap_or(0.0) as u64));
        } else if l.starts_with("mxgate_recipient_validation_seconds_count") {
            g.lookups += value(l).unwrap_or(0.0) as u64;
        } else if l.starts_with("mxgate_recipient_validation_seconds_sum") {
            sum += value(l).unwrap_or(0.0);
        }
    }
    g.results.sort();
    if g.lookups > 0 {
        g.lookup_mean_ms = sum * 1000.0 / g.lookups as f64;
    }
    for l in log.lines() {
        if l.contains("refused: max_invalid_recipients_per_hour") {
            g.dhap_refusals += 1;
        }
        if l.contains("Directory Harvest Attack") {
            g.dhap_drops += 1;
        }
        if !l.contains("validate callahead: no answer") {
            continue;
        }
        if l.contains("lookups waiting") {
            g.shed += 1;
        } else if l.contains("no probe slot") || l.contains("no answer within") {
            g.timeout += 1;
        } else if l.contains("breaker open") {
            g.breaker += 1;
        } else {
            g.other_tempfail += 1;
        }
    }
    g
}

/// Waits until Postfix has logged a disconnect for every connect (mxgate has stopped).
async fn settled_maillog(pf: &Postfix) -> String {
    let count = |log: &str, n: &str| log.lines().filter(|l| l.contains(n)).count();
    for _ in 0..200 {
        let log = pf.maillog();
        if count(&log, " connect from ") <= count(&log, " disconnect from ") {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pf.maillog()
}

/// One phase's servers: a fresh Postfix and a fresh mxgate in front of it.
struct Phase {
    _dir: tempfile::TempDir,
    pf: Postfix,
    gate: Mxgate,
}

async fn start_phase(k: &Knobs, users: &[String]) -> Option<Phase> {
    let dir = tempfile::tempdir().unwrap();
    let pf_dir = dir.path().join("postfix");
    std::fs::create_dir_all(&pf_dir).unwrap();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let opts = PostfixOptions {
        relay_domain: Some(DOMAIN),
        recipients: &refs,
        ..PostfixOptions::default()
    };
    let pf = start_or_skip(&pf_dir, &opts).await?;
    let cfg = dir.path().join("cfg");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    write_config(&cfg, pf.addr, nxdomain_dns().await, k);
    let gate = Mxgate::start_with(&cfg, &work, &["--metrics-listen", "127.0.0.1:0"]);
    Some(Phase {
        _dir: dir,
        pf,
        gate,
    })
}

/// Stops mxgate (its probe connections close) and reads both servers' views.
async fn finish_phase(p: Phase, cap: usize, name: &str) -> (PostfixSeen, GateSeen) {
    let metrics = metrics_text(p.gate.metrics_addr());
    let log = p.gate.log_text();
    p.gate.stop();
    let maillog = settled_maillog(&p.pf).await;
    if let Ok(dir) = std::env::var("ATTACK_LOGS") {
        let dir = Path::new(&dir);
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(format!("{name}-postfix.log")), &maillog).unwrap();
        std::fs::write(dir.join(format!("{name}-mxgate.log")), &log).unwrap();
        std::fs::write(dir.join(format!("{name}-metrics.txt")), &metrics).unwrap();
    }
    (analyse(&maillog, cap), gate_seen(&metrics, &log))
}

fn pct(v: &[Duration], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort();
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[i].as_secs_f64() * 1000.0
}

fn legit_rows(label: &str, l: &LegitStats) -> String {
    let secs = l.elapsed.as_secs_f64().max(1e-9);
    format!(
        "| {label} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {} |\n",
        l.sent,
        l.accepted,
        l.accepted as f64 / secs,
        pct(&l.latencies, 0.5),
        pct(&l.latencies, 0.99),
        pct(&l.latencies, 1.0),
        pct(&l.greetings, 0.5),
        pct(&l.greetings, 0.99),
        pct(&l.greetings, 1.0),
        pct(&l.rcpts, 0.5),
        pct(&l.rcpts, 0.99),
        pct(&l.rcpts, 1.0),
        if l.failures.is_empty() {
            "-".to_string()
        } else {
            l.failures.join("; ")
        }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/validation-attack.sh runs it (release, root for Postfix)"]
async fn dictionary_attack_against_callahead() {
    let k = Knobs::from_env();
    let users = valid_users(k.valid_users);
    let lists = attack_lists(&k, &users);
    let planned: usize = lists.iter().map(Vec::len).sum();

    // Run: the attack with the legitimate client alongside.
    let Some(phase) = start_phase(&k, &users).await else {
        return;
    };
    let addr = phase.gate.addr("inbound");
    let stop = Arc::new(AtomicBool::new(false));
    let legit = tokio::spawn(legit_client(
        addr,
        users.clone(),
        k.legit_interval,
        stop.clone(),
    ));
    let t0 = Instant::now();
    let harvesters: Vec<_> = lists
        .into_iter()
        .enumerate()
        .map(|(n, list)| {
            let ip = format!("203.0.113.{}", n % 250 + 1);
            tokio::spawn(harvester(addr, ip, list))
        })
        .collect();
    let mut attack = AttackStats::default();
    for h in harvesters {
        attack.add(h.await.unwrap());
    }
    let attack_time = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    let legit_attack = legit.await.unwrap();
    let (pf_attack, gate_attack) = finish_phase(phase, k.max_concurrency, "attack").await;

    // Baseline: the same legitimate load alone, as long, on fresh servers (empty cache).
    let baseline = if k.baseline {
        let phase = start_phase(&k, &users)
            .await
            .expect("Postfix started before");
        let stop = Arc::new(AtomicBool::new(false));
        let legit = tokio::spawn(legit_client(
            phase.gate.addr("inbound"),
            users.clone(),
            k.legit_interval,
            stop.clone(),
        ));
        tokio::time::sleep(attack_time.clamp(Duration::from_secs(5), Duration::from_secs(120)))
            .await;
        stop.store(true, Ordering::SeqCst);
        let l = legit.await.unwrap();
        let (pf, _) = finish_phase(phase, k.max_concurrency, "baseline").await;
        Some((l, pf))
    } else {
        None
    };

    let unique: HashSet<&String> = attack.answered.iter().collect();
    let answered = attack.answered.len() as u64;
    let repeats = answered - unique.len() as u64;
    let secs = attack_time.as_secs_f64();
    let tempfails = gate_attack.shed + gate_attack.timeout + gate_attack.breaker;
    let mut r = String::new();
    r.push_str(&format!(
        "### Run {}: {} sessions x {} RCPTs, repeats {} %, max_concurrency {}, max_waiting {}, DHAP {}\n\n",
        if k.dhap.is_some() { "B" } else { "A" },
        k.sessions,
        k.rcpts,
        k.repeat_pct,
        k.max_concurrency,
        k.max_waiting,
        k.dhap.map_or("off".to_string(), |n| format!("{n} per IP")),
    ));
    r.push_str("| attack | value |\n|---|---:|\n");
    for (name, v) in [
        ("RCPTs planned", planned.to_string()),
        ("RCPTs answered", answered.to_string()),
        ("distinct addresses answered", unique.len().to_string()),
        ("repeated RCPTs (an address asked before)", repeats.to_string()),
        ("answered 250 (real users found)", attack.valid.to_string()),
        ("answered 550 5.1.1", attack.invalid.to_string()),
        ("answered other 5xx (DHAP)", attack.refused_other.to_string()),
        ("answered 4xx (tempfail)", attack.tempfail.to_string()),
        ("never answered (harvester gave up)", attack.unanswered.to_string()),
        (
            "harvester connections (ended by the server)",
            format!("{} ({})", attack.connections, attack.closed_by_server),
        ),
        ("attack duration", format!("{secs:.1} s")),
        (
            "RCPTs answered per second",
            format!("{:.0}", answered as f64 / secs),
        ),
        (
            "**probes Postfix saw** (RCPTs in probe sessions)",
            format!(
                "**{}** ({} accepted)",
                pf_attack.probe_rcpts, pf_attack.probe_rcpts_ok
            ),
        ),
        (
            "Postfix `NOQUEUE: reject` lines (catch-all probes)",
            format!("{} ({})", pf_attack.rejects, pf_attack.catch_all_probes),
        ),
        (
            "re-probes (an address Postfix had refused before)",
            pf_attack.re_refusals.to_string(),
        ),
        (
            "probe connections (mxgate deliveries to Postfix)",
            format!(
                "{} ({})",
                pf_attack.probe_sessions, pf_attack.delivery_sessions
            ),
        ),
        (
            "**max probe connections open at once**",
            format!(
                "**{}** (cap {}); by the disconnect lines {} ({} `connect from` above the cap); all smtpd {}",
                pf_attack.max_open_probes_exact,
                k.max_concurrency,
                pf_attack.max_open_probes,
                pf_attack.connects_over_cap,
                pf_attack.max_open_all
            ),
        ),
        (
            "mxgate lookups answered by a probe, coalesced ones included (mean time)",
            format!(
                "{} ({:.1} ms)",
                gate_attack.lookups, gate_attack.lookup_mean_ms
            ),
        ),
        (
            "mxgate validation answers by result",
            gate_attack
                .results
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "tempfails: shed / timeout / breaker / other",
            format!(
                "{} / {} / {} / {}",
                gate_attack.shed,
                gate_attack.timeout,
                gate_attack.breaker,
                gate_attack.other_tempfail
            ),
        ),
        (
            "DHAP refusals (connections dropped) in mxgate's log",
            format!("{} ({})", gate_attack.dhap_refusals, gate_attack.dhap_drops),
        ),
    ] {
        r.push_str(&format!("| {name} | {v} |\n"));
    }
    r.push_str(&format!(
        "\nLegitimate mail (a new connection per message, one every {} ms, to the {} real users in turn; latency from connect to the `250` after the dot):\n\n",
        k.legit_interval.as_millis(),
        k.valid_users
    ));
    r.push_str("| | sent | accepted | accepted/s | p50 ms | p99 ms | max ms | greeting p50 / p99 / max ms | RCPT p50 / p99 / max ms | failures |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    r.push_str(&legit_rows("during the attack", &legit_attack));
    if let Some((l, pf)) = &baseline {
        r.push_str(&legit_rows("alone (baseline)", l));
        r.push_str(&format!(
            "\nBaseline: Postfix saw {} probes, {} probe connections at most at once.\n",
            pf.probe_rcpts, pf.max_open_probes_exact
        ));
    }
    println!("{r}");
    if let Ok(out) = std::env::var("ATTACK_OUT") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .unwrap();
        writeln!(f, "{r}").unwrap();
    }

    // What the issue says must hold.
    assert!(
        pf_attack.max_open_probes_exact <= k.max_concurrency as u64,
        "more probe connections at once than max_concurrency {}: {pf_attack:?}",
        k.max_concurrency
    );
    assert!(
        pf_attack.re_refusals <= tempfails + repeats / 10,
        "{} of {repeats} repeated addresses were probed again ({tempfails} tempfails): the negative cache was not used",
        pf_attack.re_refusals
    );
    let legit_addresses = users.len().min(legit_attack.sent as usize) as u64;
    let bound = unique.len() as u64
        + legit_addresses
        + pf_attack.catch_all_probes
        + tempfails
        + pf_attack.re_refusals;
    assert!(
        pf_attack.probe_rcpts <= bound,
        "{} probes for {} distinct addresses (+{legit_addresses} legitimate, +{} catch-all, +{tempfails} tempfails, +{} re-probes)",
        pf_attack.probe_rcpts,
        unique.len(),
        pf_attack.catch_all_probes,
        pf_attack.re_refusals
    );
    if let Some(n) = k.dhap {
        // Each IP: its first n invalid answers are probed, then (n+1)th is refused; the real
        // users among its addresses are not counted by DHAP.
        let dhap_bound = k.sessions as u64 * (u64::from(n) + 1)
            + attack.valid
            + legit_addresses
            + pf_attack.catch_all_probes
            + k.max_concurrency as u64;
        assert!(
            pf_attack.probe_rcpts <= dhap_bound,
            "{} probes with DHAP {n}: more than {dhap_bound}",
            pf_attack.probe_rcpts
        );
    }
    assert!(
        legit_attack.accepted > 0,
        "no legitimate mail accepted during the attack: {:?}",
        legit_attack.failures
    );
}
