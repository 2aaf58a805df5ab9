//! Tests of mail-flow policies, HATs, RATs, global settings and value parsers.

use std::time::Duration;

use super::model::{MailLogFormat, MailLogTarget};
use super::tests::{config_dir, errors, loaded, PUBLIC};
use super::values::{parse_duration, parse_resolver, parse_size};
use super::Overrides;
use crate::policy::flow::{Action, TlsMode};
use crate::smtp::reply::Enhanced;

#[test]
fn open_relay_through_default_policy_or_rat_is_refused() {
    let d = config_dir(&[
        (
            "policies/hat.yaml",
            Some("inbound:\n  default_policy: $RELAYED\n"),
        ),
        (
            "policies/rat.yaml",
            Some("inbound:\n  entries:\n    - recipient: ALL\n"),
        ),
    ]);
    assert_eq!(
        errors(&d, &Overrides::default()),
        [
            "listeners/inbound.yaml:5:6: hat: HAT \"inbound\" would make this public listener an open relay: \
             its default_policy \"RELAYED\" (policies/hat.yaml:2:19) relays for every host no group matches",
            "listeners/inbound.yaml:6:6: rat: RAT \"inbound\" would make this public listener an open relay: \
             entry 0 (policies/rat.yaml:3:18) accepts every recipient",
        ]
    );
    // The same HAT is fine on a private listener.
    let d = config_dir(&[
        (
            "policies/hat.yaml",
            Some("inbound:\n  default_policy: $RELAYED\n"),
        ),
        (
            "listeners/inbound.yaml",
            Some(&PUBLIC.replace("public", "private")),
        ),
    ]);
    loaded(&d, &Overrides::default());
}

#[test]
fn default_policy_falls_back_to_accepted() {
    let d = config_dir(&[("policies/hat.yaml", Some("inbound:\n  sender_groups:\n"))]);
    assert_eq!(
        loaded(&d, &Overrides::default()).hats["inbound"]
            .fallback
            .name,
        "ACCEPTED"
    );
    let flow = "policies:\n  OTHER: {}\n  RELAYED: {action: relay}\n  BLOCKED: {action: reject}\n";
    let d = config_dir(&[("policies/mail_flow.yaml", Some(flow))]);
    assert_eq!(
        errors(&d, &Overrides::default()),
        ["policies/hat.yaml:1:1: inbound.default_policy: no default_policy given, and there is no policy \"ACCEPTED\" to fall back on"]
    );
}

