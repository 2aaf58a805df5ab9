//! Postfix as a real internal server: [`SmtpSink`] (Postfix's `smtp-sink`, dumping each
//! message to a file) and [`Postfix`], a private instance (master, smtpd, postlogd writing
//! `dir/maillog`) on 127.0.0.1 whose smtpd hands every transaction to an smtp-sink through
//! `smtpd_proxy_filter`. [`PostfixOptions`] chooses what it relays (everything from
//! 127.0.0.0/8, or one domain's listed recipients: `relay_recipient_maps`) and whether it
//! offers STARTTLS with a test certificate. Postfix master needs root: [`start_or_skip`]
//! prints SKIP elsewhere (and fails under CI).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::pki::ServerCert;

/// Postfix's master daemon (Debian package postfix).
pub const POSTFIX_MASTER: &str = "/usr/lib/postfix/sbin/master";
/// Postfix's test SMTP server.
pub const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

/// A running smtp-sink dumping each message into `dir`; killed on drop.
pub struct SmtpSink {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it dumps messages (`msg.*` files).
    pub dir: PathBuf,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when smtp-sink is installed; otherwise prints SKIP (and fails under CI).
pub fn smtp_sink_available() -> bool {
    if Path::new(SMTP_SINK).exists() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{SMTP_SINK} is missing: install the Debian package postfix (apt-get install postfix)"
        );
    }
    println!("SKIP: {SMTP_SINK} not installed (Debian package postfix)");
    false
}

/// Waits until `addr` accepts a connection. It connects without sending: a byte before the
/// greeting would log "improper command pipelining" in Postfix.
async fn wait_listening(addr: SocketAddr) -> bool {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Starts smtp-sink on 127.0.0.1 dumping into `dir/dump`.
pub async fn start_smtp_sink(dir: &Path) -> SmtpSink {
    use std::os::unix::fs::PermissionsExt;
    let dump = dir.join("dump");
    std::fs::create_dir_all(&dump).unwrap();
    // smtp-sink drops privileges to `nobody` when started as root.
    std::fs::set_permissions(&dump, std::fs::Permissions::from_mode(0o777)).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
    let mut cmd = Command::new(SMTP_SINK);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["-u", "nobody"]);
    }
    cmd.arg("-d")
        .arg(format!("{}/msg.", dump.display()))
        .arg(addr.to_string())
        .arg("16")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().expect("start smtp-sink");
    let sink = SmtpSink {
        child,
        addr,
        dir: dump,
    };
    if !wait_listening(addr).await {
        panic!("smtp-sink did not start on {addr}");
    }
    sink
}

/// What the private Postfix does.
pub struct PostfixOptions<'a> {
    /// `myhostname`: the name in its greeting (tests check it never reaches a client).
    pub myhostname: &'a str,
    /// `Some(domain)`: relay only that domain, and only the [`recipients`](Self::recipients)
    /// of its `relay_recipient_maps` (others: `550 5.1.1 ... User unknown in relay recipient
    /// table`), for anyone. `None`: relay any recipient for clients in 127.0.0.0/8.
    pub relay_domain: Option<&'a str>,
    /// The known users of `relay_domain`.
    pub recipients: &'a [&'a str],
    /// Offer STARTTLS (`smtpd_tls_security_level = may`) with this certificate.
    pub tls: Option<&'a ServerCert>,
}

impl Default for PostfixOptions<'_> {
    fn default() -> Self {
        PostfixOptions {
            myhostname: "internal.test",
            relay_domain: None,
            recipients: &[],
            tls: None,
        }
    }
}

/// A private Postfix instance; stopped on drop.
pub struct Postfix {
    master: Option<Child>,
    /// Where smtpd listens.
    pub addr: SocketAddr,
    /// Its log (`maillog_file`).
    pub maillog: PathBuf,
    /// The smtp-sink behind `smtpd_proxy_filter` (delivered mail is in `sink.dir`).
    pub sink: SmtpSink,
}

