//! A completely full spool (a real tmpfs with not even a block left) must not lock up:
//! delivering is what frees space, so it must never need any, and a server started on a full
//! spool still greets and delivers. Its own test binary: `/ready`'s memory of a recent
//! out-of-space failure is process-wide and would disturb the `/ready` checks of tests/spool.rs.

mod support;

use std::path::Path;

use support::{sink::Sink, Client, Server};

/// A server of the configuration `cfg` with its spool on the tmpfs `mnt`.
async fn full_spool_server(cfg: &Path, mnt: &Path) -> Server {
    let spool = mnt.to_path_buf();
    Server::start_dir(cfg, |o, _| o.spool_dir = Some(spool)).await
}

/// Sends small messages until the spool refuses one for lack of space, then fills what is left
/// with a filler file, so that not even a block is free; returns how many were accepted.
async fn fill_spool_completely(srv: &Server, mnt: &Path) -> usize {
    let body = format!(
        "Subject: fill\r\n\r\n{}",
        format!("{}\r\n", "x".repeat(70)).repeat(12)
    );
    let mut accepted = 0;
    loop {
        let mut c = Client::connect(srv.addr("preferred"), None).await;
        assert!(c.reply().await.starts_with("220"));
        c.cmd("EHLO client.test").await;
        let r = c
            .send_mail("a@other.example", &["bob@example.com"], &body)
            .await;
        c.cmd("QUIT").await;
        if r.starts_with("452 4.3.1") {
            break;
        }
        assert!(r.starts_with("250 2.0.0"), "{r}");
        accepted += 1;
        assert!(accepted < 100, "a 256 KiB spool took {accepted} messages");
    }
    assert!(accepted >= 5, "only {accepted} messages");
    let _ = std::fs::write(mnt.join("filler"), vec![0u8; 256 << 10]);
    assert!(
        std::fs::write(mnt.join("probe"), b"x").is_err(),
        "disk full"
    );
    let _ = std::fs::remove_file(mnt.join("probe"));
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_10_a_full_spool_drains_when_the_internal_server_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let Some((mnt, _unmount)) = support::tmpfs(dir.path(), "256k") else {
        return;
    };
    let port = support::free_port();
    let cfg = support::relay_config(format!("127.0.0.1:{port}").parse().unwrap(), "1s");
    let mut srv = full_spool_server(cfg.path(), &mnt).await;
    let accepted = fill_spool_completely(&srv, &mnt).await;
    // A retry round on the full disk: its delivery states cannot be saved.
    let delayed = |log: &str| log.matches("Info: Delayed: DCID").count();
    let before = delayed(&srv.log_text());
    support::wait_until("retries on the full disk", || {
        delayed(&srv.log_text()) >= before + accepted
    })
    .await;
    // Retries and connections use up the reserved blocks of DCIDs and ICIDs (this stands in
    // for the ~1000 failed attempts that take minutes at the real retry pace).
    let spool = srv.running.as_ref().unwrap().spool.clone();
    tokio::task::spawn_blocking(move || {
        for _ in 0..1100 {
            let _ = spool.next_dcid();
            let _ = spool.next_icid();
        }
    })
    .await
    .unwrap();
    let mut c = Client::connect(srv.addr("preferred"), None).await;
    let greeting = c.reply().await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    c.cmd("QUIT").await;
    // The internal server comes back: everything is delivered, without a restart and with the
    // filler still there, and nothing is left in queue/ (no delivery-state temp file either).
    let sink = Sink::start(&format!("127.0.0.1:{port}")).await;
    support::wait_until("every message delivered", || {
        sink.messages().len() >= accepted
    })
    .await;
    support::wait_until("queue/ empty", || srv.queued().is_empty()).await;
    assert_eq!(sink.messages().len(), accepted);
    assert!(mnt.join("filler").exists());
    let log = srv.log_text();
    assert!(!log.contains("cannot allocate"), "{log}");
    // The space of the delivered messages came back: a new message is accepted.
    let mut c = Client::connect(srv.addr("preferred"), None).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    let r = c
        .send_mail(
            "a@other.example",
            &["bob@example.com"],
            "Subject: again\r\n\r\nhi\r\n",
        )
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_10_a_server_started_on_a_full_spool_greets_and_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let Some((mnt, _unmount)) = support::tmpfs(dir.path(), "256k") else {
        return;
    };
    let port = support::free_port();
    let cfg = support::relay_config(format!("127.0.0.1:{port}").parse().unwrap(), "1s");
    let mut srv = full_spool_server(cfg.path(), &mnt).await;
    let accepted = fill_spool_completely(&srv, &mnt).await;
    srv.stop().await;
    // Restarted on the full disk, with the internal server back.
    let sink = Sink::start(&format!("127.0.0.1:{port}")).await;
    let mut srv = full_spool_server(cfg.path(), &mnt).await;
    let mut c = Client::connect(srv.addr("preferred"), None).await;
    let greeting = c.reply().await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    c.cmd("QUIT").await;
    support::wait_until("every message delivered", || {
        sink.messages().len() >= accepted
    })
    .await;
    support::wait_until("queue/ empty", || srv.queued().is_empty()).await;
    assert_eq!(sink.messages().len(), accepted);
    let log = srv.log_text();
    assert!(!log.contains("cannot allocate"), "{log}");
    srv.stop().await;
}
