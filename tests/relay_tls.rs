//! The outbound SMTP client against real downstream servers on 127.0.0.1: the six
//! outbound TLS modes × eight server states (SPEC §1.4, seed 000), per-recipient
//! outcomes, pipelining, body streaming and dot-stuffing, and Postfix's smtp-sink.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mxgate::config::outbound::{DestinationControl, OutboundTls};
use mxgate::relay::client::{
    ClientSettings, ClientTimeouts, Connection, OutgoingMessage, RcptOutcome, Target, TlsOutcome,
};
use mxgate::relay::outbound_tls::OutboundTlsContext;
use support::pki::*;
use support::postfix::{self, smtp_sink_available, start_smtp_sink, PostfixOptions};
use support::sink::*;

const DOMAIN: &str = "tls.test";

fn timeouts() -> ClientTimeouts {
    let s = Duration::from_secs(10);
    ClientTimeouts {
        connect: s,
        greeting: s,
        ehlo: s,
        mail: s,
        rcpt: s,
        data_init: s,
        data_block: s,
        data_term: s,
    }
}

fn settings(ctx: &Arc<OutboundTlsContext>, mode: OutboundTls, ca: Option<&Path>) -> ClientSettings {
    let mut control = DestinationControl::builtin_default();
    control.tls = mode;
    control.ca_file = ca.map(Path::to_path_buf);
    ClientSettings {
        helo_name: "mxgate.test".into(),
        control,
        tls: ctx.clone(),
        timeouts: timeouts(),
    }
}

fn target(addr: SocketAddr) -> Target {
    Target {
        addr,
        host: "127.0.0.1".into(),
        identity: "127.0.0.1".into(),
        domain: DOMAIN.into(),
    }
}

fn message(dir: &Path, mid: u64, rcpts: &[&str], body: &[u8]) -> OutgoingMessage {
    let body_path = dir.join(format!("{mid}.eml"));
    std::fs::write(&body_path, body).unwrap();
    OutgoingMessage {
        mid,
        from: "sender@origin.test".into(),
        rcpts: rcpts
            .iter()
            .enumerate()
            .map(|(i, r)| (i as u32, r.to_string()))
            .collect(),
        body_path,
        body: None,
        size: body.len() as u64,
        smtputf8: false,
        eightbitmime: false,
    }
}

const BODY: &[u8] = b"Subject: test\r\nMessage-ID: <t@origin.test>\r\n\r\nhello\r\n";

/// The eight downstream states of the table test.
fn states(pki: &TestPki) -> Vec<(&'static str, ServerTls)> {
    let offer = |c: ServerCert| ServerTls::Offer(server_config(c));
    vec![
        ("a: no STARTTLS", ServerTls::NotOffered),
        ("b: STARTTLS 454", ServerTls::Refuse454),
        ("c: handshake fails after 220", ServerTls::Garbage),
        (
            "d: self-signed",
            offer(self_signed(&[DOMAIN], Some(DOMAIN))),
        ),
        (
            "e: test CA, wrong name",
            offer(pki.leaf(&["wrong.test"], Some("wrong.test"))),
        ),
        (
            "f: test CA, name in SAN",
            offer(pki.leaf(&[DOMAIN], Some("Leaf F"))),
        ),
        (
            "g: test CA, name in CN, no SAN",
            offer(pki.leaf(&[], Some(DOMAIN))),
        ),
        (
            "h: test CA, name in CN, other SAN",
            offer(pki.leaf(&["other.test"], Some(DOMAIN))),
        ),
    ]
}

