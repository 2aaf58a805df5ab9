//! Recipient validation (issue 13) end to end, through the built binary with real servers:
//! a private Postfix that knows only its listed users answers the call-ahead (and receives
//! the mail), a private slapd answers `ldap:`, a list file with a catch-all line is edited
//! and reloaded; a down or hanging internal server gets 451 and then the breaker. What a
//! client sees (replies), what mxgate logs and counts, what the internal server logs (its
//! maillog counts the probes) and the cache file in the spool.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use support::postfix::{start_or_skip, PostfixOptions};
use support::slapd::{slapd_available, start_slapd, test_pki, BIND_DN, BIND_PW, FILTER, SUFFIX};
use support::{closed_addr, wait_until, Client, Mxgate};
use tokio::net::TcpStream;

/// Our reply to an invalid recipient: the internal server's text never reaches the client.
const UNKNOWN: &str = "550 5.1.1 Recipient address rejected: User unknown\r\n";
/// Our reply when nobody answered.
const TEMPFAIL: &str = "451 4.4.3 Recipient verification unavailable, try again later\r\n";
/// A valid recipient.
const OK: &str = "250 2.1.5 Recipient ok\r\n";

/// [`support::validation::config`] without global settings of its own.
fn config(rat_entries: &str, routes: &str, validation: Option<&str>) -> tempfile::TempDir {
    support::validation::config("", rat_entries, routes, validation)
}

/// `policies/routes.yaml` sending each domain to one host.
fn routes(to: &[(&str, SocketAddr)]) -> String {
    let mut s = String::from("routes:\n");
    for (domain, addr) in to {
        s.push_str(&format!(
            "  - domain: {domain}\n    hosts: [{{host: {}, port: {}}}]\n",
            addr.ip(),
            addr.port()
        ));
    }
    s
}

/// `mxgate serve` on `cfg` with its spool and mail log in `work`, metrics on a free port.
fn start(cfg: &Path, work: &Path) -> Mxgate {
    Mxgate::start_with(cfg, work, &["--metrics-listen", "127.0.0.1:0"])
}

/// A session on the `inbound` listener after EHLO and MAIL FROM.
async fn session(srv: &Mxgate) -> Client<TcpStream> {
    let mut c = Client::connect(srv.addr("inbound"), None).await;
    let greeting = c.reply().await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    let ehlo = c.cmd("EHLO client.sender.test").await;
    assert!(ehlo.starts_with("250"), "{ehlo}");
    let mail = c.cmd("MAIL FROM:<someone@sender.test>").await;
    assert!(mail.starts_with("250 "), "{mail}");
    c
}

/// `RCPT TO:<address>`: the reply.
async fn rcpt(c: &mut Client<TcpStream>, address: &str) -> String {
    c.cmd(&format!("RCPT TO:<{address}>")).await
}

/// `mxgate_recipient_validation_total` of the `inbound` listener for `method` and `result`.
fn validations(srv: &Mxgate, method: &str, result: &str) -> f64 {
    srv.metric(
        "mxgate_recipient_validation_total",
        &[
            ("listener", "inbound"),
            ("method", method),
            ("result", result),
        ],
    )
}

/// `mxgate_recipients_rejected_total` for `reason`.
fn rejected(srv: &Mxgate, reason: &str) -> f64 {
    srv.metric(
        "mxgate_recipients_rejected_total",
        &[("listener", "inbound"), ("reason", reason)],
    )
}

/// The messages smtp-sink dumped behind Postfix.
fn dumped(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned())
        .collect()
}

