//! Outbound SMTP client: one delivery connection (DCID) to a downstream server.
//!
//! [`Connection::open`] connects, reads the greeting, says EHLO (HELO when EHLO is
//! refused with 5xx) and negotiates STARTTLS exactly as the destination's
//! [`OutboundTls`](crate::config::outbound::OutboundTls) mode says (SPEC §1.4, seed 000); [`Connection::send`] runs one
//! mail transaction (PIPELINING and SIZE when offered, one outcome per recipient,
//! the body streamed from the spool file with dot-stuffing);
//! [`Connection::quit`] ends the session. Every step is bounded by the RFC 5321
//! §4.5.3.2 timeouts in [`ClientTimeouts`]. The mail-log lines of SPEC §3
//! (`New SMTP DCID`, `DCID n TLS …`, `Delivery start`, `Message done`,
//! `DCID n close`) go to a [`DeliveryLog`].
//!
//! The client decides nothing about retries: it reports per recipient
//! ([`RcptOutcome`]) or per connection ([`ConnectError`]) and the queue manager
//! acts on that.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::UnixTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::outbound::DestinationControl;
use crate::mail_log::Event;
use crate::net::tls::{cipher_name, protocol_name};
use crate::relay::outbound_tls::{server_name_for, OutboundTlsContext};
use crate::smtp::reply::{Enhanced, Reply};

/// Longest reply line accepted from a server (RFC 5321 allows 512; be lenient).
const MAX_REPLY_LINE: usize = 4096;
/// Largest multi-line reply accepted (an EHLO reply with many extensions fits easily).
const MAX_REPLY_TOTAL: usize = 64 * 1024;
/// Body bytes read from the spool file per chunk.
const BODY_CHUNK: usize = 64 * 1024;
/// Bound on waiting for the reply to QUIT (and to a courtesy QUIT after a failure).
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to connect for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Address and port to connect to.
    pub addr: SocketAddr,
    /// The server's name (the route host as configured, or its MX host; or IP text): sent
    /// as SNI when it is a name.
    pub host: String,
    /// The name a `required-verify` / `preferred-verify` certificate may present besides
    /// the domain: the route host, or an MX host within it (never a name taken from DNS
    /// alone, which an attacker who forges one answer would choose).
    pub identity: String,
    /// Destination domain: the reference identity of `required-verify-hosted`, also
    /// accepted by `required-verify`; named in the required-TLS alert line.
    pub domain: String,
}

/// RFC 5321 §4.5.3.2 timeouts (plus connect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Initial 220 greeting (5 min).
    pub greeting: Duration,
    /// EHLO/HELO reply, STARTTLS reply and the TLS handshake (5 min).
    pub ehlo: Duration,
    /// MAIL FROM reply, also RSET (5 min).
    pub mail: Duration,
    /// Each RCPT TO reply (5 min).
    pub rcpt: Duration,
    /// DATA reply (354) (2 min).
    pub data_init: Duration,
    /// Each write of a body chunk (3 min).
    pub data_block: Duration,
    /// Reply to the final `.` (10 min).
    pub data_term: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        let min = |m: u64| Duration::from_secs(m * 60);
        ClientTimeouts {
            connect: Duration::from_secs(30),
            greeting: min(5),
            ehlo: min(5),
            mail: min(5),
            rcpt: min(5),
            data_init: min(2),
            data_block: min(3),
            data_term: min(10),
        }
    }
}

/// Everything a connection needs besides the target.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Name sent in EHLO/HELO.
    pub helo_name: String,
    /// Destination control of the target domain (TLS mode, CA bundle).
    pub control: DestinationControl,
    /// Shared outbound TLS context.
    pub tls: Arc<OutboundTlsContext>,
    /// Timeouts.
    pub timeouts: ClientTimeouts,
}

/// Receives the delivery mail-log events.
pub trait DeliveryLog: Send + Sync {
    /// Records one event.
    fn log(&self, e: Event);
}

impl DeliveryLog for crate::mail_log::MailLog {
    fn log(&self, e: Event) {
        crate::mail_log::MailLog::log(self, &e);
    }
}

/// What happened about TLS on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsOutcome {
    /// Mode `no`: STARTTLS never tried.
    NotAttempted,
    /// The server did not offer STARTTLS.
    NotOffered,
    /// The session is encrypted.
    Success {
        /// `TLSv1.3` / `TLSv1.2`.
        protocol: String,
        /// Cipher suite (`TLS13_AES_256_GCM_SHA384`).
        cipher: String,
        /// `None` when the mode does not verify; `Some(false)` when a
        /// `preferred-verify` check failed and delivery went on regardless.
        verified: Option<bool>,
    },
    /// `preferred*`: STARTTLS failed before the 220 reply; the session went on in plaintext.
    FellBackPlaintext,
    /// TLS failed (the connection was given up); the reason.
    Failed(String),
}

impl TlsOutcome {
    /// True when the session is encrypted.
    pub fn is_encrypted(&self) -> bool {
        matches!(self, TlsOutcome::Success { .. })
    }
}

