//! One probe connection to the internal server: the socket with its read buffer, replies
//! parsed with the relay client's sans-IO [`ReplyParser`], and the two exchanges of a probe:
//! [`ProbeConn::open`] (greeting, EHLO or HELO, STARTTLS per the destination's mode) and
//! [`ProbeConn::ask`] (RSET when needed, MAIL, RCPT).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::relay::client::tls::handshake;
use crate::relay::client::{Capabilities, ReplyParser, Stream};
use crate::smtp::reply::Reply;

use crate::validate::verdict::{Answer, TempFailCause, Verdict};

use super::{CallaheadSettings, ProbeTls, QUIT_TIMEOUT};

/// Longest reply line read from the internal server.
const MAX_LINE: usize = 4096;

/// A failed step on a probe connection.
#[derive(Debug)]
pub(super) enum StepError {
    Io(io::Error),
    Closed,
    Protocol(String),
}

impl StepError {
    /// The tempfail cause it maps to.
    pub(super) fn cause(&self) -> TempFailCause {
        match self {
            StepError::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                TempFailCause::Refused
            }
            StepError::Io(_) | StepError::Closed => TempFailCause::Io,
            StepError::Protocol(_) => TempFailCause::Protocol,
        }
    }

    /// Text for the log.
    pub(super) fn text(&self) -> String {
        match self {
            StepError::Io(e) => e.to_string(),
            StepError::Closed => "connection closed by server".into(),
            StepError::Protocol(m) => m.clone(),
        }
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

/// A tempfail for a refused greeting, EHLO or HELO.
fn refused(dest: SocketAddr, r: &Reply, stage: &str) -> Answer {
    Answer::temp(
        TempFailCause::SessionRefused,
        format!("probe {dest}: {stage}: {}", reply_text(r)),
    )
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

/// True when `s` can go between `<` and `>` of a command without changing it: addresses
/// come from the session's parser, but a CR, LF or bracket here would inject commands
/// into the internal server's session.
pub(super) fn is_safe_path(s: &str) -> bool {
    !s.chars().any(|c| c.is_control() || c == '<' || c == '>')
}

/// One open connection to the internal server, past EHLO.
pub(super) struct ProbeConn {
    /// Plain, or TLS after STARTTLS (kept for every probe on the connection).
    stream: Stream,
    buf: Vec<u8>,
    /// When it last finished a probe (idle connections expire).
    pub(super) last_used: Instant,
    /// RCPTs sent on it.
    pub(super) probes: u32,
    /// RCPTs refused on it (4xx/5xx): the server's error count for the session.
    pub(super) refusals: u32,
    /// A MAIL was accepted since the last RSET: the next probe starts with RSET.
    in_transaction: bool,
    /// The server offered SMTPUTF8 (in its last EHLO).
    smtputf8: bool,
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

    /// Writes `cmd` and reads its reply.
    pub(super) async fn command(&mut self, cmd: &str) -> Result<Reply, StepError> {
        self.stream
            .write_all(cmd.as_bytes())
            .await
            .map_err(StepError::Io)?;
        self.read_reply().await
    }

    /// Closes the write side (after QUIT).
    pub(super) async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Connects to `dest`, reads the greeting, says EHLO (HELO when EHLO is refused with
    /// 5xx) and negotiates STARTTLS as `tls` says (none: plaintext); `connects` counts the
    /// TCP connections made.
    pub(super) async fn open(
        dest: SocketAddr,
        settings: &CallaheadSettings,
        tls: Option<&ProbeTls>,
        connects: &AtomicU64,
    ) -> Result<ProbeConn, Answer> {
        let helo = settings.helo_name.as_str();
        let fail = |e: StepError, stage: &str| {
            Answer::temp(e.cause(), format!("probe {dest}: {stage}: {}", e.text()))
        };
        let stream = TcpStream::connect(dest)
            .await
            .map_err(|e| fail(StepError::Io(e), "connect"))?;
        connects.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let mut c = ProbeConn {
            stream: Stream::Plain(stream),
            buf: Vec::new(),
            last_used: Instant::now(),
            probes: 0,
            refusals: 0,
            in_transaction: false,
            smtputf8: false,
        };
        let greeting = c.read_reply().await.map_err(|e| fail(e, "greeting"))?;
        if greeting.code != 220 {
            return Err(refused(dest, &greeting, "greeting"));
        }
        let caps = c.hello(dest, helo).await?;
        match tls {
            Some(tls) if tls.mode.uses_starttls() => {
                c.starttls(dest, helo, tls, &caps, settings.timeout).await
            }
            _ => Ok(c),
        }
    }

    /// EHLO, or HELO when EHLO gets a 5xx; what the server announced.
    async fn hello(&mut self, dest: SocketAddr, helo: &str) -> Result<Capabilities, Answer> {
        let fail = |e: StepError, stage: &str| {
            Answer::temp(e.cause(), format!("probe {dest}: {stage}: {}", e.text()))
        };
        let ehlo = self
            .command(&format!("EHLO {helo}\r\n"))
            .await
            .map_err(|e| fail(e, "EHLO"))?;
        if ehlo.code / 100 == 2 {
            let caps = Capabilities::from_ehlo(&ehlo);
            self.smtputf8 = caps.smtputf8;
            return Ok(caps);
        }
        if ehlo.code / 100 != 5 {
            return Err(refused(dest, &ehlo, "EHLO"));
        }
        let r = self
            .command(&format!("HELO {helo}\r\n"))
            .await
            .map_err(|e| fail(e, "HELO"))?;
        if r.code / 100 == 2 {
            self.smtputf8 = false;
            Ok(Capabilities::default())
        } else {
            Err(refused(dest, &r, "HELO"))
        }
    }

    /// STARTTLS as delivery does it (relay/client/setup.rs): a `required*` mode must get an
    /// encrypted session (and under `required-verify*` a certificate that checks), else
    /// `TempFail(Tls)`; a `preferred*` mode goes on in plaintext when STARTTLS is not offered
    /// or refused (before the 220 the plaintext session is intact). After the 220 there is no
    /// way back to plaintext: a failed handshake is `TempFail(Tls)` in every mode. Then EHLO
    /// again over TLS.
    async fn starttls(
        mut self,
        dest: SocketAddr,
        helo: &str,
        tls: &ProbeTls,
        caps: &Capabilities,
        limit: Duration,
    ) -> Result<ProbeConn, Answer> {
        let mode = tls.mode;
        let tls_failed = |why: String| {
            Answer::temp(TempFailCause::Tls, format!("probe {dest}: STARTTLS: {why}"))
        };
        if !caps.starttls {
            if !mode.is_required() {
                return Ok(self);
            }
            self.quit().await;
            return Err(tls_failed(format!(
                "TLS is required ({mode}) but the server does not offer STARTTLS"
            )));
        }
        let r = self
            .command("STARTTLS\r\n")
            .await
            .map_err(|e| tls_failed(e.text()))?;
        if r.code != 220 {
            if !mode.is_required() {
                return Ok(self);
            }
            self.quit().await;
            return Err(tls_failed(format!(
                "TLS is required ({mode}) but STARTTLS was answered {}",
                reply_text(&r)
            )));
        }
        if !self.buf.is_empty() {
            return Err(tls_failed(format!(
                "{} bytes sent by the server after its 220 reply to STARTTLS",
                self.buf.len()
            )));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(tls_failed("STARTTLS on an encrypted session".into()));
        };
        let done = handshake(
            tcp,
            &tls.target,
            &tls.context,
            mode,
            tls.ca_file.as_deref(),
            limit,
        )
        .await
        .map_err(tls_failed)?;
        self.stream = Stream::Tls(Box::new(done.stream));
        if let Some(Err(why)) = done.verification {
            // `preferred-verify` probes over the unverified session, as it delivers.
            if mode.is_required() {
                return Err(tls_failed(format!(
                    "certificate verification failed: {why}"
                )));
            }
        }
        // Forget what was learned in plaintext and ask again over TLS.
        self.hello(dest, helo).await?;
        Ok(self)
    }

    /// A courtesy QUIT before giving up a sound session.
    pub(super) async fn quit(&mut self) {
        let _ = timeout(QUIT_TIMEOUT, self.command("QUIT\r\n")).await;
        let _ = timeout(QUIT_TIMEOUT, self.shutdown()).await;
    }

    /// RSET (when needed), `MAIL FROM:<mail_from>` and `RCPT TO:<address>`; `sent` counts
    /// the RCPTs. On success, the answer and the connection (reusable). On failure, the error
    /// and whether the RCPT was already sent (then a retry on a new connection would probe
    /// twice).
    pub(super) async fn ask(
        mut self,
        dest: SocketAddr,
        mail_from: &str,
        address: &str,
        sent: &AtomicU64,
    ) -> Result<(Answer, ProbeConn), (StepError, bool)> {
        if self.in_transaction {
            let r = self.command("RSET\r\n").await.map_err(|e| (e, false))?;
            if r.code / 100 != 2 {
                return Err((
                    StepError::Protocol(format!("RSET answered {}", reply_text(&r))),
                    false,
                ));
            }
            self.in_transaction = false;
        }
        // A non-ASCII address needs SMTPUTF8 (RFC 6531): declared when offered; a server
        // without it could never receive mail for the address (delivery would bounce).
        let utf8 = !address.is_ascii();
        if utf8 && !self.smtputf8 {
            let a = Answer::new(
                Verdict::Invalid,
                format!("probe {dest}: the server does not offer SMTPUTF8 for a non-ASCII address"),
            );
            return Ok((a, self));
        }
        let param = if utf8 { " SMTPUTF8" } else { "" };
        let r = self
            .command(&format!("MAIL FROM:<{mail_from}>{param}\r\n"))
            .await
            .map_err(|e| (e, false))?;
        if r.code / 100 != 2 {
            // No transaction was opened: the connection stays usable.
            let a = Answer::temp(
                TempFailCause::MailRefused,
                format!(
                    "probe {dest}: MAIL FROM:<{mail_from}> refused: {}",
                    reply_text(&r)
                ),
            );
            return Ok((a, self));
        }
        self.in_transaction = true;
        sent.fetch_add(1, Ordering::Relaxed);
        let r = self
            .command(&format!("RCPT TO:<{address}>\r\n"))
            .await
            .map_err(|e| (e, true))?;
        self.probes += 1;
        if r.code >= 400 {
            self.refusals += 1;
        }
        let verdict = classify_rcpt(r.code);
        let detail = format!("probe {dest}: {}", reply_text(&r));
        Ok((Answer::new(verdict, detail), self))
    }
}
