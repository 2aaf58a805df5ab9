//! Network identity of clients (docs/network.md): IPv4 clients on IPv6 sockets, dual-stack
//! binding, reverse DNS from the configured resolvers only, and the metrics about them.

mod support;

use std::net::SocketAddr;

use support::dnsmasq::Dnsmasq;
use support::{Client, Server};
use tokio::io::AsyncWriteExt;

/// A dnsmasq answering NXDOMAIN at once for every reverse name and `.test`, so that no
/// lookup of these tests leaves the machine.
fn quiet_dns() -> Option<Dnsmasq> {
    Dnsmasq::start(&["--local=/arpa/", "--local=/test/"])
}

fn resolver(dns: &Dnsmasq) -> SocketAddr {
    format!("127.0.0.1:{}", dns.port).parse().unwrap()
}

/// A copy of the e2e fixture plus `extra` listeners (file name, YAML) and HATs (YAML appended
/// to policies/hat.yaml).
fn config_with(listeners: &[(&str, &str)], hats: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    support::copy_dir(&support::repo().join("tests/fixtures/e2e"), dir.path());
    for (file, yaml) in listeners {
        std::fs::write(dir.path().join("listeners").join(file), yaml).unwrap();
    }
    let hat = dir.path().join("policies/hat.yaml");
    let mut text = std::fs::read_to_string(&hat).unwrap();
    text.push_str(hats);
    std::fs::write(hat, text).unwrap();
    dir
}

const MAPPED_HAT: &str = "
mapped:
  sender_groups:
    - name: BLOCKLIST
      policy: BLOCKED
      match: [127.0.0.1]
  default_policy: ACCEPTED
";

/// Listeners on the IPv4-mapped IPv6 address: every IPv4 client appears as `::ffff:a.b.c.d`.
const MAPPED_LISTENERS: &[(&str, &str)] = &[
    (
        "zz_mapped.yaml",
        "name: mapped\ntype: public\nbind: [\"[::ffff:127.0.0.1]:0\"]\nhostname: mx.test.example\nhat: mapped\nrat: inbound\n",
    ),
    (
        "zz_mapped_proxy.yaml",
        "name: mapped_proxy\ntype: public\nbind: [\"[::ffff:127.0.0.1]:0\"]\nhostname: mx.test.example\nhat: inbound\nrat: inbound\nproxy_protocol:\n  trusted: [127.0.0.0/8]\n  timeout: 5s\n",
    ),
];

#[tokio::test]
async fn trust_03_ipv4_client_on_an_ipv6_socket_matches_ipv4_entries() {
    let Some(dns) = quiet_dns() else { return };
    let cfg = config_with(MAPPED_LISTENERS, MAPPED_HAT);
    let mut srv = Server::start_dir(cfg.path(), |o, _| {
        o.dns_resolvers = Some(vec![resolver(&dns)]);
    })
    .await;
    let port = srv.addr("mapped").port();
    // The HAT entry 127.0.0.1 matches the client the socket reports as ::ffff:127.0.0.1.
    let mut c = Client::connect(SocketAddr::from(([127, 0, 0, 1], port)), None).await;
    assert_eq!(
        c.reply().await,
        "554 5.7.1 mx.test.example: access from 127.0.0.1 denied\r\n"
    );
    srv.wait_log(r"interface mapped (127.0.0.1) address 127.0.0.1 reverse dns host")
        .await;
    srv.wait_log(r"ICID {n} REJECT SG BLOCKLIST match 127.0.0.1 SBRS None")
        .await;

    // PROXY trusted networks are IPv4 too; and an IPv4-mapped source in a TCP6 header is the
    // IPv4 client it stands for (192.0.2.20 is in the fixture's BLOCKLIST).
    let port = srv.addr("mapped_proxy").port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = Client::connect(addr, Some("192.0.2.20")).await;
    assert!(
        c.reply().await.starts_with("554 5.7.1"),
        "a trusted load balancer on an IPv6 socket"
    );
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("PROXY TCP6 ::ffff:192.0.2.20 ::ffff:127.0.0.1 40000 {port}\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut c = Client {
        io: tokio::io::BufReader::new(s),
    };
    assert!(c.reply().await.starts_with("554 5.7.1"));
    srv.wait_log("address 192.0.2.20 reverse dns host").await;
    let log = srv.log_text();
    assert!(
        !log.contains("address ::ffff:") && !log.contains("(::ffff:"),
        "clients are logged in their IPv4 form:\n{log}"
    );
    assert!(!log.contains("not a trusted PROXY source"), "{log}");
    srv.stop().await;
}

