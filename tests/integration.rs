//! Integration tests: the real server on 127.0.0.1:0 with real rustls, PROXY headers to present
//! clients from documentation addresses, a real DNS server (dnsmasq) and a full disk (tmpfs).

mod support;

use support::dnsmasq::Dnsmasq;
use support::{Client, Server};

const MSG: &str = "Subject: integration\r\nMessage-ID: <it@test>\r\n\r\nhello\r\n";

fn ehlo_has_starttls(r: &str) -> bool {
    r.lines()
        .any(|l| l.trim_end() == "250 STARTTLS" || l.trim_end() == "250-STARTTLS")
}

#[tokio::test]
async fn starttls_upgrade_then_mail_is_spooled_before_250() {
    let mut srv = Server::start("e2e", |_, _| {}).await;
    let mut c = Client::connect(srv.addr("preferred"), None).await;
    assert!(c.reply().await.starts_with("220 mx.test.example"));
    let e = c.cmd("EHLO client.test").await;
    assert!(ehlo_has_starttls(&e), "{e}");
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
    let mut t = c.into_tls().await;
    let e = t.cmd("EHLO client.test").await;
    assert!(
        !ehlo_has_starttls(&e),
        "STARTTLS offered again after TLS: {e}"
    );
    let r = t
        .send_mail("a@other.example", &["bob@example.com"], MSG)
        .await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let mid = support::queued_mid(&r);
    // The 250 came after the file was durable: it is there the moment we read it.
    let (env, msg) = support::queued_parts(&srv.spool, mid);
    let msg = String::from_utf8(msg).unwrap();
    assert!(msg.starts_with("Received: from client.test"), "{msg}");
    assert!(msg.contains("(using TLSv1.3 with cipher TLS13_"), "{msg}");
    assert!(msg.ends_with("\r\nhello\r\n"), "{msg:?}");
    assert!(
        env.contains("rcpt bob@example.com\n") && env.ends_with("end\n"),
        "{env}"
    );
    assert!(std::fs::read_dir(srv.spool.join("tmp"))
        .unwrap()
        .next()
        .is_none());
    let icid_line = srv.wait_log(r"Info: New SMTP ICID {n} interface preferred (127.0.0.1) address 127.0.0.1 reverse dns host").await;
    let icid: u64 = support::id_after(&icid_line, "ICID ");
    srv.wait_log(&format!(
        "Info: ICID {icid} ACCEPT SG ALL match ALL SBRS None"
    ))
    .await;
    srv.wait_log(&format!(
        "Info: ICID {icid} TLS success protocol TLSv1.3 cipher TLS13_"
    ))
    .await;
    srv.wait_log(&format!("Info: Start MID {mid} ICID {icid}"))
        .await;
    srv.wait_log(&format!(
        "Info: MID {mid} ICID {icid} From: <a@other.example>"
    ))
    .await;
    srv.wait_log(&format!(
        "Info: MID {mid} ICID {icid} RID 0 To: <bob@example.com>"
    ))
    .await;
    srv.wait_log(&format!("Info: MID {mid} Message-ID '<it@test>'"))
        .await;
    srv.wait_log(&format!("Info: MID {mid} Subject 'integration'"))
        .await;
    srv.wait_log(&format!(
        r"Info: MID {mid} ready {{n}} bytes from <a@other.example>"
    ))
    .await;
    srv.wait_log(&format!("Info: MID {mid} queued for delivery"))
        .await;
    assert!(t.cmd("QUIT").await.starts_with("221 2.0.0"));
    srv.wait_log(&format!("Info: ICID {icid} close")).await;
    srv.stop().await;
}

