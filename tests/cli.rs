//! The `mxgate` command line: `check` on good and broken configs, `hat trace`.

mod support;

use std::path::Path;
use std::time::Duration;

use support::mxgate::bin as mxgate;
use support::{copy_dir, repo, Client, Mxgate};

#[test]
fn check_accepts_the_shipped_configuration() {
    let out = mxgate()
        .args(["check", "--config-dir"])
        .arg(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configuration OK (2 listeners"), "{stdout}");
}

/// `postmaster:` in a RAT (where `RCPT TO:<postmaster>` goes) must be a mail address.
#[test]
fn trust_13_check_validates_the_rat_postmaster_address() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path();
    copy_dir(&repo().join("listeners"), &cfg.join("listeners"));
    copy_dir(&repo().join("policies"), &cfg.join("policies"));
    let rat = std::fs::read_to_string(cfg.join("policies/rat.yaml")).unwrap();
    let check = |postmaster: &str| {
        let text = rat.replacen(
            "inbound:\n",
            &format!("inbound:\n  postmaster: {postmaster}\n"),
            1,
        );
        std::fs::write(cfg.join("policies/rat.yaml"), text).unwrap();
        let out = mxgate()
            .args(["check", "--config-dir"])
            .arg(cfg)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = check("hostmaster@example.com");
    assert!(ok, "{out}");
    let (ok, out) = check("\"not an address\"");
    assert!(!ok, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("policies/rat.yaml:")
            && l.contains("inbound.postmaster: \"not an address\" is not a mail address")),
        "{out}"
    );
}

#[test]
fn check_reports_every_error_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path();
    copy_dir(&repo().join("listeners"), &cfg.join("listeners"));
    copy_dir(&repo().join("policies"), &cfg.join("policies"));
    // Three mistakes in three files: a misspelt policy, a bad CIDR, an unknown key.
    let hat = std::fs::read_to_string(cfg.join("policies/hat.yaml")).unwrap();
    let hat = hat.replacen("policy: THROTTLED", "policy: THROTLED", 1);
    std::fs::write(cfg.join("policies/hat.yaml"), format!("{hat}\nbroken:\n  sender_groups:\n    - name: X\n      policy: ACCEPTED\n      match: [10.0.0.0/33]\n")).unwrap();
    let l = std::fs::read_to_string(cfg.join("listeners/inbound.yaml")).unwrap();
    std::fs::write(
        cfg.join("listeners/inbound.yaml"),
        format!("{l}\nmax_conections: 10\n"),
    )
    .unwrap();
    let out = mxgate()
        .args(["check", "--config-dir"])
        .arg(cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let has = |prefix: &str, text: &str| {
        lines
            .iter()
            .any(|l| l.starts_with(prefix) && l.contains(text))
    };
    assert!(
        has("policies/hat.yaml:", "unknown policy \"THROTLED\""),
        "{stdout}"
    );
    assert!(has("policies/hat.yaml:", "10.0.0.0/33"), "{stdout}");
    assert!(has("listeners/inbound.yaml:", "max_conections"), "{stdout}");
    // Every line is file:line:column: path: message.
    for l in &lines {
        let mut parts = l.splitn(4, ':');
        let (file, line, col) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        assert!(file.ends_with(".yaml"), "{l}");
        assert!(
            line.parse::<u32>().is_ok() && col.parse::<u32>().is_ok(),
            "{l}"
        );
    }
    assert!(lines.len() >= 3);
}

#[test]
fn hat_trace_names_group_criterion_and_policy() {
    let out = mxgate()
        .args([
            "hat",
            "trace",
            "192.0.2.60",
            "--listener",
            "proxied",
            "--config-dir",
        ])
        .arg(repo().join("tests/fixtures/e2e"))
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{s}");
    assert!(
        s.contains("continue      SKIPPED matched but its policy says continue"),
        "{s}"
    );
    assert!(s.contains("sender group  BLOCKLIST"), "{s}");
    assert!(s.contains("matched       192.0.2.60"), "{s}");
    assert!(s.contains("policy        $BLOCKED"), "{s}");
    assert!(
        s.contains("action                            reject"),
        "{s}"
    );

    let out = mxgate()
        .args([
            "hat",
            "trace",
            "203.0.113.9",
            "--hostname",
            "MX2.Partner.Example.",
            "--listener",
            "proxied",
            "--config-dir",
        ])
        .arg(repo().join("tests/fixtures/e2e"))
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("sender group  ALLOWLIST") && s.contains("matched       .partner.example"),
        "{s}"
    );
    assert!(
        s.contains("tls                               required"),
        "{s}"
    );
}

