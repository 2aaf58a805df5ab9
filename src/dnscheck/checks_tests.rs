//! Unit tests of the checks: facts and lookups built in memory, findings compared as lines.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;
use crate::dnscheck::tlsa::tests::chain;
use crate::dnscheck::Status;
use crate::mta_sts::Mode;

fn policy(mx: &[&str]) -> Policy {
    Policy {
        mode: Mode::Enforce,
        mx: mx.iter().map(|s| s.to_string()).collect(),
        max_age: 86_400,
    }
}

fn served(listener: &str, host: &str, chain: Vec<crate::certs::cert::Cert>) -> ServedCert {
    ServedCert {
        listener: listener.into(),
        hostname: host.into(),
        public: true,
        path: PathBuf::from(format!("certs/{listener}.crt")),
        chain: Ok(chain),
    }
}

fn txt(records: &[&str]) -> RecordLookup<String> {
    RecordLookup::Found(records.iter().map(|s| s.to_string()).collect())
}

fn lines(findings: &[Finding]) -> Vec<String> {
    findings.iter().map(Finding::line).collect()
}

#[test]
fn sts_record_current_stale_missing_several_garbled() {
    let p = policy(&["mx.example.com"]);
    let id = p.id();
    let current = format!("v=STSv1; id={id}");
    let f = check_sts("example.com", Some(&p), &txt(&["v=spf1 -all", &current]));
    assert_eq!(f.status, Status::Ok, "{}", f.line());
    assert_eq!(
        f.line(),
        format!(
            "ok       _mta-sts.example.com TXT: \"{current}\" names the served policy (id {id})"
        )
    );
    let publish = format!("publish _mta-sts.example.com. IN TXT \"v=STSv1; id={id}\"");
    let stale = check_sts("example.com", Some(&p), &txt(&["v=STSv1; id=old1"]));
    assert_eq!(
        stale.line(),
        format!("problem  _mta-sts.example.com TXT: \"v=STSv1; id=old1\" has id old1, not the served policy's id {id}: the policy changed but the id did not, so senders keep the policy they cached; fix: {publish} in place of the old record")
    );
    for (records, text) in [
        (RecordLookup::NotFound, "no record: senders never fetch"),
        (
            txt(&["v=spf1 -all"]),
            "no v=STSv1 record among \"v=spf1 -all\"",
        ),
        (
            txt(&["v=STSv1; id=a", "v=STSv1; id=b"]),
            "2 v=STSv1 records",
        ),
        (
            txt(&["v=STSv1 id=a"]),
            "is not well-formed: it must begin with \"v=STSv1;\"",
        ),
    ] {
        let f = check_sts("example.com", Some(&p), &records);
        assert_eq!(f.status, Status::Problem);
        assert!(f.text.contains(text), "{}", f.line());
        assert!(
            f.fix.as_deref().unwrap().starts_with(&publish),
            "{}",
            f.line()
        );
    }
    let failed = check_sts(
        "example.com",
        Some(&p),
        &RecordLookup::Failed("timeout".into()),
    );
    assert!(failed
        .line()
        .contains("lookup failed: timeout; fix: check that the resolvers"));
    // No policy served: no record is fine, a record is a problem.
    assert_eq!(
        check_sts("example.com", None, &RecordLookup::NotFound).status,
        Status::Ok
    );
    assert!(check_sts("example.com", None, &txt(&[&current]))
        .line()
        .contains("fix: add example.com under domains: in policies/mta_sts.yaml"));
}

