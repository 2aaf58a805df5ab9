//! Tests of the network settings: the IPv6 prefix of per-IP limits, the hosts-file opt-in.

use super::tests::{config_dir, errors, loaded};
use super::Overrides;

#[test]
fn trust_09_ipv6_prefix_is_validated_with_a_located_error() {
    let d = config_dir(&[]);
    assert_eq!(
        loaded(&d, &Overrides::default()).global.per_ip_ipv6_prefix,
        64
    );
    let d = config_dir(&[("mxgate.yaml", Some("per_ip:\n  ipv6_prefix: 56\n"))]);
    assert_eq!(
        loaded(&d, &Overrides::default()).global.per_ip_ipv6_prefix,
        56
    );
    for bad in ["129", "16", "sixty-four"] {
        let d = config_dir(&[(
            "mxgate.yaml",
            Some(&format!("per_ip:\n  ipv6_prefix: {bad}\n")),
        )]);
        assert_eq!(
            errors(&d, &Overrides::default()),
            [format!(
                "mxgate.yaml:2:16: per_ip.ipv6_prefix: {bad:?} is not a prefix length from 32 to 128 (64: each /64 counts as one client)"
            )]
        );
    }
}

#[test]
fn trust_21_hosts_file_is_opt_in_and_checked() {
    let d = config_dir(&[]);
    assert_eq!(
        loaded(&d, &Overrides::default()).global.dns.hosts_file,
        None
    );
    let d = config_dir(&[
        ("mxgate.yaml", Some("dns:\n  hosts_file: hosts\n")),
        ("hosts", Some("192.0.2.5 mail.example.com\n")),
    ]);
    assert_eq!(
        loaded(&d, &Overrides::default()).global.dns.hosts_file,
        Some(d.path().join("hosts"))
    );
    let d = config_dir(&[("mxgate.yaml", Some("dns:\n  hosts_file: nosuch\n"))]);
    let errs = errors(&d, &Overrides::default());
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("mxgate.yaml:2:15: dns.hosts_file: cannot read "),
        "{errs:?}"
    );
}

#[test]
fn trust_03_ipv4_mapped_bind_clashes_with_its_ipv4_wildcard() {
    let listener = "name: inbound\ntype: public\nbind: [\"0.0.0.0:2525\", \"[::ffff:127.0.0.1]:2525\", \"[::]:2525\"]\nhostname: mx.example.com\nhat: inbound\nrat: inbound\n";
    let d = config_dir(&[("listeners/inbound.yaml", Some(listener))]);
    let errs = errors(&d, &Overrides::default());
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("bind[1]: [::ffff:127.0.0.1]:2525 overlaps 0.0.0.0:2525"),
        "{errs:?}"
    );
}