#[test]
fn policies_inherit_from_default_and_accept_dollar_names() {
    let mail_flow = "\
default:
  tls: required
  max_recipients_per_message: {max: 5, text: Slow down}
  banner: {text: $Hostname welcomes $RemoteIP}
policies:
  $ACCEPTED: {}
  STRICT:
    action: tcprefuse
    max_recipients_per_message: {code: 552}
    max_message_size: unlimited
    tls_mandatory_senders: [\"@bank.example\", ceo@corp.example, gov.example]
  OFF: {tls: off, tls_verify_client: true, override_hostname: mx2.example.com}
";
    let hat = "inbound:\n  sender_groups:\n    - {name: S, policy: $STRICT, match: [192.0.2.1]}\n";
    let d = config_dir(&[
        ("policies/mail_flow.yaml", Some(mail_flow)),
        ("policies/hat.yaml", Some(hat)),
    ]);
    let c = loaded(&d, &Overrides::default());
    let a = &c.policies["ACCEPTED"];
    assert_eq!((a.action, a.tls), (Action::Accept, TlsMode::Required));
    assert_eq!(a.max_recipients_per_message.max, Some(5));
    assert_eq!(
        a.max_recipients_per_message.reply.to_wire(),
        "452 4.5.3 Slow down\r\n"
    );
    assert_eq!(
        a.banner.render("192.0.2.1", "mx", "G").to_wire(),
        "220 mx welcomes 192.0.2.1\r\n"
    );
    let s = &c.policies["STRICT"];
    assert_eq!(s.action, Action::TcpRefuse);
    // A new code alone keeps the inherited enhanced detail in the code's class.
    assert_eq!(s.max_recipients_per_message.reply.code, 552);
    assert_eq!(
        s.max_recipients_per_message.reply.enhanced,
        Some(Enhanced(5, 5, 3))
    );
    assert_eq!(s.max_message_size.max, None);
    assert!(s.is_tls_mandatory_for("x@bank.example"));
    assert_eq!(c.hats["inbound"].groups[0].policy.name, "STRICT");
    let o = &c.policies["OFF"];
    assert_eq!((o.tls, o.tls_verify_client), (TlsMode::Off, true));
    assert_eq!(o.override_hostname.as_deref(), Some("mx2.example.com"));
}

#[test]
fn policy_mistakes_are_reported() {
    let mail_flow = "\
default:
  action: reject
policies:
  ACCEPTED:
    action: bounce
    tls: maybe
    tls_verify_client: yes
    banner: {code: 554}
    max_messages_per_connection: many
    tls_mandatory_senders: [\"not an address\"]
  ACCEPTED-2: {}
  $ACCEPTED-2: {}
  bad.name: {}
  RELAYED: {action: relay}
  BLOCKED: {action: reject}
";
    let d = config_dir(&[("policies/mail_flow.yaml", Some(mail_flow))]);
    assert_eq!(
        errors(&d, &Overrides::default()),
        [
            "policies/mail_flow.yaml:2:11: default.action: `action` cannot be inherited: set it in each policy (unset means accept)",
            "policies/mail_flow.yaml:5:13: policies.ACCEPTED.action: unknown action \"bounce\": expected accept, reject, tcprefuse, relay or continue",
            "policies/mail_flow.yaml:6:10: policies.ACCEPTED.tls: unknown TLS mode \"maybe\": expected off, preferred or required",
            "policies/mail_flow.yaml:7:24: policies.ACCEPTED.tls_verify_client: \"yes\" is not a boolean: write true or false",
            "policies/mail_flow.yaml:8:20: policies.ACCEPTED.banner.code: reply code 554 must be 2xx here",
            "policies/mail_flow.yaml:9:34: policies.ACCEPTED.max_messages_per_connection: \"many\" is not a whole number: write a number or unlimited",
            "policies/mail_flow.yaml:10:29: policies.ACCEPTED.tls_mandatory_senders[0]: \"not an address\" is not an address, @domain or domain \
             (e.g. ceo@corp.example, @bank.example)",
            "policies/mail_flow.yaml:12:3: policies.$ACCEPTED-2: policy \"ACCEPTED-2\" is defined twice (first at line 11)",
            "policies/mail_flow.yaml:13:3: policies.bad.name: policy name \"bad.name\" may contain only letters, digits, '_' and '-'",
        ]
    );
}

#[test]
fn trust_18_pre_greet_pause_parses_inherits_and_is_checked() {
    let flow = "\
default:
  pre_greet_pause: 1s
policies:
  ACCEPTED: {action: accept}
  FAST: {pre_greet_pause: 0}
  SLOW: {pre_greet_pause: 250ms}
  BLOCKED: {action: reject}
  RELAYED: {action: relay}
";
    let c = loaded(
        &config_dir(&[("policies/mail_flow.yaml", Some(flow))]),
        &Overrides::default(),
    );
    let pause = |name: &str| c.policies[name].pre_greet_pause;
    assert_eq!(pause("ACCEPTED"), Some(Duration::from_secs(1)));
    assert_eq!(pause("FAST"), Some(Duration::ZERO));
    assert_eq!(pause("SLOW"), Some(Duration::from_millis(250)));
    // Unset everywhere: the listener kind decides (policy::flow::pre_greet_pause_on).
    let c = loaded(&config_dir(&[]), &Overrides::default());
    assert_eq!(c.policies["ACCEPTED"].pre_greet_pause, None);

    let flow = "\
default:
  pre_greet_pause: soon
policies:
  ACCEPTED: {pre_greet_pause: 31s}
  BLOCKED: {action: reject, pre_greet_pause: -1}
  RELAYED: {action: relay}
";
    let d = config_dir(&[("policies/mail_flow.yaml", Some(flow))]);
    assert_eq!(
        errors(&d, &Overrides::default()),
        [
            "policies/mail_flow.yaml:2:20: default.pre_greet_pause: \"soon\" is not a duration: \
             write e.g. 250ms, 30s, 5m, 1h, 5d, 2w or a number of seconds",
            "policies/mail_flow.yaml:4:31: policies.ACCEPTED.pre_greet_pause: must be at most 30s: \
             senders give up waiting for the greeting",
            "policies/mail_flow.yaml:5:46: policies.BLOCKED.pre_greet_pause: \"-1\" is not a duration: \
             write e.g. 250ms, 30s, 5m, 1h, 5d, 2w or a number of seconds",
        ]
    );
}

#[test]
fn rat_entries_and_replies() {
    let rat = "\
inbound:
  entries:
    - recipient: trap@example.com
      action: reject
      reply: {code: 550, enhanced: \"5.1.1\", text: No such user}
    - recipient: postmaster@
      reply: {text: Welcome}
    - recipient: example.com
    - recipient: bad domain
    - recipient: x.example
      action: drop
    - recipient: y.example
      reply: {code: 550}
";
    let d = config_dir(&[("policies/rat.yaml", Some(rat))]);
    assert_eq!(
        errors(&d, &Overrides::default()),
        [
            "policies/rat.yaml:9:18: inbound.entries[3].recipient: \"bad domain\" is not a domain, .subdomain, address, user@ or ALL",
            "policies/rat.yaml:11:15: inbound.entries[4].action: unknown RAT action \"drop\": expected accept or reject",
            "policies/rat.yaml:13:21: inbound.entries[5].reply.code: reply code 550 must be 2xx here",
        ]
    );
    let good: String = rat.lines().take(8).map(|l| format!("{l}\n")).collect();
    let d = config_dir(&[("policies/rat.yaml", Some(&good))]);
    let c = loaded(&d, &Overrides::default());
    let t = &c.rats["inbound"];
    assert_eq!(
        t.check("trap", "example.com").unwrap_err().reply.to_wire(),
        "550 5.1.1 No such user\r\n"
    );
    assert_eq!(
        t.check("postmaster", "example.com")
            .unwrap()
            .reply
            .unwrap()
            .to_wire(),
        "250 2.1.5 Welcome\r\n"
    );
    let bob = t.check("bob", "example.com").unwrap();
    assert_eq!((bob.reply, bob.validation), (None, None));
}

#[test]
fn durations_parse_and_reject() {
    let ok = [
        ("250ms", Duration::from_millis(250)),
        ("30s", Duration::from_secs(30)),
        ("5m", Duration::from_secs(300)),
        ("1h", Duration::from_secs(3600)),
        ("300", Duration::from_secs(300)),
        (" 2 m ", Duration::from_secs(120)),
        ("5d", Duration::from_secs(5 * 86_400)),
        ("1D", Duration::from_secs(86_400)),
        ("0d", Duration::ZERO),
        ("2w", Duration::from_secs(14 * 86_400)),
        ("1W", Duration::from_secs(7 * 86_400)),
    ];
    for (s, d) in ok {
        assert_eq!(parse_duration(s), Ok(d), "{s}");
    }
    for s in [
        "",
        "s",
        "d",
        "5 minutes",
        "5 days",
        "1.5s",
        "1.5d",
        "-1s",
        "5y",
        "1w2d",
        "99999999999999999999s",
        "18446744073709551615h",
        "18446744073709551615d",
        "30500568904944w",
    ] {
        assert!(parse_duration(s).is_err(), "{s:?} should be refused");
    }
    assert_eq!(
        parse_duration("5x"),
        Err("\"5x\" is not a duration: write e.g. 250ms, 30s, 5m, 1h, 5d, 2w or a number of seconds".into())
    );
    assert_eq!(
        parse_duration("30500568904944w"),
        Err("duration \"30500568904944w\" is too large".into())
    );
}

#[test]
fn delivery_durations_take_days_and_weeks() {
    let d = config_dir(&[(
        "mxgate.yaml",
        Some("delivery:\n  retry_max: 1d\n  max_queue_lifetime: 5d\n"),
    )]);
    let dl = loaded(&d, &Overrides::default()).global.delivery;
    assert_eq!(dl.max_queue_lifetime, Duration::from_secs(5 * 86_400));
    assert_eq!(dl.retry_max, Duration::from_secs(86_400));
    let d = config_dir(&[("mxgate.yaml", Some("delivery:\n  max_queue_lifetime: 2w\n"))]);
    let dl = loaded(&d, &Overrides::default()).global.delivery;
    assert_eq!(dl.max_queue_lifetime, Duration::from_secs(14 * 86_400));
    let d = config_dir(&[(
        "mxgate.yaml",
        Some("delivery:\n  max_queue_lifetime: 5days\n"),
    )]);
    assert_eq!(
        errors(&d, &Overrides::default()),
        ["mxgate.yaml:2:23: delivery.max_queue_lifetime: \"5days\" is not a duration: write e.g. 250ms, 30s, 5m, 1h, 5d, 2w or a number of seconds"]
    );
}

#[test]
fn sizes_parse_and_reject() {
    let ok = [
        ("1000", 1000),
        ("512K", 512 << 10),
        ("10M", 10 << 20),
        ("10m", 10 << 20),
        ("1G", 1 << 30),
        ("20MB", 20 << 20),
        ("2KiB", 2048),
    ];
    for (s, n) in ok {
        assert_eq!(parse_size(s), Ok(n), "{s}");
    }
    for s in [
        "",
        "M",
        "10Q",
        "1.5M",
        "-5",
        "10 T",
        "99999999999999999999G",
    ] {
        assert!(parse_size(s).is_err(), "{s:?} should be refused");
    }
    assert_eq!(parse_resolver("192.0.2.1").unwrap().port(), 53);
    assert!(parse_resolver("dns.example").is_err());
}

#[test]
fn global_file_values() {
    let global = "\
spool_dir: queue
mail_log: {target: log/mail.log, format: json}
dns: {resolvers: [\"192.0.2.53\", \"[2001:db8::53]:5353\", \"2001:db8::54\"], timeout: 2s, self_check_interval: 10m}
shutdown_grace: 0
metrics: {listen: null}
";
    let d = config_dir(&[("mxgate.yaml", Some(global))]);
    let g = loaded(&d, &Overrides::default()).global;
    assert_eq!(g.spool_dir, d.path().join("queue"));
    assert_eq!(
        g.mail_log,
        MailLogTarget::File(d.path().join("log/mail.log"))
    );
    assert_eq!(g.mail_log_format, MailLogFormat::Json);
    let r: Vec<String> = g.dns.resolvers.iter().map(ToString::to_string).collect();
    assert_eq!(
        r,
        ["192.0.2.53:53", "[2001:db8::53]:5353", "[2001:db8::54]:53"]
    );
    assert_eq!(g.dns.timeout, Duration::from_secs(2));
    assert_eq!(g.dns.self_check_interval, Duration::from_secs(600));
    assert_eq!(g.shutdown_grace, Duration::ZERO);
    assert_eq!(g.metrics_listen, None);
    // An empty global file is all defaults; unknown keys are refused.
    let d = config_dir(&[("mxgate.yaml", Some("# defaults\n"))]);
    let defaults = loaded(&d, &Overrides::default()).global;
    assert_eq!(
        defaults.metrics_listen,
        Some("127.0.0.1:9187".parse().unwrap())
    );
    assert_eq!(defaults.dns.self_check_interval, Duration::from_secs(3600));
    let d = config_dir(&[("mxgate.yaml", Some("dns:\n  resolver: [\"192.0.2.53\"]\n"))]);
    assert_eq!(
        errors(&d, &Overrides::default()),
        ["mxgate.yaml:2:3: unknown key `resolver`, expected one of resolvers, timeout, hosts_file, self_check_interval"]
    );
}

#[test]
fn yaml_anchors_and_merge_keys_work() {
    let mail_flow = "\
policies:
  ACCEPTED: &base
    action: accept
    max_recipients_per_message: 7
  RELAYED:
    <<: *base
    action: relay
  BLOCKED:
    <<: *base
    action: reject
    tls: sometimes
";
    let d = config_dir(&[("policies/mail_flow.yaml", Some(mail_flow))]);
    assert_eq!(
        errors(&d, &Overrides::default()),
        ["policies/mail_flow.yaml:11:10: policies.BLOCKED.tls: unknown TLS mode \"sometimes\": expected off, preferred or required"]
    );
    let d = config_dir(&[(
        "policies/mail_flow.yaml",
        Some(&mail_flow.replace("sometimes", "off")),
    )]);
    let c = loaded(&d, &Overrides::default());
    assert_eq!(c.policies["RELAYED"].action, Action::Relay);
    assert_eq!(
        c.policies["RELAYED"].max_recipients_per_message.max,
        Some(7)
    );
    assert_eq!(c.policies["BLOCKED"].tls, TlsMode::Off);
}

#[test]
fn dhap_limit_short_and_map_forms_inherit_and_are_checked() {
    let flow = "\
default:
  max_invalid_recipients_per_hour: 25
policies:
  ACCEPTED: {action: accept}
  QUIET:
    max_invalid_recipients_per_hour: {max: 5, code: 554, text: Go away}
  LOUD: {max_invalid_recipients_per_hour: {code: 450}}
  RELAYED: {action: relay, max_invalid_recipients_per_hour: unlimited}
  BLOCKED: {action: reject}
";
    let c = loaded(
        &config_dir(&[("policies/mail_flow.yaml", Some(flow))]),
        &Overrides::default(),
    );
    let dhap = |name: &str| c.policies[name].max_invalid_recipients_per_hour.clone();
    assert_eq!(dhap("ACCEPTED").max, Some(25));
    assert_eq!(
        dhap("ACCEPTED").reply.to_wire(),
        "550 5.7.1 Too many invalid recipients\r\n"
    );
    assert_eq!(dhap("QUIET").max, Some(5));
    assert_eq!(dhap("QUIET").reply.to_wire(), "554 5.7.1 Go away\r\n");
    // A code alone keeps the inherited detail in its class.
    assert_eq!(
        (dhap("LOUD").max, dhap("LOUD").reply.to_wire()),
        (
            Some(25),
            "450 4.7.1 Too many invalid recipients\r\n".to_string()
        )
    );
    assert_eq!(dhap("RELAYED").max, None);

    // Without the key: unlimited, as before DHAP existed.
    let c = loaded(&config_dir(&[]), &Overrides::default());
    assert_eq!(
        c.policies["ACCEPTED"].max_invalid_recipients_per_hour.max,
        None
    );

    // The shipped file: 25 for public senders (ESA's default), unlimited for RELAYED.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = match root.join("shipped/policies").is_dir() {
        true => root.join("shipped"),
        false => root.to_path_buf(),
    };
    let c = super::load(&shipped, &Overrides::default()).unwrap();
    for (name, max) in [
        ("ACCEPTED", Some(25)),
        ("THROTTLED", Some(25)),
        ("RELAYED", None),
    ] {
        assert_eq!(
            c.policies[name].max_invalid_recipients_per_hour.max, max,
            "{name}"
        );
    }

    let flow = "\
default:
  max_invalid_recipients_per_hour: lots
policies:
  ACCEPTED:
    max_invalid_recipients_per_hour: {max: -1, code: 250}
  RELAYED: {action: relay, max_invalid_recipients_per_hour: {code: 550, enhanced: \"4.7.1\"}}
  BLOCKED: {action: reject}
";
    let d = config_dir(&[("policies/mail_flow.yaml", Some(flow))]);
    assert_eq!(
        errors(&d, &Overrides::default()),
        [
            "policies/mail_flow.yaml:2:36: default.max_invalid_recipients_per_hour: \"lots\" is not a whole number: write a number or unlimited",
            "policies/mail_flow.yaml:5:44: policies.ACCEPTED.max_invalid_recipients_per_hour.max: \"-1\" is not a whole number: write a number or unlimited",
            "policies/mail_flow.yaml:5:54: policies.ACCEPTED.max_invalid_recipients_per_hour.code: reply code 250 must be 4xx or 5xx here",
            "policies/mail_flow.yaml:6:83: policies.RELAYED.max_invalid_recipients_per_hour.enhanced: enhanced code 4.7.1 does not match reply code 550: its first digit must be 5",
        ]
    );
}
