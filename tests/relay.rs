//! Relay tests: accepted mail reaches the internal server; retries while it is down; DSNs for
//! 5xx recipients; the queue CLI against a running server.

mod support;

use std::time::Duration;

use support::sink::Sink;
use support::{closed_addr, free_port, relay_config, wait_until, Client, Server};

fn msg(id: &str) -> String {
    format!("Message-ID: <{id}>\r\nSubject: relay {id}\r\n\r\nbody of {id}\r\n")
}

async fn send(srv: &Server, from: &str, to: &[&str], id: &str) -> String {
    let mut c = Client::connect(srv.addr("preferred"), None).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    let r = c.send_mail(from, to, &msg(id)).await;
    c.cmd("QUIT").await;
    r
}

#[tokio::test]
async fn accepted_mail_is_relayed_and_leaves_the_queue() {
    let sink = Sink::start("127.0.0.1:0").await;
    let cfg = relay_config(sink.addr, "1s");
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let r = send(
        &srv,
        "alice@other.example",
        &["bob@example.com", "carol@example.com"],
        "r1",
    )
    .await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let mid = support::queued_mid(&r);
    wait_until("delivery", || !sink.messages().is_empty()).await;
    let m = &sink.messages()[0];
    assert_eq!(m.from, "alice@other.example");
    assert_eq!(m.rcpts, vec!["bob@example.com", "carol@example.com"]);
    assert!(
        m.body.starts_with("Received: from client.test"),
        "{}",
        m.body
    );
    assert!(m.body.ends_with("\r\nbody of r1\r\n"), "{:?}", m.body);
    let dcid_line = srv
        .wait_log(&format!(
            "Info: New SMTP DCID {{n}} interface 127.0.0.1 address 127.0.0.1 port {}",
            sink.addr.port()
        ))
        .await;
    let dcid: u64 = support::id_after(&dcid_line, "DCID ");
    srv.wait_log(&format!(
        "Info: Delivery start DCID {dcid} MID {mid} to RID [0, 1]"
    ))
    .await;
    srv.wait_log(&format!(
        "Info: Message done DCID {dcid} MID {mid} to RID [0, 1]"
    ))
    .await;
    srv.wait_log(&format!("Info: Message finished MID {mid} done"))
        .await;
    srv.wait_log(&format!("Info: DCID {dcid} close")).await;
    wait_until("queue empty", || srv.queued().is_empty()).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_settings_apply_on_reload() {
    use support::SinkConfig;
    let sink = support::Sink::start_with(SinkConfig::default()).await;
    let cfg = relay_config(sink.addr, "1h");
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let send = |id: &'static str| {
        let addr = srv.addr("preferred");
        async move {
            let mut c = Client::connect(addr, None).await;
            c.reply().await;
            c.cmd("EHLO client.test").await;
            let r = c
                .send_mail("a@other.example", &["bob@example.com"], &msg(id))
                .await;
            assert!(r.starts_with("250 2.0.0"), "{r}");
            c.cmd("QUIT").await;
        }
    };
    send("before").await;
    wait_until("the first message", || sink.messages().len() == 1).await;
    // Its connection is closed: the next message needs a new one.
    srv.wait_log(r"Info: DCID {n} close").await;

    // A new delivery host name: the next delivery connection says it in EHLO.
    let global = std::fs::read_to_string(cfg.path().join("mxgate.yaml")).unwrap();
    std::fs::write(
        cfg.path().join("mxgate.yaml"),
        global.replace("hostname: mx.test.example", "hostname: mx2.test.example"),
    )
    .unwrap();
    let o = mxgate::config::Overrides {
        spool_dir: Some(srv.spool.clone()),
        certs_dir: Some(srv.dir.path().join("certs")),
        mail_log: Some(mxgate::config::model::MailLogTarget::File(
            srv.dir.path().join("mail.log"),
        )),
        ..Default::default()
    };
    let new = mxgate::config::load(cfg.path(), &o).unwrap();
    srv.running.as_ref().unwrap().apply(&new).unwrap();
    send("after").await;
    wait_until("the second message", || sink.messages().len() == 2).await;
    let ehlos: Vec<String> = sink
        .commands()
        .into_iter()
        .filter(|c| c.starts_with("EHLO "))
        .collect();
    assert_eq!(ehlos, ["EHLO mx.test.example", "EHLO mx2.test.example"]);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_ca_bundle_behind_the_same_path_applies_on_reload() {
    use support::pki::{server_config, TestPki};
    use support::{ServerTls, SinkConfig};
    let pki = TestPki::new();
    let sink = support::Sink::start_with(SinkConfig {
        tls: ServerTls::Offer(server_config(pki.leaf(&["example.com"], None))),
        ..SinkConfig::default()
    })
    .await;
    let cfg = relay_config(sink.addr, "1h");
    std::fs::write(
        cfg.path().join("policies/destinations.yaml"),
        "default:\n  tls: required-verify\n  ca_file: trust.pem\n",
    )
    .unwrap();
    // First the bundle of some other CA: the downstream certificate does not verify.
    let trust = cfg.path().join("trust.pem");
    TestPki::new().write_ca(&trust);
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let mut c = Client::connect(srv.addr("preferred"), None).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    let r = c
        .send_mail("a@other.example", &["bob@example.com"], &msg("renewed-ca"))
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    srv.wait_log(r"Info: Delayed: DCID {n} MID {n} to RID [0] - 4.7.5 - ")
        .await;
    assert!(sink.messages().is_empty());

    // The administrator puts the right CA into the same file and reloads.
    pki.write_ca(&trust);
    let o = mxgate::config::Overrides {
        spool_dir: Some(srv.spool.clone()),
        certs_dir: Some(srv.dir.path().join("certs")),
        mail_log: Some(mxgate::config::model::MailLogTarget::File(
            srv.dir.path().join("mail.log"),
        )),
        ..Default::default()
    };
    let new = mxgate::config::load(cfg.path(), &o).unwrap();
    let running = srv.running.as_ref().unwrap();
    running.apply(&new).unwrap();
    // A bundle that holds no certificate is refused with its place in the configuration.
    std::fs::write(&trust, "not a certificate").unwrap();
    let err = mxgate::config::load(cfg.path(), &o)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("policies/destinations.yaml:3:12: default.ca_file: CA bundle \"trust.pem\" holds no PEM certificate"),
        "{err}"
    );
    pki.write_ca(&trust);

    let spool = srv.spool.clone();
    let out = tokio::task::spawn_blocking(move || {
        mxgate::relay::control::request(&spool, "retry all").unwrap()
    })
    .await
    .unwrap();
    assert!(out.starts_with("ok 1 message(s)"), "{out}");
    wait_until("delivered after the reload", || sink.messages().len() == 1).await;
    srv.wait_log(r"TLS success protocol .* verified").await;
    wait_until("queue empty", || srv.queued_mids().is_empty()).await;
    srv.stop().await;
}

