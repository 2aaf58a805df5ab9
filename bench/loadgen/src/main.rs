//! loadgen: the SMTP load generator of mxgate's benchmarks (see BENCHMARKS.md).
//!
//! - `loadgen run`: N concurrent sessions deliver M messages of a given size, K per
//!   connection, R recipients each, optionally after STARTTLS (TLS 1.3 or 1.2); prints one
//!   JSON object with msg/s, connections/s and p50/p90/p99 latency per SMTP phase. With
//!   `--sink-counter` (the output file of `smtp-sink -c`) it also waits until the sink has
//!   received every accepted message and reports the end-to-end rate.
//! - `loadgen idle`: opens N connections (greeting + EHLO) and holds them, for memory
//!   measurements.
//! - `loadgen dns`: a DNS stub on 127.0.0.1 answering the gateway's reverse-DNS lookups.
//! - `loadgen spool-ceiling`: commits per second of the file system itself (write, fdatasync,
//!   rename, group-commit directory fsync) at a given concurrency: the spool's own limit.
//!
//! Every loop is bounded in count and time, and only loopback targets are accepted.

mod dns;
mod smtp;
mod spool;
mod stats;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use smtp::{Smtp, StepError, TlsVersion};
use stats::{json_str, Phase, Stats};

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "SMTP load generator for mxgate's benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send messages over concurrent sessions and print a JSON report.
    Run(RunArgs),
    /// Open connections (greeting + EHLO), hold them idle, print a JSON report.
    Idle(IdleArgs),
    /// Serve a DNS stub on a loopback address (PTR/A for the load generator's address).
    Dns(DnsArgs),
    /// Commit files like a spool (write, fdatasync, rename, group-commit directory fsync)
    /// from concurrent threads; print files/s as JSON.
    SpoolCeiling(SpoolArgs),
}

#[derive(Args, Clone, Debug)]
struct SpoolArgs {
    /// Directory to work in (on the file system of the spool being compared).
    #[arg(long)]
    dir: PathBuf,
    /// Commits at the same time (the scenario's sessions).
    #[arg(long, default_value_t = 20)]
    concurrency: usize,
    /// Files to commit.
    #[arg(long, default_value_t = 2000)]
    files: u64,
    /// Bytes per file (or with K/M suffix).
    #[arg(long, default_value = "4K", value_parser = parse_size)]
    size: usize,
    /// Label copied into the JSON.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TlsArg {
    /// Plain SMTP.
    #[value(name = "off")]
    Off,
    /// STARTTLS, TLS 1.3 only.
    #[value(name = "1.3")]
    V13,
    /// STARTTLS, TLS 1.2 only.
    #[value(name = "1.2")]
    V12,
}

