//! The built binary as a guarded child process: `mxgate serve` on a configuration directory,
//! with its spool, certificates and mail log in a work directory. The ports (listeners bound
//! as `:0`, the metrics endpoint) are learnt from its "listening on" lines on stderr, which is
//! captured for assertions. The process is killed when the guard is dropped.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::log::{self, Found};

/// How long start-up and a wait on stderr may take on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variables the CLI also reads: a developer's shell must not change what the
/// tests run.
const ENV_VARS: [&str; 6] = [
    "MXGATE_CONFIG_DIR",
    "MXGATE_SPOOL_DIR",
    "MXGATE_MAIL_LOG",
    "MXGATE_CERTS_DIR",
    "MXGATE_BIND",
    "MXGATE_DNS_RESOLVERS",
];

/// The built `mxgate` binary.
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mxgate"));
    for var in ENV_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// A running `mxgate serve`; SIGKILL when dropped.
pub struct Mxgate {
    child: Option<Child>,
    cfg: PathBuf,
    work: PathBuf,
    stderr: Arc<Mutex<String>>,
    /// The work directory when the guard made it.
    _tmp: Option<tempfile::TempDir>,
}

impl Mxgate {
    /// The path arguments of every command: configuration in `cfg`; spool, certificates and
    /// mail log in `work`.
    pub fn path_args(cfg: &Path, work: &Path) -> Vec<OsString> {
        vec![
            "--config-dir".into(),
            cfg.into(),
            "--spool-dir".into(),
            work.join("spool").into(),
            "--certs-dir".into(),
            work.join("certs").into(),
            "--mail-log".into(),
            work.join("mail.log").into(),
        ]
    }

    /// `mxgate serve` with the path arguments and `extra` ones, not started.
    pub fn command(cfg: &Path, work: &Path, extra: &[&str]) -> Command {
        let mut cmd = bin();
        cmd.arg("serve")
            .args(Self::path_args(cfg, work))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    /// Starts `mxgate serve` on `cfg` with spool, certificates and mail log in `work`.
    pub fn start(cfg: &Path, work: &Path) -> Mxgate {
        Self::start_with(cfg, work, &[])
    }

    /// [`Mxgate::start`] with a fresh temporary work directory, removed with the guard.
    pub fn start_in_temp(cfg: &Path) -> Mxgate {
        Self::start_in_temp_with(cfg, &[])
    }

    /// [`Mxgate::start_in_temp`] with `extra` arguments, as [`Mxgate::start_with`].
    pub fn start_in_temp_with(cfg: &Path, extra: &[&str]) -> Mxgate {
        let tmp = tempfile::tempdir().unwrap();
        let mut m = Self::start_with(cfg, tmp.path(), extra);
        m._tmp = Some(tmp);
        m
    }

    /// [`Mxgate::start`] with `extra` arguments (`--bind NAME=127.0.0.1:0`,
    /// `--metrics-listen 127.0.0.1:0`). Returns once the server has written its pid file,
    /// which it does after binding every listener and printing their addresses.
    pub fn start_with(cfg: &Path, work: &Path, extra: &[&str]) -> Mxgate {
        let mut child = Self::command(cfg, work, extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mxgate");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr pipe");
        let out = stderr.clone();
        // Drain stderr for the whole run so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = out.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut m = Mxgate {
            child: Some(child),
            cfg: cfg.to_path_buf(),
            work: work.to_path_buf(),
            stderr,
            _tmp: None,
        };
        let pid = format!("{}\n", m.pid());
        m.wait_for("its pid file", |m| {
            std::fs::read_to_string(m.spool().join("mxgate.pid")).ok() == Some(pid.clone())
        });
        m
    }

