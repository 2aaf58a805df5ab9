//! Connection driver under pipelining and stalled clients (issue 11), on real sockets against
//! the in-process server:
//! - a refused (552, too big) message pipelined in front of accepted ones must not cost the
//!   next message its `Received:` header or its body (item 1), proven by a fixed case relayed
//!   to an internal server and by a property test over random split points;
//! - a client that pipelines a burst and never reads its replies is closed by the session
//!   timeout and by shutdown, on plain TCP and over TLS (item 2);
//! - a client that trickles a byte now and then is closed by the command timeout while it
//!   sends a command line, and by the minimum-progress rule during DATA (item 2, slowloris).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::sink::Sink;
use support::{copy_dir, relay_config, repo, wait_until, Client, Server};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

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
    support::queued_mid(reply)
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

/// A copy of the e2e fixture plus a listener "stall" whose whole session lasts `session`.
fn stall_config(session: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("tests/fixtures/e2e"), dir.path());
    std::fs::write(
        dir.path().join("listeners/stall.yaml"),
        format!(
            "name: stall\ntype: public\nbind: [\"127.0.0.1:0\"]\nhostname: mx.test.example\n\
             hat: preferred\nrat: inbound\ntimeouts:\n  session: {session}\n"
        ),
    )
    .unwrap();
    dir
}

/// Connects with a 2 KiB receive buffer (so our replies back up fast) and reads the greeting;
/// returns the connection's ICID too.
async fn connect_small_rcvbuf(srv: &Server, listener: &str) -> (Client<TcpStream>, u64) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(2048).unwrap();
    let s = sock.connect(srv.addr(listener)).await.unwrap();
    let mut c = Client {
        io: BufReader::new(s),
    };
    assert!(c.reply().await.starts_with("220 "));
    let mut icid = 0;
    wait_until("the connection's ICID in the log", || {
        // ESA format: "New SMTP ICID n interface L (ip) address ip" — pick the newest.
        icid = srv
            .log_text()
            .lines()
            .filter(|l| l.contains(&format!("interface {listener} (")))
            .filter_map(|l| l.split("New SMTP ICID ").nth(1))
            .filter_map(|r| r.split(' ').next()?.parse().ok())
            .max()
            .unwrap_or(0);
        icid != 0
    })
    .await;
    (c, icid)
}

/// Pipelines 4 MB of `HELP` and never reads a reply. The task holds the connection open until
/// aborted; the counter says how many bytes the kernel took so far.
fn pipeline_and_never_read<S>(mut s: S) -> (JoinHandle<()>, Arc<AtomicUsize>)
where
    S: AsyncWrite + Unpin + Send + 'static,
{
    let sent = Arc::new(AtomicUsize::new(0));
    let n = sent.clone();
    let task = tokio::spawn(async move {
        let burst = b"HELP\r\n".repeat(64 * 1024 / 6);
        for _ in 0..(4 * 1024 * 1024 / burst.len()) {
            if s.write_all(&burst).await.is_err() {
                break;
            }
            n.fetch_add(burst.len(), Ordering::SeqCst);
        }
        std::future::pending::<()>().await;
        drop(s);
    });
    (task, sent)
}