#[derive(Args, Clone, Debug)]
struct RunArgs {
    /// Server address (loopback only).
    #[arg(long, default_value = "127.0.0.1:2525")]
    target: SocketAddr,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Messages in total.
    #[arg(long, default_value_t = 2000)]
    messages: u64,
    /// Message size (bytes, or with K/M suffix), headers included.
    #[arg(long, default_value = "4K", value_parser = parse_size)]
    size: usize,
    /// Messages per connection.
    #[arg(long, default_value_t = 1)]
    per_conn: u64,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    rcpts: u32,
    /// STARTTLS on every connection: off, 1.3 or 1.2.
    #[arg(long, value_enum, default_value = "off")]
    tls: TlsArg,
    /// Resume TLS sessions (rustls's client session cache: TLS 1.3 tickets when the server
    /// sends them, TLS 1.2 session ids or tickets); off by default: every connection pays a
    /// full handshake. The report counts the handshakes that resumed.
    #[arg(long, visible_alias = "tls-resume")]
    resume: bool,
    /// SNI / server name sent in the handshake.
    #[arg(long, default_value = "mx.example.com")]
    server_name: String,
    /// Send MAIL, RCPT and DATA in one write (RFC 2920) instead of lock-step.
    #[arg(long)]
    pipelining: bool,
    /// Envelope sender.
    #[arg(long, default_value = "sender@loadgen.example")]
    from: String,
    /// Recipient domain (recipients are user0@DOMAIN, user1@DOMAIN, ...).
    #[arg(long, default_value = "example.com")]
    rcpt_domain: String,
    /// EHLO name.
    #[arg(long, default_value = "client.loadgen.test")]
    ehlo: String,
    /// Per-read timeout in seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Stop starting new connections after this many seconds.
    #[arg(long, default_value_t = 600)]
    max_secs: u64,
    /// The stdout of `smtp-sink -c`: wait until the sink counted every accepted message.
    #[arg(long)]
    sink_counter: Option<PathBuf>,
    /// Longest wait for the sink, in seconds after the last message was accepted.
    #[arg(long, default_value_t = 300)]
    e2e_timeout: u64,
    /// Label copied into the JSON.
    #[arg(long, default_value = "")]
    label: String,
    /// Runtime threads (1 = current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Args, Clone, Debug)]
struct IdleArgs {
    /// Server address (loopback only).
    #[arg(long, default_value = "127.0.0.1:2525")]
    target: SocketAddr,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// EHLO name.
    #[arg(long, default_value = "client.loadgen.test")]
    ehlo: String,
    /// Per-read timeout in seconds during setup.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Give up setting up connections after this many seconds.
    #[arg(long, default_value_t = 300)]
    setup_secs: u64,
    /// Hold at most this many seconds after setup.
    #[arg(long, default_value_t = 120)]
    hold_secs: u64,
    /// Written (with the JSON report) once every connection is set up.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Release the connections as soon as this file exists.
    #[arg(long)]
    release_file: Option<PathBuf>,
    /// Label copied into the JSON.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Args, Clone, Debug)]
struct DnsArgs {
    /// UDP address to serve on (loopback only).
    #[arg(long, default_value = "127.0.0.1:5353")]
    listen: SocketAddr,
    /// Name returned for PTR queries of 127.x.x.x; its A record is 127.0.0.1.
    #[arg(long, default_value = "client.loadgen.test")]
    ptr_name: String,
    /// Exit after this many seconds.
    #[arg(long, default_value_t = 3600)]
    max_secs: u64,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1024),
        Some((i, 'M' | 'm')) => (&t[..i], 1024 * 1024),
        _ => (t, 1),
    };
    num.trim()
        .parse::<usize>()
        .map(|n| n * mult)
        .map_err(|e| format!("bad size {s:?}: {e}"))
}

fn main() {
    let cli = Cli::parse();
    raise_nofile();
    if let Cmd::SpoolCeiling(a) = cli.cmd {
        let p = spool::Params {
            dir: a.dir,
            concurrency: a.concurrency,
            files: a.files,
            size: a.size,
            label: a.label,
        };
        match spool::run(p) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("loadgen: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let threads = match &cli.cmd {
        Cmd::Run(a) => a.threads.max(1),
        _ => 1,
    };
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    let code = rt.block_on(async move {
        match cli.cmd {
            Cmd::Run(a) => run(a).await,
            Cmd::Idle(a) => idle(a).await,
            Cmd::SpoolCeiling(_) => unreachable!("handled before the runtime starts"),
            Cmd::Dns(a) => {
                match dns::serve(a.listen, a.ptr_name, Duration::from_secs(a.max_secs)).await {
                    Ok(()) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    });
    if let Err(e) = code {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

/// Raises the soft open-files limit to the hard one (10 000 idle connections need it).
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

fn check_loopback(target: &SocketAddr) -> Result<(), String> {
    if target.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "target {target} is not a loopback address: loadgen only loads servers on this machine"
        ))
    }
}

/// Everything the session tasks share.
struct Shared {
    a: RunArgs,
    tls: Option<TlsConnector>,
    server_name: ServerName<'static>,
    /// Static part of every message (headers after Message-ID, and the body), ends in CRLF.
    body: Vec<u8>,
    next: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    conns: AtomicU64,
    /// TLS handshakes completed, and those that resumed a session.
    handshakes: AtomicU64,
    resumed: AtomicU64,
    start: Instant,
    deadline: Instant,
    /// Microseconds from start to the latest 250 after a message.
    last_ok_us: AtomicU64,
    timeout: Duration,
    sample_errors: Mutex<Vec<String>>,
}

impl Shared {
    /// Claims the next message index, if any is left.
    fn claim(&self) -> Option<u64> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.a.messages).then_some(i)
    }

    fn note_error(&self, st: &mut Stats, step: &str, e: &StepError) {
        st.error(e.kind(step));
        let mut s = self.sample_errors.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() < 5 {
            s.push(format!("{step}: {e:?}"));
        }
    }
}

/// The message text after the per-message Message-ID header: headers, blank line, and
/// body lines of 76 characters until `size` bytes in all (about: the last line is whole).
fn message_body(a: &RunArgs) -> Vec<u8> {
    let mut m = format!(
        "From: Load Generator <{}>\r\nTo: <user0@{}>\r\nSubject: loadgen test message\r\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n",
        a.from, a.rcpt_domain
    )
    .into_bytes();
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ";
    let mut x: u32 = 0x9e37_79b9;
    let target = a.size.saturating_sub(64 + 78).max(m.len() + 1);
    while m.len() < target {
        for _ in 0..76 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            m.push(alphabet[(x % alphabet.len() as u32) as usize]);
        }
        m.extend_from_slice(b"\r\n");
    }
    m
}