/// Expected cell: outcome, then the TLS log lines (by token) in order.
///
/// Outcomes: `D` delivered in plaintext, `E` encrypted (verified when the mode
/// verifies), `E?` encrypted but the certificate did not verify, `X` not
/// delivered, `X!` not delivered and flagged as a required-TLS failure.
/// Tokens: `U` STARTTLS unexpected response, `H` handshake failed, `S` TLS success,
/// `V=id` TLS success verified id, `C` chain not trusted, `Ne`/`Nhe`/`Nhh` name
/// mismatch (state e under required-verify rules / e under hosted rules / h under
/// hosted rules), `R` the required-TLS alert line.
const MATRIX: [(OutboundTls, [&str; 8]); 6] = [
    //                         a        b          c          d          e            f                  g                 h
    (OutboundTls::No, ["D", "D", "D", "D", "D", "D", "D", "D"]),
    (
        OutboundTls::Preferred,
        ["D", "D U", "X H", "E S", "E S", "E S", "E S", "E S"],
    ),
    (
        OutboundTls::Required,
        [
            "X! R", "X! U R", "X! H R", "E S", "E S", "E S", "E S", "E S",
        ],
    ),
    (
        OutboundTls::PreferredVerify,
        [
            "D",
            "D U",
            "X H",
            "E? C S",
            "E? Ne S",
            "E V=DNS:tls.test",
            "E V=CN=tls.test",
            "E V=CN=tls.test",
        ],
    ),
    (
        OutboundTls::RequiredVerify,
        [
            "X! R",
            "X! U R",
            "X! H R",
            "X! C R",
            "X! Ne R",
            "E V=DNS:tls.test",
            "E V=CN=tls.test",
            "E V=CN=tls.test",
        ],
    ),
    (
        OutboundTls::RequiredVerifyHosted,
        [
            "X! R",
            "X! U R",
            "X! H R",
            "X! C R",
            "X! Nhe R",
            "E V=DNS:tls.test",
            "E V=CN=tls.test",
            "X! Nhh R",
        ],
    ),
];

const SUCCESS: &str = "DCID 1 TLS success protocol TLSv1.3 cipher TLS13_AES_256_GCM_SHA384";

/// The expected line for a token; a trailing `*` means "starts with".
fn token_line(tok: &str) -> String {
    let cert = "DCID 1 TLS failed: certificate verification failed: ";
    let hosted = "(subject CN not used: the certificate has dNSName SANs), expected tls.test";
    match tok {
        "U" => "DCID 1 TLS failed: STARTTLS unexpected response".into(),
        "H" => "DCID 1 TLS failed: TLS handshake failed: *".into(),
        "S" => SUCCESS.into(),
        "C" => format!("{cert}invalid peer certificate: UnknownIssuer"),
        "Ne" => format!(
            "{cert}certificate name mismatch: presented DNS:wrong.test, CN=wrong.test, expected tls.test"
        ),
        "Nhe" => format!("{cert}certificate name mismatch: presented DNS:wrong.test {hosted}"),
        "Nhh" => format!("{cert}certificate name mismatch: presented DNS:other.test {hosted}"),
        "R" => "DCID 1 IP 127.0.0.1 TLS was required but could not be successfully negotiated \
                (destination tls.test)"
            .into(),
        v => match v.strip_prefix("V=") {
            Some(id) => format!("{SUCCESS} verified {id}"),
            None => panic!("unknown token {v}"),
        },
    }
}

