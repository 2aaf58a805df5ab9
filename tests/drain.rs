//! `mxgate drain` against the built binary, Postfix's smtp-sink as the internal server:
//! under load every message acknowledged with 250 reaches the sink exactly once; new
//! connections get `421 4.3.2`; `/ready` answers 503 during the drain; with the internal
//! server down the deadline passes and the mail stays in the spool for the next start; the
//! command's exit codes (0 drained, 1 mail left, 2 no server).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::postfix::{smtp_sink_available, start_smtp_sink, SmtpSink};
use support::{relay_config, Client, Mxgate};

const DRAINING: &str = "421 4.3.2 mx.test.example Service not available, draining\r\n";

fn start(cfg: &Path, work: &Path) -> Mxgate {
    Mxgate::start_with(cfg, work, &["--metrics-listen", "127.0.0.1:0"])
}

/// One message in its own connection; `Ok(message-id)` when it was acknowledged with 250,
/// `Err(greeting)` on the draining reply, `Err("refused")` when
/// nothing listens any more (the drained server exited).
async fn send_one(addr: SocketAddr, id: &str) -> Result<Option<String>, String> {
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return Err("refused".into());
    };
    let mut c = Client {
        io: tokio::io::BufReader::new(stream),
    };
    let greeting = c.reply().await;
    if greeting == DRAINING {
        return Err(greeting);
    }
    if !greeting.starts_with("220") {
        // The per-IP connection limit (10): this sender's last session is still closing.
        return Ok(None);
    }
    c.cmd("EHLO client.test").await;
    let body = format!("Message-ID: <{id}>\r\nSubject: drain\r\n\r\nbody of {id}\r\n");
    let reply = c
        .send_mail("sender@client.test", &["user@example.com"], &body)
        .await;
    let _ = c.cmd("QUIT").await;
    Ok(reply.starts_with("250").then(|| id.to_string()))
}

/// Message-IDs in the files smtp-sink dumped into `dir`, with how often each came.
fn delivered_ids(dir: &Path) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let text = String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned();
        for line in text.lines() {
            if let Some(id) = line.strip_prefix("Message-ID: <") {
                *ids.entry(id.trim_end_matches('>').to_string()).or_insert(0) += 1;
            }
        }
    }
    ids
}

/// Message-IDs of the messages in the spool's queue.
fn queued_ids(spool: &Path) -> Vec<String> {
    let mut ids: Vec<String> = mxgate::spool::queue_file::list(&spool.join("queue"))
        .into_iter()
        .map(|mid| {
            let body = support::queued_body(spool, mid);
            let line = body
                .lines()
                .find_map(|l| l.strip_prefix("Message-ID: <"))
                .unwrap_or_else(|| panic!("no Message-ID in queued {mid}: {body}"));
            line.trim_end_matches('>').to_string()
        })
        .collect();
    ids.sort();
    ids
}

/// A server relaying to a smtp-sink of its own; the directories live as long as it.
struct Relaying {
    m: Mxgate,
    sink: SmtpSink,
    _dirs: [tempfile::TempDir; 3],
}

async fn relaying() -> Relaying {
    let dir = tempfile::tempdir().unwrap();
    let sink = start_smtp_sink(dir.path()).await;
    let cfg = relay_config(sink.addr, "1s");
    let work = tempfile::tempdir().unwrap();
    let m = start(cfg.path(), work.path());
    Relaying {
        m,
        sink,
        _dirs: [dir, cfg, work],
    }
}

