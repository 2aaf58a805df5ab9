//! The `callahead` validation method against a real Postfix smtpd as the internal server,
//! started privately on 127.0.0.1 and accepting only the users of its recipient map
//! (`relay_recipient_maps`): a known user is valid, an unknown one invalid (550 5.1.1), and
//! a stopped server is a tempfail. Postfix's own maillog shows that several probes share one
//! kept-open connection, and that a cached answer makes no probe; with Postfix down, the
//! breaker answers at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mxgate::validate::breaker::BreakerSettings;
use mxgate::validate::cache::{CacheSettings, VerdictCache};
use mxgate::validate::callahead::{CallaheadSettings, ProbePool};
use mxgate::validate::destination::{Destination, Method, Source, ValidationClock};
use mxgate::validate::{TempFailCause, Verdict};

const POSTFIX_MASTER: &str = "/usr/lib/postfix/sbin/master";
const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

/// smtp-sink behind `smtpd_proxy_filter` (smtpd needs somewhere to hand a transaction).
struct Sink(Child);

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private Postfix instance (master, smtpd, postlogd writing `dir/maillog`); stopped on drop.
struct Postfix {
    master: Option<Child>,
    addr: SocketAddr,
    maillog: PathBuf,
    _sink: Sink,
}

impl Postfix {
    fn stop(&mut self) {
        let Some(mut master) = self.master.take() else {
            return;
        };
        let pid = master.id() as libc::pid_t;
        // SAFETY: plain signal calls on the process (group) this test started: master runs
        // in its own process group with its smtpd/postlogd children.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        for _ in 0..50 {
            if matches!(master.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = master.wait();
        // Its smtpd children die a moment later and hold the listening socket until then:
        // stopped means nothing accepts any more.
        for _ in 0..100 {
            if std::net::TcpStream::connect(self.addr).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn maillog(&self) -> String {
        std::fs::read_to_string(&self.maillog).unwrap_or_default()
    }

    /// Waits until the maillog has a line containing `needle`, and returns the log.
    async fn wait_for(&self, needle: &str) -> String {
        for _ in 0..100 {
            let log = self.maillog();
            if log.contains(needle) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("maillog has no {needle:?}:\n{}", self.maillog());
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_listening(addr: SocketAddr) -> bool {
    for _ in 0..100 {
        // Connect without sending: a byte before the greeting would log "improper command
        // pipelining" in Postfix.
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Starts Postfix in `dir` accepting `recipients` of example.test, or says why it cannot
/// run here.
async fn start_postfix(dir: &Path, recipients: &[&str]) -> Result<Postfix, String> {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    for p in [POSTFIX_MASTER, SMTP_SINK] {
        if !Path::new(p).exists() {
            return Err(format!("{p} not installed (Debian package postfix)"));
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("Postfix master needs root".into());
    }
    // The postfix user must reach the queue directory below the test's temp dir.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dump = dir.join("dump");
    std::fs::create_dir_all(&dump).unwrap();
    std::fs::set_permissions(&dump, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sink_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let sink = Sink(
        Command::new(SMTP_SINK)
            .args(["-u", "nobody", "-d"])
            .arg(format!("{}/msg.", dump.display()))
            .arg(sink_addr.to_string())
            .arg("16")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {SMTP_SINK}: {e}"))?,
    );
    if !wait_listening(sink_addr).await {
        return Err(format!("smtp-sink did not listen on {sink_addr}"));
    }
    let conf = dir.join("conf");
    let queue = dir.join("queue");
    let data = dir.join("data");
    for d in [
        &conf,
        &queue.join("private"),
        &queue.join("public"),
        &queue.join("pid"),
        &data,
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    for p in [queue.join("private"), queue.join("public"), data.clone()] {
        let ok = Command::new("chown")
            .arg("postfix")
            .arg(&p)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chown postfix {}", p.display());
    }
    let map: String = recipients.iter().map(|r| format!("{r} OK\n")).collect();
    std::fs::write(conf.join("relay_recipients"), map).unwrap();
    let port = free_port();
    let maillog = dir.join("maillog");
    let main_cf = format!(
        "compatibility_level = 3.6\n\
         queue_directory = {queue}\n\
         data_directory = {data}\n\
         mail_owner = postfix\n\
         myhostname = internal.test\n\
         mydestination =\n\
         inet_protocols = ipv4\n\
         mynetworks =\n\
         relay_domains = example.test\n\
         relay_recipient_maps = texthash:{conf}/relay_recipients\n\
         smtpd_reject_unlisted_recipient = yes\n\
         smtpd_relay_restrictions = reject_unauth_destination\n\
         smtpd_recipient_restrictions =\n\
         local_recipient_maps =\n\
         alias_maps =\n\
         virtual_alias_maps =\n\
         smtpd_peername_lookup = no\n\
         smtpd_client_connection_count_limit = 0\n\
         smtpd_client_connection_rate_limit = 0\n\
         smtpd_proxy_filter = {sink_addr}\n\
         maillog_file = {maillog}\n\
         maillog_file_prefixes = {dir}\n",
        queue = queue.display(),
        data = data.display(),
        conf = conf.display(),
        maillog = maillog.display(),
        dir = dir.display(),
    );
    std::fs::write(conf.join("main.cf"), main_cf).unwrap();
    let master_cf = format!(
        "127.0.0.1:{port} inet n - n - - smtpd\n\
         rewrite unix - - n - - trivial-rewrite\n\
         proxymap unix - - n - - proxymap\n\
         anvil unix - - n - 1 anvil\n\
         postlog unix-dgram n - n - 1 postlogd\n"
    );
    std::fs::write(conf.join("master.cf"), master_cf).unwrap();
    let master = Command::new(POSTFIX_MASTER)
        .arg("-c")
        .arg(&conf)
        .arg("-d")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {POSTFIX_MASTER}: {e}"))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let pf = Postfix {
        master: Some(master),
        addr,
        maillog,
        _sink: sink,
    };
    if wait_listening(addr).await {
        Ok(pf)
    } else {
        Err(format!("Postfix did not listen on {addr}"))
    }
}

/// Postfix, or `None` after printing SKIP (a failure under CI).
async fn postfix(dir: &Path, recipients: &[&str]) -> Option<Postfix> {
    match start_postfix(dir, recipients).await {
        Ok(pf) => Some(pf),
        Err(why) if std::env::var_os("CI").is_some() => panic!("Postfix instance: {why}"),
        Err(why) => {
            println!("SKIP: Postfix instance: {why}");
            None
        }
    }
}

fn settings() -> CallaheadSettings {
    CallaheadSettings {
        helo_name: "mx.test".into(),
        timeout: Duration::from_secs(10),
        ..CallaheadSettings::default()
    }
}

/// Sum of the RCPT counts (`rcpt=OK/TOTAL` or `rcpt=N`) of the `disconnect from` lines.
fn rcpts_seen(maillog: &str) -> u32 {
    maillog
        .lines()
        .filter(|l| l.contains(" disconnect from "))
        .filter_map(|l| l.split(' ').find_map(|w| w.strip_prefix("rcpt=")))
        .map(|n| n.rsplit('/').next().unwrap().parse::<u32>().unwrap())
        .sum()
}

#[tokio::test]
async fn known_users_are_valid_unknown_invalid_over_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pf) = postfix(dir.path(), &["alice@example.test", "bob@example.test"]).await else {
        return;
    };
    let pool = ProbePool::new(pf.addr, settings());
    let probes = [
        ("alice@example.test", Verdict::Valid),
        ("nobody@example.test", Verdict::Invalid),
        ("bob@example.test", Verdict::Valid),
        // Postfix folds case in its map.
        ("Alice@EXAMPLE.test", Verdict::Valid),
        ("carol@example.test", Verdict::Invalid),
    ];
    for (address, want) in probes {
        let a = pool.check(address).await;
        assert_eq!(a.verdict, want, "{address}: {a:?}");
        assert!(
            a.detail.starts_with(&format!("probe {}: ", pf.addr)),
            "{}",
            a.detail
        );
    }
    let a = pool.check("nobody@example.test").await;
    // The internal server's text is in the log detail (never in a reply to a client).
    assert!(
        a.detail
            .contains("550 5.1.1 <nobody@example.test>: Recipient address rejected"),
        "{}",
        a.detail
    );
    assert_eq!(pool.connections_opened(), 1);
    pool.close_idle().await;
    // `rcpt=` is on the disconnect line of a session that sent RCPTs (the readiness check
    // before the test connected and said nothing: "lost connection after CONNECT").
    let log = pf.wait_for(" rcpt=").await;
    let probing: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" disconnect from ") && !l.contains(" commands=0/0"))
        .collect();
    assert_eq!(probing.len(), 1, "one connection for six probes:\n{log}");
    assert!(
        probing[0].contains(" rset=5 "),
        "RSET between probes: {}",
        probing[0]
    );
    assert_eq!(rcpts_seen(&log), 6, "{log}");
    let rejects = |who: &str| {
        log.lines()
            .filter(|l| l.contains("NOQUEUE: reject: RCPT") && l.contains(&format!("to=<{who}>")))
            .count()
    };
    assert_eq!(rejects("nobody@example.test"), 2, "{log}");
    assert_eq!(rejects("carol@example.test"), 1, "{log}");
    assert_eq!(rejects("alice@example.test"), 0, "{log}");
    // The probes never opened a mail transaction to the end: nothing reached the sink.
    assert_eq!(
        std::fs::read_dir(dir.path().join("dump")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn a_stopped_internal_server_is_a_tempfail() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut pf) = postfix(dir.path(), &["alice@example.test"]).await else {
        return;
    };
    let pool = ProbePool::new(pf.addr, settings());
    assert_eq!(
        pool.check("alice@example.test").await.verdict,
        Verdict::Valid
    );
    pf.stop();
    // The kept-open connection is dead; the new one is refused.
    let t0 = std::time::Instant::now();
    let a = pool.check("alice@example.test").await;
    assert_eq!(
        a.verdict,
        Verdict::TempFail(TempFailCause::Refused),
        "{a:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let a = pool.check("nobody@example.test").await;
    assert_eq!(
        a.verdict,
        Verdict::TempFail(TempFailCause::Refused),
        "{a:?}"
    );
}

/// A fixed clock: the breaker and cache see no time pass.
struct Frozen(std::time::Instant);

impl ValidationClock for Frozen {
    fn now(&self) -> std::time::Instant {
        self.0
    }
    fn unix(&self) -> u64 {
        1_764_950_000
    }
}

/// Through the cache, a second lookup of an unknown address makes no probe (the maillog has
/// one reject for it); with the internal server down, the breaker opens after `failures`
/// tempfails and the next lookups are answered without asking.
#[tokio::test]
async fn the_cache_saves_probes_and_the_breaker_opens_when_postfix_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut pf) = postfix(dir.path(), &["alice@example.test"]).await else {
        return;
    };
    let dest = Destination::new(
        "callahead:example.test",
        Method::Callahead(ProbePool::new(pf.addr, settings())),
        BreakerSettings {
            failures: 3,
            cooldown: Duration::from_secs(30),
        },
    );
    let cache = VerdictCache::new(CacheSettings::default());
    let clock = Frozen(std::time::Instant::now());
    let first = dest.validate(&cache, &clock, "nobody@example.test").await;
    assert_eq!(
        (first.answer.verdict, first.source),
        (Verdict::Invalid, Source::Lookup)
    );
    let second = dest.validate(&cache, &clock, "NOBODY@example.test").await;
    assert_eq!(second.answer.verdict, Verdict::Invalid);
    assert_eq!(
        second.source,
        Source::Cache {
            stored: 1_764_950_000
        }
    );
    let valid = dest.validate(&cache, &clock, "alice@example.test").await;
    assert_eq!(valid.answer.verdict, Verdict::Valid);
    let Method::Callahead(pool) = dest.method() else {
        unreachable!()
    };
    pool.close_idle().await;
    let log = pf.wait_for(" rcpt=").await;
    let rejects = log
        .lines()
        .filter(|l| l.contains("NOQUEUE: reject: RCPT") && l.contains("to=<nobody@example.test>"))
        .count();
    assert_eq!(rejects, 1, "one probe for two lookups:\n{log}");
    assert_eq!(rcpts_seen(&log), 2, "{log}");

    pf.stop();
    for i in 0..3 {
        let r = dest
            .validate(&cache, &clock, &format!("u{i}@example.test"))
            .await;
        assert_eq!(r.answer.verdict, Verdict::TempFail(TempFailCause::Refused));
        assert_eq!(r.transition.is_some(), i == 2, "{r:?}");
    }
    assert!(dest.is_breaker_open());
    let t0 = std::time::Instant::now();
    for i in 0..20 {
        let r = dest
            .validate(&cache, &clock, &format!("v{i}@example.test"))
            .await;
        assert_eq!(
            r.answer.verdict,
            Verdict::TempFail(TempFailCause::BreakerOpen)
        );
        assert_eq!(r.source, Source::Breaker);
    }
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "{:?}",
        t0.elapsed()
    );
    // Cached answers still stand while the server is down; tempfails were not cached.
    let r = dest.validate(&cache, &clock, "alice@example.test").await;
    assert_eq!(
        (r.answer.verdict, r.source),
        (
            Verdict::Valid,
            Source::Cache {
                stored: 1_764_950_000
            }
        )
    );
    assert_eq!(cache.counts(), (1, 1));
}

/// Postfix slows down every reply by a second past 10 refusals in a session
/// (`smtpd_soft_error_limit`, `smtpd_error_sleep_time`): the pool replaces a connection after
/// 8 refusals, so a run of unknown addresses stays fast.
#[tokio::test]
async fn a_run_of_unknown_addresses_stays_fast_against_postfix_error_limits() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pf) = postfix(dir.path(), &["alice@example.test"]).await else {
        return;
    };
    let run = |max_refusals: u32| {
        let pool = ProbePool::new(
            pf.addr,
            CallaheadSettings {
                max_refusals_per_connection: max_refusals,
                ..settings()
            },
        );
        async move {
            let t0 = std::time::Instant::now();
            for i in 0..11 {
                let a = pool
                    .check(&format!("x{max_refusals}-{i}@example.test"))
                    .await;
                assert_eq!(a.verdict, Verdict::Invalid, "{a:?}");
            }
            let took = t0.elapsed();
            pool.close_idle().await;
            (took, pool.connections_opened())
        }
    };
    let (fast, conns) = run(8).await;
    println!(
        "11 unknown addresses, new connection after 8 refusals: {fast:?}, {conns} connections"
    );
    assert_eq!(conns, 2);
    let (slow, conns) = run(100).await;
    println!("11 unknown addresses on one connection: {slow:?}, {conns} connections");
    assert_eq!(conns, 1);
    assert!(
        slow >= Duration::from_secs(2),
        "Postfix slowed down past 10 errors: {slow:?}"
    );
    assert!(fast < Duration::from_secs(1), "{fast:?}");
}