/// A connection could not be set up for mail: nothing was sent, try again later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectError {
    /// Human-readable cause (for `Delayed:` lines and `queue list`).
    pub reason: String,
    /// Enhanced status code: `4.4.1` connect failed, `4.4.2` bad connection or
    /// refused greeting/EHLO, `4.7.5` TLS.
    pub enhanced: String,
    /// The server's reply when one caused the failure.
    pub reply: Option<Reply>,
    /// TLS state when it failed.
    pub tls: TlsOutcome,
    /// A `required*` mode could not negotiate (or verify) TLS: the alert case.
    pub required_tls_failure: bool,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} - {}", self.enhanced, self.reason)
    }
}

impl std::error::Error for ConnectError {}

/// One message transaction to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Message id (for the log).
    pub mid: u64,
    /// Envelope sender; `""` = null sender.
    pub from: String,
    /// Recipients: (RID, address).
    pub rcpts: Vec<(u32, String)>,
    /// Spool file with the message (CRLF lines, not dot-stuffed).
    pub body_path: PathBuf,
    /// The same bytes in memory when the caller has them (the file is then not read).
    pub body: Option<std::sync::Arc<Vec<u8>>>,
    /// Size in bytes (for `SIZE=`).
    pub size: u64,
    /// The envelope needs SMTPUTF8.
    pub smtputf8: bool,
}

/// The outcome for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// Accepted: the reply to the final `.`.
    Delivered(Reply),
    /// Try again later (4xx, or the connection was lost).
    TempFail(Reply),
    /// Bounce (5xx).
    PermFail(Reply),
}

impl RcptOutcome {
    /// The reply behind the outcome.
    pub fn reply(&self) -> &Reply {
        match self {
            RcptOutcome::Delivered(r) | RcptOutcome::TempFail(r) | RcptOutcome::PermFail(r) => r,
        }
    }
}

/// The result of [`Connection::send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageResult {
    /// Message id.
    pub mid: u64,
    /// One outcome per recipient, in the order given.
    pub rcpts: Vec<(u32, RcptOutcome)>,
    /// The connection broke (I/O error, timeout, 421): do not use it again.
    pub connection_lost: bool,
}

/// What the server announced in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// EHLO succeeded (false after a HELO fallback).
    pub esmtp: bool,
    /// STARTTLS offered.
    pub starttls: bool,
    /// PIPELINING offered.
    pub pipelining: bool,
    /// SIZE offered; `Some(0)` = no fixed limit.
    pub size: Option<u64>,
    /// SMTPUTF8 offered.
    pub smtputf8: bool,
    /// 8BITMIME offered.
    pub eightbitmime: bool,
    /// ENHANCEDSTATUSCODES offered.
    pub enhanced_status_codes: bool,
}

impl Capabilities {
    /// Capabilities from an EHLO reply (the first line is the server's name).
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities {
            esmtp: true,
            ..Capabilities::default()
        };
        for line in reply.text.split('\n').skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "STARTTLS" => caps.starttls = true,
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "SMTPUTF8" => caps.smtputf8 = true,
                "8BITMIME" => caps.eightbitmime = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                _ => {}
            }
        }
        caps
    }
}

/// Accumulates the lines of one (possibly multi-line) reply: sans-IO.
#[derive(Debug, Default)]
pub struct ReplyParser {
    code: Option<u16>,
    enhanced: Option<Enhanced>,
    lines: Vec<String>,
    total: usize,
}

impl ReplyParser {
    /// Feeds one line (without its line ending). Returns the reply after the last line.
    pub fn push_line(&mut self, line: &[u8]) -> Result<Option<Reply>, String> {
        self.total += line.len() + 2;
        if self.total > MAX_REPLY_TOTAL {
            return Err("reply too long".into());
        }
        if line.len() > MAX_REPLY_LINE {
            return Err("reply line too long".into());
        }
        let text = String::from_utf8_lossy(line);
        let b = text.as_bytes();
        if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&b[0]) {
            return Err(format!("malformed reply line {:?}", shorten(&text)));
        }
        let code: u16 = text[..3].parse().map_err(|_| "malformed reply code")?;
        if self.code.is_some_and(|c| c != code) {
            return Err(format!(
                "reply code changed within a multi-line reply ({:?})",
                shorten(&text)
            ));
        }
        self.code = Some(code);
        let last = match b.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(format!("malformed reply line {:?}", shorten(&text))),
        };
        let rest = text.get(4..).unwrap_or("");
        let (enhanced, rest) = split_enhanced(code, rest);
        if self.lines.is_empty() {
            self.enhanced = enhanced;
        }
        self.lines.push(rest.to_string());
        if !last {
            return Ok(None);
        }
        let reply = Reply {
            code,
            enhanced: self.enhanced,
            text: self.lines.join("\n").into(),
        };
        *self = ReplyParser::default();
        Ok(Some(reply))
    }
}

