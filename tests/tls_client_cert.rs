//! Client-certificate verification (`tls_verify_client`) with real clients: the server runs
//! in-process on 127.0.0.1:0 with a CA bundle generated here (`client_ca_file`), and
//! `openssl s_client -cert/-key` and Python smtplib with a client certificate in its
//! `SSLContext` talk to it. Each test asserts the client's view (replies on the wire), the mail
//! log, and `mxgate_inbound_tls_total{client_cert=...}`.
//!
//! Each test has its own listener names, so the process-wide metrics of one test never count
//! the other's connections. A missing `openssl` or `python3` prints `SKIP:` (fails under `CI`).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use support::Server;

/// A CA, a client certificate it signed, and a client certificate from an unrelated CA.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let partner = ca("Partner Mail CA");
        let other = ca("Somebody Else CA");
        std::fs::write(dir.path().join("ca.pem"), partner.pem()).unwrap();
        for (name, issuer) in [("client", &partner), ("stranger", &other)] {
            let mut p = CertificateParams::new(vec!["mx.partner.example".to_string()]).unwrap();
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name
                .push(DnType::CommonName, "mx.partner.example");
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, issuer).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// A config with two listeners, `<prefix>pref` (`tls: preferred`) and `<prefix>req`
/// (`tls: required`), both with `tls_verify_client: true` and the PKI's CA as `client_ca_file`.
fn config(pki: &Pki, prefix: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let w = |rel: &str, text: &str| {
        let p = d.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w(
        "mxgate.yaml",
        "mail_log:\n  target: stdout\nmetrics:\n  listen: null\ndns:\n  timeout: 2s\n",
    );
    std::fs::copy(pki.path("ca.pem"), d.path().join("partner-ca.pem")).unwrap();
    for (suffix, hat) in [("pref", "checked"), ("req", "required")] {
        w(
            &format!("listeners/{prefix}{suffix}.yaml"),
            &format!(
                "name: {prefix}{suffix}\ntype: public\nbind: [\"127.0.0.1:0\"]\nhostname: mx.test.example\n\
                 hat: {hat}\nrat: inbound\nclient_ca_file: partner-ca.pem\n"
            ),
        );
    }
    w(
        "policies/hat.yaml",
        "checked:\n  sender_groups: []\n  default_policy: CERTPREF\n\
         required:\n  sender_groups: []\n  default_policy: CERTREQ\n",
    );
    w(
        "policies/mail_flow.yaml",
        "policies:\n  CERTPREF:\n    action: accept\n    tls: preferred\n    tls_verify_client: true\n\
         \x20 CERTREQ:\n    action: accept\n    tls: required\n    tls_verify_client: true\n",
    );
    w(
        "policies/rat.yaml",
        "inbound:\n  entries:\n    - recipient: example.com\n",
    );
    d
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn require(test: &str, tool: &str) -> bool {
    if on_path(tool) {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: required client tool `{tool}` is not installed");
    }
    eprintln!("SKIP: {test}: `{tool}` is not installed");
    false
}

/// Runs a client tool with `stdin`; returns (success, stdout, stderr).
async fn run(tool: &str, args: Vec<String>, stdin: Vec<u8>) -> (bool, String, String) {
    let tool = tool.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(&tool)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        let mut input = child.stdin.take().unwrap();
        // Written in one go: the server must handle the pipelined envelope (RFC 2920).
        input.write_all(&stdin).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// `openssl s_client -starttls smtp` with an optional client certificate, sending one message.
async fn s_client(
    port: u16,
    cert: Option<(&Path, &Path)>,
    extra: &[&str],
) -> (bool, String, String) {
    let mut args: Vec<String> = [
        "s_client",
        "-starttls",
        "smtp",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        "mx.test.example",
        "-brief",
        // Read the server to the end after stdin, and never take `RCPT` or `QUIT` as the
        // `R` (renegotiate) and `Q` (quit) command letters.
        "-ign_eof",
        "-nocommands",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some((c, k)) = cert {
        args.extend(["-cert".into(), c.display().to_string()]);
        args.extend(["-key".into(), k.display().to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let stdin = b"EHLO openssl.client.example\r\nMAIL FROM:<o@partner.example>\r\n\
RCPT TO:<bob@example.com>\r\nDATA\r\nSubject: openssl\r\n\r\nhello\r\n.\r\nQUIT\r\n"
        .to_vec();
    run("openssl", args, stdin).await
}

const SMTPLIB: &str = r#"
import smtplib, ssl, sys
host, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
if cert != "-":
    ctx.load_cert_chain(cert, key)
s = smtplib.SMTP(host, port, timeout=10)
s.ehlo("python.client.example")
code, msg = s.starttls(context=ctx)
print("starttls", code, msg.decode())
print("version", s.sock.version())
s.ehlo("python.client.example")
try:
    refused = s.sendmail("py@partner.example", ["bob@example.com"], "Subject: from python\r\n\r\nhello\r\n")
    print("sendmail accepted", len(refused))
except smtplib.SMTPSenderRefused as e:
    print("sendmail refused", e.smtp_code, e.smtp_error.decode())
code, msg = s.quit()
print("quit", code)
"#;

/// Python smtplib: STARTTLS with `cert` (or none), then one message; prints `KEY value` lines.
async fn smtplib(dir: &Path, port: u16, cert: Option<&str>, pki: &Pki) -> String {
    let script = dir.join("client.py");
    std::fs::write(&script, SMTPLIB).unwrap();
    let (c, k) = match cert {
        Some(name) => (
            pki.path(&format!("{name}.pem")).display().to_string(),
            pki.path(&format!("{name}.key")).display().to_string(),
        ),
        None => ("-".into(), "-".into()),
    };
    let args = vec![
        script.display().to_string(),
        "127.0.0.1".into(),
        port.to_string(),
        c,
        k,
    ];
    let (ok, out, err) = run("python3", args, Vec::new()).await;
    assert!(ok, "smtplib client failed:\n{out}\n{err}");
    out
}

/// The ICID of the last connection logged on `listener`.
fn last_icid(srv: &Server, listener: &str) -> u64 {
    let log = srv.log_text();
    let marker = "New SMTP ICID ";
    log.lines()
        .rev()
        .filter(|l| l.contains(&format!(" interface {listener} (")))
        .find_map(|l| l.split(marker).nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no connection on {listener}:\n{log}"))
}

/// Waits for the `close` line of `icid`, then returns that connection's log lines.
async fn connection_log(srv: &Server, icid: u64) -> Vec<String> {
    srv.wait_log(&format!(r"Info: ICID {icid} close")).await;
    let tag = format!("ICID {icid} ");
    srv.log_text()
        .lines()
        .filter(|l| l.contains(&tag))
        .map(|l| l.split_once(": ").map_or(l, |x| x.1).to_string())
        .collect()
}

/// The process-wide recorder, installed once: the tests run in parallel threads, and
/// installing it is not safe to race.
fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| mxgate::metrics::recorder().unwrap())
}

/// The value of one `mxgate_inbound_tls_total` series (0 when absent).
fn tls_total(listener: &str, policy: &str, outcome: &str, client_cert: &str) -> u64 {
    let text = metrics().render();
    let want = [
        format!("listener=\"{listener}\""),
        format!("policy=\"{policy}\""),
        format!("outcome=\"{outcome}\""),
        format!("client_cert=\"{client_cert}\""),
    ];
    text.lines()
        .filter(|l| l.starts_with("mxgate_inbound_tls_total{"))
        .filter(|l| want.iter().all(|w| l.contains(w.as_str())))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// The value of `mxgate_messages_rejected_total{listener, reason}` (0 when absent).
fn rejected(listener: &str, reason: &str) -> u64 {
    let text = metrics().render();
    let series =
        format!("mxgate_messages_rejected_total{{listener=\"{listener}\",reason=\"{reason}\"}} ");
    text.lines()
        .filter_map(|l| l.strip_prefix(series.as_str()))
        .map(|v| v.parse::<u64>().unwrap())
        .sum()
}

/// Waits until `read()` gives `want`: the counter is bumped just after the `close` line.
async fn wait_metric(what: &str, read: impl Fn() -> u64, want: u64) {
    for _ in 0..100 {
        if read() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{what}: {} instead of {want}\n{}",
        read(),
        metrics().render()
    );
}

fn assert_has(lines: &[String], want: &str) {
    assert!(
        lines.iter().any(|l| l.contains(want)),
        "no log line containing {want:?} in:\n{}",
        lines.join("\n")
    );
}

/// openssl s_client: a verified certificate (TLS 1.3 and 1.2) sends mail under both modes; no
/// certificate is logged under `preferred` and refused with 530 at MAIL under `required`.
#[tokio::test]
async fn openssl_s_client_with_and_without_client_certificate() {
    const TEST: &str = "openssl_s_client_with_and_without_client_certificate";
    if !require(TEST, "openssl") {
        return;
    }
    // Installed before the server starts, so every connection is counted.
    metrics();
    let pki = Pki::new();
    let cfg = config(&pki, "ossl");
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let pref = srv.addr("osslpref").port();
    let req = srv.addr("osslreq").port();
    let client = (pki.path("client.pem"), pki.path("client.key"));
    let client = Some((client.0.as_path(), client.1.as_path()));

    // (1) preferred + a certificate from the configured CA: verified, mail accepted.
    let (ok, out, err) = s_client(pref, client, &[]).await;
    assert!(ok, "{out}\n{err}");
    assert!(err.contains("Protocol version: TLSv1.3"), "{err}");
    assert!(out.contains("250 2.1.0 Sender ok\r\n"), "{out}");
    assert!(out.contains("250 2.0.0 Ok: queued as "), "{out}");
    let icid = last_icid(&srv, "osslpref");
    let log = connection_log(&srv, icid).await;
    assert_has(
        &log,
        &format!("ICID {icid} TLS success protocol TLSv1.3 cipher TLS13_"),
    );
    assert_has(&log, "client certificate verified CN=mx.partner.example");

    // (2) preferred, no certificate: mail still flows; the log says so.
    let (ok, out, err) = s_client(pref, None, &[]).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("250 2.0.0 Ok: queued as "), "{out}");
    let icid = last_icid(&srv, "osslpref");
    let log = connection_log(&srv, icid).await;
    assert!(
        log.iter().any(|l| l
            .starts_with(&format!("ICID {icid} TLS success protocol TLSv1.3 cipher "))
            && l.ends_with(" no client certificate")),
        "{log:?}"
    );

    // (3) required, no certificate: TLS works, MAIL gets 530 and nothing is queued.
    let (ok, out, err) = s_client(req, None, &[]).await;
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("530 5.7.0 A verified client certificate is required\r\n"),
        "{out}"
    );
    assert!(out.contains("503 5.5.1 Need MAIL command\r\n"), "{out}");
    assert!(!out.contains("queued as"), "{out}");
    assert!(
        out.contains("221 2.0.0 mx.test.example closing connection\r\n"),
        "{out}"
    );
    let icid = last_icid(&srv, "osslreq");
    let log = connection_log(&srv, icid).await;
    assert_has(&log, "no client certificate");
    assert_has(
        &log,
        &format!("mxgate: ICID {icid} MAIL FROM: <o@partner.example> refused: tls_verify_client (no client certificate)"),
    );
    assert!(!log.iter().any(|l| l.contains("Start MID")), "{log:?}");

    // Required + verified certificate over TLS 1.2 (the TLS 1.2 CertificateVerify path).
    let (ok, out, err) = s_client(req, client, &["-tls1_2"]).await;
    assert!(ok, "{out}\n{err}");
    assert!(err.contains("Protocol version: TLSv1.2"), "{err}");
    assert!(out.contains("250 2.0.0 Ok: queued as "), "{out}");
    let icid = last_icid(&srv, "osslreq");
    let log = connection_log(&srv, icid).await;
    assert_has(
        &log,
        &format!("ICID {icid} TLS success protocol TLSv1.2 cipher TLS_ECDHE_"),
    );
    assert_has(&log, "client certificate verified CN=mx.partner.example");

    wait_metric(
        "tls_total(\"osslpref\", \"CERTPREF\", \"success\", \"verified\")",
        || tls_total("osslpref", "CERTPREF", "success", "verified"),
        1,
    )
    .await;
    wait_metric(
        "tls_total(\"osslpref\", \"CERTPREF\", \"success\", \"missing\")",
        || tls_total("osslpref", "CERTPREF", "success", "missing"),
        1,
    )
    .await;
    wait_metric(
        "tls_total(\"osslreq\", \"CERTREQ\", \"success\", \"missing\")",
        || tls_total("osslreq", "CERTREQ", "success", "missing"),
        1,
    )
    .await;
    wait_metric(
        "tls_total(\"osslreq\", \"CERTREQ\", \"success\", \"verified\")",
        || tls_total("osslreq", "CERTREQ", "success", "verified"),
        1,
    )
    .await;
    wait_metric(
        "tls_total(\"osslreq\", \"CERTREQ\", \"success\", \"failed\")",
        || tls_total("osslreq", "CERTREQ", "success", "failed"),
        0,
    )
    .await;
    wait_metric(
        "rejected(\"osslreq\", \"client_cert\")",
        || rejected("osslreq", "client_cert"),
        1,
    )
    .await;
    wait_metric(
        "rejected(\"osslpref\", \"client_cert\")",
        || rejected("osslpref", "client_cert"),
        0,
    )
    .await;
    srv.stop().await;
}

/// Python smtplib with a client certificate in its SSLContext: a certificate from another CA
/// is logged as failed and still sends under `preferred`, and is refused under `required`.
#[tokio::test]
async fn python_smtplib_client_certificates() {
    const TEST: &str = "python_smtplib_client_certificates";
    if !require(TEST, "python3") {
        return;
    }
    metrics();
    let pki = Pki::new();
    let cfg = config(&pki, "py");
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let pref = srv.addr("pypref").port();
    let req = srv.addr("pyreq").port();

    // (1) verified certificate under preferred.
    let out = smtplib(cfg.path(), pref, Some("client"), &pki).await;
    assert!(
        out.contains("starttls 220 2.0.0 Ready to start TLS\n"),
        "{out}"
    );
    assert!(out.contains("sendmail accepted 0\n"), "{out}");
    let icid = last_icid(&srv, "pypref");
    let log = connection_log(&srv, icid).await;
    assert_has(&log, "client certificate verified CN=mx.partner.example");
    let mid = log
        .iter()
        .find_map(|l| l.strip_prefix("MID ")?.split(' ').next())
        .unwrap_or_else(|| panic!("no Start MID: {log:?}"))
        .to_string();
    srv.wait_log(&format!("Info: MID {mid} queued for delivery"))
        .await;

    // (2) no certificate under preferred: accepted, logged.
    let out = smtplib(cfg.path(), pref, None, &pki).await;
    assert!(out.contains("sendmail accepted 0\n"), "{out}");
    let log = connection_log(&srv, last_icid(&srv, "pypref")).await;
    assert_has(&log, "no client certificate");

    // (4) a certificate from another CA under preferred: accepted, the failure is logged.
    let out = smtplib(cfg.path(), pref, Some("stranger"), &pki).await;
    assert!(out.contains("sendmail accepted 0\n"), "{out}");
    let icid = last_icid(&srv, "pypref");
    let log = connection_log(&srv, icid).await;
    assert_has(
        &log,
        &format!("ICID {icid} TLS success protocol TLSv1.3 cipher "),
    );
    assert_has(&log, "client certificate failed: UnknownIssuer");

    // The same certificate under required: 530 at MAIL, with the reason in the log.
    let out = smtplib(cfg.path(), req, Some("stranger"), &pki).await;
    assert!(
        out.contains("sendmail refused 530 5.7.0 A verified client certificate is required\n"),
        "{out}"
    );
    assert!(out.contains("quit 221\n"), "{out}");
    let icid = last_icid(&srv, "pyreq");
    let log = connection_log(&srv, icid).await;
    assert_has(
        &log,
        &format!("mxgate: ICID {icid} MAIL FROM: <py@partner.example> refused: tls_verify_client (client certificate failed: UnknownIssuer)"),
    );

    // And a verified one under required sends.
    let out = smtplib(cfg.path(), req, Some("client"), &pki).await;
    assert!(out.contains("sendmail accepted 0\n"), "{out}");

    wait_metric(
        "tls_total(\"pypref\", \"CERTPREF\", \"success\", \"verified\")",
        || tls_total("pypref", "CERTPREF", "success", "verified"),
        1,
    )
    .await;
    wait_metric(
        "tls_total(\"pypref\", \"CERTPREF\", \"success\", \"missing\")",
        || tls_total("pypref", "CERTPREF", "success", "missing"),
        1,
    )
    .await;
    wait_metric(
        "tls_total(\"pypref\", \"CERTPREF\", \"success\", \"failed\")",
        || tls_total("pypref", "CERTPREF", "success", "failed"),
        1,
    )
    .await;
    wait_metric(
        "tls_total(\"pyreq\", \"CERTREQ\", \"success\", \"failed\")",
        || tls_total("pyreq", "CERTREQ", "success", "failed"),
        1,
    )
    .await;
    wait_metric(
        "tls_total(\"pyreq\", \"CERTREQ\", \"success\", \"verified\")",
        || tls_total("pyreq", "CERTREQ", "success", "verified"),
        1,
    )
    .await;
    wait_metric(
        "rejected(\"pyreq\", \"client_cert\")",
        || rejected("pyreq", "client_cert"),
        1,
    )
    .await;
    srv.stop().await;
}
