//! `listeners/*.yaml`: one listener per file, and the checks across listeners.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::defs::{ListenerDef, ProxyProtocolDef, SpannedStr, TimeoutsDef};
use super::error::{index, ConfigError, FileErrors, Pos};
use super::model::{Listener, ListenerKind, ProxyProtocol, Timeouts};
use super::policies::Named;
use super::values::{
    check_hostname, host_bits_warning, parse_count, parse_duration, parse_listen_addr,
    parse_listener_kind, parse_network,
};
use crate::policy::flow::MailFlowPolicy;
use crate::policy::hat::HostAccessTable;
use crate::policy::rat::RecipientAccessTable;

/// Where a bind address came from.
#[derive(Debug, Clone)]
pub(crate) enum BindSource {
    /// Written in the listener's file at this position.
    File(Pos),
    /// Given as the override with this index.
    Override(usize),
}

/// A listener with what the checks across listeners need to know about it.
#[derive(Debug)]
pub(crate) struct BuiltListener {
    /// The listener (with placeholders where its file has errors).
    pub listener: Listener,
    /// Its file, relative to the config dir.
    pub file: PathBuf,
    /// Where its name was written, when it has one.
    pub name_pos: Option<Pos>,
    /// Source of each address in `listener.bind`.
    pub bind_sources: Vec<BindSource>,
    /// Its type, when valid.
    pub kind: Option<ListenerKind>,
    /// HAT name and where it was written.
    pub hat_ref: Option<(String, Pos)>,
    /// RAT name and where it was written.
    pub rat_ref: Option<(String, Pos)>,
}

/// What listeners refer to.
pub(crate) struct ListenerContext<'a> {
    /// The config dir.
    pub dir: &'a Path,
    /// Resolved certificates directory.
    pub certs_dir: &'a Path,
    /// HATs.
    pub hats: &'a Named<HostAccessTable>,
    /// RATs.
    pub rats: &'a Named<RecipientAccessTable>,
    /// Whether `policies/rat.yaml` exists (for a hint).
    pub rat_file_exists: bool,
    /// The `sender_org` suffix table of `mxgate.yaml`.
    pub sender_orgs: &'a Arc<crate::metrics::sender_org::SenderOrgs>,
}

/// A HAT that never matches anything, standing in for one that could not be built.
fn placeholder_hat(name: &str) -> Arc<HostAccessTable> {
    Arc::new(HostAccessTable::new(
        name.to_string(),
        Vec::new(),
        Arc::new(MailFlowPolicy::builtin_default("ACCEPTED")),
    ))
}

/// A required key, or an error at the top of the file.
fn required<'d>(
    v: &'d Option<SpannedStr>,
    top: Pos,
    key: &str,
    e: &mut FileErrors<'_>,
) -> Option<&'d SpannedStr> {
    if v.is_none() {
        e.at(top, key, format!("missing required key `{key}`"));
    }
    v.as_ref()
}

/// True when a certificate or key reference is a path rather than a name in `certs_dir`.
fn is_path(s: &str) -> bool {
    s.contains('/') || [".pem", ".crt", ".key"].iter().any(|x| s.ends_with(x))
}

/// Resolves `certificate:` and `key:`.
fn cert_and_key(
    d: &ListenerDef,
    ctx: &ListenerContext<'_>,
    e: &mut FileErrors<'_>,
) -> (Option<PathBuf>, Option<PathBuf>) {
    let resolve = |s: &str, ext: &str| {
        if is_path(s) {
            ctx.dir.join(s)
        } else {
            ctx.certs_dir.join(format!("{s}.{ext}"))
        }
    };
    let cert = d.certificate.as_ref().filter(|c| c.value.trim() != "demo");
    let key = d.key.as_ref().filter(|k| k.value.trim() != "demo");
    match (cert, key) {
        (None, None) => (None, None),
        (None, Some(k)) => {
            e.on(k, "key", "key without certificate: set certificate too, or remove key to use the demo certificate");
            (None, None)
        }
        (Some(c), _) if c.value.trim().is_empty() => {
            e.on(
                c,
                "certificate",
                "certificate is empty: write a name in certs_dir, a path, or demo",
            );
            (None, None)
        }
        (Some(c), None) if is_path(c.value.trim()) => {
            e.on(
                c,
                "certificate",
                "certificate is a file path, so key must name the private key file too",
            );
            (None, None)
        }
        (Some(c), None) => (
            Some(resolve(c.value.trim(), "crt")),
            Some(resolve(c.value.trim(), "key")),
        ),
        (Some(c), Some(k)) => (
            Some(resolve(c.value.trim(), "crt")),
            Some(resolve(k.value.trim(), "key")),
        ),
    }
}

