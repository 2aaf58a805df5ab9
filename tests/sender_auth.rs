//! Sender authentication at MAIL FROM (issue 15 part A) against real DNS: a private dnsmasq
//! serves MX, A, null-MX and SPF TXT records for the test domains, forwards `flaky.test` to a
//! server that never answers, and the built binary (tests/fixtures/sender_auth) asks it. The
//! real swaks is the client. Each DNS-verification outcome gets its reply and ESA's log line,
//! the exception table lets a sender through without a lookup, SPF results are logged and
//! counted under `tag`, refused under `reject_fail` (at MAIL FROM, or at RCPT with
//! `spf_at: rcpt`), and a DNS server that does not answer gives 4xx, never 5xx.

mod support;

use std::path::Path;
use std::process::Command;

use support::client::Client;
use support::dnsmasq::Dnsmasq;
use support::{repo, tools_available, Mxgate};

/// The test zone, and `flaky.test` forwarded to `silent_port` (nothing answers there).
fn zone(silent_port: u16) -> Option<Dnsmasq> {
    let flaky = format!("--server=/flaky.test/127.0.0.1#{silent_port}");
    Dnsmasq::start(&[
        "--local=/sa.test/",
        "--host-record=mail.sa.test,127.0.0.9",
        "--mx-host=pass.sa.test,mail.sa.test,10",
        "--txt-record=pass.sa.test,v=spf1 ip4:127.0.0.1 -all",
        "--mx-host=fail.sa.test,mail.sa.test,10",
        "--txt-record=fail.sa.test,v=spf1 ip4:192.0.2.1 -all",
        "--mx-host=soft.sa.test,mail.sa.test,10",
        "--txt-record=soft.sa.test,v=spf1 ip4:192.0.2.1 ~all",
        // MX but no SPF record.
        "--mx-host=none.sa.test,mail.sa.test,10",
        // Two SPF records, one that would pass and one that would fail: a permerror
        // (RFC 7208 §4.5), whatever order the answer lists them in.
        "--mx-host=two.sa.test,mail.sa.test,10",
        "--txt-record=two.sa.test,v=spf1 -all",
        "--txt-record=two.sa.test,v=spf1 ip4:127.0.0.1 -all",
        // No MX: the address record makes it a mail domain (RFC 5321 §5.1).
        "--host-record=aonly.sa.test,127.0.0.10",
        // RFC 7505 null MX: `MX 0 .`.
        "--mx-host=nullmx.sa.test,.,0",
        // An internationalized domain, published in its A-label form: bücher.sa.test,
        // whose SPF record does not authorize 127.0.0.1.
        "--mx-host=xn--bcher-kva.sa.test,mail.sa.test,10",
        "--txt-record=xn--bcher-kva.sa.test,v=spf1 ip4:192.0.2.1 -all",
        &flaky,
    ])
}

