//! A private redis-server (Debian `redis-server`) on 127.0.0.1 for the shared-state tests:
//! its own port (picked free: `--port 0` is not allowed), no persistence, a temporary
//! directory; optionally a TLS port and a password ([`Redis::start_tls`]). [`Redis::stop`]
//! kills it (the store goes down), [`Redis::restart`] brings it back empty on the same port,
//! [`Redis::pause`] and [`Redis::resume`] make it hang and wake up. Killed on drop.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server binary.
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A private redis-server; killed on drop.
pub struct Redis {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its TLS port, with the certificate and key files it presents.
    pub tls: Option<(u16, PathBuf, PathBuf)>,
    /// The password it requires (`requirepass`).
    pub password: Option<String>,
    /// Started as a Redis Cluster node (`cluster-enabled yes`, no slots assigned).
    cluster: bool,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one, or prints SKIP and returns `None` where redis-server is not installed
    /// (CI must have it: it fails there).
    pub fn start() -> Option<Redis> {
        Self::launch(None, None, false)
    }

    /// [`Redis::start`] as a lone Redis Cluster node.
    pub fn start_cluster_node() -> Option<Redis> {
        Self::launch(None, None, true)
    }

    /// [`Redis::start`] with a TLS port presenting `cert`/`key` (PEM files) and, with
    /// `password`, `requirepass` on both ports.
    pub fn start_tls(cert: &Path, key: &Path, password: Option<&str>) -> Option<Redis> {
        let tls = (super::free_port(), cert.to_path_buf(), key.to_path_buf());
        Self::launch(Some(tls), password, false)
    }

    fn launch(
        tls: Option<(u16, PathBuf, PathBuf)>,
        password: Option<&str>,
        cluster: bool,
    ) -> Option<Redis> {
        if !super::tools_available(&[REDIS_SERVER]) {
            return None;
        }
        let mut r = Redis {
            child: None,
            port: super::free_port(),
            tls,
            password: password.map(str::to_string),
            cluster,
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

    /// Stops the server's process (SIGSTOP): connections stay open and commands queue up
    /// unanswered, as with a store that hangs.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT): it answers what queued up meanwhile.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig} {pid}");
    }

    /// How many times the server ran `command` since the last `CONFIG RESETSTAT` (from
    /// `INFO commandstats`; calls from scripts count too).
    pub fn calls(&self, command: &str) -> u64 {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("redis");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
            .unwrap();
        let mut r = BufReader::new(s);
        let mut head = String::new();
        r.read_line(&mut head).unwrap();
        let len: usize = head
            .trim_end()
            .trim_start_matches('$')
            .parse()
            .expect("bulk");
        let mut body = vec![0u8; len];
        std::io::Read::read_exact(&mut r, &mut body).unwrap();
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("cmdstat_{command}:calls="))?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// (Re)starts the server on its port, empty, and waits until it answers PING.
    pub fn restart(&mut self) {
        self.stop();
        let mut cmd = Command::new(REDIS_SERVER);
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        if let Some((port, cert, key)) = &self.tls {
            cmd.args(["--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .args(["--tls-auth-clients", "no"]);
        }
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes"]);
        }
        let child = cmd
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
        let mut req = String::new();
        let auth;
        let mut commands: Vec<&[&str]> = Vec::new();
        if let Some(p) = &self.password {
            auth = ["AUTH", p.as_str()];
            commands.push(&auth);
        }
        commands.push(args);
        for c in &commands {
            req.push_str(&format!("*{}\r\n", c.len()));
            for a in c.iter() {
                req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        if self.password.is_some() {
            r.read_line(&mut line).ok()?;
            if line.trim_end() != "+OK" {
                return None;
            }
            line.clear();
        }
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