#[test]
fn mx_hosts_against_the_policy_patterns() {
    let p = policy(&["mx1.example.com", "*.mx.example.com"]);
    let mx = txt(&[
        "mx1.example.com",
        "a.mx.example.com",
        "a.b.mx.example.com",
        "mx.example.com",
    ]);
    let got = lines(&check_mx("example.com", Some(&p), &mx, None));
    assert_eq!(
        got[0],
        "ok       MX mx1.example.com: matches mx: mx1.example.com of the served policy"
    );
    assert_eq!(
        got[1],
        "ok       MX a.mx.example.com: matches mx: *.mx.example.com of the served policy"
    );
    for (i, host) in [(2, "a.b.mx.example.com"), (3, "mx.example.com")] {
        assert_eq!(
            got[i],
            format!("problem  MX {host}: matches no mx: pattern of the served policy (mx1.example.com, *.mx.example.com): senders enforcing it refuse this MX; fix: list {host} under domains.example.com.mx in policies/mta_sts.yaml (then publish the policy's new id: run this check again to get the record), or point the MX at a host the policy names")
        );
    }
    let none = lines(&check_mx(
        "example.com",
        Some(&p),
        &RecordLookup::NotFound,
        Some("mx1.example.com"),
    ));
    assert!(
        none[0].ends_with("fix: publish example.com. IN MX 10 mx1.example.com."),
        "{none:?}"
    );
    let null = lines(&check_mx("example.com", Some(&p), &txt(&[""]), None));
    assert!(null[0].contains("null MX"), "{null:?}");
    assert_eq!(
        policy_valid(
            &p,
            &txt(&[&format!("v=STSv1; id={}", p.id())]),
            &txt(&["mx1.example.com"])
        ),
        Some(true)
    );
    assert_eq!(
        policy_valid(&p, &txt(&[&format!("v=STSv1; id={}", p.id())]), &mx),
        Some(false)
    );
    assert_eq!(
        policy_valid(&p, &txt(&["v=STSv1; id=old"]), &txt(&["mx1.example.com"])),
        Some(false)
    );
    assert_eq!(
        policy_valid(&p, &RecordLookup::NotFound, &txt(&["mx1.example.com"])),
        Some(false)
    );
    assert_eq!(
        policy_valid(&p, &RecordLookup::Failed("x".into()), &mx),
        None
    );
}

#[test]
fn certificates_cover_mx_hosts_by_listener_or_public_fallback() {
    let listeners = vec![
        served("inbound", "mx1.example.com", chain("mx1.example.com")),
        served("wild", "mx2.example.com", chain("*.example.com")),
    ];
    let ok = lines(&check_certificate("mx1.example.com", &listeners));
    assert_eq!(ok, ["ok       certificate for mx1.example.com: certs/inbound.crt (listener inbound) covers it (DNS:mx1.example.com)"]);
    assert_eq!(
        check_certificate("mx2.example.com", &listeners)[0].status,
        Status::Ok
    );
    // No listener named mx3: the public wildcard certificate covers it.
    let fallback = lines(&check_certificate("mx3.example.com", &listeners));
    assert!(fallback[0].contains("no listener has host name mx3.example.com; certs/wild.crt (public listener wild) covers it (DNS:*.example.com)"), "{fallback:?}");
    let bad = vec![served(
        "inbound",
        "mx1.example.com",
        chain("other.example.net"),
    )];
    let got = lines(&check_certificate("mx1.example.com", &bad));
    assert_eq!(got, ["problem  certificate for mx1.example.com: certs/inbound.crt (listener inbound) names DNS:other.example.net, not mx1.example.com: senders that verify (MTA-STS, DANE-TA) refuse it; fix: install a certificate naming mx1.example.com (`mxgate certs csr NAME --cn mx1.example.com`, then `mxgate certs install NAME --cert SIGNED`)"]);
    let got = lines(&check_certificate("a.b.example.com", &listeners));
    assert!(got[0].starts_with("problem  certificate for a.b.example.com: no listener has host name a.b.example.com, and no public listener's certificate covers it"), "{got:?}");
}

#[test]
fn tlsa_records_against_served_keys() {
    let c = chain("mx1.example.com");
    let listeners = vec![served("inbound", "mx1.example.com", c.clone())];
    let good = tlsa::record_311(&c[0]);
    let other = tlsa::record_311(&chain("mx1.example.com")[0]);
    let ok = lines(&check_tlsa(
        "mx1.example.com",
        &RecordLookup::Found(vec![other.clone(), good.clone()]),
        &listeners,
    ));
    assert_eq!(ok, [format!("ok       TLSA _25._tcp.mx1.example.com: {good} matches the key of certs/inbound.crt (listener inbound)")]);
    let none = lines(&check_tlsa(
        "mx1.example.com",
        &RecordLookup::NotFound,
        &listeners,
    ));
    assert_eq!(
        none,
        ["ok       TLSA _25._tcp.mx1.example.com: no record: not using DANE"]
    );
    let bad = lines(&check_tlsa(
        "mx1.example.com",
        &RecordLookup::Found(vec![other.clone()]),
        &listeners,
    ));
    assert_eq!(bad, [format!("problem  TLSA _25._tcp.mx1.example.com: none of \"{other}\" matches the key of certs/inbound.crt (listener inbound): DANE senders refuse to deliver; fix: publish _25._tcp.mx1.example.com. IN TLSA {good}")]);
    // DANE-TA on the issuer in the served chain matches; a PKIX-EE record never does.
    let ta = TlsaRecord {
        usage: 2,
        selector: 1,
        matching: 1,
        data: crate::certs::sha256(&c[1].spki),
    };
    assert_eq!(
        check_tlsa(
            "mx1.example.com",
            &RecordLookup::Found(vec![ta]),
            &listeners
        )[0]
        .status,
        Status::Ok
    );
    let pkix = TlsaRecord {
        usage: 1,
        ..good.clone()
    };
    let got = lines(&check_tlsa(
        "mx1.example.com",
        &RecordLookup::Found(vec![pkix]),
        &listeners,
    ));
    assert!(
        got[0].contains("usages 0 and 1 and unknown parameters are unusable for SMTP"),
        "{got:?}"
    );
}