/// `hat trace` on the e2e fixture's `dnsbl` listener; stdout, stderr and success.
fn trace_dnsbl(args: &[&str]) -> (String, String, bool) {
    let out = mxgate()
        .args(["hat", "trace", "192.0.2.9", "--listener", "dnsbl"])
        .args(args)
        .arg("--config-dir")
        .arg(repo().join("tests/fixtures/e2e"))
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

#[test]
fn hat_trace_simulates_block_list_listings() {
    // zen counts only 127.0.0.2 and 127.0.0.4; dul counts any listing answer.
    let (s, _, ok) = trace_dnsbl(&[]);
    assert!(ok, "{s}");
    assert!(
        s.contains("dns lists     not looked up (use --listed ZONE to simulate a listing on zen.example-rbl.test, dul.example-rbl.test)"),
        "{s}"
    );
    assert!(s.contains("sender group  ALL"), "{s}");

    let (s, _, ok) = trace_dnsbl(&["--listed", "zen.example-rbl.test"]);
    assert!(ok, "{s}");
    assert!(
        s.contains("dns lists     zen.example-rbl.test answers 127.0.0.2 (simulated)\n"),
        "{s}"
    );
    assert!(s.contains("sender group  BLOCKLIST"), "{s}");
    assert!(
        s.contains("log line      ICID n REJECT SG BLOCKLIST match dnslist[zen.example-rbl.test] SBRS None"),
        "{s}"
    );

    // A code zen does not count falls through to the next list; a zone the HAT does not
    // name is shown as changing nothing.
    let (s, _, ok) = trace_dnsbl(&[
        "--listed",
        "Zen.Example-RBL.test.=127.0.0.10",
        "--listed",
        "dul.example-rbl.test",
        "--listed",
        "other.example-rbl.test",
    ]);
    assert!(ok, "{s}");
    assert!(
        s.contains("dns lists     zen.example-rbl.test answers 127.0.0.10 (simulated)\n"),
        "{s}"
    );
    assert!(
        s.contains("dns lists     other.example-rbl.test answers 127.0.0.2 (simulated; HAT dnsbl names no such dnslist, so it changes nothing)"),
        "{s}"
    );
    assert!(
        s.contains("sender group  SUSPECTLIST")
            && s.contains("matched       dnslist[dul.example-rbl.test]"),
        "{s}"
    );

    let (s, _, ok) = trace_dnsbl(&["--listed", "zen.example-rbl.test=127.0.0.4"]);
    assert!(ok && s.contains("sender group  BLOCKLIST"), "{s}");

    let (_, err, ok) = trace_dnsbl(&["--listed", "zen.example-rbl.test=127.0.0"]);
    assert!(!ok);
    assert!(
        err.contains("answer code \"127.0.0\" is not an IPv4 address like 127.0.0.2"),
        "{err}"
    );
}

/// `mxgate serve` arguments putting every address of the shipped config on a free port.
const FREE_PORTS: [&str; 6] = [
    "--bind",
    "inbound=127.0.0.1:0",
    "--bind",
    "relay=127.0.0.1:0",
    "--metrics-listen",
    "127.0.0.1:0",
];

/// `mxgate serve` on the shipped config with every path under `dir` and every address on a
/// free port.
fn serve(dir: &Path) -> Mxgate {
    Mxgate::start_with(&repo(), dir, &FREE_PORTS)
}

/// Connects, reads the greeting, says QUIT: the greeting and everything until the close.
async fn smtp_quit(addr: std::net::SocketAddr) -> String {
    let mut c = Client::connect(addr, None).await;
    let greeting = c.reply().await;
    let bye = c.cmd("QUIT").await;
    greeting + &bye + &c.read_to_close().await
}

#[tokio::test]
async fn sighup_reopens_the_mail_log_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = serve(dir.path());
    let t = smtp_quit(srv.addr("inbound")).await;
    assert!(t.starts_with("220 mx.example.com"), "{t}");
    assert!(t.contains("221 2.0.0"), "{t}");
    let log = dir.path().join("mail.log");
    srv.wait_log("ICID 1 close");
    // Demo certificate generated on first start, key private.
    let key = dir.path().join("certs/demo.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o077,
        0
    );
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("Warning: listener inbound uses the self-signed DEMO certificate"));
    // logrotate: move the file away, SIGHUP, and new lines go to a new file.
    std::fs::rename(&log, dir.path().join("mail.log.1")).unwrap();
    srv.signal(libc::SIGHUP);
    std::thread::sleep(std::time::Duration::from_millis(200));
    smtp_quit(srv.addr("inbound")).await;
    srv.wait_log("ICID 2 close");
    let fresh = srv.log_text();
    assert!(!fresh.contains("ICID 1 "), "{fresh}");
    srv.signal(libc::SIGTERM);
    let status = srv.wait_exit(Duration::from_secs(30)).expect("exit");
    assert!(status.success(), "{status:?}");
    srv.wait_log("mxgate stopped");
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    // Written in two parts on purpose: the endpoint must read a request that arrives in pieces.
    s.write_all(format!("GET {path} HTTP/1.1\r\n").as_bytes())
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    s.write_all(b"Host: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test]
async fn metrics_health_and_ready_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(dir.path());
    let metrics = srv.metrics_addr();
    assert!(http_get(metrics, "/health").starts_with("HTTP/1.1 200 OK"));
    assert!(http_get(metrics, "/ready").starts_with("HTTP/1.1 200 OK"));
    assert!(http_get(metrics, "/nope").starts_with("HTTP/1.1 404"));
    smtp_quit(srv.addr("inbound")).await;
    srv.wait_log("ICID 1 close");
    let m = http_get(metrics, "/metrics");
    assert!(m.contains("mxgate_build_info{version=\""), "{m}");
    // The sender group is ALL or UNKNOWNLIST: it depends on what the system's resolver
    // answers for 127.0.0.1's PTR (the shipped config names no resolver).
    let series =
        |start: &str, end: &str| m.lines().any(|l| l.starts_with(start) && l.ends_with(end));
    assert!(
        series(
            "mxgate_connections_total{listener=\"inbound\",sender_group=\"",
            "\",action=\"accept\"} 1"
        ),
        "{m}"
    );
    // The client quit without STARTTLS under a `preferred` policy: one plaintext outcome.
    assert!(
        series(
            "mxgate_inbound_tls_total{listener=\"inbound\",sender_group=\"",
            "\",policy=\"ACCEPTED\",outcome=\"plaintext\",client_cert=\"not_requested\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains("mxgate_certificate_expiry_timestamp_seconds{listener=\"inbound\"}"),
        "{m}"
    );
    assert!(
        m.contains("mxgate_connections_active{listener=\"inbound\"} 0"),
        "{m}"
    );
    assert!(
        !m.contains("127.0.0.1"),
        "no client address as a label value: {m}"
    );
}

#[tokio::test]
async fn trust_05_a_second_server_on_the_same_spool_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Started once its pid file is written.
    let first = serve(dir.path());
    let pid = first.pid().to_string();
    let spool = dir.path().join("spool");
    let err_file = dir.path().join("second.err");
    let mut second = Mxgate::command(&repo(), dir.path(), &FREE_PORTS)
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    // Refused at once; one that serves is stopped after a generous bound, not waited for.
    let mut status = None;
    for _ in 0..1200 {
        status = second.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let still_running = status.is_none();
    if still_running {
        let _ = second.kill();
        let _ = second.wait();
    }
    let err = std::fs::read_to_string(&err_file).unwrap();
    assert!(
        !still_running && !status.unwrap().success(),
        "the second server ran: {err}"
    );
    assert!(
        err.contains(&format!("is in use by mxgate pid {pid}")),
        "the refusal names the running server: {err}"
    );
    assert_eq!(
        err.matches("is in use by").count(),
        1,
        "the refusal is said once: {err}"
    );
    // The first server keeps its pid file and control socket, and still serves.
    assert_eq!(
        std::fs::read_to_string(spool.join("mxgate.pid")).unwrap(),
        format!("{pid}\n")
    );
    assert!(spool.join("control.sock").exists());
    assert!(smtp_quit(first.addr("inbound")).await.starts_with("220 "));
    // The queue commands work beside the running server (they do not take the spool).
    let queue = |args: &[&str]| {
        let out = mxgate()
            .arg("queue")
            .args(args)
            .arg("--config-dir")
            .arg(repo())
            .arg("--spool-dir")
            .arg(&spool)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, list) = queue(&["list"]);
    assert!(ok && list.contains("0 message(s) in queue"), "{list}");
    let (ok, retry) = queue(&["retry", "--all"]);
    assert!(ok && retry.starts_with("ok "), "{retry}");
}
