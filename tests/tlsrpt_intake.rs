//! TLS-RPT intake (issue 14 item 3): the built binary takes reports mailed to a report address
//! (sent with the real swaks as a gzip'd MIME attachment) and POSTed over HTTPS to the MTA-STS
//! endpoint (the real curl), and the metrics move by exactly the report's session counts. The
//! same report again is a duplicate; a malformed one and a gzip bomb are refused and counted.

mod support;

use std::path::Path;
use std::process::Command;

use support::pki::TestPki;
use support::tlsrpt::gzip;
use support::{copy_dir, repo, Mxgate};

/// The RFC 8460 §4.5 example report (policy domain company-y.example, reporter "Company-X").
const RFC_EXAMPLE: &str = include_str!("../src/tlsrpt/rfc8460-example.json");
/// Its report-id.
const RFC_ID: &str = "5065427c-23d3-47ca-b6e0-946ea0e8c4be";
/// The report address of the test configuration.
const REPORT_ADDRESS: &str = "tlsrpt@reports.test";

/// swaks to the report address with `file` attached as `content_type`; its output.
fn swaks_report(port: u16, file: &Path, content_type: &str) -> String {
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{port}")])
        .args(["--from", "tlsrpt-noreply@company-x.example"])
        .args(["--to", REPORT_ADDRESS])
        .args(["--helo", "mail.company-x.example", "--timeout", "20"])
        .args([
            "--header",
            "Subject: Report Domain: company-y.example Submitter: company-x.example",
        ])
        .args(["--attach-type", content_type])
        .arg("--attach")
        .arg(format!("@{}", file.display()))
        .output()
        .expect("run swaks");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text + &String::from_utf8_lossy(&out.stderr)
}

/// The server's reply to the message (swaks prints `<-  ` for replies, `<** ` for errors).
fn data_reply(swaks_output: &str) -> String {
    let lines: Vec<&str> = swaks_output.lines().collect();
    let dot = lines
        .iter()
        .rposition(|l| l.trim_start().starts_with("~> .") || l.trim_start().starts_with(" -> ."))
        .or_else(|| lines.iter().rposition(|l| l.contains("-> .")))
        .unwrap_or_else(|| panic!("no end of data in swaks output:\n{swaks_output}"));
    lines[dot + 1..]
        .iter()
        .find(|l| l.starts_with("<-") || l.starts_with("<**"))
        .map(|l| l.trim_start_matches(['<', '-', '*', '~', ' ']).to_string())
        .unwrap_or_else(|| panic!("no reply after the data:\n{swaks_output}"))
}

/// `curl -X POST` of `body` as `content_type` to the intake; the HTTP status.
fn post(port: u16, ca: &Path, body: &Path, content_type: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--resolve"])
        .arg(format!("mta-sts.example.com:{port}:127.0.0.1"))
        .arg(format!("https://mta-sts.example.com:{port}/tlsrpt"))
        .arg("--cacert")
        .arg(ca)
        .args(["-H", &format!("Content-Type: {content_type}")])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every series of the report's sessions, and of the report outcomes, as labels.
struct Counts<'a>(&'a Mxgate);

impl Counts<'_> {
    fn session(&self, result: &str, result_type: &str) -> f64 {
        self.0.metric(
            "mxgate_tlsrpt_sessions_total",
            &[
                ("policy_domain", "company-y.example"),
                ("policy_type", "sts"),
                ("result", result),
                ("result_type", result_type),
                ("reporter", "other"),
            ],
        )
    }

    fn all_sessions(&self) -> [f64; 4] {
        [
            self.session("success", "none"),
            self.session("failure", "certificate-expired"),
            self.session("failure", "starttls-not-supported"),
            self.session("failure", "validation-failure"),
        ]
    }

    fn reports(&self, reporter: &str, outcome: &str) -> f64 {
        self.0.metric(
            "mxgate_tlsrpt_reports_total",
            &[("reporter", reporter), ("outcome", outcome)],
        )
    }
}

