//! The probe pool against scripted SMTP servers: reply mapping, reuse, coalescing, shedding.

use super::*;
use crate::validate::verdict::Verdict;
use std::sync::atomic::AtomicUsize;
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

#[test]
fn rcpt_codes_map_to_verdicts() {
    for c in [250, 251, 252] {
        assert_eq!(classify_rcpt(c), Verdict::Valid);
    }
    for c in [550, 551, 553, 554] {
        assert_eq!(classify_rcpt(c), Verdict::Invalid);
    }
    assert_eq!(
        classify_rcpt(450),
        Verdict::TempFail(TempFailCause::Server4xx)
    );
    assert_eq!(
        classify_rcpt(354),
        Verdict::TempFail(TempFailCause::Protocol)
    );
}

/// A scripted SMTP server: `rcpt` answers each RCPT; counts connections.
async fn server(
    rcpt: fn(&str) -> &'static str,
    mail: &'static str,
) -> (SocketAddr, std::sync::Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = std::sync::Arc::new(AtomicUsize::new(0));
    let n = conns.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                w.write_all(b"220 internal.test ESMTP\r\n").await.unwrap();
                let mut line = String::new();
                while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                    let up = line.to_ascii_uppercase();
                    let reply = if up.starts_with("EHLO") {
                        "250-internal.test\r\n250 PIPELINING\r\n"
                    } else if up.starts_with("MAIL") {
                        mail
                    } else if up.starts_with("RCPT") {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        rcpt(&line)
                    } else if up.starts_with("RSET") {
                        "250 2.0.0 Ok\r\n"
                    } else if up.starts_with("QUIT") {
                        let _ = w.write_all(b"221 2.0.0 Bye\r\n").await;
                        return;
                    } else {
                        "502 5.5.2 Error\r\n"
                    };
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    (addr, conns)
}

fn alice_only(line: &str) -> &'static str {
    if line.contains("<alice@") {
        "250 2.1.5 Ok\r\n"
    } else if line.contains("<busy@") {
        "450 4.2.1 Mailbox busy\r\n"
    } else {
        "550 5.1.1 <x>: Recipient address rejected: User unknown in relay recipient table\r\n"
    }
}

#[tokio::test]
async fn probes_share_a_kept_open_connection() {
    let (addr, conns) = server(alice_only, "250 2.1.0 Ok\r\n").await;
    let pool = ProbePool::new(addr, CallaheadSettings::default());
    let a = pool.check("alice@example.test").await;
    assert_eq!(a.verdict, Verdict::Valid, "{a:?}");
    let a = pool.check("nobody@example.test").await;
    assert_eq!(a.verdict, Verdict::Invalid);
    assert!(a.detail.contains("550 5.1.1"), "{}", a.detail);
    let a = pool.check("busy@example.test").await;
    assert_eq!(a.verdict, Verdict::TempFail(TempFailCause::Server4xx));
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    assert_eq!(pool.connections_opened(), 1);
    pool.close_idle().await;
}

#[tokio::test]
async fn identical_lookups_in_flight_make_one_probe() {
    let (addr, _) = server(alice_only, "250 2.1.0 Ok\r\n").await;
    let pool = ProbePool::new(addr, CallaheadSettings::default());
    let all = join_all((0..10).map(|_| pool.check("nobody@example.test")).collect()).await;
    assert!(all.iter().all(|a| a.verdict == Verdict::Invalid));
    assert_eq!(pool.probes_sent(), 1);
}

#[tokio::test]
async fn over_the_waiting_cap_lookups_are_shed() {
    let (addr, conns) = server(alice_only, "250 2.1.0 Ok\r\n").await;
    let pool = ProbePool::new(
        addr,
        CallaheadSettings {
            max_concurrency: 1,
            max_waiting: 2,
            ..CallaheadSettings::default()
        },
    );
    let addrs: Vec<String> = (0..6).map(|i| format!("u{i}@example.test")).collect();
    let answers = join_all(addrs.iter().map(|a| pool.check(a)).collect()).await;
    let shed = answers
        .iter()
        .filter(|a| a.verdict == Verdict::TempFail(TempFailCause::Shed))
        .count();
    // One probing, two waiting, the rest shed.
    assert_eq!(shed, 3, "{answers:?}");
    assert_eq!(conns.load(Ordering::SeqCst), 1, "one connection at most");
}

/// Polls the lookups together, so they overlap in time.
async fn join_all<F: std::future::Future<Output = Answer>>(fs: Vec<F>) -> Vec<Answer> {
    let mut futs: Vec<_> = fs.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<Answer>> = vec![None; futs.len()];
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(a) => done[i] = Some(a),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    done.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn a_refused_null_sender_is_a_tempfail() {
    let (addr, _) = server(alice_only, "553 5.1.7 Null sender not allowed\r\n").await;
    let pool = ProbePool::new(addr, CallaheadSettings::default());
    let a = pool.check("alice@example.test").await;
    assert_eq!(a.verdict, Verdict::TempFail(TempFailCause::MailRefused));
    assert!(
        a.detail.contains("MAIL FROM:<> refused: 553"),
        "{}",
        a.detail
    );
}

#[tokio::test]
async fn a_silent_server_is_a_timeout_and_a_closed_port_refused() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let pool = ProbePool::new(
        addr,
        CallaheadSettings {
            timeout: Duration::from_millis(200),
            ..CallaheadSettings::default()
        },
    );
    let a = pool.check("alice@example.test").await;
    assert_eq!(a.verdict, Verdict::TempFail(TempFailCause::Timeout));
    drop(l);
    let a = pool.check("alice@example.test").await;
    assert_eq!(
        a.verdict,
        Verdict::TempFail(TempFailCause::Refused),
        "{a:?}"
    );
}

#[tokio::test]
async fn an_address_that_would_inject_commands_is_not_sent() {
    let (addr, conns) = server(alice_only, "250 2.1.0 Ok\r\n").await;
    let pool = ProbePool::new(addr, CallaheadSettings::default());
    for bad in [
        "a@example.test>\r\nRCPT TO:<b@example.test",
        "a\n@example.test",
        "<a@x>",
    ] {
        let a = pool.check(bad).await;
        assert_eq!(
            a.verdict,
            Verdict::TempFail(TempFailCause::Protocol),
            "{bad:?}"
        );
    }
    assert_eq!(conns.load(Ordering::SeqCst), 0, "nothing was sent");
}

#[tokio::test]
async fn a_connection_is_replaced_after_its_share_of_refusals() {
    let (addr, conns) = server(alice_only, "250 2.1.0 Ok\r\n").await;
    let pool = ProbePool::new(
        addr,
        CallaheadSettings {
            max_refusals_per_connection: 4,
            ..CallaheadSettings::default()
        },
    );
    for i in 0..10 {
        let a = pool.check(&format!("x{i}@example.test")).await;
        assert_eq!(a.verdict, Verdict::Invalid);
        // Valid answers do not count.
        assert_eq!(
            pool.check("alice@example.test").await.verdict,
            Verdict::Valid
        );
    }
    assert_eq!(conns.load(Ordering::SeqCst), 3, "4 + 4 + 2 refusals");
}