/// Files in the spool's queue directory.
fn queued(srv: &Mxgate) -> Vec<String> {
    std::fs::read_dir(srv.spool().join("queue"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A RAT entry accepting `recipient` with `validate: <validate>` (more keys may follow on
/// their own lines).
fn entry(recipient: &str, validate: &str) -> String {
    format!("    - recipient: {recipient}\n      validate: {validate}\n")
}

/// Issue 13, "what must be shown" with Postfix as the internal server: a known user gets 250
/// and is delivered, an unknown one 550 5.1.1 at RCPT with our text (never Postfix's host
/// or table), no DSN; the answer is cached (a second RCPT in a new session makes no probe),
/// saved in the spool and still used after a restart; with Postfix stopped an address not
/// cached gets 451 4.4.3 while cached answers still hold.
#[tokio::test]
async fn callahead_to_postfix_refuses_unknown_users_at_rcpt_and_caches_across_restarts() {
    let pfdir = tempfile::tempdir().unwrap();
    let opts = PostfixOptions {
        relay_domain: Some("example.test"),
        recipients: &["alice@example.test", "bob@example.test"],
        ..PostfixOptions::default()
    };
    let Some(mut pf) = start_or_skip(pfdir.path(), &opts).await else {
        return;
    };
    let cfg = config(
        &entry("example.test", "callahead"),
        &routes(&[("example.test", pf.addr)]),
        Some("cache:\n  save_every: 1h\n"),
    );
    let work = tempfile::tempdir().unwrap();
    let srv = start(cfg.path(), work.path());

    // Session 1: alice is accepted and delivered; nobody is refused at RCPT.
    let mut c = session(&srv).await;
    assert_eq!(rcpt(&mut c, "alice@example.test").await, OK);
    let refusal = rcpt(&mut c, "nobody@example.test").await;
    assert_eq!(refusal, UNKNOWN);
    for leak in ["internal.test", "relay recipient table", "127.0.0.1"] {
        assert!(!refusal.contains(leak), "{leak} in {refusal:?}");
    }
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: e2e validation\r\n\r\nhello alice\r\n.\r\n")
        .await;
    let queued_as = c.reply().await;
    assert!(queued_as.starts_with("250 "), "{queued_as}");
    let mid: u64 = queued_as
        .trim_end()
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MID in {queued_as:?}"));
    assert!(c.cmd("QUIT").await.starts_with("221"));
    srv.wait_log(
        "RCPT TO: <nobody@example.test> refused: validate callahead: invalid (callahead:example.test: probe {w} 550 5.1.1 <nobody@example.test>: Recipient address rejected",
    );
    srv.wait_log(&format!("Message finished MID {mid} "));
    wait_until("the message in smtp-sink's dump", || {
        dumped(&pf.sink.dir)
            .iter()
            .any(|m| m.contains("Subject: e2e validation"))
    })
    .await;
    let msgs = dumped(&pf.sink.dir);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(!msgs[0].contains("nobody@example.test"), "{}", msgs[0]);
    assert!(
        msgs[0].contains("X-Rcpt-Args: <alice@example.test>"),
        "{}",
        msgs[0]
    );
    wait_until("an empty queue", || queued(&srv).is_empty()).await;
    pf.wait_for("to=<nobody@example.test>").await;
    assert_eq!(pf.rejects("nobody@example.test"), 1, "{}", pf.maillog());

    // Session 2: the same unknown address again is answered from the cache; a new unknown
    // address is probed after it (the same probe connection: Postfix logs in order), so its
    // reject line proves the log is complete when nobody's count is read.
    let mark = srv.log_mark();
    let mut c = session(&srv).await;
    assert_eq!(rcpt(&mut c, "nobody@example.test").await, UNKNOWN);
    assert_eq!(rcpt(&mut c, "carol@example.test").await, UNKNOWN);
    assert!(c.cmd("QUIT").await.starts_with("221"));
    srv.wait_log_after(
        mark,
        "RCPT TO: <nobody@example.test> refused: validate callahead: invalid (callahead:example.test, cached ",
    );
    pf.wait_for("to=<carol@example.test>").await;
    assert_eq!(pf.rejects("nobody@example.test"), 1, "{}", pf.maillog());
    // Never a bounce: the refused recipient was never a recipient of a message.
    let log = srv.log_text();
    for dsn in ["was generated for bounce", "Bounced:"] {
        assert!(!log.contains(dsn), "{dsn}:\n{log}");
    }
    assert!(
        !log.lines()
            .any(|l| support::match_line(l, "RID {n} To: <nobody@example.test>").is_some()),
        "{log}"
    );
    // Metrics: alice valid, nobody and carol invalid (probed), nobody once from the cache.
    assert_eq!(validations(&srv, "callahead", "valid"), 1.0);
    assert_eq!(validations(&srv, "callahead", "invalid"), 2.0);
    assert_eq!(validations(&srv, "callahead", "cache_hit"), 1.0);
    assert_eq!(rejected(&srv, "invalid_recipient"), 3.0);

    // Restart on the same spool: the cache is saved at shutdown and loaded at start.
    srv.stop();
    let file = work.path().join("spool/validation/recipients.cache");
    let saved = std::fs::read_to_string(&file).unwrap();
    assert!(
        saved
            .lines()
            .any(|l| l.starts_with("I\t") && l.ends_with("\tnobody@example.test")),
        "{saved}"
    );
    assert!(
        saved
            .lines()
            .any(|l| l.starts_with("V\t") && l.ends_with("\talice@example.test")),
        "{saved}"
    );
    let srv = start(cfg.path(), work.path());
    let mark = srv.log_mark();
    srv.wait_log("recipient validation cache {w} {n} entries loaded, 0 expired");
    let mut c = session(&srv).await;
    assert_eq!(rcpt(&mut c, "nobody@example.test").await, UNKNOWN);
    assert_eq!(rcpt(&mut c, "alice@example.test").await, OK);
    assert_eq!(rcpt(&mut c, "dave@example.test").await, UNKNOWN);
    srv.wait_log_after(
        mark,
        "RCPT TO: <nobody@example.test> refused: validate callahead: invalid (callahead:example.test, cached ",
    );
    pf.wait_for("to=<dave@example.test>").await;
    assert_eq!(pf.rejects("nobody@example.test"), 1, "{}", pf.maillog());
    assert_eq!(validations(&srv, "callahead", "cache_hit"), 2.0);

    // Postfix stopped: an address not cached gets 451 4.4.3 (never 550); cached answers
    // still hold.
    pf.stop();
    assert_eq!(rcpt(&mut c, "erin@example.test").await, TEMPFAIL);
    assert_eq!(rcpt(&mut c, "nobody@example.test").await, UNKNOWN);
    assert_eq!(rcpt(&mut c, "alice@example.test").await, OK);
    assert!(c.cmd("QUIT").await.starts_with("221"));
    srv.wait_log_after(
        mark,
        "RCPT TO: <erin@example.test> refused: validate callahead: no answer (callahead:example.test: probe {w} ",
    );
    assert_eq!(rejected(&srv, "validation_tempfail"), 1.0);
}

/// A TCP server that accepts connections and never says anything (an internal server that
/// hangs); counts the connections. On its own thread: the test's runtime blocks in log waits.
fn hanging_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let n = count.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept() {
            n.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, count)
}

/// Issue 13: the internal server down (nothing listens) or hanging (accepts, never greets):
/// 451 4.4.3 for each RCPT until `breaker.failures` (2) consecutive failures open the
/// breaker — a Warning in the log — and then RCPTs are answered without asking (the hanging
/// server sees no further connection, and still hangs). `on_tempfail: accept` accepts and
/// logs it as unverified.
#[tokio::test]
async fn a_down_or_hanging_internal_server_gets_451_then_the_breaker_answers() {
    let (hang, hang_conns) = hanging_server();
    let down = closed_addr();
    let rat = [
        entry("down.test", "callahead"),
        entry("hang.test", "callahead"),
        entry("lenient.test", "callahead\n      on_tempfail: accept"),
    ]
    .concat();
    let cfg = config(
        &rat,
        &routes(&[
            ("down.test", down),
            ("hang.test", hang),
            ("lenient.test", closed_addr()),
        ]),
        Some("callahead:\n  timeout: 3s\n  breaker:\n    failures: 2\n    cooldown: 10m\n"),
    );
    let work = tempfile::tempdir().unwrap();
    let srv = start(cfg.path(), work.path());
    let mut c = session(&srv).await;

    // Nothing listens: refused connections, 451 each, the breaker opens after the second.
    assert_eq!(rcpt(&mut c, "a@down.test").await, TEMPFAIL);
    assert_eq!(rcpt(&mut c, "b@down.test").await, TEMPFAIL);
    srv.wait_log(&format!(
        "Warning: recipient validation breaker open after 2 consecutive failures (last: callahead:down.test: probe {down}: connect: "
    ));
    assert_eq!(rcpt(&mut c, "c@down.test").await, TEMPFAIL);
    srv.wait_log(
        "RCPT TO: <c@down.test> refused: validate callahead: no answer (callahead:down.test: breaker open)",
    );

    // It hangs: each of the first two RCPTs waits for the probe timeout.
    assert_eq!(rcpt(&mut c, "x@hang.test").await, TEMPFAIL);
    assert_eq!(rcpt(&mut c, "y@hang.test").await, TEMPFAIL);
    srv.wait_log(&format!(
        "Warning: recipient validation breaker open after 2 consecutive failures (last: callahead:hang.test: probe {hang}: "
    ));
    // One connection per probe that timed out.
    let probes = hang_conns.load(Ordering::SeqCst);
    assert_eq!(probes, 2, "probe connections");
    // Open: pipelined RCPTs all come back, and the hanging server is not asked again.
    c.send(b"RCPT TO:<z1@hang.test>\r\nRCPT TO:<z2@hang.test>\r\nRCPT TO:<z3@hang.test>\r\n")
        .await;
    for _ in 0..3 {
        assert_eq!(c.reply().await, TEMPFAIL);
    }
    for z in ["z1", "z2", "z3"] {
        srv.wait_log(&format!(
            "RCPT TO: <{z}@hang.test> refused: validate callahead: no answer (callahead:hang.test: breaker open)"
        ));
    }
    assert_eq!(hang_conns.load(Ordering::SeqCst), probes);
    // The server still hangs: it accepts, and says nothing.
    let mut probe = std::net::TcpStream::connect(hang).unwrap();
    probe
        .set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let silent = std::io::Read::read(&mut probe, &mut [0u8; 1]);
    assert!(silent.is_err(), "the hanging server answered: {silent:?}");

    // on_tempfail: accept.
    assert_eq!(rcpt(&mut c, "l@lenient.test").await, OK);
    srv.wait_log(
        "RCPT TO: <l@lenient.test> accepted unverified: validate callahead: no answer (callahead:lenient.test: probe {w} connect: ",
    );
    assert!(c.cmd("QUIT").await.starts_with("221"));
    assert_eq!(rejected(&srv, "validation_tempfail"), 8.0);
    assert_eq!(validations(&srv, "callahead", "tempfail"), 9.0);
    // Lookups that asked someone (a, b, x, y, l), not the breaker's answers.
    assert_eq!(
        srv.metric(
            "mxgate_recipient_validation_seconds_count",
            &[("method", "callahead")]
        ),
        5.0
    );
}

/// Issue 13 with slapd: `ldap:` through mxgate. Known users and aliases 250, unknown 550 with
/// ESA's `Rejected by LDAPACCEPT` line; a directory entry with a wrong bind password gives
/// 451, never 550; StartTLS and ldaps with the test CA (`ca_file`), and without it no
/// answer; slapd stopped: 451 for an address not cached.
#[tokio::test]
async fn ldap_accept_through_mxgate_with_slapd() {
    if !slapd_available() {
        return;
    }
    let pki = test_pki();
    let mut slapd = start_slapd(Some((&pki.cert_pem, &pki.key_pem))).await;
    let tls_addr = slapd.tls_addr.unwrap();
    let dir = |name: &str, url: String, pw: &str, filter: &str, tls: &str| {
        format!(
            "  {name}:\n    url: {url}\n{tls}    bind_dn: {BIND_DN}\n    password_file: {pw}\n    \
             base: ou=people,{SUFFIX}\n    filter: \"{filter}\"\n"
        )
    };
    let ca = "    ca_file: policies/ldap-ca.pem\n";
    let validation = format!(
        "ldap:\n{}{}{}{}{}",
        dir(
            "corp",
            format!("ldap://{}", slapd.addr),
            "policies/ldap.pw",
            FILTER,
            ""
        ),
        dir(
            "badpw",
            format!("ldap://{}", slapd.addr),
            "policies/bad.pw",
            FILTER,
            ""
        ),
        dir(
            "starttls",
            format!("ldap://{}", slapd.addr),
            "policies/ldap.pw",
            "(uid={local})",
            &format!("    starttls: true\n{ca}"),
        ),
        dir(
            "ldaps",
            format!("ldaps://{tls_addr}"),
            "policies/ldap.pw",
            "(uid={local})",
            ca,
        ),
        // StartTLS verified against the public roots only: slapd's certificate fails.
        dir(
            "untrusted",
            format!("ldap://{}", slapd.addr),
            "policies/ldap.pw",
            "(uid={local})",
            "    starttls: true\n",
        ),
    );
    let rat = [
        ("example.test", "corp"),
        ("badpw.test", "badpw"),
        ("starttls.test", "starttls"),
        ("ldaps.test", "ldaps"),
        ("untrusted.test", "untrusted"),
    ]
    .iter()
    .map(|(d, n)| entry(d, &format!("{{ldap: {n}}}")))
    .collect::<String>();
    let cfg = config(&rat, &routes(&[("ALL", closed_addr())]), Some(&validation));
    let p = cfg.path().join("policies");
    std::fs::write(p.join("ldap.pw"), format!("{BIND_PW}\n")).unwrap();
    std::fs::write(p.join("bad.pw"), "not-the-password\n").unwrap();
    std::fs::write(p.join("ldap-ca.pem"), &pki.ca_pem).unwrap();
    let work = tempfile::tempdir().unwrap();
    let srv = start(cfg.path(), work.path());
    let mut c = session(&srv).await;
    assert_eq!(rcpt(&mut c, "alice@example.test").await, OK);
    assert_eq!(rcpt(&mut c, "a.example@example.test").await, OK);
    assert_eq!(rcpt(&mut c, "nobody@example.test").await, UNKNOWN);
    srv.wait_log("MID {n} ICID {n} To: <nobody@example.test> Rejected by LDAPACCEPT");
    srv.wait_log("RCPT TO: <nobody@example.test> refused: validate ldap: invalid (ldap:corp: ldap://127.0.0.1:");
    // A wrong bind password is no answer: 451, never "no such user".
    assert_eq!(rcpt(&mut c, "alice@badpw.test").await, TEMPFAIL);
    srv.wait_log("RCPT TO: <alice@badpw.test> refused: validate ldap: no answer (");
    // Over StartTLS and LDAPS, verified with the test CA.
    assert_eq!(rcpt(&mut c, "bob@starttls.test").await, OK);
    assert_eq!(rcpt(&mut c, "ghost@starttls.test").await, UNKNOWN);
    assert_eq!(rcpt(&mut c, "alice@ldaps.test").await, OK);
    assert_eq!(rcpt(&mut c, "ghost@ldaps.test").await, UNKNOWN);
    // The certificate is checked: without the test CA, no answer (never an answer over an
    // unverified connection).
    assert_eq!(rcpt(&mut c, "alice@untrusted.test").await, TEMPFAIL);
    // The directory down: an address not cached gets 451; a cached answer still holds.
    slapd.stop();
    assert_eq!(rcpt(&mut c, "bob@example.test").await, TEMPFAIL);
    assert_eq!(rcpt(&mut c, "nobody@example.test").await, UNKNOWN);
    assert!(c.cmd("QUIT").await.starts_with("221"));
    let log = srv.log_text();
    assert!(
        !log.contains("alice@badpw.test> Rejected by LDAPACCEPT"),
        "{log}"
    );
    assert_eq!(validations(&srv, "ldap", "invalid"), 3.0);
    assert_eq!(validations(&srv, "ldap", "valid"), 4.0);
    assert_eq!(validations(&srv, "ldap", "tempfail"), 3.0);
    assert_eq!(validations(&srv, "ldap", "cache_hit"), 1.0);
}

/// Issue 13: `list:` with a catch-all line through mxgate: listed 250, unlisted 550, any
/// address of the `@domain` 250; the file edited and `mxgate reload`: the new address is
/// accepted by new sessions.
#[tokio::test]
async fn list_with_a_catch_all_line_and_reload() {
    let rat = [
        entry("lists.test", "{list: policies/recipients.txt}"),
        entry("catchall.test", "{list: policies/recipients.txt}"),
    ]
    .concat();
    let cfg = config(&rat, &routes(&[("ALL", closed_addr())]), None);
    let list = cfg.path().join("policies/recipients.txt");
    std::fs::write(&list, "# exported\nanne@lists.test\n@catchall.test\n").unwrap();
    let work = tempfile::tempdir().unwrap();
    let srv = start(cfg.path(), work.path());
    let mut c = session(&srv).await;
    assert_eq!(rcpt(&mut c, "anne@lists.test").await, OK);
    assert_eq!(rcpt(&mut c, "Anne@LISTS.test").await, OK);
    assert_eq!(rcpt(&mut c, "bert@lists.test").await, UNKNOWN);
    assert_eq!(rcpt(&mut c, "anyone@catchall.test").await, OK);
    assert_eq!(rcpt(&mut c, "whoever.else@catchall.test").await, OK);
    assert!(c.cmd("QUIT").await.starts_with("221"));
    srv.wait_log("RCPT TO: <bert@lists.test> refused: validate list: invalid (list ");
    assert_eq!(validations(&srv, "list", "valid"), 4.0);
    assert_eq!(validations(&srv, "list", "invalid"), 1.0);

    std::fs::write(
        &list,
        "# exported\nanne@lists.test\nbert@lists.test\n@catchall.test\n",
    )
    .unwrap();
    let out = srv.ctl(&["reload"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    srv.wait_log("configuration reloaded");
    let mut c = session(&srv).await;
    assert_eq!(rcpt(&mut c, "bert@lists.test").await, OK);
    assert_eq!(rcpt(&mut c, "carl@lists.test").await, UNKNOWN);
    assert!(c.cmd("QUIT").await.starts_with("221"));
}
