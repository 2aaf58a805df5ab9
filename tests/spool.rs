//! The spool on disk: commits under a small blocking pool, file modes, the free-file pool and
//! its ordering against the `queue/` directory fsync, and space on a small real tmpfs.

mod support;

use std::sync::Arc;
use std::time::Duration;

use mxgate::envelope::Envelope;
use mxgate::spool::Spool;

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
        body_8bitmime: false,
    }
}

/// The body of queued message `mid`, read from its queue file after the header.
fn body(spool: &Spool, mid: u64) -> Vec<u8> {
    use std::io::Read;
    let mut b = Vec::new();
    mxgate::spool::queue_file::open_body(&spool.message_path(mid))
        .unwrap()
        .read_to_end(&mut b)
        .unwrap();
    b
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

/// Every directory under `root` (and itself) with its mode, and every other entry with its.
fn modes(root: &std::path::Path) -> Vec<(String, bool, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let m = std::fs::symlink_metadata(&d).unwrap();
        out.push((
            d.display().to_string(),
            true,
            m.permissions().mode() & 0o7777,
        ));
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                let mode = m.permissions().mode() & 0o7777;
                out.push((e.path().display().to_string(), false, mode));
            }
        }
    }
    out
}

#[tokio::test]
async fn trust_08_the_spool_is_private_to_the_server_user() {
    use support::{Client, Server};
    // The internal server is down: the message stays queued with a delivery state.
    let cfg = support::relay_config(support::closed_addr(), "1h");
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let mut c = Client::connect(srv.addr("preferred"), None).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    let r = c
        .send_mail(
            "a@other.example",
            &["bob@example.com"],
            "Subject: private\r\n\r\nsecret\r\n",
        )
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    srv.wait_log(r"Info: Delayed: DCID {n} MID {n} to RID [0]")
        .await;
    let mid = srv.queued_mids()[0];
    support::wait_until("the delivery state on disk", || {
        srv.spool.join(format!("queue/{mid}.dlv")).exists()
    })
    .await;
    let all = modes(&srv.spool);
    let names: Vec<&str> = all.iter().map(|(p, _, _)| p.as_str()).collect();
    for f in [".mail", ".dlv", "mid.counter", "control.sock"] {
        assert!(names.iter().any(|n| n.ends_with(f)), "no {f} in {names:?}");
    }
    let wrong: Vec<_> = all
        .iter()
        .filter(|(_, dir, mode)| *mode != if *dir { 0o700 } else { 0o600 })
        .map(|(p, dir, mode)| format!("{p} ({}) {mode:o}", if *dir { "dir" } else { "file" }))
        .collect();
    assert!(wrong.is_empty(), "group or world access: {wrong:?}");
    srv.stop().await;
}

/// Files in `dir/free`.
fn free_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("free")).unwrap().count()
}

