//! Transcript tests: `tests/transcripts/*.txt` replayed against the sans-IO session.
//!
//! Format (one directive per line; `#` starts a comment):
//! - `@config DIR` config dir relative to the repo (default: the shipped config `.`)
//! - `@listener NAME`, `@peer IP`, `@rdns verified NAME|missing|tempfail|mismatch NAME`
//! - `@tls-available no` (no certificate loaded)
//! - `C: line` a command line (CRLF appended); consecutive C: lines are sent in one packet
//! - `R: text` raw bytes with escapes `\r \n \t \0 \\ \xNN`, no CRLF appended (joins the packet)
//! - `S: line` the next reply line, exactly; `S: <close>` the session closed the connection
//! - `L: text` a mail-log line containing `text` appears (in order)
//! - `B: text` the last committed message body contains `text` (escapes as in R:)
//! - `=TLS` the driver completed the handshake; `=TLS-FAIL reason`. Under `tls_verify_client`,
//!   `=TLS cert-verified SUBJECT`, `=TLS cert-missing` or `=TLS cert-failed REASON` give the
//!   client-certificate result
//! - `=COMMIT-FAIL` the next spool commit fails; `=TIMEOUT what`; `=SHUTDOWN`; `=EOF` peer closed
//! - `=CONCURRENCY-FULL` refuse as the per-IP connection limit does; `=PREGREET` client spoke first
//!
//! Each file is its own test, named after it (`t07_starttls_injection`); `transcripts` fails
//! when a file is not listed. `BLESS=1 cargo test --test transcripts [NAME]` rewrites the
//! `S:` lines of the files it runs from the session's actual replies (other directives are
//! still checked); review the diff before committing it.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mxgate::config::{load, Overrides};
use mxgate::mail_log::Event;
use mxgate::policy::flow::ClientCert;
use mxgate::policy::hat::{Peer, ReverseDns};
use mxgate::policy::rate::RateLimiter;
use mxgate::smtp::session::{Action, Opening, Session, SessionEnv, SessionParams, TlsInfo};

struct TestEnv {
    mid: AtomicU64,
}

impl SessionEnv for TestEnv {
    fn next_mid(&self) -> Result<u64, String> {
        Ok(self.mid.fetch_add(1, Ordering::SeqCst))
    }
    fn now_rfc2822(&self) -> String {
        "Tue, 17 Apr 2018 00:57:53 +0000".into()
    }
    fn now_unix(&self) -> u64 {
        1_523_926_673
    }
}

fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            i += 1;
            match b[i] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'0' => out.push(0),
                b'\\' => out.push(b'\\'),
                b'x' => {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                other => panic!("unknown escape \\{}", other as char),
            }
        } else {
            out.push(b[i]);
        }
        i += 1;
    }
    out
}

struct Runner {
    name: String,
    session: Session,
    replies: VecDeque<String>,
    logs: Vec<String>,
    log_cursor: usize,
    body: Vec<u8>,
    last_body: Vec<u8>,
    pending: Vec<u8>,
    closed: bool,
    tls_pending: bool,
    commit_fail: bool,
    /// `BLESS=1`: expected replies are recorded, not checked.
    bless: Option<Bless>,
}

/// What `BLESS=1` rewrites: per 0-based line of the file, the lines replacing it.
#[derive(Default)]
struct Bless {
    replace: std::collections::BTreeMap<usize, Vec<String>>,
    /// Replies nobody expected, inserted before this line (the packet that follows them).
    insert: std::collections::BTreeMap<usize, Vec<String>>,
}

impl Bless {
    /// The file's text with the recorded changes applied.
    fn apply(&self, text: &str) -> String {
        let mut out = String::new();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            for l in self.insert.get(&i).into_iter().flatten() {
                out.push_str(l);
                out.push('\n');
            }
            match self.replace.get(&i) {
                Some(new) => new.iter().for_each(|l| {
                    out.push_str(l);
                    out.push('\n');
                }),
                None => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        for l in self.insert.get(&lines.len()).into_iter().flatten() {
            out.push_str(l);
            out.push('\n');
        }
        out
    }
}

impl Runner {
    fn pump(&mut self) {
        loop {
            let actions = self.session.take_actions();
            if actions.is_empty() {
                break;
            }
            for a in actions {
                match a {
                    Action::Reply(r) => {
                        for l in r.to_wire().split("\r\n").filter(|l| !l.is_empty()) {
                            self.replies.push_back(l.to_string());
                        }
                    }
                    Action::Log(e) => self.logs.push(log_text(&e)),
                    Action::StartTls => {
                        self.tls_pending = true;
                        // What a client pipelined behind STARTTLS is dropped, as the driver does.
                        if !self.pending.is_empty() {
                            let n = self.pending.len();
                            self.pending.clear();
                            self.session.discarded_after_starttls(n);
                        }
                    }
                    Action::BeginMessage(_) => self.body.clear(),
                    Action::CommitMessage(_) => {
                        self.body.append(self.session.body_mut());
                        let r = if std::mem::take(&mut self.commit_fail) {
                            Err("No space left on device".to_string())
                        } else {
                            self.last_body = std::mem::take(&mut self.body);
                            Ok(())
                        };
                        self.session.committed(r);
                    }
                    Action::AbortMessage => self.body.clear(),
                    Action::Close => self.closed = true,
                }
            }
            self.body.append(self.session.body_mut());
        }
        self.body.append(self.session.body_mut());
    }

