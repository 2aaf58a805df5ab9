//! The DNS self-check (issue 14 items 2 and 6) against a real dnsmasq serving MX, TXT and
//! TLSA records: `mxgate dns check DOMAIN` prints one ok/problem line per check with its
//! fix and exits 1 on a problem, and the running server exports the DANE and MTA-STS gauges
//! (refreshed every `dns.self_check_interval`).
//!
//! Four public listeners: `inbound` (mx1.example.com, certificate mx1), `second`
//! (mx2.example.com, certificate mx2 from a test CA, published as DANE-TA), `third`
//! (mx3.example.com, wrongly serving mx2's certificate, a TLSA record of another key) and
//! `fourth` (mx4.example.com, the demo certificate, no TLSA record). Four domains:
//! example.com is all correct; broken.example has every problem; missing.example publishes
//! no TXT record and garbled.example two malformed ones. mxgate takes TLS reports in
//! (`policies/tlsrpt.yaml`), so the TLS-RPT record to publish names its intake.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use support::dnsmasq::{tlsa_record, txt_record, Dnsmasq};
use support::pki::{ServerCert, TestPki};
use support::{copy_dir, repo, Mxgate};

const MTA_STS: &str = "\
listen: [\"127.0.0.1:0\"]
certificate: mta-sts
domains:
  example.com:
    mode: enforce
    mx: [mx1.example.com, mx2.example.com]
  broken.example:
    mode: enforce
    mx: [mx1.example.com]
  missing.example:
    mx: [mx1.example.com]
  garbled.example:
    mx: [mx1.example.com]
";

/// The served policy's id of a domain of [`MTA_STS`].
fn policy_id(mode: &str, mx: &[&str]) -> String {
    let mut text = format!("version: STSv1\r\nmode: {mode}\r\n");
    for m in mx {
        text.push_str(&format!("mx: {m}\r\n"));
    }
    text.push_str("max_age: 604800\r\n");
    mxgate::mta_sts::policy_id(&text)
}

/// Writes `NAME.crt` (the chain) and `NAME.key` into `certs`.
fn install(certs: &Path, name: &str, cert: &ServerCert) {
    let chain: String = cert
        .chain
        .iter()
        .map(|c| mxgate::certs::pem_encode("CERTIFICATE", c.as_ref()))
        .collect();
    std::fs::write(certs.join(format!("{name}.crt")), chain).unwrap();
    std::fs::write(
        certs.join(format!("{name}.key")),
        mxgate::certs::pem_encode("PRIVATE KEY", cert.key.secret_der()),
    )
    .unwrap();
}

/// SHA-256 of the leaf's SubjectPublicKeyInfo: the data of a `3 1 1` record.
fn spki_sha256(cert: &ServerCert) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let (_, x) = x509_parser::certificate::X509Certificate::from_der(cert.chain[0].as_ref())
        .expect("leaf parses");
    mxgate::certs::sha256(x.public_key().raw)
}

fn hex(b: &[u8]) -> String {
    mxgate::certs::hex(b)
}

/// The test world: configuration, certificates, dnsmasq.
struct World {
    cfg: tempfile::TempDir,
    work: tempfile::TempDir,
    dns: Dnsmasq,
    pki: TestPki,
    /// `3 1 1` data of mx1, mx2 and the staged next certificates.
    mx1: Vec<u8>,
    mx2: Vec<u8>,
    next: Vec<u8>,
    next3: Vec<u8>,
    /// The data of the stale record at mx3.
    stale: Vec<u8>,
}