#[tokio::test]
async fn required_refuses_mail_until_starttls_and_off_does_not_offer_it() {
    let mut srv = Server::start("e2e", |_, _| {}).await;
    let mut c = Client::connect(srv.addr("required"), None).await;
    c.reply().await;
    assert!(ehlo_has_starttls(&c.cmd("EHLO client.test").await));
    assert_eq!(
        c.cmd("MAIL FROM:<a@other.example>").await,
        "530 5.7.0 Must issue a STARTTLS command first\r\n"
    );
    assert_eq!(
        c.cmd("QUIT").await,
        "221 2.0.0 mx.test.example closing connection\r\n"
    );
    srv.wait_log(r"Info: ICID {n} TLS was required but remote host did not initiate it")
        .await;

    let mut c = Client::connect(srv.addr("off"), None).await;
    c.reply().await;
    let e = c.cmd("EHLO client.test").await;
    assert!(!e.contains("STARTTLS"), "{e}");
    assert_eq!(
        c.cmd("STARTTLS").await,
        "502 5.5.1 STARTTLS not available\r\n"
    );
    assert!(srv.queued().is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn plaintext_pipelined_after_starttls_is_discarded() {
    let mut srv = Server::start("e2e", |_, _| {}).await;
    let mut c = Client::connect(srv.addr("preferred"), None).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    c.send(b"STARTTLS\r\nMAIL FROM:<attacker@evil.example>\r\nRCPT TO:<victim@example.com>\r\n")
        .await;
    assert_eq!(c.reply().await, "220 2.0.0 Ready to start TLS\r\n");
    let mut t = c.into_tls().await;
    t.cmd("EHLO client.test").await;
    // Had the injected MAIL run, this would be accepted; it must not be.
    assert_eq!(
        t.cmd("RCPT TO:<victim@example.com>").await,
        "503 5.5.1 Need MAIL command\r\n"
    );
    srv.wait_log(r"Warning: mxgate: ICID {n} discarded 65 bytes pipelined after STARTTLS")
        .await;
    assert!(!srv.log_text().contains("attacker@evil.example"));
    srv.stop().await;
}

#[tokio::test]
async fn each_hat_action_over_proxy_protocol() {
    let mut srv = Server::start("e2e", |_, _| {}).await;
    let addr = srv.addr("proxied");
    // reject: reject banner and close.
    let mut c = Client::connect(addr, Some("192.0.2.20")).await;
    assert_eq!(
        c.reply().await,
        "554 5.7.1 mx.test.example: access from 192.0.2.20 denied\r\n"
    );
    assert_eq!(
        c.reply().await,
        "",
        "connection must close after the reject banner"
    );
    srv.wait_log(r"ICID {n} REJECT SG BLOCKLIST match 192.0.2.20 SBRS None")
        .await;
    // tcprefuse: closed before any greeting.
    let mut c = Client::connect(addr, Some("192.0.2.30")).await;
    assert_eq!(c.reply().await, "");
    srv.wait_log(
        "Info: ICID 0 TCPREFUSE SG REFUSELIST match 192.0.2.30 address 192.0.2.30 SBRS None",
    )
    .await;
    // continue: SKIPPED is passed over, BLOCKLIST below it matches.
    let mut c = Client::connect(addr, Some("192.0.2.60")).await;
    assert!(c.reply().await.starts_with("554 5.7.1"));
    // accept with the real client address in the log and the Received header.
    let mut c = Client::connect(addr, Some("198.51.100.9")).await;
    assert!(c.reply().await.starts_with("220 "));
    c.cmd("EHLO far.away.test").await;
    let r = c
        .send_mail("x@far.away.test", &["bob@example.com"], MSG)
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    srv.wait_log(r"address 198.51.100.9 reverse dns host").await;
    // relay: a private listener relays for RELAYLIST to any domain.
    let mut c = Client::connect(srv.addr("relay"), Some("192.0.2.100")).await;
    assert!(c.reply().await.starts_with("220 relay.test.example"));
    c.cmd("EHLO app.internal").await;
    c.cmd("MAIL FROM:<app@internal.example>").await;
    assert_eq!(
        c.cmd("RCPT TO:<someone@anywhere.example>").await,
        "250 2.1.5 Recipient ok\r\n"
    );
    srv.wait_log(r"ICID {n} RELAY SG RELAYLIST match 192.0.2.100 SBRS None")
        .await;
    // An untrusted source may not send a PROXY header: the public listener is not behind a balancer.
    srv.stop().await;
}

#[tokio::test]
async fn rat_and_limits_on_real_sockets() {
    let mut srv = Server::start("e2e", |_, _| {}).await;
    let addr = srv.addr("proxied");
    let mut c = Client::connect(addr, Some("192.0.2.41")).await;
    c.reply().await;
    c.cmd("EHLO throttled.test").await;
    c.cmd("MAIL FROM:<a@other.example>").await;
    assert_eq!(
        c.cmd("RCPT TO:<x@other.example>").await,
        "550 5.7.1 Recipient address rejected\r\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<r1@example.com>").await,
        "250 2.1.5 Recipient ok\r\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<r2@example.com>").await,
        "250 2.1.5 Recipient ok\r\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<r3@example.com>").await,
        "452 4.5.3 Too many recipients\r\n"
    );
    srv.wait_log(r"ICID {n} To: <x@other.example> Rejected by RAT")
        .await;
    srv.wait_log(
        r"mxgate: ICID {n} MID {n} RCPT TO: <r3@example.com> refused: max_recipients_per_message 2 (policy THROTTLED)",
    )
    .await;
    // Size: 2 KiB limit in the fixture, checked on the real bytes.
    c.cmd("RSET").await;
    let big = format!("Subject: big\r\n\r\n{}\r\n", "y".repeat(3000));
    let r = c
        .send_mail("a@other.example", &["r1@example.com"], &big)
        .await;
    assert_eq!(
        r,
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert!(srv.queued().is_empty(), "{:?}", srv.queued());

    // Concurrency per IP: the fixture allows 5 connections from one address.
    let mut open = Vec::new();
    for _ in 0..5 {
        let mut c = Client::connect(addr, Some("192.0.2.77")).await;
        assert!(c.reply().await.starts_with("220"));
        open.push(c);
    }
    let mut sixth = Client::connect(addr, Some("192.0.2.77")).await;
    assert_eq!(
        sixth.reply().await,
        "421 4.7.0 Too many concurrent connections from your address\r\n"
    );
    let mut other = Client::connect(addr, Some("192.0.2.78")).await;
    assert!(
        other.reply().await.starts_with("220"),
        "another client is still served"
    );
    drop(open);
    srv.wait_log(r"mxgate: ICID {n} connection from 192.0.2.77 refused: max_concurrent_connections_per_ip 5 (policy ACCEPTED)").await;
    srv.stop().await;
}

