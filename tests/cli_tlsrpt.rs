//! `mxgate tlsrpt list` and `mxgate tlsrpt show`: the built binary reading a spool into which
//! two reports were ingested (the RFC 8460 Appendix B example, gzip'd, and a Google-style
//! report with two policies), with `--spool-dir` only.

mod support;

use std::process::Output;

use mxgate::tlsrpt::domains::PolicyDomains;
use mxgate::tlsrpt::ingest::{ingest, Outcome};
use mxgate::tlsrpt::store::Store;
use support::mxgate::bin as mxgate;
use support::tlsrpt::gzip;

/// RFC 8460 Appendix B, the `additional-information` string joined onto one line (the RFC
/// wraps it, which JSON does not allow).
const RFC_EXAMPLE: &str = include_str!("../src/tlsrpt/rfc8460-example.json");

/// The shape Google sends: `mx-host` a list, two policies, one without failures.
const GOOGLE: &str = r#"{"organization-name":"Google Inc.","date-range":{"start-datetime":"2026-12-01T00:00:00Z","end-datetime":"2026-12-01T23:59:59Z"},"contact-info":"smtp-tls-reporting@google.com","report-id":"2026-12-01T00:00:00Z_example.com","policies":[{"policy":{"policy-type":"sts","policy-string":["version: STSv1","mode: enforce","mx: mx.example.com","max_age: 604800"],"policy-domain":"example.com","mx-host":["mx.example.com"]},"summary":{"total-successful-session-count":812,"total-failure-session-count":0}},{"policy":{"policy-type":"no-policy-found","policy-domain":"lists.example.com"},"summary":{"total-successful-session-count":40,"total-failure-session-count":2},"failure-details":[{"result-type":"starttls-not-supported","receiving-mx-hostname":"mx.lists.example.com","failed-session-count":2}]}]}"#;

/// 2026-12-05.
const NOW: i64 = 1_796_428_800;

fn spool_with_two_reports() -> tempfile::TempDir {
    let spool = tempfile::tempdir().unwrap();
    let store = Store::new(spool.path());
    let domains = PolicyDomains::new(["example.com"]);
    let o = ingest(
        &gzip(RFC_EXAMPLE.as_bytes()),
        "application/tlsrpt+gzip",
        &store,
        &domains,
        NOW,
    );
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    let o = ingest(
        GOOGLE.as_bytes(),
        "application/tlsrpt+json",
        &store,
        &domains,
        NOW,
    );
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    spool
}