#[test]
fn a_staged_key_needs_its_record_before_the_switch() {
    let current = chain("mx1.example.com");
    let next_chain = chain("mx1.example.com");
    let next = NextCert {
        path: "next.crt".into(),
        chain: Ok(next_chain.clone()),
    };
    let hosts = vec!["mx1.example.com".to_string()];
    let with = |records: Vec<TlsaRecord>| Lookups {
        sts: RecordLookup::NotFound,
        tlsrpt: RecordLookup::NotFound,
        mx: txt(&["mx1.example.com"]),
        tlsa: BTreeMap::from([("mx1.example.com".to_string(), RecordLookup::Found(records))]),
    };
    let now = tlsa::record_311(&current[0]);
    let later = tlsa::record_311(&next_chain[0]);
    let missing = lines(&check_next(&next, &hosts, &with(vec![now.clone()])));
    assert_eq!(missing, [format!("problem  next certificate next.crt for mx1.example.com: _25._tcp.mx1.example.com has no record for the next key: once it is served, DANE senders refuse to deliver; fix: publish _25._tcp.mx1.example.com. IN TLSA {later} beside the current record, wait at least its TTL (twice is safer), then install the next certificate")]);
    let both = lines(&check_next(&next, &hosts, &with(vec![now, later.clone()])));
    assert!(both[0].starts_with(&format!("ok       next certificate next.crt for mx1.example.com: _25._tcp.mx1.example.com already publishes {later}")), "{both:?}");
    let elsewhere = NextCert {
        path: "next.crt".into(),
        chain: Ok(chain("mx9.example.net")),
    };
    assert!(lines(&check_next(&elsewhere, &hosts, &with(vec![])))[0]
        .contains("it covers none of the MX hosts (mx1.example.com)"));
}