/// Test configuration: the e2e fixture, an MTA-STS endpoint with a certificate from a test CA
/// (returned: its CA file), and the intake with a report address and the HTTPS path.
fn configure(cfg: &Path, work: &Path) -> std::path::PathBuf {
    copy_dir(&repo().join("tests/fixtures/e2e"), cfg);
    // Room for a gzip bomb's 11 KiB of base64 (the fixture's limit is 2K).
    let flow = cfg.join("policies/mail_flow.yaml");
    let text = std::fs::read_to_string(&flow).unwrap();
    std::fs::write(
        &flow,
        text.replacen("max_message_size: 2K", "max_message_size: 256K", 1),
    )
    .unwrap();
    std::fs::write(
        cfg.join("policies/mta_sts.yaml"),
        "listen: [\"127.0.0.1:0\"]\ncertificate: mta-sts\ndomains:\n  example.com: {mode: testing}\n",
    )
    .unwrap();
    std::fs::write(
        cfg.join("policies/tlsrpt.yaml"),
        format!(
            "addresses: [{REPORT_ADDRESS}]\nhttps_path: /tlsrpt\ndomains: [company-y.example]\n"
        ),
    )
    .unwrap();
    let pki = TestPki::new();
    let leaf = pki.leaf(&["mta-sts.example.com"], None);
    let certs = work.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let chain: String = leaf
        .chain
        .iter()
        .map(|c| mxgate::certs::pem_encode("CERTIFICATE", c.as_ref()))
        .collect();
    std::fs::write(certs.join("mta-sts.crt"), chain).unwrap();
    std::fs::write(
        certs.join("mta-sts.key"),
        mxgate::certs::pem_encode("PRIVATE KEY", leaf.key.secret_der()),
    )
    .unwrap();
    let ca = work.join("ca.pem");
    pki.write_ca(&ca);
    ca
}

#[test]
fn mailed_and_posted_reports_move_the_metrics_by_their_session_counts() {
    if !support::tools_available(&["swaks", "curl"]) {
        return;
    }
    let cfg = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let ca = configure(cfg.path(), work.path());
    let srv = Mxgate::start_with(
        cfg.path(),
        work.path(),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let smtp = srv.port("preferred");
    let https = srv.mta_sts_port();
    srv.wait_log("tlsrpt: reports for example.com: publish _smtp._tls.example.com TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@reports.test,https://mta-sts.example.com/tlsrpt\"");
    let files = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let p = files.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let counts = Counts(&srv);

    // The RFC example, gzip'd, by mail: every session count once, the report stored.
    let report = file("report.json.gz", &gzip(RFC_EXAMPLE.as_bytes()));
    let before = counts.all_sessions();
    let out = swaks_report(smtp, &report, "application/tlsrpt+gzip");
    assert_eq!(
        data_reply(&out),
        "250 2.6.0 Ok: TLS report accepted",
        "{out}"
    );
    let after = counts.all_sessions();
    let delta: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    assert_eq!(delta, [5326.0, 100.0, 200.0, 3.0]);
    assert_eq!(counts.reports("other", "accepted"), 1.0);
    srv.wait_log(&format!(
        "TLS-RPT report via MID 1 accepted: report-id <{RFC_ID}> from \"Company-X\""
    ));
    let listed = support::mxgate::bin()
        .args(["tlsrpt", "list"])
        .args(Mxgate::path_args(cfg.path(), work.path()))
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains(RFC_ID), "{listed}");
    // Nothing was queued for the internal server, nothing sent back.
    assert!(!srv.log_text().contains("MID 1 queued for delivery"));

    // The same report again: a duplicate, still 250, no session counted twice.
    let out = swaks_report(smtp, &report, "application/tlsrpt+gzip");
    assert_eq!(
        data_reply(&out),
        "250 2.6.0 Ok: TLS report received before",
        "{out}"
    );
    assert_eq!(counts.all_sessions(), after);
    assert_eq!(counts.reports("other", "duplicate"), 1.0);

    // Malformed JSON and a gzip bomb (8 MiB of zeros in 8 KiB): refused and counted.
    let bad = file(
        "bad.json.gz",
        &gzip(b"{\"organization-name\": \"Company-X\"}"),
    );
    let out = swaks_report(smtp, &bad, "application/tlsrpt+gzip");
    assert_eq!(
        data_reply(&out),
        "550 5.6.0 Not a valid TLS report (RFC 8460)",
        "{out}"
    );
    assert_eq!(counts.reports("other", "malformed"), 1.0);
    let bomb = file("bomb.json.gz", &gzip(&vec![0u8; 8 << 20]));
    assert!(std::fs::metadata(&bomb).unwrap().len() < 64 << 10);
    let out = swaks_report(smtp, &bomb, "application/tlsrpt+gzip");
    assert_eq!(data_reply(&out), "552 5.3.4 TLS report too large", "{out}");
    assert_eq!(counts.reports("unknown", "bomb"), 1.0);
    assert_eq!(counts.all_sessions(), after);

    // The same over HTTPS: another report-id, as JSON and gzip'd.
    let second = RFC_EXAMPLE.replace(RFC_ID, "https-report-1");
    let json = file("second.json", second.as_bytes());
    let before = counts.all_sessions();
    assert_eq!(post(https, &ca, &json, "application/tlsrpt+json"), "200");
    let after = counts.all_sessions();
    let delta: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    assert_eq!(delta, [5326.0, 100.0, 200.0, 3.0]);
    srv.wait_log("TLS-RPT report via HTTPS from 127.0.0.1 accepted: report-id <https-report-1>");
    let gz = file("second.json.gz", &gzip(second.as_bytes()));
    assert_eq!(post(https, &ca, &gz, "application/tlsrpt+gzip"), "200");
    assert_eq!(counts.all_sessions(), after);
    assert_eq!(counts.reports("other", "duplicate"), 2.0);
    assert_eq!(post(https, &ca, &bad, "application/tlsrpt+gzip"), "400");
    assert_eq!(counts.reports("other", "malformed"), 2.0);
    assert_eq!(post(https, &ca, &bomb, "application/tlsrpt+gzip"), "413");
    assert_eq!(counts.reports("unknown", "bomb"), 2.0);
    let big = file("big.json", &vec![b' '; 2 << 20]);
    assert_eq!(post(https, &ca, &big, "application/tlsrpt+json"), "413");
    assert_eq!(counts.reports("unknown", "too_large"), 1.0);
    assert_eq!(counts.all_sessions(), after);

    // Another method on the intake's path: 405, and what it takes.
    let got = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "20", "--resolve"])
        .arg(format!("mta-sts.example.com:{https}:127.0.0.1"))
        .arg(format!("https://mta-sts.example.com:{https}/tlsrpt"))
        .arg("--cacert")
        .arg(&ca)
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&got.stdout).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 405") && head.contains("\r\nallow: post\r\n"),
        "{head}"
    );

    // The report address in quoted form is the same mailbox: taken, not queued.
    let third = file(
        "third.json",
        RFC_EXAMPLE.replace(RFC_ID, "quoted-1").as_bytes(),
    );
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{smtp}"), "--timeout", "20"])
        .args([
            "--from",
            "tlsrpt-noreply@company-x.example",
            "--to",
            "\"tlsrpt\"@reports.test",
        ])
        .args(["--attach-type", "application/tlsrpt+json", "--attach"])
        .arg(format!("@{}", third.display()))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        data_reply(&out),
        "250 2.6.0 Ok: TLS report accepted",
        "{out}"
    );

    // Three reports stored, private, under the spool.
    let dir = srv.spool().join("tlsrpt");
    let stored: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(stored.len(), 3, "{stored:?}");
}

