//! Tests of the config loader: the shipped config, broken configs, overrides, values.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::model::{ListenerKind, MailLogFormat, MailLogTarget};
use super::*;
use crate::policy::flow::{Action, TlsMode};
use crate::policy::hat::{Peer, ReverseDns};

/// The shipped config: `shipped/` in the scratch crate, the crate root in the project.
fn shipped_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let s = root.join("shipped");
    if s.join("policies").is_dir() {
        s
    } else {
        root.to_path_buf()
    }
}

pub(super) const MAIL_FLOW: &str = "\
policies:
  ACCEPTED: {action: accept}
  BLOCKED: {action: reject}
  RELAYED: {action: relay}
";
pub(super) const HAT: &str = "\
inbound:
  sender_groups: []
relay:
  sender_groups:
    - {name: RELAYLIST, policy: RELAYED, match: [127.0.0.1]}
  default_policy: BLOCKED
";
pub(super) const RAT: &str = "inbound:\n  entries:\n    - recipient: example.com\n";
pub(super) const PUBLIC: &str = "\
name: inbound
type: public
bind: [\"127.0.0.1:2525\"]
hostname: mx.example.com
hat: inbound
rat: inbound
";

/// A temporary config dir: a small valid config with `changes` applied (`None` removes a file).
pub(super) fn config_dir(changes: &[(&str, Option<&str>)]) -> tempfile::TempDir {
    let mut files: BTreeMap<&str, &str> = BTreeMap::from([
        ("policies/mail_flow.yaml", MAIL_FLOW),
        ("policies/hat.yaml", HAT),
        ("policies/rat.yaml", RAT),
        ("listeners/inbound.yaml", PUBLIC),
    ]);
    for (path, content) in changes {
        match content {
            Some(c) => files.insert(path, c),
            None => files.remove(path),
        };
    }
    let d = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let full = d.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    }
    d
}

/// Loads and expects errors, returned as display lines.
pub(super) fn errors(d: &tempfile::TempDir, o: &Overrides) -> Vec<String> {
    match load(d.path(), o) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    }
}

/// Loads and expects success.
pub(super) fn loaded(d: &tempfile::TempDir, o: &Overrides) -> model::Config {
    load(d.path(), o).unwrap_or_else(|e| panic!("unexpected errors:\n{e}"))
}

pub(super) fn peer(ip: &str, rdns: ReverseDns) -> Peer {
    Peer {
        ip: ip.parse().unwrap(),
        rdns,
        dnslists_listed: vec![],
    }
}

