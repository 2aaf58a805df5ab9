//! Tests of `policies/routes.yaml` and `policies/destinations.yaml`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::outbound::{DomainMatch, OutboundTls, RouteHost};
use crate::config::tests::{config_dir, errors, loaded};
use crate::config::{load, Overrides};

/// The shipped config (as in `config::tests`).
fn shipped_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let s = root.join("shipped");
    if s.join("policies").is_dir() {
        s
    } else {
        root.to_path_buf()
    }
}

fn host(h: &str, port: u16, priority: u16) -> RouteHost {
    RouteHost {
        host: h.into(),
        port,
        priority,
    }
}

const CA: &str = "-----BEGIN CERTIFICATE-----\nMAo=\n-----END CERTIFICATE-----\n";

#[test]
fn shipped_routes_and_destinations_load() {
    let c = load(&shipped_dir(), &Overrides::default())
        .unwrap_or_else(|e| panic!("shipped config has errors:\n{e}"));
    assert_eq!(c.routes.routes.len(), 1);
    let r = c.routes.route_for("example.com").unwrap();
    assert_eq!(r.domain, DomainMatch::All);
    assert_eq!(r.hosts, [host("127.0.0.1", 2526, 10)]);
    assert!(!r.mx_lookup);
    let d = &c.destinations;
    assert_eq!(d.default.domain, DomainMatch::All);
    assert_eq!(d.default.max_concurrent_connections, 20);
    assert_eq!(d.default.max_messages_per_connection, 10);
    assert_eq!(d.default.max_recipients_per_message, 100);
    assert_eq!(d.default.tls, OutboundTls::Preferred);
    assert_eq!(d.default.ca_file, None);
    assert!(d.entries.is_empty());
    assert!(d.alert.enabled);
    assert_eq!(d.alert.interval, Duration::from_secs(3600));
    assert_eq!(d.alert.mail_to, None);
    assert_eq!(d.client_certificate, None);
    // The shipped file spells out the built-in values.
    assert_eq!(**d, Default::default());
}

#[test]
fn absent_files_give_empty_routes_and_builtin_controls() {
    let c = loaded(&config_dir(&[]), &Overrides::default());
    assert!(c.routes.routes.is_empty());
    assert_eq!(c.routes.route_for("example.com"), None);
    assert_eq!(*c.destinations, Default::default());
    // Empty files are the same as absent ones.
    let d = config_dir(&[
        ("policies/routes.yaml", Some("# nothing yet\n")),
        ("policies/destinations.yaml", Some("")),
    ]);
    let c = loaded(&d, &Overrides::default());
    assert!(c.routes.routes.is_empty());
    assert_eq!(*c.destinations, Default::default());
}

#[test]
fn routes_are_normalised_and_matched_by_precedence() {
    let routes = "\
routes:
  - domain: Example.COM.
    hosts:
      - {host: MAIL2.Internal.Example., priority: 20}
      - {host: 10.0.0.1, port: 2525, priority: 10}
      - {host: 10.0.0.2, port: 2525, priority: 10}
  - domain: .example.com
    hosts:
      - host: \"[2001:db8::25]\"
    mx_lookup: true
  - domain: all
    hosts:
      - host: 127.0.0.1
        port: 2526
";
    let d = config_dir(&[("policies/routes.yaml", Some(routes))]);
    let c = loaded(&d, &Overrides::default());
    let t = &c.routes;
    let exact = t.route_for("example.com").unwrap();
    assert_eq!(exact.domain, DomainMatch::Exact("example.com".into()));
    // Sorted by priority, file order kept within a priority.
    assert_eq!(
        exact.hosts,
        [
            host("10.0.0.1", 2525, 10),
            host("10.0.0.2", 2525, 10),
            host("mail2.internal.example", 25, 20)
        ]
    );
    assert!(!exact.mx_lookup);
    let sub = t.route_for("a.b.EXAMPLE.com").unwrap();
    assert_eq!(sub.hosts, [host("2001:db8::25", 25, 0)]);
    assert!(sub.mx_lookup);
    assert_eq!(
        t.route_for("badexample.com").unwrap().domain,
        DomainMatch::All
    );
}