    fn send(&mut self) {
        while !self.pending.is_empty() && !self.session.is_closed() && !self.session.is_waiting() {
            let input = std::mem::take(&mut self.pending);
            let used = self.session.feed(&input);
            self.pending = input[used..].to_vec();
            self.pump();
            if used == 0 {
                break;
            }
        }
        self.pump();
    }

    fn fail(&self, lineno: usize, msg: String) -> ! {
        panic!(
            "{}:{lineno}: {msg}\n  unread replies: {:?}\n  log so far:\n    {}",
            self.name,
            self.replies,
            self.logs.join("\n    ")
        );
    }
}

fn log_text(e: &Event) -> String {
    e.text()
}

/// Whether `BLESS` is set (to anything but `0`).
fn blessing() -> bool {
    std::env::var_os("BLESS").is_some_and(|v| v != "0")
}

fn run_transcript(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut config_dir = root.clone();
    let mut listener = None;
    let mut peer_ip: IpAddr = "192.0.2.1".parse().unwrap();
    let mut rdns = ReverseDns::Missing;
    let mut tls_available = true;
    let mut body_lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let (directive, arg) = line.split_once(' ').unwrap_or((line, ""));
        match directive {
            "@config" => config_dir = root.join(arg),
            "@listener" => listener = Some(arg.to_string()),
            "@peer" => peer_ip = arg.parse().unwrap(),
            "@rdns" => {
                let (kind, n) = arg.split_once(' ').unwrap_or((arg, ""));
                rdns = match kind {
                    "verified" => ReverseDns::Verified(n.into()),
                    "missing" => ReverseDns::Missing,
                    "tempfail" => ReverseDns::TempFail,
                    "mismatch" => ReverseDns::Mismatch(n.into()),
                    _ => panic!("{name}:{}: bad @rdns", i + 1),
                }
            }
            "@tls-available" => tls_available = arg != "no",
            _ => body_lines.push((i + 1, line.to_string())),
        }
    }
    let overrides = Overrides {
        spool_dir: Some(std::env::temp_dir().join("mxgate-transcripts-unused")),
        ..Overrides::default()
    };
    let cfg = load(&config_dir, &overrides).unwrap_or_else(|e| panic!("{name}: config: {e}"));
    let l = match &listener {
        Some(n) => cfg.listeners.iter().find(|l| &l.name == n).unwrap(),
        None => &cfg.listeners[0],
    };
    let classification = l.hat.classify(&Peer {
        ip: peer_ip,
        rdns: rdns.clone(),
        dnslists_listed: vec![],
    });
    let params = SessionParams {
        icid: 1,
        listener: l.name.clone(),
        hostname: l.hostname.clone(),
        local_ip: "127.0.0.1".parse().unwrap(),
        peer_ip,
        rdns_host: rdns.host_for_log().to_string(),
        rdns_verified: matches!(rdns, ReverseDns::Verified(_)),
        classification,
        rat: l.rat.clone(),
        max_command_line: l.max_command_line,
        max_bad_commands: l.max_bad_commands,
        tls_available,
        rate: RateLimiter::system(),
        env: Arc::new(TestEnv {
            mid: AtomicU64::new(1),
        }),
    };
    let mut r = Runner {
        name: name.clone(),
        session: Session::new(params),
        replies: VecDeque::new(),
        logs: Vec::new(),
        log_cursor: 0,
        body: Vec::new(),
        last_body: Vec::new(),
        pending: Vec::new(),
        closed: false,
        tls_pending: false,
        commit_fail: false,
        bless: blessing().then(Bless::default),
    };
    // Line numbers are 1-based; the packet being collected started at this one.
    let mut packet_start = 0;
    let mut started = false;
    let check_drained = |r: &mut Runner, lineno: usize, before: usize| {
        if let Some(b) = r.bless.as_mut() {
            let extra: Vec<String> = r.replies.drain(..).map(|l| format!("S: {l}")).collect();
            if !extra.is_empty() {
                b.insert.entry(before - 1).or_default().extend(extra);
            }
        } else if !r.replies.is_empty() {
            r.fail(lineno, "more replies than the transcript expects".into());
        }
    };
    for (lineno, line) in body_lines {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (tag, arg) = match line.find(' ') {
            Some(p) => (&line[..p], &line[p + 1..]),
            None => (line, ""),
        };
        if !started && !matches!(tag, "=CONCURRENCY-FULL" | "=PREGREET") {
            r.session.start(Opening::Normal);
            r.pump();
            started = true;
        }
        match tag {
            "C:" | "R:" => {
                if r.pending.is_empty() {
                    packet_start = lineno;
                }
                if tag == "C:" {
                    r.pending.extend_from_slice(arg.as_bytes());
                    r.pending.extend_from_slice(b"\r\n");
                } else {
                    r.pending.extend_from_slice(&unescape(arg));
                }
                continue;
            }
            _ => {
                if !r.pending.is_empty() {
                    check_drained(&mut r, lineno, packet_start);
                    r.send();
                }
            }
        }
        match tag {
            "S:" if arg == "<close>" => {
                if !r.closed {
                    r.fail(lineno, "expected the session to close".into());
                }
            }
            "S:" if r.bless.is_some() => {
                let got = r.replies.pop_front();
                let b = r.bless.as_mut().unwrap();
                b.replace.insert(
                    lineno - 1,
                    got.map(|g| format!("S: {g}")).into_iter().collect(),
                );
            }
            "S:" => match r.replies.pop_front() {
                Some(got) if got == arg => {}
                Some(got) => r.fail(lineno, format!("expected reply {arg:?}, got {got:?}")),
                None => r.fail(lineno, format!("expected reply {arg:?}, got nothing")),
            },
            "L:" => match r.logs[r.log_cursor..].iter().position(|l| l.contains(arg)) {
                Some(p) => r.log_cursor += p + 1,
                None => r.fail(
                    lineno,
                    format!("no log line containing {arg:?} after line {}", r.log_cursor),
                ),
            },
            "B:" => {
                let want = unescape(arg);
                if !r
                    .last_body
                    .windows(want.len())
                    .any(|w| w == want.as_slice())
                {
                    r.fail(
                        lineno,
                        format!(
                            "last body does not contain {arg:?}: {:?}",
                            String::from_utf8_lossy(&r.last_body)
                        ),
                    );
                }
            }
            "=TLS" | "=TLS-FAIL" => {
                assert!(r.tls_pending, "{name}:{lineno}: no STARTTLS pending");
                r.tls_pending = false;
                if tag == "=TLS" {
                    let client_cert = match arg.split_once(' ').unwrap_or((arg, "")) {
                        ("", _) => ClientCert::NotRequested,
                        ("cert-missing", _) => ClientCert::Missing,
                        ("cert-verified", subject) => ClientCert::Verified(subject.into()),
                        ("cert-failed", why) => ClientCert::Failed(why.into()),
                        _ => panic!("{name}:{lineno}: unknown =TLS argument {arg:?}"),
                    };
                    r.session.tls_established(TlsInfo {
                        protocol: "TLSv1.3".into(),
                        cipher: "TLS13_AES_256_GCM_SHA384".into(),
                        client_cert,
                    });
                } else {
                    r.session.tls_failed(arg);
                }
                r.pump();
            }
            "=COMMIT-FAIL" => r.commit_fail = true,
            "=TIMEOUT" => {
                r.session.timeout(arg);
                r.pump();
            }
            "=SHUTDOWN" => {
                r.session.shutdown();
                r.pump();
            }
            "=EOF" => {
                r.session.finish();
                r.pump();
            }
            "=CONCURRENCY-FULL" => {
                r.session.start(Opening::ConcurrencyFull);
                r.pump();
                started = true;
            }
            "=PREGREET" => {
                r.session.start(Opening::PreGreet);
                r.pump();
                started = true;
            }
            other => panic!("{name}:{lineno}: unknown directive {other:?}"),
        }
    }
    if !r.pending.is_empty() {
        r.send();
    }
    if let Some(mut b) = r.bless.take() {
        let extra: Vec<String> = r.replies.drain(..).map(|l| format!("S: {l}")).collect();
        b.insert
            .entry(text.lines().count())
            .or_default()
            .extend(extra);
        let blessed = b.apply(&text);
        if blessed != text {
            std::fs::write(path, blessed).unwrap();
            eprintln!("BLESS: rewrote the S: lines of {name}");
        }
    }
    if !r.replies.is_empty() {
        r.fail(0, "transcript ended with unread replies".into());
    }
}