/// `relay: true`: the report is taken and the mail still goes to the internal server, with
/// the report address as its recipient; the reply is the queue's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_true_also_delivers_the_report_mail() {
    if !support::tools_available(&["swaks", "curl"]) {
        return;
    }
    let sink = support::sink::Sink::start("127.0.0.1:0").await;
    let cfg = support::relay_config(sink.addr, "1s");
    std::fs::write(
        cfg.path().join("policies/tlsrpt.yaml"),
        format!("addresses: [{REPORT_ADDRESS}]\nrelay: true\n"),
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let srv = Mxgate::start_with(
        cfg.path(),
        work.path(),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let smtp = srv.port("preferred");
    let files = tempfile::tempdir().unwrap();
    let report = files.path().join("report.json.gz");
    std::fs::write(&report, gzip(RFC_EXAMPLE.as_bytes())).unwrap();
    let out =
        tokio::task::spawn_blocking(move || swaks_report(smtp, &report, "application/tlsrpt+gzip"))
            .await
            .unwrap();
    assert_eq!(data_reply(&out), "250 2.0.0 Ok: queued as 1", "{out}");
    srv.wait_log("mxgate: ICID 1 MID 1 To: <tlsrpt@reports.test> TLS-RPT report address: report taken, message relayed too");
    srv.wait_log(&format!(
        "TLS-RPT report via MID 1 accepted: report-id <{RFC_ID}>"
    ));
    srv.wait_log("Message done DCID");
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpts, [REPORT_ADDRESS]);
    assert!(
        got[0].body.contains("application/tlsrpt+gzip"),
        "{}",
        got[0].body
    );
    // The policy domain is not configured here: the sessions count under `other`.
    assert_eq!(
        srv.metric(
            "mxgate_tlsrpt_sessions_total",
            &[("policy_domain", "other"), ("result", "success")]
        ),
        5326.0
    );
}