/// Splits a leading RFC 3463 code (`5.1.1 `) of the reply's class off a reply text.
fn split_enhanced(code: u16, text: &str) -> (Option<Enhanced>, &str) {
    let (word, rest) = match text.split_once(' ') {
        Some((w, r)) => (w, r),
        None => (text, ""),
    };
    match word.parse::<Enhanced>() {
        Ok(e) if u16::from(e.0) == code / 100 => (Some(e), rest),
        _ => (None, text),
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Plain TCP or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while STARTTLS swaps the stream.
    Gone,
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// A failure on the wire.
#[derive(Debug)]
enum WireError {
    /// No answer in time (the stage named).
    Timeout(&'static str),
    /// Socket error.
    Io(io::Error),
    /// The server closed the connection.
    Closed,
    /// The server sent something that is not SMTP.
    Protocol(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Timeout(stage) => write!(f, "timeout waiting for {stage}"),
            WireError::Io(e) => write!(f, "I/O error: {e}"),
            WireError::Closed => f.write_str("connection closed by server"),
            WireError::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

/// The socket with its read buffer (ours, so leftover bytes after STARTTLS are visible).
struct Wire {
    stream: Stream,
    buf: Vec<u8>,
    pos: usize,
}

impl Wire {
    fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    async fn read_reply(
        &mut self,
        limit: Duration,
        stage: &'static str,
    ) -> Result<Reply, WireError> {
        match timeout(limit, self.read_reply_inner()).await {
            Ok(r) => r,
            Err(_) => Err(WireError::Timeout(stage)),
        }
    }

    async fn read_reply_inner(&mut self) -> Result<Reply, WireError> {
        let mut parser = ReplyParser::default();
        loop {
            if let Some(i) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
                let mut line = &self.buf[self.pos..self.pos + i];
                if let Some(l) = line.strip_suffix(b"\r") {
                    line = l;
                }
                let got = parser.push_line(line).map_err(WireError::Protocol);
                self.pos += i + 1;
                if self.pos == self.buf.len() {
                    self.buf.clear();
                    self.pos = 0;
                }
                if let Some(reply) = got? {
                    return Ok(reply);
                }
                continue;
            }
            if self.buffered() > MAX_REPLY_LINE {
                return Err(WireError::Protocol("reply line too long".into()));
            }
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.map_err(WireError::Io)?;
            if n == 0 {
                return Err(WireError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn write(
        &mut self,
        data: &[u8],
        limit: Duration,
        stage: &'static str,
    ) -> Result<(), WireError> {
        let fut = async {
            self.stream.write_all(data).await?;
            self.stream.flush().await
        };
        match timeout(limit, fut).await {
            Ok(r) => r.map_err(WireError::Io),
            Err(_) => Err(WireError::Timeout(stage)),
        }
    }

    async fn command(
        &mut self,
        cmd: &str,
        limit: Duration,
        stage: &'static str,
    ) -> Result<Reply, WireError> {
        self.write(cmd.as_bytes(), limit, stage).await?;
        self.read_reply(limit, stage).await
    }
}

/// One delivery connection, ready for mail.
pub struct Connection {
    wire: Wire,
    dcid: u64,
    remote: SocketAddr,
    caps: Capabilities,
    tls: TlsOutcome,
    timeouts: ClientTimeouts,
    transactions: u32,
    /// A transaction was started and not ended by the reply to the final dot: the next
    /// one needs RSET first (RFC 5321 §4.1.1.5; after a final reply the server has
    /// already reset its state, §4.1.1.4).
    open_transaction: bool,
    broken: bool,
}

/// Where a message body comes from.
enum BodySource {
    /// Held in memory (a message's first attempt).
    Memory(std::sync::Arc<Vec<u8>>),
    /// Read from the spool file as it is sent.
    File(tokio::fs::File),
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("dcid", &self.dcid)
            .field("remote", &self.remote)
            .field("caps", &self.caps)
            .field("tls", &self.tls)
            .field("transactions", &self.transactions)
            .field("broken", &self.broken)
            .finish()
    }
}

/// Builds a [`ConnectError`].
fn connect_error(
    reason: String,
    enhanced: &str,
    reply: Option<Reply>,
    tls: TlsOutcome,
    required_tls_failure: bool,
) -> ConnectError {
    ConnectError {
        reason,
        enhanced: enhanced.to_string(),
        reply,
        tls,
        required_tls_failure,
    }
}

/// How a failed `open` leaves the socket.
enum Teardown {
    /// The SMTP dialogue is intact: say QUIT first.
    Quit,
    /// Just close.
    Close,
}

impl Connection {
    /// Connects and prepares the session for mail (greeting, EHLO, STARTTLS per mode).
    pub async fn open(
        dcid: u64,
        target: &Target,
        settings: &ClientSettings,
        log: &dyn DeliveryLog,
    ) -> Result<Connection, ConnectError> {
        let tcp = match timeout(settings.timeouts.connect, TcpStream::connect(target.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(connect_error(
                    format!("connection to {} failed: {e}", target.addr),
                    "4.4.1",
                    None,
                    TlsOutcome::NotAttempted,
                    false,
                ))
            }
            Err(_) => {
                return Err(connect_error(
                    format!("connection to {} timed out", target.addr),
                    "4.4.1",
                    None,
                    TlsOutcome::NotAttempted,
                    false,
                ))
            }
        };
        let _ = tcp.set_nodelay(true);
        let interface = tcp
            .local_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        log.log(Event::NewDcid {
            dcid,
            interface,
            address: target.addr.ip(),
            port: target.addr.port(),
        });
        let mut conn = Connection {
            wire: Wire {
                stream: Stream::Plain(tcp),
                buf: Vec::new(),
                pos: 0,
            },
            dcid,
            remote: target.addr,
            caps: Capabilities::default(),
            tls: TlsOutcome::NotAttempted,
            timeouts: settings.timeouts.clone(),
            transactions: 0,
            open_transaction: false,
            broken: false,
        };
        match conn.establish(target, settings, log).await {
            Ok(()) => Ok(conn),
            Err((err, teardown)) => {
                if matches!(teardown, Teardown::Quit) {
                    let _ = conn
                        .wire
                        .command("QUIT\r\n", QUIT_TIMEOUT.min(settings.timeouts.mail), "QUIT")
                        .await;
                }
                let _ = timeout(QUIT_TIMEOUT, conn.wire.stream.shutdown()).await;
                log.log(Event::DcidClose { dcid });
                Err(err)
            }
        }
    }

    /// Greeting, EHLO and STARTTLS.
    async fn establish(
        &mut self,
        target: &Target,
        settings: &ClientSettings,
        log: &dyn DeliveryLog,
    ) -> Result<(), (ConnectError, Teardown)> {
        let t = &settings.timeouts;
        let mode = settings.control.tls;
        let peer = target.addr.ip();
        let dcid = self.dcid;
        let lost = |e: WireError, tls: TlsOutcome| {
            (
                connect_error(
                    format!("lost connection with {peer}: {e}"),
                    "4.4.2",
                    None,
                    tls,
                    false,
                ),
                Teardown::Close,
            )
        };

        let greeting = self
            .wire
            .read_reply(t.greeting, "the greeting")
            .await
            .map_err(|e| lost(e, TlsOutcome::NotAttempted))?;
        if greeting.code / 100 != 2 {
            return Err((
                connect_error(
                    format!("{peer} refused the connection: {greeting}"),
                    "4.4.2",
                    Some(greeting),
                    TlsOutcome::NotAttempted,
                    false,
                ),
                Teardown::Quit,
            ));
        }
        self.hello(&settings.helo_name, t.ehlo, peer).await?;

        if !mode.uses_starttls() {
            self.tls = TlsOutcome::NotAttempted;
            return Ok(());
        }
        let required_failed = |log: &dyn DeliveryLog| {
            log.log(Event::DcidTlsRequiredFailed {
                dcid,
                address: peer,
                domain: target.domain.clone(),
            })
        };
        if !self.caps.starttls {
            self.tls = TlsOutcome::NotOffered;
            if mode.is_required() {
                required_failed(log);
                return Err((
                    connect_error(
                        format!(
                            "TLS is required for {} but {peer} does not offer STARTTLS",
                            target.domain
                        ),
                        "4.7.5",
                        None,
                        TlsOutcome::NotOffered,
                        true,
                    ),
                    Teardown::Quit,
                ));
            }
            return Ok(());
        }

        let reply = self
            .wire
            .command("STARTTLS\r\n", t.ehlo, "the reply to STARTTLS")
            .await
            .map_err(|e| lost(e, TlsOutcome::Failed("connection lost at STARTTLS".into())))?;
        if reply.code != 220 {
            log.log(Event::DcidTlsFailed {
                dcid: self.dcid,
                reason: "STARTTLS unexpected response".into(),
            });
            if mode.is_required() {
                required_failed(log);
                return Err((
                    connect_error(
                        format!(
                            "TLS is required for {} but STARTTLS was answered {reply}",
                            target.domain
                        ),
                        "4.7.5",
                        Some(reply.clone()),
                        TlsOutcome::Failed(format!("STARTTLS answered {reply}")),
                        true,
                    ),
                    Teardown::Quit,
                ));
            }
            // Before the 220: the preferred modes go on in plaintext.
            self.tls = TlsOutcome::FellBackPlaintext;
            return Ok(());
        }

        // After the 220 there is no way back to plaintext, whatever the mode.
        let tls_failed = |reason: String, log: &dyn DeliveryLog| {
            log.log(Event::DcidTlsFailed {
                dcid,
                reason: reason.clone(),
            });
            if mode.is_required() {
                required_failed(log);
            }
            (
                connect_error(
                    format!("TLS negotiation with {peer} failed: {reason}"),
                    "4.7.5",
                    None,
                    TlsOutcome::Failed(reason),
                    mode.is_required(),
                ),
                Teardown::Close,
            )
        };
        if self.wire.buffered() > 0 {
            return Err(tls_failed(
                format!(
                    "{} bytes sent by the server after its 220 reply to STARTTLS",
                    self.wire.buffered()
                ),
                log,
            ));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.wire.stream, Stream::Gone) else {
            return Err(tls_failed("STARTTLS on an encrypted session".into(), log));
        };
        let connector = TlsConnector::from(settings.tls.client_config());
        let name = server_name_for(&target.host, &target.domain, peer);
        let tls = match timeout(t.ehlo, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(tls_failed(format!("TLS handshake failed: {e}"), log)),
            Err(_) => return Err(tls_failed("TLS handshake timed out".into(), log)),
        };
        let (protocol, cipher, certs) = {
            let c = tls.get_ref().1;
            (
                protocol_name(c.protocol_version()),
                cipher_name(c.negotiated_cipher_suite()),
                c.peer_certificates()
                    .map(|c| c.to_vec())
                    .unwrap_or_default(),
            )
        };
        self.wire.stream = Stream::Tls(Box::new(tls));

        let verified = if mode.verifies() {
            let result = settings.tls.verify(
                mode,
                settings.control.ca_file.as_deref(),
                &certs,
                &target.domain,
                &target.identity,
                UnixTime::now(),
            );
            match result {
                Ok(identity) => {
                    log.log(Event::DcidTlsSuccess {
                        dcid: self.dcid,
                        protocol: protocol.clone(),
                        cipher: cipher.clone(),
                        verified: Some(identity),
                    });
                    Some(true)
                }
                Err(why) => {
                    let reason = format!("certificate verification failed: {why}");
                    if mode.is_required() {
                        return Err(tls_failed(reason, log));
                    }
                    log.log(Event::DcidTlsFailed {
                        dcid: self.dcid,
                        reason,
                    });
                    log.log(Event::DcidTlsSuccess {
                        dcid: self.dcid,
                        protocol: protocol.clone(),
                        cipher: cipher.clone(),
                        verified: None,
                    });
                    Some(false)
                }
            }
        } else {
            log.log(Event::DcidTlsSuccess {
                dcid: self.dcid,
                protocol: protocol.clone(),
                cipher: cipher.clone(),
                verified: None,
            });
            None
        };
        self.tls = TlsOutcome::Success {
            protocol,
            cipher,
            verified,
        };
        // Forget what was learned in plaintext and ask again over TLS.
        self.caps = Capabilities::default();
        let outcome = self.tls.clone();
        self.hello(&settings.helo_name, t.ehlo, peer)
            .await
            .map_err(|(mut e, teardown)| {
                e.tls = outcome;
                (e, teardown)
            })
    }

    /// EHLO, or HELO when EHLO gets a 5xx; sets the capabilities.
    async fn hello(
        &mut self,
        helo_name: &str,
        limit: Duration,
        peer: IpAddr,
    ) -> Result<(), (ConnectError, Teardown)> {
        let lost = |e: WireError| {
            let err = connect_error(
                format!("lost connection with {peer}: {e}"),
                "4.4.2",
                None,
                TlsOutcome::NotAttempted,
                false,
            );
            (err, Teardown::Close)
        };
        let refused = |verb: &str, r: Reply| {
            let err = connect_error(
                format!("{peer} refused {verb}: {r}"),
                "4.4.2",
                Some(r),
                TlsOutcome::NotAttempted,
                false,
            );
            (err, Teardown::Quit)
        };
        let ehlo = self
            .wire
            .command(&format!("EHLO {helo_name}\r\n"), limit, "the reply to EHLO")
            .await
            .map_err(lost)?;
        if ehlo.code / 100 == 2 {
            self.caps = Capabilities::from_ehlo(&ehlo);
            return Ok(());
        }
        if ehlo.code / 100 != 5 {
            return Err(refused("EHLO", ehlo));
        }
        let helo = self
            .wire
            .command(&format!("HELO {helo_name}\r\n"), limit, "the reply to HELO")
            .await
            .map_err(lost)?;
        if helo.code / 100 != 2 {
            return Err(refused("HELO", helo));
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    /// Delivery connection id.
    pub fn dcid(&self) -> u64 {
        self.dcid
    }

    /// Remote address.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// TLS state of the session.
    pub fn tls(&self) -> &TlsOutcome {
        &self.tls
    }

    /// Capabilities currently in force (after STARTTLS: those announced over TLS).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Mail transactions started on this connection.
    pub fn transactions(&self) -> u32 {
        self.transactions
    }

    /// False once the connection broke; do not send more on it.
    pub fn is_usable(&self) -> bool {
        !self.broken
    }

    /// Sends one message: RSET first if an earlier transaction was left open, then
    /// MAIL, RCPT (pipelined when offered), DATA and the body.
    pub async fn send(&mut self, msg: &OutgoingMessage, log: &dyn DeliveryLog) -> MessageResult {
        let n = msg.rcpts.len();
        let mut out: Vec<Option<RcptOutcome>> = vec![None; n];
        let all = |out: Vec<Option<RcptOutcome>>, o: RcptOutcome, lost: bool| MessageResult {
            mid: msg.mid,
            rcpts: msg
                .rcpts
                .iter()
                .zip(out)
                .map(|((rid, _), got)| (*rid, got.unwrap_or_else(|| o.clone())))
                .collect(),
            connection_lost: lost,
        };
        let peer = self.remote.ip();
        if self.broken {
            let r = Reply::new(421, Enhanced(4, 4, 2), "connection is no longer usable");
            return all(out, RcptOutcome::TempFail(r), true);
        }
        if self.open_transaction {
            match self
                .wire
                .command("RSET\r\n", self.timeouts.mail, "the reply to RSET")
                .await
            {
                Ok(r) if r.code / 100 == 2 => {}
                Ok(r) => {
                    self.broken = true;
                    let r = Reply::new(451, Enhanced(4, 4, 2), format!("{peer} refused RSET: {r}"));
                    return all(out, RcptOutcome::TempFail(r), true);
                }
                Err(e) => {
                    self.broken = true;
                    return all(out, RcptOutcome::TempFail(lost_reply(peer, &e)), true);
                }
            }
        }
        self.transactions += 1;

        if let Some(max) = self.caps.size.filter(|m| *m > 0) {
            if msg.size > max {
                let r = Reply::new(
                    552,
                    Enhanced(5, 3, 4),
                    format!(
                        "message size {} exceeds the fixed maximum message size of {peer} ({max})",
                        msg.size
                    ),
                );
                return all(out, RcptOutcome::PermFail(r), false);
            }
        }
        if msg.smtputf8 && !self.caps.smtputf8 {
            let r = Reply::new(
                553,
                Enhanced(5, 6, 7),
                format!("{peer} does not support SMTPUTF8, which this message needs"),
            );
            return all(out, RcptOutcome::PermFail(r), false);
        }
        let bad_addr = |a: &str| {
            a.bytes()
                .any(|b| b.is_ascii_control() || b == b'<' || b == b'>')
        };
        if bad_addr(&msg.from) {
            let r = Reply::new(553, Enhanced(5, 1, 7), "malformed envelope sender");
            return all(out, RcptOutcome::PermFail(r), false);
        }
        for (i, (_, rcpt)) in msg.rcpts.iter().enumerate() {
            if bad_addr(rcpt) {
                out[i] = Some(RcptOutcome::PermFail(Reply::new(
                    553,
                    Enhanced(5, 1, 3),
                    "malformed recipient address",
                )));
            }
        }
        let opened = match &msg.body {
            Some(bytes) => Ok(BodySource::Memory(bytes.clone())),
            None => tokio::fs::File::open(&msg.body_path)
                .await
                .map(BodySource::File),
        };
        let body = match opened {
            Ok(b) => b,
            Err(e) => {
                let r = Reply::new(
                    451,
                    Enhanced(4, 3, 0),
                    format!("local error: cannot read {}: {e}", msg.body_path.display()),
                );
                return all(out, RcptOutcome::TempFail(r), false);
            }
        };
        if out.iter().all(Option::is_some) {
            return all(out, RcptOutcome::TempFail(Reply::plain(451, "")), false);
        }

        log.log(Event::DeliveryStart {
            dcid: self.dcid,
            mid: msg.mid,
            rids: msg
                .rcpts
                .iter()
                .zip(&out)
                .filter(|(_, refused)| refused.is_none())
                .map(|((rid, _), _)| *rid)
                .collect(),
        });
        match self.transaction(msg, body, &mut out, log).await {
            Ok(saw_421) => {
                if saw_421 {
                    self.broken = true;
                }
                let r = Reply::new(421, Enhanced(4, 4, 2), "connection closed by server");
                all(out, RcptOutcome::TempFail(r), saw_421)
            }
            Err(e) => {
                self.broken = true;
                let r = match e {
                    TxError::Wire(e) => lost_reply(peer, &e),
                    TxError::Local(e) => Reply::new(
                        451,
                        Enhanced(4, 3, 0),
                        format!("local error reading {}: {e}", msg.body_path.display()),
                    ),
                };
                all(out, RcptOutcome::TempFail(r), true)
            }
        }
    }

    /// The transaction proper; fills `out` for every recipient with a final answer.
    /// Returns whether the server said 421 (it is closing the connection).
    async fn transaction(
        &mut self,
        msg: &OutgoingMessage,
        body: BodySource,
        out: &mut [Option<RcptOutcome>],
        log: &dyn DeliveryLog,
    ) -> Result<bool, TxError> {
        let t = self.timeouts.clone();
        let mut mail = format!("MAIL FROM:<{}>", msg.from);
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", msg.size));
        }
        if msg.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        // Recipients still in play (not refused locally): index into msg.rcpts.
        let wanted: Vec<usize> = (0..msg.rcpts.len()).filter(|&i| out[i].is_none()).collect();
        let rcpt_cmd = |i: usize| format!("RCPT TO:<{}>\r\n", msg.rcpts[i].1);
        let mut saw_421 = false;
        let mut accepted: Vec<usize> = Vec::new();
        // Until the reply to the final dot; cleared below only on a path that reads it.
        self.open_transaction = true;

        let data_reply = if self.caps.pipelining {
            let mut batch = mail.clone();
            for &i in &wanted {
                batch.push_str(&rcpt_cmd(i));
            }
            batch.push_str("DATA\r\n");
            self.wire.write(batch.as_bytes(), t.mail, "MAIL").await?;
            let mail_reply = self.wire.read_reply(t.mail, "the reply to MAIL").await?;
            saw_421 |= mail_reply.code == 421;
            let mail_ok = mail_reply.code / 100 == 2;
            for &i in &wanted {
                let r = self.wire.read_reply(t.rcpt, "the reply to RCPT").await?;
                saw_421 |= r.code == 421;
                if !mail_ok {
                    out[i] = Some(failure(&mail_reply));
                } else if r.code / 100 == 2 {
                    accepted.push(i);
                } else {
                    out[i] = Some(failure(&r));
                }
            }
            let data = self
                .wire
                .read_reply(t.data_init, "the reply to DATA")
                .await?;
            saw_421 |= data.code == 421;
            if accepted.is_empty() {
                if data.code == 354 {
                    // RFC 2920 §3.1: the server took DATA anyway; send an empty message.
                    self.wire.write(b".\r\n", t.data_block, "DATA").await?;
                    let r = self
                        .wire
                        .read_reply(t.data_term, "the reply to end of DATA")
                        .await?;
                    saw_421 |= r.code == 421;
                    self.open_transaction = false;
                }
                return Ok(saw_421);
            }
            data
        } else {
            let mail_reply = self
                .wire
                .command(&mail, t.mail, "the reply to MAIL")
                .await?;
            if mail_reply.code / 100 != 2 {
                for &i in &wanted {
                    out[i] = Some(failure(&mail_reply));
                }
                // MAIL refused: no transaction was started.
                self.open_transaction = false;
                return Ok(mail_reply.code == 421);
            }
            for &i in &wanted {
                let r = self
                    .wire
                    .command(&rcpt_cmd(i), t.rcpt, "the reply to RCPT")
                    .await?;
                if r.code / 100 == 2 {
                    accepted.push(i);
                } else {
                    out[i] = Some(failure(&r));
                    if r.code == 421 {
                        return Ok(true);
                    }
                }
            }
            if accepted.is_empty() {
                return Ok(false);
            }
            self.wire
                .command("DATA\r\n", t.data_init, "the reply to DATA")
                .await?
        };

        if data_reply.code != 354 {
            for &i in &accepted {
                out[i] = Some(failure(&data_reply));
            }
            return Ok(saw_421 || data_reply.code == 421);
        }
        self.send_body(body, t.data_block).await?;
        let done = self
            .wire
            .read_reply(t.data_term, "the reply to end of DATA")
            .await?;
        self.open_transaction = false;
        if done.code / 100 == 2 {
            for &i in &accepted {
                out[i] = Some(RcptOutcome::Delivered(done.clone()));
            }
            log.log(Event::MessageDone {
                dcid: self.dcid,
                mid: msg.mid,
                rids: accepted.iter().map(|&i| msg.rcpts[i].0).collect(),
            });
        } else {
            for &i in &accepted {
                out[i] = Some(failure(&done));
            }
        }
        Ok(saw_421 || done.code == 421)
    }

    /// Sends the body dot-stuffed, then `.`: from memory in one write, or streamed from the
    /// spool file (never holding the whole body), with the final dot in the last write.
    async fn send_body(&mut self, body: BodySource, limit: Duration) -> Result<(), TxError> {
        let mut at_line_start = true;
        let mut tail = [0u8; 2];
        let mut empty = true;
        let mut wire_buf: Vec<u8>;
        match body {
            BodySource::Memory(bytes) => {
                wire_buf = Vec::with_capacity(bytes.len() + bytes.len() / 16 + 5);
                dot_stuff(&bytes, &mut at_line_start, &mut wire_buf);
                if let [.., a, b] = bytes[..] {
                    tail = [a, b];
                }
                empty = bytes.is_empty();
            }
            BodySource::File(mut file) => {
                let mut chunk = vec![0u8; BODY_CHUNK];
                wire_buf = Vec::with_capacity(BODY_CHUNK + BODY_CHUNK / 8);
                loop {
                    let n = file.read(&mut chunk).await.map_err(TxError::Local)?;
                    if n == 0 {
                        break;
                    }
                    empty = false;
                    dot_stuff(&chunk[..n], &mut at_line_start, &mut wire_buf);
                    tail = if n >= 2 {
                        [chunk[n - 2], chunk[n - 1]]
                    } else {
                        [tail[1], chunk[0]]
                    };
                    if wire_buf.len() >= BODY_CHUNK {
                        self.wire.write(&wire_buf, limit, "DATA").await?;
                        wire_buf.clear();
                    }
                }
            }
        }
        // The body always ends with CRLF before the terminating dot.
        let end: &[u8] = if empty || tail == *b"\r\n" {
            b".\r\n"
        } else {
            b"\r\n.\r\n"
        };
        wire_buf.extend_from_slice(end);
        self.wire.write(&wire_buf, limit, "DATA").await?;
        Ok(())
    }

    /// Says QUIT (when the session is still sound), closes and logs `DCID n close`.
    pub async fn quit(mut self, log: &dyn DeliveryLog) {
        if !self.broken {
            let limit = QUIT_TIMEOUT.min(self.timeouts.mail);
            let _ = self
                .wire
                .command("QUIT\r\n", limit, "the reply to QUIT")
                .await;
        }
        let _ = timeout(QUIT_TIMEOUT, self.wire.stream.shutdown()).await;
        log.log(Event::DcidClose { dcid: self.dcid });
    }
}

/// Errors inside a transaction.
#[derive(Debug)]
enum TxError {
    /// The connection failed.
    Wire(WireError),
    /// The spool file could not be read.
    Local(io::Error),
}

impl From<WireError> for TxError {
    fn from(e: WireError) -> Self {
        TxError::Wire(e)
    }
}

/// The outcome a failure reply gives a recipient: 5xx bounces, anything else is retried.
fn failure(r: &Reply) -> RcptOutcome {
    if r.code / 100 == 5 {
        RcptOutcome::PermFail(r.clone())
    } else {
        RcptOutcome::TempFail(r.clone())
    }
}

/// The reply recorded for recipients left without an answer when the connection failed.
fn lost_reply(peer: IpAddr, e: &WireError) -> Reply {
    Reply::new(
        451,
        Enhanced(4, 4, 2),
        format!("lost connection with {peer}: {e}"),
    )
}

/// Appends `input` to `out`, doubling a `.` at the start of every line; `at_line_start`
/// carries the state across chunks.
pub fn dot_stuff(input: &[u8], at_line_start: &mut bool, out: &mut Vec<u8>) {
    // Line by line: whole lines are copied at once, a dot is inserted only at line starts.
    let mut rest = input;
    while let Some(&first) = rest.first() {
        if *at_line_start && first == b'.' {
            out.push(b'.');
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                out.extend_from_slice(&rest[..=i]);
                rest = &rest[i + 1..];
                *at_line_start = true;
            }
            None => {
                out.extend_from_slice(rest);
                *at_line_start = false;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> Result<Option<Reply>, String> {
        let mut p = ReplyParser::default();
        let mut last = Ok(None);
        for l in lines {
            last = Ok(p.push_line(l.as_bytes())?);
        }
        last
    }

    #[test]
    fn multi_line_replies() {
        let r = parse(&["250-mx.test hello", "250-PIPELINING", "250 SIZE 1000"])
            .unwrap()
            .unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.text, "mx.test hello\nPIPELINING\nSIZE 1000");
        let caps = Capabilities::from_ehlo(&r);
        assert!(caps.pipelining && caps.esmtp && !caps.starttls);
        assert_eq!(caps.size, Some(1000));
        let r = parse(&["550-5.1.1 no such", "550 5.1.1 user"])
            .unwrap()
            .unwrap();
        assert_eq!(r.enhanced, Some(Enhanced(5, 1, 1)));
        assert_eq!(r.text, "no such\nuser");
        let r = parse(&["250"]).unwrap().unwrap();
        assert_eq!((r.code, r.text.as_ref()), (250, ""));
        // An enhanced code of another class is text.
        let r = parse(&["451 5.1.1 odd"]).unwrap().unwrap();
        assert_eq!((r.enhanced, r.text.as_ref()), (None, "5.1.1 odd"));
    }

    #[test]
    fn malformed_replies() {
        assert!(parse(&["hello"]).is_err());
        assert!(parse(&["25"]).is_err());
        assert!(parse(&["250-a", "251 b"]).is_err());
        assert!(parse(&["250xa"]).is_err());
        assert!(parse(&["650 x"]).is_err());
        let long = format!("250 {}", "x".repeat(MAX_REPLY_LINE));
        assert!(parse(&[&long]).is_err());
        let mut p = ReplyParser::default();
        let line = format!("250-{}", "x".repeat(1000));
        let mut err = None;
        for _ in 0..100 {
            if let Err(e) = p.push_line(line.as_bytes()) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err.as_deref(), Some("reply too long"));
    }

    #[test]
    fn dot_stuffing_across_chunks() {
        let mut out = Vec::new();
        let mut bol = true;
        dot_stuff(b".a\r\nb\r", &mut bol, &mut out);
        dot_stuff(b"\n.", &mut bol, &mut out);
        dot_stuff(b".\r\n", &mut bol, &mut out);
        assert_eq!(out, b"..a\r\nb\r\n...\r\n");
    }

    proptest::proptest! {
        /// Any split of any body stuffs exactly like the byte-at-a-time definition
        /// (a dot is doubled at the start of every line, and nowhere else).
        #[test]
        fn dot_stuffing_matches_the_definition(
            body in proptest::collection::vec(proptest::sample::select(b".\r\na".to_vec()), 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let mut want = Vec::new();
            let mut bol = true;
            for &b in &body {
                if bol && b == b'.' {
                    want.push(b'.');
                }
                want.push(b);
                bol = b == b'\n';
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.sort_unstable();
            let (mut out, mut at, mut from) = (Vec::new(), true, 0);
            for c in cuts.into_iter().chain([body.len()]) {
                dot_stuff(&body[from..c], &mut at, &mut out);
                from = c;
            }
            proptest::prop_assert_eq!(out, want);
            proptest::prop_assert_eq!(at, bol);
        }
    }

    /// The queue manager runs deliveries in spawned tasks: the futures must be `Send`.
    #[allow(dead_code)]
    fn futures_are_send(
        c: &mut Connection,
        m: &OutgoingMessage,
        t: &Target,
        s: &ClientSettings,
        l: &dyn DeliveryLog,
    ) {
        fn send<T: Send>(_: &T) {}
        send(&Connection::open(1, t, s, l));
        send(&c.send(m, l));
    }

    #[test]
    fn default_timeouts_follow_rfc5321() {
        let t = ClientTimeouts::default();
        assert_eq!(t.greeting.as_secs(), 300);
        assert_eq!(t.data_init.as_secs(), 120);
        assert_eq!(t.data_block.as_secs(), 180);
        assert_eq!(t.data_term.as_secs(), 600);
    }
}