/// Runs `mxgate drain --deadline D` in a thread; its output when it ends.
fn drain_in_background(m: &Mxgate, deadline: &str) -> std::thread::JoinHandle<Output> {
    let mut cmd: Command = m.ctl(&["drain", "--deadline", deadline]);
    std::thread::spawn(move || cmd.output().expect("run mxgate drain"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_under_load_delivers_every_acknowledged_message_once() {
    if !smtp_sink_available() {
        return;
    }
    let Relaying { sink, mut m, _dirs } = relaying().await;
    let addr = m.addr("preferred");
    assert_eq!(m.http_get("/ready").0, 200);

    // Six senders, one message per connection, until the server refuses them.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let refusals = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut senders = Vec::new();
    for s in 0..6 {
        let (acked, refusals) = (acked.clone(), refusals.clone());
        senders.push(tokio::spawn(async move {
            for n in 0.. {
                match send_one(addr, &format!("s{s}.n{n}@drain.test")).await {
                    Ok(Some(id)) => acked.lock().unwrap().push(id),
                    Ok(None) => {}
                    Err(greeting) => {
                        refusals.lock().unwrap().push(greeting);
                        return;
                    }
                }
            }
        }));
    }
    support::wait_until("messages accepted under load", || {
        acked.lock().unwrap().len() >= 30
    })
    .await;

    let mark = m.log_mark();
    let drain = drain_in_background(&m, "60s");
    m.wait_log_after(mark, "Info: drain started: deadline 60s");
    // Out of rotation at once, and a new connection is refused with the draining reply.
    let (code, body) = m.http_get("/ready");
    assert_eq!((code, body.as_str()), (503, "not ready: draining\n"));
    let mut c = Client::connect(addr, None).await;
    assert_eq!(c.read_to_close().await, DRAINING);
    // The log says whom the drain turned away.
    m.wait_log_after(
        mark,
        "Info: interface preferred draining: refused 127.0.0.1",
    );

    for s in senders {
        tokio::time::timeout(Duration::from_secs(30), s)
            .await
            .expect("sender stopped by the drain")
            .unwrap();
    }
    let out = tokio::task::spawn_blocking(move || drain.join().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("drained: queue empty, server exited"),
        "{stdout}"
    );
    let status = m.wait_exit(Duration::from_secs(10)).expect("server exited");
    assert_eq!(status.code(), Some(0));
    m.wait_log_after(mark, "Info: drain finished: no sessions open, queue empty");

    // Every sender ended on the draining reply (or, when its last session ended just before
    // the server exited, on a closed port); every acknowledged message arrived once.
    let refusals = refusals.lock().unwrap().clone();
    assert_eq!(refusals.len(), 6);
    assert!(
        refusals.iter().all(|r| r == DRAINING || r == "refused"),
        "{refusals:?}"
    );
    assert!(refusals.iter().any(|r| r == DRAINING), "{refusals:?}");
    let mut acked = acked.lock().unwrap().clone();
    acked.sort();
    let delivered = delivered_ids(&sink.dir);
    let twice: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(delivered.keys().cloned().collect::<Vec<_>>(), acked);
    assert!(queued_ids(&m.spool()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_leaves_mail_in_the_spool_for_the_next_start() {
    if !smtp_sink_available() {
        return;
    }
    // The internal server is down: nothing can be delivered before the deadline.
    let cfg = relay_config(support::closed_addr(), "1s");
    let work = tempfile::tempdir().unwrap();
    let mut m = start(cfg.path(), work.path());
    let addr = m.addr("preferred");
    let mut acked = Vec::new();
    for n in 0..3 {
        let id = send_one(addr, &format!("late{n}@drain.test"))
            .await
            .unwrap();
        acked.push(id.expect("250"));
    }
    let mark = m.log_mark();
    // A long deadline first; a second `mxgate drain` with a short one replaces it (an
    // operator who ran out of patience): the drain ends 3 s after the second, not after 1 h.
    let first = drain_in_background(&m, "1h");
    m.wait_log_after(mark, "Info: drain started: deadline 3600s");
    assert_eq!(m.http_get("/ready").0, 503);
    let started = Instant::now();
    let drain = drain_in_background(&m, "3s");
    m.wait_log_after(
        mark,
        "Info: drain: new deadline 3s from now (3 messages queued)",
    );
    for (d, is_first) in [(drain, false), (first, true)] {
        let out = tokio::task::spawn_blocking(move || d.join().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        assert!(
            stdout.contains("exited with 3 messages still queued"),
            "{stdout}"
        );
        // The first command follows the new deadline (a longer one would otherwise make it
        // give up on a server that drains as told).
        assert_eq!(
            stdout.contains("another mxgate drain set a new deadline: 3s"),
            is_first,
            "{stdout}"
        );
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(60),
        "{waited:?}"
    );
    let status = m.wait_exit(Duration::from_secs(10)).expect("server exited");
    assert_eq!(
        status.code(),
        Some(75),
        "EX_TEMPFAIL: mail left in the spool"
    );
    m.wait_log_after(
        mark,
        "Info: drain deadline passed: 0 sessions open, 3 messages stay in the spool",
    );
    acked.sort();
    assert_eq!(queued_ids(&m.spool()), acked);

    // The next start delivers them, once the internal server is back.
    let dir = tempfile::tempdir().unwrap();
    let sink = start_smtp_sink(dir.path()).await;
    support::route_all_to(cfg.path(), sink.addr);
    let m = start(cfg.path(), work.path());
    support::wait_until("the queued mail delivered after the restart", || {
        delivered_ids(&sink.dir).len() == 3
    })
    .await;
    assert_eq!(
        delivered_ids(&sink.dir).into_keys().collect::<Vec<_>>(),
        acked
    );
    m.stop();
}

#[test]
fn drain_without_a_running_server_is_an_error() {
    let cfg = relay_config(support::closed_addr(), "1s");
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("spool")).unwrap();
    let out = support::mxgate::bin()
        .arg("drain")
        .args(Mxgate::path_args(cfg.path(), work.path()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no running mxgate on spool"), "{stderr}");
    let out = support::mxgate::bin()
        .args(["drain", "--deadline", "soon"])
        .args(Mxgate::path_args(cfg.path(), work.path()))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad --deadline is a usage error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_session_finishes_its_transaction_then_is_closed_after_the_grace() {
    if !smtp_sink_available() {
        return;
    }
    let Relaying { sink, mut m, _dirs } = relaying().await;
    let addr = m.addr("preferred");
    // A transaction under way when the drain starts.
    let mut c = Client::connect(addr, None).await;
    assert!(c.reply().await.starts_with("220"));
    c.cmd("EHLO client.test").await;
    assert!(c
        .cmd("MAIL FROM:<sender@client.test>")
        .await
        .starts_with("250"));
    assert!(c.cmd("RCPT TO:<user@example.com>").await.starts_with("250"));
    let mark = m.log_mark();
    let drain = drain_in_background(&m, "60s");
    m.wait_log_after(mark, "Info: drain started: deadline 60s, 1 sessions open");
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Message-ID: <open@drain.test>\r\n\r\nbody\r\n.\r\n")
        .await;
    assert!(
        c.reply().await.starts_with("250"),
        "the transaction finishes"
    );
    // The session then idles: after shutdown_grace (5s in the fixture) it is closed.
    let started = Instant::now();
    assert_eq!(
        c.read_to_close().await,
        "421 4.3.2 mx.test.example Service shutting down, closing transmission channel\r\n"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    m.wait_log_after(mark, "Info: drain: closing 1 sessions still open after 5s");
    let out = tokio::task::spawn_blocking(move || drain.join().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        m.wait_exit(Duration::from_secs(10)).unwrap().code(),
        Some(0)
    );
    assert_eq!(
        delivered_ids(&sink.dir).into_iter().collect::<Vec<_>>(),
        vec![("open@drain.test".to_string(), 1)]
    );
}
