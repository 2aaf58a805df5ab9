//! The gateway in-process: `mxgate::app::start` on a fixture configuration, every listener on
//! `127.0.0.1:0`, with its own spool, certificates and mail log in a temporary directory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mxgate::app::Running;
use mxgate::config::model::MailLogTarget;
use mxgate::config::{load, Overrides};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::repo;

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
        super::parse_http(&text)
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

    /// Waits until a mail-log line matches `pattern` (see [`super::log`]); returns it.
    pub async fn wait_log(&self, pattern: &str) -> String {
        super::log::wait_after_async(&self.log, 0, pattern)
            .await
            .line
    }

    /// The first mail-log line after byte `mark` matching `pattern`, waited for: its captures
    /// and its end (the mark for the next line, to wait for lines in order).
    pub async fn wait_log_after(&self, mark: usize, pattern: &str) -> super::log::Found {
        super::log::wait_after_async(&self.log, mark, pattern).await
    }

    /// Message ids with a queue file in spool/queue.
    pub fn queued_mids(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .queued()
            .iter()
            .filter_map(|n| n.strip_suffix(".mail")?.parse().ok())
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