/// Runs `tests/transcripts/FILE`.
fn run_file(file: &str) {
    run_transcript(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/transcripts")
            .join(file),
    );
}

/// One `#[test]` per transcript file, named after it, and the list of the files.
macro_rules! transcript_tests {
    ($($name:ident => $file:literal,)*) => {
        $(
            #[test]
            fn $name() {
                run_file($file);
            }
        )*
        /// Every transcript file with a test.
        const LISTED: &[&str] = &[$($file),*];
    };
}

transcript_tests! {
    t01_greeting_ehlo => "01_greeting_ehlo.txt",
    t02_accept_message => "02_accept_message.txt",
    t03_sequence_errors => "03_sequence_errors.txt",
    t04_tls_required => "04_tls_required.txt",
    t05_tls_required_client_leaves => "05_tls_required_client_leaves.txt",
    t06_tls_off => "06_tls_off.txt",
    t07_starttls_injection => "07_starttls_injection.txt",
    t08_reject_and_tcprefuse => "08_reject_and_tcprefuse.txt",
    t09_tcprefuse => "09_tcprefuse.txt",
    t10_rat => "10_rat.txt",
    t11_limits_throttled => "11_limits_throttled.txt",
    t12_message_size => "12_message_size.txt",
    t13_relay_listener => "13_relay_listener.txt",
    t14_relay_listener_stranger => "14_relay_listener_stranger.txt",
    t15_commit_failure => "15_commit_failure.txt",
    t16_timeout_shutdown => "16_timeout_shutdown.txt",
    t17_shutdown_in_data => "17_shutdown_in_data.txt",
    t18_concurrency_limit => "18_concurrency_limit.txt",
    t19_pregreet => "19_pregreet.txt",
    t20_tls_mandatory_sender => "20_tls_mandatory_sender.txt",
    t21_pipelining => "21_pipelining.txt",
    t22_hostname_criteria => "22_hostname_criteria.txt",
    t23_ptr_mismatch => "23_ptr_mismatch.txt",
    t24_syntax_errors => "24_syntax_errors.txt",
    t25_line_limits => "25_line_limits.txt",
    t26_smuggling_data => "26_smuggling_data.txt",
    t27_smuggling_cr => "27_smuggling_cr.txt",
    t28_rat_custom_accept => "28_rat_custom_accept.txt",
    t30_open_relay_strict_rat => "30_open_relay_strict_rat.txt",
    t31_smuggling_crlf_dot_cr => "31_smuggling_crlf_dot_cr.txt",
    t32_smuggling_cr_cr_lf => "32_smuggling_cr_cr_lf.txt",
    t33_smuggling_nul => "33_smuggling_nul.txt",
    t34_command_bare_lf_injection => "34_command_bare_lf_injection.txt",
    t35_tls_verify_client_required => "35_tls_verify_client_required.txt",
    t36_tls_verify_client_required_failed => "36_tls_verify_client_required_failed.txt",
    t37_tls_verify_client_verified => "37_tls_verify_client_verified.txt",
    t38_postmaster => "38_postmaster.txt",
    t38_tls_verify_client_preferred => "38_tls_verify_client_preferred.txt",
    t39_received_ipv6_literal => "39_received_ipv6_literal.txt",
    t40_helo_syntax => "40_helo_syntax.txt",
    t41_helo_no_esmtp_params => "41_helo_no_esmtp_params.txt",
    t42_duplicate_recipients => "42_duplicate_recipients.txt",
}

