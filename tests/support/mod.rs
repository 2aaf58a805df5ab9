//! The test harness, included by every test file as `mod support;`:
//! - [`Mxgate`] runs the built binary (`mxgate serve`) and kills it when dropped;
//! - [`Server`] runs the gateway in-process through the library's `app::start`;
//! - [`Sink`] is the internal server (downstream SMTP) the relay delivers to;
//! - [`Client`] is the line-level SMTP client;
//! - [`log`] waits for mail-log lines matching a pattern;
//! - [`Dnsmasq`](dnsmasq::Dnsmasq) serves test zones, [`pki`] makes test certificates;
//! - [`postfix`] runs a private Postfix (or Postfix's smtp-sink) as the internal server;
//! - [`slapd`] runs a private OpenLDAP slapd loaded from an LDIF;
//! - [`haproxy`] runs a private HAProxy sending PROXY headers, [`redis`] a private redis-server;
//! - [`tlsrpt`] builds TLS-RPT report bodies, [`validation`] the recipient-validation configuration;
//! - [`free_port`], [`copy_dir`], [`relay_config`], [`wait_until`], [`tmpfs`] and small helpers.

#![allow(dead_code, unused_imports)]

pub mod client;
pub mod dnsmasq;
pub mod haproxy;
pub mod log;
pub mod mxgate;
pub mod pki;
pub mod postfix;
pub mod redis;
pub mod server;
pub mod sink;
pub mod slapd;
pub mod tlsrpt;
pub mod validation;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use client::{tls_connector, try_send_one, Client};
pub use log::match_line;
pub use mxgate::Mxgate;
pub use server::Server;
pub use sink::{Received, ServerTls, Sink, SinkConfig};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// Writes `policies/routes.yaml` in the configuration `dir`: every domain to `downstream`.
pub fn route_all_to(dir: &Path, downstream: SocketAddr) {
    std::fs::write(
        dir.join("policies/routes.yaml"),
        format!(
            "routes:\n  - domain: ALL\n    hosts:\n      - host: {}\n        port: {}\n",
            downstream.ip(),
            downstream.port()
        ),
    )
    .unwrap();
}

/// Status code and body of a whole HTTP response.
pub fn parse_http(text: &str) -> (u16, String) {
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.to_string())
}

/// A copy of the e2e fixture whose default route goes to `downstream`, with fast retries.
pub fn relay_config(downstream: SocketAddr, retry_initial: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("tests/fixtures/e2e"), dir.path());
    route_all_to(dir.path(), downstream);
    let global = std::fs::read_to_string(dir.path().join("mxgate.yaml")).unwrap();
    std::fs::write(
        dir.path().join("mxgate.yaml"),
        format!("{global}delivery:\n  retry_initial: {retry_initial}\n  retry_max: {retry_initial}\n  hostname: mx.test.example\n"),
    )
    .unwrap();
    dir
}

/// True when every one of `tools` runs (`TOOL --version`); otherwise prints SKIP naming the
/// missing ones, and fails under CI, where every tool the tests use must be installed.
pub fn tools_available(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            std::process::Command::new(t)
                .arg("--version")
                .output()
                .is_err()
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} must be installed in CI",
        missing.join(", ")
    );
    println!("SKIP: {} not installed", missing.join(", "));
    false
}

/// Polls `f` until it holds; panics naming `what` after 30 s (a generous bound for a loaded
/// 2-core CI machine; the usual wait is well under a second).
pub async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Unmounts a tmpfs when dropped.
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A 64 KiB tmpfs at `dir/spool`, to fill up: `None` (after printing SKIP) when it cannot be
/// mounted, which CI, running as root, must always be able to do.
pub fn tiny_tmpfs(dir: &Path) -> Option<(PathBuf, Unmount)> {
    tmpfs(dir, "64k")
}

/// A tmpfs of `size` (mount's syntax: `2m`) at `dir/spool`, like [`tiny_tmpfs`].
pub fn tmpfs(dir: &Path, size: &str) -> Option<(PathBuf, Unmount)> {
    let mnt = dir.join("spool");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root and must be able to mount a tmpfs"
        );
        eprintln!("SKIP: cannot mount tmpfs (not root)");
        return None;
    }
    Some((mnt.clone(), Unmount(mnt)))
}

/// A port that was free on every IPv4 address a moment ago: for a server that is down, or
/// one to start later on a known port. The one free-port helper of the tests.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The number after `key` (`"ICID "`, `"DCID "`, `"MID "`) in a mail-log line.
pub fn id_after(line: &str, key: &str) -> u64 {
    line.split(key)
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {key:?} number in {line:?}"))
}

/// The message id at the end of a `250 2.0.0 … queued as MID` reply.
pub fn queued_mid(reply: &str) -> u64 {
    reply
        .trim_end()
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MID at the end of {reply:?}"))
}

/// [`free_port`] on 127.0.0.1: the address of an internal server that is down.
pub fn closed_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Message `mid`'s queue file `<spool>/queue/MID.mail` split as docs/spool.md describes it:
/// the first line `mxgate-queue 2 body-at N length L`, the envelope (text, to its `end` line), and the
/// body from byte N to the end. Panics naming the file when it is missing or malformed.
pub fn queued_parts(spool: &Path, mid: u64) -> (String, Vec<u8>) {
    let p = spool.join(format!("queue/{mid}.mail"));
    let file = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let nl = file.iter().position(|&b| b == b'\n').expect("first line");
    let first = std::str::from_utf8(&file[..nl]).unwrap();
    let (offset, len) = first
        .strip_prefix("mxgate-queue 2 body-at ")
        .and_then(|r| r.split_once(" length "))
        .unwrap_or_else(|| panic!("{}: first line {first:?}", p.display()));
    let (offset, len): (usize, usize) = (offset.parse().unwrap(), len.parse().unwrap());
    assert_eq!(file.len() - offset, len, "{}: body length", p.display());
    let env = String::from_utf8(file[nl + 1..offset].to_vec()).unwrap();
    let end = env.find("\nend\n").expect("envelope end line") + 5;
    (env[..end].to_string(), file[offset..].to_vec())
}

/// The body of queued message `mid`, as text (see [`queued_parts`]).
pub fn queued_body(spool: &Path, mid: u64) -> String {
    String::from_utf8(queued_parts(spool, mid).1).unwrap()
}
