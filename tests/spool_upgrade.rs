//! A spool written by the version before the one-file queue format (issue 16): the built
//! binary lists its messages and delivers each exactly once, envelope intact.
//!
//! `tests/fixtures/spool_v1` holds the exact files that version wrote (`queue/N.msg` body,
//! `queue/N.env` envelope, `queue/N.dlv` delivery state, and the id counters), made by
//! running it against an internal server that took `early@…` and deferred every other
//! recipient (451), then stopping it:
//! - MID 1 `alice@sender.example` → `early@example.com` (delivered, `rid 0 delivered` in its
//!   state), `carol@example.com` (deferred);
//! - MID 2 from the null sender → `postmaster@example.com`;
//! - MID 3 `bob@sender.example`, `BODY=8BITMIME`, 188 KiB (spilled to disk when received)
//!   → `dave@example.com`, `erin@sub.example.com`.

mod support;

use std::path::Path;
use std::time::Duration;

use support::sink::Sink;
use support::{copy_dir, relay_config, repo, wait_until, Client, Mxgate};

/// `mxgate queue ARGS --spool-dir SPOOL`: (success, stdout and stderr).
fn queue(args: &[&str], spool: &Path) -> (bool, String) {
    let out = support::mxgate::bin()
        .arg("queue")
        .args(args)
        .arg("--spool-dir")
        .arg(spool)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_in_the_old_format_is_listed_and_each_message_delivered_once() {
    let fixture = repo().join("tests/fixtures/spool_v1");
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    copy_dir(&fixture, &spool);

    // Before the server runs: the old files are listed as they are.
    let (ok, list) = queue(&["list"], &spool);
    assert!(ok, "{list}");
    let row = |mid: u64| {
        list.lines()
            .find(|l| l.starts_with(&format!("{mid} ")))
            .unwrap_or_else(|| panic!("MID {mid} not listed:\n{list}"))
            .to_string()
    };
    let one = row(1);
    assert!(
        one.contains("alice@sender.example") && one.contains("carol@example.com"),
        "{one}"
    );
    assert!(!one.contains("early@"), "RID 0 was delivered: {one}");
    assert!(row(2).contains("<>") && row(2).contains("postmaster@example.com"));
    let three = row(3);
    let size3 = std::fs::metadata(fixture.join("queue/3.msg"))
        .unwrap()
        .len();
    assert!(
        three.contains(&format!(" {size3} ")) && three.contains("dave@example.com, erin@"),
        "{three}"
    );
    assert!(list.contains("-- 3 message(s) in queue"), "{list}");
    let (ok, show) = queue(&["show", "1"], &spool);
    assert!(
        ok && show.contains("RID 0 early@example.com delivered")
            && show.contains("RID 1 carol@example.com pending"),
        "{show}"
    );

    // The server starts on it with the internal server up: everything pending goes out once.
    let sink = Sink::start("127.0.0.1:0").await;
    let cfg = relay_config(sink.addr, "1s");
    let srv = Mxgate::start(cfg.path(), work.path());
    wait_until("every pending recipient delivered", || {
        sink.messages().iter().map(|m| m.rcpts.len()).sum::<usize>() >= 4
    })
    .await;
    wait_until("old files gone from queue/", || {
        std::fs::read_dir(spool.join("queue")).unwrap().count() == 0
    })
    .await;
    // Two retry periods more: nothing is sent again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut got: Vec<(String, String, Vec<u8>, bool)> = sink
        .messages()
        .iter()
        .flat_map(|m| {
            m.rcpts.iter().map(|r| {
                (
                    m.from.clone(),
                    r.clone(),
                    m.bytes.clone(),
                    m.mail_cmd.contains("BODY=8BITMIME"),
                )
            })
        })
        .collect();
    got.sort();
    let body = |mid: u64| std::fs::read(fixture.join(format!("queue/{mid}.msg"))).unwrap();
    let want = vec![
        ("".into(), "postmaster@example.com".into(), body(2), false),
        (
            "alice@sender.example".into(),
            "carol@example.com".into(),
            body(1),
            false,
        ),
        (
            "bob@sender.example".into(),
            "dave@example.com".into(),
            body(3),
            true,
        ),
        (
            "bob@sender.example".into(),
            "erin@sub.example.com".into(),
            body(3),
            true,
        ),
    ];
    assert_eq!(got.len(), want.len(), "deliveries: {:?}", summary(&got));
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((&g.0, &g.1, g.3), (&w.0, &w.1, w.3), "{:?}", summary(&got));
        assert!(g.2 == w.2, "body of {} to {} differs", g.0, g.1);
    }
    let (ok, list) = queue(&["list"], &spool);
    assert!(ok && list.contains("-- 0 message(s) in queue"), "{list}");

    // A new message gets a MID after the old ones (the counters came along) and goes out.
    let mut c = Client::connect(srv.addr("off"), None).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    let r = c
        .send_mail(
            "new@sender.example",
            &["frank@example.com"],
            "Subject: new\r\n\r\nhi\r\n",
        )
        .await;
    let mid: u64 = r.trim_end().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(mid > 3, "{r}");
    wait_until("the new message delivered", || {
        sink.messages()
            .iter()
            .any(|m| m.rcpts == ["frank@example.com"])
    })
    .await;
    srv.stop();
}

/// (sender, recipient) of each delivery, for failure messages.
fn summary(got: &[(String, String, Vec<u8>, bool)]) -> Vec<(&str, &str)> {
    got.iter().map(|g| (g.0.as_str(), g.1.as_str())).collect()
}