#[tokio::test]
async fn trust_03_ipv4_and_ipv6_wildcards_bind_the_same_port() {
    let Some(dns) = quiet_dns() else { return };
    let port = support::free_port();
    let v4: SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
    let v6: SocketAddr = format!("[::]:{port}").parse().unwrap();
    let mut srv = Server::start("e2e", |o, _| {
        o.dns_resolvers = Some(vec![resolver(&dns)]);
        o.binds = vec![("preferred".into(), vec![v4, v6])];
    })
    .await;
    let bound: Vec<SocketAddr> = srv
        .running
        .as_ref()
        .unwrap()
        .bound
        .iter()
        .filter(|(n, _)| n == "preferred")
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(bound, vec![v4, v6]);
    for addr in [
        SocketAddr::from(([127, 0, 0, 1], port)),
        format!("[::1]:{port}").parse().unwrap(),
    ] {
        let mut c = Client::connect(addr, None).await;
        assert!(c.reply().await.starts_with("220 mx.test.example"), "{addr}");
    }
    srv.wait_log(r"interface preferred (127.0.0.1) address 127.0.0.1")
        .await;
    srv.wait_log(r"interface preferred (::1) address ::1").await;
    srv.stop().await;
}

/// The e2e fixture with `dns_yaml` as its `dns:` block.
fn config_with_dns(dns_yaml: &str) -> tempfile::TempDir {
    let dir = config_with(&[], "");
    let global = dir.path().join("mxgate.yaml");
    let text = std::fs::read_to_string(&global)
        .unwrap()
        .replace("dns:\n  timeout: 2s\n", dns_yaml);
    assert!(text.contains(dns_yaml));
    std::fs::write(global, text).unwrap();
    dir
}

#[tokio::test]
async fn trust_21_loopback_clients_get_the_configured_servers_answer() {
    let Some(dns) = Dnsmasq::start(&[
        "--local=/arpa/",
        "--local=/dns.test/",
        "--ptr-record=1.0.0.127.in-addr.arpa,loop4.dns.test",
        "--host-record=loop4.dns.test,127.0.0.1",
        "--ptr-record=1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa,loop6.dns.test",
        "--host-record=loop6.dns.test,::1",
    ]) else {
        return;
    };
    let mut srv = Server::start("e2e", |o, _| {
        o.dns_resolvers = Some(vec![resolver(&dns)]);
        o.binds = vec![(
            "preferred".into(),
            vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()],
        )];
    })
    .await;
    let ports: Vec<u16> = srv
        .running
        .as_ref()
        .unwrap()
        .bound
        .iter()
        .filter(|(n, _)| n == "preferred")
        .map(|(_, a)| a.port())
        .collect();
    // Not `localhost` from the resolver library, nor a name from /etc/hosts: dnsmasq's PTR.
    let mut c = Client::connect(SocketAddr::from(([127, 0, 0, 1], ports[0])), None).await;
    assert!(c.reply().await.starts_with("220 "));
    srv.wait_log("address 127.0.0.1 reverse dns host loop4.dns.test verified yes")
        .await;
    let mut c = Client::connect(format!("[::1]:{}", ports[1]).parse().unwrap(), None).await;
    assert!(c.reply().await.starts_with("220 "));
    srv.wait_log("address ::1 reverse dns host loop6.dns.test verified yes")
        .await;
    // A loopback address without PTR on the configured server has none (NOPTR), where the
    // library answered `localhost` and made it ptr_mismatch (SUSPECTLIST).
    let mut c = Client::connect(srv.addr("proxied"), Some("127.0.0.9")).await;
    assert_eq!(
        c.reply().await,
        "220 mx.test.example ESMTP ready (NOPTR)\r\n"
    );
    srv.wait_log("address 127.0.0.9 reverse dns host unknown verified no")
        .await;
    assert!(!srv.log_text().contains("reverse dns host localhost"));
    srv.stop().await;
}

