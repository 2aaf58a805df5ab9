//! The one SMTP client of the tests: reads whole replies, sends commands and raw bytes,
//! upgrades to TLS after STARTTLS (accepting any certificate, e.g. the demo one).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Connects to `to` from the loopback address `from` (any of 127/8 works on Linux): a
/// client address a load balancer passes on.
pub async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    sock.connect(to).await.unwrap()
}

/// Line-level SMTP client over any stream.
pub struct Client<S> {
    pub io: BufReader<S>,
}

impl Client<TcpStream> {
    /// Connects; with `proxy_from`, sends a PROXY v1 header claiming that client address first.
    pub async fn connect(addr: SocketAddr, proxy_from: Option<&str>) -> Self {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if let Some(ip) = proxy_from {
            let h = format!("PROXY TCP4 {ip} 127.0.0.1 40000 {}\r\n", addr.port());
            s.write_all(h.as_bytes()).await.unwrap();
        }
        Client {
            io: BufReader::new(s),
        }
    }

    /// Disables Nagle's algorithm, so each `send` leaves at once (for timing tests).
    pub fn nodelay(self) -> Self {
        self.io.get_ref().set_nodelay(true).unwrap();
        self
    }

    /// Upgrades to TLS after a 220 to STARTTLS (accepting any certificate: the demo one).
    pub async fn into_tls(self) -> Client<TlsStream<TcpStream>> {
        assert!(
            self.io.buffer().is_empty(),
            "server sent bytes after 220 to STARTTLS"
        );
        let tcp = self.io.into_inner();
        let tls = tls_connector()
            .connect(ServerName::try_from("mx.test.example").unwrap(), tcp)
            .await
            .unwrap();
        Client {
            io: BufReader::new(tls),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Reads one whole (possibly multi-line) reply; empty string on EOF.
    pub async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut line))
                .await
                .expect("reply timeout")
                .unwrap_or(0);
            if n == 0 {
                return all;
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    /// One whole reply as lines without CRLF; panics on a timeout, on EOF inside the reply and
    /// on a line without CRLF (for tests that check the framing).
    pub async fn reply_lines(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut line))
                .await
                .unwrap_or_else(|_| panic!("reply timeout after {lines:?}"))
                .unwrap_or_else(|e| panic!("reading reply after {lines:?}: {e}"));
            assert!(n > 0, "connection closed inside a reply; got {lines:?}");
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            let line = line.trim_end_matches("\r\n").to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines;
            }
        }
    }

    /// Sends a command line and returns the reply as [`Client::reply_lines`] does.
    pub async fn cmd_lines(&mut self, line: &str) -> Vec<String> {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply_lines().await
    }

    /// Everything until the server closes (a reset after the close counts as closed).
    pub async fn read_to_close(&mut self) -> String {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), self.io.read_to_end(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no close within 10s; got {:?}",
                    String::from_utf8_lossy(&buf)
                )
            });
        match read {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!(
                "waiting for close: {e}; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.unwrap();
    }

    /// Sends a command line and returns the reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Sends a whole message through EHLO..DATA; returns the final reply.
    pub async fn send_mail(&mut self, from: &str, to: &[&str], body: &str) -> String {
        let mut out = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        for r in to {
            out = self.cmd(&format!("RCPT TO:<{r}>")).await;
        }
        let d = self.cmd("DATA").await;
        if !d.starts_with("354") {
            return format!("{out}{d}");
        }
        self.send(body.as_bytes()).await;
        self.send(b".\r\n").await;
        self.reply().await
    }
}

/// Sends one message on a new connection (greeting, EHLO, MAIL, RCPT, DATA, QUIT) and returns
/// the reply to its final dot; an error when the server is down or goes away at any point
/// (for tests that kill the server under the client's feet, where [`Client`] would panic).
pub async fn try_send_one(
    addr: SocketAddr,
    from: &str,
    to: &str,
    body: &str,
) -> std::io::Result<String> {
    async fn reply(io: &mut BufReader<TcpStream>) -> std::io::Result<String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if io.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Ok(all);
            }
        }
    }
    let exchange = async {
        let mut io = BufReader::new(TcpStream::connect(addr).await?);
        reply(&mut io).await?;
        let mut last = String::new();
        for cmd in [
            "EHLO crash.test".to_string(),
            format!("MAIL FROM:<{from}>"),
            format!("RCPT TO:<{to}>"),
            "DATA".to_string(),
        ] {
            io.get_mut()
                .write_all(format!("{cmd}\r\n").as_bytes())
                .await?;
            last = reply(&mut io).await?;
        }
        if !last.starts_with("354") {
            return Ok(last);
        }
        io.get_mut()
            .write_all(format!("{body}.\r\n").as_bytes())
            .await?;
        let done = reply(&mut io).await?;
        let _ = io.get_mut().write_all(b"QUIT\r\n").await;
        Ok(done)
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// A verifier that accepts any server certificate (tests of our own demo certificates).
#[derive(Debug)]
pub struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls client that accepts the demo certificate.
pub fn tls_connector() -> TlsConnector {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAny))
    .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
}