/// A UDP socket that receives queries and never answers, and its port.
fn silent_server() -> (std::net::UdpSocket, u16) {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

fn start(resolver_port: u16, work: &Path) -> Mxgate {
    let resolver = format!("127.0.0.1:{resolver_port}");
    Mxgate::start_with(
        &repo().join("tests/fixtures/sender_auth"),
        work,
        &[
            "--dns-resolver",
            &resolver,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
}

/// swaks from `from` up to RCPT (or the whole message when `full`); its output.
fn swaks(port: u16, from: &str) -> String {
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{port}")])
        .args(["--from", from, "--to", "bob@example.com"])
        .args(["--helo", "client.sa.test", "--timeout", "20"])
        .args(["--quit-after", "RCPT"])
        .output()
        .expect("run swaks");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The server's reply to the command whose client line starts with `cmd` (swaks prints
/// `<-  ` for replies and `<** ` for refusals).
fn reply_to(out: &str, cmd: &str) -> String {
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start_matches(['-', '>', ' ']).starts_with(cmd))
        .unwrap_or_else(|| panic!("no {cmd} in swaks output:\n{out}"));
    lines[at + 1..]
        .iter()
        .find(|l| l.starts_with("<-") || l.starts_with("<**"))
        .map(|l| l.trim_start_matches(['<', '-', '*', ' ']).to_string())
        .unwrap_or_else(|| panic!("no reply to {cmd}:\n{out}"))
}

fn mail_reply(port: u16, from: &str) -> String {
    reply_to(&swaks(port, from), "MAIL FROM")
}

fn count(m: &Mxgate, listener: &str, method: &str, result: &str) -> f64 {
    m.metric(
        "mxgate_sender_auth_total",
        &[
            ("listener", listener),
            ("sender_group", "ALL"),
            ("method", method),
            ("result", result),
        ],
    )
}

#[test]
fn dns_verification_outcomes_exceptions_and_spf_against_real_dns() {
    if !tools_available(&["swaks"]) {
        return;
    }
    let (_silent, silent_port) = silent_server();
    let Some(dns) = zone(silent_port) else { return };
    let work = tempfile::tempdir().unwrap();
    let m = start(dns.port, work.path());
    let verify = m.port("verify");

    // DNS verification: the three outcomes, each with its reply and ESA's line.
    let cases = [
        ("a@pass.sa.test", "250 2.1.0 Sender ok", None),
        ("a@aonly.sa.test", "250 2.1.0 Sender ok", None),
        (
            "gone@gone.sa.test",
            "553 5.1.8 Domain of sender address does not exist",
            Some("envelope sender domain does not exist"),
        ),
        (
            "nomail@nullmx.sa.test",
            "553 5.1.8 Domain of sender address does not exist",
            Some("envelope sender domain does not exist"),
        ),
        (
            "bad@localhost",
            "553 5.1.7 Sender address must contain a fully qualified domain name",
            Some("envelope sender domain missing"),
        ),
        (
            "tmp@flaky.test",
            "451 4.1.8 Domain of sender address could not be resolved, try again later",
            Some("envelope sender domain could not be resolved"),
        ),
        // The exception table: no DNS at all for these domains, still accepted.
        ("x@lab.test", "250 2.1.0 Sender ok", None),
        ("y@partner.test", "250 2.1.0 Sender ok", None),
        ("ceo@nowhere.sa.test", "250 2.1.0 Sender ok", None),
    ];
    for (from, reply, line) in cases {
        let mark = m.log_mark();
        assert_eq!(mail_reply(verify, from), reply, "MAIL FROM:<{from}>");
        match line {
            Some(words) => {
                m.wait_log_after(
                    mark,
                    &format!("Info: ICID {{n}} Address: <{from}> sender rejected, {words}"),
                );
            }
            None => {
                m.wait_log_after(mark, &format!("From: <{from}>"));
            }
        }
    }
    // Not in the table: an address of a listed domain's neighbour is verified (and unknown).
    assert!(mail_reply(verify, "other@nowhere.sa.test").starts_with("553 5.1.8"));
    for (result, n) in [
        ("pass", 2.0),
        ("exempt", 3.0),
        ("not_exist", 3.0),
        ("malformed", 1.0),
        ("unresolvable", 1.0),
    ] {
        assert_eq!(
            count(&m, "verify", "dns_verification", result),
            n,
            "dns_verification {result}"
        );
    }
    assert_eq!(
        m.metric(
            "mxgate_messages_rejected_total",
            &[("listener", "verify"), ("reason", "sender_not_exist")]
        ),
        3.0
    );

    // SPF under `tag`: nothing refused, every result logged under the MID and counted.
    let tag = m.port("spftag");
    for (from, word) in [
        ("a@pass.sa.test", "Pass"),
        ("a@fail.sa.test", "Fail"),
        ("a@soft.sa.test", "SoftFail"),
        ("a@none.sa.test", "None"),
        ("a@flaky.test", "TempError"),
    ] {
        let mark = m.log_mark();
        assert_eq!(mail_reply(tag, from), "250 2.1.0 Sender ok", "{from}");
        m.wait_log_after(
            mark,
            &format!("Info: MID {{n}} SPF: mailfrom identity {from} {word}"),
        );
    }
    for result in ["pass", "fail", "softfail", "none", "temperror"] {
        assert_eq!(count(&m, "spftag", "spf", result), 1.0, "spf {result}");
    }

    // `reject_fail` at MAIL FROM: fail refused (5.7.23), temperror deferred (never 5xx),
    // softfail and none accepted.
    let reject = m.port("spfreject");
    let mark = m.log_mark();
    let r = mail_reply(reject, "a@fail.sa.test");
    assert!(r.starts_with("550 5.7.23 SPF validation failed"), "{r}");
    m.wait_log_after(
        mark,
        "Info: ICID {n} SPF: mailfrom identity a@fail.sa.test Fail",
    );
    let r = mail_reply(reject, "a@flaky.test");
    assert!(r.starts_with("451 4.7.24 "), "{r}");
    assert_eq!(mail_reply(reject, "a@soft.sa.test"), "250 2.1.0 Sender ok");
    assert_eq!(mail_reply(reject, "a@pass.sa.test"), "250 2.1.0 Sender ok");
    let mark = m.log_mark();
    assert_eq!(mail_reply(reject, "a@two.sa.test"), "250 2.1.0 Sender ok");
    m.wait_log_after(
        mark,
        "Info: MID {n} SPF: mailfrom identity a@two.sa.test PermError",
    );
    assert_eq!(
        m.metric(
            "mxgate_messages_rejected_total",
            &[("listener", "spfreject"), ("reason", "spf_fail")]
        ),
        1.0
    );

    // `spf_at: rcpt` with `spf_reject_softfail`: MAIL FROM is accepted, the RCPT refused.
    let rcpt = m.port("spfrcpt");
    for from in ["a@fail.sa.test", "a@soft.sa.test"] {
        let out = swaks(rcpt, from);
        assert_eq!(reply_to(&out, "MAIL FROM"), "250 2.1.0 Sender ok", "{out}");
        let r = reply_to(&out, "RCPT TO");
        assert!(r.starts_with("550 5.7.23 "), "{from}: {r}");
    }
    let out = swaks(rcpt, "a@pass.sa.test");
    assert_eq!(reply_to(&out, "RCPT TO"), "250 2.1.5 Recipient ok");
    drop(dns);
}

#[test]
fn a_dns_server_that_does_not_answer_defers_and_never_refuses() {
    if !tools_available(&["swaks"]) {
        return;
    }
    let (_silent, silent_port) = silent_server();
    let work = tempfile::tempdir().unwrap();
    let m = start(silent_port, work.path());
    let mark = m.log_mark();
    let r = mail_reply(m.port("verify"), "a@pass.sa.test");
    assert_eq!(
        r,
        "451 4.1.8 Domain of sender address could not be resolved, try again later"
    );
    m.wait_log_after(
        mark,
        "sender rejected, envelope sender domain could not be resolved",
    );
    let r = mail_reply(m.port("spfreject"), "a@pass.sa.test");
    assert!(r.starts_with("451 4.7.24 "), "{r}");
    // Under `tag` the temperror is kept and the mail goes on.
    assert_eq!(
        mail_reply(m.port("spftag"), "a@pass.sa.test"),
        "250 2.1.0 Sender ok"
    );
    assert_eq!(count(&m, "verify", "dns_verification", "unresolvable"), 1.0);
    assert_eq!(count(&m, "spfreject", "spf", "temperror"), 1.0);
    assert_eq!(count(&m, "spftag", "spf", "temperror"), 1.0);
}

/// An internationalized sender domain (SMTPUTF8) is verified and SPF-checked in its A-label
/// form, not waved through: `bücher.sa.test` exists as `xn--bcher-kva.sa.test` and its SPF
/// record refuses us; `nöpe.sa.test` does not exist.
#[tokio::test]
async fn an_internationalized_sender_domain_is_checked_in_its_a_label_form() {
    let (_silent, silent_port) = silent_server();
    let Some(dns) = zone(silent_port) else { return };
    let work = tempfile::tempdir().unwrap();
    let m = start(dns.port, work.path());
    let addr = format!("127.0.0.1:{}", m.port("guarded")).parse().unwrap();
    let mut c = Client::connect(addr, None).await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.cmd("EHLO client.sa.test").await.contains("SMTPUTF8"));
    let mark = m.log_mark();
    let r = c.cmd("MAIL FROM:<a@nöpe.sa.test> SMTPUTF8").await;
    assert!(r.starts_with("553 5.1.8 "), "{r}");
    m.wait_log_after(
        mark,
        "Address: <a@nöpe.sa.test> sender rejected, envelope sender domain does not exist",
    );
    let mark = m.log_mark();
    let r = c.cmd("MAIL FROM:<a@Bücher.sa.test> SMTPUTF8").await;
    assert!(r.starts_with("550 5.7.23 "), "{r}");
    m.wait_log_after(mark, "SPF: mailfrom identity a@Bücher.sa.test Fail");
    drop(dns);
}
