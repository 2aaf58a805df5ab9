//! A private Debian `redis-server` on 127.0.0.1: a free port, no persistence, its files in a
//! temp dir; killed when dropped, and killable and restartable on the same port (a store that
//! goes away mid-test and comes back).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) private redis-server.
pub struct Redis {
    /// Where it listens.
    pub addr: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

/// True when `redis-server` is installed; otherwise prints SKIP (a failure under CI).
pub fn redis_available() -> bool {
    super::tools_available(&["redis-server"])
}

/// A private redis-server in `dir`, or `None` after printing SKIP (a failure under CI).
pub fn start_or_skip(dir: &Path) -> Option<Redis> {
    if !redis_available() {
        return None;
    }
    let mut r = Redis {
        addr: SocketAddr::from(([127, 0, 0, 1], super::free_port())),
        dir: dir.to_path_buf(),
        child: None,
    };
    r.start();
    Some(r)
}

impl Redis {
    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Starts it (again) on its port and waits until it answers PING.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let log = std::fs::File::create(self.dir.join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &self.addr.port().to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let t0 = Instant::now();
        while self.cli(&["PING"]).as_deref() != Some("PONG") {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "redis-server did not answer PING:\n{}",
                std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL: a store that is simply gone) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One command over RESP on a fresh connection: the reply as text (`None` when it did not
    /// answer). Simple strings, integers and bulk strings; a nil bulk is `(nil)`.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        use std::io::{BufRead, BufReader, Read, Write};
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let line = line.trim_end();
        let (kind, rest) = line.split_at(1.min(line.len()));
        match kind {
            "+" | ":" | "-" => Some(rest.to_string()),
            "$" => {
                let n: i64 = rest.parse().ok()?;
                if n < 0 {
                    return Some("(nil)".into());
                }
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf).ok()?;
                buf.truncate(n as usize);
                String::from_utf8(buf).ok()
            }
            _ => None,
        }
    }

    /// The keys matching `pattern` (`KEYS`: test stores are small), sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        use std::io::{BufRead, BufReader, Write};
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).unwrap();
        let req = format!("*2\r\n$4\r\nKEYS\r\n${}\r\n{pattern}\r\n", pattern.len());
        s.write_all(req.as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let n: usize = line.trim_end().trim_start_matches('*').parse().unwrap();
        let mut keys = Vec::new();
        for _ in 0..n {
            line.clear();
            r.read_line(&mut line).unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            keys.push(line.trim_end().to_string());
        }
        keys.sort();
        keys
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
