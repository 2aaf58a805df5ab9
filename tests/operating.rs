//! Operating mxgate as a new administrator would: `check` finds everything `serve` would
//! refuse, the test dependencies install, logs are readable outside a terminal, the queue
//! commands, restarts and reloads.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use mxgate::config::model::MailLogTarget;
use mxgate::config::{load, Overrides};
use support::{closed_addr, copy_dir, relay_config, repo, Client, Server};

use support::mxgate::bin as mxgate;

/// A copy of the shipped configuration (listeners/, policies/) in a temporary directory.
fn shipped_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("listeners"), &dir.path().join("listeners"));
    copy_dir(&repo().join("policies"), &dir.path().join("policies"));
    dir
}

fn check(dir: &Path) -> (Output, String) {
    let out = mxgate()
        .args(["check", "--config-dir"])
        .arg(dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out, text)
}

#[test]
fn trust_17_check_reports_every_error_of_a_file_with_an_unknown_key() {
    let dir = shipped_copy();
    std::fs::write(
        dir.path().join("policies/rat.yaml"),
        "inbound:\n  entries:\n    - recipient: example.com\n      bogus: 1\n    - recipient: \"bad..example\"\n      action: acept\n",
    )
    .unwrap();
    let (out, text) = check(dir.path());
    assert_eq!(out.status.code(), Some(1), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert!(has("policies/rat.yaml:4:7: unknown key `bogus`"), "{text}");
    assert!(
        has("policies/rat.yaml:5:18: inbound.entries[1].recipient:"),
        "{text}"
    );
    assert!(
        has("policies/rat.yaml:6:15: inbound.entries[1].action:"),
        "{text}"
    );
    assert_eq!(lines.len(), 3, "{text}");
}

#[test]
fn trust_17_check_refuses_a_missing_certificate_file_naming_the_listener() {
    let dir = shipped_copy();
    let file = dir.path().join("listeners/inbound.yaml");
    let yaml = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        yaml.replace("\ncertificate: demo\n", "\ncertificate: mx\n"),
    )
    .unwrap();
    let (out, text) = check(dir.path());
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("listener inbound: certificate file ")
            && text.contains("certs/mx.crt not found")
            && text.contains("mxgate certs new-self-signed mx"),
        "{text}"
    );
    assert!(!text.contains("configuration OK"), "{text}");
}

#[test]
fn trust_17_check_warns_about_host_bits_in_a_cidr() {
    let dir = shipped_copy();
    std::fs::write(
        dir.path().join("policies/hat.yaml"),
        "inbound:\n  sender_groups:\n    - name: PARTNERS\n      policy: ACCEPTED\n      match: [192.0.2.1/24]\nrelay:\n  sender_groups: []\n",
    )
    .unwrap();
    let (out, text) = check(dir.path());
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(
            "policies/hat.yaml:5:15: warning: inbound.sender_groups[0].match[0]: \"192.0.2.1/24\" \
             has host bits set, so it matches the whole network 192.0.2.0/24"
        ),
        "{text}"
    );
    assert!(text.contains("configuration OK"), "{text}");
}

#[test]
fn trust_19_run_sh_installs_what_swaks_tls_needs() {
    // swaks only recommends its TLS modules, and run.sh installs with --no-install-recommends.
    let script = std::fs::read_to_string(repo().join("tests/run.sh")).unwrap();
    for (module, package) in [
        ("Net::SSLeay", "libnet-ssleay-perl"),
        ("IO::Socket::SSL", "libio-socket-ssl-perl"),
    ] {
        assert!(
            script
                .lines()
                .any(|l| l.contains(module) && l.contains(&format!("need+=({package})"))),
            "tests/run.sh does not install {package} for {module}"
        );
    }
    match Command::new("swaks").arg("--support").output() {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            assert!(
                text.contains("=== TLS supported"),
                "swaks --support:\n{text}"
            );
        }
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "swaks must be installed in CI"
            );
            eprintln!("SKIP: swaks is not installed");
        }
    }
}

