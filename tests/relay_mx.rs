//! `mx_lookup: true` routes against a real dnsmasq on loopback: the MX host with the lowest
//! preference gets the mail, a dead MX host is skipped for the next, a name without MX records
//! is its own MX (implicit MX), and a null MX (RFC 7505) bounces with 5.1.10.
//!
//! The MX hosts are 127.0.0.2 and 127.0.0.3 (loopback on Linux) with sinks on the same port,
//! because an MX record cannot carry a port: the route host's port applies to every MX host.

mod support;

use std::net::SocketAddr;

use support::dnsmasq::Dnsmasq;
use support::sink::Sink;
use support::{relay_config, wait_until, Client, Server};

fn msg(id: &str) -> String {
    format!("Message-ID: <{id}>\r\nSubject: mx {id}\r\n\r\nbody of {id}\r\n")
}

async fn send(srv: &Server, to: &str, id: &str) -> u64 {
    let mut c = Client::connect(srv.addr("preferred"), None).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    let r = c.send_mail("alice@other.example", &[to], &msg(id)).await;
    c.cmd("QUIT").await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    support::queued_mid(&r)
}

/// The DCID of a `New SMTP DCID n ...` line.
fn dcid_of(line: &str) -> u64 {
    support::id_after(line, "DCID ")
}

fn ids(sink: &Sink) -> Vec<String> {
    sink.message_ids()
}