fn line_matches(expected: &str, actual: &str) -> bool {
    match expected.strip_suffix('*') {
        Some(prefix) => actual.starts_with(prefix),
        None => expected == actual,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_modes_times_eight_server_states() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let ca_file = dir.path().join("test-ca.pem");
    pki.write_ca(&ca_file);
    let ctx = Arc::new(OutboundTlsContext::new(None).unwrap());
    let states = states(&pki);
    let mut failures = Vec::new();
    let mut actual_matrix = String::new();

    for (mode, cells) in MATRIX {
        actual_matrix.push_str(&format!("{:<24}", mode.as_str()));
        for ((state, server_tls), cell) in states.iter().zip(cells) {
            let sink = Sink::start_with(SinkConfig {
                tls: server_tls.clone(),
                ..SinkConfig::default()
            })
            .await;
            let log = Collect::default();
            let set = settings(&ctx, mode, Some(&ca_file));
            let msg = message(dir.path(), 7, &["user@tls.test"], BODY);
            let mut tokens = cell.split(' ');
            let want = tokens.next().unwrap();
            let want_tls: Vec<String> = tokens.map(token_line).collect();
            let here = format!("mode {mode}, state {state}");

            let got = match Connection::open(1, &target(sink.addr), &set, &log).await {
                Ok(mut conn) => {
                    let res = conn.send(&msg, &log).await;
                    let tls = conn.tls().clone();
                    conn.quit(&log).await;
                    let delivered = matches!(res.rcpts[0].1, RcptOutcome::Delivered(_));
                    if !delivered {
                        failures.push(format!("{here}: not delivered: {res:?}"));
                    }
                    match tls {
                        TlsOutcome::Success {
                            verified: Some(false),
                            ..
                        } => "E?",
                        TlsOutcome::Success { verified, .. } => {
                            if verified != mode.verifies().then_some(true) {
                                failures.push(format!("{here}: verified = {verified:?}"));
                            }
                            "E"
                        }
                        _ => "D",
                    }
                }
                Err(e) => {
                    if e.required_tls_failure {
                        "X!"
                    } else {
                        "X"
                    }
                }
            };
            actual_matrix.push_str(&format!(" {got:<3}"));
            if got != want {
                failures.push(format!("{here}: expected {want}, got {got}"));
            }

            // What the server saw.
            let msgs = sink.messages();
            let commands = sink.commands();
            match got {
                "D" | "E" | "E?" => {
                    let encrypted = got != "D";
                    if msgs.len() != 1 || msgs[0].tls != encrypted || msgs[0].bytes != BODY {
                        failures.push(format!("{here}: server received {msgs:?}"));
                    }
                }
                _ => {
                    if !msgs.is_empty() || commands.iter().any(|c| c.starts_with("MAIL")) {
                        failures.push(format!("{here}: mail was sent: {commands:?}"));
                    }
                }
            }
            if mode == OutboundTls::No && commands.iter().any(|c| c == "STARTTLS") {
                failures.push(format!("{here}: STARTTLS used in mode no"));
            }
            if got.starts_with('E') {
                let sni = sink.state.lock().unwrap().sni.clone();
                if sni != vec![Some(DOMAIN.to_string())] {
                    failures.push(format!("{here}: SNI {sni:?}"));
                }
            }

            // The whole mail log of the cell.
            let mut want_log = vec![format!(
                "New SMTP DCID 1 interface 127.0.0.1 address 127.0.0.1 port {}",
                sink.addr.port()
            )];
            want_log.extend(want_tls);
            if got.starts_with('D') || got.starts_with('E') {
                want_log.push("Delivery start DCID 1 MID 7 to RID [0]".into());
                want_log.push("Message done DCID 1 MID 7 to RID [0]".into());
            }
            want_log.push("DCID 1 close".into());
            let got_log = log.texts();
            let same = got_log.len() == want_log.len()
                && want_log
                    .iter()
                    .zip(&got_log)
                    .all(|(w, g)| line_matches(w, g));
            if !same {
                failures.push(format!(
                    "{here}: mail log\n  expected {want_log:#?}\n  got {got_log:#?}"
                ));
            }
        }
        actual_matrix.push('\n');
    }
    println!("state:                   a   b   c   d   e   f   g   h\n{actual_matrix}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A sink without TLS for the transaction tests.
async fn plain_sink(tweak: impl FnOnce(&mut SinkConfig)) -> Sink {
    let mut cfg = SinkConfig::default();
    tweak(&mut cfg);
    Sink::start_with(cfg).await
}

async fn open_plain(sink: &Sink, log: &Collect) -> Connection {
    let ctx = Arc::new(OutboundTlsContext::new(None).unwrap());
    Connection::open(
        1,
        &target(sink.addr),
        &settings(&ctx, OutboundTls::Preferred, None),
        log,
    )
    .await
    .unwrap()
}

fn code(o: &RcptOutcome) -> (&'static str, u16) {
    match o {
        RcptOutcome::Delivered(r) => ("delivered", r.code),
        RcptOutcome::TempFail(r) => ("temp", r.code),
        RcptOutcome::PermFail(r) => ("perm", r.code),
    }
}

async fn per_recipient_outcomes(pipelining: bool) {
    let dir = tempfile::tempdir().unwrap();
    let sink = plain_sink(|c| {
        c.pipelining = pipelining;
        c.rcpt_replies = vec![
            ("nobody@tls.test".into(), "550 5.1.1 No such user".into()),
            ("full@tls.test".into(), "452 4.2.2 Mailbox full".into()),
        ];
    })
    .await;
    let log = Collect::default();
    let mut conn = open_plain(&sink, &log).await;
    assert_eq!(conn.capabilities().pipelining, pipelining);
    let msg = message(
        dir.path(),
        3,
        &["nobody@tls.test", "ok@tls.test", "full@tls.test"],
        BODY,
    );
    let res = conn.send(&msg, &log).await;
    conn.quit(&log).await;
    let got: Vec<_> = res.rcpts.iter().map(|(rid, o)| (*rid, code(o))).collect();
    assert_eq!(
        got,
        vec![
            (0, ("perm", 550)),
            (1, ("delivered", 250)),
            (2, ("temp", 452))
        ]
    );
    assert!(!res.connection_lost);
    let RcptOutcome::PermFail(r) = &res.rcpts[0].1 else {
        unreachable!()
    };
    assert_eq!(r.to_string(), "550 5.1.1 No such user");
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].rcpts, vec!["ok@tls.test".to_string()]);
    assert_eq!(
        sink.state.lock().unwrap().mail_pipelined,
        vec![pipelining],
        "MAIL, RCPTs and DATA in one write exactly when PIPELINING is offered"
    );
    let texts = log.texts();
    assert!(texts.contains(&"Delivery start DCID 1 MID 3 to RID [0, 1, 2]".to_string()));
    assert!(texts.contains(&"Message done DCID 1 MID 3 to RID [1]".to_string()));
}

#[tokio::test]
async fn pipelined_transaction_gives_one_outcome_per_recipient() {
    per_recipient_outcomes(true).await;
}

#[tokio::test]
async fn unpipelined_transaction_gives_one_outcome_per_recipient() {
    per_recipient_outcomes(false).await;
}

#[tokio::test]
async fn data_refusals_apply_to_accepted_recipients() {
    let dir = tempfile::tempdir().unwrap();
    for (pipelining, data_reply, final_reply, want) in [
        (
            true,
            Some("452 4.3.1 Insufficient system storage"),
            None,
            ("temp", 452),
        ),
        (
            false,
            Some("452 4.3.1 Insufficient system storage"),
            None,
            ("temp", 452),
        ),
        (
            true,
            None,
            Some("554 5.6.0 Message rejected"),
            ("perm", 554),
        ),
        (false, None, Some("451 4.3.0 Try later"), ("temp", 451)),
    ] {
        let sink = plain_sink(|c| {
            c.pipelining = pipelining;
            c.data_reply = data_reply.map(str::to_string);
            c.final_reply = final_reply.map(str::to_string);
            c.rcpt_replies = vec![("nobody@tls.test".into(), "550 5.1.1 No such user".into())];
        })
        .await;
        let log = Collect::default();
        let mut conn = open_plain(&sink, &log).await;
        let msg = message(dir.path(), 4, &["a@tls.test", "nobody@tls.test"], BODY);
        let res = conn.send(&msg, &log).await;
        let got: Vec<_> = res.rcpts.iter().map(|(_, o)| code(o)).collect();
        assert_eq!(
            got,
            vec![want, ("perm", 550)],
            "{data_reply:?} {final_reply:?}"
        );
        assert!(!res.connection_lost);
        assert!(conn.is_usable());
        conn.quit(&log).await;
        assert!(sink.messages().is_empty());
        assert!(!log.texts().iter().any(|l| l.starts_with("Message done")));
    }
}

#[tokio::test]
async fn all_recipients_refused_sends_no_body() {
    let dir = tempfile::tempdir().unwrap();
    let sink = plain_sink(|c| {
        c.rcpt_replies = vec![("nobody@tls.test".into(), "550 5.1.1 No such user".into())];
    })
    .await;
    let log = Collect::default();
    let mut conn = open_plain(&sink, &log).await;
    let msg = message(dir.path(), 5, &["nobody@tls.test"], BODY);
    let res = conn.send(&msg, &log).await;
    assert_eq!(code(&res.rcpts[0].1), ("perm", 550));
    // The pipelined DATA got 554 from the server; the session is still in step.
    let msg2 = message(dir.path(), 6, &["ok@tls.test"], BODY);
    let res2 = conn.send(&msg2, &log).await;
    assert_eq!(code(&res2.rcpts[0].1), ("delivered", 250));
    conn.quit(&log).await;
    assert_eq!(sink.messages().len(), 1);
}

/// 1 MiB+ of lines, many starting with dots, in odd sizes so dots straddle read chunks.
fn dotted_body() -> Vec<u8> {
    let mut body = b"Subject: dots\r\n\r\n".to_vec();
    let mut i = 0usize;
    while body.len() < (1 << 20) + 12345 {
        match i % 7 {
            0 => body.extend_from_slice(b".\r\n"),
            1 => body.extend_from_slice(b"..\r\n"),
            2 => body.extend_from_slice(b".leading dot line\r\n"),
            3 => body.extend_from_slice(format!("line {i} {}\r\n", "x".repeat(i % 900)).as_bytes()),
            4 => body.extend_from_slice(b"\r\n"),
            5 => body.extend_from_slice(b"a.b .c\r\n"),
            _ => body.extend_from_slice(format!("{}.\r\n", "y".repeat(i % 61)).as_bytes()),
        }
        i += 1;
    }
    body
}

#[tokio::test]
async fn big_body_is_dot_stuffed_and_arrives_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let sink = plain_sink(|_| {}).await;
    let log = Collect::default();
    let mut conn = open_plain(&sink, &log).await;
    let body = dotted_body();
    assert!(body.len() > 1 << 20);
    let msg = message(dir.path(), 8, &["a@tls.test"], &body);
    let res = conn.send(&msg, &log).await;
    assert_eq!(code(&res.rcpts[0].1), ("delivered", 250));
    // A body without a final CRLF gets one before the dot.
    let msg2 = message(
        dir.path(),
        9,
        &["a@tls.test"],
        b"Subject: x\r\n\r\n.no newline",
    );
    let res2 = conn.send(&msg2, &log).await;
    assert_eq!(code(&res2.rcpts[0].1), ("delivered", 250));
    conn.quit(&log).await;
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 2);
    assert!(msgs[0].bytes == body, "body differs after de-stuffing");
    assert_eq!(msgs[1].bytes, b"Subject: x\r\n\r\n.no newline\r\n");
}

