//! The `callahead` validation method against a real Postfix smtpd as the internal server,
//! started privately on 127.0.0.1 and accepting only the users of its recipient map
//! (`relay_recipient_maps`): a known user is valid, an unknown one invalid (550 5.1.1), and
//! a stopped server is a tempfail. Postfix's own maillog shows that several probes share one
//! kept-open connection, and that a cached answer makes no probe; with Postfix down, the
//! breaker answers at once.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mxgate::config::outbound::{DestinationControl, DestinationControls, OutboundTls};
use mxgate::relay::outbound_tls::OutboundTlsContext;
use mxgate::validate::breaker::BreakerSettings;
use mxgate::validate::cache::{CacheSettings, VerdictCache};
use mxgate::validate::callahead::{CallaheadSettings, ProbePool, ProbeTls};
use mxgate::validate::destination::{Destination, Method, Source, ValidationClock};
use mxgate::validate::{TempFailCause, Verdict};
use support::pki::{ServerCert, TestPki};
use support::postfix::{start_or_skip, Postfix, PostfixOptions};

/// A private Postfix relaying example.test for `recipients` only (optionally offering
/// STARTTLS with `tls`), or `None` after printing SKIP (a failure under CI).
async fn postfix_with(
    dir: &Path,
    recipients: &[&str],
    tls: Option<&ServerCert>,
) -> Option<Postfix> {
    let opts = PostfixOptions {
        relay_domain: Some("example.test"),
        recipients,
        tls,
        ..PostfixOptions::default()
    };
    start_or_skip(dir, &opts).await
}

/// [`postfix_with`] in plaintext.
async fn postfix(dir: &Path, recipients: &[&str]) -> Option<Postfix> {
    postfix_with(dir, recipients, None).await
}

fn settings() -> CallaheadSettings {
    CallaheadSettings {
        helo_name: "mx.test".into(),
        timeout: Duration::from_secs(10),
        ..CallaheadSettings::default()
    }
}

/// Sum of the RCPT counts (`rcpt=OK/TOTAL` or `rcpt=N`) of the `disconnect from` lines.
fn rcpts_seen(maillog: &str) -> u32 {
    maillog
        .lines()
        .filter(|l| l.contains(" disconnect from "))
        .filter_map(|l| l.split(' ').find_map(|w| w.strip_prefix("rcpt=")))
        .map(|n| n.rsplit('/').next().unwrap().parse::<u32>().unwrap())
        .sum()
}

#[tokio::test]
async fn known_users_are_valid_unknown_invalid_over_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pf) = postfix(dir.path(), &["alice@example.test", "bob@example.test"]).await else {
        return;
    };
    let pool = ProbePool::new(pf.addr, settings());
    let probes = [
        ("alice@example.test", Verdict::Valid),
        ("nobody@example.test", Verdict::Invalid),
        ("bob@example.test", Verdict::Valid),
        // Postfix folds case in its map.
        ("Alice@EXAMPLE.test", Verdict::Valid),
        ("carol@example.test", Verdict::Invalid),
    ];
    for (address, want) in probes {
        let a = pool.check(address).await;
        assert_eq!(a.verdict, want, "{address}: {a:?}");
        assert!(
            a.detail.starts_with(&format!("probe {}: ", pf.addr)),
            "{}",
            a.detail
        );
    }
    let a = pool.check("nobody@example.test").await;
    // The internal server's text is in the log detail (never in a reply to a client).
    assert!(
        a.detail
            .contains("550 5.1.1 <nobody@example.test>: Recipient address rejected"),
        "{}",
        a.detail
    );
    assert_eq!(pool.connections_opened(), 1);
    pool.close_idle().await;
    // `rcpt=` is on the disconnect line of a session that sent RCPTs (the readiness check
    // before the test connected and said nothing: "lost connection after CONNECT").
    let log = pf.wait_for(" rcpt=").await;
    let probing: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" disconnect from ") && !l.contains(" commands=0/0"))
        .collect();
    assert_eq!(probing.len(), 1, "one connection for six probes:\n{log}");
    assert!(
        probing[0].contains(" rset=5 "),
        "RSET between probes: {}",
        probing[0]
    );
    assert_eq!(rcpts_seen(&log), 6, "{log}");
    assert_eq!(pf.rejects("nobody@example.test"), 2, "{log}");
    assert_eq!(pf.rejects("carol@example.test"), 1, "{log}");
    assert_eq!(pf.rejects("alice@example.test"), 0, "{log}");
    // The probes never opened a mail transaction to the end: nothing reached the sink.
    assert_eq!(std::fs::read_dir(&pf.sink.dir).unwrap().count(), 0);
}

