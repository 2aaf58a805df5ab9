//! The start of a connection on real sockets, against the in-process server: PROXY v1 headers
//! that arrive in pieces (item 22) and the pause before the greeting (item 18).

mod support;

use std::time::Duration;

use support::dnsmasq::Dnsmasq;
use support::{copy_dir, repo, Client, Server};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// dnsmasq answering every reverse lookup NXDOMAIN at once, so no test waits on DNS;
/// `None` (after `SKIP:`) where dnsmasq is missing outside CI.
fn quick_dns() -> Option<Dnsmasq> {
    Dnsmasq::start(&["--local=/in-addr.arpa/", "--local=/ip6.arpa/"])
}

/// The e2e fixture with DNS on `dns`.
async fn start(dns: &Dnsmasq) -> Server {
    start_dir(&repo().join("tests/fixtures/e2e"), dns).await
}

/// The config in `dir` with DNS on `dns`.
async fn start_dir(dir: &std::path::Path, dns: &Dnsmasq) -> Server {
    let port = dns.port;
    Server::start_dir(dir, |o, _| {
        o.dns_resolvers = Some(vec![format!("127.0.0.1:{port}").parse().unwrap()]);
    })
    .await
}

/// A copy of the e2e fixture without its `pre_greet_pause: 0s` (so each listener kind gets its
/// default), and with `pre_greet_pause: 1s` on the private listener's RELAYED policy.
fn fixture_with_pauses() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("tests/fixtures/e2e"), dir.path());
    let path = dir.path().join("policies/mail_flow.yaml");
    let flow = std::fs::read_to_string(&path).unwrap();
    let (zero, relayed) = ("  pre_greet_pause: 0s\n", "  RELAYED:\n    action: relay\n");
    assert!(flow.contains(zero) && flow.contains(relayed), "{flow}");
    let flow = flow
        .replace(zero, "")
        .replace(relayed, &format!("{relayed}    pre_greet_pause: 1s\n"));
    std::fs::write(&path, flow).unwrap();
    dir
}

/// Sends `EHLO` `after` connecting (and any PROXY header); returns the first reply and what follows.
async fn talk_after(mut c: Client<TcpStream>, after: Duration) -> (String, String) {
    tokio::time::sleep(after).await;
    c.send(b"EHLO early.example\r\n").await;
    let first = c.reply().await;
    let rest = c.reply().await;
    (first, rest)
}

const PREGREET: &str = "554 5.5.0 Protocol error: data sent before greeting\r\n";

#[tokio::test]
async fn trust_18_client_talking_50ms_after_connect_is_refused_polite_one_greeted() {
    let Some(dns) = quick_dns() else { return };
    let cfg = fixture_with_pauses();
    let mut srv = start_dir(cfg.path(), &dns).await;

    // Public listener, no pause configured: the default pause catches a bot that talks
    // 50 ms after connecting, although DNS answered long before.
    let addr = srv.addr("preferred");
    let c = Client::connect(addr, None).await;
    assert_eq!(
        talk_after(c, Duration::from_millis(50)).await,
        (PREGREET.to_string(), String::new())
    );
    let line = srv
        .wait_log(r"Warning: mxgate: ICID {n} pre-greeting traffic, rejected")
        .await;
    let icid = support::id_after(&line, "ICID ");
    srv.wait_log(&format!("ICID {icid} close")).await;

    // A client that waits for the banner gets it and carries on.
    let mut c = Client::connect(addr, None).await;
    assert_eq!(c.reply().await, "220 mx.test.example ESMTP ready (ALL)\r\n");
    assert!(c.cmd("EHLO polite.example").await.starts_with("250-"));
    assert!(c.cmd("QUIT").await.starts_with("221 "));

    // Private listener, pause set on the policy: the same holds after the PROXY header.
    let addr = srv.addr("relay");
    let c = Client::connect(addr, Some("192.0.2.100")).await;
    assert_eq!(
        talk_after(c, Duration::from_millis(50)).await,
        (PREGREET.to_string(), String::new())
    );
    let mut c = Client::connect(addr, Some("192.0.2.100")).await;
    assert_eq!(
        c.reply().await,
        "220 relay.test.example ESMTP ready (RELAYLIST)\r\n"
    );
    assert!(c.cmd("QUIT").await.starts_with("221 "));
    assert_eq!(
        srv.log_text()
            .matches("pre-greeting traffic, rejected")
            .count(),
        2,
        "{}",
        srv.log_text()
    );
    srv.stop().await;
}

#[tokio::test]
async fn trust_22_proxy_v1_header_in_two_writes_or_byte_by_byte() {
    let Some(dns) = quick_dns() else { return };
    let mut srv = start(&dns).await;
    let addr = srv.addr("proxied");

    // Cut inside the destination port, the rest 120 ms later (as in the report).
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.43 127.0.0.1 4343 ")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    s.write_all(b"3402\r\n").await.unwrap();
    let mut c = Client {
        io: BufReader::new(s),
    };
    assert_eq!(
        c.reply().await,
        "220 mx.test.example ESMTP ready (SUSPECTLIST)\r\n"
    );
    srv.wait_log(r"New SMTP ICID {n} interface proxied (127.0.0.1) address 192.0.2.43 reverse dns")
        .await;
    assert!(c.cmd("QUIT").await.starts_with("221 "));

    // A sender that writes the header one byte per segment.
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut c = Client {
        io: BufReader::new(s),
    };
    for b in b"PROXY TCP4 192.0.2.44 127.0.0.1 4344 3402\r\n" {
        c.send(&[*b]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        c.reply().await,
        "220 mx.test.example ESMTP ready (SUSPECTLIST)\r\n"
    );
    srv.wait_log(r"New SMTP ICID {n} interface proxied (127.0.0.1) address 192.0.2.44 reverse dns")
        .await;
    assert!(c.cmd("QUIT").await.starts_with("221 "));
    assert!(
        !srv.log_text().contains("PROXY header from"),
        "{}",
        srv.log_text()
    );
    srv.stop().await;
}

/// A session still in its pre-greet pause when the server stops does not hold the shutdown for
/// the rest of the pause: it is closed with the shutdown 421 when the grace ends.
#[tokio::test]
async fn a_shutdown_ends_the_pre_greet_pause() {
    let Some(dns) = quick_dns() else { return };
    let cfg = fixture_with_pauses();
    let path = cfg.path().join("policies/mail_flow.yaml");
    let flow = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        flow.replace("    pre_greet_pause: 1s\n", "    pre_greet_pause: 30s\n"),
    )
    .unwrap();
    let mut srv = start_dir(cfg.path(), &dns).await;
    let mut c = Client::connect(srv.addr("relay"), Some("192.0.2.100")).await;
    // Nothing is logged before the pause ends (the session starts after it): give the
    // connection's task time to reach the pause (DNS answers at once here).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    srv.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the shutdown waited {:?} for the pause",
        started.elapsed()
    );
    let all = c.read_to_close().await;
    assert!(
        all.ends_with(
            "421 4.3.2 relay.test.example Service shutting down, closing transmission channel\r\n"
        ),
        "{all:?}"
    );
}
