//! Issue 17, the recipient-validation cache and TLS-RPT de-duplication in shared state: two
//! mxgate processes (each its own spool) share one private Debian `redis-server` on
//! 127.0.0.1. An answer node A learned from the internal server (a private Postfix answering
//! the call-ahead; its maillog counts the probes) is a cache hit on node B, which never asks
//! Postfix; `mxgate recipients cache flush` on a node clears the shared copy too. The same
//! TLS-RPT report mailed to A then B: B answers the duplicate reply and only A stores it; the
//! HTTPS intake's path likewise. With Redis killed, each node works alone and says so.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use support::postfix::{start_or_skip, PostfixOptions};
use support::redis::Redis;
use support::{wait_until, Client, Mxgate};
use tokio::net::TcpStream;

/// Our reply to an invalid recipient.
const UNKNOWN: &str = "550 5.1.1 Recipient address rejected: User unknown\r\n";
/// A valid recipient.
const OK: &str = "250 2.1.5 Recipient ok\r\n";
/// The report address of the configuration.
const REPORT_ADDRESS: &str = "tlsrpt@reports.test";
/// The RFC 8460 §4.5 example report.
const RFC_EXAMPLE: &str = include_str!("../src/tlsrpt/rfc8460-example.json");
/// Its report-id.
const RFC_ID: &str = "5065427c-23d3-47ca-b6e0-946ea0e8c4be";

/// A node's configuration: one public listener `inbound` (everybody accepted, no TLS), the
/// RAT accepting example.test with `validate: callahead` to `internal`, the TLS-RPT intake
/// at [`REPORT_ADDRESS`], and `shared_state:` at `redis_url`.
fn config(internal: SocketAddr, redis_url: &str) -> tempfile::TempDir {
    let routes = format!(
        "routes:\n  - domain: example.test\n    hosts: [{{host: {}, port: {}}}]\n",
        internal.ip(),
        internal.port()
    );
    let dir = support::validation::config(
        &format!("shared_state:\n  url: {redis_url}\n  key_prefix: \"mx:\"\n  timeout: 1s\n"),
        "    - recipient: example.test\n      validate: callahead\n",
        &routes,
        Some("cache:\n  save_every: 1h\n"),
    );
    std::fs::write(
        dir.path().join("policies/tlsrpt.yaml"),
        "addresses: [tlsrpt@reports.test]\ndomains: [company-y.example]\n",
    )
    .unwrap();
    dir
}

/// A node on `cfg` with its spool and mail log in `work`, metrics on a free port; waits until
/// it is connected to the store.
fn node(cfg: &Path, work: &Path) -> Mxgate {
    let srv = Mxgate::start_with(cfg, work, &["--metrics-listen", "127.0.0.1:0"]);
    srv.wait_log("shared state: connected to redis://{w} as node {w}");
    srv
}

/// A session on `inbound` after EHLO and `MAIL FROM:<from>`.
async fn session(srv: &Mxgate, from: &str) -> Client<TcpStream> {
    let mut c = Client::connect(srv.addr("inbound"), None).await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.cmd("EHLO client.sender.test").await.starts_with("250"));
    let mail = c.cmd(&format!("MAIL FROM:<{from}>")).await;
    assert!(mail.starts_with("250 "), "{mail}");
    c
}

/// `RCPT TO:<address>` in a new session: the reply.
async fn rcpt_once(srv: &Mxgate, address: &str) -> String {
    let mut c = session(srv, "someone@sender.test").await;
    let reply = c.cmd(&format!("RCPT TO:<{address}>")).await;
    assert!(c.cmd("QUIT").await.starts_with("221"));
    reply
}

/// `mxgate_recipient_validation_cache_hits_total{from}`.
fn hits(srv: &Mxgate, from: &str) -> f64 {
    srv.metric(
        "mxgate_recipient_validation_cache_hits_total",
        &[("from", from)],
    )
}

/// `mxgate_recipient_validation_total` of `inbound`'s call-ahead for `result`.
fn validations(srv: &Mxgate, result: &str) -> f64 {
    srv.metric(
        "mxgate_recipient_validation_total",
        &[
            ("listener", "inbound"),
            ("method", "callahead"),
            ("result", result),
        ],
    )
}

