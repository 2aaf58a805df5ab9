//! Transcript tests: `tests/transcripts/*.txt` replayed through the real connection driver
//! (`mxgate::net::driver::Driver`) and session, with a scripted client in place of the socket
//! and rustls and an in-memory spool and mail log.
//!
//! Format (one directive per line; `#` starts a comment):
//! - `@config DIR` config dir relative to the repo (default: the shipped config `.`)
//! - `@listener NAME`, `@peer IP`, `@rdns verified NAME|missing|tempfail|mismatch NAME`
//! - `@tls-available no` (no certificate loaded)
//! - `@validate ADDRESS ANSWER` what recipient validation answers for ADDRESS (call-ahead and
//!   LDAP entries; `list:` files are looked up for real): `valid`, `invalid`, `cached-invalid`,
//!   `tempfail`, `breaker-opens` (a tempfail that opens the breaker) or `breaker-open`. A
//!   lookup of an address without one fails the test; each lookup adds the log line
//!   `(lookup) ADDRESS`, so `!L: (lookup) ADDRESS` says it was never asked
//! - `@sender ADDRESS dns=RESULT spf=RESULT` what sender authentication answers for the
//!   envelope sender ADDRESS (`<>` for the null sender): `dns=` `pass`, `not_exist` or
//!   `unresolvable` (an exception or a malformed sender is answered as the request says),
//!   `spf=` `pass`, `fail`, `softfail`, `neutral`, `none`, `temperror` or `permerror`. A
//!   check asked for without an answer here fails the test; each request adds the log line
//!   `(sender) ADDRESS`. After DATA (`dmarc:` on), `dkim=pass` (one signature of the sender's
//!   domain, else none) and `dmarc=RESULT/POLICY` (`pass`, `fail`, `temperror`, `none`;
//!   `reject`, `quarantine`, `none`; default `none/none`) answer for the sender's message
//! - `@shared local|tempfail` the hourly recipient budget is in the shared store, with this
//!   `when_unavailable`; `@hourly ANSWER...` what the store answers to the takes, in order:
//!   `taken`, `spent` or `unavailable`. Each take adds the log line `(hourly) IP max N`; a
//!   take without an answer fails the test
//! - `C: line` a command line (CRLF appended); consecutive C:/R: lines are one packet, which
//!   the driver gets from one read
//! - `R: text` raw bytes with escapes `\r \n \t \0 \\ \xNN`, no CRLF appended (joins the packet)
//! - `S: line` the next reply line, exactly; `S: <close>` the driver closed the connection
//! - `L: text` a mail-log line containing `text` appears (in order); `!L: text` no mail-log
//!   line so far contains `text`
//! - `B: text` the last committed message body contains `text` (escapes as in R:)
//! - `=TLS` the handshake the driver started for STARTTLS succeeds; `=TLS-FAIL reason` it
//!   fails. Under `tls_verify_client`, `=TLS cert-verified SUBJECT`, `=TLS cert-missing` or
//!   `=TLS cert-failed REASON` give the client-certificate result (the driver must have asked
//!   for one)
//! - `=COMMIT-FAIL` the next spool commit fails; `=EOF` the peer closes
//! - `=TIMEOUT what` the client goes silent until the driver's deadline fires (the test clock
//!   is paused and jumps there); the mail log must then name the `what timeout`
//! - `=SHUTDOWN` the server shuts down (the driver's `force_close` turns true) during a read
//! - `=CONCURRENCY-FULL` refuse as the per-IP connection limit does; `=PREGREET` client spoke
//!   first; `=SHARED-UNAVAILABLE connections|harvest` the shared store did not answer for
//!   that counter under `when_unavailable: tempfail` (first directive only: how the
//!   connection opened)
//!
//! The script is checked when the driver asks it for more: at each read (replies and log
//! lines up to the next input), at the handshake, and after the driver returns. Every reply
//! must be expected before the next input; input after the close goes nowhere.
//!
//! Each file is its own test, named after it (`t07_starttls_injection`); `transcripts` fails
//! when a file is not listed. `BLESS=1 cargo test --test transcripts [NAME]` rewrites the
//! `S:` lines of the files it runs from the driver's actual replies (other directives are
//! still checked); review the diff before committing it.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use mxgate::auth::{
    DkimSignature, DkimVerdict, DmarcOutcome, DmarcPolicy, DmarcVerdict, DnsCheck, DnsVerdict,
    MessageAnswer, MessageRequest, SenderAnswer, SenderRequest, SpfIdentity, SpfOutcome,
    SpfVerdict,
};
use mxgate::config::{load, Overrides};
use mxgate::envelope::Envelope;
use mxgate::mail_log::Event;
use mxgate::metrics::InboundLabels;
use mxgate::net::driver::{Backend, ClientStream, Driver, StartTls};
use mxgate::policy::flow::ClientCert;
use mxgate::policy::hat::{Peer, ReverseDns};
use mxgate::policy::rate::RateLimiter;
use mxgate::shared_state::counters::HourlyAnswer;
use mxgate::shared_state::settings::{Fallback, WhenUnavailable};
use mxgate::smtp::session::{HourlyRequest, Opening, Session, SessionEnv, SessionParams, TlsInfo};
use mxgate::validate::destination::{Checked, Source};
use mxgate::validate::rule::{ValidationMethod, ValidationRequest};

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