async fn run(a: RunArgs) -> Result<(), String> {
    check_loopback(&a.target)?;
    if a.sessions == 0 || a.per_conn == 0 || a.rcpts == 0 {
        return Err("--sessions, --per-conn and --rcpts must be at least 1".into());
    }
    let tls = match a.tls {
        TlsArg::Off => None,
        TlsArg::V13 => Some(smtp::client_config(TlsVersion::V13, a.resume)?),
        TlsArg::V12 => Some(smtp::client_config(TlsVersion::V12, a.resume)?),
    }
    .map(TlsConnector::from);
    let server_name =
        ServerName::try_from(a.server_name.clone()).map_err(|e| format!("--server-name: {e}"))?;
    let baseline = match &a.sink_counter {
        Some(p) => sink_count(p),
        None => 0,
    };
    let start = Instant::now();
    let cpu0 = stats::self_cpu_seconds();
    let sh = Arc::new(Shared {
        body: message_body(&a),
        tls,
        server_name,
        next: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        conns: AtomicU64::new(0),
        handshakes: AtomicU64::new(0),
        resumed: AtomicU64::new(0),
        start,
        deadline: start + Duration::from_secs(a.max_secs),
        last_ok_us: AtomicU64::new(0),
        timeout: Duration::from_secs(a.timeout),
        sample_errors: Mutex::new(Vec::new()),
        a,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..sh.a.sessions {
        let sh = sh.clone();
        tasks.spawn(async move { worker(&sh).await });
    }
    let mut st = Stats::default();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(s) => st.merge(s),
            Err(e) => st.error(format!("task: {e}")),
        }
    }
    let all_done = start.elapsed();
    let cpu = stats::self_cpu_seconds() - cpu0;
    let ok = sh.ok.load(Ordering::Relaxed);
    let failed = sh.failed.load(Ordering::Relaxed);
    let conns = sh.conns.load(Ordering::Relaxed);
    let handshakes = sh.handshakes.load(Ordering::Relaxed);
    let resumed = sh.resumed.load(Ordering::Relaxed);
    let accept_s = Duration::from_micros(sh.last_ok_us.load(Ordering::Relaxed)).as_secs_f64();
    let accept_s = if accept_s > 0.0 {
        accept_s
    } else {
        all_done.as_secs_f64()
    };
    let mut e2e = String::from("null");
    let mut e2e_rate = String::from("null");
    let mut sink_seen = String::from("null");
    if let Some(p) = &sh.a.sink_counter {
        let want = baseline + ok;
        let limit = Instant::now() + Duration::from_secs(sh.a.e2e_timeout);
        let mut seen = sink_count(p);
        while seen < want && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(2)).await;
            seen = sink_count(p);
        }
        sink_seen = (seen.saturating_sub(baseline)).to_string();
        if seen >= want {
            let t = start.elapsed().as_secs_f64();
            e2e = format!("{t:.4}");
            e2e_rate = format!("{:.1}", ok as f64 / t);
        } else {
            st.error("e2e: sink did not receive every message in time");
        }
    }
    let a = &sh.a;
    let samples = sh
        .sample_errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|s| json_str(s))
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "{{\"label\":{},\"target\":\"{}\",\"sessions\":{},\"messages\":{},\"size\":{},\"per_conn\":{},\
         \"rcpts\":{},\"tls\":\"{}\",\"resume\":{},\"tls_handshakes\":{handshakes},\"tls_resumed\":{resumed},\"pipelining\":{},\"ok\":{ok},\"failed\":{failed},\"connections\":{conns},\
         \"accept_s\":{accept_s:.4},\"msg_per_s\":{:.1},\"conn_per_s\":{:.1},\"mib_per_s\":{:.2},\
         \"e2e_s\":{e2e},\"e2e_msg_per_s\":{e2e_rate},\"sink_received\":{sink_seen},\
         \"client_cpu_s\":{cpu:.3},\"latency_ms\":{},\"errors\":{},\"error_samples\":[{samples}]}}",
        json_str(&a.label),
        a.target,
        a.sessions,
        a.messages,
        a.size,
        a.per_conn,
        a.rcpts,
        match a.tls {
            TlsArg::Off => "off",
            TlsArg::V13 => "1.3",
            TlsArg::V12 => "1.2",
        },
        a.resume,
        a.pipelining,
        ok as f64 / accept_s,
        conns as f64 / all_done.as_secs_f64(),
        (ok as f64 * a.size as f64) / accept_s / (1024.0 * 1024.0),
        st.latency_json(),
        st.errors_json(),
    );
    Ok(())
}

