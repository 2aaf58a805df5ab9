//! Live reload: SIGHUP / `mxgate reload` / a changed certificate file apply a new configuration
//! to new connections while open sessions finish; a broken configuration is refused whole.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{copy_dir, repo};

struct Server {
    child: Child,
    ports: std::collections::HashMap<String, SocketAddr>,
    cfg: PathBuf,
    work: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(cfg: &Path, work: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mxgate"))
            .arg("serve")
            .args(Self::args(cfg, work))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut ports = std::collections::HashMap::new();
        let listeners = std::fs::read_dir(cfg.join("listeners")).unwrap().count();
        while ports.len() < listeners {
            let l = lines.next().expect("server exited early").unwrap();
            if let Some(rest) = l.strip_prefix("mxgate: listener ") {
                let (name, addr) = rest.split_once(" listening on ").unwrap();
                ports.insert(name.to_string(), addr.parse().unwrap());
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            ports,
            cfg: cfg.to_path_buf(),
            work: work.to_path_buf(),
        }
    }

    fn args(cfg: &Path, work: &Path) -> Vec<String> {
        vec![
            "--config-dir".into(),
            cfg.display().to_string(),
            "--spool-dir".into(),
            work.join("spool").display().to_string(),
            "--certs-dir".into(),
            work.join("certs").display().to_string(),
            "--mail-log".into(),
            work.join("mail.log").display().to_string(),
        ]
    }

    fn reload_cmd(&self) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_mxgate"))
            .arg("reload")
            .args(Self::args(&self.cfg, &self.work))
            .output()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.work.join("mail.log")).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("no {needle:?} in log:\n{}", self.log());
    }
}

/// Connects through the PROXY listener as `ip`; returns the stream and the first reply.
fn connect_as(addr: SocketAddr, ip: &str) -> (BufReader<TcpStream>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "PROXY TCP4 {ip} 127.0.0.1 40000 25\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let _ = r.read_line(&mut line);
    (r, line)
}

fn cmd(r: &mut BufReader<TcpStream>, line: &str) -> String {
    r.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .unwrap();
    let mut all = String::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap_or(0) == 0 {
            return all;
        }
        all.push_str(&l);
        if l.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

#[test]
fn broken_policy_keeps_the_old_hat_and_a_good_one_applies_to_new_connections_only() {
    let cfg = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("tests/fixtures/e2e"), cfg.path());
    let srv = Server::start(cfg.path(), work.path());
    let proxied = srv.ports["proxied"];
    let (_, greet) = connect_as(proxied, "192.0.2.20");
    assert!(greet.starts_with("554 5.7.1"), "{greet}");
    // A session opened under the old configuration.
    let (mut old, greet) = connect_as(proxied, "198.51.100.9");
    assert!(greet.starts_with("220 "), "{greet}");
    assert!(cmd(&mut old, "EHLO old.session").starts_with("250-"));

    // Broken: a misspelt policy. SIGHUP must keep the old configuration.
    let hat = cfg.path().join("policies/hat.yaml");
    let good = std::fs::read_to_string(&hat).unwrap();
    std::fs::write(&hat, good.replacen("policy: BLOCKED", "policy: BLOKED", 1)).unwrap();
    let out = srv.reload_cmd();
    assert!(
        !out.status.success(),
        "mxgate reload validates before signalling"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown policy \"BLOKED\""));
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGHUP) };
    srv.wait_log("reload refused, old configuration kept: policies/hat.yaml:");
    srv.wait_log("unknown policy \"BLOKED\"");
    let (_, greet) = connect_as(proxied, "192.0.2.20");
    assert!(greet.starts_with("554 5.7.1"), "still the old HAT: {greet}");

    // Good: 192.0.2.20 leaves the block list.
    std::fs::write(
        &hat,
        good.replacen("match: [192.0.2.20, 192.0.2.60]", "match: [192.0.2.60]", 1),
    )
    .unwrap();
    let out = srv.reload_cmd();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    srv.wait_log("configuration reloaded");
    let (mut fresh, greet) = connect_as(proxied, "192.0.2.20");
    assert!(
        greet.starts_with("220 "),
        "new HAT for new connections: {greet}"
    );
    assert!(cmd(&mut fresh, "QUIT").starts_with("221"));
    // The session opened before the reload still works to the end.
    assert!(cmd(&mut old, "NOOP").starts_with("250 2.0.0"));
    assert!(cmd(&mut old, "MAIL FROM:<a@other.example>").starts_with("250"));
    assert!(cmd(&mut old, "QUIT").starts_with("221"));
}

fn openssl_subject(addr: SocketAddr) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-starttls",
            "smtp",
            "-connect",
            &addr.to_string(),
            "-servername",
            "mx.test.example",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    drop(child.stdin.take());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = child.wait();
    out.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .to_string()
}

#[test]
fn a_renewed_certificate_is_served_without_restart_while_open_sessions_continue() {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "openssl must be installed in CI"
        );
        eprintln!("SKIP: openssl missing");
        return;
    }
    let cfg = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("tests/fixtures/e2e"), cfg.path());
    let srv = Server::start(cfg.path(), work.path());
    let addr = srv.ports["preferred"];
    let before = openssl_subject(addr);
    assert!(before.contains("mx.test.example"), "{before}");
    // A session opened before the renewal.
    let mut old = BufReader::new(TcpStream::connect(addr).unwrap());
    let mut greet = String::new();
    old.read_line(&mut greet).unwrap();
    assert!(cmd(&mut old, "EHLO old.session").starts_with("250-"));
    // Renew: a new key and certificate with another subject, written over the demo files.
    let certs = work.path().join("certs");
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
        ])
        .args([
            "-subj",
            "/CN=renewed.test.example",
            "-addext",
            "subjectAltName=DNS:renewed.test.example",
        ])
        .arg("-keyout")
        .arg(certs.join("new.key"))
        .arg("-out")
        .arg(certs.join("new.crt"))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    std::fs::rename(certs.join("new.key"), certs.join("demo.key")).unwrap();
    std::fs::rename(certs.join("new.crt"), certs.join("demo.crt")).unwrap();
    // No signal: the file change is noticed.
    srv.wait_log("certificate file changed: reloading");
    srv.wait_log("configuration reloaded");
    let after = openssl_subject(addr);
    assert!(after.contains("renewed.test.example"), "{after}");
    assert!(
        cmd(&mut old, "NOOP").starts_with("250 2.0.0"),
        "the old session keeps working"
    );
    assert!(cmd(&mut old, "QUIT").starts_with("221"));
}