/// Parses an optional positive duration.
fn duration(
    v: &Option<SpannedStr>,
    default: Duration,
    path: &str,
    e: &mut FileErrors<'_>,
) -> Duration {
    let Some(s) = v else { return default };
    match parse_duration(&s.value) {
        Ok(d) if d.is_zero() => {
            e.on(s, path, "must be longer than 0");
            default
        }
        Ok(d) => d,
        Err(m) => {
            e.on(s, path, m);
            default
        }
    }
}

/// Parses an optional whole number of at least `min`.
fn number(
    v: &Option<SpannedStr>,
    default: u64,
    min: u64,
    path: &str,
    e: &mut FileErrors<'_>,
) -> u64 {
    let Some(s) = v else { return default };
    match parse_count(&s.value) {
        Ok(n) if n < min => {
            e.on(s, path, format!("must be at least {min}"));
            default
        }
        Ok(n) if n > u64::from(u32::MAX) => {
            e.on(s, path, format!("{n} is too large"));
            default
        }
        Ok(n) => n,
        Err(m) => {
            e.on(s, path, m);
            default
        }
    }
}

/// Builds the timeouts.
fn timeouts(d: &Option<TimeoutsDef>, e: &mut FileErrors<'_>) -> Timeouts {
    let base = Timeouts::default();
    let Some(t) = d else { return base };
    Timeouts {
        command: duration(&t.command, base.command, "timeouts.command", e),
        data: duration(&t.data, base.data, "timeouts.data", e),
        tls_handshake: duration(
            &t.tls_handshake,
            base.tls_handshake,
            "timeouts.tls_handshake",
            e,
        ),
        session: duration(&t.session, base.session, "timeouts.session", e),
    }
}

/// Builds the PROXY protocol settings.
fn proxy_protocol(d: &ProxyProtocolDef, top: Pos, e: &mut FileErrors<'_>) -> ProxyProtocol {
    let mut trusted = Vec::new();
    match &d.trusted {
        None => e.at(
            top,
            "proxy_protocol.trusted",
            "missing required key `trusted` (the load balancers' networks)",
        ),
        Some(list) if list.value.is_empty() => e.on(
            list,
            "proxy_protocol.trusted",
            "list at least one network: a PROXY header from any other host is refused",
        ),
        Some(list) => {
            for (i, s) in list.value.iter().enumerate() {
                match parse_network(&s.value) {
                    Ok(n) => {
                        if let Some(w) = host_bits_warning(&s.value) {
                            e.warn_on(s, &index("proxy_protocol.trusted", i), w);
                        }
                        trusted.push(n)
                    }
                    Err(m) => e.on(s, index("proxy_protocol.trusted", i), m),
                }
            }
        }
    }
    ProxyProtocol {
        trusted,
        timeout: duration(
            &d.timeout,
            Duration::from_secs(5),
            "proxy_protocol.timeout",
            e,
        ),
    }
}