#[tokio::test]
async fn when_every_route_host_fails_each_failure_is_reported() {
    let (primary, backup) = (free_port(), free_port());
    let cfg = relay_config(format!("127.0.0.1:{primary}").parse().unwrap(), "1h");
    std::fs::write(
        cfg.path().join("policies/routes.yaml"),
        format!(
            "routes:\n  - domain: ALL\n    hosts:\n      - {{host: 127.0.0.1, port: {primary}, priority: 10}}\n      - {{host: 127.0.0.1, port: {backup}, priority: 20}}\n"
        ),
    )
    .unwrap();
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let mut c = Client::connect(srv.addr("preferred"), None).await;
    c.reply().await;
    c.cmd("EHLO load.test").await;
    let r = c
        .send_mail("a@other.example", &["bob@example.com"], &msg("both-down"))
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let line = srv
        .wait_log(r"Info: Delayed: DCID {n} MID {n} to RID [0] - ")
        .await;
    // Both hosts, in the order tried, not only the backup's error.
    let want = format!(
        "2 hosts tried, all failed: connection to 127.0.0.1:{primary} failed: Connection refused (os error 111); connection to 127.0.0.1:{backup} failed"
    );
    assert!(line.contains(&want), "{line}");
    let listed = mxgate::relay::control::entries(&srv.spool);
    assert_eq!(listed.len(), 1);
    let err = listed[0].state.last_error.clone().unwrap_or_default();
    assert!(err.contains(&want), "{err}");
    srv.stop().await;
}

