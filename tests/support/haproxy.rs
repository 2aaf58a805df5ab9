//! A private HAProxy (Debian `haproxy`) in TCP mode sending PROXY headers to its backends:
//! one backend per frontend ([`Haproxy::start`]) or one frontend balanced round-robin over
//! several ([`Haproxy::start_balanced`]). Killed on drop; `None` (after SKIP) where it is not
//! installed, which CI must never be.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A running HAProxy in TCP mode; killed on drop.
pub struct Haproxy {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// `routes`: (frontend port, backend address, `send-proxy` or `send-proxy-v2`).
    pub fn start(routes: &[(u16, SocketAddr, &str)]) -> Option<Haproxy> {
        let mut cfg = String::new();
        for (i, (port, backend, send)) in routes.iter().enumerate() {
            cfg.push_str(&format!(
                "frontend f{i}\n  bind 127.0.0.1:{port}\n  default_backend b{i}\nbackend b{i}\n  server s{i} {backend} {send}\n"
            ));
        }
        let ports: Vec<u16> = routes.iter().map(|r| r.0).collect();
        Self::run(&cfg, &ports)
    }

    /// One frontend on `port` balancing connections round-robin over `backends`, each sent
    /// a PROXY v2 header.
    pub fn start_balanced(port: u16, backends: &[SocketAddr]) -> Option<Haproxy> {
        let mut cfg = format!(
            "frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\nbackend b\n  balance roundrobin\n"
        );
        for (i, b) in backends.iter().enumerate() {
            cfg.push_str(&format!("  server s{i} {b} send-proxy-v2\n"));
        }
        Self::run(&cfg, &[port])
    }

    /// Checks and starts HAProxy on `sections`; returns once every port in `ports` is bound.
    fn run(sections: &str, ports: &[u16]) -> Option<Haproxy> {
        let bin = "/usr/sbin/haproxy";
        if !Path::new(bin).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "haproxy must be installed in CI (Debian package haproxy)"
            );
            eprintln!("SKIP: haproxy not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n{sections}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, &cfg).unwrap();
        let check = std::process::Command::new(bin)
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("haproxy -c");
        assert!(
            check.status.success(),
            "haproxy config:\n{cfg}\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = std::process::Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start haproxy");
        let h = Haproxy { child, _dir: dir };
        // Ready once every frontend port is taken. Probing with a connection would make
        // HAProxy open a backend connection (and send a PROXY header) for the probe.
        for port in ports {
            let mut up = false;
            for _ in 0..250 {
                if std::net::TcpListener::bind(("127.0.0.1", *port)).is_err() {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(up, "haproxy did not listen on {port}");
        }
        Some(h)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