/// Waits until the client's writes stop making progress: every buffer on the way is full and
/// the server no longer reads (it is stuck writing replies nobody reads).
async fn wait_until_stalled(sent: &AtomicUsize) {
    let mut last = usize::MAX;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sent.load(Ordering::SeqCst);
        if now == last && now > 0 {
            return;
        }
        last = now;
    }
    panic!("the pipelined burst never stalled ({last} bytes sent)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_02_a_client_that_never_reads_is_closed_at_the_session_timeout() {
    let cfg = stall_config("3s");
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;

    // Plain TCP.
    let (c, icid) = connect_small_rcvbuf(&srv, "stall").await;
    let (writer, sent) = pipeline_and_never_read(c.io.into_inner());
    wait_until_stalled(&sent).await;
    srv.wait_log(&format!("ICID {icid} session refused: session timeout"))
        .await;
    srv.wait_log(&format!("ICID {icid} close")).await;
    writer.abort();

    // The same over TLS (replies and the closing close_notify are TLS records).
    let (mut c, icid) = connect_small_rcvbuf(&srv, "stall").await;
    assert!(c.cmd("EHLO client.test").await.contains("STARTTLS"));
    assert!(c.cmd("STARTTLS").await.starts_with("220 "));
    let mut t = c.into_tls().await;
    assert!(t.cmd("EHLO client.test").await.starts_with("250"));
    let (writer, sent) = pipeline_and_never_read(t.io.into_inner());
    wait_until_stalled(&sent).await;
    srv.wait_log(&format!("ICID {icid} session refused: session timeout"))
        .await;
    srv.wait_log(&format!("ICID {icid} close")).await;
    writer.abort();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_02_a_client_that_reads_nothing_for_the_command_timeout_is_closed() {
    // Listener "tiny": `timeouts.command: 2s`, the session as long as the default 30 min.
    let mut srv = Server::start("e2e", |_, _| {}).await;
    let (c, icid) = connect_small_rcvbuf(&srv, "tiny").await;
    let (writer, sent) = pipeline_and_never_read(c.io.into_inner());
    wait_until_stalled(&sent).await;
    srv.wait_log(&format!("ICID {icid} session refused: write timeout"))
        .await;
    srv.wait_log(&format!("ICID {icid} close")).await;
    writer.abort();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_02_shutdown_closes_a_client_that_never_reads() {
    // The default 30 min session: only shutdown can end this connection.
    let mut srv = Server::start("e2e", |_, _| {}).await;
    let (c, icid) = connect_small_rcvbuf(&srv, "preferred").await;
    let (writer, sent) = pipeline_and_never_read(c.io.into_inner());
    wait_until_stalled(&sent).await;
    let running = srv.running.take().unwrap();
    // Grace 1 s, then force_close; generous bound for the rest on a loaded machine.
    let stopped = tokio::time::timeout(
        Duration::from_secs(30),
        running.shutdown(Duration::from_secs(1)),
    )
    .await;
    assert!(
        stopped.is_ok(),
        "shutdown did not finish: a stalled client kept it waiting"
    );
    assert!(srv.log_text().contains(&format!("ICID {icid} close")));
    assert!(srv.log_text().contains("mxgate stopped"));
    writer.abort();
}

/// A copy of the e2e fixture plus a listener "slow": 2 s for a command line and 2 s of
/// silence in DATA, a session of 120 s.
fn slow_config() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("tests/fixtures/e2e"), dir.path());
    std::fs::write(
        dir.path().join("listeners/slow.yaml"),
        "name: slow\ntype: public\nbind: [\"127.0.0.1:0\"]\nhostname: mx.test.example\n\
         hat: preferred\nrat: inbound\n\
         timeouts:\n  command: 2s\n  data: 2s\n  session: 120s\n",
    )
    .unwrap();
    dir
}

/// Sends `bytes` one every 300 ms (well inside every per-read timeout) until the server closes
/// the connection, and returns all the server said meanwhile. Panics when the server is still
/// talking after 60 s, half the session timeout: then only the session timeout ends the trickle.
async fn trickle(c: Client<TcpStream>, bytes: Vec<u8>) -> String {
    assert!(c.io.buffer().is_empty());
    let (mut rd, mut wr) = c.io.into_inner().into_split();
    let writer = tokio::spawn(async move {
        for b in bytes {
            if wr.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        std::future::pending::<()>().await;
        drop(wr);
    });
    let mut said = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), rd.read_to_end(&mut said)).await;
    writer.abort();
    assert!(
        read.is_ok(),
        "still open after 60 s of trickling; the server said {:?}",
        String::from_utf8_lossy(&said)
    );
    String::from_utf8_lossy(&said).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_02_a_client_trickling_a_command_line_is_closed_at_the_command_timeout() {
    let cfg = slow_config();
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let (mut c, icid) = connect_small_rcvbuf(&srv, "slow").await;
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    let line = format!("MAIL FROM:<{}@example.org>\r\n", "a".repeat(400));
    let said = trickle(c, line.into_bytes()).await;
    assert_eq!(
        said,
        "421 4.4.2 mx.test.example Error: timeout exceeded\r\n"
    );
    srv.wait_log(&format!("ICID {icid} session refused: command timeout"))
        .await;
    srv.wait_log(&format!("ICID {icid} close")).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_02_a_client_trickling_data_is_closed_for_lack_of_progress() {
    let cfg = slow_config();
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let (mut c, icid) = connect_small_rcvbuf(&srv, "slow").await;
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@b.example>").await.starts_with("250 "));
    assert!(c.cmd("RCPT TO:<x@example.com>").await.starts_with("250 "));
    assert!(c.cmd("DATA").await.starts_with("354 "));
    let body = format!("Subject: slow\r\n\r\n{}", "b\r\n".repeat(300));
    let said = trickle(c, body.into_bytes()).await;
    assert_eq!(
        said,
        "421 4.4.2 mx.test.example Error: timeout exceeded\r\n"
    );
    srv.wait_log(&format!("ICID {icid} session refused: data timeout"))
        .await;
    srv.wait_log(&format!("ICID {icid} close")).await;
    assert!(
        srv.queued_mids().is_empty(),
        "the cut-off message was spooled"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_02_a_slow_client_sending_whole_lines_in_time_is_not_cut_off() {
    // Each line arrives well inside the 2 s command timeout, the whole session takes longer:
    // the deadline is per command line, counted from our reply.
    let cfg = slow_config();
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let (mut c, _) = connect_small_rcvbuf(&srv, "slow").await;
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let r = c.cmd("NOOP").await;
        assert!(r.starts_with("250 "), "{r:?}");
    }
    assert!(c.cmd("QUIT").await.starts_with("221 "));
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
                let msg = support::queued_body(&srv.spool, mid);
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