/// A DNS server that never answers: a lookup that reaches it waits for `dns.timeout`.
fn silent_resolver() -> (std::net::UdpSocket, SocketAddr) {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

#[tokio::test]
async fn trust_21_hosts_file_answers_only_when_configured_and_without_the_network() {
    let Some(dns) = quiet_dns() else { return };
    let hosts_dir = tempfile::tempdir().unwrap();
    let hosts = hosts_dir.path().join("hosts");
    std::fs::write(&hosts, "# test\n192.0.2.51 mail.partner.example mail\n").unwrap();

    // Not configured: the hosts file is not read; dnsmasq has no PTR for 192.0.2.50.
    let cfg = config_with_dns("dns:\n  timeout: 2s\n");
    let mut srv = Server::start_dir(cfg.path(), |o, _| {
        o.dns_resolvers = Some(vec![resolver(&dns)]);
    })
    .await;
    let mut c = Client::connect(srv.addr("proxied"), Some("192.0.2.51")).await;
    assert_eq!(
        c.reply().await,
        "220 mx.test.example ESMTP ready (NOPTR)\r\n"
    );
    srv.wait_log("address 192.0.2.51 reverse dns host unknown verified no")
        .await;
    srv.stop().await;

    // Configured: PTR and forward answers come from the file alone. The server is silent and
    // the timeout longer than the client waits, so an AAAA query sent for the name (the file
    // has only its IPv4 address) would keep the greeting back.
    let (_silent, silent) = silent_resolver();
    let cfg = config_with_dns(&format!(
        "dns:\n  timeout: 60s\n  hosts_file: {}\n",
        hosts.display()
    ));
    let mut srv = Server::start_dir(cfg.path(), |o, _| {
        o.dns_resolvers = Some(vec![silent]);
    })
    .await;
    let mut c = Client::connect(srv.addr("proxied"), Some("192.0.2.51")).await;
    assert_eq!(
        c.reply().await,
        "220 mx.test.example ESMTP ready (ALLOWLIST)\r\n"
    );
    srv.wait_log("address 192.0.2.51 reverse dns host mail.partner.example verified yes")
        .await;
    srv.stop().await;
}

/// Listeners only the metrics test uses, so its counters are its own.
const METERED_LISTENERS: &[(&str, &str)] = &[
    (
        "zz_metered.yaml",
        "name: metered\ntype: public\nbind: [\"127.0.0.1:0\"]\nhostname: mx.test.example\nhat: inbound\nrat: inbound\nproxy_protocol:\n  trusted: [127.0.0.0/8]\n  timeout: 5s\n",
    ),
    (
        "zz_metered_untrusted.yaml",
        "name: metered_untrusted\ntype: public\nbind: [\"127.0.0.1:0\"]\nhostname: mx.test.example\nhat: inbound\nrat: inbound\nproxy_protocol:\n  trusted: [192.0.2.0/24]\n",
    ),
];

#[tokio::test]
async fn trust_25_proxy_refusals_and_reverse_dns_results_are_counted() {
    // 192.0.2.0/24 is served (PTR and A records); 198.51.100.0/24 is not, so dnsmasq, with no
    // upstream, refuses those queries: a temporary error.
    let Some(dns) = Dnsmasq::start(&[
        "--local=/2.0.192.in-addr.arpa/",
        "--local=/partner.example/",
        "--ptr-record=11.2.0.192.in-addr.arpa,mail.partner.example",
        "--host-record=mail.partner.example,192.0.2.11",
        "--ptr-record=12.2.0.192.in-addr.arpa,fake.partner.example",
        "--host-record=fake.partner.example,198.51.100.250",
    ]) else {
        return;
    };
    let cfg = config_with(METERED_LISTENERS, "");
    let mut srv = Server::start_dir(cfg.path(), |o, _| {
        o.dns_resolvers = Some(vec![resolver(&dns)]);
        o.metrics_listen = Some(Some("127.0.0.1:0".parse().unwrap()));
    })
    .await;
    let addr = srv.addr("metered");
    for (client, result) in [
        ("192.0.2.11", "pass"),
        ("192.0.2.12", "fail"),
        ("192.0.2.13", "permerror"),
        ("198.51.100.7", "temperror"),
    ] {
        let mut c = Client::connect(addr, Some(client)).await;
        assert!(c.reply().await.starts_with("220 "), "{client}");
        let labels = [("listener", "metered"), ("result", result)];
        assert_eq!(
            srv.metric("mxgate_reverse_dns_total", &labels).await,
            1.0,
            "{client}"
        );
    }

    // PROXY refusals, by reason.
    let untrusted = srv.addr("metered_untrusted");
    let mut c = Client::connect(untrusted, Some("192.0.2.11")).await;
    assert_eq!(c.reply().await, "");
    let mut c = Client::connect(addr, None).await;
    c.send(b"EHLO no.proxy.header\r\n").await;
    assert_eq!(c.reply().await, "");
    let c = Client::connect(addr, None).await;
    drop(c);
    srv.wait_log("interface metered PROXY header from 127.0.0.1 refused: connection closed")
        .await;
    let proxy =
        |listener: &'static str, reason: &'static str| [("listener", listener), ("reason", reason)];
    for (labels, want) in [
        (proxy("metered_untrusted", "untrusted_source"), 1.0),
        (proxy("metered", "malformed"), 1.0),
        (proxy("metered", "closed"), 1.0),
        (proxy("metered", "timeout"), 0.0),
    ] {
        assert_eq!(
            srv.metric("mxgate_proxy_refused_total", &labels).await,
            want,
            "{labels:?}"
        );
    }
    let (_, text) = srv.http_get("/metrics").await;
    assert!(
        text.contains("# TYPE mxgate_proxy_refused_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE mxgate_reverse_dns_total counter"),
        "{text}"
    );
    srv.stop().await;
}

/// `mxgate hat trace IP ARGS... --listener proxied` on the e2e fixture: stdout, stderr, success.
fn trace(ip: &str, args: &[&str]) -> (String, String, bool) {
    let out = support::mxgate::bin()
        .args(["hat", "trace", ip, "--listener", "proxied"])
        .args(args)
        .arg("--config-dir")
        .arg(support::repo().join("tests/fixtures/e2e"))
        .env_remove("MXGATE_CONFIG_DIR")
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

#[test]
fn trust_24_hat_trace_simulates_reverse_dns_states() {
    // The live server puts a client without PTR in NOPTR (ptr_missing): so does the trace.
    let (s, _, ok) = trace("198.51.100.7", &["--ptr", "missing"]);
    assert!(ok, "{s}");
    assert!(s.contains("reverse dns   no PTR record (simulated)"), "{s}");
    assert!(s.contains("sender group  NOPTR"), "{s}");
    assert!(s.contains("matched       ptr_missing"), "{s}");
    assert!(!s.contains("not evaluated"), "{s}");

    let (s, _, ok) = trace(
        "198.51.100.7",
        &["--ptr", "mismatch", "--hostname", "mail.partner.example"],
    );
    assert!(ok, "{s}");
    assert!(
        s.contains("reverse dns   mail.partner.example (PTR name not confirmed by its A/AAAA records, simulated)"),
        "{s}"
    );
    assert!(s.contains("sender group  SUSPECTLIST"), "{s}");
    assert!(s.contains("matched       ptr_mismatch"), "{s}");

    let (s, _, ok) = trace("198.51.100.7", &["--ptr", "tempfail"]);
    assert!(ok, "{s}");
    assert!(s.contains("sender group  ALL"), "{s}");

    // Without reverse DNS, the trace says which groups above the result it could not judge.
    let (s, _, ok) = trace("198.51.100.7", &[]);
    assert!(ok, "{s}");
    assert!(s.contains("sender group  ALL"), "{s}");
    assert!(
        s.contains("not evaluated ALLOWLIST (.partner.example), SUSPECTLIST (ptr_mismatch), NOPTR (ptr_missing): no reverse DNS given (use --hostname or --ptr)"),
        "{s}"
    );

    // Bad values are refused by the argument parser; missing needs no host name.
    let (_, err, ok) = trace("198.51.100.7", &["--ptr", "absent"]);
    assert!(!ok && err.contains("--ptr"), "{err}");
    let (_, err, ok) = trace(
        "198.51.100.7",
        &["--ptr", "missing", "--hostname", "x.example"],
    );
    assert!(!ok && err.contains("--hostname"), "{err}");
}

#[test]
fn trust_03_hat_trace_of_an_ipv4_mapped_address_is_the_ipv4_client() {
    // The listener sees ::ffff:192.0.2.20 as 192.0.2.20; the trace must answer the same.
    let (s, _, ok) = trace("::ffff:192.0.2.20", &["--ptr", "missing"]);
    assert!(ok, "{s}");
    assert!(s.contains("sender group  BLOCKLIST"), "{s}");
}
