//! The outbound configuration commands: `mxgate destinations list` and `mxgate routes list`.

mod support;

use std::path::Path;
use std::process::Output;

use support::repo;

/// Runs `mxgate ARGS --config-dir DIR`.
fn run(args: &[&str], dir: &Path) -> Output {
    support::mxgate::bin()
        .args(args)
        .arg("--config-dir")
        .arg(dir)
        .output()
        .unwrap()
}

/// Stdout of a successful run.
fn stdout_ok(args: &[&str], dir: &Path) -> String {
    let out = run(args, dir);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The table rows (lines after the `===` rule, up to the first blank line), split on whitespace.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip_while(|l| !l.starts_with("==="))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// A copy of the shipped config with the two outbound files replaced.
fn config_with(routes: &str, destinations: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let root = repo();
    std::fs::copy(root.join("mxgate.yaml"), d.path().join("mxgate.yaml")).unwrap();
    for sub in ["listeners", "policies"] {
        std::fs::create_dir_all(d.path().join(sub)).unwrap();
        for e in std::fs::read_dir(root.join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), d.path().join(sub).join(e.file_name())).unwrap();
            }
        }
    }
    std::fs::write(d.path().join("policies/routes.yaml"), routes).unwrap();
    std::fs::write(d.path().join("policies/destinations.yaml"), destinations).unwrap();
    std::fs::create_dir_all(d.path().join("certs")).unwrap();
    std::fs::write(
        d.path().join("certs/partner-ca.pem"),
        "-----BEGIN CERTIFICATE-----\nMAo=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    d
}

#[test]
fn destinations_list_shows_the_shipped_default() {
    let s = stdout_ok(&["destinations", "list"], &repo());
    let lines: Vec<&str> = s.lines().collect();
    assert!(lines[0].contains("Rate Limiting /"), "{s}");
    for col in [
        "Domain",
        "Concurrency",
        "Connection",
        "Message",
        "TLS",
        "Roots",
    ] {
        assert!(lines[1].contains(col), "{col}: {s}");
    }
    assert_eq!(
        rows(&s),
        [["Default", "20", "10", "100", "preferred", "-"]],
        "{s}"
    );
    assert!(
        s.contains("Alert on required TLS failure: on, interval 1h, mail to (none)"),
        "{s}"
    );
    assert!(s.contains("Client certificate: (none)"), "{s}");
}

#[test]
fn routes_list_shows_the_shipped_default_route() {
    let s = stdout_ok(&["routes", "list"], &repo());
    assert!(s.starts_with("Domain  Host"), "{s}");
    assert!(s.lines().next().unwrap().contains("Priority"), "{s}");
    assert_eq!(rows(&s), [["ALL", "127.0.0.1", "2526", "10", "no"]], "{s}");
}

#[test]
fn entries_are_listed_in_file_order_with_the_default_last() {
    let routes = "\
routes:
  - domain: example.com
    hosts:
      - {host: mail2.internal.example, priority: 20}
      - {host: 127.0.0.1, port: 2526, priority: 10}
  - domain: .example.com
    hosts: [{host: \"2001:db8::25\"}]
    mx_lookup: true
  - domain: ALL
    hosts: [{host: 127.0.0.1, port: 2526}]
";
    let dests = "\
default:
  max_concurrent_connections: 8
destinations:
  - domain: partner.example
    tls: required-verify
    ca_file: certs/partner-ca.pem
  - domain: .hosted.example
    tls: required-verify-hosted
    max_recipients_per_message: 50
alert_on_required_tls_failure:
  interval: 30m
  mail_to: postmaster@example.com
";
    let d = config_with(routes, dests);
    let s = stdout_ok(&["destinations", "list"], d.path());
    assert_eq!(
        rows(&s),
        [
            vec![
                "partner.example",
                "8",
                "10",
                "100",
                "required-verify",
                "certs/partner-ca.pem"
            ],
            vec![
                ".hosted.example",
                "8",
                "10",
                "50",
                "required-verify-hosted",
                "webpki"
            ],
            vec!["Default", "8", "10", "100", "preferred", "-"],
        ],
        "{s}"
    );
    assert!(
        s.contains("interval 30m, mail to postmaster@example.com"),
        "{s}"
    );

    let s = stdout_ok(&["routes", "list"], d.path());
    assert_eq!(
        rows(&s),
        [
            vec!["example.com", "127.0.0.1", "2526", "10", "no"],
            vec!["mail2.internal.example", "25", "20"],
            vec![".example.com", "2001:db8::25", "25", "0", "yes"],
            vec!["ALL", "127.0.0.1", "2526", "0", "no"],
        ],
        "{s}"
    );
}

#[test]
fn no_routes_is_said_plainly() {
    let d = config_with("routes: []\n", "");
    let s = stdout_ok(&["routes", "list"], d.path());
    assert!(s.starts_with("No SMTP routes configured"), "{s}");
}

#[test]
fn bad_outbound_files_are_reported_with_location() {
    let d = config_with(
        "routes:\n  - domain: ALL\n    hosts: []\n",
        "default:\n  tls: sometimes\n",
    );
    for cmd in [["destinations", "list"], ["routes", "list"]] {
        let out = run(&cmd, d.path());
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("policies/destinations.yaml:2:8: default.tls: unknown outbound TLS mode \"sometimes\""),
            "{err}"
        );
        assert!(
            err.contains(
                "policies/routes.yaml:3:12: routes[0].hosts: a route needs at least one host"
            ),
            "{err}"
        );
    }
    let out = run(&["check"], d.path());
    assert_eq!(out.status.code(), Some(1));
}