/// Sinks on 127.0.0.2 and 127.0.0.3 with one port number, and that port.
async fn two_sinks() -> (Sink, Sink, u16) {
    for _ in 0..20 {
        let a = Sink::start("127.0.0.2:0").await;
        let port = a.addr.port();
        // The port may be taken on 127.0.0.3 by someone else: try another.
        if std::net::TcpListener::bind(("127.0.0.3", port)).is_err() {
            continue;
        }
        let b = Sink::start(&format!("127.0.0.3:{port}")).await;
        return (a, b, port);
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

/// The test zone: MX records for the route hosts, A records for the MX hosts.
fn mx_dns() -> Option<Dnsmasq> {
    Dnsmasq::start(&[
        "--local=/mxtest.example/",
        // Preference order: mx-a (10) before mx-b (20), listed the other way round.
        "--mx-host=pref.mxtest.example,mx-b.mxtest.example,20",
        "--mx-host=pref.mxtest.example,mx-a.mxtest.example,10",
        // The preferred MX host is down (nothing listens on 127.0.0.4).
        "--mx-host=failover.mxtest.example,mx-dead.mxtest.example,10",
        "--mx-host=failover.mxtest.example,mx-b.mxtest.example,20",
        // No MX records: the name's own A record (implicit MX).
        "--host-record=plain.mxtest.example,127.0.0.2",
        // RFC 7505 null MX: `MX 0 .`.
        "--mx-host=null.mxtest.example,.,0",
        "--host-record=mx-a.mxtest.example,127.0.0.2",
        "--host-record=mx-b.mxtest.example,127.0.0.3",
        "--host-record=mx-dead.mxtest.example,127.0.0.4",
    ])
}

/// A relay configuration: each `(domain, route host)` an `mx_lookup` route on `port`, and
/// `ALL` (the DSNs to other.example) to `fallback`.
fn mx_config(routes: &[(&str, &str)], port: u16, fallback: SocketAddr) -> tempfile::TempDir {
    let cfg = relay_config(fallback, "1s");
    let mut yaml = String::from("routes:\n");
    for (domain, host) in routes {
        yaml.push_str(&format!(
            "  - domain: {domain}\n    mx_lookup: true\n    hosts:\n      - {{host: {host}, port: {port}}}\n"
        ));
    }
    yaml.push_str(&format!(
        "  - domain: ALL\n    hosts:\n      - {{host: {}, port: {}}}\n",
        fallback.ip(),
        fallback.port()
    ));
    std::fs::write(cfg.path().join("policies/routes.yaml"), yaml).unwrap();
    cfg
}

async fn start(dns: &Dnsmasq, cfg: &tempfile::TempDir) -> Server {
    let resolver: SocketAddr = format!("127.0.0.1:{}", dns.port).parse().unwrap();
    Server::start_dir(cfg.path(), |o, _| o.dns_resolvers = Some(vec![resolver])).await
}

#[tokio::test]
async fn lowest_preference_mx_gets_the_mail_and_a_dead_mx_is_skipped() {
    let Some(dns) = mx_dns() else { return };
    let (a, b, port) = two_sinks().await;
    let other = Sink::start("127.0.0.1:0").await;
    let cfg = mx_config(
        &[
            ("pref.example.com", "pref.mxtest.example"),
            ("failover.example.com", "failover.mxtest.example"),
        ],
        port,
        other.addr,
    );
    let mut srv = start(&dns, &cfg).await;

    let mid = send(&srv, "bob@pref.example.com", "pref").await;
    wait_until("delivery to mx-a", || ids(&a) == ["pref"]).await;
    let new = srv
        .wait_log(&format!(
            r"Info: New SMTP DCID {{n}} interface 127.0.0.1 address 127.0.0.2 port {port}"
        ))
        .await;
    let dcid = dcid_of(&new);
    srv.wait_log(&format!(
        "Info: mxgate: DCID {dcid} MX host mx-a.mxtest.example preference 10 for route host pref.mxtest.example"
    ))
    .await;
    srv.wait_log(&format!(
        "Info: Message done DCID {dcid} MID {mid} to RID [0]"
    ))
    .await;

    let mid = send(&srv, "carol@failover.example.com", "failover").await;
    wait_until("delivery to mx-b", || ids(&b) == ["failover"]).await;
    srv.wait_log(&format!(
        r"Info: mxgate: DCID {{n}} MX host mx-dead.mxtest.example preference 10 for route host failover.mxtest.example: connection to 127.0.0.4:{port} failed: "
    ))
    .await;
    let new = srv
        .wait_log(&format!(
            r"Info: New SMTP DCID {{n}} interface 127.0.0.1 address 127.0.0.3 port {port}"
        ))
        .await;
    let dcid = dcid_of(&new);
    srv.wait_log(&format!(
        "Info: mxgate: DCID {dcid} MX host mx-b.mxtest.example preference 20 for route host failover.mxtest.example"
    ))
    .await;
    srv.wait_log(&format!(
        "Info: Message done DCID {dcid} MID {mid} to RID [0]"
    ))
    .await;

    assert_eq!(ids(&a), ["pref"], "mx-a got only its own message");
    assert!(other.messages().is_empty(), "nothing went to the ALL route");
    wait_until("queue empty", || srv.queued().is_empty()).await;
    srv.stop().await;
}

#[tokio::test]
async fn no_mx_records_falls_back_to_the_address_record() {
    let Some(dns) = mx_dns() else { return };
    let (a, b, port) = two_sinks().await;
    let other = Sink::start("127.0.0.1:0").await;
    let cfg = mx_config(
        &[("plain.example.com", "plain.mxtest.example")],
        port,
        other.addr,
    );
    let mut srv = start(&dns, &cfg).await;
    let mid = send(&srv, "dave@plain.example.com", "plain").await;
    wait_until("delivery to plain's A record", || ids(&a) == ["plain"]).await;
    srv.wait_log(
        r"Info: mxgate: DCID {n} MX host plain.mxtest.example (implicit MX: no MX records)",
    )
    .await;
    srv.wait_log(&format!(
        r"Info: Message done DCID {{n}} MID {mid} to RID [0]"
    ))
    .await;
    assert!(b.messages().is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn null_mx_bounces_with_5_1_10() {
    let Some(dns) = mx_dns() else { return };
    let (a, b, port) = two_sinks().await;
    let other = Sink::start("127.0.0.1:0").await;
    let cfg = mx_config(
        &[("null.example.com", "null.mxtest.example")],
        port,
        other.addr,
    );
    let mut srv = start(&dns, &cfg).await;
    let mid = send(&srv, "erin@null.example.com", "null").await;
    srv.wait_log(&format!(
        "Info: Bounced: DCID 0 MID {mid} to RID 0 - 5.1.10 - null.mxtest.example has a null MX (RFC 7505): the domain accepts no mail"
    ))
    .await;
    // The DSN goes to the sender through the ALL route.
    wait_until("the DSN", || !other.messages().is_empty()).await;
    let dsn = &other.messages()[0];
    assert_eq!(dsn.from, "");
    assert_eq!(dsn.rcpts, ["alice@other.example"]);
    assert!(dsn.body.contains("Status: 5.1.10"), "{}", dsn.body);
    assert!(
        dsn.body
            .contains("Diagnostic-Code: smtp; 556 5.1.10 null.mxtest.example has a null MX"),
        "{}",
        dsn.body
    );
    assert!(a.messages().is_empty() && b.messages().is_empty());
    wait_until("queue empty", || srv.queued().is_empty()).await;
    srv.stop().await;
}

#[tokio::test]
async fn dns_failure_keeps_the_mail_queued_with_4_4_3() {
    // A resolver that does not answer: every lookup times out (dns.timeout is 2 s).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let resolver = silent.local_addr().unwrap();
    let other = Sink::start("127.0.0.1:0").await;
    let cfg = mx_config(
        &[("slow.example.com", "pref.mxtest.example")],
        2525,
        other.addr,
    );
    // A short dns.timeout: the session's own reverse lookup waits for it too.
    let global = cfg.path().join("mxgate.yaml");
    let text = std::fs::read_to_string(&global).unwrap();
    assert!(text.contains("timeout: 2s"), "{text}");
    std::fs::write(&global, text.replace("timeout: 2s", "timeout: 300ms")).unwrap();
    let mut srv =
        Server::start_dir(cfg.path(), |o, _| o.dns_resolvers = Some(vec![resolver])).await;
    let mid = send(&srv, "frank@slow.example.com", "slow").await;
    let delayed = format!(
        "Info: Delayed: DCID 0 MID {mid} to RID [0] - 4.4.3 - MX lookup for pref.mxtest.example failed: "
    );
    wait_until("the Delayed line", || srv.log_text().contains(&delayed)).await;
    assert_eq!(srv.queued_mids(), [mid]);
    srv.stop().await;
}
