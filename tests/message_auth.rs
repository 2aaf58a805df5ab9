//! DKIM, DMARC and Authentication-Results (issue 15 part B) against real DNS and a real
//! signer: a private dnsmasq serves SPF, DKIM key and DMARC records for the `ma.test`
//! domains, Debian's dkimpy (`python3-dkim`) signs each message with a key published there,
//! and Python's smtplib sends it to the built binary (tests/fixtures/message_auth), which
//! relays into the test server. Each row of the matrix arrives with its
//! `Authentication-Results` (byte for byte, right after our `Received:`) or is refused with
//! its reply; ESA's DKIM and DMARC lines and the counts are checked too.

mod support;

use std::path::Path;
use std::process::Command;

use support::dnsmasq::{txt_record, Dnsmasq};
use support::sink::Sink;
use support::{copy_dir, repo, tools_available, Mxgate};

/// Debian's interpreter: python3-dkim installs dkimpy for it (a pyenv on PATH lacks it).
const PYTHON: &str = "/usr/bin/python3";

/// Signs (with dkimpy) and sends one message with smtplib; prints the DATA reply (or the
/// refusal of an earlier command).
const SEND: &str = r#"
import sys, smtplib
port, mfrom, hfrom, domain, key, alter, extra = sys.argv[1:8]
msg = (extra.replace('|', '\r\n') + 'From: <' + hfrom + '>\r\nTo: <bob@example.com>\r\n'
       'Subject: auth test\r\nDate: Sat, 05 Dec 2026 12:00:00 +0000\r\n'
       'Message-ID: <t@client.ma.test>\r\n\r\nHello, world.\r\n').encode()
if domain != '-':
    import dkim
    sig = dkim.sign(msg, b'sel', domain.encode(), open(key, 'rb').read(),
                    include_headers=[b'from', b'to', b'subject', b'date', b'message-id'],
                    linesep=b'\r\n')
    msg = sig + msg
if alter == '1':
    msg = msg.replace(b'Hello, world.', b'Hello, forged world.')
s = smtplib.SMTP('127.0.0.1', int(port), local_hostname='client.ma.test', timeout=30)
s.ehlo()
for step in (lambda: s.mail(mfrom), lambda: s.rcpt('bob@example.com'), lambda: s.data(msg)):
    code, resp = step()
    if code >= 300 and code != 354:
        break
print(code, resp.decode())
s.quit()
"#;