#[tokio::test]
async fn a_stopped_internal_server_is_a_tempfail() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut pf) = postfix(dir.path(), &["alice@example.test"]).await else {
        return;
    };
    let pool = ProbePool::new(pf.addr, settings());
    assert_eq!(
        pool.check("alice@example.test").await.verdict,
        Verdict::Valid
    );
    pf.stop();
    // The kept-open connection is dead; the new one is refused.
    let t0 = std::time::Instant::now();
    let a = pool.check("alice@example.test").await;
    assert_eq!(
        a.verdict,
        Verdict::TempFail(TempFailCause::Refused),
        "{a:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let a = pool.check("nobody@example.test").await;
    assert_eq!(
        a.verdict,
        Verdict::TempFail(TempFailCause::Refused),
        "{a:?}"
    );
}

/// A fixed clock: the breaker and cache see no time pass.
struct Frozen(std::time::Instant);

impl ValidationClock for Frozen {
    fn now(&self) -> std::time::Instant {
        self.0
    }
    fn unix(&self) -> u64 {
        1_764_950_000
    }
}

/// Through the cache, a second lookup of an unknown address makes no probe (the maillog has
/// one reject for it); with the internal server down, the breaker opens after `failures`
/// tempfails and the next lookups are answered without asking.
#[tokio::test]
async fn the_cache_saves_probes_and_the_breaker_opens_when_postfix_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut pf) = postfix(dir.path(), &["alice@example.test"]).await else {
        return;
    };
    let dest = Destination::new(
        "callahead:example.test",
        Method::Callahead(ProbePool::new(pf.addr, settings())),
        BreakerSettings {
            failures: 3,
            cooldown: Duration::from_secs(30),
        },
    );
    let cache = VerdictCache::new(CacheSettings::default());
    let clock = Frozen(std::time::Instant::now());
    let first = dest.validate(&cache, &clock, "nobody@example.test").await;
    assert_eq!(
        (first.answer.verdict, first.source),
        (Verdict::Invalid, Source::Lookup)
    );
    let second = dest.validate(&cache, &clock, "NOBODY@example.test").await;
    assert_eq!(second.answer.verdict, Verdict::Invalid);
    assert_eq!(
        second.source,
        Source::Cache {
            stored: 1_764_950_000
        }
    );
    let valid = dest.validate(&cache, &clock, "alice@example.test").await;
    assert_eq!(valid.answer.verdict, Verdict::Valid);
    let Method::Callahead(pool) = dest.method() else {
        unreachable!()
    };
    pool.close_idle().await;
    let log = pf.wait_for(" rcpt=").await;
    assert_eq!(
        pf.rejects("nobody@example.test"),
        1,
        "one probe for two lookups:\n{log}"
    );
    assert_eq!(rcpts_seen(&log), 2, "{log}");

    pf.stop();
    for i in 0..3 {
        let r = dest
            .validate(&cache, &clock, &format!("u{i}@example.test"))
            .await;
        assert_eq!(r.answer.verdict, Verdict::TempFail(TempFailCause::Refused));
        assert_eq!(r.transition.is_some(), i == 2, "{r:?}");
    }
    assert!(dest.is_breaker_open());
    let t0 = std::time::Instant::now();
    for i in 0..20 {
        let r = dest
            .validate(&cache, &clock, &format!("v{i}@example.test"))
            .await;
        assert_eq!(
            r.answer.verdict,
            Verdict::TempFail(TempFailCause::BreakerOpen)
        );
        assert_eq!(r.source, Source::Breaker);
    }
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "{:?}",
        t0.elapsed()
    );
    // Cached answers still stand while the server is down; tempfails were not cached.
    let r = dest.validate(&cache, &clock, "alice@example.test").await;
    assert_eq!(
        (r.answer.verdict, r.source),
        (
            Verdict::Valid,
            Source::Cache {
                stored: 1_764_950_000
            }
        )
    );
    assert_eq!(cache.counts(), (1, 1));
}