#[tokio::test]
async fn rset_follows_a_transaction_left_open_by_refused_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let sink = plain_sink(|c| {
        c.pipelining = false;
        c.rcpt_replies = vec![("nobody@tls.test".into(), "550 5.1.1 no such user".into())];
    })
    .await;
    let log = Collect::default();
    let mut conn = open_plain(&sink, &log).await;
    let refused = conn
        .send(&message(dir.path(), 21, &["nobody@tls.test"], BODY), &log)
        .await;
    assert_eq!(code(&refused.rcpts[0].1), ("perm", 550));
    let ok = conn
        .send(&message(dir.path(), 22, &["a@tls.test"], BODY), &log)
        .await;
    assert_eq!(code(&ok.rcpts[0].1), ("delivered", 250));
    conn.quit(&log).await;
    let verbs: Vec<String> = sink
        .commands()
        .iter()
        .map(|c| c.split([' ', ':']).next().unwrap().to_string())
        .collect();
    // MAIL was accepted and no DATA followed: the transaction is open until RSET.
    assert_eq!(
        verbs,
        ["EHLO", "MAIL", "RCPT", "RSET", "MAIL", "RCPT", "DATA", "<53", ".", "QUIT"]
    );
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn two_messages_on_one_connection_without_rset_after_a_completed_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let sink = plain_sink(|c| c.pipelining = false).await;
    let log = Collect::default();
    let mut conn = open_plain(&sink, &log).await;
    for mid in [11, 12] {
        let mut msg = message(dir.path(), mid, &["a@tls.test"], BODY);
        if mid == 12 {
            // The first attempt's body comes from memory: the file must not be needed.
            std::fs::remove_file(&msg.body_path).unwrap();
            msg.body = Some(Arc::new(BODY.to_vec()));
        }
        let res = conn.send(&msg, &log).await;
        assert_eq!(code(&res.rcpts[0].1), ("delivered", 250));
    }
    assert_eq!(conn.transactions(), 2);
    conn.quit(&log).await;
    let verbs: Vec<String> = sink
        .commands()
        .iter()
        .map(|c| c.split([' ', ':']).next().unwrap().to_string())
        .collect();
    // After the reply to the final dot the server has reset the transaction itself
    // (RFC 5321 4.1.1.4): no RSET is needed before the next MAIL.
    assert_eq!(
        verbs,
        ["EHLO", "MAIL", "RCPT", "DATA", "<53", ".", "MAIL", "RCPT", "DATA", "<53", ".", "QUIT"]
    );
    let got = sink.messages();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].bytes, got[1].bytes);
    assert_eq!(
        log.texts(),
        vec![
            format!(
                "New SMTP DCID 1 interface 127.0.0.1 address 127.0.0.1 port {}",
                sink.addr.port()
            ),
            "Delivery start DCID 1 MID 11 to RID [0]".into(),
            "Message done DCID 1 MID 11 to RID [0]".into(),
            "Delivery start DCID 1 MID 12 to RID [0]".into(),
            "Message done DCID 1 MID 12 to RID [0]".into(),
            "DCID 1 close".into(),
        ]
    );
}