#[tokio::test]
async fn proxy_header_from_untrusted_or_garbled_source_is_refused() {
    let mut srv = Server::start("e2e", |_, _| {}).await;
    let mut c = Client::connect(srv.addr("proxied"), None).await;
    c.send(b"EHLO no.proxy.header\r\n").await;
    assert_eq!(
        c.reply().await,
        "",
        "no greeting without a valid PROXY header"
    );
    srv.wait_log("PROXY header from 127.0.0.1 refused").await;
    srv.stop().await;
}

#[tokio::test]
async fn reverse_dns_from_a_real_dns_server_selects_groups() {
    let Some(dns) = partner_dns() else { return };
    let port = dns.port;
    let mut srv = Server::start("e2e", |o, _| {
        o.dns_resolvers = Some(vec![format!("127.0.0.1:{port}").parse().unwrap()]);
    })
    .await;
    let addr = srv.addr("proxied");
    // Verified: PTR mail.partner.example and its A record is the client: ALLOWLIST via .partner.example.
    let mut c = Client::connect(addr, Some("192.0.2.11")).await;
    assert!(c
        .reply()
        .await
        .starts_with("220 mx.test.example ESMTP ready (ALLOWLIST)"));
    srv.wait_log("address 192.0.2.11 reverse dns host mail.partner.example verified yes")
        .await;
    srv.wait_log(r"ICID {n} ACCEPT SG ALLOWLIST match .partner.example SBRS None")
        .await;
    // Mismatch: PTR claims a partner name, forward lookup disagrees: only ptr_mismatch.
    let mut c = Client::connect(addr, Some("192.0.2.12")).await;
    assert!(c
        .reply()
        .await
        .starts_with("220 mx.test.example ESMTP ready (SUSPECTLIST)"));
    srv.wait_log("address 192.0.2.12 reverse dns host fake.partner.example verified no")
        .await;
    srv.wait_log(r"ICID {n} ACCEPT SG SUSPECTLIST match ptr_mismatch SBRS None")
        .await;
    // Missing PTR.
    let mut c = Client::connect(addr, Some("192.0.2.13")).await;
    assert!(c
        .reply()
        .await
        .starts_with("220 mx.test.example ESMTP ready (NOPTR)"));
    srv.wait_log(r"ICID {n} ACCEPT SG NOPTR match ptr_missing SBRS None")
        .await;
    srv.stop().await;
}