#[test]
fn tlsrpt_record_and_the_records_to_publish() {
    let ok = check_tlsrpt(
        "example.com",
        &txt(&["v=TLSRPTv1; rua=mailto:r@example.com"]),
        None,
    );
    assert_eq!(ok.line(), "ok       _smtp._tls.example.com TXT: \"v=TLSRPTv1; rua=mailto:r@example.com\": reports go to mailto:r@example.com");
    let missing = check_tlsrpt("example.com", &RecordLookup::NotFound, None);
    assert_eq!(missing.line(), "problem  _smtp._tls.example.com TXT: no record: senders send no TLS reports; fix: publish _smtp._tls.example.com. IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@example.com\" (any mailbox or https: URI that collects reports)");
    let garbled = check_tlsrpt(
        "example.com",
        &txt(&["v=TLSRPTv1; rua=r@example.com"]),
        None,
    );
    assert!(
        garbled
            .line()
            .contains("is not well-formed: \"r@example.com\" is not a mailto: or https: URI"),
        "{}",
        garbled.line()
    );

    // mxgate takes reports in: the record must send them there (among others).
    let ours = Some("mailto:tlsrpt@example.com,https://mta-sts.example.com/tlsrpt");
    let elsewhere = check_tlsrpt(
        "example.com",
        &txt(&["v=TLSRPTv1; rua=mailto:r@example.com"]),
        ours,
    );
    assert_eq!(elsewhere.line(), "problem  _smtp._tls.example.com TXT: \"v=TLSRPTv1; rua=mailto:r@example.com\" sends reports to mailto:r@example.com, none of which is mxgate's intake (mailto:tlsrpt@example.com,https://mta-sts.example.com/tlsrpt): its TLS-RPT metrics stay empty; fix: publish _smtp._tls.example.com. IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@example.com,https://mta-sts.example.com/tlsrpt\" (mxgate's intake, policies/tlsrpt.yaml), keeping other URIs if reports should go there too");
    for record in [
        "v=TLSRPTv1; rua=mailto:r@example.com,mailto:TLSRPT@example.com",
        "v=TLSRPTv1; rua=https://mta-sts.example.com/tlsrpt",
    ] {
        assert_eq!(
            check_tlsrpt("example.com", &txt(&[record]), ours).status,
            Status::Ok,
            "{record}"
        );
    }

    let c = chain("mx1.example.com");
    let p = policy(&["mx1.example.com"]);
    let facts = Facts {
        domain: "example.com".into(),
        policy: Some(p.clone()),
        listeners: vec![served("inbound", "mx1.example.com", c.clone())],
        next: vec![],
        tlsrpt_rua: None,
        policy_cert: Some((
            PathBuf::from("certs/mta-sts.crt"),
            Ok(chain("mta-sts.example.com")),
        )),
    };
    let lookups = Lookups {
        sts: txt(&[&format!("v=STSv1; id={}", p.id())]),
        tlsrpt: txt(&["v=TLSRPTv1; rua=mailto:r@example.com"]),
        mx: txt(&["mx1.example.com"]),
        tlsa: BTreeMap::from([(
            "mx1.example.com".to_string(),
            RecordLookup::Found(vec![tlsa::record_311(&c[0])]),
        )]),
    };
    let report = run(&facts, &lookups);
    assert_eq!(report.problems(), 0, "{}", report.render());
    assert_eq!(
        report.records,
        [
            format!("_mta-sts.example.com. IN TXT \"v=STSv1; id={}\"", p.id()),
            "_smtp._tls.example.com. IN TXT \"v=TLSRPTv1; rua=mailto:r@example.com\"".to_string(),
            format!(
                "_25._tcp.mx1.example.com. IN TLSA {}",
                tlsa::record_311(&c[0])
            ),
        ]
    );
    assert!(
        report.render().ends_with("\n6 checks: all ok\n"),
        "{}",
        report.render()
    );
}

/// Under an applied policy a self-signed MX or policy-host certificate is a problem (senders
/// validate both against public CAs); a CA-signed one, or mode none, is not.
#[test]
fn self_signed_certificates_fail_an_applied_policy() {
    let self_signed = |host: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        vec![crate::certs::cert::Cert::parse(cert.der().clone()).unwrap()]
    };
    let p = policy(&["mx1.example.com"]);
    let demo = vec![served(
        "inbound",
        "mx1.example.com",
        self_signed("mx1.example.com"),
    )];
    let got = lines(&super::super::webpki::check_mx(
        "mx1.example.com",
        &demo,
        Some(&p),
    ));
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("problem  certificate for mx1.example.com: certs/inbound.crt (listener inbound) is self-signed: senders applying the MTA-STS policy (mode enforce) check it against public CAs and fail, so they do not deliver; fix: install a certificate from a public CA"), "{got:?}");
    let ca = vec![served(
        "inbound",
        "mx1.example.com",
        chain("mx1.example.com"),
    )];
    assert!(super::super::webpki::check_mx("mx1.example.com", &ca, Some(&p)).is_empty());
    let mut none = p.clone();
    none.mode = Mode::None;
    assert!(super::super::webpki::check_mx("mx1.example.com", &demo, Some(&none)).is_empty());

    let host = |c| {
        lines(&super::super::webpki::check_policy_host(
            "example.com",
            Some(&p),
            Some(&(PathBuf::from("certs/mta-sts-demo.crt"), Ok(c))),
        ))
    };
    assert!(host(self_signed("mta-sts.example.com"))[0]
        .contains("is self-signed: senders fetch the policy only over HTTPS"));
    assert!(host(chain("mta-sts.example.org"))[0]
        .contains("names DNS:mta-sts.example.org, not mta-sts.example.com"));
    assert!(host(chain("mta-sts.example.com"))[0]
        .starts_with("ok       policy host mta-sts.example.com: certs/mta-sts-demo.crt covers it"));
}