#[tokio::test]
async fn size_and_smtputf8_are_respected() {
    let dir = tempfile::tempdir().unwrap();
    let sink = plain_sink(|c| {
        c.size = Some(1000);
        c.smtputf8 = false;
    })
    .await;
    let log = Collect::default();
    let mut conn = open_plain(&sink, &log).await;
    let big = message(dir.path(), 20, &["a@tls.test"], &[b'x'; 2000]);
    let res = conn.send(&big, &log).await;
    let RcptOutcome::PermFail(r) = &res.rcpts[0].1 else {
        panic!("{res:?}")
    };
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (552, "5.3.4".into())
    );
    let mut utf8 = message(dir.path(), 21, &["a@tls.test"], BODY);
    utf8.smtputf8 = true;
    let res = conn.send(&utf8, &log).await;
    let RcptOutcome::PermFail(r) = &res.rcpts[0].1 else {
        panic!("{res:?}")
    };
    assert_eq!(
        (r.code, r.enhanced.unwrap().to_string()),
        (553, "5.6.7".into())
    );
    let ok = message(dir.path(), 22, &["a@tls.test"], BODY);
    let res = conn.send(&ok, &log).await;
    assert_eq!(code(&res.rcpts[0].1), ("delivered", 250));
    conn.quit(&log).await;
    let mails: Vec<String> = sink
        .commands()
        .into_iter()
        .filter(|c| c.starts_with("MAIL"))
        .collect();
    assert_eq!(
        mails,
        vec![format!(
            "MAIL FROM:<sender@origin.test> SIZE={}",
            BODY.len()
        )]
    );
}

