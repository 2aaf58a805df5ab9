//! A real Prometheus server (Debian package `prometheus`) for the test, and its HTTP query API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::json::Json;

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Finds a tool: an absolute path that exists, else a name on PATH.
pub fn tool(candidates: &[&str]) -> Option<PathBuf> {
    for c in candidates {
        let p = Path::new(c);
        if p.is_absolute() {
            if p.exists() {
                return Some(p.to_path_buf());
            }
        } else if let Some(paths) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&paths) {
                let f = dir.join(c);
                if f.is_file() {
                    return Some(f);
                }
            }
        }
    }
    None
}

/// Under CI a missing tool is a failure; elsewhere the caller prints `SKIP:` and returns.
pub fn require(test: &str, what: Option<PathBuf>, install_hint: &str) -> Option<PathBuf> {
    match what {
        Some(p) => Some(p),
        None if std::env::var_os("CI").is_some() => {
            panic!("{test}: {install_hint} is missing (tests/run.sh installs it)")
        }
        None => {
            eprintln!("SKIP: {test}: {install_hint} is not installed");
            None
        }
    }
}

/// Percent-encodes a query-string value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One HTTP/1.0 GET; returns the status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP header end in {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad status line in {head:?}"))?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .map_err(|_| format!("GET {path}: timeout"))?
}

/// One sample of a query result: labels and value (NaN and ±Inf included).
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A running Prometheus, killed on drop.
pub struct Prometheus {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Prometheus {
    /// Starts `binary` on `config` (already written in `dir`) with its TSDB in `dir/data`.
    pub fn start(binary: &Path, dir: tempfile::TempDir, config: &Path) -> Prometheus {
        let addr = free_addr();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        Prometheus { addr, dir, child }
    }

    /// Prometheus's own log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Waits for `/-/ready`.
    pub async fn wait_ready(&mut self) {
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            if let Ok((200, _)) = http_get(self.addr, "/-/ready").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("prometheus not ready after 30 s:\n{}", self.log());
    }

    /// GETs an API path and returns `data` when `status` is `success`.
    pub async fn api(&self, path: &str) -> Result<Json, String> {
        let (code, body) = http_get(self.addr, path).await?;
        let v = Json::parse(&body).map_err(|e| format!("{e} in {body:?}"))?;
        if v.get("status").str() != Some("success") {
            return Err(format!(
                "HTTP {code}: {} {}",
                v.get("errorType").str().unwrap_or("?"),
                v.get("error").str().unwrap_or(&body)
            ));
        }
        Ok(v.get("data").clone())
    }

    /// Evaluates an instant query; a scalar or string result is one sample without labels.
    pub async fn query(&self, q: &str) -> Result<Vec<Sample>, String> {
        let data = self
            .api(&format!("/api/v1/query?query={}", urlencode(q)))
            .await?;
        let value_of = |v: &Json| -> f64 {
            match v.at("1").str() {
                Some("NaN") => f64::NAN,
                Some("+Inf") => f64::INFINITY,
                Some("-Inf") => f64::NEG_INFINITY,
                Some(s) => s.parse().unwrap_or(f64::NAN),
                None => f64::NAN,
            }
        };
        match data.get("resultType").str() {
            Some("vector") => Ok(data
                .get("result")
                .arr()
                .iter()
                .map(|r| Sample {
                    labels: r
                        .get("metric")
                        .obj()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.str().unwrap_or("").to_string()))
                        .collect(),
                    value: value_of(r.get("value")),
                })
                .collect()),
            Some("scalar") | Some("string") => Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: value_of(data.get("result")),
            }]),
            Some("matrix") => Ok(data
                .get("result")
                .arr()
                .iter()
                .map(|r| Sample {
                    labels: BTreeMap::new(),
                    value: r
                        .get("values")
                        .arr()
                        .last()
                        .map(value_of)
                        .unwrap_or(f64::NAN),
                })
                .collect()),
            other => Err(format!("unexpected resultType {other:?}")),
        }
    }

    /// The single value of a query, `None` when it returns no sample.
    pub async fn value(&self, q: &str) -> Result<Option<f64>, String> {
        let r = self.query(q).await?;
        match r.as_slice() {
            [] => Ok(None),
            [s] => Ok(Some(s.value)),
            many => Err(format!(
                "{q}: {} samples, expected one: {many:?}",
                many.len()
            )),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command; returns (success, stdout + stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