fn world() -> Option<World> {
    let cfg = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("tests/fixtures/e2e"), cfg.path());
    let listeners = cfg.path().join("listeners");
    std::fs::remove_dir_all(&listeners).unwrap();
    std::fs::create_dir_all(&listeners).unwrap();
    for (name, host, cert) in [
        ("inbound", "mx1.example.com", Some("mx1")),
        ("second", "mx2.example.com", Some("mx2")),
        ("third", "mx3.example.com", Some("mx2")),
        ("fourth", "mx4.example.com", None),
    ] {
        let cert = cert.map_or(String::new(), |c| format!("certificate: {c}\n"));
        std::fs::write(
            listeners.join(format!("{name}.yaml")),
            format!("name: {name}\ntype: public\nbind: [\"127.0.0.1:0\"]\nhostname: {host}\nhat: \"off\"\nrat: inbound\n{cert}"),
        )
        .unwrap();
    }
    std::fs::write(cfg.path().join("policies/mta_sts.yaml"), MTA_STS).unwrap();
    // mxgate takes TLS reports in: the TLS-RPT record should send them here.
    std::fs::write(
        cfg.path().join("policies/tlsrpt.yaml"),
        "addresses: [tlsrpt@example.com]\nhttps_path: /tlsrpt\n",
    )
    .unwrap();
    let global = std::fs::read_to_string(cfg.path().join("mxgate.yaml")).unwrap();
    std::fs::write(
        cfg.path().join("mxgate.yaml"),
        global.replace(
            "dns:\n  timeout: 2s\n",
            "dns:\n  timeout: 2s\n  self_check_interval: 1s\n",
        ),
    )
    .unwrap();

    let certs = work.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let pki = TestPki::new();
    let mx1 = pki.leaf(&["mx1.example.com"], None);
    let mx2 = pki.leaf(&["mx2.example.com"], None);
    let next = pki.leaf(&["mx1.example.com"], None);
    let next3 = pki.leaf(&["mx3.example.com"], None);
    let stale = pki.leaf(&["mx3.example.com"], None);
    // The policy hosts' certificate, from the same (public-CA stand-in) test CA.
    let policy_hosts = [
        "mta-sts.example.com",
        "mta-sts.broken.example",
        "mta-sts.missing.example",
        "mta-sts.garbled.example",
    ];
    install(&certs, "mta-sts", &pki.leaf(&policy_hosts, None));
    install(&certs, "mx1", &mx1);
    install(&certs, "mx2", &mx2);
    install(&certs, "next", &next);
    install(&certs, "next3", &next3);
    let ca_der_sha256 = mxgate::certs::sha256(mx2.chain[1].as_ref());

    let id_ok = policy_id("enforce", &["mx1.example.com", "mx2.example.com"]);
    let args = [
        "--local=/example.com/".to_string(),
        "--local=/broken.example/".to_string(),
        "--local=/missing.example/".to_string(),
        "--local=/garbled.example/".to_string(),
        "--mx-host=example.com,mx1.example.com,10".to_string(),
        "--mx-host=example.com,mx2.example.com,20".to_string(),
        "--mx-host=broken.example,mx1.example.com,10".to_string(),
        "--mx-host=broken.example,mx3.example.com,20".to_string(),
        "--mx-host=missing.example,mx1.example.com,10".to_string(),
        "--mx-host=garbled.example,mx1.example.com,10".to_string(),
        txt_record("_mta-sts.example.com", &format!("v=STSv1; id={id_ok}")),
        txt_record(
            "_smtp._tls.example.com",
            "v=TLSRPTv1; rua=mailto:tlsrpt@example.com",
        ),
        txt_record("_mta-sts.broken.example", "v=STSv1; id=stale1"),
        txt_record(
            "_smtp._tls.broken.example",
            "v=TLSRPTv1; rua=tlsrpt@broken.example",
        ),
        txt_record("_mta-sts.garbled.example", "v=STSv1 id=abc"),
        txt_record("_smtp._tls.garbled.example", "v=TLSRPTv1;"),
        // mx1: the served key and the staged next key; mx2: DANE-TA on the test CA;
        // mx3: another key's record only.
        tlsa_record("_25._tcp.mx1.example.com", 3, 1, 1, &spki_sha256(&mx1)),
        tlsa_record("_25._tcp.mx1.example.com", 3, 1, 1, &spki_sha256(&next)),
        tlsa_record("_25._tcp.mx2.example.com", 2, 0, 1, &ca_der_sha256),
        tlsa_record("_25._tcp.mx3.example.com", 3, 1, 1, &spki_sha256(&stale)),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dns = Dnsmasq::start(&args)?;
    Some(World {
        mx1: spki_sha256(&mx1),
        mx2: spki_sha256(&mx2),
        next: spki_sha256(&next),
        next3: spki_sha256(&next3),
        stale: spki_sha256(&stale),
        cfg,
        work,
        dns,
        pki,
    })
}

impl World {
    fn certs(&self) -> std::path::PathBuf {
        self.work.path().join("certs")
    }

    /// `mxgate dns check DOMAIN` with the test paths, dnsmasq as resolver, and `extra`.
    fn check(&self, domain: &str, extra: &[&str]) -> (Output, String) {
        let out = support::mxgate::bin()
            .args(["dns", "check", domain])
            .args(Mxgate::path_args(self.cfg.path(), self.work.path()))
            .args(["--dns-resolver", &format!("127.0.0.1:{}", self.dns.port)])
            .args(extra)
            .output()
            .expect("run mxgate dns check");
        let stdout = String::from_utf8(out.stdout.clone()).unwrap();
        (out, stdout)
    }
}

/// Asserts that `out` has every line of `want` (exactly).
fn has_lines(out: &str, want: &[String]) {
    for w in want {
        assert!(
            out.lines().any(|l| l == w),
            "missing line:\n{w}\nin:\n{out}"
        );
    }
}