#[tokio::test]
async fn lost_connection_and_timeout_leave_recipients_temporary() {
    let dir = tempfile::tempdir().unwrap();
    // The server drops the connection at the second RCPT.
    let sink = plain_sink(|c| {
        c.pipelining = false;
        c.rcpt_replies = vec![("drop@tls.test".into(), "DROP".into())];
    })
    .await;
    let log = Collect::default();
    let mut conn = open_plain(&sink, &log).await;
    let msg = message(dir.path(), 30, &["a@tls.test", "drop@tls.test"], BODY);
    let res = conn.send(&msg, &log).await;
    assert!(res.connection_lost);
    assert!(!conn.is_usable());
    let got: Vec<_> = res.rcpts.iter().map(|(_, o)| code(o)).collect();
    assert_eq!(got, vec![("temp", 451), ("temp", 451)]);
    assert!(res.rcpts[0]
        .1
        .reply()
        .text
        .contains("lost connection with 127.0.0.1"));
    conn.quit(&log).await;

    // The server never answers RCPT: the rcpt timeout fires.
    let sink = plain_sink(|c| {
        c.rcpt_replies = vec![("stall@tls.test".into(), "STALL".into())];
    })
    .await;
    let ctx = Arc::new(OutboundTlsContext::new(None).unwrap());
    let mut set = settings(&ctx, OutboundTls::No, None);
    set.timeouts.rcpt = Duration::from_millis(300);
    let mut conn = Connection::open(2, &target(sink.addr), &set, &log)
        .await
        .unwrap();
    let msg = message(dir.path(), 31, &["stall@tls.test"], BODY);
    let started = std::time::Instant::now();
    let res = conn.send(&msg, &log).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(res.connection_lost);
    let RcptOutcome::TempFail(r) = &res.rcpts[0].1 else {
        panic!("{res:?}")
    };
    assert_eq!(
        r.to_string(),
        "451 4.4.2 lost connection with 127.0.0.1: timeout waiting for the reply to RCPT"
    );
    // Further sends on a broken connection fail fast.
    let again = conn.send(&msg, &log).await;
    assert!(again.connection_lost);
    conn.quit(&log).await;
}