#[tokio::test]
async fn downstream_down_then_up_every_message_arrives_once() {
    // Reserve a port and leave it closed: the internal server is down.
    let addr = closed_addr();
    let cfg = relay_config(addr, "1s");
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let mut tasks = Vec::new();
    let srv_ref = std::sync::Arc::new(srv.addr("preferred"));
    for client in 0..4 {
        let a = *srv_ref;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(a, None).await;
            c.reply().await;
            c.cmd("EHLO load.test").await;
            for i in 0..3 {
                let id = format!("down-{client}-{i}");
                let r = c
                    .send_mail("load@other.example", &["bob@example.com"], &msg(&id))
                    .await;
                assert!(r.starts_with("250 2.0.0"), "{r}");
            }
            c.cmd("QUIT").await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    srv.wait_log(r"Info: Delayed: DCID {n} MID {n} to RID [0] - 4.4.1 - ")
        .await;
    assert_eq!(srv.queued_mids().len(), 12);
    let listed = mxgate::relay::control::entries(&srv.spool);
    assert_eq!(listed.len(), 12);
    // Up again on the same port: the retries deliver everything.
    let sink = Sink::start(&addr.to_string()).await;
    wait_until("all 12 delivered", || sink.message_ids().len() >= 12).await;
    wait_until("queue empty", || srv.queued_mids().is_empty()).await;
    let mut ids = sink.message_ids();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), 12, "every message arrived");
    assert_eq!(before, 12, "and none twice");
    srv.stop().await;
}

#[tokio::test]
async fn a_5xx_recipient_bounces_with_an_rfc3464_dsn() {
    let sink = Sink::start("127.0.0.1:0").await;
    let cfg = relay_config(sink.addr, "1s");
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let r = send(
        &srv,
        "alice@other.example",
        &["ok@example.com", "nouser@example.com"],
        "b1",
    )
    .await;
    let mid = support::queued_mid(&r);
    srv.wait_log(&format!(
        "Info: Bounced: DCID {{n}} MID {mid} to RID 1 - 5.1.1 - ('550', ['No such user'])"
    ))
    .await;
    bounced_and_done(&srv, mid).await;
    let msgs = sink.messages();
    let original = msgs
        .iter()
        .find(|m| m.rcpts == ["ok@example.com"])
        .expect("the good recipient got it");
    assert_eq!(original.from, "alice@other.example");
    let dsn = msgs
        .iter()
        .find(|m| m.from.is_empty())
        .expect("a DSN with the null sender");
    assert_eq!(dsn.rcpts, vec!["alice@other.example"]);
    // A real MIME parser judges the DSN.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dsn.eml");
    std::fs::write(&path, &dsn.body).unwrap();
    let script = r#"
import email, sys
m = email.message_from_binary_file(open(sys.argv[1], 'rb'))
assert m.get_content_type() == 'multipart/report', m.get_content_type()
assert m.get_param('report-type') == 'delivery-status'
parts = m.get_payload()
assert [p.get_content_type() for p in parts] == ['text/plain', 'message/delivery-status', 'text/rfc822-headers'], [p.get_content_type() for p in parts]
blocks = parts[1].get_payload()
per_msg, per_rcpt = blocks[0], blocks[1]
assert per_msg['Reporting-MTA'] == 'dns; mx.test.example', per_msg['Reporting-MTA']
assert per_rcpt['Final-Recipient'] == 'rfc822; nouser@example.com'
assert per_rcpt['Action'] == 'failed'
assert per_rcpt['Status'] == '5.1.1'
assert '550 5.1.1 No such user' in per_rcpt['Diagnostic-Code']
assert 'Message-ID: <b1>' in parts[2].get_payload() or 'Message-ID: <b1>' in str(parts[2])
print('DSN OK')
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("DSN OK"),
        "python rejected the DSN: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dsn.body
    );
    srv.stop().await;
}

