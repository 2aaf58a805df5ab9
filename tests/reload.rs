//! Live reload: SIGHUP / `mxgate reload` / a changed certificate file apply a new configuration
//! to new connections while open sessions finish; a broken configuration is refused whole.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use support::{copy_dir, repo, Client, Mxgate};
use tokio::net::TcpStream;

/// Connects through the PROXY listener as `ip`; returns the client and the first reply.
async fn connect_as(addr: SocketAddr, ip: &str) -> (Client<TcpStream>, String) {
    let mut c = Client::connect(addr, Some(ip)).await;
    let greet = c.reply().await;
    (c, greet)
}

#[tokio::test]
async fn broken_policy_keeps_the_old_hat_and_a_good_one_applies_to_new_connections_only() {
    let cfg = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("tests/fixtures/e2e"), cfg.path());
    let srv = Mxgate::start(cfg.path(), work.path());
    let proxied = srv.addr("proxied");
    let (_, greet) = connect_as(proxied, "192.0.2.20").await;
    assert!(greet.starts_with("554 5.7.1"), "{greet}");
    // A session opened under the old configuration.
    let (mut old, greet) = connect_as(proxied, "198.51.100.9").await;
    assert!(greet.starts_with("220 "), "{greet}");
    assert!(old.cmd("EHLO old.session").await.starts_with("250-"));

    // Broken: a misspelt policy. SIGHUP must keep the old configuration.
    let hat = cfg.path().join("policies/hat.yaml");
    let good = std::fs::read_to_string(&hat).unwrap();
    std::fs::write(&hat, good.replacen("policy: BLOCKED", "policy: BLOKED", 1)).unwrap();
    let out = srv.ctl(&["reload"]).output().unwrap();
    assert!(
        !out.status.success(),
        "mxgate reload validates before signalling"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown policy \"BLOKED\""));
    srv.signal(libc::SIGHUP);
    srv.wait_log("reload refused, old configuration kept: policies/hat.yaml:");
    srv.wait_log("unknown policy \"BLOKED\"");
    let (_, greet) = connect_as(proxied, "192.0.2.20").await;
    assert!(greet.starts_with("554 5.7.1"), "still the old HAT: {greet}");

    // Good: 192.0.2.20 leaves the block list.
    std::fs::write(
        &hat,
        good.replacen("match: [192.0.2.20, 192.0.2.60]", "match: [192.0.2.60]", 1),
    )
    .unwrap();
    let out = srv.ctl(&["reload"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    srv.wait_log("configuration reloaded");
    let (mut fresh, greet) = connect_as(proxied, "192.0.2.20").await;
    assert!(
        greet.starts_with("220 "),
        "new HAT for new connections: {greet}"
    );
    assert!(fresh.cmd("QUIT").await.starts_with("221"));
    // The session opened before the reload still works to the end.
    assert!(old.cmd("NOOP").await.starts_with("250 2.0.0"));
    assert!(old
        .cmd("MAIL FROM:<a@other.example>")
        .await
        .starts_with("250"));
    assert!(old.cmd("QUIT").await.starts_with("221"));
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

#[tokio::test]
async fn a_renewed_certificate_is_served_without_restart_while_open_sessions_continue() {
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
    let srv = Mxgate::start(cfg.path(), work.path());
    let addr = srv.addr("preferred");
    let before = openssl_subject(addr);
    assert!(before.contains("mx.test.example"), "{before}");
    // A session opened before the renewal.
    let mut old = Client::connect(addr, None).await;
    old.reply().await;
    assert!(old.cmd("EHLO old.session").await.starts_with("250-"));
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
        old.cmd("NOOP").await.starts_with("250 2.0.0"),
        "the old session keeps working"
    );
    assert!(old.cmd("QUIT").await.starts_with("221"));
}