#[test]
fn destination_entries_inherit_from_default() {
    let dests = "\
default:
  max_concurrent_connections: 5
  tls: required
  ca_file: certs/internal-ca.pem
destinations:
  - domain: partner.example
    tls: required-verify
    ca_file: certs/partner-ca.pem
  - domain: .partner.example
    max_messages_per_connection: 3
  - domain: public.example
    tls: preferred-verify
    ca_file: null
  - domain: legacy.example
    tls: no
alert_on_required_tls_failure:
  enabled: false
  interval: 30m
  mail_to: Postmaster@Corp.Example
client_certificate: outbound
";
    let d = config_dir(&[
        ("policies/destinations.yaml", Some(dests)),
        ("certs/internal-ca.pem", Some(CA)),
        ("certs/partner-ca.pem", Some(CA)),
        ("certs/outbound.crt", Some("x")),
        ("certs/outbound.key", Some("x")),
    ]);
    let c = loaded(&d, &Overrides::default());
    let ds = &c.destinations;
    let root = d.path();
    assert_eq!(ds.default.max_concurrent_connections, 5);
    assert_eq!(ds.default.max_messages_per_connection, 10);
    assert_eq!(ds.default.tls, OutboundTls::Required);
    assert_eq!(
        ds.default.ca_file.as_deref(),
        Some(root.join("certs/internal-ca.pem").as_path())
    );

    let p = ds.for_domain("partner.example");
    assert_eq!(p.domain, DomainMatch::Exact("partner.example".into()));
    assert_eq!(p.tls, OutboundTls::RequiredVerify);
    assert_eq!(p.max_concurrent_connections, 5);
    assert_eq!(p.max_recipients_per_message, 100);
    assert_eq!(
        p.ca_file.as_deref(),
        Some(root.join("certs/partner-ca.pem").as_path())
    );

    let s = ds.for_domain("mx1.partner.example");
    assert_eq!(s.domain, DomainMatch::Subdomains("partner.example".into()));
    assert_eq!(s.max_messages_per_connection, 3);
    assert_eq!(s.tls, OutboundTls::Required);
    assert_eq!(s.max_concurrent_connections, 5);
    assert_eq!(
        s.ca_file.as_deref(),
        Some(root.join("certs/internal-ca.pem").as_path())
    );

    let pubd = ds.for_domain("public.example");
    assert_eq!(pubd.tls, OutboundTls::PreferredVerify);
    assert_eq!(pubd.ca_file, None);
    // `tls: no` is the mode, not a YAML boolean.
    assert_eq!(ds.for_domain("legacy.example").tls, OutboundTls::No);
    assert_eq!(ds.for_domain("other.example").domain, DomainMatch::All);

    assert!(!ds.alert.enabled);
    assert_eq!(ds.alert.interval, Duration::from_secs(1800));
    assert_eq!(ds.alert.mail_to.as_deref(), Some("Postmaster@corp.example"));
    assert_eq!(ds.client_certificate.as_deref(), Some("outbound"));

    let d = config_dir(&[(
        "policies/destinations.yaml",
        Some("client_certificate: demo\n"),
    )]);
    let c = loaded(&d, &Overrides::default());
    assert_eq!(c.destinations.client_certificate.as_deref(), Some("demo"));
}

#[test]
fn route_errors_are_located() {
    let routes = "\
routes:
  - domain: ALL
    hosts:
      - host: 127.0.0.1
  - domain: Example.com
    hosts:
      - host: 127.0.0.1:25
      - host: mail..internal
        port: 0
        priority: 70000
      - {host: 10.0.0.1, port: abc}
  - domain: example.com.
    hosts: []
  - domain: \".bad..example\"
    hosts:
      - {host: a.example, priority: 1}
      - {host: A.example., priority: 2}
    mx_lookup: maybe
  - hosts:
      - {port: 25}
  - domain: .sub.example
";
    let d = config_dir(&[("policies/routes.yaml", Some(routes))]);
    assert_eq!(
            errors(&d, &Overrides::default()),
            [
                "policies/routes.yaml:2:13: routes[0].domain: the default route ALL must be the last route (other routes follow it)",
                "policies/routes.yaml:7:15: routes[1].hosts[0].host: \"127.0.0.1:25\": write the port under `port:`, not in `host`",
                "policies/routes.yaml:8:15: routes[1].hosts[1].host: \"mail..internal\" is not an IP address or host name",
                "policies/routes.yaml:9:15: routes[1].hosts[1].port: 0 is out of range: 1-65535",
                "policies/routes.yaml:10:19: routes[1].hosts[1].priority: 70000 is out of range: 0-65535",
                "policies/routes.yaml:11:32: routes[1].hosts[2].port: \"abc\" is not a whole number: write a number from 1 to 65535",
                "policies/routes.yaml:12:13: routes[2].domain: duplicate route for example.com (first at line 5)",
                "policies/routes.yaml:13:12: routes[2].hosts: a route needs at least one host",
                "policies/routes.yaml:14:13: routes[3].domain: \".bad..example\" is not a valid .subdomain form (e.g. .example.com)",
                "policies/routes.yaml:17:9: routes[3].hosts[1]: host a.example port 25 is listed twice in this route (first at line 16)",
                "policies/routes.yaml:18:16: routes[3].mx_lookup: \"maybe\" is not a boolean: write true or false",
                "policies/routes.yaml:19:5: routes[4].domain: missing required key `domain`",
                "policies/routes.yaml:20:9: routes[4].hosts[0].host: missing required key `host`",
                "policies/routes.yaml:21:5: routes[5].hosts: missing required key `hosts`",
            ]
        );
}