    /// Polls `ready` until it holds; panics with stderr when the server exits or after
    /// [`START_TIMEOUT`].
    fn wait_for(&mut self, what: &str, mut ready: impl FnMut(&Mxgate) -> bool) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !ready(self) {
            if let Some(status) = self.child_mut().try_wait().expect("try_wait") {
                panic!(
                    "mxgate exited waiting for {what} ({status}); stderr:\n{}",
                    self.stderr_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mxgate: no {what} within {START_TIMEOUT:?}; stderr:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("server already reaped")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server already reaped").id()
    }

    /// `mxgate SUBCOMMAND` with the same path arguments (`reload`, `queue list`, …), not run.
    pub fn ctl(&self, subcommand: &[&str]) -> Command {
        let mut cmd = bin();
        cmd.args(subcommand)
            .args(Self::path_args(&self.cfg, &self.work));
        cmd
    }

    /// The address printed for `what` ("listener NAME" or "metrics"), waited for.
    fn printed_addr(&self, prefix: &str) -> SocketAddr {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = self.stderr_text();
            if let Some(a) = text.lines().find_map(|l| l.strip_prefix(prefix)) {
                let a = a.trim_start_matches("http://").trim_end_matches("/metrics");
                return a
                    .parse()
                    .unwrap_or_else(|e| panic!("bad address {a:?} on stderr: {e}"));
            }
            assert!(
                Instant::now() < deadline,
                "no line starting {prefix:?} on stderr:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The address of listener `name`, from its "listening on" line.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.printed_addr(&format!("mxgate: listener {name} listening on "))
    }

    /// The port of listener `name`.
    pub fn port(&self, name: &str) -> u16 {
        self.addr(name).port()
    }

    /// The address of the metrics endpoint (`--metrics-listen` or the configuration).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.printed_addr("mxgate: metrics listening on ")
    }

    /// `GET /metrics` from the metrics endpoint (started with `--metrics-listen 127.0.0.1:0`).
    pub fn metrics_text(&self) -> String {
        self.http_get_raw("/metrics")
    }

    /// The whole HTTP response to `GET path` on the metrics endpoint.
    fn http_get_raw(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.metrics_addr()).expect("metrics endpoint");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// Status code and body of `GET path` on the metrics endpoint (`/ready`, `/metrics`).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let text = self.http_get_raw(path);
        super::parse_http(&text)
    }

    /// The value of the series `name` carrying these `labels` (among others) on `/metrics`;
    /// 0 when no such series exists yet.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics_text();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        text.lines()
            .find(|l| {
                l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x.as_str()))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }

    /// The port of the MTA-STS policy endpoint (`policies/mta_sts.yaml` with port 0), from
    /// its "listening on" line on stderr.
    pub fn mta_sts_port(&self) -> u16 {
        let prefix = "mxgate: mta-sts listening on ";
        self.wait_stderr(prefix);
        self.stderr_text()
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .expect("mta-sts address on stderr")
            .port()
    }

    /// What the server wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Polls stderr until it contains `needle`.
    pub fn wait_stderr(&self, needle: &str) {
        let deadline = Instant::now() + log::LOG_TIMEOUT;
        while !self.stderr_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "stderr never showed {needle:?}:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` to the server.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Waits for the server to exit; `None` when it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for the exit and asserts it was clean.
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let status = self.child_mut().wait().unwrap();
        self.child = None;
        assert!(status.success(), "{status:?}");
    }

    /// SIGKILL (as `kill -9`) and reaps the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// The work directory.
    pub fn work(&self) -> &Path {
        &self.work
    }

    /// The spool directory.
    pub fn spool(&self) -> PathBuf {
        self.work.join("spool")
    }

    /// The mail log's path.
    pub fn log_path(&self) -> PathBuf {
        self.work.join("mail.log")
    }

    /// The mail log so far.
    pub fn log_text(&self) -> String {
        log::read(&self.log_path())
    }

    /// The current end of the mail log: later waits can look only at what follows.
    pub fn log_mark(&self) -> usize {
        log::mark(&self.log_path())
    }

    /// The mail log after `mark`.
    pub fn log_since(&self, mark: usize) -> String {
        let text = self.log_text();
        text.get(mark..).unwrap_or_default().to_string()
    }

    /// Waits for a mail-log line matching `pattern` (see [`super::log`]); returns the line.
    pub fn wait_log(&self, pattern: &str) -> String {
        log::wait_after(&self.log_path(), 0, pattern).line
    }

    /// Waits for a mail-log line after `mark` matching `pattern`.
    pub fn wait_log_after(&self, mark: usize, pattern: &str) -> Found {
        log::wait_after(&self.log_path(), mark, pattern)
    }
}

impl Drop for Mxgate {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
