//! The two TLS failure sequences under `tls: required` (docs/mail-log.md): a client whose
//! handshake fails, and a client that never starts TLS. Both log `TLS was required but remote
//! host did not initiate it` (ESA's own sequence), so the mail log alone does not tell them
//! apart; `mxgate_inbound_tls_total{outcome}` must. The server runs in-process on 127.0.0.1:0;
//! each test has its own listener, so the process-wide metrics of one never count the other's.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Client, Server};

/// The e2e fixture plus one `tls: required` listener named `name`.
fn config(name: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    support::copy_dir(&support::repo().join("tests/fixtures/e2e"), d.path());
    std::fs::write(
        d.path().join(format!("listeners/{name}.yaml")),
        format!(
            "name: {name}\ntype: public\nbind: [\"127.0.0.1:0\"]\nhostname: mx.test.example\n\
             hat: required\nrat: inbound\n"
        ),
    )
    .unwrap();
    d
}

/// The process-wide recorder, installed once for this test binary.
fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| mxgate::metrics::recorder().unwrap())
}

/// `mxgate_inbound_tls_total{listener, outcome}` summed over the other labels.
fn tls_total(listener: &str, outcome: &str) -> u64 {
    let want = [
        format!("listener=\"{listener}\""),
        format!("outcome=\"{outcome}\""),
    ];
    metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with("mxgate_inbound_tls_total{"))
        .filter(|l| want.iter().all(|w| l.contains(w.as_str())))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Waits until the `close` line of the last connection on `listener`; returns that
/// connection's lines after the HAT line, without timestamp and level.
async fn connection_lines(srv: &Server, listener: &str) -> Vec<String> {
    let line = srv
        .wait_log(&format!("New SMTP ICID {{n}} interface {listener} ("))
        .await;
    let icid = support::id_after(&line, "ICID ");
    srv.wait_log(&format!("Info: ICID {icid} close")).await;
    let tag = format!("ICID {icid} ");
    srv.log_text()
        .lines()
        .filter(|l| l.contains(&tag) && !l.contains("New SMTP") && !l.contains(" SG "))
        .map(|l| l.split_once(": ").map_or(l, |x| x.1).to_string())
        .collect()
}

/// Waits until the counter reaches `want` (it is bumped just after the `close` line).
async fn wait_total(listener: &str, outcome: &str, want: u64) {
    for _ in 0..100 {
        if tls_total(listener, outcome) == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{outcome} on {listener}: {} instead of {want}\n{}",
        tls_total(listener, outcome),
        metrics().render()
    );
}

/// A TLS 1.1 client under `tls: required`: `TLS failed`, `lost`, `TLS was required …`, `close`
/// (ESA's sequence in its own notes), counted as `handshake_failed`, not `required_refused`.
#[tokio::test]
async fn trust_14_failed_handshake_logs_esa_sequence_and_counts_handshake_failed() {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("openssl").is_file()));
    if !on_path {
        assert!(std::env::var_os("CI").is_none(), "openssl is not installed");
        eprintln!("SKIP: openssl is not installed");
        return;
    }
    metrics();
    let dir = config("hs14");
    let mut srv = Server::start_dir(dir.path(), |_, _| {}).await;
    let port = srv.addr("hs14").port();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("openssl")
            .args(["s_client", "-starttls", "smtp", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            // SECLEVEL=0 so this OpenSSL really offers TLS 1.1 instead of giving up locally.
            .args(["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-brief"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"QUIT\r\n").unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success(), "TLS 1.1 handshake succeeded");

    let lines = connection_lines(&srv, "hs14").await;
    let icid = support::id_after(&lines[0], "ICID ");
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(
        lines[0].starts_with(&format!("ICID {icid} TLS failed: ")),
        "{lines:#?}"
    );
    assert_eq!(
        lines[1..],
        [
            format!("ICID {icid} lost"),
            format!("ICID {icid} TLS was required but remote host did not initiate it"),
            format!("ICID {icid} close"),
        ]
    );
    wait_total("hs14", "handshake_failed", 1).await;
    assert_eq!(tls_total("hs14", "required_refused"), 0);
    srv.stop().await;
}

/// A plaintext client that sends MAIL without STARTTLS: 530, `TLS was required …`, `close` and
/// no `TLS failed`; counted as `required_refused`, not `handshake_failed`.
#[tokio::test]
async fn trust_14_plaintext_mail_under_required_counts_required_refused() {
    metrics();
    let dir = config("pt14");
    let mut srv = Server::start_dir(dir.path(), |_, _| {}).await;
    let mut c = Client::connect(srv.addr("pt14"), None).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@other.example>").await,
        "530 5.7.0 Must issue a STARTTLS command first\r\n"
    );
    assert!(c.cmd("QUIT").await.starts_with("221 "));

    let lines = connection_lines(&srv, "pt14").await;
    let icid = support::id_after(&lines[0], "ICID ");
    assert_eq!(
        lines,
        [
            format!("ICID {icid} TLS was required but remote host did not initiate it"),
            format!("ICID {icid} close"),
        ]
    );
    wait_total("pt14", "required_refused", 1).await;
    assert_eq!(tls_total("pt14", "handshake_failed"), 0);
    srv.stop().await;
}