#[test]
fn shipped_config_loads_without_errors() {
    let dir = shipped_dir();
    let c = load(&dir, &Overrides::default())
        .unwrap_or_else(|e| panic!("shipped config has errors:\n{e}"));

    assert_eq!(c.global.spool_dir, dir.join("spool"));
    assert_eq!(c.global.certs_dir, dir.join("certs"));
    assert_eq!(c.global.mail_log, MailLogTarget::Stdout);
    assert_eq!(c.global.mail_log_format, MailLogFormat::Text);
    assert_eq!(
        c.global.metrics_listen,
        Some("127.0.0.1:9187".parse().unwrap())
    );
    assert_eq!(c.global.dns.timeout, Duration::from_secs(5));
    assert!(c.global.dns.resolvers.is_empty());
    assert_eq!(c.global.shutdown_grace, Duration::from_secs(30));

    let names: Vec<&str> = c.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["inbound", "relay"]);
    let inbound = &c.listeners[0];
    assert_eq!(inbound.kind, ListenerKind::Public);
    assert_eq!(
        inbound.bind,
        vec!["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(inbound.hostname, "mx.example.com");
    assert_eq!(
        (inbound.certificate.clone(), inbound.key.clone()),
        (None, None)
    );
    assert_eq!(
        inbound.rat.as_ref().map(|r| r.name.as_str()),
        Some("inbound")
    );
    assert_eq!(inbound.max_connections, 1000);
    assert_eq!(inbound.max_command_line, 512);
    assert_eq!(inbound.timeouts, model::Timeouts::default());
    assert!(inbound.proxy_protocol.is_none());
    let relay = &c.listeners[1];
    assert_eq!(relay.kind, ListenerKind::Private);
    assert_eq!(
        relay.bind,
        vec!["127.0.0.1:2587".parse::<SocketAddr>().unwrap()]
    );
    assert!(relay.rat.is_none());

    let groups: Vec<&str> = inbound.hat.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(
        groups,
        ["ALLOWLIST", "BLOCKLIST", "SUSPECTLIST", "UNKNOWNLIST"]
    );
    let policies: Vec<&str> = inbound
        .hat
        .groups
        .iter()
        .map(|g| g.policy.name.as_str())
        .collect();
    assert_eq!(policies, ["TRUSTED", "BLOCKED", "THROTTLED", "ACCEPTED"]);
    assert_eq!(inbound.hat.fallback.name, "ACCEPTED");
    let c1 = inbound
        .hat
        .classify(&peer("192.0.2.9", ReverseDns::Missing));
    assert_eq!(
        (c1.group.as_str(), c1.policy.tls),
        ("ALLOWLIST", TlsMode::Required)
    );
    assert_eq!(
        inbound
            .hat
            .classify(&peer("203.0.113.1", ReverseDns::Missing))
            .group,
        "SUSPECTLIST"
    );
    assert_eq!(
        inbound
            .hat
            .classify(&peer("100.64.0.1", ReverseDns::Missing))
            .group,
        "UNKNOWNLIST"
    );
    let v = ReverseDns::Verified("mail.other.example".into());
    assert_eq!(inbound.hat.classify(&peer("100.64.0.1", v)).group, "ALL");
    assert_eq!(relay.hat.fallback.name, "BLOCKED");
    assert_eq!(
        relay
            .hat
            .classify(&peer("127.0.0.1", ReverseDns::Missing))
            .policy
            .action,
        Action::Relay
    );
    assert_eq!(
        relay.hat.classify(&peer("::1", ReverseDns::Missing)).group,
        "RELAYLIST"
    );
    assert_eq!(
        relay
            .hat
            .classify(&peer("192.0.2.1", ReverseDns::Missing))
            .policy
            .action,
        Action::Reject
    );

    let p = &c.policies;
    assert_eq!(p["TRUSTED"].tls, TlsMode::Required);
    assert_eq!(p["ACCEPTED"].tls, TlsMode::Preferred);
    assert_eq!(p["THROTTLED"].tls, TlsMode::Preferred);
    assert_eq!(p["ACCEPTED"].max_message_size.max, Some(10 << 20));
    assert_eq!(p["ACCEPTED"].max_recipients_per_hour.max, Some(500));
    assert_eq!(p["THROTTLED"].max_messages_per_connection.max, Some(2));
    assert_eq!(
        p["THROTTLED"].max_concurrent_connections_per_ip.max,
        Some(1)
    );
    assert_eq!(
        p["THROTTLED"].max_recipients_per_hour.reply.to_wire(),
        "452 4.5.3 Too many recipients this hour, try again later\r\n"
    );
    // Inherited from `default:`: the reply of a limit whose maximum alone is set.
    assert_eq!(p["TRUSTED"].max_recipients_per_message.max, Some(500));
    assert_eq!(
        p["TRUSTED"].max_recipients_per_message.reply.text,
        "Too many recipients"
    );
    assert_eq!(p["TRUSTED"].max_recipients_per_hour.max, None);
    assert_eq!(p["BLOCKED"].action, Action::Reject);
    assert_eq!(
        p["BLOCKED"]
            .reject_banner
            .render("198.51.100.7", "mx.example.com", "BLOCKLIST")
            .to_wire(),
        "554 5.7.1 mx.example.com refuses mail from 198.51.100.7\r\n"
    );
    assert_eq!(
        p["ACCEPTED"]
            .banner
            .render("192.0.2.1", "mx.example.com", "ALL")
            .to_wire(),
        "220 mx.example.com ESMTP mxgate\r\n"
    );
    assert_eq!(p["RELAYED"].action, Action::Relay);

    let rat = inbound.rat.as_ref().unwrap();
    assert!(rat.check("alice", "example.com").is_ok());
    assert!(rat.check("alice", "elsewhere.example").is_err());
}

/// Several errors across files, one YAML syntax error among them.
fn broken_dir() -> tempfile::TempDir {
    config_dir(&[
        ("mxgate.yaml", Some("dns:\n  resolvers: [\"192.0.2.53\", nonsense]\n  timeout: 5 minutes\n")),
        (
            "listeners/inbound.yaml",
            Some("name: inbound\ntype: public\nbind: [\"127.0.0.1:2525\"]\nhostname: mx.example.com\nhat: open\nrat: inbound\n"),
        ),
        (
            "listeners/other.yaml",
            Some("name: other\ntype: public\nbind: [\"127.0.0.1:2525\"]\nhostname: mx.example.com\nhat: nonexistent\n"),
        ),
        (
            "listeners/third.yaml",
            Some("name: third\ntype: private\nbind: [\"127.0.0.1:2526\"]\nhostname: mx.example.com\nhat: inbound\nmax_conections: 5\n"),
        ),
        (
            "policies/mail_flow.yaml",
            Some(
                "\
default:
  max_message_size: 10Q
policies:
  ACCEPTED:
    action: accept
  TRUSTED:
    max_recipients_per_message: {max: 10, code: 252}
  RELAYED:
    action: relay
  BLOCKED:
    action: reject
    reject_banner: {code: 554, enhanced: \"4.7.1\"}
",
            ),
        ),
        (
            "policies/hat.yaml",
            Some(
                "\
inbound:
  sender_groups:
    - name: ALLOWLIST
      policy: TRUSTED
      match: [192.0.2.0/24]
    - name: BLOCKLIST
      policy: $BLOCKED
      match: [10.0.0.0/33]

    - name: TEMPLATE
      match: []

    - name: SUSPECTLIST
      policy: THROTLED
      match: [203.0.113.0/24]
    - name: ALLOWLIST
      policy: ACCEPTED
      match: [all]
open:
  sender_groups:
    - name: EVERYONE
      policy: RELAYED
      match: [0.0.0.0/0]
  default_policy: ACCEPTED
",
            ),
        ),
        ("policies/rat.yaml", Some("inbound:\n  entries:\n    - recipient: \"example.com\n")),
    ])
}

#[test]
fn broken_config_reports_every_error_with_its_location() {
    let d = broken_dir();
    let got = errors(&d, &Overrides::default());
    let expected = [
        "listeners/inbound.yaml:5:6: hat: HAT \"open\" would make this public listener an open relay: \
         sender group \"EVERYONE\" (policies/hat.yaml:23:15) gives relay policy \"RELAYED\" to every host (match 0.0.0.0/0)",
        "listeners/other.yaml:2:7: rat: a public listener needs a rat: mxgate is never an open relay",
        "listeners/other.yaml:3:8: bind[0]: 127.0.0.1:2525 is already bound by listener \"inbound\" (listeners/inbound.yaml:3:8)",
        "listeners/other.yaml:5:6: hat: unknown HAT \"nonexistent\"",
        "listeners/third.yaml:6:1: unknown key `max_conections`, expected one of name, type, bind, hostname, \
         certificate, key, client_ca_file, hat, rat, max_connections, timeouts, max_command_line, max_bad_commands, proxy_protocol",
        "mxgate.yaml:2:29: dns.resolvers[1]: \"nonsense\" is not a resolver address: write an IP or IP:port (e.g. 127.0.0.1:5353)",
        "mxgate.yaml:3:12: dns.timeout: \"5 minutes\" is not a duration: write e.g. 250ms, 30s, 5m, 1h, 5d, 2w or a number of seconds",
        "policies/hat.yaml:8:15: inbound.sender_groups[1].match[0]: \"10.0.0.0/33\" is not a valid CIDR network",
        "policies/hat.yaml:10:7: inbound.sender_groups[2].policy: missing required key `policy`",
        "policies/hat.yaml:14:15: inbound.sender_groups[3].policy: unknown policy \"THROTLED\"",
        "policies/hat.yaml:16:13: inbound.sender_groups[4].name: duplicate sender group name \"ALLOWLIST\" (first at line 3)",
        "policies/mail_flow.yaml:2:21: default.max_message_size: \"10Q\" is not a size: write bytes or a number with K, M or G (e.g. 512K, 10M, 1G)",
        "policies/mail_flow.yaml:7:49: policies.TRUSTED.max_recipients_per_message.code: reply code 252 must be 4xx or 5xx here",
        "policies/mail_flow.yaml:12:42: policies.BLOCKED.reject_banner.enhanced: enhanced code 4.7.1 does not match reply code 554: \
         its first digit must be 5",
        "policies/rat.yaml:3:18: unclosed quote",
    ];
    assert_eq!(got, expected, "got:\n{}", got.join("\n"));
}

#[test]
fn error_fields_are_exposed() {
    let e = load(broken_dir().path(), &Overrides::default()).unwrap_err();
    let unknown =
        e.0.iter()
            .find(|x| x.message.starts_with("unknown policy"))
            .unwrap();
    assert_eq!(unknown.file, Path::new("policies/hat.yaml"));
    assert_eq!((unknown.line, unknown.column), (14, 15));
    assert_eq!(unknown.path, "inbound.sender_groups[3].policy");
    assert_eq!(unknown.message, "unknown policy \"THROTLED\"");
    let no_place = ConfigError {
        file: PathBuf::new(),
        line: 0,
        column: 0,
        path: "overrides.binds[0]".into(),
        message: "m".into(),
    };
    assert_eq!(no_place.to_string(), "overrides.binds[0]: m");
    let whole_file = ConfigError {
        file: "policies/".into(),
        path: String::new(),
        ..no_place
    };
    assert_eq!(whole_file.to_string(), "policies/: m");
}

#[test]
fn syntax_error_in_policies_does_not_cascade() {
    // With mail_flow.yaml unparsable, HAT references cannot be judged and are not reported.
    let d = config_dir(&[(
        "policies/mail_flow.yaml",
        Some("policies:\n  ACCEPTED: {action: accept\n"),
    )]);
    let got = errors(&d, &Overrides::default());
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("policies/mail_flow.yaml:"), "{got:?}");
}

#[test]
fn overrides_are_applied() {
    let d = config_dir(&[
        ("mxgate.yaml", Some("spool_dir: /var/spool/mxgate\nmetrics:\n  listen: 127.0.0.1:9999\n")),
        ("listeners/relay.yaml", Some("name: relay\ntype: private\nbind: [\"127.0.0.1:2587\"]\nhostname: mx.example.com\nhat: relay\n")),
    ]);
    let o = Overrides {
        spool_dir: Some("/tmp/spool".into()),
        mail_log: Some(MailLogTarget::File("/tmp/mail.log".into())),
        certs_dir: Some("/tmp/certs".into()),
        dns_resolvers: Some(vec!["127.0.0.1:5353".parse().unwrap()]),
        metrics_listen: Some(None),
        binds: vec![(
            "relay".into(),
            vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()],
        )],
    };
    let c = loaded(&d, &o);
    assert_eq!(c.global.spool_dir, Path::new("/tmp/spool"));
    assert_eq!(
        c.global.mail_log,
        MailLogTarget::File("/tmp/mail.log".into())
    );
    assert_eq!(c.global.certs_dir, Path::new("/tmp/certs"));
    assert_eq!(
        c.global.dns.resolvers,
        vec!["127.0.0.1:5353".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(c.global.metrics_listen, None);
    assert_eq!(
        c.listeners[0].bind,
        vec!["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(c.listeners[1].bind.len(), 2);
    // Without overrides the files' values hold.
    let c = loaded(&d, &Overrides::default());
    assert_eq!(c.global.spool_dir, Path::new("/var/spool/mxgate"));
    assert_eq!(
        c.global.metrics_listen,
        Some("127.0.0.1:9999".parse().unwrap())
    );
}

#[test]
fn bind_overrides_are_checked() {
    let d = config_dir(&[(
        "listeners/relay.yaml",
        Some("name: relay\ntype: private\nbind: [\"127.0.0.1:2587\"]\nhostname: mx.example.com\nhat: relay\n"),
    )]);
    let o = Overrides {
        binds: vec![
            ("nosuch".into(), vec!["127.0.0.1:1".parse().unwrap()]),
            ("relay".into(), vec!["0.0.0.0:2525".parse().unwrap()]),
        ],
        ..Overrides::default()
    };
    assert_eq!(
        errors(&d, &o),
        [
            "overrides.binds[0]: bind override for unknown listener \"nosuch\" (listeners: inbound, relay)",
            "overrides.binds[1]: 0.0.0.0:2525 overlaps 127.0.0.1:2525 of listener \"inbound\" \
             (listeners/inbound.yaml:3:8): both cannot be bound",
        ]
    );
    // An override can also resolve a clash written in the files.
    let d = config_dir(&[(
        "listeners/second.yaml",
        Some(&PUBLIC.replace("name: inbound", "name: second")),
    )]);
    assert_eq!(errors(&d, &Overrides::default()).len(), 1);
    let o = Overrides {
        binds: vec![("second".into(), vec!["127.0.0.1:2526".parse().unwrap()])],
        ..Overrides::default()
    };
    assert_eq!(loaded(&d, &o).listeners.len(), 2);
}

#[test]
fn minimal_private_only_config_needs_no_global_file_or_rat() {
    let relay = "name: relay\ntype: private\nbind: [\"[::1]:2587\"]\nhostname: relay.example.com\nhat: relay\n";
    let d = config_dir(&[
        ("listeners/inbound.yaml", None),
        ("listeners/relay.yaml", Some(relay)),
        ("policies/rat.yaml", None),
    ]);
    let c = loaded(&d, &Overrides::default());
    assert_eq!(c.global.spool_dir, d.path().join("spool"));
    assert!(c.rats.is_empty());
    // A public listener then names a RAT that cannot exist, and says why.
    let d = config_dir(&[("policies/rat.yaml", None)]);
    assert_eq!(
        errors(&d, &Overrides::default()),
        ["listeners/inbound.yaml:6:6: rat: unknown RAT \"inbound\" (policies/rat.yaml does not exist)"]
    );
}

#[test]
fn ready_min_free_space_is_a_size_with_a_located_error() {
    let d = config_dir(&[]);
    assert_eq!(
        loaded(&d, &Overrides::default())
            .global
            .ready_min_free_space,
        256 << 20
    );
    let d = config_dir(&[(
        "mxgate.yaml",
        Some("metrics:\n  ready_min_free_space: 1G\n"),
    )]);
    assert_eq!(
        loaded(&d, &Overrides::default())
            .global
            .ready_min_free_space,
        1 << 30
    );
    let d = config_dir(&[(
        "mxgate.yaml",
        Some("metrics:\n  ready_min_free_space: lots\n"),
    )]);
    let errs = errors(&d, &Overrides::default());
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0]
            .starts_with("mxgate.yaml:2:25: metrics.ready_min_free_space: \"lots\" is not a size"),
        "{errs:?}"
    );
}
