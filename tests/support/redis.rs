//! A private redis-server (Debian `redis-server`) on 127.0.0.1 for the shared-state tests:
//! its own port (picked free: `--port 0` is not allowed), no persistence, a temporary
//! directory. [`Redis::stop`] kills it (the store goes down) and [`Redis::restart`] brings
//! it back empty on the same port. Killed on drop.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server binary.
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A private redis-server; killed on drop.
pub struct Redis {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one, or prints SKIP and returns `None` where redis-server is not installed
    /// (CI must have it: it fails there).
    pub fn start() -> Option<Redis> {
        if !super::tools_available(&[REDIS_SERVER]) {
            return None;
        }
        let mut r = Redis {
            child: None,
            port: super::free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart();
        Some(r)
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server: every connection to it breaks, new ones are refused.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts the server on its port, empty, and waits until it answers PING.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs one command; its first reply line (`+OK`, `:3`, `$2` then the value for a bulk
    /// string: the value is returned). Panics when the server does not answer.
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args)
            .unwrap_or_else(|| panic!("redis on {} did not answer {args:?}", self.port))
    }

    fn try_command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let line = line.trim_end().to_string();
        if line.starts_with('$') && line != "$-1" {
            let mut value = String::new();
            r.read_line(&mut value).ok()?;
            return Some(value.trim_end().to_string());
        }
        Some(line)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