/// One directive of the transcript's body (the `@` header lines are read first).
struct Step {
    /// 1-based line number.
    lineno: usize,
    tag: String,
    arg: String,
}

/// What the driver is doing when it asks the script for more.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// Reading from the client.
    Read,
    /// Running the STARTTLS handshake.
    Handshake,
    /// Done: the connection is closed.
    Closed,
}

/// What the script answers.
enum Input {
    Packet(Vec<u8>),
    /// The peer closed (also the end of the script).
    Eof,
    /// The client goes silent: the driver's own deadline fires (the test clock is paused and
    /// jumps to it).
    Silence,
    /// The server shuts down (the driver's `force_close` turned true).
    Shutdown,
    /// The handshake's result.
    Tls(Result<ClientCert, String>),
}

/// A transcript being replayed through the real driver: the script, and what the driver has
/// written to the client, the mail log and the spool so far.
struct Replay {
    name: String,
    steps: Vec<Step>,
    next: usize,
    /// Line count of the file (where unexpected replies at its end are inserted by BLESS).
    end_line: usize,
    output: Vec<u8>,
    replies: VecDeque<String>,
    logs: Vec<String>,
    log_cursor: usize,
    body: Vec<u8>,
    last_body: Vec<u8>,
    commit_fail: bool,
    /// `=TIMEOUT what` seen: its line, `what`, and the log length then.
    timeout: Option<(usize, String, usize)>,
    force_close: watch::Sender<bool>,
    /// `BLESS=1`: expected replies are recorded, not checked.
    bless: Option<Bless>,
    /// `@validate` answers by address.
    answers: std::collections::HashMap<String, String>,
    /// `@sender` answers by address.
    senders: std::collections::HashMap<String, String>,
    /// `@hourly` answers, in the order the takes come.
    hourly: VecDeque<String>,
}

type Shared = Arc<Mutex<Replay>>;

impl Replay {
    fn fail(&self, lineno: usize, msg: String) -> ! {
        panic!(
            "{}:{lineno}: {msg}\n  unread replies: {:?}\n  log so far:\n    {}",
            self.name,
            self.replies,
            self.logs.join("\n    ")
        );
    }