#[tokio::test]
async fn helo_fallback_greeting_refusal_and_connect_failure() {
    let log = Collect::default();
    let ctx = Arc::new(OutboundTlsContext::new(None).unwrap());
    let dir = tempfile::tempdir().unwrap();

    let sink = plain_sink(|c| c.reject_ehlo = true).await;
    let set = settings(&ctx, OutboundTls::Preferred, None);
    let mut conn = Connection::open(1, &target(sink.addr), &set, &log)
        .await
        .unwrap();
    assert!(!conn.capabilities().esmtp);
    assert_eq!(conn.tls(), &TlsOutcome::NotOffered);
    let res = conn
        .send(&message(dir.path(), 40, &["a@tls.test"], BODY), &log)
        .await;
    assert_eq!(code(&res.rcpts[0].1), ("delivered", 250));
    conn.quit(&log).await;
    assert_eq!(
        &sink.commands()[..2],
        ["EHLO mxgate.test", "HELO mxgate.test"]
    );

    let sink = plain_sink(|c| c.greeting = "554 5.7.1 go away".into()).await;
    let err = Connection::open(2, &target(sink.addr), &set, &log)
        .await
        .unwrap_err();
    assert_eq!(err.enhanced, "4.4.2");
    assert_eq!(err.reply.as_ref().map(|r| r.code), Some(554));
    assert!(!err.required_tls_failure);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sink.commands(), ["QUIT"]);

    // Nothing listens on this port (bound, then closed).
    let port = support::closed_addr();
    log.clear();
    let err = Connection::open(3, &target(port), &set, &log)
        .await
        .unwrap_err();
    assert_eq!(err.enhanced, "4.4.1");
    assert!(log.texts().is_empty(), "no DCID line without a connection");
}

#[tokio::test]
async fn bytes_after_the_starttls_220_abort_the_connection() {
    let sink = Sink::start_with(SinkConfig {
        tls: ServerTls::Offer(server_config(self_signed(&[DOMAIN], None))),
        extra_after_starttls: true,
        ..SinkConfig::default()
    })
    .await;
    let log = Collect::default();
    let ctx = Arc::new(OutboundTlsContext::new(None).unwrap());
    let set = settings(&ctx, OutboundTls::Preferred, None);
    let err = Connection::open(1, &target(sink.addr), &set, &log)
        .await
        .unwrap_err();
    assert!(!err.required_tls_failure);
    assert_eq!(err.enhanced, "4.7.5");
    assert!(log.texts().contains(
        &"DCID 1 TLS failed: 14 bytes sent by the server after its 220 reply to STARTTLS".into()
    ));
    assert!(sink.state.lock().unwrap().sni.is_empty(), "no handshake");
}

#[tokio::test]
async fn capabilities_are_relearned_over_tls() {
    let sink = Sink::start_with(SinkConfig {
        tls: ServerTls::Offer(server_config(self_signed(&[DOMAIN], None))),
        ..SinkConfig::default()
    })
    .await;
    let log = Collect::default();
    let ctx = Arc::new(OutboundTlsContext::new(None).unwrap());
    let set = settings(&ctx, OutboundTls::Required, None);
    let conn = Connection::open(1, &target(sink.addr), &set, &log)
        .await
        .unwrap();
    assert!(
        !conn.capabilities().starttls,
        "EHLO over TLS no longer offers STARTTLS"
    );
    assert!(conn.capabilities().pipelining);
    conn.quit(&log).await;
    let cmds = sink.commands();
    assert_eq!(
        cmds,
        ["EHLO mxgate.test", "STARTTLS", "EHLO mxgate.test", "QUIT"]
    );
}

// ---- Postfix smtp-sink ----