#[tokio::test]
async fn full_disk_answers_452_and_keeps_what_was_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let Some((mnt, _unmount)) = support::tiny_tmpfs(dir.path()) else {
        return;
    };
    let spool = mnt.clone();
    let mut srv = Server::start("e2e", |o, _| o.spool_dir = Some(spool)).await;
    let mut c = Client::connect(srv.addr("preferred"), None).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    let r = c
        .send_mail("a@other.example", &["bob@example.com"], MSG)
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let before = srv.queued_mids();
    assert_eq!(before.len(), 1);
    // Fill the disk, then try another message.
    let filler = mnt.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 200 * 1024]);
    let r = c
        .send_mail("a@other.example", &["bob@example.com"], MSG)
        .await;
    assert_eq!(r, "452 4.3.1 Insufficient system storage\r\n");
    assert_eq!(
        srv.queued_mids(),
        before,
        "nothing half-written in queue/, the first message kept"
    );
    for mid in &before {
        assert!(srv.spool.join(format!("queue/{mid}.mail")).exists());
    }
    assert!(
        std::fs::read_dir(mnt.join("tmp")).unwrap().next().is_none(),
        "tmp/ cleaned"
    );
    srv.wait_log(r"Info: ICID {n} Receiving Failed: spool error:")
        .await;
    // Space again: mail flows again on the same connection.
    std::fs::remove_file(&filler).unwrap();
    let r = c
        .send_mail("a@other.example", &["bob@example.com"], MSG)
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    srv.stop().await;
}

/// dnsmasq serving the partner zone: one verified name, one whose forward lookup disagrees.
fn partner_dns() -> Option<Dnsmasq> {
    Dnsmasq::start(&[
        "--local=/2.0.192.in-addr.arpa/",
        "--local=/partner.example/",
        "--ptr-record=11.2.0.192.in-addr.arpa,mail.partner.example",
        "--host-record=mail.partner.example,192.0.2.11",
        "--ptr-record=12.2.0.192.in-addr.arpa,fake.partner.example",
        "--host-record=fake.partner.example,198.51.100.250",
    ])
}

#[tokio::test]
async fn listener_connection_cap_and_command_timeout() {
    let mut srv = Server::start("e2e", |_, _| {}).await;
    let addr = srv.addr("tiny");
    let mut a = Client::connect(addr, None).await;
    let mut b = Client::connect(addr, None).await;
    assert!(a.reply().await.starts_with("220"));
    assert!(b.reply().await.starts_with("220"));
    let mut c = Client::connect(addr, None).await;
    assert_eq!(
        c.reply().await,
        "421 4.7.0 Too many connections, try again later\r\n"
    );
    srv.wait_log("interface tiny max_connections 2 reached: refused 127.0.0.1")
        .await;
    // The idle sessions are cut by the 2 s command timeout with 421 4.4.2.
    assert_eq!(
        a.reply().await,
        "421 4.4.2 mx.test.example Error: timeout exceeded\r\n"
    );
    assert_eq!(a.reply().await, "");
    srv.wait_log(r"mxgate: ICID {n} session refused: command timeout")
        .await;
    // Slots free again: a new client is served.
    b.reply().await;
    let mut d = Client::connect(addr, None).await;
    assert!(d.reply().await.starts_with("220"));
    srv.stop().await;
}
