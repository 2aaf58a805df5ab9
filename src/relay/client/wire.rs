//! The wire: the socket (plain or TLS) with its read buffer, SMTP replies read and parsed
//! (`ReplyParser`, sans-IO), commands written, each step bounded by a timeout.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;

use crate::smtp::reply::{Enhanced, Reply};

/// Longest reply line accepted from a server (RFC 5321 allows 512; be lenient).
const MAX_REPLY_LINE: usize = 4096;
/// Largest multi-line reply accepted (an EHLO reply with many extensions fits easily).
const MAX_REPLY_TOTAL: usize = 64 * 1024;

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
    pub(crate) fn push_line(&mut self, line: &[u8]) -> Result<Option<Reply>, String> {
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

/// The first 80 characters of `s`, for error messages.
fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Plain TCP or TLS (also the socket of a call-ahead probe).
pub(crate) enum Stream {
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
pub(super) enum WireError {
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
pub(super) struct Wire {
    /// The socket.
    pub(super) stream: Stream,
    /// Bytes read from the socket; those before `pos` are consumed.
    pub(super) buf: Vec<u8>,
    /// Where the unconsumed bytes of `buf` start.
    pub(super) pos: usize,
}

impl Wire {
    /// Bytes received and not yet parsed.
    pub(super) fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Reads one (possibly multi-line) reply within `limit`; `stage` names it in a timeout.
    pub(super) async fn read_reply(
        &mut self,
        limit: Duration,
        stage: &'static str,
    ) -> Result<Reply, WireError> {
        match timeout(limit, self.read_reply_inner()).await {
            Ok(r) => r,
            Err(_) => Err(WireError::Timeout(stage)),
        }
    }

    /// Reads one reply, without a time limit.
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

    /// Writes and flushes `data` within `limit`.
    pub(super) async fn write(
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

    /// Sends a command and reads its reply, each within `limit`.
    pub(super) async fn command(
        &mut self,
        cmd: &str,
        limit: Duration,
        stage: &'static str,
    ) -> Result<Reply, WireError> {
        self.write(cmd.as_bytes(), limit, stage).await?;
        self.read_reply(limit, stage).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::client::Capabilities;

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
}