async fn dumped_messages(dir: &Path, n: usize) -> Vec<String> {
    for _ in 0..100 {
        let mut found: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
            .collect();
        if found.len() >= n && found.iter().all(|m| m.contains("hello")) {
            found.sort();
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("smtp-sink did not dump {n} messages in {}", dir.display());
}

/// smtp-sink has no TLS at all: it plays state (a) of the table, so it shows the
/// plaintext happy path of every mode that allows plaintext, and the refusal of
/// the required modes, against Postfix's own SMTP server code.
#[tokio::test]
async fn postfix_smtp_sink_plain_delivery_and_required_refusal() {
    if !smtp_sink_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sink = start_smtp_sink(dir.path()).await;
    let ctx = Arc::new(OutboundTlsContext::new(None).unwrap());
    let mut delivered = 0;
    for (i, mode) in OutboundTls::ALL.into_iter().enumerate() {
        let log = Collect::default();
        let set = settings(&ctx, mode, None);
        let opened = Connection::open(1, &target(sink.addr), &set, &log).await;
        if mode.is_required() {
            let err = opened.expect_err("required TLS against a server without STARTTLS");
            assert!(err.required_tls_failure);
            assert_eq!(err.tls, TlsOutcome::NotOffered);
            assert!(log.texts().contains(
                &"DCID 1 IP 127.0.0.1 TLS was required but could not be successfully negotiated \
                  (destination tls.test)"
                    .to_string()
            ));
            continue;
        }
        let mut conn = opened.unwrap();
        assert!(
            conn.capabilities().pipelining,
            "smtp-sink offers PIPELINING"
        );
        let mid = 100 + i as u64;
        let msg = message(dir.path(), mid, &["a@tls.test", "b@tls.test"], BODY);
        let res = conn.send(&msg, &log).await;
        for (_, o) in &res.rcpts {
            assert_eq!(code(o), ("delivered", 250), "{mode}: {res:?}");
        }
        conn.quit(&log).await;
        delivered += 1;
        assert!(log
            .texts()
            .contains(&format!("Message done DCID 1 MID {mid} to RID [0, 1]")));
    }
    let dumps = dumped_messages(&sink.dir, delivered).await;
    assert_eq!(dumps.len(), delivered);
    for d in &dumps {
        // smtp-sink does not announce SIZE, so no SIZE= parameter is sent.
        assert!(d.contains("X-Mail-Args: <sender@origin.test>\n"), "{d}");
        assert!(
            d.contains("X-Rcpt-Args: <a@tls.test>\nX-Rcpt-Args: <b@tls.test>\n"),
            "{d}"
        );
        assert!(
            d.ends_with("Subject: test\nMessage-ID: <t@origin.test>\n\nhello\n\n"),
            "{d}"
        );
    }
}

// ---- Postfix smtpd (STARTTLS) in front of smtp-sink ----

/// The STARTTLS happy path against Postfix's real smtpd (which proxies the
/// transaction to smtp-sink): `preferred` encrypts, `required-verify` and
/// `required-verify-hosted` verify the test-CA certificate for tls.test.
#[tokio::test]
async fn postfix_smtpd_starttls_happy_path() {
    if !smtp_sink_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let ca_file = dir.path().join("test-ca.pem");
    pki.write_ca(&ca_file);
    let cert = pki.leaf(&[DOMAIN], Some(DOMAIN));
    let opts = PostfixOptions {
        myhostname: "postfix.test",
        tls: Some(&cert),
        ..PostfixOptions::default()
    };
    let Some(pf) = postfix::start_or_skip(dir.path(), &opts).await else {
        return;
    };
    let ctx = Arc::new(OutboundTlsContext::new(None).unwrap());
    let modes = [
        OutboundTls::Preferred,
        OutboundTls::RequiredVerify,
        OutboundTls::RequiredVerifyHosted,
    ];
    for (i, mode) in modes.into_iter().enumerate() {
        let log = Collect::default();
        let set = settings(&ctx, mode, Some(&ca_file));
        let mut conn = Connection::open(1, &target(pf.addr), &set, &log)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        let TlsOutcome::Success { verified, .. } = conn.tls().clone() else {
            panic!("{mode}: {:?}", conn.tls())
        };
        assert_eq!(verified, mode.verifies().then_some(true), "{mode}");
        assert!(
            conn.capabilities().size.is_some(),
            "EHLO over TLS learned SIZE"
        );
        let mid = 200 + i as u64;
        let msg = message(dir.path(), mid, &["a@tls.test"], BODY);
        let res = conn.send(&msg, &log).await;
        assert_eq!(code(&res.rcpts[0].1), ("delivered", 250), "{mode}: {res:?}");
        conn.quit(&log).await;
        let tls_line = log
            .texts()
            .into_iter()
            .find(|l| l.starts_with("DCID 1 TLS"))
            .unwrap();
        assert!(
            tls_line.starts_with("DCID 1 TLS success protocol TLSv1."),
            "{tls_line}"
        );
        if mode.verifies() {
            assert!(tls_line.ends_with(" verified DNS:tls.test"), "{tls_line}");
        } else {
            assert!(!tls_line.contains("verified"), "{tls_line}");
        }
    }
    let dumps = dumped_messages(&pf.sink.dir, modes.len()).await;
    assert_eq!(dumps.len(), modes.len());
    for d in &dumps {
        assert!(d.contains("X-Rcpt-Args: <a@tls.test>"), "{d}");
        assert!(d.contains("\n\nhello\n"), "{d}");
    }
}
