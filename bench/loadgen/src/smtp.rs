//! A minimal SMTP client: reply reading, commands, STARTTLS, and the TLS client configuration.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest reply accepted.
const MAX_REPLY: usize = 64 * 1024;

/// One SMTP reply: the code and the text of its last line.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Three-digit code.
    pub code: u16,
    /// Last line, without CRLF.
    pub last: String,
}

/// Why a session step failed.
#[derive(Debug)]
pub enum StepError {
    /// Socket error or closed connection.
    Io(io::Error),
    /// Nothing came within the timeout.
    Timeout,
    /// The server answered with an unexpected code.
    Unexpected(Reply),
}

impl StepError {
    /// A short kind for the error counters (`io`, `timeout`, `reply 452`).
    pub fn kind(&self, step: &str) -> String {
        match self {
            StepError::Io(e) => format!("{step}: io {:?}", e.kind()),
            StepError::Timeout => format!("{step}: timeout"),
            StepError::Unexpected(r) => {
                format!("{step}: reply {} {}", r.code, first_words(&r.last))
            }
        }
    }
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(4).collect::<Vec<_>>().join(" ")
}

impl From<io::Error> for StepError {
    fn from(e: io::Error) -> Self {
        StepError::Io(e)
    }
}

/// A connection speaking SMTP over `S` (plain TCP or TLS).
pub struct Smtp<S> {
    /// The stream.
    pub stream: S,
    buf: Vec<u8>,
    timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Smtp<S> {
    /// Wraps a stream; every read waits at most `timeout`.
    pub fn new(stream: S, timeout: Duration) -> Self {
        Smtp {
            stream,
            buf: Vec::with_capacity(512),
            timeout,
        }
    }

    /// Bytes read but not yet consumed (must be none before STARTTLS).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Reads one (possibly multi-line) reply.
    pub async fn reply(&mut self) -> Result<Reply, StepError> {
        let mut start = 0;
        loop {
            // Complete lines in the buffer: find the last line of the reply (`NNN ` or `NNN\r\n`).
            while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
                let line = &self.buf[start..start + nl + 1];
                let end = start + nl + 1;
                if line.len() < 5 || !line[..3].iter().all(u8::is_ascii_digit) {
                    return Err(StepError::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed reply line",
                    )));
                }
                if line[3] != b'-' {
                    let code = (line[0] - b'0') as u16 * 100
                        + (line[1] - b'0') as u16 * 10
                        + (line[2] - b'0') as u16;
                    let text = String::from_utf8_lossy(&line[..line.len() - 1])
                        .trim_end()
                        .to_string();
                    self.buf.drain(..end);
                    return Ok(Reply { code, last: text });
                }
                start = end;
            }
            if self.buf.len() > MAX_REPLY {
                return Err(StepError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "reply too long",
                )));
            }
            self.buf.reserve(1024);
            let n = match tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.buf))
                .await
            {
                Err(_) => return Err(StepError::Timeout),
                Ok(r) => r?,
            };
            if n == 0 {
                return Err(StepError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Reads a reply and checks its code.
    pub async fn expect(&mut self, code: u16) -> Result<Reply, StepError> {
        let r = self.reply().await?;
        if r.code == code {
            Ok(r)
        } else {
            Err(StepError::Unexpected(r))
        }
    }

    /// Writes bytes (no flush needed: TCP_NODELAY, and TLS streams flush on write_all + flush).
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), StepError> {
        match tokio::time::timeout(self.timeout, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        {
            Err(_) => Err(StepError::Timeout),
            Ok(r) => Ok(r?),
        }
    }

    /// Sends a command line and expects `code`.
    pub async fn command(&mut self, line: &[u8], code: u16) -> Result<Reply, StepError> {
        self.send(line).await?;
        self.expect(code).await
    }

    /// Sends QUIT and reads 221; errors are ignored by callers that only want to close.
    pub async fn quit(&mut self) -> Result<(), StepError> {
        self.command(b"QUIT\r\n", 221).await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }
}

/// TLS version offered by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.3 only.
    V13,
    /// TLS 1.2 only.
    V12,
}

/// Accepts any certificate and skips signature checks: a load generator measures the
/// server, it does not authenticate it (and verifying would cost client CPU).
#[derive(Debug)]
struct AcceptAnything(Vec<SignatureScheme>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

/// The client configuration: one TLS version, X25519 then P-256 key exchange (what both
/// servers support, so each does the same work), no certificate checks, and no session
/// resumption unless asked (every connection pays a full handshake, as from distinct MTAs).
pub fn client_config(version: TlsVersion, resume: bool) -> Result<Arc<ClientConfig>, String> {
    use rustls::crypto::aws_lc_rs;
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = vec![aws_lc_rs::kx_group::X25519, aws_lc_rs::kx_group::SECP256R1];
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let versions: &[&rustls::SupportedProtocolVersion] = match version {
        TlsVersion::V13 => &[&rustls::version::TLS13],
        TlsVersion::V12 => &[&rustls::version::TLS12],
    };
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(schemes)))
        .with_no_client_auth();
    if !resume {
        cfg.resumption = Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}