/// Builds one listener from its file.
pub(crate) fn build_listener(
    def: &Spanned<ListenerDef>,
    ctx: &ListenerContext<'_>,
    e: &mut FileErrors<'_>,
) -> BuiltListener {
    let top = Pos::of(def);
    let d = &def.value;
    let mut name_pos = None;
    let name = match required(&d.name, top, "name", e) {
        Some(n) if n.value.trim().is_empty() || n.value.chars().any(char::is_control) => {
            e.on(
                n,
                "name",
                "listener name must be non-empty text on one line",
            );
            String::new()
        }
        Some(n) => {
            name_pos = Some(Pos::of(n));
            n.value.trim().to_string()
        }
        None => String::new(),
    };
    let kind = required(&d.kind, top, "type", e).and_then(|k| {
        parse_listener_kind(&k.value)
            .map_err(|m| e.on(k, "type", m))
            .ok()
            .map(|x| (x, Pos::of(k)))
    });
    let mut bind = Vec::new();
    let mut bind_sources = Vec::new();
    match &d.bind {
        None => e.at(
            top,
            "bind",
            "missing required key `bind` (e.g. bind: [\"127.0.0.1:2525\"])",
        ),
        Some(list) if list.value.is_empty() => {
            e.on(list, "bind", "list at least one address to bind")
        }
        Some(list) => {
            for (i, s) in list.value.iter().enumerate() {
                match parse_listen_addr(&s.value) {
                    Ok(a) => {
                        bind.push(a);
                        bind_sources.push(BindSource::File(Pos::of(s)));
                    }
                    Err(m) => e.on(s, index("bind", i), m),
                }
            }
        }
    }
    let hostname = match required(&d.hostname, top, "hostname", e) {
        Some(h) => {
            if let Err(m) = check_hostname(h.value.trim()) {
                e.on(h, "hostname", m);
            }
            h.value.trim().to_string()
        }
        None => String::new(),
    };
    let (certificate, key) = cert_and_key(d, ctx, e);
    let client_ca_file = d
        .client_ca_file
        .as_ref()
        .and_then(|s| super::destinations::ca_file(s, ctx.dir, "client_ca_file", e));
    let mut hat_ref = None;
    let hat = match required(&d.hat, top, "hat", e) {
        Some(h) => {
            let n = h.value.trim();
            hat_ref = Some((n.to_string(), Pos::of(h)));
            match ctx.hats.find(n) {
                Ok(Some(t)) => t,
                Ok(None) => placeholder_hat(n),
                Err(()) => {
                    e.on(h, "hat", format!("unknown HAT {n:?}"));
                    placeholder_hat(n)
                }
            }
        }
        None => placeholder_hat(""),
    };
    let mut rat_ref = None;
    let rat = match &d.rat {
        Some(r) => {
            let n = r.value.trim();
            rat_ref = Some((n.to_string(), Pos::of(r)));
            match ctx.rats.find(n) {
                Ok(t) => t,
                Err(()) if !ctx.rat_file_exists => {
                    e.on(
                        r,
                        "rat",
                        format!("unknown RAT {n:?} (policies/rat.yaml does not exist)"),
                    );
                    None
                }
                Err(()) => {
                    e.on(r, "rat", format!("unknown RAT {n:?}"));
                    None
                }
            }
        }
        None => {
            if let Some((ListenerKind::Public, at)) = kind {
                e.at(
                    at,
                    "rat",
                    "a public listener needs a rat: mxgate is never an open relay",
                );
            }
            None
        }
    };
    let listener = Listener {
        name,
        kind: kind.map(|k| k.0).unwrap_or(ListenerKind::Public),
        bind,
        hostname,
        certificate,
        key,
        client_ca_file,
        hat,
        rat,
        max_connections: number(&d.max_connections, 1000, 1, "max_connections", e) as usize,
        timeouts: timeouts(&d.timeouts, e),
        max_command_line: number(&d.max_command_line, 512, 512, "max_command_line", e) as usize,
        max_bad_commands: number(&d.max_bad_commands, 10, 0, "max_bad_commands", e) as u32,
        proxy_protocol: d.proxy_protocol.as_ref().map(|p| proxy_protocol(p, top, e)),
        sender_orgs: ctx.sender_orgs.clone(),
    };
    BuiltListener {
        listener,
        file: e.file.clone(),
        name_pos,
        bind_sources,
        kind: kind.map(|k| k.0),
        hat_ref,
        rat_ref,
    }
}

/// True when two listen addresses cannot both be bound.
pub(crate) fn conflicts(a: &SocketAddr, b: &SocketAddr) -> bool {
    // Port 0 asks the kernel for a fresh port each time: never a conflict.
    if a.port() == 0 || b.port() == 0 {
        return false;
    }
    // `[::ffff:a.b.c.d]` is bound as the IPv4 address it stands for.
    let canon = |s: &SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let (a, b) = (&canon(a), &canon(b));
    a == b
        || (a.port() == b.port()
            && a.is_ipv4() == b.is_ipv4()
            && (a.ip().is_unspecified() || b.ip().is_unspecified()))
}

/// Where bind address `i` of a listener was given, for messages.
fn source_desc(l: &BuiltListener, i: usize) -> String {
    match l.bind_sources.get(i) {
        Some(BindSource::File(p)) => format!("{}:{p}", l.file.display()),
        Some(BindSource::Override(j)) => format!("bind override {j}"),
        None => l.file.display().to_string(),
    }
}

