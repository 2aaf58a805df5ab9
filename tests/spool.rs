//! The spool on disk: commits under a small blocking pool, file modes, the free-file pool and
//! its ordering against the `queue/` directory fsync, and space on a small real tmpfs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use mxgate::spool::{Envelope, Spool};

fn env(mid: u64) -> Envelope {
    Envelope {
        mid,
        icid: 1,
        listener: "inbound".into(),
        sender_group: "ALL".into(),
        policy: "ACCEPTED".into(),
        peer_ip: "192.0.2.1".parse().unwrap(),
        helo: "client.example".into(),
        from: "a@b.example".into(),
        rcpts: vec!["c@example.com".into()],
        received_unix: 1_700_000_000,
        tls: None,
    }
}

/// Receives and commits one message of `body` (blocking).
fn commit(spool: &Spool, body: &[u8]) -> u64 {
    let mid = spool.next_mid().unwrap();
    let mut inc = spool.begin(mid);
    inc.write(body).unwrap();
    spool.commit(inc, &env(mid)).unwrap();
    mid
}

#[test]
fn trust_04_commits_finish_when_they_fill_the_blocking_pool() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path()).unwrap());
    // Like the connection driver: each commit runs on the blocking pool, here capped at 2
    // threads, with more commits than that at once. A commit that waits for another blocking
    // task of the same pool (its second fsync) waits forever once every thread is a commit.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let s = spool.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .build()
            .unwrap();
        rt.block_on(async move {
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let s = s.clone();
                    tokio::task::spawn_blocking(move || commit(&s, b"hello\r\n"))
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        let _ = done_tx.send(());
    });
    // A bound on a deadlock, not a performance assertion: 8 small commits take milliseconds.
    done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("commits on a full blocking pool never finished (deadlock)");
    assert_eq!(spool.queued_mids().len(), 8);
}
