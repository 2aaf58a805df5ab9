//! `/ready` follows the spool's filesystem: `503` with the reason while free space is below the
//! threshold, or for a while after a spool write failed for lack of space (a real full tmpfs,
//! which needs root), and `200` again once space is back. In a test binary of its own because
//! the failed-write state is process-wide: another test queueing mail would clear it.

mod support;

use support::{Client, Server};

/// The two tests share the process-wide failed-write state: they take turns.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MSG: &str = "Subject: ready\r\nMessage-ID: <ready@test>\r\n\r\nhello\r\n";

/// The e2e fixture with metrics on a free loopback port and `tweak` applied.
async fn start(tweak: impl FnOnce(&mut mxgate::config::Overrides)) -> Server {
    Server::start("e2e", |o, _| {
        o.metrics_listen = Some(Some("127.0.0.1:0".parse().unwrap()));
        tweak(o);
    })
    .await
}

/// Status code and body of `GET /ready`.
async fn ready(srv: &Server) -> (u16, String) {
    srv.http_get("/ready").await
}

#[tokio::test]
async fn ready_is_503_while_the_spool_filesystem_is_below_the_threshold() {
    let _turn = TURN.lock().await;
    let mut srv = start(|_| {}).await;
    assert_eq!(ready(&srv).await, (200, "ready\n".to_string()));
    let r = srv.running.as_ref().unwrap().ready.clone();
    // No disk has 16 EiB free: the threshold alone turns it to 503, with the numbers.
    r.watch_spool(srv.spool.clone(), u64::MAX);
    let (code, body) = ready(&srv).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("not ready: spool filesystem has ")
            && body.ends_with(" MiB free, needs 17592186044415 MiB\n"),
        "{body:?}"
    );
    r.watch_spool(srv.spool.clone(), mxgate::metrics::SPOOL_MIN_FREE_BYTES);
    assert_eq!(ready(&srv).await, (200, "ready\n".to_string()));
    srv.stop().await;
}

#[tokio::test]
async fn a_spool_write_failing_for_lack_of_space_makes_ready_503_until_mail_is_queued() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let Some((mnt, _unmount)) = support::tiny_tmpfs(dir.path()) else {
        return;
    };
    let spool = mnt.clone();
    let mut srv = start(|o| o.spool_dir = Some(spool)).await;
    // 64 KiB is far below the default threshold.
    let (code, body) = ready(&srv).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("not ready: spool filesystem has ")
            && body.ends_with(" KiB free, needs 256 MiB\n"),
        "{body}"
    );
    // Without a threshold, only failed writes count.
    let r = srv.running.as_ref().unwrap().ready.clone();
    r.watch_spool(mnt.clone(), 0);
    assert_eq!(ready(&srv).await, (200, "ready\n".to_string()));

    let mut c = Client::connect(srv.addr("preferred"), None).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    let r = c
        .send_mail("a@other.example", &["bob@example.com"], MSG)
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let filler = mnt.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 200 * 1024]);
    let r = c
        .send_mail("a@other.example", &["bob@example.com"], MSG)
        .await;
    assert_eq!(r, "452 4.3.1 Insufficient system storage\r\n");
    srv.wait_log(r"Receiving Failed: spool error: .*(os error 28)")
        .await;
    let (code, body) = ready(&srv).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("not ready: a spool write failed for lack of space "),
        "{body:?}"
    );
    // Space is back: the next message is queued, and that proves writing works again.
    std::fs::remove_file(&filler).unwrap();
    let r = c
        .send_mail("a@other.example", &["bob@example.com"], MSG)
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert_eq!(ready(&srv).await, (200, "ready\n".to_string()));
    srv.stop().await;
}
