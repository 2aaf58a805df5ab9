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
    let mid = support::queued_mid(&r);
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

/// Damaged queues (issue 16): a file cut inside its body is refused by the server (kept,
/// logged, never sent short) and listed as damaged, not hidden; a file whose name and
/// envelope disagree is shown under the envelope's MID with a note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_file_is_kept_and_listed_as_damaged_and_a_misnamed_one_is_noted() {
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let down = relay_config(support::closed_addr(), "1h");
    let mut srv = Mxgate::start(down.path(), work.path());
    let mut mids = Vec::new();
    for id in ["cut-1", "renamed-2", "whole-3"] {
        let mut c = Client::connect(srv.addr("preferred"), None).await;
        c.reply().await;
        c.cmd("EHLO damage.test").await;
        let body = format!(
            "Message-ID: <{id}>\r\nSubject: {id}\r\n\r\n{}\r\n",
            "x".repeat(300)
        );
        let r = c
            .send_mail("alice@other.example", &["bob@example.com"], &body)
            .await;
        assert!(r.starts_with("250 2.0.0"), "{r}");
        mids.push(support::queued_mid(&r));
        c.cmd("QUIT").await;
    }
    srv.kill();
    let (cut, renamed, whole) = (mids[0], mids[1], mids[2]);
    let q = spool.join("queue");
    let cut_file = q.join(format!("{cut}.mail"));
    let len = std::fs::metadata(&cut_file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut_file)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    std::fs::rename(q.join(format!("{renamed}.mail")), q.join("900.mail")).unwrap();

    let (ok, list) = queue(&["list"], &spool);
    assert!(ok, "{list}");
    let damaged = format!("{cut:<10} damaged: queue file truncated: body of ");
    assert!(
        list.lines()
            .any(|l| l.starts_with(&damaged)
                && l.ends_with(&format!("were queued (queue/{cut}.mail)"))),
        "{list}"
    );
    assert!(
        list.contains(&format!(
            "file queue/900.mail holds MID {renamed}: its name and its envelope disagree"
        )),
        "{list}"
    );
    assert!(
        list.contains("-- 2 message(s) in queue ")
            && list.contains(", 1 damaged file(s) left alone (see above)"),
        "{list}"
    );
    let (ok, show) = queue(&["show", &cut.to_string()], &spool);
    assert!(!ok && show.starts_with(&damaged), "{show}");
    let (ok, show) = queue(&["show", &renamed.to_string()], &spool);
    assert!(
        ok && show.contains(&format!("mid {renamed}\n"))
            && show.contains(&format!("note file queue/900.mail holds MID {renamed}")),
        "{show}"
    );
    let (ok, show) = queue(&["show", "900"], &spool);
    assert!(
        !ok && show.contains(&format!("file 900.mail holds MID {renamed}")),
        "{show}"
    );

    // The server delivers the others and leaves the cut file alone, saying why.
    let sink = Sink::start("127.0.0.1:0").await;
    let up = relay_config(sink.addr, "1h");
    let srv = Mxgate::start(up.path(), work.path());
    wait_until("the whole messages delivered", || {
        let ids = sink.message_ids();
        ids.contains(&"whole-3".to_string()) && ids.contains(&"renamed-2".to_string())
    })
    .await;
    srv.wait_log(&format!(
        "Warning: mxgate: MID {cut} queue file unreadable, left in queue: queue file truncated: body of"
    ));
    assert!(cut_file.exists(), "the cut file is kept");
    assert!(!sink.message_ids().contains(&"cut-1".to_string()));
    let _ = whole;
    srv.stop();
}
