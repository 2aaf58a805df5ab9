//! Shared helpers for integration tests: an in-process server on 127.0.0.1:0 and a line-level SMTP client.

#![allow(dead_code)]

pub mod dnsmasq;
pub mod sink;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mxgate::app::Running;
use mxgate::config::model::MailLogTarget;
use mxgate::config::{load, Overrides};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running in-process gateway with its own spool, certs and mail log.
pub struct Server {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub addrs: HashMap<String, SocketAddr>,
    pub log: PathBuf,
    pub spool: PathBuf,
}

impl Server {
    /// Starts the fixture config `tests/fixtures/NAME` with `tweak` applied to the overrides.
    pub async fn start(fixture: &str, tweak: impl FnOnce(&mut Overrides, &Path)) -> Server {
        Self::start_dir(&repo().join("tests/fixtures").join(fixture), tweak).await
    }

    /// Starts the config in `config_dir`.
    pub async fn start_dir(config_dir: &Path, tweak: impl FnOnce(&mut Overrides, &Path)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("mail.log");
        let spool = dir.path().join("spool");
        let mut o = Overrides {
            spool_dir: Some(spool.clone()),
            certs_dir: Some(dir.path().join("certs")),
            mail_log: Some(MailLogTarget::File(log.clone())),
            ..Overrides::default()
        };
        tweak(&mut o, dir.path());
        let spool = o.spool_dir.clone().unwrap();
        let cfg = load(config_dir, &o).unwrap_or_else(|e| panic!("{e}"));
        let running = mxgate::app::start(&cfg).await.unwrap();
        let addrs = running.bound.iter().cloned().collect();
        Server {
            running: Some(running),
            dir,
            addrs,
            log,
            spool,
        }
    }

    /// Address of a listener.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.addrs[listener]
    }

    /// The mail log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on the metrics endpoint (metrics must be enabled): status code and body.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        use tokio::io::AsyncReadExt;
        let addr = self
            .running
            .as_ref()
            .and_then(|r| r.metrics_addr)
            .expect("metrics enabled");
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        let code = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status in {text:?}"));
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (code, body.to_string())
    }

    /// The value of the series `name` with these `labels` (among others) on `/metrics`; 0 when
    /// the series does not exist yet.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, text) = self.http_get("/metrics").await;
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        text.lines()
            .find(|l| {
                l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x.as_str()))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until a log line matches `re`; returns it.
    pub async fn wait_log(&self, re: &str) -> String {
        let rx = regex_lite(re);
        for _ in 0..200 {
            if let Some(l) = self.log_text().lines().find(|l| rx(l)) {
                return l.to_string();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no log line matching {re:?}; log:\n{}", self.log_text());
    }

    /// Message ids with an envelope in spool/queue.
    pub fn queued_mids(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .queued()
            .iter()
            .filter_map(|n| n.strip_suffix(".env")?.parse().ok())
            .collect();
        v.sort_unstable();
        v
    }

    /// Files in spool/queue.
    pub fn queued(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.spool.join("queue"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Stops the server.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(2)).await;
        }
    }
}

/// A tiny matcher: the pattern is a literal except `\d+` (digits) and `.*` (anything).
pub fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool {
    let pat = pattern.to_string();
    move |s: &str| {
        (0..=s.len()).any(|start| s.is_char_boundary(start) && match_at(&pat, &s[start..]))
    }
}

fn match_at(p: &str, s: &str) -> bool {
    if p.is_empty() {
        return true;
    }
    if let Some(rest) = p.strip_prefix("\\d+") {
        let n = s.bytes().take_while(|b| b.is_ascii_digit()).count();
        return (1..=n).rev().any(|k| match_at(rest, &s[k..]));
    }
    if let Some(rest) = p.strip_prefix(".*") {
        return (0..=s.len()).any(|k| s.is_char_boundary(k) && match_at(rest, &s[k..]));
    }
    let c = p.chars().next().unwrap();
    s.starts_with(c) && match_at(&p[c.len_utf8()..], &s[c.len_utf8()..])
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

#[derive(Debug)]
struct AcceptAny;

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

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// A copy of the e2e fixture whose default route goes to `downstream`, with fast retries.
pub fn relay_config(downstream: SocketAddr, retry_initial: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("tests/fixtures/e2e"), dir.path());
    std::fs::write(
        dir.path().join("policies/routes.yaml"),
        format!(
            "routes:\n  - domain: ALL\n    hosts:\n      - host: {}\n        port: {}\n",
            downstream.ip(),
            downstream.port()
        ),
    )
    .unwrap();
    let global = std::fs::read_to_string(dir.path().join("mxgate.yaml")).unwrap();
    std::fs::write(
        dir.path().join("mxgate.yaml"),
        format!("{global}delivery:\n  retry_initial: {retry_initial}\n  retry_max: {retry_initial}\n  hostname: mx.test.example\n"),
    )
    .unwrap();
    dir
}

/// Polls `f` until it holds; panics naming `what` after 30 s (a generous bound for a loaded
/// 2-core CI machine; the usual wait is well under a second).
pub async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Unmounts a tmpfs when dropped.
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A 64 KiB tmpfs at `dir/spool`, to fill up: `None` (after printing SKIP) when it cannot be
/// mounted, which CI, running as root, must always be able to do.
pub fn tiny_tmpfs(dir: &Path) -> Option<(PathBuf, Unmount)> {
    tmpfs(dir, "64k")
}

/// A tmpfs of `size` (mount's syntax: `2m`) at `dir/spool`, like [`tiny_tmpfs`].
pub fn tmpfs(dir: &Path, size: &str) -> Option<(PathBuf, Unmount)> {
    let mnt = dir.join("spool");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root and must be able to mount a tmpfs"
        );
        eprintln!("SKIP: cannot mount tmpfs (not root)");
        return None;
    }
    Some((mnt.clone(), Unmount(mnt)))
}

/// A loopback port nothing listens on (it was free a moment ago): a downstream that is down.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The number after `key` (`"ICID "`, `"DCID "`, `"MID "`) in a mail-log line.
pub fn id_after(line: &str, key: &str) -> u64 {
    line.split(key)
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {key:?} number in {line:?}"))
}

/// [`closed_port`] on 127.0.0.1: the address of an internal server that is down.
pub fn closed_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], closed_port()))
}

/// A `mxgate serve` child process, killed when dropped.
pub struct ServeChild(pub std::process::Child);

impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ServeChild {
    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        assert!(self.0.wait().unwrap().success());
    }
}

/// `mxgate serve` as a child process: the config in `cfg`, spool, certs and mail log in
/// `work`. Returns it and the address of the `preferred` listener, learnt from its
/// "listening on" line.
pub fn spawn_serve(cfg: &Path, work: &Path) -> (ServeChild, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mxgate"))
        .arg("serve")
        .arg("--config-dir")
        .arg(cfg)
        .arg("--spool-dir")
        .arg(work.join("spool"))
        .arg("--certs-dir")
        .arg(work.join("certs"))
        .arg("--mail-log")
        .arg(work.join("mail.log"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let l = lines.next().expect("server exited early").unwrap();
        if let Some(a) = l.strip_prefix("mxgate: listener preferred listening on ") {
            break a.parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (ServeChild(child), addr)
}
