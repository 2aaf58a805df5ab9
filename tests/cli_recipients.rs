//! `mxgate recipients check` and `mxgate recipients cache list|flush`: the built binary on the
//! validation fixture (`tests/fixtures/validation`), its call-ahead route pointing at a
//! scripted internal server that knows `alice` only and records every RCPT it gets, and
//! `slow.example` routed to a closed port (tempfail). Once with `mxgate serve` running
//! (answers over the control socket, with its cache), once without.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};

use support::mxgate::bin as mxgate;
use support::{closed_addr, copy_dir, repo, Client, Mxgate};

/// The scripted internal server: 250 to `RCPT TO:<alice@...>`, `550 5.1.1` to the rest.
struct Internal {
    addr: SocketAddr,
    rcpts: Arc<Mutex<Vec<String>>>,
}

impl Internal {
    fn start() -> Internal {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let rcpts = Arc::new(Mutex::new(Vec::new()));
        let seen = rcpts.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { break };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    let _ = w.write_all(b"220 internal.test ESMTP\r\n");
                    for line in BufReader::new(s).lines() {
                        let Ok(line) = line else { break };
                        let reply: &[u8] = if line.starts_with("RCPT TO:") {
                            seen.lock().unwrap().push(line.clone());
                            if line.contains("<alice@") {
                                b"250 2.1.5 Ok\r\n"
                            } else {
                                b"550 5.1.1 <x>: Recipient address rejected: User unknown in local recipient table\r\n"
                            }
                        } else if line == "QUIT" {
                            let _ = w.write_all(b"221 2.0.0 Bye\r\n");
                            break;
                        } else {
                            b"250 Ok\r\n"
                        };
                        if w.write_all(reply).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Internal { addr, rcpts }
    }

    /// How many RCPTs named `address`.
    fn rcpts_to(&self, address: &str) -> usize {
        let needle = format!("<{address}>");
        self.rcpts
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&needle))
            .count()
    }
}

/// The validation fixture with `example.com` routed to `internal` and `slow.example` to a
/// closed port.
fn config(internal: SocketAddr) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("tests/fixtures/validation"), dir.path());
    std::fs::write(
        dir.path().join("policies/routes.yaml"),
        format!(
            "routes:\n  - domain: example.com\n    hosts: [{{host: 127.0.0.1, port: {}}}]\n  - domain: slow.example\n    hosts: [{{host: 127.0.0.1, port: {}}}]\n",
            internal.port(),
            closed_addr().port()
        ),
    )
    .unwrap();
    dir
}