/// The last `mesg=N` that `smtp-sink -c` printed (it rewrites one line with `\r`).
fn sink_count(path: &Path) -> u64 {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return 0;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(256);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return 0;
    }
    let mut tail = Vec::with_capacity(256);
    if f.read_to_end(&mut tail).is_err() {
        return 0;
    }
    // Only complete records (each ends with CR).
    let Some(end) = tail.iter().rposition(|&b| b == b'\r') else {
        return 0;
    };
    let text = String::from_utf8_lossy(&tail[..end]);
    text.rsplit("mesg=")
        .next()
        .and_then(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse().ok())
        })
        .unwrap_or(0)
}

async fn worker(sh: &Shared) -> Stats {
    let mut st = Stats::default();
    while let Some(first) = sh.claim() {
        if Instant::now() >= sh.deadline {
            st.error("deadline: --max-secs reached");
            sh.failed.fetch_add(1, Ordering::Relaxed);
            break;
        }
        session(sh, &mut st, first).await;
    }
    st
}

/// One connection: greeting, EHLO, optional STARTTLS, messages, QUIT.
async fn session(sh: &Shared, st: &mut Stats, first: u64) {
    let t0 = Instant::now();
    let tcp = match tokio::time::timeout(sh.timeout, TcpStream::connect(sh.a.target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            sh.note_error(st, "connect", &StepError::Io(e));
            sh.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(_) => {
            sh.note_error(st, "connect", &StepError::Timeout);
            sh.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let mut c = Smtp::new(tcp, sh.timeout);
    let fail = |st: &mut Stats, step: &str, e: StepError| {
        sh.note_error(st, step, &e);
        sh.failed.fetch_add(1, Ordering::Relaxed);
    };
    if let Err(e) = c.expect(220).await {
        return fail(st, "greeting", e);
    }
    st.record(Phase::Connect, t0.elapsed());
    if let Err(e) = ehlo(&mut c, sh, st).await {
        return fail(st, "ehlo", e);
    }
    match &sh.tls {
        None => messages(c, sh, st, first, t0).await,
        Some(tls) => {
            let t = Instant::now();
            if let Err(e) = c.command(b"STARTTLS\r\n", 220).await {
                return fail(st, "starttls", e);
            }
            if c.buffered() > 0 {
                return fail(
                    st,
                    "starttls",
                    StepError::Io(std::io::Error::other("data after 220 to STARTTLS")),
                );
            }
            let hs =
                tokio::time::timeout(sh.timeout, tls.connect(sh.server_name.clone(), c.stream))
                    .await;
            let stream = match hs {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return fail(st, "handshake", StepError::Io(e)),
                Err(_) => return fail(st, "handshake", StepError::Timeout),
            };
            st.record(Phase::StartTls, t.elapsed());
            sh.handshakes.fetch_add(1, Ordering::Relaxed);
            if stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                sh.resumed.fetch_add(1, Ordering::Relaxed);
            }
            let mut c = Smtp::new(stream, sh.timeout);
            if let Err(e) = ehlo(&mut c, sh, st).await {
                return fail(st, "ehlo after tls", e);
            }
            messages(c, sh, st, first, t0).await
        }
    }
}

async fn ehlo<S>(c: &mut Smtp<S>, sh: &Shared, st: &mut Stats) -> Result<(), StepError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let t = Instant::now();
    c.command(format!("EHLO {}\r\n", sh.a.ehlo).as_bytes(), 250)
        .await?;
    st.record(Phase::Ehlo, t.elapsed());
    Ok(())
}

async fn messages<S>(mut c: Smtp<S>, sh: &Shared, st: &mut Stats, first: u64, t0: Instant)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut idx = Some(first);
    let mut sent = 0;
    while let Some(i) = idx {
        if let Err((step, e)) = one_message(&mut c, sh, st, i).await {
            sh.note_error(st, step, &e);
            sh.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        sh.ok.fetch_add(1, Ordering::Relaxed);
        sh.last_ok_us
            .fetch_max(sh.start.elapsed().as_micros() as u64, Ordering::Relaxed);
        sent += 1;
        idx = if sent < sh.a.per_conn && Instant::now() < sh.deadline {
            sh.claim()
        } else {
            None
        };
    }
    let t = Instant::now();
    match c.quit().await {
        Ok(()) => {
            st.record(Phase::Quit, t.elapsed());
            st.record(Phase::Session, t0.elapsed());
            sh.conns.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => sh.note_error(st, "quit", &e),
    }
}

async fn one_message<S>(
    c: &mut Smtp<S>,
    sh: &Shared,
    st: &mut Stats,
    idx: u64,
) -> Result<(), (&'static str, StepError)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let a = &sh.a;
    let tm = Instant::now();
    let mail = format!("MAIL FROM:<{}>\r\n", a.from);
    let rcpt = |r: u32| format!("RCPT TO:<user{r}@{}>\r\n", a.rcpt_domain);
    if a.pipelining {
        let mut cmds = mail.into_bytes();
        for r in 0..a.rcpts {
            cmds.extend_from_slice(rcpt(r).as_bytes());
        }
        cmds.extend_from_slice(b"DATA\r\n");
        c.send(&cmds).await.map_err(|e| ("envelope", e))?;
        c.expect(250).await.map_err(|e| ("mail", e))?;
        for _ in 0..a.rcpts {
            c.expect(250).await.map_err(|e| ("rcpt", e))?;
        }
        c.expect(354).await.map_err(|e| ("data", e))?;
        st.record(Phase::Envelope, tm.elapsed());
    } else {
        c.command(mail.as_bytes(), 250)
            .await
            .map_err(|e| ("mail", e))?;
        st.record(Phase::Mail, tm.elapsed());
        for r in 0..a.rcpts {
            let t = Instant::now();
            c.command(rcpt(r).as_bytes(), 250)
                .await
                .map_err(|e| ("rcpt", e))?;
            st.record(Phase::Rcpt, t.elapsed());
        }
        let t = Instant::now();
        c.command(b"DATA\r\n", 354).await.map_err(|e| ("data", e))?;
        st.record(Phase::Data, t.elapsed());
    }
    let t = Instant::now();
    let head = format!(
        "Message-ID: <{idx}.{}@loadgen.example>\r\n",
        std::process::id()
    );
    c.send(head.as_bytes()).await.map_err(|e| ("body", e))?;
    c.send(&sh.body).await.map_err(|e| ("body", e))?;
    c.command(b".\r\n", 250).await.map_err(|e| ("dot", e))?;
    st.record(Phase::Dot, t.elapsed());
    st.record(Phase::Message, tm.elapsed());
    Ok(())
}

async fn idle(a: IdleArgs) -> Result<(), String> {
    check_loopback(&a.target)?;
    let start = Instant::now();
    let setup_deadline = start + Duration::from_secs(a.setup_secs);
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
    let timeout = Duration::from_secs(a.timeout);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.connections {
        let sem = sem.clone();
        let done = done_tx.clone();
        let mut release = release_rx.clone();
        let target = a.target;
        let ehlo = a.ehlo.clone();
        tasks.spawn(async move {
            let permit = sem.acquire_owned().await;
            if Instant::now() >= setup_deadline {
                let _ = done.send(Err("setup deadline".into()));
                return;
            }
            let setup = async {
                let tcp = TcpStream::connect(target)
                    .await
                    .map_err(|e| format!("connect: {:?}", e.kind()))?;
                let _ = tcp.set_nodelay(true);
                let mut c = Smtp::new(tcp, timeout);
                c.expect(220).await.map_err(|e| e.kind("greeting"))?;
                c.command(format!("EHLO {ehlo}\r\n").as_bytes(), 250)
                    .await
                    .map_err(|e| e.kind("ehlo"))?;
                Ok::<_, String>(c)
            };
            let left = setup_deadline.saturating_duration_since(Instant::now());
            let conn = match tokio::time::timeout(left, setup).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    let _ = done.send(Err(e));
                    return;
                }
                Err(_) => {
                    let _ = done.send(Err("setup deadline".into()));
                    return;
                }
            };
            drop(permit);
            let _ = done.send(Ok(()));
            let _ = release.wait_for(|r| *r).await;
            drop(conn);
        });
    }
    drop(done_tx);
    let mut held = 0u64;
    let mut st = Stats::default();
    for _ in 0..a.connections {
        match done_rx.recv().await {
            Some(Ok(())) => held += 1,
            Some(Err(e)) => st.error(e),
            None => break,
        }
    }
    let setup = start.elapsed().as_secs_f64();
    let report = format!(
        "{{\"label\":{},\"target\":\"{}\",\"requested\":{},\"held\":{held},\"failed\":{},\
         \"setup_s\":{setup:.3},\"client_cpu_s\":{:.3},\"errors\":{}}}",
        json_str(&a.label),
        a.target,
        a.connections,
        a.connections as u64 - held,
        stats::self_cpu_seconds(),
        st.errors_json()
    );
    println!("{report}");
    if let Some(p) = &a.ready_file {
        std::fs::write(p, format!("{report}\n")).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let hold_end = Instant::now() + Duration::from_secs(a.hold_secs);
    while Instant::now() < hold_end {
        if a.release_file.as_ref().is_some_and(|p| p.exists()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = release_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn sink_counter_reads_the_last_complete_record() {
        let dir = std::env::temp_dir().join(format!("loadgen-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("sink.out");
        std::fs::write(
            &p,
            b"sess=1 quit=1 mesg=1\rsess=2 quit=2 mesg=12\rsess=2 quit",
        )
        .unwrap();
        assert_eq!(sink_count(&p), 12);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn message_size_and_lines() {
        let cli = Cli::parse_from(["loadgen", "run", "--size", "4K"]);
        let Cmd::Run(a) = cli.cmd else { panic!() };
        let b = message_body(&a);
        assert!(b.len() > 3900 && b.len() <= 4096, "{}", b.len());
        assert!(b.ends_with(b"\r\n"));
        assert!(!b.windows(3).any(|w| w == b"\n.\r" || w == b"\n.."));
    }
}