/// The internal server answers with ESC and a bare CR in its reply: the mail-log line and the
/// DSN carry it as spaces, never raw.
#[tokio::test]
async fn trust_16_control_characters_from_the_internal_server_are_filtered() {
    let sink = Sink::start("127.0.0.1:0").await;
    let cfg = relay_config(sink.addr, "1s");
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let r = send(&srv, "alice@other.example", &["ctrl@example.com"], "c1").await;
    let mid = support::queued_mid(&r);
    let gen = srv
        .wait_log(&format!(r"was generated for bounce of MID {mid}"))
        .await;
    let dsn_mid: u64 = support::id_after(&gen, "MID ");
    srv.wait_log(&format!("Info: Message finished MID {dsn_mid} done"))
        .await;
    let log = srv.log_text();
    let bounced = log
        .lines()
        .find(|l| l.contains("Bounced: DCID ") && l.contains(&format!("MID {mid} ")))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(bounced.contains("Bad  [31m INJ"), "{bounced:?}");
    assert!(!log.contains('\x1b') && !log.contains('\r'), "{log:?}");
    let dsn = sink
        .messages()
        .into_iter()
        .find(|m| m.from.is_empty())
        .expect("a DSN");
    assert!(!dsn.body.contains('\x1b'), "{:?}", dsn.body);
    assert!(dsn.body.contains("Bad  [31m INJ"), "{}", dsn.body);
    let bare_cr = dsn
        .body
        .as_bytes()
        .windows(2)
        .any(|w| w[0] == b'\r' && w[1] != b'\n');
    assert!(!bare_cr, "{:?}", dsn.body);
    srv.stop().await;
}

