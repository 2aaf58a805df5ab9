//! Directory Harvest Attack Prevention (issue 13): `max_invalid_recipients_per_hour` on real
//! sockets, clients presented from documentation addresses through PROXY headers. The refusal
//! that passes the limit and every RCPT after it (any listener, valid address or not) get the
//! DHAP reply and the connection is dropped; other clients are unaffected; the mail log has
//! our `refused:` line and ESA's drop line; `mxgate_dhap_drops_total` counts the drops.

mod support;

use support::dnsmasq::Dnsmasq;
use support::{copy_dir, repo, Client, Server};
use tokio::net::TcpStream;

const RAT_550: &str = "550 5.7.1 Recipient address rejected\r\n";
const DHAP_550: &str = "550 5.7.1 Too many invalid recipients\r\n";

/// The e2e fixture with `max_invalid_recipients_per_hour: 3` for every policy and a public
/// listener `dhap` behind PROXY whose HAT has no groups (so every client is `ALL`).
fn dhap_config() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("tests/fixtures/e2e"), dir.path());
    let flow_path = dir.path().join("policies/mail_flow.yaml");
    let flow = std::fs::read_to_string(&flow_path).unwrap();
    assert!(flow.starts_with("default:\n"), "{flow}");
    let flow = flow.replacen(
        "default:\n",
        "default:\n  max_invalid_recipients_per_hour: 3\n",
        1,
    );
    std::fs::write(&flow_path, flow).unwrap();
    let hat_path = dir.path().join("policies/hat.yaml");
    let hat = std::fs::read_to_string(&hat_path).unwrap();
    std::fs::write(
        &hat_path,
        format!("{hat}\ndhap:\n  sender_groups: []\n  default_policy: ACCEPTED\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("listeners/dhap.yaml"),
        "name: dhap\ntype: public\nbind: [\"127.0.0.1:0\"]\nhostname: mx.test.example\n\
         hat: dhap\nrat: inbound\nproxy_protocol:\n  trusted: [127.0.0.0/8]\n  timeout: 5s\n",
    )
    .unwrap();
    dir
}

/// A client from `ip` on `listener`, greeted, past EHLO and MAIL FROM.
async fn in_transaction(srv: &Server, listener: &str, ip: &str) -> Client<TcpStream> {
    let mut c = Client::connect(srv.addr(listener), Some(ip)).await;
    let greeting = c.reply().await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(c.cmd("EHLO client.example").await.starts_with("250-"));
    assert_eq!(
        c.cmd("MAIL FROM:<a@sender.example>").await,
        "250 2.1.0 Sender ok\r\n"
    );
    c
}

#[tokio::test]
async fn dhap_refuses_and_drops_a_harvester_until_its_hour_ends_others_unaffected() {
    // 192.0.2.1 has a verified PTR (its name goes into ESA's drop line); 192.0.2.2 has none.
    let Some(dns) = Dnsmasq::start(&[
        "--ptr-record=1.2.0.192.in-addr.arpa,mail.example.net",
        "--address=/mail.example.net/192.0.2.1",
        "--local=/in-addr.arpa/",
        "--local=/ip6.arpa/",
    ]) else {
        return;
    };
    let cfg = dhap_config();
    let port = dns.port;
    let mut srv = Server::start_dir(cfg.path(), |o, _| {
        o.dns_resolvers = Some(vec![format!("127.0.0.1:{port}").parse().unwrap()]);
        o.metrics_listen = Some(Some("127.0.0.1:0".parse().unwrap()));
    })
    .await;

    // Three RAT refusals are within the limit; a valid recipient still gets 250.
    let mut c = in_transaction(&srv, "dhap", "192.0.2.1").await;
    for n in 1..=3 {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<n{n}@other.example>")).await,
            RAT_550
        );
    }
    assert_eq!(
        c.cmd("RCPT TO:<alice@example.com>").await,
        "250 2.1.5 Recipient ok\r\n"
    );
    // The fourth invalid recipient passes 3: the DHAP reply, then the connection is dropped.
    assert_eq!(c.cmd("RCPT TO:<n4@other.example>").await, DHAP_550);
    assert_eq!(c.read_to_close().await, "");
    let refused = srv
        .wait_log(
            "Info: mxgate: ICID {n} MID {n} RCPT TO: <n4@other.example> refused: \
             max_invalid_recipients_per_hour 3 for 192.0.2.1 (policy ACCEPTED) \
             -> 550 5.7.1 Too many invalid recipients",
        )
        .await;
    let icid = support::id_after(&refused, "ICID ");
    srv.wait_log(
        "Info: Dropping connection due to potential Directory Harvest Attack from \
         host=('192.0.2.1', 'mail.example.net'), dhap_limit=3, sender_group=ALL, \
         listener=dhap, reverse_dns=192.0.2.1",
    )
    .await;
    srv.wait_log(&format!("Info: ICID {icid} close")).await;
    assert!(
        !srv.log_text().contains(&format!("ICID {icid} lost")),
        "the server closed it: {}",
        srv.log_text()
    );

    // Postmaster stays reachable (RFC 5321 §4.5.1): a sender behind the same address (a
    // shared provider's) can still report the problem. Found by an outsider.
    let mut c = in_transaction(&srv, "dhap", "192.0.2.1").await;
    assert_eq!(
        c.cmd("RCPT TO:<postmaster>").await,
        "250 2.1.5 Recipient ok\r\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<Postmaster@example.com>").await,
        "250 2.1.5 Recipient ok\r\n"
    );
    assert_eq!(c.cmd("RCPT TO:<alice@example.com>").await, DHAP_550);
    assert_eq!(c.read_to_close().await, "");

    // Within the hour the same client is refused at its first RCPT, even to a valid address,
    // and dropped again: on this listener and on another one.
    for listener in ["dhap", "proxied"] {
        let mut c = in_transaction(&srv, listener, "192.0.2.1").await;
        assert_eq!(
            c.cmd("RCPT TO:<alice@example.com>").await,
            DHAP_550,
            "{listener}"
        );
        assert_eq!(c.read_to_close().await, "", "{listener}");
        srv.wait_log(&format!(
            "Info: Dropping connection due to potential Directory Harvest Attack from \
             host=('192.0.2.1', 'mail.example.net'), dhap_limit=3, sender_group=ALL, \
             listener={listener}, reverse_dns=192.0.2.1"
        ))
        .await;
    }

    // Another client has its own count: 250 for a valid recipient, the RAT's 550 for an
    // invalid one, and the connection stays open.
    let mut c = in_transaction(&srv, "dhap", "192.0.2.2").await;
    assert_eq!(
        c.cmd("RCPT TO:<alice@example.com>").await,
        "250 2.1.5 Recipient ok\r\n"
    );
    assert_eq!(c.cmd("RCPT TO:<n1@other.example>").await, RAT_550);
    assert!(c.cmd("QUIT").await.starts_with("221 "));

    // On `dhap`: the harvest, the postmaster session's alice, the first of the loop below.
    for (listener, n) in [("dhap", 3.0), ("proxied", 1.0)] {
        let labels = [("listener", listener), ("sender_group", "ALL")];
        let drops = srv.metric("mxgate_dhap_drops_total", &labels).await;
        assert_eq!(drops, n, "{listener}");
    }
    for (reason, n) in [("dhap", 3.0), ("rat", 4.0)] {
        let labels = [("listener", "dhap"), ("reason", reason)];
        let rejected = srv
            .metric("mxgate_recipients_rejected_total", &labels)
            .await;
        assert_eq!(rejected, n, "{reason}");
    }
    srv.stop().await;
}
