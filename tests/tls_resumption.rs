//! TLS session resumption for returning senders (issue 16): the built binary on the e2e
//! fixture (listener `preferred`, its demo certificate), and real resuming clients.
//! `openssl s_client -sess_out` then `-sess_in` must print `Reused` for TLS 1.3 (tickets),
//! TLS 1.2 with tickets and TLS 1.2 with session ids only (the server's cache). Python's `ssl`
//! checks that resumption is sized for an MX: a TLS 1.2 session id and a TLS 1.3 ticket still
//! resume after 300 other senders' full handshakes (rustls's default cache holds 256 sessions,
//! and its TLS 1.3 tickets without a ticketer are entries of that cache, two per handshake).
//!
//! A missing `openssl` or `python3` prints `SKIP:` (fails under `CI`).

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use support::mxgate::Mxgate;

fn start() -> Mxgate {
    Mxgate::start_in_temp(&support::repo().join("tests/fixtures/e2e"))
}

/// `openssl s_client -starttls smtp` saying EHLO and QUIT; returns stdout and stderr.
fn s_client(port: u16, extra: &[&str]) -> String {
    let connect = format!("127.0.0.1:{port}");
    let mut args = vec![
        "s_client",
        "-starttls",
        "smtp",
        "-connect",
        &connect,
        "-servername",
        "mx.test.example",
        // Read to the server's close after stdin (the tickets and the replies), and never
        // take `QUIT` as the `Q` command letter.
        "-ign_eof",
        "-nocommands",
    ];
    args.extend_from_slice(extra);
    let mut child = Command::new("openssl")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(b"EHLO resume.client.example\r\nQUIT\r\n")
        .unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "s_client failed:\n{all}");
    assert!(all.contains("221 "), "no reply to QUIT:\n{all}");
    all
}

/// A full handshake saving its session to a file, then one resuming it: the second must say
/// `Reused, <version>`, the first `New, <version>`.
fn resumes(port: u16, dir: &Path, version: &str, flags: &[&str]) {
    let sess = dir.join(format!("{version}{}.pem", flags.join("")));
    let sess = sess.to_str().unwrap();
    let mut first = flags.to_vec();
    first.extend(["-sess_out", sess]);
    let out = s_client(port, &first);
    assert!(out.contains(&format!("New, {version}")), "{out}");
    let mut second = flags.to_vec();
    second.extend(["-sess_in", sess]);
    let out = s_client(port, &second);
    assert!(
        out.contains(&format!("Reused, {version}")),
        "{version} {flags:?} not resumed:\n{out}"
    );
}

#[test]
fn openssl_resumes_tls13_and_tls12_sessions() {
    if !support::tools_available(&["openssl"]) {
        return;
    }
    let server = start();
    let port = server.port("preferred");
    let dir = tempfile::tempdir().unwrap();
    // TLS 1.3: a ticket from the server's ticketer.
    resumes(port, dir.path(), "TLSv1.3", &["-tls1_3"]);
    // TLS 1.2 with a ticket (RFC 5077), and with a session id the server keeps.
    resumes(port, dir.path(), "TLSv1.2", &["-tls1_2"]);
    resumes(port, dir.path(), "TLSv1.2", &["-tls1_2", "-no_ticket"]);
    // Every handshake, resumed or not, is an ordinary TLS session in the mail log.
    let log = server.log_text();
    assert_eq!(
        log.matches("TLS success protocol TLSv1.3").count(),
        2,
        "{log}"
    );
    assert_eq!(
        log.matches("TLS success protocol TLSv1.2").count(),
        4,
        "{log}"
    );
}

const MANY: &str = r#"
import socket, ssl, sys
port, version, others = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
v = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
ctx.minimum_version = ctx.maximum_version = v
if version == "1.2":
    ctx.options |= ssl.OP_NO_TICKET  # session ids only: what the server's cache holds

def reply(f):
    while True:
        line = f.readline()
        if not line:
            raise SystemExit("connection closed")
        if line[3:4] != b"-":
            return line

def session(resume=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    f = s.makefile("rb")
    reply(f)
    s.sendall(b"EHLO resume.client.example\r\n")
    reply(f)
    s.sendall(b"STARTTLS\r\n")
    assert reply(f).startswith(b"220"), "STARTTLS refused"
    t = ctx.wrap_socket(s, server_hostname="mx.test.example", session=resume)
    tf = t.makefile("rb")
    t.sendall(b"EHLO resume.client.example\r\n")
    reply(tf)
    t.sendall(b"QUIT\r\n")
    reply(tf)
    out = (t.session, t.session_reused)
    t.close()
    return out

first, reused = session()
print("first reused", reused)
for _ in range(others):
    session()
_, reused = session(first)
print("returning reused", reused)
"#;

/// Python's `ssl`: one sender's TLS 1.2 session id (no tickets) or TLS 1.3 ticket, 300 other
/// senders, then the first one back: it resumes.
#[test]
fn a_returning_sender_resumes_after_many_others() {
    if !support::tools_available(&["python3"]) {
        return;
    }
    let server = start();
    let port = server.port("preferred");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("many.py");
    std::fs::write(&script, MANY).unwrap();
    for (version, others) in [("1.2", "300"), ("1.3", "300")] {
        let out = Command::new("python3")
            .arg(&script)
            .args([&port.to_string(), version, others])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("first reused False"), "{version}: {text}");
        assert!(text.contains("returning reused True"), "{version}: {text}");
    }
}
