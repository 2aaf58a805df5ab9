//! `policies/tlsrpt.yaml`: what loads, its defaults, and every mistake located.

use super::load::Overrides;
use super::tests::{config_dir, errors, loaded};

#[test]
fn report_addresses_load_lower_cased_with_defaults() {
    let d = config_dir(&[(
        "policies/tlsrpt.yaml",
        Some("addresses: [TLSRPT@Example.com, \"<reports@example.org>\"]\nrelay: true\n"),
    )]);
    let c = loaded(&d, &Overrides::default());
    let t = c.tlsrpt.as_ref().unwrap();
    assert_eq!(t.addresses, ["tlsrpt@example.com", "reports@example.org"]);
    assert!(t.relay);
    assert_eq!(t.https_path, None);
    assert_eq!(t.max_reports, 10_000);
    // The label domains default to the addresses' domains.
    assert_eq!(t.domains.label("Example.org"), "example.org");
    assert_eq!(t.domains.label("company-y.example"), "other");
    let none = config_dir(&[]);
    assert!(loaded(&none, &Overrides::default()).tlsrpt.is_none());
}

#[test]
fn mistakes_name_file_line_and_field() {
    let d = config_dir(&[(
        "policies/tlsrpt.yaml",
        Some(
            "addresses: [tlsrpt, a@example.com, A@example.com]\nrelay: maybe\nhttps_path: tlsrpt\n\
             domains: [\"not a domain\"]\nmax_reports: 0\nmax_store_size: 10K\ncolour: blue\n",
        ),
    )]);
    let errs = errors(&d, &Overrides::default()).join("\n");
    for want in [
        "policies/tlsrpt.yaml:1:13: addresses[0]: \"tlsrpt\" is not a mail address",
        "policies/tlsrpt.yaml:1:36: addresses[2]: a@example.com is listed twice",
        "policies/tlsrpt.yaml:2:8: relay:",
        "policies/tlsrpt.yaml:3:13: https_path: \"tlsrpt\": write an absolute URL path",
        "policies/tlsrpt.yaml:4:11: domains[0]: \"not a domain\" is not a domain name",
        "policies/tlsrpt.yaml:5:14: max_reports: keep at least 1 report",
        "policies/tlsrpt.yaml:6:17: max_store_size: at least 1MiB",
    ] {
        assert!(errs.contains(want), "missing {want:?} in:\n{errs}");
    }
    let d = config_dir(&[("policies/tlsrpt.yaml", Some("colour: blue\n"))]);
    let errs = errors(&d, &Overrides::default()).join("\n");
    assert!(
        errs.contains("policies/tlsrpt.yaml:1:1: unknown key `colour`, expected one of addresses"),
        "{errs}"
    );

    // An HTTPS intake needs the MTA-STS endpoint; something must receive reports.
    let d = config_dir(&[("policies/tlsrpt.yaml", Some("https_path: /tlsrpt\n"))]);
    let errs = errors(&d, &Overrides::default()).join("\n");
    assert!(
        errs.contains("policies/tlsrpt.yaml:1:13: https_path: reports are POSTed to the MTA-STS endpoint: configure policies/mta_sts.yaml"),
        "{errs}"
    );
    // Reserved mailboxes, and a commented-out mta_sts.yaml is no endpoint.
    let d = config_dir(&[
        (
            "policies/tlsrpt.yaml",
            Some("addresses: [Postmaster@example.com]\nhttps_path: /r\n"),
        ),
        (
            "policies/mta_sts.yaml",
            Some("# listen: [\"0.0.0.0:443\"]\n"),
        ),
    ]);
    let errs = errors(&d, &Overrides::default()).join("\n");
    assert!(
        errs.contains(
            "addresses[0]: \"Postmaster@example.com\": mail to a report address is taken"
        ),
        "{errs}"
    );
    assert!(
        errs.contains("https_path: reports are POSTed to the MTA-STS endpoint"),
        "{errs}"
    );
    assert!(!errs.contains("nothing receives reports"), "{errs}");
    let d = config_dir(&[("policies/tlsrpt.yaml", Some("relay: true\n"))]);
    let errs = errors(&d, &Overrides::default()).join("\n");
    assert!(
        errs.contains("policies/tlsrpt.yaml: nothing receives reports"),
        "{errs}"
    );
}

#[test]
fn the_policy_endpoint_cannot_take_a_listeners_address() {
    let d = config_dir(&[(
        "policies/mta_sts.yaml",
        Some("listen: [\"0.0.0.0:2525\"]\ndomains:\n  example.com: {}\n"),
    )]);
    let errs = errors(&d, &Overrides::default()).join("\n");
    assert!(
        errs.contains("policies/mta_sts.yaml: listen: 0.0.0.0:2525 clashes with listener inbound's bind address"),
        "{errs}"
    );
}
