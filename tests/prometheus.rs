//! Monitoring and deployment files, tested with real components.
//!
//! The end-to-end test starts an in-process mxgate (metrics on a free port) that relays to a
//! sink, and a real Prometheus (Debian package `prometheus`) whose configuration is
//! `deploy/prometheus.yml` pointed at that gateway with 1 s intervals and `deploy/alerts.yml`
//! as its rules. It drives sessions that produce every inbound TLS outcome, RAT, limit and size
//! rejections, and delivered, bounced and deferred deliveries (one to a required-TLS
//! destination), then asserts each counter per label set through Prometheus's query API. In
//! the same run every PromQL expression of the Grafana dashboard and of the alert rules is
//! evaluated by that Prometheus, and the required-TLS alert must become active.
//!
//! The other tests check the rest of `deploy/`: promtool (rules, rule unit tests, configs), the
//! dashboard's structure and metric names against `src/metrics/mod.rs`, every YAML file (parsed by
//! Python's PyYAML) and the consistency of the Compose and Kubernetes files, the deployment
//! `mxgate.yaml` files through `mxgate check`, the Dockerfile, and the systemd unit through
//! `systemd-analyze verify`.
//!
//! A missing tool (prometheus, promtool, python3 with PyYAML) makes a test print `SKIP:` and
//! pass, unless `CI` is set: then it fails.