fn run(args: &[&str], spool: &std::path::Path) -> Output {
    mxgate()
        .args(args)
        .arg("--spool-dir")
        .arg(spool)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn tlsrpt_list_shows_each_stored_report_oldest_first() {
    let spool = spool_with_two_reports();
    let o = run(&["tlsrpt", "list"], spool.path());
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let cols = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(
        cols(lines[0]),
        [
            "REPORTER",
            "REPORT-ID",
            "DATE",
            "RANGE",
            "(UTC)",
            "POLICY",
            "DOMAINS",
            "SUCCESS",
            "FAILURE"
        ]
    );
    assert_eq!(
        cols(lines[1]),
        [
            "other",
            "5065427c-23d3-47ca-b6e0-946ea0e8c4be",
            "2016-04-01",
            "00:00:00",
            "-",
            "2016-04-01",
            "23:59:59",
            "company-y.example",
            "5326",
            "303"
        ]
    );
    assert_eq!(
        cols(lines[2]),
        [
            "google",
            "2026-12-01T00:00:00Z_example.com",
            "2026-12-01",
            "00:00:00",
            "-",
            "2026-12-01",
            "23:59:59",
            "example.com,lists.example.com",
            "852",
            "2"
        ]
    );
    assert_eq!(
        lines[3],
        format!("2 report(s) in {}", spool.path().join("tlsrpt").display())
    );
}

#[test]
fn tlsrpt_show_prints_the_summary_and_every_failure_detail() {
    let spool = spool_with_two_reports();
    let o = run(
        &["tlsrpt", "show", "5065427c-23d3-47ca-b6e0-946ea0e8c4be"],
        spool.path(),
    );
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    for want in [
        "Report-ID:     5065427c-23d3-47ca-b6e0-946ea0e8c4be\n",
        "Organization:  Company-X (reporter other)\n",
        "Contact:       sts-reporting@company-x.example\n",
        "Date range:    2016-04-01 00:00:00 - 2016-04-01 23:59:59 UTC\n",
        "\nPolicy sts company-y.example\n",
        "  mx-host:       *.mail.company-y.example\n",
        "  policy-string: version: STSv1 | mode: testing | mx: *.mail.company-y.example | max_age: 86400\n",
        "  successful sessions: 5326\n  failed sessions:     303\n",
        "  failure certificate-expired: 100 session(s)\n    sending-mta-ip: 2001:db8:abcd:0012::1\n    receiving-mx-hostname: mx1.mail.company-y.example\n",
        "  failure starttls-not-supported: 200 session(s)\n    sending-mta-ip: 2001:db8:abcd:0013::1\n    receiving-mx-hostname: mx2.mail.company-y.example\n    receiving-ip: 203.0.113.56\n    additional-information: https://reports.company-x.example/report_info ? id = 5065427 c - 23 d3# StarttlsNotSupported \n",
        "  failure validation-failure: 3 session(s)\n    sending-mta-ip: 198.51.100.62\n    receiving-mx-hostname: mx-backup.mail.company-y.example\n    receiving-ip: 203.0.113.58\n    failure-reason-code: X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED\n",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // The second report: two policies, one with nothing failed.
    let o = run(
        &["tlsrpt", "show", "2026-12-01T00:00:00Z_example.com"],
        spool.path(),
    );
    let out = stdout(&o);
    assert!(
        out.contains("Organization:  Google Inc. (reporter google)\n"),
        "{out}"
    );
    assert!(
        out.contains("\nPolicy sts example.com\n  mx-host:       mx.example.com\n"),
        "{out}"
    );
    assert!(out.contains("\nPolicy no-policy-found lists.example.com\n  successful sessions: 40\n  failed sessions:     2\n  failure starttls-not-supported: 2 session(s)\n    receiving-mx-hostname: mx.lists.example.com\n"), "{out}");

    // An unknown report-id: exit 1 and a message naming the directory.
    let o = run(&["tlsrpt", "show", "no-such-report"], spool.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!(
            "mxgate: no report \"no-such-report\" in {}\n",
            spool.path().join("tlsrpt").display()
        )
    );
}

#[test]
fn tlsrpt_list_on_an_empty_spool_says_so() {
    let spool = tempfile::tempdir().unwrap();
    let o = run(&["tlsrpt", "list"], spool.path());
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        stdout(&o),
        format!(
            "REPORTER  REPORT-ID  DATE RANGE (UTC)  POLICY DOMAINS  SUCCESS  FAILURE\n0 report(s) in {}\n",
            spool.path().join("tlsrpt").display()
        )
    );
}

/// Reports are anyone's text: terminal sequences in them reach the admin's terminal escaped;
/// a second report under a stored report's id but with other content (a stranger's fake sent
/// first) is stored beside it, and `show` prints both.
#[test]
fn hostile_text_is_escaped_and_a_fake_cannot_preempt_a_report() {
    let spool = spool_with_two_reports();
    let store = Store::new(spool.path());
    let hostile = GOOGLE
        .replace("Google Inc.", "\\u001b]0;pwned\\u0007\\u001b[2JGoogle Inc.")
        .replace(
            "\"policy-domain\":\"example.com\"",
            "\"policy-domain\":\"\\u202eexample.com\"",
        )
        .replace("2026-12-01T00:00:00Z_example.com", "hostile-1");
    let o = ingest(
        hostile.as_bytes(),
        "application/tlsrpt+json",
        &store,
        &PolicyDomains::default(),
        NOW,
    );
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    for args in [
        &["tlsrpt", "list"][..],
        &["tlsrpt", "show", "hostile-1"][..],
    ] {
        let out = run(args, spool.path());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{202e}'),
            "{text:?}"
        );
        assert!(
            text.contains("\\u{1b}") || text.contains("\\u{202e}"),
            "{text}"
        );
    }
    // The same id as the Google report, other content: stored too, not a "duplicate".
    let fake = GOOGLE.replace(
        "\"total-successful-session-count\":812",
        "\"total-successful-session-count\":1",
    );
    let o = ingest(
        fake.as_bytes(),
        "application/tlsrpt+json",
        &store,
        &PolicyDomains::default(),
        NOW,
    );
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    // The real one again, laid out differently: a duplicate.
    let spaced = GOOGLE.replace(",", ", ");
    let o = ingest(
        spaced.as_bytes(),
        "application/tlsrpt+json",
        &store,
        &PolicyDomains::default(),
        NOW,
    );
    assert!(matches!(o, Outcome::Duplicate { .. }), "{o:?}");
    let out = run(
        &["tlsrpt", "show", "2026-12-01T00:00:00Z_example.com"],
        spool.path(),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.matches("Report-ID:     2026-12-01T00:00:00Z_example.com")
            .count(),
        2,
        "{text}"
    );
}