    /// The driver wrote these bytes to the client.
    fn written(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
        while let Some(p) = self.output.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = self.output.drain(..p + 2).take(p).collect();
            self.replies
                .push_back(String::from_utf8_lossy(&line).into_owned());
        }
    }

    /// Before the next input (at 1-based `line`) every reply must have been expected.
    fn check_drained(&mut self, line: usize) {
        if let Some(b) = self.bless.as_mut() {
            let extra: Vec<String> = self.replies.drain(..).map(|l| format!("S: {l}")).collect();
            if !extra.is_empty() {
                b.insert.entry(line - 1).or_default().extend(extra);
            }
        } else if !self.replies.is_empty() {
            self.fail(line, "more replies than the transcript expects".into());
        }
    }

    /// Checks the script's expectations up to its next input for what the driver waits on,
    /// and returns that input. Inputs after the close go nowhere and are skipped.
    fn advance(&mut self, waiting: Waiting) -> Input {
        if let Some((lineno, what, from)) = self.timeout.take() {
            let want = format!("{what} timeout");
            if !self.logs[from..].iter().any(|l| l.contains(&want)) {
                self.fail(lineno, format!("the driver's timeout was not {want:?}"));
            }
        }
        loop {
            let Some(step) = self.steps.get(self.next) else {
                self.check_drained(self.end_line + 1);
                return Input::Eof;
            };
            let (lineno, tag, arg) = (step.lineno, step.tag.clone(), step.arg.clone());
            self.next += 1;
            let is_input = matches!(
                tag.as_str(),
                "C:" | "R:" | "=EOF" | "=TIMEOUT" | "=SHUTDOWN" | "=TLS" | "=TLS-FAIL"
            );
            if is_input && waiting == Waiting::Closed {
                continue;
            }
            if is_input {
                self.check_drained(lineno);
            }
            match tag.as_str() {
                "C:" | "R:" if waiting == Waiting::Handshake => self.fail(
                    lineno,
                    "STARTTLS is pending: =TLS or =TLS-FAIL first".into(),
                ),
                "C:" | "R:" => {
                    let mut packet = line_bytes(&tag, &arg);
                    while let Some(s) = self.steps.get(self.next) {
                        if s.tag != "C:" && s.tag != "R:" {
                            break;
                        }
                        packet.extend(line_bytes(&s.tag, &s.arg));
                        self.next += 1;
                    }
                    return Input::Packet(packet);
                }
                "=EOF" => return Input::Eof,
                "=TIMEOUT" => {
                    self.timeout = Some((lineno, arg, self.logs.len()));
                    return Input::Silence;
                }
                "=SHUTDOWN" if waiting == Waiting::Read => {
                    let _ = self.force_close.send(true);
                    return Input::Shutdown;
                }
                "=SHUTDOWN" => self.fail(lineno, "=SHUTDOWN during the handshake".into()),
                "=TLS" | "=TLS-FAIL" if waiting != Waiting::Handshake => {
                    self.fail(lineno, "no STARTTLS pending".into())
                }
                "=TLS-FAIL" => return Input::Tls(Err(arg)),
                "=TLS" => {
                    let cert = match arg.split_once(' ').unwrap_or((&arg, "")) {
                        ("", _) => ClientCert::NotRequested,
                        ("cert-missing", _) => ClientCert::Missing,
                        ("cert-verified", subject) => ClientCert::Verified(subject.into()),
                        ("cert-failed", why) => ClientCert::Failed(why.into()),
                        _ => self.fail(lineno, format!("unknown =TLS argument {arg:?}")),
                    };
                    return Input::Tls(Ok(cert));
                }
                "S:" if arg == "<close>" => {
                    if waiting != Waiting::Closed {
                        self.fail(lineno, "expected the session to close".into());
                    }
                }
                "S:" if self.bless.is_some() => {
                    let got = self.replies.pop_front();
                    let b = self.bless.as_mut().unwrap();
                    b.replace.insert(
                        lineno - 1,
                        got.map(|g| format!("S: {g}")).into_iter().collect(),
                    );
                }
                "S:" => match self.replies.pop_front() {
                    Some(got) if got == arg => {}
                    Some(got) => self.fail(lineno, format!("expected reply {arg:?}, got {got:?}")),
                    None => self.fail(lineno, format!("expected reply {arg:?}, got nothing")),
                },
                "L:" => match self.logs[self.log_cursor..]
                    .iter()
                    .position(|l| l.contains(&arg))
                {
                    Some(p) => self.log_cursor += p + 1,
                    None => self.fail(
                        lineno,
                        format!(
                            "no log line containing {arg:?} after line {}",
                            self.log_cursor
                        ),
                    ),
                },
                "!L:" => {
                    if let Some(l) = self.logs.iter().find(|l| l.contains(&arg)) {
                        self.fail(lineno, format!("log line {l:?} contains {arg:?}"));
                    }
                }
                "B:" => {
                    let want = unescape(&arg);
                    if !self
                        .last_body
                        .windows(want.len())
                        .any(|w| w == want.as_slice())
                    {
                        self.fail(
                            lineno,
                            format!(
                                "last body does not contain {arg:?}: {:?}",
                                String::from_utf8_lossy(&self.last_body)
                            ),
                        );
                    }
                }
                "=COMMIT-FAIL" => self.commit_fail = true,
                "=CONCURRENCY-FULL" | "=PREGREET" | "=SHARED-UNAVAILABLE" => {
                    self.fail(lineno, format!("{tag} must come before anything else"))
                }
                other => self.fail(lineno, format!("unknown directive {other:?}")),
            }
        }
    }
}