/// The keys matching `pattern` in the store, sorted (`KEYS`: the test store is small).
fn keys(redis: &Redis, pattern: &str) -> Vec<String> {
    let mut c = ::redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut keys: Vec<String> = ::redis::cmd("KEYS").arg(pattern).query(&mut c).unwrap();
    keys.sort();
    keys
}

/// The shared verdict keys in the store.
fn verdict_keys(redis: &Redis) -> Vec<String> {
    keys(redis, "mx:verdict:*")
}

/// Issue 17: "a recipient-validation answer learned on one node is a cache hit on another".
#[tokio::test]
async fn an_answer_learned_on_one_node_is_a_cache_hit_on_another() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let pfdir = tempfile::tempdir().unwrap();
    let opts = PostfixOptions {
        relay_domain: Some("example.test"),
        recipients: &["alice@example.test"],
        ..PostfixOptions::default()
    };
    let Some(pf) = start_or_skip(pfdir.path(), &opts).await else {
        return;
    };
    let cfg = config(pf.addr, &redis.url());
    let (wa, wb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(cfg.path(), wa.path());
    let b = node(cfg.path(), wb.path());

    // Node A asks Postfix: nobody is unknown, alice valid; both go to the store.
    assert_eq!(rcpt_once(&a, "nobody@example.test").await, UNKNOWN);
    assert_eq!(rcpt_once(&a, "alice@example.test").await, OK);
    a.wait_log("RCPT TO: <nobody@example.test> refused: validate callahead: invalid (callahead:example.test: probe {w} 550 5.1.1 <nobody@example.test>");
    wait_until("both verdicts in the store", || {
        verdict_keys(&redis).len() == 2
    })
    .await;
    assert_eq!(
        verdict_keys(&redis),
        [
            "mx:verdict:callahead:example.test:alice@example.test",
            "mx:verdict:callahead:example.test:nobody@example.test",
        ]
    );
    let nobody = "mx:verdict:callahead:example.test:nobody@example.test";
    let stored = redis.command(&["GET", nobody]);
    assert!(stored.starts_with("invalid "), "{stored}");
    // The store forgets it when the local entry would: invalid_ttl, one hour.
    let ttl: i64 = redis.command(&["PTTL", nobody])[1..].parse().unwrap();
    assert!((3_590_000..=3_600_000).contains(&ttl), "{ttl}");
    pf.wait_for("to=<nobody@example.test>").await;
    assert_eq!(pf.rejects("nobody@example.test"), 1, "{}", pf.maillog());

    // Node B answers both from the store: cache hits, never a probe.
    let mark = b.log_mark();
    assert_eq!(rcpt_once(&b, "nobody@example.test").await, UNKNOWN);
    assert_eq!(rcpt_once(&b, "alice@example.test").await, OK);
    b.wait_log_after(
        mark,
        "RCPT TO: <nobody@example.test> refused: validate callahead: invalid (callahead:example.test, cached ",
    );
    assert_eq!(hits(&b, "shared"), 2.0);
    assert_eq!(hits(&b, "local"), 0.0);
    assert_eq!(validations(&b, "cache_hit"), 2.0);
    assert_eq!(validations(&b, "invalid"), 0.0);
    assert_eq!(validations(&b, "valid"), 0.0);
    // Filled into B's own cache: the next hit is local.
    assert_eq!(rcpt_once(&b, "nobody@example.test").await, UNKNOWN);
    assert_eq!(hits(&b, "local"), 1.0);
    // Postfix was asked once for nobody, by A (an address B probes afterwards proves its
    // maillog is complete).
    assert_eq!(rcpt_once(&b, "carol@example.test").await, UNKNOWN);
    pf.wait_for("to=<carol@example.test>").await;
    assert_eq!(pf.rejects("nobody@example.test"), 1, "{}", pf.maillog());
    assert_eq!(validations(&b, "invalid"), 1.0);

    // A flush on A clears A's cache and the shared entries; B keeps its local copy (said).
    let out = a
        .ctl(&["recipients", "cache", "flush", "nobody@example.test"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert_eq!(
        said,
        "ok 1 entry removed for nobody@example.test; 1 entry removed from the shared store (other gateways keep their local copies until they expire or are flushed there)\n"
    );
    assert_eq!(
        verdict_keys(&redis),
        [
            "mx:verdict:callahead:example.test:alice@example.test",
            "mx:verdict:callahead:example.test:carol@example.test",
        ]
    );
    let out = a.ctl(&["recipients", "cache", "flush"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.ends_with("; 2 entries removed from the shared store (other gateways keep their local copies until they expire or are flushed there)\n"),
        "{said}"
    );
    assert!(verdict_keys(&redis).is_empty());

    // The store gone: B asks Postfix itself (the same answer), counts the fallback and says
    // the outage once; a flush says the store was not flushed.
    redis.stop();
    assert_eq!(rcpt_once(&b, "dave@example.test").await, UNKNOWN);
    assert_eq!(rcpt_once(&b, "erin@example.test").await, UNKNOWN);
    pf.wait_for("to=<erin@example.test>").await;
    assert_eq!(pf.rejects("dave@example.test"), 1, "{}", pf.maillog());
    assert_eq!(
        b.metric(
            "mxgate_shared_state_fallbacks_total",
            &[("counter", "validation_cache")]
        ),
        2.0
    );
    b.wait_log("shared state: redis://{w} unavailable (");
    let outages = b
        .log_text()
        .lines()
        .filter(|l| l.contains("shared state: redis://") && l.contains(" unavailable ("))
        .count();
    assert_eq!(outages, 1);
    let out = a
        .ctl(&["recipients", "cache", "flush", "@example.test"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("; the shared store was not flushed: shared state store"),
        "{said}"
    );
}

/// A TLS-RPT report mail (`multipart/report`, the report gzip'd and base64-encoded) from
/// company-x's reporter.
fn report_mail(json: &str) -> String {
    let lines = support::tlsrpt::gzip_base64_lines(json);
    format!(
        "From: tlsrpt-noreply@company-x.example\r\nTo: {REPORT_ADDRESS}\r\n\
         Subject: Report Domain: company-y.example Submitter: company-x.example\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nThis is a TLS report.\r\n\
         --b1\r\nContent-Type: application/tlsrpt+gzip\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"report.json.gz\"\r\n\r\n{}\r\n--b1--\r\n.\r\n",
        lines
    )
}

/// Mails `message` to the report address of `srv`: the reply to the end of data.
async fn mail_report(srv: &Mxgate, message: &str) -> String {
    let mut c = session(srv, "tlsrpt-noreply@company-x.example").await;
    let rcpt = c.cmd(&format!("RCPT TO:<{REPORT_ADDRESS}>")).await;
    assert!(rcpt.starts_with("250 "), "{rcpt}");
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(message.as_bytes()).await;
    let reply = c.reply().await;
    assert!(c.cmd("QUIT").await.starts_with("221"));
    reply
}

/// The report files in a node's store.
fn stored_reports(srv: &Mxgate) -> usize {
    std::fs::read_dir(srv.spool().join("tlsrpt"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

/// `mxgate_tlsrpt_reports_total{reporter="other", outcome}`.
fn reports(srv: &Mxgate, outcome: &str) -> f64 {
    srv.metric(
        "mxgate_tlsrpt_reports_total",
        &[("reporter", "other"), ("outcome", outcome)],
    )
}

/// Issue 17: "TLS-RPT report de-duplication" shared: the same report mailed to node A then
/// node B is stored once, by A; B answers the duplicate reply. With the store down, each node
/// de-duplicates its own store only (a report new to B is stored there).
#[tokio::test]
async fn the_same_report_mailed_to_two_nodes_is_stored_once() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    // No call-ahead in this test: a closed port for the route.
    let cfg = config(support::closed_addr(), &redis.url());
    let (wa, wb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(cfg.path(), wa.path());
    let b = node(cfg.path(), wb.path());
    let message = report_mail(RFC_EXAMPLE);

    assert_eq!(
        mail_report(&a, &message).await,
        "250 2.6.0 Ok: TLS report accepted\r\n"
    );
    a.wait_log(&format!(
        "TLS-RPT report via MID {{n}} accepted: report-id <{RFC_ID}> from \"Company-X\""
    ));
    let claims = keys(&redis, "mx:tlsrpt:*");
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert!(redis.command(&["GET", &claims[0]]).contains(':'));
    assert_eq!(
        mail_report(&b, &message).await,
        "250 2.6.0 Ok: TLS report received before\r\n"
    );
    b.wait_log(&format!(
        "TLS-RPT report via MID {{n}} duplicate: report-id <{RFC_ID}> is stored already"
    ));
    assert_eq!((stored_reports(&a), stored_reports(&b)), (1, 0));
    assert_eq!(
        (reports(&a, "accepted"), reports(&b, "accepted")),
        (1.0, 0.0)
    );
    assert_eq!(reports(&b, "duplicate"), 1.0);

    // The store gone: B decides alone; a report it has not stored is stored, and said.
    redis.stop();
    let second = report_mail(&RFC_EXAMPLE.replace(RFC_ID, "while-redis-is-down"));
    assert_eq!(
        mail_report(&b, &second).await,
        "250 2.6.0 Ok: TLS report accepted\r\n"
    );
    assert_eq!(stored_reports(&b), 1);
    assert_eq!(
        b.metric(
            "mxgate_shared_state_fallbacks_total",
            &[("counter", "tlsrpt")]
        ),
        1.0
    );
}

/// The HTTPS intake's path (`Intake::post`, what the MTA-STS endpoint calls on a blocking
/// thread) on two nodes' intakes sharing the store: the second POST of the same report is
/// the duplicate (the endpoint answers `200 report received before`), stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_report_posted_to_two_intakes_is_stored_once() {
    use mxgate::shared_state::settings::SharedStateSettings;
    use mxgate::shared_state::SharedState;
    use mxgate::tlsrpt::ingest::Outcome;
    use mxgate::tlsrpt::intake::Intake;
    use mxgate::tlsrpt::shared::SharedReports;
    use std::sync::Arc;

    let Some(redis) = Redis::start() else {
        return;
    };
    let settings = Arc::new(SharedStateSettings {
        url: redis.url(),
        password: None,
        ca_file: None,
        key_prefix: "mx:".into(),
        timeout: std::time::Duration::from_secs(1),
        when_unavailable: Default::default(),
    });
    let tlsrpt = Arc::new(mxgate::tlsrpt::settings::TlsRptSettings {
        addresses: vec![],
        relay: false,
        https_path: Some("/tlsrpt".into()),
        domains: Default::default(),
        max_reports: 100,
        max_store_bytes: 1 << 20,
    });
    let mut intakes = Vec::new();
    let spools = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for spool in &spools {
        let state = SharedState::start(settings.clone(), None).await.unwrap();
        assert!(state.is_up());
        intakes.push(Arc::new(
            Intake::new(tlsrpt.clone(), spool.path(), 0)
                .with_shared(Some(SharedReports::new(state))),
        ));
    }
    let post = |i: usize| {
        let intake = intakes[i].clone();
        tokio::task::spawn_blocking(move || {
            intake.post(
                RFC_EXAMPLE.as_bytes(),
                "application/tlsrpt+json",
                1_796_428_800,
            )
        })
    };
    let first = post(0).await.unwrap();
    assert!(matches!(first, Outcome::Accepted { .. }), "{first:?}");
    let second = post(1).await.unwrap();
    assert!(
        matches!(&second, Outcome::Duplicate { report_id } if report_id == RFC_ID),
        "{second:?}"
    );
    let files = |i: usize| {
        std::fs::read_dir(spools[i].path().join("tlsrpt"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!((files(0), files(1)), (1, 0));
    assert_eq!(keys(&redis, "mx:tlsrpt:*").len(), 1);
}