impl Postfix {
    /// The port smtpd listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops master and its children; returns once nothing accepts on the port any more.
    pub fn stop(&mut self) {
        let Some(mut master) = self.master.take() else {
            return;
        };
        let pid = master.id() as libc::pid_t;
        // SAFETY: plain signal calls on the process (group) this test started: master runs
        // in its own process group with its smtpd/postlogd/tlsmgr children.
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

    /// The maillog so far.
    pub fn maillog(&self) -> String {
        std::fs::read_to_string(&self.maillog).unwrap_or_default()
    }

    /// Waits until the maillog has a line containing `needle`, and returns the log.
    pub async fn wait_for(&self, needle: &str) -> String {
        for _ in 0..100 {
            let log = self.maillog();
            if log.contains(needle) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("maillog has no {needle:?}:\n{}", self.maillog());
    }

    /// `NOQUEUE: reject: RCPT` lines for `address` (`to=<address>`): refused RCPTs, logged
    /// at once.
    pub fn rejects(&self, address: &str) -> usize {
        let to = format!("to=<{address}>");
        self.maillog()
            .lines()
            .filter(|l| l.contains("NOQUEUE: reject: RCPT") && l.contains(&to))
            .count()
    }

    /// `connect from` lines: connections smtpd accepted (the readiness check's included).
    pub fn connects(&self) -> usize {
        self.maillog()
            .lines()
            .filter(|l| l.contains(" connect from "))
            .count()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a private Postfix in `dir` (conf/, queue/, data/, maillog, dump/ of its
/// smtp-sink), or says why it cannot run here.
pub async fn start(dir: &Path, opts: &PostfixOptions<'_>) -> Result<Postfix, String> {
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
    let sink = start_smtp_sink(dir).await;
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
    let port = super::free_port();
    let maillog = dir.join("maillog");
    let mut main_cf = format!(
        "compatibility_level = 3.6\n\
         queue_directory = {queue}\n\
         data_directory = {data}\n\
         mail_owner = postfix\n\
         myhostname = {myhostname}\n\
         mydestination =\n\
         inet_protocols = ipv4\n\
         local_recipient_maps =\n\
         alias_maps =\n\
         virtual_alias_maps =\n\
         smtpd_peername_lookup = no\n\
         smtpd_client_connection_count_limit = 0\n\
         smtpd_client_connection_rate_limit = 0\n\
         smtpd_proxy_filter = {sink}\n\
         maillog_file = {maillog}\n\
         maillog_file_prefixes = {dir}\n",
        queue = queue.display(),
        data = data.display(),
        myhostname = opts.myhostname,
        sink = sink.addr,
        maillog = maillog.display(),
        dir = dir.display(),
    );
    match opts.relay_domain {
        Some(domain) => {
            let map: String = opts
                .recipients
                .iter()
                .map(|r| format!("{r} OK\n"))
                .collect();
            std::fs::write(conf.join("relay_recipients"), map).unwrap();
            main_cf.push_str(&format!(
                "mynetworks =\n\
                 relay_domains = {domain}\n\
                 relay_recipient_maps = texthash:{conf}/relay_recipients\n\
                 smtpd_reject_unlisted_recipient = yes\n\
                 smtpd_relay_restrictions = reject_unauth_destination\n\
                 smtpd_recipient_restrictions =\n",
                conf = conf.display(),
            ));
        }
        None => main_cf.push_str(
            "mynetworks = 127.0.0.0/8\n\
             smtpd_relay_restrictions = permit_mynetworks, reject\n\
             relay_recipient_maps =\n",
        ),
    }
    let mut master_cf = format!(
        "127.0.0.1:{port} inet n - n - - smtpd\n\
         rewrite unix - - n - - trivial-rewrite\n\
         proxymap unix - - n - - proxymap\n\
         anvil unix - - n - 1 anvil\n\
         postlog unix-dgram n - n - 1 postlogd\n"
    );
    if let Some(cert) = opts.tls {
        let chain_file = conf.join("chain.pem");
        std::fs::write(&chain_file, chain_pem(cert)).unwrap();
        // Log level 1: one `TLS connection established` line per encrypted session.
        main_cf.push_str(&format!(
            "smtpd_tls_security_level = may\n\
             smtpd_tls_chain_files = {chain}\n\
             smtpd_tls_session_cache_database =\n\
             smtpd_tls_loglevel = 1\n",
            chain = chain_file.display(),
        ));
        master_cf.push_str("tlsmgr unix - - n 1000? 1 tlsmgr\n");
    }
    std::fs::write(conf.join("main.cf"), main_cf).unwrap();
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
        sink,
    };
    if wait_listening(addr).await {
        Ok(pf)
    } else {
        Err(format!("Postfix did not listen on {addr}"))
    }
}

/// [`start`], or `None` after printing SKIP (a failure under CI).
pub async fn start_or_skip(dir: &Path, opts: &PostfixOptions<'_>) -> Option<Postfix> {
    match start(dir, opts).await {
        Ok(pf) => Some(pf),
        Err(why) if std::env::var_os("CI").is_some() => panic!("Postfix instance: {why}"),
        Err(why) => {
            println!("SKIP: Postfix instance: {why}");
            None
        }
    }
}

/// The key and chain of `cert` as one PEM file (`smtpd_tls_chain_files`).
fn chain_pem(cert: &ServerCert) -> String {
    let key = match &cert.key {
        rustls::pki_types::PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        _ => unreachable!("rcgen keys are PKCS#8"),
    };
    let mut pem = pem_block("PRIVATE KEY", &key);
    for c in &cert.chain {
        pem.push_str(&pem_block("CERTIFICATE", c.as_ref()));
    }
    pem
}

fn pem_block(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