/// Every `.txt` file in tests/transcripts has its test above (a new file must be listed).
#[test]
fn transcripts() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "expected the transcript suite, found {}",
        files.len()
    );
    let unlisted: Vec<&String> = files
        .iter()
        .filter(|f| !LISTED.contains(&f.as_str()))
        .collect();
    assert!(
        unlisted.is_empty(),
        "transcripts without a test (add them to transcript_tests! in tests/transcripts.rs): {unlisted:?}"
    );
    let missing: Vec<&&str> = LISTED
        .iter()
        .filter(|f| !files.iter().any(|x| x == *f))
        .collect();
    assert!(
        missing.is_empty(),
        "listed transcripts that do not exist: {missing:?}"
    );
}

/// Item 26: an IPv6 peer is written `[IPv6:::1]` in the Received header (RFC 5321 §4.1.3).
#[test]
fn trust_26_received_header_tags_ipv6_literal() {
    run_transcript(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/transcripts/39_received_ipv6_literal.txt"),
    );
}

/// Item 26: a malformed EHLO/HELO argument is refused, so it cannot forge the Received header.
#[test]
fn trust_26_malformed_helo_refused() {
    run_transcript(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts/40_helo_syntax.txt"),
    );
}

/// Item 26: after plain HELO, MAIL parameters of EHLO-only extensions get 555 5.5.4.
#[test]
fn trust_26_mail_parameters_after_helo_refused() {
    run_transcript(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/transcripts/41_helo_no_esmtp_params.txt"),
    );
}

/// Item 26: duplicate recipients get 250 but are stored once; limits count what was sent.
#[test]
fn trust_26_duplicate_recipients_merged() {
    run_transcript(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/transcripts/42_duplicate_recipients.txt"),
    );
}