#[test]
fn trust_07_recycled_files_are_reused_only_after_the_queue_directory_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let first = commit(&spool, &[b'a'; 5000]);
    // Renamed into free/, but the removal from queue/ is not durable yet: after a crash,
    // queue/ may still name these files. A new message must not overwrite them until then.
    spool.unlink_message(first);
    assert_eq!(free_files(dir.path()), 1);
    let second = commit(&spool, b"second\r\n");
    assert_eq!(
        free_files(dir.path()),
        1,
        "a commit reused files whose removal from queue/ was not fsynced"
    );
    // The second commit's directory fsync covered the removal: the files are reused now.
    let third = commit(&spool, b"third\r\n");
    assert_eq!(free_files(dir.path()), 0);
    assert_eq!(body(&spool, third), b"third\r\n");
    // The caller's own directory fsync (a delivered batch) releases them too.
    spool.unlink_message(second);
    spool.sync_queue_dir().unwrap();
    assert_eq!(free_files(dir.path()), 1);
    commit(&spool, b"fourth\r\n");
    assert_eq!(free_files(dir.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_10_space_of_delivered_messages_comes_back_without_a_restart() {
    use support::{sink::Sink, Client, Server};
    let dir = tempfile::tempdir().unwrap();
    let Some((mnt, _unmount)) = support::tmpfs(dir.path(), "2m") else {
        return;
    };
    // The internal server is down while the disk fills; it comes up on this port later.
    let port = support::free_port();
    let cfg = support::relay_config(format!("127.0.0.1:{port}").parse().unwrap(), "1s");
    for (file, from, to) in [
        (
            "policies/mail_flow.yaml",
            "max_message_size: 2K",
            "max_message_size: 1M",
        ),
        (
            "mxgate.yaml",
            "  listen: null",
            "  listen: null\n  ready_min_free_space: 1M",
        ),
    ] {
        let p = cfg.path().join(file);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{file}: {text}");
        std::fs::write(&p, text.replace(from, to)).unwrap();
    }
    let spool = mnt.clone();
    let mut srv = Server::start_dir(cfg.path(), |o, _| {
        o.spool_dir = Some(spool);
        o.metrics_listen = Some(Some("127.0.0.1:0".parse().unwrap()));
    })
    .await;
    assert_eq!(srv.http_get("/ready").await.0, 200);
    let body = format!(
        "Subject: big\r\n\r\n{}",
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxy\r\n".repeat(1500)
    );
    assert!(body.len() > 100 << 10);
    let send = |body: String| {
        let addr = srv.addr("preferred");
        async move {
            let mut c = Client::connect(addr, None).await;
            c.reply().await;
            c.cmd("EHLO client.test").await;
            let r = c
                .send_mail("a@other.example", &["bob@example.com"], &body)
                .await;
            c.cmd("QUIT").await;
            r
        }
    };
    // Fill the disk with 100 KiB messages until one is refused for lack of space.
    let mut accepted = 0;
    loop {
        let r = send(body.clone()).await;
        if r.starts_with("452 4.3.1") {
            break;
        }
        assert!(r.starts_with("250 2.0.0"), "{r}");
        accepted += 1;
        assert!(
            accepted < 40,
            "a 2 MiB spool took {accepted} messages of 100 KiB"
        );
    }
    assert!(
        accepted >= 5,
        "only {accepted} messages before the disk was full"
    );
    // The internal server comes up and everything is delivered: the queue is empty.
    let sink = Sink::start(&format!("127.0.0.1:{port}")).await;
    support::wait_until("every message delivered", || {
        sink.messages().len() == accepted
    })
    .await;
    support::wait_until("queue empty", || srv.queued_mids().is_empty()).await;
    // The space of the delivered messages is free again, not pinned by free/.
    support::wait_until("space back on the spool filesystem", || {
        mxgate::metrics::free_space(&mnt).unwrap().bytes >= 3 << 19
    })
    .await;
    // The same message is accepted again, and the gateway is ready, without a restart.
    let r = send(body.clone()).await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let (code, text) = srv.http_get("/ready").await;
    assert_eq!(code, 200, "{text}");
    srv.stop().await;
}

#[test]
fn trust_10_large_bodies_reuse_recycled_files_and_cut_them_to_size() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let big = vec![b'b'; 300 << 10];
    let first = commit(&spool, &big);
    spool.remove_message(first);
    assert_eq!(free_files(dir.path()), 1);
    // A body beyond the in-memory threshold spills into the recycled file, not a new
    // one in tmp/; the shorter content does not keep the old tail.
    let mid = spool.next_mid().unwrap();
    let mut inc = spool.begin(mid);
    let body = vec![b's'; 100 << 10];
    for chunk in body.chunks(4096) {
        inc.write(chunk).unwrap();
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    spool.commit(inc, &env(mid)).unwrap();
    assert_eq!(free_files(dir.path()), 0);
    assert_eq!(self::body(&spool, mid), body);
}

#[test]
fn trust_10_ids_keep_coming_on_a_completely_full_spool() {
    let dir = tempfile::tempdir().unwrap();
    let Some((mnt, _unmount)) = support::tiny_tmpfs(dir.path()) else {
        return;
    };
    let spool = Spool::open(&mnt).unwrap();
    let first = spool.next_dcid().unwrap();
    // Not even a block left: the filler takes what there is (the write stops at ENOSPC).
    let filler = mnt.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 256 << 10]);
    assert!(
        std::fs::write(mnt.join("probe"), b"x").is_err(),
        "disk full"
    );
    // Several reserved blocks' worth of each id: each reservation is written on the full disk.
    let mut last = 0;
    for i in 0..2500 {
        spool.next_mid().unwrap_or_else(|e| panic!("MID {i}: {e}"));
        spool
            .next_icid()
            .unwrap_or_else(|e| panic!("ICID {i}: {e}"));
        last = spool
            .next_dcid()
            .unwrap_or_else(|e| panic!("DCID {i}: {e}"));
    }
    assert_eq!(last, first + 2500);
    // Ids are never reused: a restart on the still full disk continues above them.
    drop(spool);
    let spool = Spool::open(&mnt).unwrap();
    let next = spool.next_dcid().unwrap();
    assert!(next > last, "{next} <= {last}");
    let _ = std::fs::remove_file(mnt.join("probe"));
}