/// Exit success, stdout, stderr.
fn run(cmd: &mut std::process::Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `mxgate recipients ARGS` with the path arguments of `cfg` and `work`.
fn recipients(cfg: &Path, work: &Path, args: &[&str]) -> (bool, String, String) {
    run(mxgate()
        .arg("recipients")
        .args(args)
        .args(Mxgate::path_args(cfg, work)))
}

/// The line of `out` starting with `key` (the report's aligned keys).
fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{key:<10}")))
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{out}"))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// An RFC 3339 UTC time within a minute of now, plus `ahead` seconds.
fn assert_time_near(t: &str, ahead: i64) {
    let at = chrono::DateTime::parse_from_rfc3339(t)
        .unwrap_or_else(|e| panic!("{t:?} is not RFC 3339: {e}"));
    assert!(t.ends_with('Z'), "{t} is not UTC");
    assert!(
        (at.timestamp() - (now() + ahead)).abs() < 60,
        "{t} is not now + {ahead}s"
    );
}

#[test]
fn without_a_server_check_answers_from_the_configuration_and_the_cache_file() {
    let internal = Internal::start();
    let cfg = config(internal.addr);
    let work = tempfile::tempdir().unwrap();
    let (cfg, work) = (cfg.path(), work.path());

    // A list entry is decided in memory: the answer is the server's too.
    let (ok, out, err) = recipients(cfg, work, &["check", "anne@lists.example"]);
    assert!(ok, "{out}{err}");
    assert!(
        line(&out, "server").starts_with("server    not running (no running mxgate at "),
        "{out}"
    );
    assert_eq!(
        line(&out, "entry"),
        "entry     entry 2 lists.example (policies/rat.yaml:8:7), action accept"
    );
    assert_eq!(
        line(&out, "validate"),
        "validate  list policies/recipients.txt (1 address, 1 catch-all domain)"
    );
    assert_eq!(
        line(&out, "answer"),
        "answer    valid (listed in policies/recipients.txt)"
    );
    assert_eq!(line(&out, "reply"), "reply     250 2.1.5 Recipient ok");

    // Call-ahead: nothing in the cache file, nothing probed.
    let (ok, out, _) = recipients(cfg, work, &["check", "nobody@example.com"]);
    assert!(ok, "{out}");
    assert!(
        line(&out, "answer").starts_with("answer    unknown: not in the cache file "),
        "{out}"
    );
    assert_eq!(
        line(&out, "reply"),
        "reply     250 2.1.5 Recipient ok if valid, 550 5.1.1 Recipient address rejected: User unknown if invalid, 451 4.4.3 Recipient verification unavailable, try again later without an answer"
    );
    assert_eq!(internal.rcpts_to("nobody@example.com"), 0, "nothing probed");

    // What the cache file says, when it says something.
    let file = work.join("spool/validation/recipients.cache");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let (t, e) = (now() - 10, now() + 3590);
    std::fs::write(
        &file,
        format!("# mxgate recipient validation cache v1\nI\t{t}\t{e}\tcallahead:example.com\tgone@example.com\n"),
    )
    .unwrap();
    let (ok, out, _) = recipients(cfg, work, &["check", "<Gone@Example.com>"]);
    assert!(ok, "{out}");
    assert_eq!(
        line(&out, "answer"),
        format!(
            "answer    invalid, from the cache file {} (nothing asked)",
            file.display()
        )
    );
    assert_eq!(
        line(&out, "reply"),
        "reply     550 5.1.1 Recipient address rejected: User unknown"
    );
    assert_eq!(internal.rcpts_to("gone@example.com"), 0);

    // --no-cache probes from the CLI, and says so.
    let (ok, out, _) = recipients(cfg, work, &["check", "nobody@example.com", "--no-cache"]);
    assert!(ok, "{out}");
    assert_eq!(
        line(&out, "answer"),
        "answer    invalid, probed from the CLI now (no running server; its cache file is not changed)"
    );
    assert_eq!(
        line(&out, "cached"),
        "cached    not stored (probed from the CLI, no running server)"
    );
    assert_eq!(
        line(&out, "reply"),
        "reply     550 5.1.1 Recipient address rejected: User unknown"
    );
    assert_eq!(internal.rcpts_to("nobody@example.com"), 1);

    // The cache commands need the server.
    for args in [
        &["cache", "list"][..],
        &["cache", "flush", "gone@example.com"],
    ] {
        let (ok, out, err) = recipients(cfg, work, args);
        assert!(!ok, "{args:?}: {out}");
        assert!(
            err.starts_with("mxgate: no running mxgate at ")
                && err.contains("the recipient validation cache lives in the running server"),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_list_and_flush_ask_the_running_server() {
    let internal = Internal::start();
    let cfg = config(internal.addr);
    let m = Mxgate::start_in_temp(cfg.path());
    let ask = |args: &[&str]| {
        let mut full = vec!["recipients"];
        full.extend_from_slice(args);
        run(&mut m.ctl(&full))
    };
    let check = |address: &str| {
        let (ok, out, err) = ask(&["check", address]);
        assert!(ok, "{out}{err}");
        assert_eq!(
            line(&out, "server"),
            format!(
                "server    running (pid {}), configuration {}",
                m.pid(),
                cfg.path().display()
            )
        );
        out
    };

    // The list entry: listed, not listed, the catch-all line.
    let out = check("anne@lists.example");
    assert_eq!(
        line(&out, "listener"),
        "listener  inbound (public, RAT inbound)"
    );
    assert_eq!(line(&out, "reply"), "reply     250 2.1.5 Recipient ok");
    let out = check("carol@lists.example");
    assert_eq!(
        line(&out, "answer"),
        "answer    invalid (not listed in policies/recipients.txt)"
    );
    assert_eq!(
        line(&out, "reply"),
        "reply     550 5.1.1 Recipient address rejected: User unknown"
    );
    let out = check("anyone@catchall.example");
    assert_eq!(
        line(&out, "entry"),
        "entry     entry 3 catchall.example (policies/rat.yaml:10:7), action accept"
    );
    assert_eq!(
        line(&out, "answer"),
        "answer    valid (catch-all domain @catchall.example listed in policies/recipients.txt)"
    );

    // Refused by the RAT: which entry, and its 550 5.7.1; nothing validated.
    let out = check("someone@other.example");
    assert_eq!(
        line(&out, "entry"),
        "entry     default (no entry matched), action reject"
    );
    assert_eq!(
        line(&out, "reply"),
        "reply     550 5.7.1 Recipient address rejected"
    );
    assert!(!out.contains("validate "), "{out}");

    // One RCPT through the server: refused after a probe, and cached.
    let mut c = Client::connect(m.addr("inbound"), None).await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    assert!(c
        .cmd("MAIL FROM:<sender@remote.example>")
        .await
        .starts_with("250"));
    assert_eq!(
        c.cmd("RCPT TO:<nobody@example.com>").await,
        "550 5.1.1 Recipient address rejected: User unknown\r\n"
    );
    assert_eq!(internal.rcpts_to("nobody@example.com"), 1);

    let (ok, list, err) = ask(&["cache", "list"]);
    assert!(ok, "{list}{err}");
    assert!(
        list.starts_with(
            "METHOD                 VERDICT  STORED                EXPIRES               ADDRESS\n"
        ),
        "{list}"
    );
    let row = list
        .lines()
        .find(|l| l.ends_with("  nobody@example.com"))
        .unwrap_or_else(|| panic!("no cached nobody@example.com:\n{list}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[..2], ["callahead:example.com", "invalid"], "{row}");
    assert_time_near(cols[2], 0);
    assert_time_near(cols[3], 3600);
    // The catch-all detection's finding: example.com is not a catch-all.
    assert!(
        list.contains("  invalid  ") && list.contains("  @example.com\n"),
        "{list}"
    );
    let (ok, valid, _) = ask(&["cache", "list", "--valid"]);
    assert!(ok && !valid.contains("nobody@example.com"), "{valid}");
    assert!(
        valid.ends_with("-- 0 entries shown; the cache holds 0 valid and 2 invalid\n"),
        "{valid}"
    );

    // check answers from the live cache: no second probe.
    let out = check("nobody@example.com");
    assert_eq!(
        line(&out, "entry"),
        "entry     entry 1 example.com (policies/rat.yaml:5:7), action accept"
    );
    assert_eq!(
        line(&out, "validate"),
        format!(
            "validate  callahead, route example.com -> 127.0.0.1:{} (tls preferred); on_tempfail tempfail",
            internal.addr.port()
        )
    );
    assert_eq!(line(&out, "breaker"), "breaker   closed");
    assert_eq!(line(&out, "answer"), "answer    invalid, from the cache");
    assert!(
        line(&out, "cached").starts_with("cached    invalid, stored "),
        "{out}"
    );
    assert_eq!(
        line(&out, "reply"),
        "reply     550 5.1.1 Recipient address rejected: User unknown"
    );
    assert_eq!(
        internal.rcpts_to("nobody@example.com"),
        1,
        "answered from the cache"
    );

    // Flushed: the next RCPT probes again.
    let (ok, out, err) = ask(&["cache", "flush", "nobody@example.com"]);
    assert!(ok, "{err}");
    assert_eq!(out, "ok 1 entry removed for nobody@example.com\n");
    assert_eq!(
        c.cmd("RCPT TO:<nobody@example.com>").await,
        "550 5.1.1 Recipient address rejected: User unknown\r\n"
    );
    assert_eq!(internal.rcpts_to("nobody@example.com"), 2, "probed again");

    // --no-cache asks the internal server even for a cached address.
    let (ok, out, _) = ask(&["check", "nobody@example.com", "--no-cache"]);
    assert!(ok, "{out}");
    assert_eq!(
        line(&out, "answer"),
        "answer    invalid, asked now (cache bypassed)"
    );
    assert!(line(&out, "detail").contains("550 5.1.1"), "{out}");
    assert_eq!(internal.rcpts_to("nobody@example.com"), 3);
    let out = check("alice@example.com");
    assert_eq!(line(&out, "answer"), "answer    valid, asked now");
    assert!(
        line(&out, "cached").starts_with("cached    valid, stored "),
        "{out}"
    );

    // No answer: the entry's own tempfail reply, and nothing cached.
    let out = check("bob@slow.example");
    assert_eq!(
        line(&out, "answer"),
        "answer    tempfail (connection refused), asked now"
    );
    assert_eq!(
        line(&out, "cached"),
        "cached    no entry (tempfails are never cached)"
    );
    assert_eq!(line(&out, "reply"), "reply     450 4.2.0 Try later");

    // Errors exit non-zero with a message.
    let (ok, _, err) = ask(&["check", "bob@example.com", "--listener", "nope"]);
    assert!(!ok);
    assert_eq!(err, "mxgate: no listener named \"nope\"\n");

    // Flush everything: how many went.
    let (ok, out, _) = ask(&["cache", "flush"]);
    assert!(ok);
    assert_eq!(out, "ok 3 entries removed; the cache is empty\n");
    let (_, list, _) = ask(&["cache", "list"]);
    assert!(
        list.ends_with("-- 0 entries shown; the cache holds 0 valid and 0 invalid\n"),
        "{list}"
    );

    // After a reload the control socket answers with the new configuration.
    let rat = cfg.path().join("policies/rat.yaml");
    let text = std::fs::read_to_string(&rat).unwrap();
    let refuse = "  entries:\n    - recipient: nobody@example.com\n      action: reject\n";
    std::fs::write(&rat, text.replacen("  entries:\n", refuse, 1)).unwrap();
    let mark = m.log_mark();
    let (ok, out, err) = run(&mut m.ctl(&["reload"]));
    assert!(ok, "{out}{err}");
    m.wait_log_after(mark, "configuration reloaded");
    let out = check("nobody@example.com");
    assert_eq!(
        line(&out, "entry"),
        "entry     entry 0 nobody@example.com (policies/rat.yaml:3:7), action reject"
    );
    assert_eq!(
        line(&out, "reply"),
        "reply     550 5.7.1 Recipient address rejected"
    );
}