#[test]
fn duplicate_default_route_is_one_error() {
    let routes = "\
routes:
  - {domain: ALL, hosts: [{host: a.example}]}
  - {domain: all, hosts: [{host: b.example}]}
";
    let d = config_dir(&[("policies/routes.yaml", Some(routes))]);
    assert_eq!(
            errors(&d, &Overrides::default()),
            ["policies/routes.yaml:3:14: routes[1].domain: duplicate route for ALL (first at line 2)"]
        );
}

#[test]
fn destination_errors_are_located() {
    let dests = "\
default:
  domain: example.com
  max_concurrent_connections: 0
  tls: Required
destinations:
  - domain: partner.example
    max_messages_per_connection: many
    ca_file: certs/missing.pem
  - domain: Partner.Example.
    tls: required-verify
    ca_file: certs/not-pem.pem
  - domain: ALL
    max_recipients_per_message: 0
  - tls: no
  - domain: ok.example
    ca_file: \"\"
alert_on_required_tls_failure:
  enabled: maybe
  interval: 0s
  mail_to: admin
client_certificate: outbound
";
    let d = config_dir(&[
        ("policies/destinations.yaml", Some(dests)),
        ("certs/not-pem.pem", Some("not a certificate\n")),
        ("certs/outbound.crt", Some("x")),
    ]);
    assert_eq!(
            errors(&d, &Overrides::default()),
            [
                "policies/destinations.yaml:2:11: default.domain: `default` applies to every domain: remove `domain`, or add an entry under `destinations`",
                "policies/destinations.yaml:3:31: default.max_concurrent_connections: 0 is out of range: 1-4294967295",
                "policies/destinations.yaml:4:8: default.tls: unknown outbound TLS mode \"Required\": expected no, preferred, required, preferred-verify, required-verify or required-verify-hosted",
                "policies/destinations.yaml:7:34: destinations[0].max_messages_per_connection: \"many\" is not a whole number: write a number from 1 to 4294967295",
                "policies/destinations.yaml:8:14: destinations[0].ca_file: CA bundle \"certs/missing.pem\" not found (relative paths start at the config directory)",
                "policies/destinations.yaml:9:13: destinations[1].domain: duplicate destination for partner.example (first at line 6)",
                "policies/destinations.yaml:11:14: destinations[1].ca_file: CA bundle \"certs/not-pem.pem\" holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                "policies/destinations.yaml:12:13: destinations[2].domain: ALL is not a destination entry: set its values under `default`",
                "policies/destinations.yaml:13:33: destinations[2].max_recipients_per_message: 0 is out of range: 1-4294967295",
                "policies/destinations.yaml:14:5: destinations[3].domain: missing required key `domain`",
                "policies/destinations.yaml:16:14: destinations[4].ca_file: path is empty: write a PEM file, or null for the webpki roots",
                "policies/destinations.yaml:18:12: alert_on_required_tls_failure.enabled: \"maybe\" is not a boolean: write true or false",
                "policies/destinations.yaml:19:13: alert_on_required_tls_failure.interval: must be longer than 0",
                "policies/destinations.yaml:20:12: alert_on_required_tls_failure.mail_to: \"admin\" is not a mail address (e.g. postmaster@example.com), or null for no mail",
                "policies/destinations.yaml:21:21: client_certificate: certificate \"outbound\" not found: certs_dir has no outbound.key",
            ]
        );
}

#[test]
fn unknown_keys_and_syntax_errors_do_not_cascade() {
    let d = config_dir(&[
        (
            "policies/routes.yaml",
            Some("routes:\n  - domain: ALL\n    hosts: [{host: a.example, prio: 1}]\n"),
        ),
        (
            "policies/destinations.yaml",
            Some("default:\n  tls: [preferred\n"),
        ),
    ]);
    let errs = errors(&d, &Overrides::default());
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs[0].starts_with("policies/destinations.yaml:"),
        "{errs:#?}"
    );
    assert!(
        errs[1].starts_with("policies/routes.yaml:3:") && errs[1].contains("unknown key `prio`"),
        "{errs:#?}"
    );
}