/// Postfix slows down every reply by a second past 10 refusals in a session
/// (`smtpd_soft_error_limit`, `smtpd_error_sleep_time`): the pool replaces a connection after
/// 8 refusals, so a run of unknown addresses stays fast.
#[tokio::test]
async fn a_run_of_unknown_addresses_stays_fast_against_postfix_error_limits() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pf) = postfix(dir.path(), &["alice@example.test"]).await else {
        return;
    };
    let run = |max_refusals: u32| {
        let pool = ProbePool::new(
            pf.addr,
            CallaheadSettings {
                max_refusals_per_connection: max_refusals,
                ..settings()
            },
        );
        async move {
            let t0 = std::time::Instant::now();
            for i in 0..11 {
                let a = pool
                    .check(&format!("x{max_refusals}-{i}@example.test"))
                    .await;
                assert_eq!(a.verdict, Verdict::Invalid, "{a:?}");
            }
            let took = t0.elapsed();
            pool.close_idle().await;
            (took, pool.connections_opened())
        }
    };
    let (fast, conns) = run(8).await;
    println!(
        "11 unknown addresses, new connection after 8 refusals: {fast:?}, {conns} connections"
    );
    assert_eq!(conns, 2);
    let (slow, conns) = run(100).await;
    println!("11 unknown addresses on one connection: {slow:?}, {conns} connections");
    assert_eq!(conns, 1);
    assert!(
        slow >= Duration::from_secs(2),
        "Postfix slowed down past 10 errors: {slow:?}"
    );
    assert!(fast < Duration::from_secs(1), "{fast:?}");
}

/// Probes over STARTTLS to Postfix, in `required-verify` (the pool built by
/// [`ProbeTls::for_route_host`] from destination controls, as delivery would): the known user
/// is valid, the unknown one invalid, and Postfix logged the encrypted session.
#[tokio::test]
async fn required_tls_probes_go_over_starttls_to_postfix() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let ca_file = dir.path().join("test-ca.pem");
    pki.write_ca(&ca_file);
    let cert = pki.leaf(&["example.test"], Some("example.test"));
    let Some(pf) = postfix_with(dir.path(), &["alice@example.test"], Some(&cert)).await else {
        return;
    };
    let controls = DestinationControls {
        default: DestinationControl {
            tls: OutboundTls::RequiredVerify,
            ca_file: Some(ca_file),
            ..DestinationControl::builtin_default()
        },
        ..DestinationControls::default()
    };
    let ctx = Arc::new(OutboundTlsContext::new(None).unwrap());
    let tls = ProbeTls::for_route_host(&controls, ctx, "example.test", "127.0.0.1", pf.addr);
    let pool = ProbePool::with_tls(settings(), tls);
    let a = pool.check("alice@example.test").await;
    assert_eq!(a.verdict, Verdict::Valid, "{a:?}");
    let a = pool.check("nobody@example.test").await;
    assert_eq!(a.verdict, Verdict::Invalid, "{a:?}");
    assert!(a.detail.contains("550 5.1.1"), "{}", a.detail);
    assert_eq!(pool.connections_opened(), 1);
    pool.close_idle().await;
    let log = pf.wait_for(" rcpt=").await;
    let established: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS connection established from"))
        .collect();
    assert_eq!(established.len(), 1, "one encrypted session:\n{log}");
    assert!(established[0].contains("TLSv1.3"), "{}", established[0]);
    assert_eq!(pf.rejects("nobody@example.test"), 1, "{log}");
    // The readiness check's connection and the probe's.
    assert_eq!(pf.connects(), 2, "{log}");
    let probing: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" disconnect from ") && !l.contains(" commands=0/0"))
        .collect();
    assert_eq!(probing.len(), 1, "{log}");
    assert!(probing[0].contains(" starttls=1 "), "{}", probing[0]);
    assert_eq!(rcpts_seen(&log), 2, "{log}");
}