/// The bytes of a `C:` or `R:` line.
fn line_bytes(tag: &str, arg: &str) -> Vec<u8> {
    if tag == "C:" {
        format!("{arg}\r\n").into_bytes()
    } else {
        unescape(arg)
    }
}

/// The client side: packets from the script, replies into the replay.
struct ScriptedClient(Shared);

impl ClientStream for ScriptedClient {
    async fn read(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        let input = self.0.lock().unwrap().advance(Waiting::Read);
        match input {
            Input::Packet(p) => {
                buf.extend_from_slice(&p);
                Ok(p.len())
            }
            Input::Eof => Ok(0),
            Input::Silence | Input::Shutdown => std::future::pending().await,
            Input::Tls(_) => unreachable!("advance returns =TLS only to a handshake"),
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.lock().unwrap().written(bytes);
        Ok(())
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl StartTls for ScriptedClient {
    type Tls = ScriptedClient;

    async fn start_tls(self, client_cert: bool) -> Result<(Self::Tls, TlsInfo), String> {
        let input = self.0.lock().unwrap().advance(Waiting::Handshake);
        match input {
            Input::Tls(Ok(cert)) => {
                if cert != ClientCert::NotRequested && !client_cert {
                    let r = self.0.lock().unwrap();
                    r.fail(
                        0,
                        "=TLS gives a client certificate the driver did not ask for".into(),
                    );
                }
                let info = TlsInfo {
                    protocol: "TLSv1.3".into(),
                    cipher: "TLS13_AES_256_GCM_SHA384".into(),
                    client_cert: cert,
                };
                Ok((self, info))
            }
            Input::Tls(Err(reason)) => Err(reason),
            Input::Eof => Err("peer closed during the handshake".into()),
            Input::Silence => std::future::pending().await,
            Input::Packet(_) | Input::Shutdown => unreachable!("advance refuses these"),
        }
    }
}

/// The spool and mail log: lines and bodies into the replay; `=COMMIT-FAIL` fails a commit.
/// Reports go to the real TLS-RPT intake of the config (`policies/tlsrpt.yaml`), storing in
/// a temporary directory.
struct ScriptedBackend(
    Shared,
    Option<(mxgate::tlsrpt::intake::Intake, tempfile::TempDir)>,
);

impl Backend for ScriptedBackend {
    fn log(&mut self, events: &[Event]) {
        let mut r = self.0.lock().unwrap();
        r.logs.extend(events.iter().map(Event::text));
    }

    fn begin_message(&mut self, _mid: u64) {
        self.0.lock().unwrap().body.clear();
    }

    async fn write_body(&mut self, body: &mut Vec<u8>) {
        self.0.lock().unwrap().body.append(body);
    }

    async fn commit_message(&mut self, _envelope: Envelope) -> Result<(), String> {
        let mut r = self.0.lock().unwrap();
        if std::mem::take(&mut r.commit_fail) {
            return Err("No space left on device".to_string());
        }
        r.last_body = std::mem::take(&mut r.body);
        Ok(())
    }

    fn abort_message(&mut self) {
        self.0.lock().unwrap().body.clear();
    }

    async fn ingest_report(&mut self, message: Option<Vec<u8>>) -> mxgate::tlsrpt::ingest::Outcome {
        let (intake, _) = self
            .1
            .as_ref()
            .expect("a report without policies/tlsrpt.yaml");
        // The RFC 8460 example's range is in 2016; any later time is fine.
        intake.mail(message.as_deref(), 1_796_428_800)
    }

    async fn take_recipient(&mut self, req: &HourlyRequest) -> HourlyAnswer {
        let mut r = self.0.lock().unwrap();
        r.logs.push(format!("(hourly) {} max {}", req.ip, req.max));
        match r.hourly.pop_front().as_deref() {
            Some("taken") => HourlyAnswer::Taken,
            Some("spent") => HourlyAnswer::Spent,
            Some("unavailable") => HourlyAnswer::Unavailable,
            other => r.fail(
                0,
                format!("hourly take without an @hourly answer: {other:?}"),
            ),
        }
    }

    async fn verify_sender(&mut self, req: &SenderRequest) -> SenderAnswer {
        let mut r = self.0.lock().unwrap();
        let key = match req.from.as_str() {
            "" => "<>".to_string(),
            a => a.to_ascii_lowercase(),
        };
        r.logs.push(format!("(sender) {key}"));
        let script = r.senders.get(&key).cloned().unwrap_or_default();
        let word = |name: &str| {
            script
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        let dns = match &req.dns {
            DnsCheck::Skip => None,
            DnsCheck::Exempt => Some(DnsVerdict::Exempt),
            DnsCheck::Malformed => Some(DnsVerdict::Malformed),
            DnsCheck::Lookup(domain) => Some(match word("dns").as_deref() {
                Some("pass") => DnsVerdict::Exists,
                Some("not_exist") => DnsVerdict::NotExist(format!("{domain}: NXDOMAIN")),
                Some("unresolvable") => DnsVerdict::Unresolvable(format!("{domain}: SERVFAIL")),
                other => r.fail(0, format!("@sender {key}: dns={other:?} is no answer")),
            }),
        };
        let spf = req.spf.then(|| {
            let result = match word("spf").as_deref() {
                Some("pass") => SpfVerdict::Pass,
                Some("fail") => SpfVerdict::Fail,
                Some("softfail") => SpfVerdict::SoftFail,
                Some("neutral") => SpfVerdict::Neutral,
                Some("none") => SpfVerdict::None,
                Some("temperror") => SpfVerdict::TempError,
                Some("permerror") => SpfVerdict::PermError,
                other => r.fail(0, format!("@sender {key}: spf={other:?} is no answer")),
            };
            let (identity, address, domain) = match req.from.rsplit_once('@') {
                Some((_, d)) => (SpfIdentity::MailFrom, req.from.clone(), d.to_string()),
                None => (
                    SpfIdentity::Helo,
                    format!("postmaster@{}", req.helo),
                    req.helo.clone(),
                ),
            };
            SpfOutcome {
                result,
                identity,
                address,
                domain,
            }
        });
        SenderAnswer { dns, spf }
    }

    /// What `@sender … dkim=… dmarc=RESULT/POLICY` says about the message of that sender
    /// (the From domain is the sender's); without those words, no signature and no record.
    async fn authenticate_message(&mut self, req: &MessageRequest) -> MessageAnswer {
        let r = self.0.lock().unwrap();
        let key = req.sender.from.to_ascii_lowercase();
        let script = r.senders.get(&key).cloned().unwrap_or_default();
        let word = |name: &str| {
            script
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        let domain = key
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .unwrap_or_default();
        let dkim = match word("dkim").as_deref() {
            Some("pass") => vec![DkimSignature {
                result: DkimVerdict::Pass,
                domain: domain.clone(),
                selector: "sel".into(),
                identity: format!("@{domain}"),
                reason: String::new(),
            }],
            _ => Vec::new(),
        };
        let dmarc = word("dmarc").unwrap_or_else(|| "none/none".into());
        let (result, policy) = dmarc.split_once('/').unwrap_or((&dmarc, "none"));
        let result = match result {
            "pass" => DmarcVerdict::Pass,
            "fail" => DmarcVerdict::Fail,
            "temperror" => DmarcVerdict::TempError,
            _ => DmarcVerdict::None,
        };
        let policy = match policy {
            "reject" => DmarcPolicy::Reject,
            "quarantine" => DmarcPolicy::Quarantine,
            _ => DmarcPolicy::None,
        };
        MessageAnswer {
            dkim,
            spf: req.spf.clone(),
            spf_now: false,
            dmarc: req.dmarc.then(|| DmarcOutcome {
                result,
                from_domain: domain.clone(),
                policy,
                pct: 100,
                spf_aligned: result == DmarcVerdict::Pass,
                dkim_aligned: false,
            }),
            sample: 0,
            // The real structural check: a malformed header section is refused before DNS.
            header: mxgate::auth::header::structure(&req.message).err(),
        }
    }

    async fn validate(&mut self, req: &ValidationRequest) -> Checked {
        use mxgate::validate::breaker::Transition;
        use mxgate::validate::{Answer, TempFailCause, Verdict};
        let mut r = self.0.lock().unwrap();
        r.logs.push(format!("(lookup) {}", req.address));
        let checked = |verdict, detail: &str, source, transition| Checked {
            answer: Answer::new(verdict, detail),
            source,
            refresh_due: false,
            transition,
        };
        if let ValidationMethod::List(list) = &req.rule.method {
            return checked(list.lookup(&req.address), "list", Source::Lookup, None);
        }
        let Some(answer) = r.answers.get(&req.address.to_ascii_lowercase()).cloned() else {
            let msg = format!("lookup of {} without an @validate answer", req.address);
            r.fail(0, msg);
        };
        let ldap = req.address.ends_with("@corp.example");
        let probe = match ldap {
            true => "ldap:corp: ldap://127.0.0.1:3389",
            false => "callahead:example.com: probe 127.0.0.1:2525",
        };
        let id = probe.split(": ").next().unwrap_or_default();
        match answer.as_str() {
            "valid" => checked(Verdict::Valid, &format!("{probe}: 250 2.1.5 Ok"), Source::Lookup, None),
            "invalid" => checked(
                Verdict::Invalid,
                &format!("{probe}: 550 5.1.1 <x>: Recipient address rejected: User unknown in relay recipient table"),
                Source::Lookup,
                None,
            ),
            "cached-invalid" => checked(
                Verdict::Invalid,
                id,
                Source::Cache { stored: 1_523_926_000 },
                None,
            ),
            "tempfail" => checked(
                Verdict::TempFail(TempFailCause::Timeout),
                &format!("{probe}: timeout"),
                Source::Lookup,
                None,
            ),
            "breaker-opens" => checked(
                Verdict::TempFail(TempFailCause::Refused),
                &format!("{probe}: connection refused"),
                Source::Lookup,
                Some(Transition::Opened { failures: 5 }),
            ),
            "breaker-open" => checked(
                Verdict::TempFail(TempFailCause::BreakerOpen),
                &format!("{id}: breaker open"),
                Source::Breaker,
                None,
            ),
            other => {
                let msg = format!("unknown @validate answer {other:?}");
                r.fail(0, msg)
            }
        }
    }
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
    let mut answers = std::collections::HashMap::new();
    let mut senders = std::collections::HashMap::new();
    let mut hourly = VecDeque::new();
    let mut shared_limits = None;
    let mut steps = Vec::new();
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
            "@sender" => {
                let (addr, answer) = arg.split_once(' ').unwrap_or((arg, ""));
                senders.insert(addr.to_ascii_lowercase(), answer.to_string());
            }
            "@shared" => {
                let fallback = match arg {
                    "local" => Fallback::Local,
                    "tempfail" => Fallback::Tempfail,
                    _ => panic!("{name}:{}: bad @shared", i + 1),
                };
                shared_limits = Some(WhenUnavailable {
                    recipients_per_hour: fallback,
                    ..WhenUnavailable::default()
                });
            }
            "@hourly" => hourly.extend(arg.split_whitespace().map(str::to_string)),
            "@validate" => {
                let (addr, answer) = arg.split_once(' ').unwrap_or((arg, ""));
                answers.insert(addr.to_ascii_lowercase(), answer.to_string());
            }
            _ => {
                let line = line.trim_end();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (tag, arg) = line.split_once(' ').unwrap_or((line, ""));
                steps.push(Step {
                    lineno: i + 1,
                    tag: tag.to_string(),
                    arg: arg.to_string(),
                });
            }
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
    let labels = InboundLabels {
        listener: l.name.clone(),
        sender_group: classification.group.clone(),
        policy: classification.policy.name.clone(),
        sender_org: l.sender_orgs.label(&rdns).to_string(),
    };
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
        reports: cfg.tlsrpt.clone(),
        shared_limits,
    };
    let intake = cfg.tlsrpt.clone().map(|t| {
        let dir = tempfile::tempdir().unwrap();
        (mxgate::tlsrpt::intake::Intake::new(t, dir.path(), 0), dir)
    });
    // How the connection opened is decided before the driver runs (conn.rs).
    let (opening, first) = match steps.first().map(|s| s.tag.as_str()) {
        Some("=PREGREET") => (Opening::PreGreet, 1),
        Some("=CONCURRENCY-FULL") => (Opening::ConcurrencyFull, 1),
        Some("=SHARED-UNAVAILABLE") => (
            Opening::SharedStateUnavailable {
                harvest: steps[0].arg == "harvest",
            },
            1,
        ),
        _ => (Opening::Normal, 0),
    };
    let (force_close, closing) = watch::channel(false);
    let replay: Shared = Arc::new(Mutex::new(Replay {
        name: name.clone(),
        steps,
        next: first,
        end_line: text.lines().count(),
        output: Vec::new(),
        replies: VecDeque::new(),
        logs: Vec::new(),
        log_cursor: 0,
        body: Vec::new(),
        last_body: Vec::new(),
        commit_fail: false,
        timeout: None,
        force_close,
        bless: blessing().then(Bless::default),
        answers,
        senders,
        hourly,
    }));
    let driver = Driver::new(
        Session::new(params),
        labels,
        l.timeouts.clone(),
        ScriptedBackend(replay.clone(), intake),
        closing,
    );
    // Paused time: a `=TIMEOUT` waits for the driver's real deadline without taking it.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(driver.run(opening, ScriptedClient(replay.clone())));
    let mut r = replay.lock().unwrap();
    // The rest of the script: what the connection's end left (replies, final log lines).
    r.advance(Waiting::Closed);
    if let Some(b) = r.bless.take() {
        let blessed = b.apply(&text);
        if blessed != text {
            std::fs::write(path, blessed).unwrap();
            eprintln!("BLESS: rewrote the S: lines of {name}");
        }
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
    t43_starttls_pipelined_mail_discarded => "43_starttls_pipelined_mail_discarded.txt",
    t44_relay_form_logged_as_sent => "44_relay_form_logged_as_sent.txt",
    t45_bad_commands_refusal_without_mid => "45_bad_commands_refusal_without_mid.txt",
    t46_validation_callahead => "46_validation_callahead.txt",
    t47_validation_list_ldap => "47_validation_list_ldap.txt",
    t49_dhap_counts_validation => "49_dhap_counts_validation.txt",
    t50_tlsrpt_report_address => "50_tlsrpt_report_address.txt",
    t51_sender_auth_pipelined => "51_sender_auth_pipelined.txt",
    t52_spf_at_data => "52_spf_at_data.txt",
    t53_dmarc_enforce => "53_dmarc_enforce.txt",
    t54_forged_headers_streaming => "54_forged_headers_streaming.txt",
    t55_shared_hourly_pipelined => "55_shared_hourly_pipelined.txt",
    t56_shared_hourly_tempfail => "56_shared_hourly_tempfail.txt",
    t57_shared_connect_tempfail => "57_shared_connect_tempfail.txt",
    t58_mail_rset_loop => "58_mail_rset_loop.txt",
    t59_refused_recipients_loop => "59_refused_recipients_loop.txt",
    t48_dhap_shipped_default => "48_dhap_shipped_default.txt",
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