#[path = "prometheus/json.rs"]
mod json;
#[path = "prometheus/prom.rs"]
mod prom;
#[path = "prometheus/promql.rs"]
mod promql;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use json::Json;
use prom::Prometheus;
use support::sink::Sink;
use support::{relay_config, repo, Client, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn prometheus_bin(test: &str) -> Option<PathBuf> {
    prom::require(
        test,
        prom::tool(&["/usr/bin/prometheus", "prometheus"]),
        "the Prometheus server (Debian package prometheus, /usr/bin/prometheus)",
    )
}

fn promtool_bin(test: &str) -> Option<PathBuf> {
    prom::require(
        test,
        prom::tool(&["/usr/bin/promtool", "promtool"]),
        "promtool (Debian package prometheus)",
    )
}

/// python3 that can `import yaml` (Debian package python3-yaml).
fn python_with_yaml(test: &str) -> Option<PathBuf> {
    let py = prom::tool(&["/usr/bin/python3", "python3"]);
    let ok = py.as_ref().is_some_and(|p| {
        Command::new(p)
            .args(["-c", "import yaml, json"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    prom::require(
        test,
        if ok { py } else { None },
        "python3 with PyYAML (Debian packages python3 and python3-yaml)",
    )
}

// ---------------------------------------------------------------------------------------------
// End to end: gateway + Prometheus
// ---------------------------------------------------------------------------------------------

/// Metrics on `metrics`, a required-TLS destination the sink cannot satisfy, and recipient
/// validation by call-ahead to the sink for `validated.example` (the sink refuses `nouser*`).
fn configure(dir: &Path, metrics: SocketAddr) {
    let path = dir.join("mxgate.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let disabled = "metrics:\n  listen: null\n";
    assert!(
        text.contains(disabled),
        "the e2e fixture's mxgate.yaml no longer has {disabled:?}:\n{text}"
    );
    let text = text.replace(disabled, &format!("metrics:\n  listen: \"{metrics}\"\n"));
    // A shared-state store that is not there (a port nobody listens on): the store's gauge
    // reads 0 and the validation lookups count their fallbacks, so those panels have data.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text = format!("{text}shared_state:\n  url: redis://{dead}/0\n");
    std::fs::write(&path, text).unwrap();
    std::fs::write(
        dir.join("policies/destinations.yaml"),
        "destinations:\n  - domain: secure.example.com\n    tls: required\n",
    )
    .unwrap();
    let rat = std::fs::read_to_string(dir.join("policies/rat.yaml")).unwrap();
    let validated =
        "inbound:\n  entries:\n    - recipient: validated.example\n      validate: callahead\n";
    std::fs::write(
        dir.join("policies/rat.yaml"),
        rat.replacen("inbound:\n  entries:\n", validated, 1),
    )
    .unwrap();
    // TLS-RPT: reports mailed to this address count for company-y.example (the RFC example).
    std::fs::write(
        dir.join("policies/tlsrpt.yaml"),
        "addresses: [tlsrpt@reports.test]\ndomains: [company-y.example]\n",
    )
    .unwrap();
    // The sink accepts any other address: catch-all detection would (rightly) skip probing.
    std::fs::write(
        dir.join("policies/validation.yaml"),
        "callahead:\n  detect_catch_all: false\n",
    )
    .unwrap();
}

/// `deploy/prometheus.yml` aimed at `target`, scraping and evaluating every second.
fn test_prometheus_config(deploy: &str, target: SocketAddr) -> String {
    let mut s = deploy.to_string();
    for (from, to, required) in [
        ("\"127.0.0.1:9187\"", format!("\"{target}\""), true),
        ("scrape_interval: 15s", "scrape_interval: 1s".into(), true),
        (
            "evaluation_interval: 15s",
            "evaluation_interval: 1s".into(),
            true,
        ),
        ("scrape_timeout: 10s", "scrape_timeout: 1s".into(), false),
    ] {
        assert!(
            !required || s.contains(from),
            "deploy/prometheus.yml has no {from:?}; update this test's rewrite"
        );
        s = s.replace(from, &to);
    }
    assert!(
        s.contains("- alerts.yml"),
        "deploy/prometheus.yml must load alerts.yml"
    );
    s
}

async fn wait_http(addr: SocketAddr, path: &str, want: u16) {
    let mut last = String::new();
    for _ in 0..100 {
        match prom::http_get(addr, path).await {
            Ok((code, _)) if code == want => return,
            Ok((code, body)) => last = format!("HTTP {code} {body}"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("http://{addr}{path} did not answer {want}: {last}");
}

fn expect(reply: &str, code: &str, what: &str) {
    assert!(
        reply.starts_with(code),
        "{what}: expected {code}, got {reply:?}"
    );
}

fn msg(id: &str) -> String {
    format!("Message-ID: <{id}@test>\r\nSubject: metrics {id}\r\n\r\nbody of {id}\r\n")
}

/// Every inbound outcome, rejections, and mail for each delivery result.
async fn drive_sessions(srv: &Server) {
    // 1. preferred: STARTTLS succeeds; a message for bob (delivered).
    let mut c = Client::connect(srv.addr("preferred"), None).await;
    expect(&c.reply().await, "220", "greeting");
    expect(&c.cmd("EHLO tls.client.test").await, "250", "EHLO");
    expect(&c.cmd("STARTTLS").await, "220", "STARTTLS");
    let mut t = c.into_tls().await;
    expect(
        &t.cmd("EHLO tls.client.test").await,
        "250",
        "EHLO after TLS",
    );
    let r = t
        .send_mail("alice@other.example", &["bob@example.com"], &msg("m1"))
        .await;
    expect(&r, "250", "message 1");
    t.cmd("QUIT").await;

    // 2. preferred, plaintext: RAT rejections, a recipient over the limit, a message from the
    // null sender (no DSN for its bounce) for nouser (bounced), carol and dan (delivered),
    // then a message over the 2K size limit.
    let mut c = Client::connect(srv.addr("preferred"), None).await;
    expect(&c.reply().await, "220", "greeting");
    expect(&c.cmd("EHLO plain.client.test").await, "250", "EHLO");
    expect(&c.cmd("MAIL FROM:<>").await, "250", "MAIL");
    expect(&c.cmd("RCPT TO:<nouser@example.com>").await, "250", "RCPT");
    expect(
        &c.cmd("RCPT TO:<someone@elsewhere.test>").await,
        "550",
        "RAT: not our domain",
    );
    expect(
        &c.cmd("RCPT TO:<spam-trap@example.com>").await,
        "550",
        "RAT: reject entry",
    );
    expect(&c.cmd("RCPT TO:<carol@example.com>").await, "250", "RCPT");
    expect(&c.cmd("RCPT TO:<dan@example.com>").await, "250", "RCPT");
    expect(
        &c.cmd("RCPT TO:<erin@example.com>").await,
        "4",
        "max_recipients_per_message",
    );
    expect(&c.cmd("DATA").await, "354", "DATA");
    c.send(msg("m2").as_bytes()).await;
    expect(&c.cmd(".").await, "250", "message 2");
    expect(&c.cmd("MAIL FROM:<big@other.example>").await, "250", "MAIL");
    expect(&c.cmd("RCPT TO:<bob@example.com>").await, "250", "RCPT");
    expect(&c.cmd("DATA").await, "354", "DATA");
    let line = format!("{}\r\n", "x".repeat(70));
    c.send(format!("Subject: big\r\n\r\n{}", line.repeat(60)).as_bytes())
        .await;
    expect(&c.cmd(".").await, "552", "message over max_message_size");
    c.cmd("QUIT").await;

    // 3. preferred: STARTTLS, then bytes that are not a TLS ClientHello.
    let mut c = Client::connect(srv.addr("preferred"), None).await;
    expect(&c.reply().await, "220", "greeting");
    expect(&c.cmd("EHLO broken.client.test").await, "250", "EHLO");
    expect(&c.cmd("STARTTLS").await, "220", "STARTTLS");
    let mut raw = c.io.into_inner();
    raw.write_all(b"this is not a TLS ClientHello\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut rest)).await;
    drop(raw);

    // 4. required: MAIL without TLS is refused.
    let mut c = Client::connect(srv.addr("required"), None).await;
    expect(&c.reply().await, "220", "greeting");
    expect(&c.cmd("EHLO lazy.client.test").await, "250", "EHLO");
    expect(
        &c.cmd("MAIL FROM:<a@other.example>").await,
        "530",
        "MAIL before STARTTLS under tls: required",
    );
    expect(&c.cmd("QUIT").await, "221", "QUIT");

    // 5. required with TLS: a message for later@ (the sink answers 451: deferred).
    let mut c = Client::connect(srv.addr("required"), None).await;
    expect(&c.reply().await, "220", "greeting");
    expect(&c.cmd("EHLO good.client.test").await, "250", "EHLO");
    expect(&c.cmd("STARTTLS").await, "220", "STARTTLS");
    let mut t = c.into_tls().await;
    expect(
        &t.cmd("EHLO good.client.test").await,
        "250",
        "EHLO after TLS",
    );
    let r = t
        .send_mail("frank@other.example", &["later@example.com"], &msg("m3"))
        .await;
    expect(&r, "250", "message 3");
    t.cmd("QUIT").await;

    // 6. off: STARTTLS not offered; a message for a required-TLS destination (deferred).
    let mut c = Client::connect(srv.addr("off"), None).await;
    expect(&c.reply().await, "220", "greeting");
    let ehlo = c.cmd("EHLO old.client.test").await;
    expect(&ehlo, "250", "EHLO");
    assert!(
        !ehlo.contains("STARTTLS"),
        "tls: off offers STARTTLS: {ehlo}"
    );
    let r = c
        .send_mail(
            "gina@other.example",
            &["ops@secure.example.com"],
            &msg("m4"),
        )
        .await;
    expect(&r, "250", "message 4");
    // Recipient validation: a probe says ok@ exists, nouser@ does not; ok@ again is a cache hit.
    expect(
        &c.cmd("MAIL FROM:<gina@other.example>").await,
        "250",
        "MAIL",
    );
    expect(
        &c.cmd("RCPT TO:<ok@validated.example>").await,
        "250",
        "valid",
    );
    expect(
        &c.cmd("RCPT TO:<nouser@validated.example>").await,
        "550 5.1.1",
        "invalid",
    );
    expect(
        &c.cmd("RCPT TO:<ok@validated.example>").await,
        "250",
        "cached",
    );
    expect(&c.cmd("RSET").await, "250", "RSET");
    // TLS-RPT: the RFC 8460 example report, gzip'd in a report mail, then a malformed one.
    let r = c
        .send_mail("", &["tlsrpt@reports.test"], &report_mail(RFC_EXAMPLE))
        .await;
    expect(&r, "250 2.6.0", "TLS-RPT report");
    let r = c
        .send_mail(
            "",
            &["tlsrpt@reports.test"],
            &report_mail("{\"policies\": []}"),
        )
        .await;
    expect(&r, "550 5.6.0", "malformed TLS-RPT report");
    c.cmd("QUIT").await;

    // 7. proxied: BLOCKLIST (reject) and REFUSELIST (tcprefuse).
    let mut c = Client::connect(srv.addr("proxied"), Some("192.0.2.20")).await;
    expect(&c.reply().await, "554", "BLOCKLIST greeting");
    assert_eq!(c.reply().await, "", "BLOCKLIST: closed after the 554");
    let mut c = Client::connect(srv.addr("proxied"), Some("192.0.2.30")).await;
    assert_eq!(c.reply().await, "", "tcprefuse sends nothing");

    // 8. relay listener: an internal host relays to any domain (delivered).
    let mut c = Client::connect(srv.addr("relay"), Some("192.0.2.100")).await;
    expect(&c.reply().await, "220", "greeting");
    expect(&c.cmd("EHLO app.internal.test").await, "250", "EHLO");
    let r = c
        .send_mail(
            "app@internal.example",
            &["someone@relay-dest.test"],
            &msg("m5"),
        )
        .await;
    expect(&r, "250", "message 5");
    c.cmd("QUIT").await;

    // 9. untrusted_proxy: a PROXY header from outside `trusted` is refused without a reply.
    let mut c = Client::connect(srv.addr("untrusted_proxy"), Some("192.0.2.11")).await;
    assert_eq!(c.reply().await, "", "untrusted PROXY source: closed");
}

/// The RFC 8460 §4.5 example report (reporter "Company-X", policy domain company-y.example).
const RFC_EXAMPLE: &str = include_str!("../src/tlsrpt/rfc8460-example.json");

/// A report mail as RFC 8460 §5.3 describes it, with `json` gzip'd and base64-encoded.
fn report_mail(json: &str) -> String {
    let lines = support::tlsrpt::gzip_base64_lines(json);
    format!(
        "Subject: Report Domain: company-y.example Submitter: company-x.example\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"R\"\r\n\r\n\
         --R\r\nContent-Type: application/tlsrpt+gzip\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--R--\r\n",
        lines
    )
}

enum Want {
    Eq(f64),
    AtLeast(f64),
    Above(f64),
    /// No sample, or 0.
    None,
}

struct Expect {
    query: String,
    want: Want,
}

impl Expect {
    fn ok(&self, got: Option<f64>) -> bool {
        match (&self.want, got) {
            (Want::Eq(w), Some(g)) => (g - w).abs() < 1e-9,
            (Want::AtLeast(w), Some(g)) => g >= *w,
            (Want::Above(w), Some(g)) => g > *w,
            (Want::None, None) => true,
            (Want::None, Some(g)) => g == 0.0,
            _ => false,
        }
    }

    fn describe(&self) -> String {
        match self.want {
            Want::Eq(w) => format!("{} == {w}", self.query),
            Want::AtLeast(w) => format!("{} >= {w}", self.query),
            Want::Above(w) => format!("{} > {w}", self.query),
            Want::None => format!("{} absent or 0", self.query),
        }
    }
}

/// `sum(metric{k="v",...})`: one value however many instances or jobs.
fn sum(metric: &str, labels: &[(&str, &str)]) -> String {
    let sel: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("sum({metric}{{{}}})", sel.join(","))
}

fn eq(query: String, v: f64) -> Expect {
    Expect {
        query,
        want: Want::Eq(v),
    }
}

fn expectations(listeners: usize) -> Vec<Expect> {
    let tls = |l: &str, g: &str, p: &str, o: &str| {
        sum(
            "mxgate_inbound_tls_total",
            &[
                ("listener", l),
                ("sender_group", g),
                ("policy", p),
                ("outcome", o),
            ],
        )
    };
    let conn = |l: &str, g: &str, a: &str| {
        sum(
            "mxgate_connections_total",
            &[("listener", l), ("sender_group", g), ("action", a)],
        )
    };
    let lg = |m: &str, l: &str, g: &str| sum(m, &[("listener", l), ("sender_group", g)]);
    let lr = |m: &str, l: &str, r: &str| sum(m, &[("listener", l), ("reason", r)]);
    let dr = |d: &str, r: &str| {
        sum(
            "mxgate_delivery_attempts_total",
            &[("destination", d), ("result", r)],
        )
    };
    let accepted = "mxgate_messages_accepted_total";
    let rcpts = "mxgate_recipients_accepted_total";
    vec![
        // Inbound TLS outcome per listener, sender group and policy: one connection each.
        eq(tls("preferred", "ALL", "ACCEPTED", "success"), 1.0),
        eq(tls("preferred", "ALL", "ACCEPTED", "plaintext"), 1.0),
        eq(tls("preferred", "ALL", "ACCEPTED", "handshake_failed"), 1.0),
        eq(tls("required", "ALL", "TRUSTED", "required_refused"), 1.0),
        eq(tls("required", "ALL", "TRUSTED", "success"), 1.0),
        eq(tls("off", "ALL", "PLAIN", "not_offered"), 1.0),
        eq(tls("relay", "RELAYLIST", "RELAYED", "not_offered"), 1.0),
        // Rejected and refused connections never reach TLS: no outcome for them.
        eq(sum("mxgate_inbound_tls_total", &[]), 7.0),
        // The mailed RFC 8460 example: its session counts exactly; the malformed one counted.
        eq(
            sum(
                "mxgate_tlsrpt_sessions_total",
                &[
                    ("policy_domain", "company-y.example"),
                    ("result", "success"),
                ],
            ),
            5326.0,
        ),
        eq(
            sum("mxgate_tlsrpt_sessions_total", &[("result", "failure")]),
            303.0,
        ),
        eq(
            sum(
                "mxgate_tlsrpt_sessions_total",
                &[
                    ("result_type", "starttls-not-supported"),
                    ("reporter", "other"),
                ],
            ),
            200.0,
        ),
        eq(
            sum("mxgate_tlsrpt_reports_total", &[("outcome", "accepted")]),
            1.0,
        ),
        eq(
            sum("mxgate_tlsrpt_reports_total", &[("outcome", "malformed")]),
            1.0,
        ),
        // The two TLS sessions negotiated TLS 1.3; the other five outcomes carry `none`. Every
        // series has a sender_org (what 127.0.0.1's PTR gives depends on the system resolver).
        eq(
            sum("mxgate_inbound_tls_total", &[("tls_version", "TLSv1.3")]),
            2.0,
        ),
        eq(
            sum("mxgate_inbound_tls_total", &[("tls_version", "none")]),
            5.0,
        ),
        eq(
            "sum(mxgate_inbound_tls_total{sender_org=~\"[a-z][a-z0-9_]*\"})".into(),
            7.0,
        ),
        eq(
            "sum(mxgate_connections_total{sender_org=~\"[a-z][a-z0-9_]*\"})".into(),
            9.0,
        ),
        eq(
            sum(
                "mxgate_inbound_tls_sessions_total",
                &[("listener", "preferred")],
            ),
            1.0,
        ),
        eq(
            sum(
                "mxgate_inbound_tls_sessions_total",
                &[("listener", "required")],
            ),
            1.0,
        ),
        eq(
            sum(
                "mxgate_inbound_tls_sessions_total",
                &[("protocol", "TLSv1.3")],
            ),
            2.0,
        ),
        eq(sum("mxgate_tls_handshake_seconds_count", &[]), 2.0),
        eq(
            sum("mxgate_tls_handshake_seconds_bucket", &[("le", "+Inf")]),
            2.0,
        ),
        // Connections by HAT action.
        eq(conn("preferred", "ALL", "accept"), 3.0),
        eq(conn("required", "ALL", "accept"), 2.0),
        eq(conn("off", "ALL", "accept"), 1.0),
        eq(conn("proxied", "BLOCKLIST", "reject"), 1.0),
        eq(conn("proxied", "REFUSELIST", "tcprefuse"), 1.0),
        eq(conn("relay", "RELAYLIST", "relay"), 1.0),
        eq(sum("mxgate_connections_total", &[]), 9.0),
        eq(sum("mxgate_connections_active", &[]), 0.0),
        // Messages and recipients.
        eq(lg(accepted, "preferred", "ALL"), 2.0),
        eq(lg(accepted, "required", "ALL"), 1.0),
        eq(lg(accepted, "off", "ALL"), 1.0),
        eq(lg(accepted, "relay", "RELAYLIST"), 1.0),
        eq(
            lr("mxgate_messages_rejected_total", "preferred", "size"),
            1.0,
        ),
        eq(sum("mxgate_messages_rejected_total", &[]), 1.0),
        eq(
            lr("mxgate_recipients_rejected_total", "preferred", "rat"),
            2.0,
        ),
        eq(
            lr("mxgate_recipients_rejected_total", "preferred", "limit"),
            1.0,
        ),
        eq(
            lr(
                "mxgate_recipients_rejected_total",
                "off",
                "invalid_recipient",
            ),
            1.0,
        ),
        eq(sum("mxgate_recipients_rejected_total", &[]), 4.0),
        // Recipient validation (listener off): one valid and one invalid probe, one cache hit.
        eq(
            sum(
                "mxgate_recipient_validation_total",
                &[
                    ("listener", "off"),
                    ("method", "callahead"),
                    ("result", "valid"),
                ],
            ),
            1.0,
        ),
        eq(
            sum(
                "mxgate_recipient_validation_total",
                &[
                    ("listener", "off"),
                    ("method", "callahead"),
                    ("result", "invalid"),
                ],
            ),
            1.0,
        ),
        eq(
            sum(
                "mxgate_recipient_validation_total",
                &[
                    ("listener", "off"),
                    ("method", "callahead"),
                    ("result", "cache_hit"),
                ],
            ),
            1.0,
        ),
        eq(
            sum(
                "mxgate_recipient_validation_seconds_count",
                &[("method", "callahead")],
            ),
            2.0,
        ),
        eq(
            sum(
                "mxgate_recipient_validation_cache_entries",
                &[("verdict", "invalid")],
            ),
            1.0,
        ),
        // bob, nouser, carol, dan, and bob again for the message that was too big.
        eq(lg(rcpts, "preferred", "ALL"), 5.0),
        eq(lg(rcpts, "required", "ALL"), 1.0),
        // ops@secure.example.com and ok@validated.example (its second RCPT is a duplicate).
        eq(lg(rcpts, "off", "ALL"), 2.0),
        eq(lg(rcpts, "relay", "RELAYLIST"), 1.0),
        Expect {
            query: sum("mxgate_bytes_received_total", &[("listener", "preferred")]),
            want: Want::Above(0.0),
        },
        Expect {
            query: sum("mxgate_bytes_received_total", &[("listener", "relay")]),
            want: Want::Above(0.0),
        },
        // Delivery: the default destination control covers example.com and relay-dest.test.
        eq(dr("default", "delivered"), 4.0),
        eq(dr("default", "bounced"), 1.0),
        eq(dr("default", "deferred"), 1.0),
        eq(dr("secure.example.com", "deferred"), 1.0),
        eq(sum("mxgate_delivery_attempts_total", &[]), 7.0),
        // Outbound TLS: the sink offers no STARTTLS.
        Expect {
            query: sum(
                "mxgate_outbound_tls_total",
                &[
                    ("destination", "default"),
                    ("mode", "preferred"),
                    ("outcome", "not_offered"),
                ],
            ),
            want: Want::AtLeast(1.0),
        },
        Expect {
            query:
                "sum(mxgate_outbound_tls_total{destination=\"default\",outcome!=\"not_offered\"})"
                    .into(),
            want: Want::None,
        },
        eq(
            sum(
                "mxgate_outbound_tls_total",
                &[
                    ("destination", "secure.example.com"),
                    ("mode", "required"),
                    ("outcome", "not_offered"),
                ],
            ),
            1.0,
        ),
        eq(
            sum(
                "mxgate_required_tls_failures_total",
                &[("destination", "secure.example.com")],
            ),
            1.0,
        ),
        eq(sum("mxgate_required_tls_failures_total", &[]), 1.0),
        eq(
            sum(
                "mxgate_proxy_refused_total",
                &[
                    ("listener", "untrusted_proxy"),
                    ("reason", "untrusted_source"),
                ],
            ),
            1.0,
        ),
        // The deferred messages (later@, ops@secure) stay queued (retry in 1h).
        eq(sum("mxgate_queue_messages", &[]), 2.0),
        Expect {
            query: sum("mxgate_queue_oldest_age_seconds", &[]),
            want: Want::AtLeast(0.0),
        },
        // One certificate gauge per listener, far from expiry (the demo certificate).
        eq(
            "count(mxgate_certificate_expiry_timestamp_seconds)".into(),
            listeners as f64,
        ),
        Expect {
            query: "min(mxgate_certificate_expiry_timestamp_seconds) - time()".into(),
            want: Want::Above(14.0 * 86400.0),
        },
        eq(
            sum(
                "mxgate_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))],
            ),
            1.0,
        ),
        eq("sum(up{job=\"mxgate\"})".into(), 1.0),
    ]
}

/// Polls until every expectation holds (scrapes lag); returns the ones that never did.
async fn check_expectations(p: &Prometheus, list: &[Expect], within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let mut bad = Vec::new();
        for e in list {
            match p.value(&e.query).await {
                Ok(got) if e.ok(got) => {}
                Ok(got) => bad.push(format!("{}: got {got:?}", e.describe())),
                Err(err) => bad.push(format!("{}: query failed: {err}", e.describe())),
            }
        }
        if bad.is_empty() || Instant::now() > deadline {
            return bad;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// No label value of an mxgate series is an IP address or a mail address.
async fn check_privacy(p: &Prometheus, failures: &mut Vec<String>) {
    match p.query("{__name__=~\"mxgate_.+\"}").await {
        Ok(series) => {
            for s in series {
                for (k, v) in &s.labels {
                    if matches!(k.as_str(), "instance" | "job" | "service" | "__name__") {
                        continue;
                    }
                    if v.parse::<std::net::IpAddr>().is_ok() || v.contains('@') {
                        failures.push(format!(
                            "label {k}={v:?} of {:?} is an address (SPEC §4: never a client IP or address)",
                            s.labels.get("__name__")
                        ));
                    }
                }
            }
        }
        Err(e) => failures.push(format!("listing mxgate series: {e}")),
    }
}

/// Every panel (rows' nested panels included), flattened.
fn all_panels(dash: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for p in dash.get("panels").arr() {
        out.push(p);
        out.extend(p.get("panels").arr());
    }
    out
}

/// Grafana's variables and macros replaced the way Grafana would for "All".
fn substitute(expr: &str) -> String {
    let mut s = expr.to_string();
    for (from, to) in [
        ("$__rate_interval", "1m"),
        ("${__rate_interval}", "1m"),
        ("$__interval", "15s"),
        ("${__interval}", "15s"),
        ("$__range", "1h"),
        ("${__range}", "1h"),
    ] {
        s = s.replace(from, to);
    }
    for var in [
        "instance",
        "listener",
        "sender_group",
        "destination",
        "datasource",
    ] {
        s = s.replace(&format!("${{{var}}}"), ".*");
        s = s.replace(&format!("${var}"), ".*");
    }
    s
}

/// The metric-name constants: `src/metrics/mod.rs` and its submodules.
fn metrics_source() -> String {
    [
        "src/metrics/mod.rs",
        "src/metrics/validation.rs",
        "src/metrics/tlsrpt.rs",
        "src/metrics/sender_org.rs",
        "src/metrics/dane.rs",
        "src/metrics/sender_auth.rs",
        "src/metrics/config_info.rs",
        "src/metrics/shared_state.rs",
    ]
    .iter()
    .map(|f| read(f))
    .collect::<Vec<_>>()
    .join("\n")
}

/// `label_values(EXPR, label)` → (EXPR, label).
fn label_values(def: &str) -> Option<(String, String)> {
    let inner = def
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (expr, label) = inner.rsplit_once(',')?;
    Some((expr.trim().to_string(), label.trim().to_string()))
}

/// Panels allowed to show no data in this run (the event never happens in-process). No HAT of
/// this run names a block list; `tests/hardening.rs` checks the lookup counter against dnsmasq.
/// No policy of this run sets `max_invalid_recipients_per_hour`; `tests/dhap.rs` checks the
/// DHAP drop counter. No validation destination fails here; `tests/validation_e2e.rs` opens a
/// breaker against a stopped internal server. This run has no DNS server with TLSA and
/// `_mta-sts` records; `tests/check_dns.rs` checks both self-check gauges against dnsmasq.
/// No policy of this run turns sender authentication on; `tests/message_auth.rs` checks the
/// `mxgate_sender_auth_total` counts (dkim, dmarc, spf) and the `dmarc_reject` refusals.
const PANELS_WITHOUT_DATA: &[&str] = &[
    "Sender authentication results",
    "DMARC results and refusals",
    "Validation breakers open and trips",
    "Configuration reloads",
    "DNS block-list lookups",
    "DHAP drops by sender group",
    "DANE: TLSA matches the served key",
    "MTA-STS: published policy id is current",
];

async fn check_dashboard(p: &Prometheus, metrics_addr: SocketAddr, failures: &mut Vec<String>) {
    let dash = Json::parse(&read("deploy/grafana/mxgate-dashboard.json")).unwrap();
    let mut evaluated = 0;
    for panel in all_panels(&dash) {
        let title = panel.get("title").str().unwrap_or("?");
        let targets = panel.get("targets").arr();
        if targets.is_empty() {
            continue;
        }
        let mut has_data = false;
        for t in targets {
            let Some(expr) = t.get("expr").str() else {
                failures.push(format!("dashboard panel {title:?}: a target without expr"));
                continue;
            };
            let q = substitute(expr);
            evaluated += 1;
            match p.query(&q).await {
                Ok(r) => has_data |= !r.is_empty(),
                Err(e) => failures.push(format!("dashboard panel {title:?}: {q}: {e}")),
            }
        }
        if !has_data && !PANELS_WITHOUT_DATA.contains(&title) {
            failures.push(format!(
                "dashboard panel {title:?} shows no data after the test traffic"
            ));
        }
    }
    assert!(evaluated >= 20, "only {evaluated} dashboard queries found");
    // Template variables: the label_values() selector runs and lists the values we produced.
    let expected: BTreeMap<&str, String> = [
        ("instance", metrics_addr.to_string()),
        ("listener", "preferred".to_string()),
        ("sender_group", "ALL".to_string()),
        ("destination", "default".to_string()),
    ]
    .into_iter()
    .collect();
    for v in dash.at("templating/list").arr() {
        if v.get("type").str() != Some("query") {
            continue;
        }
        let name = v.get("name").str().unwrap_or("?");
        let def = v
            .get("definition")
            .str()
            .or(v.at("query/query").str())
            .unwrap_or("");
        let Some((expr, label)) = label_values(def) else {
            failures.push(format!(
                "dashboard variable {name}: {def:?} is not label_values(...)"
            ));
            continue;
        };
        let q = format!("count by ({label}) ({})", substitute(&expr));
        match p.query(&q).await {
            Ok(r) => {
                let values: BTreeSet<&str> = r
                    .iter()
                    .filter_map(|s| s.labels.get(&label).map(String::as_str))
                    .collect();
                if let Some(want) = expected.get(name) {
                    if !values.contains(want.as_str()) {
                        failures.push(format!(
                            "dashboard variable {name}: {q} gave {values:?}, expected {want:?} among them"
                        ));
                    }
                }
            }
            Err(e) => failures.push(format!("dashboard variable {name}: {q}: {e}")),
        }
    }
}

async fn check_alert_rules(p: &Prometheus, failures: &mut Vec<String>) {
    let text = read("deploy/alerts.yml");
    let in_file = text
        .lines()
        .filter(|l| {
            l.trim_start().starts_with("- alert:") || l.trim_start().starts_with("- record:")
        })
        .count();
    // Wait until Prometheus has evaluated every rule once.
    let mut rules: Vec<Json> = Vec::new();
    let mut api_error = None;
    for _ in 0..60 {
        match p.api("/api/v1/rules").await {
            Ok(d) => {
                api_error = None;
                rules = d
                    .get("groups")
                    .arr()
                    .iter()
                    .flat_map(|g| g.get("rules").arr().iter().cloned())
                    .collect();
                if !rules.is_empty()
                    && rules
                        .iter()
                        .all(|r| r.get("health").str() != Some("unknown"))
                {
                    break;
                }
            }
            Err(e) => api_error = Some(format!("/api/v1/rules: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    failures.extend(api_error);
    if rules.len() != in_file {
        failures.push(format!(
            "Prometheus loaded {} rules, deploy/alerts.yml has {in_file}",
            rules.len()
        ));
    }
    for r in &rules {
        let name = r.get("name").str().unwrap_or("?");
        if r.get("health").str() != Some("ok") {
            failures.push(format!(
                "rule {name}: health {:?}: {}",
                r.get("health").str(),
                r.get("lastError").str().unwrap_or("")
            ));
        }
        let Some(q) = r.get("query").str() else {
            failures.push(format!("rule {name}: no query"));
            continue;
        };
        if let Err(e) = p.query(q).await {
            failures.push(format!("rule {name}: {q}: {e}"));
        }
    }
    // The failed delivery to the required-TLS destination makes its alert active.
    let mut active = Vec::new();
    for _ in 0..60 {
        active = match p.api("/api/v1/alerts").await {
            Ok(d) => d.get("alerts").arr().to_vec(),
            Err(e) => {
                failures.push(format!("/api/v1/alerts: {e}"));
                break;
            }
        };
        if active.iter().any(|a| {
            a.at("labels/alertname").str() == Some("MxgateRequiredTlsFailures")
                && a.at("labels/destination").str() == Some("secure.example.com")
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let names: Vec<String> = active
        .iter()
        .map(|a| {
            format!(
                "{}{{destination={:?}}} {}",
                a.at("labels/alertname").str().unwrap_or("?"),
                a.at("labels/destination").str().unwrap_or(""),
                a.get("state").str().unwrap_or("?")
            )
        })
        .collect();
    if !active.iter().any(|a| {
        a.at("labels/alertname").str() == Some("MxgateRequiredTlsFailures")
            && a.at("labels/destination").str() == Some("secure.example.com")
            && matches!(a.get("state").str(), Some("pending" | "firing"))
    }) {
        failures.push(format!(
            "MxgateRequiredTlsFailures for secure.example.com never became active; active alerts: {names:?}"
        ));
    }
    if active
        .iter()
        .any(|a| a.at("labels/alertname").str() == Some("MxgateDown"))
    {
        failures.push(format!("MxgateDown is active: {names:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_every_outcome_and_evaluates_dashboard_and_alert_queries() {
    const TEST: &str = "prometheus_scrapes_every_outcome_and_evaluates_dashboard_and_alert_queries";
    let Some(prometheus) = prometheus_bin(TEST) else {
        return;
    };
    let Some(promtool) = promtool_bin(TEST) else {
        return;
    };

    // The gateway: the e2e fixture relaying to a sink, metrics on a free port.
    let sink = Sink::start("127.0.0.1:0").await;
    let cfg = relay_config(sink.addr, "1h");
    let metrics_addr = prom::free_addr();
    configure(cfg.path(), metrics_addr);
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    wait_http(metrics_addr, "/health", 200).await;
    wait_http(metrics_addr, "/ready", 200).await;
    let listeners: BTreeSet<&String> = srv.addrs.keys().collect();

    // Prometheus on deploy/prometheus.yml (target and intervals rewritten) and alerts.yml.
    let pdir = tempfile::tempdir().unwrap();
    let config = pdir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        test_prometheus_config(&read("deploy/prometheus.yml"), metrics_addr),
    )
    .unwrap();
    std::fs::copy(
        repo().join("deploy/alerts.yml"),
        pdir.path().join("alerts.yml"),
    )
    .unwrap();
    let (ok, out) = prom::run(
        Command::new(&promtool)
            .arg("check")
            .arg("config")
            .arg(&config),
    );
    assert!(ok, "promtool check config (generated test config):\n{out}");
    let mut p = Prometheus::start(&prometheus, pdir, &config);
    p.wait_ready().await;

    drive_sessions(&srv).await;

    // Deliveries reached the sink: message 1 (bob), 2 (carol, dan; nouser bounced), 5.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sink.messages().len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut got: Vec<Vec<String>> = sink.messages().iter().map(|m| m.rcpts.clone()).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            vec!["bob@example.com".to_string()],
            vec![
                "carol@example.com".to_string(),
                "dan@example.com".to_string()
            ],
            vec!["someone@relay-dest.test".to_string()],
        ],
        "messages at the sink"
    );

    let mut failures =
        check_expectations(&p, &expectations(listeners.len()), Duration::from_secs(20)).await;
    check_privacy(&p, &mut failures).await;
    // A few more scrapes so that rate() over the new series has two samples. Meanwhile the
    // queued messages age: the gauge must follow (MxgateQueueOld relies on it).
    let age = "max(mxgate_queue_oldest_age_seconds)";
    let before = p.value(age).await.ok().flatten().unwrap_or(f64::NAN);
    let started = Instant::now();
    let (after, advanced) = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = p.value(age).await.ok().flatten().unwrap_or(f64::NAN);
        let waited = started.elapsed();
        let advanced = after >= before + 2.0;
        if waited >= Duration::from_secs(12) || (advanced && waited >= Duration::from_secs(3)) {
            break (after, advanced);
        }
    };
    if !advanced {
        failures.push(format!(
            "{age} went from {before} to {after} in {:.0} s: the oldest queued message's age must \
             keep growing while it waits, else MxgateQueueOld fires late (src/relay/queue/mod.rs sets \
             the gauge only when the queue manager wakes up)",
            started.elapsed().as_secs_f64()
        ));
    }
    check_dashboard(&p, metrics_addr, &mut failures).await;
    check_alert_rules(&p, &mut failures).await;

    let metrics_text = prom::http_get(metrics_addr, "/metrics")
        .await
        .map(|(_, body)| body)
        .unwrap_or_else(|e| e);
    srv.stop().await;
    sink.stop();
    assert!(
        failures.is_empty(),
        "{} problem(s):\n  {}\n\nmxgate /metrics at the end:\n{metrics_text}\nPrometheus log:\n{}",
        failures.len(),
        failures.join("\n  "),
        p.log()
    );
}

// ---------------------------------------------------------------------------------------------
// Static checks of deploy/
// ---------------------------------------------------------------------------------------------

#[test]
fn promtool_accepts_the_rules_their_unit_tests_and_the_configs() {
    const TEST: &str = "promtool_accepts_the_rules_their_unit_tests_and_the_configs";
    let Some(promtool) = promtool_bin(TEST) else {
        return;
    };
    let deploy = repo().join("deploy");
    let check = |args: &[&str], cwd: &Path| {
        let (ok, out) = prom::run(Command::new(&promtool).args(args).current_dir(cwd));
        assert!(ok, "promtool {}:\n{out}", args.join(" "));
        out
    };
    let out = check(&["check", "rules", "alerts.yml"], &deploy);
    assert!(out.contains("SUCCESS"), "{out}");
    check(&["test", "rules", "alerts_test.yml"], &deploy);
    check(&["check", "config", "prometheus.yml"], &deploy);
    // The Compose variant expects alerts.yml beside it, as mounted in docker-compose.yml.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        deploy.join("docker/prometheus.yml"),
        dir.path().join("prometheus.yml"),
    )
    .unwrap();
    std::fs::copy(deploy.join("alerts.yml"), dir.path().join("alerts.yml")).unwrap();
    check(&["check", "config", "prometheus.yml"], dir.path());
}

/// A failed handshake under `tls: required` also logs `TLS was required but remote host did
/// not initiate it`; the dashboard must still show it apart from real plaintext refusals: each
/// outcome has its own panel and no query adds the two together.
#[test]
fn trust_14_dashboard_keeps_handshake_failures_apart_from_required_refusals() {
    let text = read("deploy/grafana/mxgate-dashboard.json");
    let dash = Json::parse(&text).unwrap_or_else(|e| panic!("dashboard JSON: {e}"));
    let (mut failed, mut refused) = (0, 0);
    for panel in all_panels(&dash) {
        let title = panel.get("title").str().unwrap_or("");
        for t in panel.get("targets").arr() {
            let expr = t.get("expr").str().unwrap_or("");
            let f = expr.contains("outcome=\"handshake_failed\"");
            let r = expr.contains("outcome=\"required_refused\"");
            assert!(!(f && r), "{title}: one query mixes both outcomes: {expr}");
            assert!(
                !(expr.contains("outcome=~") && expr.contains("handshake_failed")),
                "{title}: handshake_failed inside a regex: {expr}"
            );
            failed += usize::from(f);
            refused += usize::from(r);
        }
        if title == "Handshake failures" {
            let d = panel.get("description").str().unwrap_or("");
            assert!(
                d.contains("TLS was required but remote host did not initiate it"),
                "{d}"
            );
        }
    }
    assert!(
        failed > 0 && refused > 0,
        "a panel per outcome: {failed} {refused}"
    );
}

#[test]
fn dashboard_is_provisioning_ready_and_queries_only_defined_metrics() {
    let text = read("deploy/grafana/mxgate-dashboard.json");
    let dash = Json::parse(&text).unwrap_or_else(|e| panic!("dashboard JSON: {e}"));
    if let Some(py) = prom::tool(&["/usr/bin/python3", "python3"]) {
        let (ok, out) = prom::run(
            Command::new(py)
                .args(["-c", "import json, sys; json.load(open(sys.argv[1]))"])
                .arg(repo().join("deploy/grafana/mxgate-dashboard.json")),
        );
        assert!(ok, "python3 json.load rejects the dashboard:\n{out}");
    }
    let mut bad = Vec::new();
    assert_eq!(dash.get("uid").str(), Some("mxgate"));
    assert!(dash.get("title").str().is_some_and(|t| !t.is_empty()));
    let schema = dash.get("schemaVersion").num().unwrap_or(0.0);
    assert!((36.0..=41.0).contains(&schema), "schemaVersion {schema}");
    assert!(
        !dash.get("id").exists(),
        "a provisioned dashboard must not carry a database id"
    );

    // Variables: the data source, and label_values() for listener and sender group.
    let vars = dash.at("templating/list").arr();
    let var = |n: &str| vars.iter().find(|v| v.get("name").str() == Some(n));
    let ds = var("datasource").expect("a `datasource` variable");
    assert_eq!(ds.get("type").str(), Some("datasource"));
    assert_eq!(ds.get("query").str(), Some("prometheus"));
    for n in ["listener", "sender_group"] {
        let v = var(n).unwrap_or_else(|| panic!("a `{n}` variable"));
        assert_eq!(v.get("type").str(), Some("query"), "{n}");
        let def = v.get("definition").str().unwrap_or("");
        assert!(
            label_values(def).is_some_and(|(_, l)| l == n),
            "{n}: {def:?}"
        );
    }

    // Panels: unique ids, on the 24-column grid, every query through ${datasource}.
    let defined = promql::defined_metrics(&metrics_source());
    assert!(
        defined.names.len() >= 15,
        "src/metrics/mod.rs: only {:?}",
        defined.names
    );
    let mut ids = BTreeSet::new();
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut titles = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in all_panels(&dash) {
        let title = p.get("title").str().unwrap_or("").to_string();
        let id = p.get("id").num().unwrap_or(-1.0) as i64;
        if !ids.insert(id) {
            bad.push(format!("panel {title:?}: duplicate id {id}"));
        }
        let (x, w, h) = (
            p.at("gridPos/x").num().unwrap_or(-1.0),
            p.at("gridPos/w").num().unwrap_or(0.0),
            p.at("gridPos/h").num().unwrap_or(0.0),
        );
        if x < 0.0 || w <= 0.0 || h <= 0.0 || x + w > 24.0 {
            bad.push(format!("panel {title:?}: gridPos x={x} w={w} h={h}"));
        }
        if p.get("type").str() == Some("row") {
            continue;
        }
        titles.insert(title.clone());
        if p.at("datasource/uid").str() != Some("${datasource}") {
            bad.push(format!(
                "panel {title:?}: datasource is not ${{datasource}}"
            ));
        }
        let targets = p.get("targets").arr();
        if targets.is_empty() {
            bad.push(format!("panel {title:?}: no queries"));
        }
        let mut refs = BTreeSet::new();
        for t in targets {
            if !refs.insert(t.get("refId").str().unwrap_or("")) {
                bad.push(format!("panel {title:?}: duplicate refId"));
            }
            if t.at("datasource/uid").str() != Some("${datasource}") {
                bad.push(format!(
                    "panel {title:?}: a target's datasource is not ${{datasource}}"
                ));
            }
            match t.get("expr").str() {
                Some(e) if !e.trim().is_empty() => exprs.push((title.clone(), e.to_string())),
                _ => bad.push(format!("panel {title:?}: a target without expr")),
            }
        }
    }
    for v in vars {
        if let Some((e, _)) = v.get("definition").str().and_then(label_values) {
            exprs.push((
                format!("variable {}", v.get("name").str().unwrap_or("?")),
                e,
            ));
        }
    }
    for (title, e) in &exprs {
        let s = substitute(e);
        if s.contains('$') {
            bad.push(format!("{title}: unknown variable left in {s}"));
        }
        for name in promql::metric_names(&s) {
            if name != "up" && !defined.series.contains(&name) {
                bad.push(format!(
                    "{title}: metric {name} is not defined in src/metrics/mod.rs"
                ));
            }
            used.insert(name);
        }
    }
    for name in &defined.names {
        if !used.iter().any(|u| u.starts_with(name.as_str())) {
            bad.push(format!(
                "src/metrics/mod.rs defines {name}, but no dashboard panel shows it"
            ));
        }
    }
    // The panels the users asked for.
    for t in [
        "Inbound TLS outcomes by sender group",
        "TLS share per sender group",
        "Handshake failures",
        "Required-TLS refusals",
        "STARTTLS handshake latency",
        "Connections by HAT action",
        "Active connections",
        "Accepted messages and recipients",
        "Recipients rejected by reason",
        "Outbound TLS by destination and mode",
        "Delivery results",
        "Required-TLS failures",
        "Queue depth",
        "Oldest queued message",
        "Certificate expiry (days left)",
    ] {
        if !titles.contains(t) {
            bad.push(format!("no panel titled {t:?}"));
        }
    }
    assert!(bad.is_empty(), "dashboard:\n  {}", bad.join("\n  "));
}

/// Every YAML file under deploy/, as JSON: `{"relative/path": [document, ...]}`.
fn deploy_yaml(py: &Path) -> Json {
    const SCRIPT: &str = r#"
import json, os, sys, yaml
root = sys.argv[1]
out = {}
for d, _, files in os.walk(root):
    for f in sorted(files):
        if f.endswith((".yml", ".yaml")):
            p = os.path.join(d, f)
            with open(p) as fh:
                out[os.path.relpath(p, root)] = list(yaml.safe_load_all(fh))
print(json.dumps(out, default=str))
"#;
    let (ok, out) = prom::run(
        Command::new(py)
            .args(["-c", SCRIPT])
            .arg(repo().join("deploy")),
    );
    assert!(ok, "a YAML file under deploy/ does not parse:\n{out}");
    Json::parse(&out).unwrap()
}

#[test]
fn deploy_yaml_parses_and_the_files_agree_with_each_other() {
    const TEST: &str = "deploy_yaml_parses_and_the_files_agree_with_each_other";
    let Some(py) = python_with_yaml(TEST) else {
        return;
    };
    let all = deploy_yaml(&py);
    let doc = |f: &str| -> &Json {
        let d = all.get(f).at("0");
        assert!(d.exists(), "deploy/{f} missing or empty");
        d
    };
    let deploy = repo().join("deploy");
    let mut bad = Vec::new();

    // prometheus.yml: job mxgate on 127.0.0.1:9187 /metrics every 15s, rules from alerts.yml.
    let p = doc("prometheus.yml");
    let job = p
        .get("scrape_configs")
        .arr()
        .iter()
        .find(|j| j.get("job_name").str() == Some("mxgate"))
        .expect("scrape job mxgate");
    assert_eq!(job.get("metrics_path").str(), Some("/metrics"));
    assert_eq!(job.get("scrape_interval").str(), Some("15s"));
    assert_eq!(
        job.at("static_configs/0/targets/0").str(),
        Some("127.0.0.1:9187")
    );
    assert_eq!(p.at("rule_files/0").str(), Some("alerts.yml"));

    // alerts.yml: every rule has for, severity, summary, description, and known metrics.
    let defined = promql::defined_metrics(&metrics_source());
    let mut alerts = BTreeSet::new();
    for g in doc("alerts.yml").get("groups").arr() {
        for r in g.get("rules").arr() {
            let name = r.get("alert").str().unwrap_or("?").to_string();
            let expr = r.get("expr").str().unwrap_or("");
            if r.get("for").str().is_none() {
                bad.push(format!("alert {name}: no `for`"));
            }
            if !matches!(r.at("labels/severity").str(), Some("warning" | "critical")) {
                bad.push(format!(
                    "alert {name}: severity must be warning or critical"
                ));
            }
            for a in ["summary", "description"] {
                if r.at(&format!("annotations/{a}"))
                    .str()
                    .is_none_or(|s| s.trim().is_empty())
                {
                    bad.push(format!("alert {name}: no {a} annotation"));
                }
            }
            for m in promql::metric_names(expr) {
                if m != "up" && !defined.series.contains(&m) {
                    bad.push(format!(
                        "alert {name}: metric {m} is not defined in src/metrics/mod.rs"
                    ));
                }
            }
            alerts.insert(name);
        }
    }
    for a in [
        "MxgateDown",
        "MxgateRequiredTlsFailures",
        "MxgateInboundTlsShareLow",
        "MxgateInboundTlsHandshakeFailures",
        "MxgateQueueLarge",
        "MxgateQueueGrowing",
        "MxgateQueueOld",
        "MxgateCertificateExpiringSoon",
        "MxgateDeliveryFailing",
    ] {
        if !alerts.contains(a) {
            bad.push(format!("alerts.yml has no alert {a}"));
        }
    }

    // Grafana provisioning and the Compose file that mounts it.
    let ds = doc("grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(ds.at("datasources/0/type").str(), Some("prometheus"));
    let provider = doc("grafana/provisioning/dashboards/mxgate.yml").at("providers/0");
    assert_eq!(provider.get("type").str(), Some("file"));
    let dash_dir = provider.at("options/path").str().unwrap_or("").to_string();
    let compose = doc("docker-compose.yml");
    for s in ["mxgate", "prometheus", "grafana"] {
        if !compose.at(&format!("services/{s}")).exists() {
            bad.push(format!("docker-compose.yml: no service {s}"));
        }
    }
    let build = compose.at("services/mxgate/build");
    let context = deploy.join(build.get("context").str().unwrap_or("."));
    if !context
        .join(build.get("dockerfile").str().unwrap_or("Dockerfile"))
        .is_file()
    {
        bad.push("docker-compose.yml: mxgate's Dockerfile not found".into());
    }
    let mut mounted_dashboard = false;
    for (svc, s) in compose.get("services").obj() {
        for v in s.get("volumes").arr() {
            let Some(v) = v.str() else { continue };
            let mut parts = v.split(':');
            let (src, dst) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if src.starts_with('.') && !deploy.join(src).exists() {
                bad.push(format!("docker-compose.yml {svc}: {src} does not exist"));
            }
            if src.ends_with("mxgate-dashboard.json") && dst.starts_with(&dash_dir) {
                mounted_dashboard = true;
            }
        }
    }
    if !mounted_dashboard {
        bad.push(format!(
            "docker-compose.yml does not mount the dashboard under the provider path {dash_dir}"
        ));
    }

    // Kubernetes: the kustomization's files exist, the StatefulSet mounts what it generates.
    let k = doc("k8s/kustomization.yaml");
    let k8s = deploy.join("k8s");
    for r in k.get("resources").arr() {
        if !r.str().is_some_and(|r| k8s.join(r).is_file()) {
            bad.push(format!("k8s/kustomization.yaml: resource {r} not found"));
        }
    }
    let gen = k
        .get("configMapGenerator")
        .arr()
        .iter()
        .find(|g| g.get("name").str() == Some("mxgate-config"))
        .expect("configMapGenerator mxgate-config");
    let mut keys = BTreeSet::new();
    for f in gen.get("files").arr() {
        let f = f.str().unwrap_or("");
        let (key, path) = f
            .split_once('=')
            .unwrap_or((f.rsplit('/').next().unwrap_or(f), f));
        if !k8s.join(path).is_file() {
            bad.push(format!("k8s/kustomization.yaml: {path} not found"));
        }
        keys.insert(key.to_string());
    }
    let sts = all
        .get("k8s/statefulset.yaml")
        .arr()
        .iter()
        .find(|d| d.get("kind").str() == Some("StatefulSet"))
        .expect("a StatefulSet in k8s/statefulset.yaml");
    let pod = sts.at("spec/template/spec");
    let c = pod.at("containers/0");
    let env: BTreeMap<&str, &str> = c
        .get("env")
        .arr()
        .iter()
        .filter_map(|e| Some((e.get("name").str()?, e.get("value").str()?)))
        .collect();
    let port = |name: &str| {
        c.get("ports")
            .arr()
            .iter()
            .find(|p| p.get("name").str() == Some(name))
            .and_then(|p| p.get("containerPort").num())
    };
    assert_eq!(port("metrics"), Some(9187.0));
    assert_eq!(c.at("livenessProbe/httpGet/path").str(), Some("/health"));
    assert_eq!(c.at("livenessProbe/httpGet/port").str(), Some("metrics"));
    assert_eq!(c.at("readinessProbe/httpGet/path").str(), Some("/ready"));
    assert_eq!(c.at("readinessProbe/httpGet/port").str(), Some("metrics"));
    let ann = sts.at("spec/template/metadata/annotations");
    assert_eq!(ann.get("prometheus.io/scrape").str(), Some("true"));
    assert_eq!(ann.get("prometheus.io/port").str(), Some("9187"));
    let mounts: BTreeMap<&str, &str> = c
        .get("volumeMounts")
        .arr()
        .iter()
        .filter_map(|m| Some((m.get("name").str()?, m.get("mountPath").str()?)))
        .collect();
    let claim = sts.at("spec/volumeClaimTemplates/0/metadata/name").str();
    assert_eq!(claim, Some("spool"), "the spool is a volumeClaimTemplate");
    assert_eq!(
        mounts.get("spool").copied(),
        env.get("MXGATE_SPOOL_DIR").copied(),
        "the spool claim is mounted where MXGATE_SPOOL_DIR points"
    );
    assert_eq!(mounts.get("config").copied(), Some("/etc/mxgate"));
    let args: Vec<&str> = c.get("args").arr().iter().filter_map(Json::str).collect();
    assert_eq!(args, ["serve", "--config-dir", "/etc/mxgate"]);
    let config_volume = pod
        .get("volumes")
        .arr()
        .iter()
        .find(|v| v.get("name").str() == Some("config"))
        .expect("a config volume");
    let mut item_keys = BTreeSet::new();
    let mut item_paths = BTreeSet::new();
    for src in config_volume.at("projected/sources").arr() {
        for i in src.at("configMap/items").arr() {
            item_keys.insert(i.get("key").str().unwrap_or("").to_string());
            item_paths.insert(i.get("path").str().unwrap_or("").to_string());
        }
    }
    if item_keys != keys {
        bad.push(format!(
            "k8s: the StatefulSet mounts keys {item_keys:?}, the ConfigMap has {keys:?}"
        ));
    }
    for dir in ["listeners", "policies"] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap().flatten() {
            let rel = format!("{dir}/{}", e.file_name().to_string_lossy());
            if rel.ends_with(".yaml") && !item_paths.contains(&rel) {
                bad.push(format!("k8s: {rel} is not in the mxgate-config ConfigMap"));
            }
        }
    }
    let services = all.get("k8s/service.yaml").arr();
    let smtp = services
        .iter()
        .flat_map(|s| s.at("spec/ports").arr())
        .find(|p| p.get("port").num() == Some(25.0))
        .expect("a Service on port 25");
    let target = smtp.get("targetPort").str().unwrap_or("");
    if port(target).is_none() {
        bad.push(format!(
            "k8s: port 25 targets {target:?}, not a container port"
        ));
    }

    // Several nodes: three replicas, at most one disrupted, each drained before it stops
    // (the drain's deadline, plus the command's 30 s exit margin, inside the grace period).
    assert_eq!(sts.at("spec/replicas").num(), Some(3.0));
    let pre_stop: Vec<&str> = c
        .at("lifecycle/preStop/exec/command")
        .arr()
        .iter()
        .filter_map(Json::str)
        .collect();
    assert_eq!(
        pre_stop[..4],
        [
            "/usr/local/bin/mxgate",
            "drain",
            "--config-dir",
            "/etc/mxgate"
        ]
    );
    let deadline = pre_stop
        .iter()
        .skip_while(|a| **a != "--deadline")
        .nth(1)
        .and_then(|d| d.strip_suffix('s')?.parse::<f64>().ok())
        .expect("preStop: drain --deadline Ns");
    let grace = pod
        .get("terminationGracePeriodSeconds")
        .num()
        .unwrap_or(0.0);
    if grace < deadline + 30.0 {
        bad.push(format!(
            "k8s: terminationGracePeriodSeconds {grace} is not above the drain deadline {deadline}s + 30s"
        ));
    }
    let pdb = doc("k8s/pdb.yaml");
    assert_eq!(pdb.get("kind").str(), Some("PodDisruptionBudget"));
    assert_eq!(pdb.at("spec/maxUnavailable").num(), Some(1.0));
    assert_eq!(
        pdb.at("spec/selector/matchLabels")
            .get("app.kubernetes.io/name")
            .str(),
        sts.at("spec/selector/matchLabels")
            .get("app.kubernetes.io/name")
            .str()
    );
    if !k
        .get("resources")
        .arr()
        .iter()
        .any(|r| r.str() == Some("pdb.yaml"))
    {
        bad.push("k8s/kustomization.yaml: pdb.yaml is not a resource".into());
    }
    let valkey = all.get("k8s/valkey.yaml").arr();
    let kinds: Vec<&str> = valkey.iter().filter_map(|d| d.get("kind").str()).collect();
    assert_eq!(kinds, ["Deployment", "Service"], "k8s/valkey.yaml");
    let k8s_global = read("deploy/k8s/mxgate.yaml");
    assert!(
        k8s_global.contains("# shared_state:\n#   url: redis://valkey:6379/0"),
        "deploy/k8s/mxgate.yaml: the commented shared_state block names the valkey Service"
    );

    // The two-node Compose example: HAProxy with PROXY v2 in front, both nodes trusting
    // only HAProxy's fixed address, each with its own spool volume, and Redis.
    let cluster = doc("docker-compose.cluster.yml");
    for s in ["haproxy", "mxgate1", "mxgate2", "redis"] {
        if !cluster.at(&format!("services/{s}")).exists() {
            bad.push(format!("docker-compose.cluster.yml: no service {s}"));
        }
    }
    let haproxy_ip = cluster
        .at("services/haproxy/networks/front/ipv4_address")
        .str()
        .expect("HAProxy's fixed address on the front network");
    let inbound = doc("docker/cluster/inbound.yaml");
    let trusted: Vec<&str> = inbound
        .at("proxy_protocol/trusted")
        .arr()
        .iter()
        .filter_map(Json::str)
        .collect();
    assert_eq!(trusted, [format!("{haproxy_ip}/32").as_str()]);
    let mut spools = BTreeSet::new();
    for node in ["mxgate1", "mxgate2"] {
        let volumes: Vec<&str> = cluster
            .at(&format!("services/{node}/volumes"))
            .arr()
            .iter()
            .filter_map(Json::str)
            .collect();
        for v in &volumes {
            let src = v.split(':').next().unwrap_or("");
            if src.starts_with('.') && !deploy.join(src).exists() {
                bad.push(format!(
                    "docker-compose.cluster.yml {node}: {src} does not exist"
                ));
            }
            if v.ends_with(":/var/spool/mxgate") {
                spools.insert(src.to_string());
            }
        }
        for needed in [
            "./docker/cluster/mxgate.yaml:/etc/mxgate/mxgate.yaml:ro",
            "./docker/cluster/inbound.yaml:/etc/mxgate/listeners/inbound.yaml:ro",
        ] {
            if !volumes.contains(&needed) {
                bad.push(format!(
                    "docker-compose.cluster.yml {node}: no volume {needed}"
                ));
            }
        }
    }
    assert_eq!(
        spools.len(),
        2,
        "each node its own spool volume: {spools:?}"
    );
    let cfg = read("deploy/haproxy/haproxy.cfg");
    for needle in [
        "send-proxy-v2",
        "server mxgate1 mxgate1:2525",
        "server mxgate2 mxgate2:2525",
        "GET /ready",
    ] {
        if !cfg.contains(needle) {
            bad.push(format!("deploy/haproxy/haproxy.cfg lacks {needle:?}"));
        }
    }
    assert!(
        doc("docker/cluster/mxgate.yaml")
            .at("shared_state/url")
            .str()
            .is_some_and(|u| u.starts_with("redis://redis:")),
        "docker/cluster/mxgate.yaml: shared_state points at the redis service"
    );
    assert!(bad.is_empty(), "deploy/:\n  {}", bad.join("\n  "));
}

#[test]
fn deployment_configurations_pass_mxgate_check() {
    let docker = read("deploy/Dockerfile");
    let bind = docker
        .split_whitespace()
        .find_map(|w| w.strip_prefix("MXGATE_BIND="))
        .expect("MXGATE_BIND in the Dockerfile");
    assert!(
        read("deploy/k8s/statefulset.yaml").contains(&format!("value: {bind}")),
        "the StatefulSet binds the listeners like the image ({bind})"
    );
    // The cluster nodes' files are mounted over the image's (docker-compose.cluster.yml).
    let cluster = [
        ("deploy/docker/cluster/mxgate.yaml", "mxgate.yaml"),
        (
            "deploy/docker/cluster/inbound.yaml",
            "listeners/inbound.yaml",
        ),
    ];
    for file in [
        "deploy/docker/mxgate.yaml",
        "deploy/k8s/mxgate.yaml",
        cluster[0].0,
    ] {
        let dir = tempfile::tempdir().unwrap();
        support::copy_dir(&repo().join("listeners"), &dir.path().join("listeners"));
        support::copy_dir(&repo().join("policies"), &dir.path().join("policies"));
        std::fs::copy(repo().join(file), dir.path().join("mxgate.yaml")).unwrap();
        if file == cluster[0].0 {
            for (from, to) in cluster {
                std::fs::copy(repo().join(from), dir.path().join(to)).unwrap();
            }
        }
        let (ok, out) = prom::run(
            support::mxgate::bin()
                .arg("check")
                .arg("--config-dir")
                .arg(dir.path())
                .env("MXGATE_BIND", bind)
                .env("MXGATE_METRICS_LISTEN", "0.0.0.0:9187")
                .env("MXGATE_SPOOL_DIR", dir.path().join("spool"))
                .env("MXGATE_CERTS_DIR", dir.path().join("certs"))
                .env("MXGATE_MAIL_LOG", "-"),
        );
        assert!(ok, "mxgate check with {file}:\n{out}");
        assert!(out.contains("configuration OK"), "{file}: {out}");
    }
}

#[test]
fn dockerfile_builds_locked_and_runs_unprivileged() {
    let d = read("deploy/Dockerfile");
    for needle in [
        "FROM rust:1-bookworm AS build",
        "cargo build --release --locked",
        "FROM debian:bookworm-slim",
        "ca-certificates",
        "USER mxgate",
        "VOLUME [\"/var/spool/mxgate\"]",
        "9187",
        "HEALTHCHECK",
        "/ready",
    ] {
        assert!(d.contains(needle), "deploy/Dockerfile lacks {needle:?}");
    }
    // Every COPY source (build context = the repository root) exists.
    for line in d.lines() {
        let l = line.trim();
        if !l.starts_with("COPY ") || l.contains("--from=") {
            continue;
        }
        let words: Vec<&str> = l.split_whitespace().collect();
        for src in &words[1..words.len() - 1] {
            assert!(
                repo().join(src).exists(),
                "Dockerfile: COPY source {src} does not exist"
            );
        }
    }
}

#[test]
fn systemd_unit_is_hardened_and_passes_systemd_analyze_verify() {
    let unit = read("deploy/systemd/mxgate.service");
    for needle in [
        "User=mxgate",
        "ExecStart=/usr/local/bin/mxgate serve --config-dir /etc/mxgate",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/spool/mxgate /var/log/mxgate /etc/mxgate/certs",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "LimitNOFILE=65536",
        "Restart=on-failure",
        "SuccessExitStatus=75",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == needle),
            "mxgate.service lacks {needle:?}"
        );
    }
    // Longer than the default shutdown_grace (30s) so open sessions can finish.
    let stop = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim_end_matches('s').parse::<u64>().ok())
        .expect("TimeoutStopSec=<seconds>");
    assert!(stop > 30, "TimeoutStopSec={stop}");
    // The sysusers and tmpfiles snippets create that user and the writable directories.
    let sysusers = read("deploy/systemd/mxgate.sysusers.conf");
    assert!(sysusers.lines().any(|l| l.starts_with("u mxgate ")));
    let tmpfiles = read("deploy/systemd/mxgate.tmpfiles.conf");
    for d in ["/var/spool/mxgate", "/var/log/mxgate", "/etc/mxgate/certs"] {
        assert!(
            tmpfiles
                .lines()
                .any(|l| l.starts_with('d') && l.split_whitespace().nth(1) == Some(d)),
            "tmpfiles.conf does not create {d}"
        );
    }

    let Some(analyze) = prom::tool(&["systemd-analyze"]) else {
        eprintln!("SKIP: systemd-analyze is not installed: unit not verified");
        return;
    };
    // Verify a copy whose binary exists here.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mxgate.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/mxgate", env!("CARGO_BIN_EXE_mxgate")),
    )
    .unwrap();
    let (ok, out) = prom::run(Command::new(analyze).arg("verify").arg(&path));
    let complaints: Vec<&str> = out.lines().filter(|l| l.contains("mxgate")).collect();
    assert!(
        ok && complaints.is_empty(),
        "systemd-analyze verify mxgate.service:\n{out}"
    );
}

#[test]
fn test_config_rewrite_keeps_everything_but_target_and_intervals() {
    let addr: SocketAddr = "127.0.0.1:40123".parse().unwrap();
    let s = test_prometheus_config(&read("deploy/prometheus.yml"), addr);
    assert!(s.contains("\"127.0.0.1:40123\""));
    assert!(!s.contains("15s") && !s.contains("9187"), "{s}");
    assert!(s.contains("job_name: mxgate") && s.contains("metrics_path: /metrics"));
}

#[test]
fn haproxy_cluster_configuration_passes_haproxy_check() {
    if !support::tools_available(&["haproxy"]) {
        return;
    }
    let (ok, out) = prom::run(
        Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(repo().join("deploy/haproxy/haproxy.cfg")),
    );
    assert!(ok, "haproxy -c -f deploy/haproxy/haproxy.cfg:\n{out}");
    assert!(out.contains("Configuration file is valid"), "{out}");
}