/// `BODY=8BITMIME` is kept in the envelope and relayed; a DSN that quotes 8-bit headers is sent
/// with `BODY=8BITMIME` too and declares its 8-bit part.
#[tokio::test]
async fn trust_23_body_8bitmime_is_stored_relayed_and_marks_dsns() {
    let sink = Sink::start("127.0.0.1:0").await;
    let cfg = relay_config(sink.addr, "1s");
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let mut c = Client::connect(srv.addr("preferred"), None).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    assert!(c
        .cmd("MAIL FROM:<alice@other.example> BODY=8BITMIME")
        .await
        .starts_with("250 "));
    assert!(c.cmd("RCPT TO:<bob@example.com>").await.starts_with("250 "));
    assert!(c
        .cmd("RCPT TO:<nouser@example.com>")
        .await
        .starts_with("250 "));
    assert!(c.cmd("DATA").await.starts_with("354 "));
    let r = c
        .cmd("Message-ID: <e1>\r\nSubject: Grüße\r\n\r\nÄrger über Öl\r\n.")
        .await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let mid = support::queued_mid(&r);
    c.cmd("QUIT").await;
    bounced_and_done(&srv, mid).await;
    let msgs = sink.messages();
    let original = msgs
        .iter()
        .find(|m| m.rcpts == ["bob@example.com"])
        .expect("relayed");
    assert!(
        original
            .mail_cmd
            .starts_with("MAIL FROM:<alice@other.example> ")
            && original.mail_cmd.ends_with(" BODY=8BITMIME"),
        "{}",
        original.mail_cmd
    );
    assert!(original.body.contains("Ärger über Öl"));
    let dsn = msgs.iter().find(|m| m.from.is_empty()).expect("a DSN");
    assert!(dsn.mail_cmd.ends_with(" BODY=8BITMIME"), "{}", dsn.mail_cmd);
    assert!(
        dsn.body.contains(
            "Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        ),
        "{}",
        dsn.body
    );
    assert!(dsn.body.contains("Subject: Grüße\r\n"), "{}", dsn.body);
    srv.stop().await;
}

/// A 7-bit message is relayed without a BODY parameter (as before).
#[tokio::test]
async fn trust_23_seven_bit_mail_has_no_body_parameter() {
    let sink = Sink::start("127.0.0.1:0").await;
    let cfg = relay_config(sink.addr, "1s");
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    send(&srv, "alice@other.example", &["bob@example.com"], "s1").await;
    wait_until("relayed", || !sink.messages().is_empty()).await;
    let m = &sink.messages()[0];
    assert!(!m.mail_cmd.contains("BODY="), "{}", m.mail_cmd);
    srv.stop().await;
}

#[tokio::test]
async fn a_bounce_of_a_bounce_is_dropped() {
    let sink = Sink::start("127.0.0.1:0").await;
    let cfg = relay_config(sink.addr, "1s");
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let r = send(&srv, "", &["nouser@example.com"], "dbl").await;
    let mid = support::queued_mid(&r);
    srv.wait_log(&format!(
        "Warning: mxgate: MID {mid} double bounce: the sender is null, no DSN generated, dropped"
    ))
    .await;
    srv.wait_log(&format!("Info: Message finished MID {mid} done"))
        .await;
    assert!(sink.messages().is_empty());
    assert!(!srv.log_text().contains("was generated for bounce"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_06_a_dsn_that_cannot_be_queued_keeps_the_original_queued() {
    let dir = tempfile::tempdir().unwrap();
    let Some((mnt, _unmount)) = support::tiny_tmpfs(dir.path()) else {
        return;
    };
    // The internal server is down at first, so the spool can be filled before the 550.
    let addr = closed_addr();
    let cfg = relay_config(addr, "1s");
    let spool = mnt.clone();
    let mut srv = Server::start_dir(cfg.path(), |o, _| o.spool_dir = Some(spool)).await;
    let r = send(&srv, "alice@other.example", &["nouser@example.com"], "dsn1").await;
    let mid = support::queued_mid(&r);
    srv.wait_log(&format!(
        r"Info: Delayed: DCID {{n}} MID {mid} to RID [0] - 4.4.1"
    ))
    .await;
    let filler = mnt.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 256 * 1024]);
    let sink = Sink::start(&addr.to_string()).await;
    // The recipient bounces, but the DSN cannot be written: the original stays queued and
    // is tried again (a second attempt proves it was not removed).
    let failed = format!("Warning: mxgate: MID {mid} could not queue its DSN");
    wait_until("two failed DSN attempts", || {
        srv.log_text().matches(failed.as_str()).count() >= 2
    })
    .await;
    assert_eq!(srv.queued_mids(), [mid], "the original is still queued");
    assert!(sink.messages().is_empty());
    // Space again: the next attempt queues the DSN, then the original is removed.
    std::fs::remove_file(&filler).unwrap();
    bounced_and_done(&srv, mid).await;
    wait_until("queue empty", || srv.queued_mids().is_empty()).await;
    let dsns: Vec<_> = sink
        .messages()
        .into_iter()
        .filter(|m| m.from.is_empty())
        .collect();
    assert_eq!(dsns.len(), 1, "exactly one DSN");
    assert_eq!(dsns[0].rcpts, ["alice@other.example"]);
    assert!(
        dsns[0]
            .body
            .contains("Final-Recipient: rfc822; nouser@example.com"),
        "{}",
        dsns[0].body
    );
    assert_eq!(
        srv.log_text()
            .matches("was generated for bounce of MID")
            .count(),
        1
    );
    srv.stop().await;
}

#[tokio::test]
async fn queue_cli_lists_retries_deletes_and_bounces_on_a_running_server() {
    let addr = closed_addr();
    // Long retry delay: only `queue retry` makes the next attempt happen in this test.
    let cfg = relay_config(addr, "1h");
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let mut mids = Vec::new();
    for id in ["q1", "q2", "q3"] {
        let r = send(&srv, "alice@other.example", &["bob@example.com"], id).await;
        mids.push(support::queued_mid(&r));
    }
    for m in &mids {
        srv.wait_log(&format!(
            r"Info: Delayed: DCID {{n}} MID {m} to RID [0] - 4.4.1"
        ))
        .await;
    }
    // The CLI runs as its own process while this runtime keeps serving the control socket.
    let spool = srv.spool.clone();
    let cfg_path = cfg.path().to_path_buf();
    let cli = move |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mxgate"));
        cmd.args(args)
            .arg("--config-dir")
            .arg(&cfg_path)
            .arg("--spool-dir")
            .arg(&spool);
        async move {
            let out = cmd.output().await.unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        }
    };
    let (ok, list) = cli(&["queue", "list"]).await;
    assert!(ok, "{list}");
    for m in &mids {
        assert!(
            list.lines().any(|l| l.starts_with(&format!("{m} "))
                && l.contains("alice@other.example")
                && l.contains("bob@example.com")),
            "{list}"
        );
    }
    assert!(list.contains("last error: "), "{list}");
    assert!(list.contains("-- 3 message(s) in queue"), "{list}");
    let (ok, show) = cli(&["queue", "show", &mids[0].to_string()]).await;
    assert!(
        ok && show.contains("RID 0 bob@example.com pending") && show.contains("attempts 1"),
        "{show}"
    );

    let (ok, out) = cli(&["queue", "delete", &mids[1].to_string()]).await;
    assert!(ok, "{out}");
    srv.wait_log(&format!(
        "Info: mxgate: MID {} deleted by administrator",
        mids[1]
    ))
    .await;
    srv.wait_log(&format!("Info: Message finished MID {} aborted", mids[1]))
        .await;

    let sink = Sink::start(&addr.to_string()).await;
    let (ok, out) = cli(&["queue", "bounce", &mids[2].to_string()]).await;
    assert!(ok, "{out}");
    srv.wait_log(&format!("was generated for bounce of MID {}", mids[2]))
        .await;

    let (ok, out) = cli(&["queue", "retry", "999999"]).await;
    assert!(
        !ok && out.contains("error MID 999999 is not queued"),
        "{out}"
    );
    // q1 is left, and the DSN of q3 unless it went out already (the sink is up).
    let (ok, out) = cli(&["queue", "retry", "--all"]).await;
    assert!(
        ok && (out.starts_with("ok 1 message(s) scheduled for delivery now")
            || out.starts_with("ok 2 message(s) scheduled for delivery now")),
        "{out}"
    );
    wait_until("q1 and the DSN delivered", || sink.messages().len() >= 2).await;
    wait_until("queue empty", || srv.queued_mids().is_empty()).await;
    let ids = sink.message_ids();
    assert!(ids.contains(&"q1".to_string()), "{ids:?}");
    assert!(
        !ids.contains(&"q2".to_string()),
        "deleted message must not be delivered"
    );
    let (ok, list) = cli(&["queue", "list"]).await;
    assert!(ok && list.contains("-- 0 message(s) in queue"), "{list}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_delivery_loses_nothing() {
    // A slow internal server: each message takes 100 ms to be acknowledged.
    let sink = Sink::start_with_delay("127.0.0.1:0", Duration::from_millis(100)).await;
    let cfg = relay_config(sink.addr, "1s");
    let work = tempfile::tempdir().unwrap();
    let mut child = support::Mxgate::start(cfg.path(), work.path());
    let addr = child.addr("preferred");
    let mut tasks = Vec::new();
    for client in 0..3 {
        tasks.push(tokio::spawn(async move {
            // The fixture allows 3 messages per connection: one connection per message.
            for i in 0..10 {
                let mut c = Client::connect(addr, None).await;
                c.reply().await;
                c.cmd("EHLO crash.test").await;
                let r = c
                    .send_mail(
                        "crash@other.example",
                        &["bob@example.com"],
                        &msg(&format!("k-{client}-{i}")),
                    )
                    .await;
                assert!(r.starts_with("250 2.0.0"), "{r}");
                c.cmd("QUIT").await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every message is acknowledged; kill the server while deliveries are under way.
    child.kill();
    let spool = work.path().join("spool");
    let left = mxgate::relay::control::entries(&spool).len();
    let delivered_before = sink.message_ids().len();
    assert!(
        left > 0,
        "the kill came after all deliveries: nothing was tested"
    );
    let child = support::Mxgate::start(cfg.path(), work.path());
    wait_until("every message delivered after restart", || {
        let mut ids = sink.message_ids();
        ids.sort();
        ids.dedup();
        ids.len() == 30
    })
    .await;
    wait_until("queue empty", || {
        mxgate::relay::control::entries(&spool).is_empty()
    })
    .await;
    let total = sink.message_ids().len();
    // At-least-once: only messages in flight at the kill may arrive twice.
    assert!(
        total - 30 <= left,
        "{total} deliveries for 30 messages, {left} were queued at the kill"
    );
    eprintln!("kill -9: {delivered_before} delivered before, {left} queued at the kill, {total} deliveries in all");
    child.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_11_a_message_acknowledged_on_a_connection_still_open_is_not_delivered_again_after_kill_9(
) {
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let queued = |mid: u64| spool.join(format!("queue/{mid}.mail")).exists();
    let log = |s: &str| {
        std::fs::read_to_string(work.path().join("mail.log"))
            .unwrap_or_default()
            .contains(s)
    };
    // Queue two messages while the internal server is down (retries an hour apart).
    let down = relay_config(closed_addr(), "1h");
    let mut child = support::Mxgate::start(down.path(), work.path());
    let addr = child.addr("preferred");
    let mut mids = Vec::new();
    for (id, rcpt) in [
        ("once-1", "bob@example.com"),
        ("once-2", "stall@example.com"),
    ] {
        let mut c = Client::connect(addr, None).await;
        c.reply().await;
        c.cmd("EHLO once.test").await;
        let r = c.send_mail("alice@other.example", &[rcpt], &msg(id)).await;
        assert!(r.starts_with("250 2.0.0"), "{r}");
        mids.push(support::queued_mid(&r));
        c.cmd("QUIT").await;
    }
    let (m1, m2) = (mids[0], mids[1]);
    // Deferred for an hour, and saved so (a restart tries them promptly all the same).
    wait_until("both deferred", || {
        let e = mxgate::relay::control::entries(&spool);
        e.len() == 2 && e.iter().all(|e| e.state.attempts == 1)
    })
    .await;
    child.kill();
    // The internal server accepts message 1, then never answers message 2's RCPT: the
    // connection stays open with message 1 acknowledged.
    let sink = support::Sink::start_with(support::SinkConfig {
        rcpt_replies: vec![("stall@example.com".into(), "STALL".into())],
        ..Default::default()
    })
    .await;
    let up = relay_config(sink.addr, "1h");
    let mut child = support::Mxgate::start(up.path(), work.path());
    // Both are due at once after the restart (the queue is tried promptly, item 20): one
    // connection takes message 1, then message 2.
    wait_until(
        "message 1 accepted and message 2 stalled on one connection",
        || {
            sink.message_ids() == ["once-1"]
                && sink
                    .commands()
                    .iter()
                    .any(|c| c == "RCPT TO:<stall@example.com>")
        },
    )
    .await;
    wait_until(
        "message 1 out of the queue while its connection is still open",
        || !queued(m1),
    )
    .await;
    assert!(log(&format!("Message finished MID {m1} done")));
    child.kill();
    assert!(
        queued(m2),
        "message 2 was never acknowledged: it stays queued"
    );
    // Restart towards a server that accepts everything.
    let good = Sink::start("127.0.0.1:0").await;
    let cfg = relay_config(good.addr, "1h");
    let child = support::Mxgate::start(cfg.path(), work.path());
    // Message 2 is tried at once after the restart.
    wait_until("message 2 delivered", || !good.message_ids().is_empty()).await;
    wait_until("queue empty", || {
        mxgate::relay::control::entries(&spool).is_empty()
    })
    .await;
    let mut all = sink.message_ids();
    all.extend(good.message_ids());
    assert_eq!(all, ["once-1", "once-2"], "every message exactly once");
    child.stop();
}

#[tokio::test]
async fn a_message_older_than_the_queue_lifetime_bounces() {
    let addr = closed_addr();
    let cfg = relay_config(addr, "1s");
    let global = std::fs::read_to_string(cfg.path().join("mxgate.yaml")).unwrap();
    std::fs::write(
        cfg.path().join("mxgate.yaml"),
        format!("{global}  max_queue_lifetime: 1s\n"),
    )
    .unwrap();
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let r = send(&srv, "alice@other.example", &["bob@example.com"], "old").await;
    let mid = support::queued_mid(&r);
    srv.wait_log(&format!(r"Info: Bounced: DCID {{n}} MID {mid} to RID 0 - 4.4.7 - message expired in queue, last error: ")).await;
    srv.wait_log(&format!("was generated for bounce of MID {mid}"))
        .await;
    srv.wait_log(&format!("Info: Message finished MID {mid} done"))
        .await;
    srv.stop().await;
}

#[tokio::test]
async fn required_tls_failure_logs_a_warning_and_mails_the_admin_once() {
    // The internal server offers no STARTTLS, but the destination requires TLS.
    let sink = Sink::start("127.0.0.1:0").await;
    let cfg = relay_config(sink.addr, "1s");
    std::fs::write(
        cfg.path().join("policies/destinations.yaml"),
        "default:\n  tls: required\ndestinations:\n  - domain: admin.test\n    tls: \"no\"\n\
         alert_on_required_tls_failure:\n  enabled: true\n  interval: 1h\n  mail_to: ops@admin.test\n",
    )
    .unwrap();
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let r = send(&srv, "alice@other.example", &["bob@example.com"], "tls1").await;
    let mid = support::queued_mid(&r);
    srv.wait_log(r"IP 127.0.0.1 TLS was required but could not be successfully negotiated (destination example.com)")
        .await;
    srv.wait_log("Warning: ALERT: required TLS to destination example.com failed")
        .await;
    srv.wait_log(&format!(
        r"Info: Delayed: DCID {{n}} MID {mid} to RID [0] - 4.7."
    ))
    .await;
    srv.wait_log("alert to ops@admin.test: required TLS to example.com failed")
        .await;
    // The alert goes out (admin.test needs no TLS); nothing of the message itself.
    wait_until("alert delivered", || !sink.messages().is_empty()).await;
    let alert = &sink.messages()[0];
    assert_eq!(alert.rcpts, vec!["ops@admin.test"]);
    assert!(
        alert
            .body
            .contains("Subject: [mxgate] required TLS to example.com failed"),
        "{}",
        alert.body
    );
    // The retry fails again, but within the interval no second alert mail is sent.
    let delayed = |log: &str| log.matches(&format!("MID {mid} to RID [0] - 4.7.")).count();
    wait_until("a retry", || delayed(&srv.log_text()) >= 2).await;
    assert_eq!(srv.log_text().matches("alert to ops@admin.test").count(), 1);
    assert!(
        !sink.message_ids().contains(&"tls1".to_string()),
        "never sent in plaintext"
    );
    srv.stop().await;
}

/// Waits until MID `mid` has its DSN queued and both the DSN and the original are finished.
async fn bounced_and_done(srv: &Server, mid: u64) {
    let gen = srv
        .wait_log(&format!(r"was generated for bounce of MID {mid}"))
        .await;
    let dsn_mid: u64 = support::id_after(&gen, "MID ");
    srv.wait_log(&format!("Info: Message finished MID {dsn_mid} done"))
        .await;
    srv.wait_log(&format!("Info: Message finished MID {mid} done"))
        .await;
}
