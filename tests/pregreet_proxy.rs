//! The start of a connection on real sockets, against the in-process server: PROXY v1 headers
//! that arrive in pieces (item 22) and the pause before the greeting (item 18).

mod common;

use std::time::Duration;

use common::dnsmasq::Dnsmasq;
use common::{Client, Server};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// dnsmasq answering every reverse lookup NXDOMAIN at once, so no test waits on DNS;
/// `None` (after `SKIP:`) where dnsmasq is missing outside CI.
fn quick_dns() -> Option<Dnsmasq> {
    Dnsmasq::start(&["--local=/in-addr.arpa/", "--local=/ip6.arpa/"])
}

/// The e2e fixture with DNS on `dns`.
async fn start(dns: &Dnsmasq) -> Server {
    let port = dns.port;
    Server::start("e2e", |o, _| {
        o.dns_resolvers = Some(vec![format!("127.0.0.1:{port}").parse().unwrap()]);
    })
    .await
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
    srv.wait_log(r"New SMTP ICID \d+ interface proxied (127.0.0.1) address 192.0.2.43 reverse dns")
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
    srv.wait_log(r"New SMTP ICID \d+ interface proxied (127.0.0.1) address 192.0.2.44 reverse dns")
        .await;
    assert!(c.cmd("QUIT").await.starts_with("221 "));
    assert!(
        !srv.log_text().contains("PROXY header from"),
        "{}",
        srv.log_text()
    );
    srv.stop().await;
}