/// An RSA key for the `sel` selector: the PEM file and the base64 public key.
fn key(dir: &Path) -> (String, String) {
    let pem = dir.join("dkim.pem");
    let ok = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&pem)
        .arg("2048")
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "openssl genrsa");
    let out = Command::new("openssl")
        .args(["rsa", "-pubout", "-outform", "DER", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    use std::io::Write;
    let mut b64 = Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    b64.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let p = String::from_utf8(b64.wait_with_output().unwrap().stdout).unwrap();
    (pem.to_string_lossy().into_owned(), p)
}

/// `sel._domainkey.<domain>`: the key record, in strings of at most 200 characters (dnsmasq
/// starts a new string at each comma; a reader joins them).
fn key_record(domain: &str, p: &str) -> String {
    let text = format!("v=DKIM1; k=rsa; p={p}");
    let parts: Vec<String> = text
        .as_bytes()
        .chunks(200)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!("--txt-record=sel._domainkey.{domain},{}", parts.join(","))
}

fn zone(p: &str) -> Option<Dnsmasq> {
    // Everything under test. is answered here (the DMARC tree walk asks _dmarc.test too).
    let mut args: Vec<String> = vec!["--local=/test/".into()];
    for d in [
        "rej.ma.test",
        "quar.ma.test",
        "none.ma.test",
        "pct.ma.test",
        "other.ma.test",
        "child.org.ma.test",
    ] {
        args.push(format!("--mx-host={d},mail.ma.test,10"));
        args.push(key_record(d, p));
    }
    args.push("--host-record=mail.ma.test,127.0.0.9".into());
    args.extend([
        txt_record("rej.ma.test", "v=spf1 ip4:127.0.0.1 -all"),
        txt_record("_dmarc.rej.ma.test", "v=DMARC1; p=reject"),
        // SPF fails for the test client.
        txt_record("quar.ma.test", "v=spf1 ip4:192.0.2.1 -all"),
        txt_record("_dmarc.quar.ma.test", "v=DMARC1; p=quarantine"),
        txt_record("none.ma.test", "v=spf1 ip4:192.0.2.1 ~all"),
        txt_record("_dmarc.none.ma.test", "v=DMARC1; p=none"),
        // p=reject, but pct=0: a failure is never sampled, so quarantine applies (§6.6.4).
        txt_record("_dmarc.pct.ma.test", "v=DMARC1; p=reject; pct=0"),
        // The subdomain policy: none for org.ma.test itself, reject for its subdomains.
        txt_record("_dmarc.org.ma.test", "v=DMARC1; p=none; sp=reject"),
        txt_record("other.ma.test", "v=spf1 ip4:127.0.0.1 -all"),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Dnsmasq::start(&refs)
}

struct Setup {
    m: Mxgate,
    sink: Sink,
    pem: String,
    _dns: Dnsmasq,
    _dirs: Vec<tempfile::TempDir>,
}

async fn setup() -> Option<Setup> {
    if !tools_available(&[PYTHON, "openssl"]) {
        return None;
    }
    let has_dkimpy = Command::new(PYTHON)
        .args(["-c", "import dkim"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_dkimpy {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3-dkim must be installed in CI"
        );
        eprintln!("SKIP: python3-dkim (dkimpy) is not installed");
        return None;
    }
    let keys = tempfile::tempdir().unwrap();
    let (pem, p) = key(keys.path());
    let dns = zone(&p)?;
    let sink = Sink::start("127.0.0.1:0").await;
    let cfg = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("tests/fixtures/message_auth"), cfg.path());
    support::route_all_to(cfg.path(), sink.addr);
    let work = tempfile::tempdir().unwrap();
    let resolver = format!("127.0.0.1:{}", dns.port);
    let m = Mxgate::start_with(
        cfg.path(),
        work.path(),
        &[
            "--dns-resolver",
            &resolver,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    Some(Setup {
        m,
        sink,
        pem,
        _dns: dns,
        _dirs: vec![keys, cfg, work],
    })
}

/// One message to send.
type Row<'a> = (&'a str, &'a str, &'a str, &'a str, bool, &'a str);

/// One message: `(listener, MAIL FROM, From: address, signing domain or "-", alter body,
/// extra header lines joined by '|')`; returns the final reply.
async fn send(s: &Setup, row: Row<'_>) -> String {
    let (listener, mfrom, hfrom, domain, alter, extra) = row;
    let port = s.m.port(listener).to_string();
    let args: Vec<String> = [
        port.as_str(),
        mfrom,
        hfrom,
        domain,
        &s.pem,
        if alter { "1" } else { "0" },
        extra,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(PYTHON)
            .arg("-c")
            .arg(SEND)
            .args(&args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
            + &String::from_utf8_lossy(&out.stderr)
    })
    .await
    .unwrap()
}

/// The header fields of a delivered message, each with its folding, CRLF included.
fn fields(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut out: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.push_str(line);
                last.push_str("\r\n");
            }
        } else {
            out.push(format!("{line}\r\n"));
        }
    }
    out
}

/// Waits until the sink holds a message whose Subject line is there and whose MAIL FROM is
/// `from`; returns its header fields.
async fn delivered(s: &Setup, from: &str) -> Vec<String> {
    for _ in 0..100 {
        if let Some(m) = s.sink.messages().into_iter().find(|m| m.from == from) {
            return fields(&m.bytes);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no message from {from} arrived; log:\n{}", s.m.log_text());
}

fn ar(methods: &[&str]) -> String {
    format!(
        "Authentication-Results: mx.test.example;\r\n\t{}\r\n",
        methods.join(";\r\n\t")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_dmarc_matrix_with_real_dns_and_a_real_signer() {
    let Some(s) = setup().await else { return };
    // dkimpy writes no i=; mail-auth reports its default, @d (RFC 6376 §3.5).
    let dkim_pass = |d: &str| format!("dkim=pass header.d={d} header.s=sel header.i=@{d}");

    // (row, reply, the Authentication-Results, then the next header when it is ours).
    let rows: Vec<(Row, &str, String, Option<&str>)> = vec![
        // DKIM pass, SPF pass, p=reject: delivered.
        (
            (
                "enforce",
                "a@rej.ma.test",
                "a@rej.ma.test",
                "rej.ma.test",
                false,
                "",
            ),
            "250 2.0.0 Ok: queued as 1",
            ar(&[
                "spf=pass smtp.mailfrom=a@rej.ma.test",
                &dkim_pass("rej.ma.test"),
                "dmarc=pass (p=reject) header.from=rej.ma.test",
            ]),
            None,
        ),
        // DKIM pass with SPF fail, p=quarantine: DKIM alone aligns, delivered unmarked.
        (
            (
                "enforce",
                "b@quar.ma.test",
                "b@quar.ma.test",
                "quar.ma.test",
                false,
                "",
            ),
            "250",
            ar(&[
                "spf=fail smtp.mailfrom=b@quar.ma.test",
                &dkim_pass("quar.ma.test"),
                "dmarc=pass (p=quarantine) header.from=quar.ma.test",
            ]),
            None,
        ),
        // No signature, SPF fail, p=quarantine: delivered, marked for the internal server.
        (
            (
                "enforce",
                "c@quar.ma.test",
                "c@quar.ma.test",
                "-",
                false,
                "",
            ),
            "250",
            ar(&[
                "spf=fail smtp.mailfrom=c@quar.ma.test",
                "dkim=none",
                "dmarc=fail (p=quarantine) header.from=quar.ma.test",
            ]),
            Some("X-Mxgate-DMARC: quarantine\r\n"),
        ),
        // SPF softfail, DKIM pass, p=none.
        (
            (
                "enforce",
                "d@none.ma.test",
                "d@none.ma.test",
                "none.ma.test",
                false,
                "",
            ),
            "250",
            ar(&[
                "spf=softfail smtp.mailfrom=d@none.ma.test",
                &dkim_pass("none.ma.test"),
                "dmarc=pass (p=none) header.from=none.ma.test",
            ]),
            None,
        ),
        // p=reject with pct=0: the failure is not sampled, quarantine applies.
        (
            (
                "enforce",
                "e@other.ma.test",
                "e@pct.ma.test",
                "-",
                false,
                "",
            ),
            "250",
            ar(&[
                "spf=pass smtp.mailfrom=e@other.ma.test",
                "dkim=none",
                "dmarc=fail (p=reject) header.from=pct.ma.test",
            ]),
            Some("X-Mxgate-DMARC: quarantine\r\n"),
        ),
        // Under `tag`, a p=reject failure (body altered after signing) is delivered.
        (
            (
                "tag",
                "f@other.ma.test",
                "f@rej.ma.test",
                "rej.ma.test",
                true,
                "",
            ),
            "250",
            String::new(),
            None,
        ),
        // `dmarc: enforce` with `spf: off`: SPF is evaluated after DATA for DMARC.
        (
            (
                "dmarconly",
                "g@rej.ma.test",
                "g@rej.ma.test",
                "-",
                false,
                "",
            ),
            "250",
            ar(&[
                "spf=pass smtp.mailfrom=g@rej.ma.test",
                "dkim=none",
                "dmarc=pass (p=reject) header.from=rej.ma.test",
            ]),
            None,
        ),
        // SPF alone: the header has SPF alone.
        (
            (
                "spfonly",
                "h@none.ma.test",
                "h@none.ma.test",
                "none.ma.test",
                false,
                "",
            ),
            "250",
            ar(&["spf=softfail smtp.mailfrom=h@none.ma.test"]),
            None,
        ),
        // A forged Authentication-Results with our authserv-id is removed; another kept.
        (
            (
                "tag",
                "i@rej.ma.test",
                "i@rej.ma.test",
                "-",
                false,
                "Authentication-Results: mx.test.example; dmarc=pass header.from=bank.test|\
                 Authentication-Results: upstream.example; spf=pass smtp.mailfrom=x@y.test|\
                 X-Mxgate-DMARC: none|",
            ),
            "250",
            ar(&[
                "spf=pass smtp.mailfrom=i@rej.ma.test",
                "dkim=none",
                "dmarc=pass (p=reject) header.from=rej.ma.test",
            ]),
            None,
        ),
    ];
    for (row, reply, want, next) in &rows {
        let got = send(&s, *row).await;
        assert!(got.starts_with(reply), "{row:?}: {got}");
        let h = delivered(&s, row.1).await;
        assert!(h[0].starts_with("Received: from client.ma.test"), "{h:?}");
        if !want.is_empty() {
            assert_eq!(&h[1], want, "{row:?}");
        }
        match next {
            Some(n) => assert_eq!(&h[2], n, "{row:?}"),
            None => assert!(!h.iter().any(|f| f.starts_with("X-Mxgate-DMARC")), "{h:?}"),
        }
    }

    // The altered message under `tag`: DKIM fail, DMARC fail, delivered.
    let h = delivered(&s, "f@other.ma.test").await;
    assert_eq!(
        h[1],
        ar(&[
            "spf=pass smtp.mailfrom=f@other.ma.test",
            "dkim=fail (body hash did not verify) header.d=rej.ma.test header.s=sel header.i=@rej.ma.test",
            "dmarc=fail (p=reject) header.from=rej.ma.test",
        ])
    );

    // The forgery: ours removed, the other kept, logged.
    let h = delivered(&s, "i@rej.ma.test").await;
    let ars: Vec<&String> = h
        .iter()
        .filter(|f| f.starts_with("Authentication-Results"))
        .collect();
    assert_eq!(ars.len(), 2, "{h:?}");
    assert_eq!(
        ars[1],
        "Authentication-Results: upstream.example; spf=pass smtp.mailfrom=x@y.test\r\n"
    );
    s.m.wait_log("mxgate: MID 9 removed forged headers: 1 Authentication-Results claiming mx.test.example, 1 X-Mxgate-DMARC");

    // p=reject failures under `enforce`: refused, nothing delivered.
    let refused = [
        // Body altered after signing, SPF of another domain: no aligned pass.
        (
            "enforce",
            "j@other.ma.test",
            "j@rej.ma.test",
            "rej.ma.test",
            true,
            "",
        ),
        // The subdomain policy sp=reject of org.ma.test.
        (
            "enforce",
            "k@other.ma.test",
            "k@child.org.ma.test",
            "-",
            false,
            "",
        ),
    ];
    for row in refused {
        let got = send(&s, row).await;
        assert_eq!(
            got, "550 5.7.1 Message refused: DMARC policy of the From domain (reject)",
            "{row:?}"
        );
    }

    // ESA's lines.
    let log = s.m.log_text();
    for line in [
        "DKIM: pass signature verified (d=rej.ma.test s=sel i=@rej.ma.test)",
        "DMARC: Message from domain rej.ma.test, DMARC pass (SPF aligned True, DKIM aligned True)",
        "DMARC: Message from domain quar.ma.test, DMARC fail (SPF aligned False, DKIM aligned False), policy quarantine",
        "DMARC: Message from domain quar.ma.test, quarantine applied (X-Mxgate-DMARC: quarantine)",
        "DKIM: no signature",
        "DMARC: Message from domain child.org.ma.test, DMARC fail (SPF aligned False, DKIM aligned False), policy reject",
        "message refused: DMARC fail for child.org.ma.test (p=reject, dmarc: enforce)",
    ] {
        assert!(log.contains(line), "missing {line:?} in:\n{log}");
    }
    assert!(
        log.contains(
            "DKIM: permfail body hash did not verify (d=rej.ma.test s=sel i=@rej.ma.test)"
        ),
        "{log}"
    );
    assert!(s
        .sink
        .messages()
        .iter()
        .all(|m| !m.from.starts_with('j') && !m.from.starts_with('k')));

    // The counts: method and result labels only.
    let count = |listener: &str, method: &str, result: &str| {
        s.m.metric(
            "mxgate_sender_auth_total",
            &[
                ("listener", listener),
                ("sender_group", "ALL"),
                ("method", method),
                ("result", result),
            ],
        )
    };
    assert_eq!(count("enforce", "dmarc", "pass"), 3.0);
    assert_eq!(count("enforce", "dmarc", "fail"), 4.0);
    assert_eq!(count("enforce", "dkim", "pass"), 3.0);
    assert_eq!(count("enforce", "dkim", "fail"), 1.0);
    assert_eq!(count("tag", "dkim", "fail"), 1.0);
    assert_eq!(count("dmarconly", "spf", "pass"), 1.0);
    assert_eq!(
        s.m.metric(
            "mxgate_messages_rejected_total",
            &[("listener", "enforce"), ("reason", "dmarc_reject")]
        ),
        2.0
    );
}

/// What an outsider tried against the checks after DATA: a header section that folds into
/// ours or that another parser reads differently is refused (550 5.6.0); under `enforce` a
/// message without one author domain is refused (550 5.7.1), under `tag` it is delivered;
/// past five signatures, and for rsa-sha1, DKIM is not verified (`policy`), so a flood of
/// signatures costs no DNS and cannot turn a p=reject failure into a delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_would_fool_dmarc_or_fold_into_ours_and_signature_floods() {
    let Some(s) = setup().await else { return };
    let malformed = [
        (
            "\t; dkim=pass header.d=rej.ma.test;|\tdmarc=pass header.from=rej.ma.test|",
            "550 5.6.0 Message refused: malformed header section (the first header line is a continuation)",
        ),
        (
            "X-A: 1|garbage|",
            "550 5.6.0 Message refused: malformed header section (a header line is not a field)",
        ),
        // A name alone on the first line and its colon on the next: DMARC's parser stops
        // there, another parser reads on (the outsider's second round).
        (
            "X-Foo| : bar|",
            "550 5.6.0 Message refused: malformed header section (a header line is not a field)",
        ),
    ];
    for (extra, reply) in malformed {
        for listener in ["enforce", "tag", "spfonly"] {
            let got = send(
                &s,
                (
                    listener,
                    "m@other.ma.test",
                    "m@rej.ma.test",
                    "-",
                    false,
                    extra,
                ),
            )
            .await;
            assert_eq!(got, reply, "{listener} {extra:?}");
        }
    }
    // Two From fields, or two author domains in one: no DMARC domain.
    let two_from = "From: <ceo@rej.ma.test>|";
    let got = send(
        &s,
        (
            "enforce",
            "n@other.ma.test",
            "n@other.ma.test",
            "-",
            false,
            two_from,
        ),
    )
    .await;
    assert_eq!(
        got,
        "550 5.7.1 Message refused: DMARC needs one From address (2 From fields, not one)"
    );
    let got = send(
        &s,
        (
            "tag",
            "o@other.ma.test",
            "o@other.ma.test",
            "-",
            false,
            two_from,
        ),
    )
    .await;
    assert!(got.starts_with("250 "), "{got}");
    let h = delivered(&s, "o@other.ma.test").await;
    assert!(
        h[1].contains("dmarc=none;") || h[1].ends_with("dmarc=none\r\n"),
        "{h:?}"
    );
    s.m.wait_log("DMARC: Verification skipped (no single From domain)");
    s.m.wait_log(
        "message refused: DMARC needs one From address: 2 From fields, not one (dmarc: enforce)",
    );
    assert!(!s
        .sink
        .messages()
        .iter()
        .any(|m| m.from.starts_with('m') || m.from.starts_with('n')));

    // A real signature, then an rsa-sha1 one and six more: five verified, the rest `policy`.
    let mut extra = String::from(
        "DKIM-Signature: v=1; a=rsa-sha1; d=old.ma.test; s=sel; h=from; bh=AAAA; b=AAAA|",
    );
    for n in 1..=6 {
        extra.push_str(&format!(
            "DKIM-Signature: v=1; a=rsa-sha256; d=n{n}.ma.test; s=sel; h=from; bh=AAAA; b=AAAA|"
        ));
    }
    let got = send(
        &s,
        (
            "enforce",
            "p@rej.ma.test",
            "p@rej.ma.test",
            "rej.ma.test",
            false,
            &extra,
        ),
    )
    .await;
    assert!(got.starts_with("250 "), "{got}");
    let h = delivered(&s, "p@rej.ma.test").await;
    let ar = &h[1];
    assert!(ar.contains("dkim=pass header.d=rej.ma.test"), "{ar}");
    assert!(
        ar.contains(
            "dkim=policy (rsa-sha1 is not accepted RFC 8301) header.d=old.ma.test header.s=sel"
        ),
        "{ar}"
    );
    assert!(
        ar.contains("dkim=policy (signature limit reached) header.d=n5.ma.test"),
        "{ar}"
    );
    assert!(
        ar.contains("dkim=policy (signature limit reached) header.d=n6.ma.test"),
        "{ar}"
    );
    assert!(
        ar.contains("dmarc=pass (p=reject) header.from=rej.ma.test"),
        "{ar}"
    );
    assert_eq!(ar.matches("dkim=").count(), 8, "{ar}");
    s.m.wait_log("DKIM: policy signature limit reached (d=n6.ma.test s=sel i=)");
}