/// `mxgate serve` (stderr piped, as under systemd or docker) on a port that is already taken:
/// it logs the demo-certificate warning, then fails to bind. Returns its stderr.
fn serve_on_a_taken_port() -> String {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let tmp = tempfile::tempdir().unwrap();
    let bind = format!("--bind=inbound=127.0.0.1:{port}");
    let out = support::Mxgate::command(
        &repo(),
        tmp.path(),
        &["--metrics-listen", "off", &bind, "--bind=relay=127.0.0.1:0"],
    )
    .env_remove("MXGATE_LOG")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn trust_20_stderr_has_no_colour_codes_when_it_is_not_a_terminal() {
    let err = serve_on_a_taken_port();
    assert!(err.contains("WARN"), "{err}");
    assert!(err.contains("DEMO certificate"), "{err}");
    assert!(!err.contains('\u{1b}'), "colour codes in {err:?}");
}

#[test]
fn trust_20_the_bind_error_names_its_cause_once() {
    let err = serve_on_a_taken_port();
    let line = err
        .lines()
        .find(|l| l.starts_with("mxgate: listener inbound: cannot bind 127.0.0.1:"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.ends_with(": Address already in use (os error 98)"),
        "{line}"
    );
    assert_eq!(line.matches("Address already in use").count(), 1, "{line}");
}

/// Sends one message to the server's `preferred` listener; returns the final reply.
async fn send(srv: &Server, to: &str) -> String {
    let mut c = Client::connect(srv.addr("preferred"), None).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    let r = c
        .send_mail("alice@other.example", &[to], "Subject: t\r\n\r\nbody\r\n")
        .await;
    c.cmd("QUIT").await;
    r
}

#[tokio::test]
async fn trust_20_reload_warns_that_a_changed_metrics_listen_needs_a_restart() {
    let cfg = relay_config(closed_addr(), "1h");
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    // The same configuration and overrides as the running server, with metrics turned on.
    let o = Overrides {
        spool_dir: Some(srv.spool.clone()),
        certs_dir: Some(srv.dir.path().join("certs")),
        mail_log: Some(MailLogTarget::File(srv.log.clone())),
        metrics_listen: Some(Some("127.0.0.1:9999".parse().unwrap())),
        ..Overrides::default()
    };
    let new = load(cfg.path(), &o).unwrap();
    srv.running.as_ref().unwrap().apply(&new).unwrap();
    srv.wait_log(
        "Warning: reload: metrics.listen changed from off to 127.0.0.1:9999; the change needs a restart",
    )
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn trust_20_a_dropped_downstream_connection_is_logged_without_a_reply_code() {
    use support::{Sink, SinkConfig};
    let sink = Sink::start_with(SinkConfig {
        rcpt_replies: vec![("bob@example.com".into(), "DROP".into())],
        ..SinkConfig::default()
    })
    .await;
    let cfg = relay_config(sink.addr, "1h");
    let mut srv = Server::start_dir(cfg.path(), |_, _| {}).await;
    let r = send(&srv, "bob@example.com").await;
    assert!(r.starts_with("250 "), "{r}");
    let line = srv
        .wait_log("Info: Delayed: DCID {n} MID {n} to RID [0] - ")
        .await;
    assert!(
        line.contains(" - 4.4.2 - lost connection with 127.0.0.1: "),
        "{line}"
    );
    assert!(!line.contains("('451'"), "{line}");
    srv.stop().await;
}

/// Sends one message to `addr`; returns its MID.
async fn send_to(addr: std::net::SocketAddr, to: &str) -> u64 {
    let mut c = Client::connect(addr, None).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    let r = c
        .send_mail("alice@other.example", &[to], "Subject: t\r\n\r\nbody\r\n")
        .await;
    c.cmd("QUIT").await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    support::queued_mid(&r)
}

/// A spool holding one message whose delivery failed once (next try in an hour), written
/// by a server that has stopped since.
async fn spool_with_a_deferred_message() -> (tempfile::TempDir, u64) {
    let cfg = relay_config(closed_addr(), "1h");
    let work = tempfile::tempdir().unwrap();
    let child = support::Mxgate::start(cfg.path(), work.path());
    let addr = child.addr("preferred");
    let mid = send_to(addr, "bob@example.com").await;
    // The first attempt fails.
    child.wait_log("Info: Delayed: DCID ");
    child.stop();
    (work, mid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_20_queue_commands_need_only_the_spool_dir_and_say_where_they_looked() {
    let (work, mid) = spool_with_a_deferred_message().await;
    let spool = work.path().join("spool");
    // Run where there is no configuration at all.
    let elsewhere = tempfile::tempdir().unwrap();
    let queue = |args: &[&str], spool: &Path| {
        let out = mxgate()
            .arg("queue")
            .args(args)
            .arg("--spool-dir")
            .arg(spool)
            .current_dir(elsewhere.path())
            .env_remove("MXGATE_CONFIG_DIR")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, list) = queue(&["list"], &spool);
    assert!(ok, "{list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with(&format!("{mid} ")) && l.contains("bob@example.com")),
        "{list}"
    );
    assert!(
        list.contains(&format!(
            "-- 1 message(s) in queue {}",
            spool.join("queue").display()
        )),
        "{list}"
    );
    let (ok, show) = queue(&["show", &mid.to_string()], &spool);
    assert!(
        ok && show.contains("RID 0 bob@example.com pending"),
        "{show}"
    );
    let (ok, missing) = queue(&["show", "999"], &spool);
    assert!(
        !ok && missing.contains(&format!(
            "MID 999 is not in the queue {}",
            spool.join("queue").display()
        )),
        "{missing}"
    );
    let wrong = elsewhere.path().join("no-spool");
    let (ok, err) = queue(&["list"], &wrong);
    assert!(
        !ok && err.contains(&format!("no queue in {}", wrong.join("queue").display())),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_20_queue_show_prints_times_people_read() {
    let (work, mid) = spool_with_a_deferred_message().await;
    let out = mxgate()
        .args(["queue", "show", &mid.to_string(), "--spool-dir"])
        .arg(work.path().join("spool"))
        .output()
        .unwrap();
    let show = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{show}");
    // RFC 3339: 2026-11-22T15:04:25+01:00 (or ...Z in UTC).
    let rfc3339 = |v: &str| {
        let b = v.as_bytes();
        v.len() >= 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && (v.ends_with('Z') || v[19..].starts_with(['+', '-']))
    };
    for key in ["received ", "next_try "] {
        let line = show
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key:?} line in {show}"));
        assert!(rfc3339(&line[key.len()..]), "{line:?} in\n{show}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_20_after_a_restart_the_queue_is_tried_soon() {
    // The internal server is down, and the retry delay is an hour.
    let down = closed_addr();
    let cfg = relay_config(down, "1h");
    let work = tempfile::tempdir().unwrap();
    let child = support::Mxgate::start(cfg.path(), work.path());
    let addr = child.addr("preferred");
    send_to(addr, "bob@example.com").await;
    // The first attempt fails.
    child.wait_log("Info: Delayed: DCID ");
    child.stop();
    // The internal server comes back, and mxgate is restarted: the message goes out now,
    // not an hour after the failed attempt.
    let sink = support::sink::Sink::start(&down.to_string()).await;
    let child = support::Mxgate::start(cfg.path(), work.path());
    support::wait_until("delivery after the restart", || !sink.messages().is_empty()).await;
    child.stop();
}

#[test]
fn trust_05_reload_signals_only_the_server_holding_the_spool_lock() {
    // A pid file left by a crashed server names a pid the system gave to another process:
    // `mxgate reload` must not send that process SIGHUP.
    let dir = shipped_copy();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let mut other = Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(spool.join("mxgate.pid"), format!("{}\n", other.id())).unwrap();
    std::fs::write(spool.join("mxgate.lock"), format!("{}\n", other.id())).unwrap();
    let out = mxgate()
        .args(["reload", "--config-dir"])
        .arg(dir.path())
        .arg("--spool-dir")
        .arg(&spool)
        .arg("--certs-dir")
        .arg(dir.path().join("certs"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("no running mxgate on spool"), "{text}");
    assert!(
        other.try_wait().unwrap().is_none(),
        "the other process was signalled"
    );
    other.kill().unwrap();
    other.wait().unwrap();
}