#[test]
fn a_correct_setup_is_all_ok() {
    let Some(w) = world() else { return };
    let next = w.certs().join("next.crt");
    let (out, text) = w.check("example.com", &["--next-cert", next.to_str().unwrap()]);
    let id = policy_id("enforce", &["mx1.example.com", "mx2.example.com"]);
    let certs = w.certs();
    let (mx1, mx2) = (certs.join("mx1.crt"), certs.join("mx2.crt"));
    has_lines(
        &text,
        &[
            format!("ok       _mta-sts.example.com TXT: \"v=STSv1; id={id}\" names the served policy (id {id})"),
            "ok       MX mx1.example.com: matches mx: mx1.example.com of the served policy".into(),
            "ok       MX mx2.example.com: matches mx: mx2.example.com of the served policy".into(),
            format!("ok       certificate for mx1.example.com: {} (listener inbound) covers it (DNS:mx1.example.com)", mx1.display()),
            format!("ok       certificate for mx2.example.com: {} (listener second) covers it (DNS:mx2.example.com)", mx2.display()),
            format!("ok       TLSA _25._tcp.mx1.example.com: 3 1 1 {} matches the key of {} (listener inbound)", hex(&w.mx1), mx1.display()),
            format!("ok       next certificate {} for mx1.example.com: _25._tcp.mx1.example.com already publishes 3 1 1 {} for the next key: safe to switch once its TTL has passed since publication", next.display(), hex(&w.next)),
            "ok       _smtp._tls.example.com TXT: \"v=TLSRPTv1; rua=mailto:tlsrpt@example.com\": reports go to mailto:tlsrpt@example.com".into(),
            "records to publish for example.com:".into(),
            format!("  _mta-sts.example.com. IN TXT \"v=STSv1; id={id}\""),
            "  _smtp._tls.example.com. IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@example.com\"".into(),
            format!("  _25._tcp.mx1.example.com. IN TLSA 3 1 1 {}", hex(&w.mx1)),
            format!("  _25._tcp.mx2.example.com. IN TLSA 3 1 1 {}", hex(&w.mx2)),
            "10 checks: all ok".into(),
        ],
    );
    // The DANE-TA record on the test CA matches mx2's served chain.
    assert!(
        text.lines().any(
            |l| l.starts_with("ok       TLSA _25._tcp.mx2.example.com: 2 0 1 ")
                && l.ends_with(&format!(
                    "matches the key of {} (listener second)",
                    mx2.display()
                ))
        ),
        "{text}"
    );
    assert!(!text.contains("problem"), "{text}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_problem_is_reported_with_its_fix() {
    let Some(w) = world() else { return };
    let next3 = w.certs().join("next3.crt");
    let (out, text) = w.check("broken.example", &["--next-cert", next3.to_str().unwrap()]);
    let id = policy_id("enforce", &["mx1.example.com"]);
    let mx2 = w.certs().join("mx2.crt");
    has_lines(
        &text,
        &[
            // A policy change without an id change.
            format!("problem  _mta-sts.broken.example TXT: \"v=STSv1; id=stale1\" has id stale1, not the served policy's id {id}: the policy changed but the id did not, so senders keep the policy they cached; fix: publish _mta-sts.broken.example. IN TXT \"v=STSv1; id={id}\" in place of the old record"),
            "ok       MX mx1.example.com: matches mx: mx1.example.com of the served policy".into(),
            // An MX the policy does not name.
            "problem  MX mx3.example.com: matches no mx: pattern of the served policy (mx1.example.com): senders enforcing it refuse this MX; fix: list mx3.example.com under domains.broken.example.mx in policies/mta_sts.yaml (then publish the policy's new id: run this check again to get the record), or point the MX at a host the policy names".into(),
            // A certificate whose SANs do not cover the listener's host name.
            format!("problem  certificate for mx3.example.com: {} (listener third) names DNS:mx2.example.com, not mx3.example.com: senders that verify (MTA-STS, DANE-TA) refuse it; fix: install a certificate naming mx3.example.com (`mxgate certs csr NAME --cn mx3.example.com`, then `mxgate certs install NAME --cert SIGNED`)", mx2.display()),
            // A TLSA record of another key.
            format!("problem  TLSA _25._tcp.mx3.example.com: none of \"3 1 1 {}\" matches the key of {} (listener third): DANE senders refuse to deliver; fix: publish _25._tcp.mx3.example.com. IN TLSA 3 1 1 {}", hex(&w.stale), mx2.display(), hex(&w.mx2)),
            // A staged key whose record is not published yet.
            format!("problem  next certificate {} for mx3.example.com: _25._tcp.mx3.example.com has no record for the next key: once it is served, DANE senders refuse to deliver; fix: publish _25._tcp.mx3.example.com. IN TLSA 3 1 1 {} beside the current record, wait at least its TTL (twice is safer), then install the next certificate", next3.display(), hex(&w.next3)),
            // A garbled TLS-RPT record.
            "problem  _smtp._tls.broken.example TXT: \"v=TLSRPTv1; rua=tlsrpt@broken.example\" is not well-formed: \"tlsrpt@broken.example\" is not a mailto: or https: URI; senders ignore it; fix: publish _smtp._tls.broken.example. IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@example.com,https://mta-sts.broken.example/tlsrpt\" (mxgate's intake, policies/tlsrpt.yaml)".into(),
            format!("  _mta-sts.broken.example. IN TXT \"v=STSv1; id={id}\""),
            format!("  _25._tcp.mx3.example.com. IN TLSA 3 1 1 {}", hex(&w.mx2)),
            format!("  _25._tcp.mx3.example.com. IN TLSA 3 1 1 {}", hex(&w.next3)),
            "10 checks: 6 problems".into(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{text}");

    // No TXT record at all.
    let (out, text) = w.check("missing.example", &[]);
    let id = policy_id("testing", &["mx1.example.com"]);
    has_lines(
        &text,
        &[
            format!("problem  _mta-sts.missing.example TXT: no record: senders never fetch the served policy; fix: publish _mta-sts.missing.example. IN TXT \"v=STSv1; id={id}\""),
            "problem  _smtp._tls.missing.example TXT: no record: senders send no TLS reports; fix: publish _smtp._tls.missing.example. IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@example.com,https://mta-sts.missing.example/tlsrpt\" (mxgate's intake, policies/tlsrpt.yaml)".into(),
            "6 checks: 2 problems".into(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{text}");

    // Both TXT records garbled.
    let (out, text) = w.check("garbled.example", &[]);
    has_lines(
        &text,
        &[
            format!("problem  _mta-sts.garbled.example TXT: \"v=STSv1 id=abc\" is not well-formed: it must begin with \"v=STSv1;\"; senders ignore it; fix: publish _mta-sts.garbled.example. IN TXT \"v=STSv1; id={id}\" in its place"),
            "problem  _smtp._tls.garbled.example TXT: \"v=TLSRPTv1;\" is not well-formed: it has no rua=; senders ignore it; fix: publish _smtp._tls.garbled.example. IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@example.com,https://mta-sts.garbled.example/tlsrpt\" (mxgate's intake, policies/tlsrpt.yaml)".into(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
}

/// The value of the series `name{label="value"}` on a `/metrics` page, if it exists.
fn gauge(text: &str, name: &str, label: &str, value: &str) -> Option<f64> {
    let prefix = format!("{name}{{{label}=\"{value}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Polls `/metrics` until every `(name, label, value, want)` holds.
fn wait_gauges(srv: &Mxgate, want: &[(&str, &str, &str, f64)]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = srv.metrics_text();
        let wrong: Vec<String> = want
            .iter()
            .filter(|(n, l, v, x)| gauge(&text, n, l, v) != Some(*x))
            .map(|(n, l, v, x)| {
                format!("{n}{{{l}=\"{v}\"}} = {:?}, want {x}", gauge(&text, n, l, v))
            })
            .collect();
        if wrong.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{wrong:#?}\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_running_server_exports_the_dane_and_mta_sts_gauges() {
    let Some(w) = world() else { return };
    let resolver = format!("127.0.0.1:{}", w.dns.port);
    let srv = Mxgate::start_with(
        w.cfg.path(),
        w.work.path(),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--dns-resolver",
            &resolver,
        ],
    );
    let (tlsa, sts) = ("mxgate_dane_tlsa_match", "mxgate_mta_sts_policy_valid");
    wait_gauges(
        &srv,
        &[
            (tlsa, "listener", "inbound", 1.0),
            (tlsa, "listener", "second", 1.0),
            (tlsa, "listener", "third", 0.0),
            (tlsa, "listener", "fourth", -1.0),
            (sts, "domain", "example.com", 1.0),
            (sts, "domain", "broken.example", 0.0),
            (sts, "domain", "missing.example", 0.0),
            (sts, "domain", "garbled.example", 0.0),
        ],
    );
    // A key change nobody published: within the 1 s interval the gauge says so.
    install(&w.certs(), "mx1", &w.pki.leaf(&["mx1.example.com"], None));
    wait_gauges(
        &srv,
        &[
            (tlsa, "listener", "inbound", 0.0),
            (tlsa, "listener", "second", 1.0),
        ],
    );
    srv.stop();
}