/// Records an error about a bind address wherever it came from.
fn bind_error(l: &BuiltListener, i: usize, message: String, sink: &mut Vec<ConfigError>) {
    let (file, pos, path) = match l.bind_sources.get(i) {
        Some(BindSource::File(p)) => (l.file.clone(), *p, index("bind", i)),
        Some(BindSource::Override(j)) => {
            (PathBuf::new(), Pos::default(), index("overrides.binds", *j))
        }
        None => (l.file.clone(), Pos::default(), "bind".to_string()),
    };
    FileErrors::new(file, sink).at(pos, path, message);
}

/// What the checks across listeners need besides the listeners.
pub(crate) struct CrossCheck<'a> {
    /// Bind overrides: listener name and addresses.
    pub binds: &'a [(String, Vec<SocketAddr>)],
    /// False when a listener file could not be parsed (its name is unknown).
    pub all_parsed: bool,
    /// Per HAT, why it relays for every host.
    pub hat_relay_all: &'a BTreeMap<String, Vec<String>>,
    /// Per RAT, the entries accepting every recipient.
    pub rat_accept_all: &'a BTreeMap<String, Vec<String>>,
}

/// Applies bind overrides and checks names, addresses and open relays across listeners.
pub(crate) fn check_listeners(
    ls: &mut [BuiltListener],
    cc: &CrossCheck<'_>,
    sink: &mut Vec<ConfigError>,
) {
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    for l in ls.iter() {
        let Some(pos) = l.name_pos else { continue };
        match names.get(&l.listener.name) {
            Some(first) => FileErrors::new(l.file.clone(), sink).at(
                pos,
                "name",
                format!(
                    "listener name {:?} is already used in {}",
                    l.listener.name,
                    first.display()
                ),
            ),
            None => {
                names.insert(l.listener.name.clone(), l.file.clone());
            }
        }
    }
    for (j, (name, addrs)) in cc.binds.iter().enumerate() {
        let mut e = FileErrors::new(PathBuf::new(), sink);
        let path = index("overrides.binds", j);
        match ls
            .iter_mut()
            .find(|l| l.name_pos.is_some() && &l.listener.name == name)
        {
            Some(_) if addrs.is_empty() => e.at(
                Pos::default(),
                path,
                format!("no address to bind listener {name:?} to"),
            ),
            Some(l) => {
                l.listener.bind = addrs.clone();
                l.bind_sources = vec![BindSource::Override(j); addrs.len()];
            }
            None if cc.all_parsed => {
                let known: Vec<&str> = names.keys().map(String::as_str).collect();
                e.at(
                    Pos::default(),
                    path,
                    format!(
                        "bind override for unknown listener {name:?} (listeners: {})",
                        known.join(", ")
                    ),
                );
            }
            None => {}
        }
    }
    let mut seen: Vec<(SocketAddr, usize, usize)> = Vec::new();
    for (li, l) in ls.iter().enumerate() {
        for (i, a) in l.listener.bind.iter().enumerate() {
            if let Some((b, lj, bj)) = seen.iter().find(|(b, _, _)| conflicts(a, b)) {
                let other = &ls[*lj];
                let (name, at) = (&other.listener.name, source_desc(other, *bj));
                let msg = if a == b {
                    format!("{a} is already bound by listener {name:?} ({at})")
                } else {
                    format!("{a} overlaps {b} of listener {name:?} ({at}): both cannot be bound")
                };
                bind_error(l, i, msg, sink);
            } else {
                seen.push((*a, li, i));
            }
        }
    }
    for l in ls.iter().filter(|l| l.kind == Some(ListenerKind::Public)) {
        let mut e = FileErrors::new(l.file.clone(), sink);
        if let Some((hat, pos)) = &l.hat_ref {
            if let Some(why) = cc.hat_relay_all.get(hat).filter(|w| !w.is_empty()) {
                let msg = format!(
                    "HAT {hat:?} would make this public listener an open relay: {}",
                    why.join("; ")
                );
                e.at(*pos, "hat", msg);
            }
        }
        if let Some((rat, pos)) = &l.rat_ref {
            if let Some(why) = cc.rat_accept_all.get(rat).filter(|w| !w.is_empty()) {
                let msg = format!(
                    "RAT {rat:?} would make this public listener an open relay: {}",
                    why.join("; ")
                );
                e.at(*pos, "rat", msg);
            }
        }
    }
}
