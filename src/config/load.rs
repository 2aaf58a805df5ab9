//! Loading a config directory: read every file, validate, report every error at once.
//!
//! Layout of the directory (paths in the files are relative to it):
//! `mxgate.yaml` (optional), `listeners/*.yaml` (one listener each, in file-name order),
//! `policies/mail_flow.yaml`, `policies/hat.yaml` and `policies/rat.yaml` (optional),
//! `policies/routes.yaml`, `policies/destinations.yaml`, `policies/mta_sts.yaml` and `policies/tlsrpt.yaml` (optional).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_saphyr::Spanned;

use super::defs::{GlobalDef, HatDef, ListenerDef, MailFlowDef, NamedMap, RatDef, SpannedStr};
use super::error::{index, ConfigError, ConfigErrors, FileErrors};
use super::listeners::{
    build_listener, check_listeners, BuiltListener, CrossCheck, ListenerContext,
};
use super::model::{Config, DeliverySettings, DnsSettings, Global, MailLogFormat, MailLogTarget};
use super::outbound::RouteTable;
use super::policies::{build_policies, Named};
use super::routes::load_outbound;
use super::tables::{build_hats, build_rats};
use super::validation::{load_validation, ValidationContext};
use super::values::{
    parse_duration, parse_listen_addr, parse_log_format, parse_resolver, parse_size,
};
use crate::policy::flow::MailFlowPolicy;
use crate::policy::hat::HostAccessTable;
use crate::policy::rat::RecipientAccessTable;
use crate::validate::settings::ValidationSettings;

/// Values given on the command line, replacing those from the files.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Replaces `spool_dir` (taken as given, not relative to the config dir).
    pub spool_dir: Option<PathBuf>,
    /// Replaces `mail_log.target`.
    pub mail_log: Option<MailLogTarget>,
    /// Replaces `certs_dir` (taken as given).
    pub certs_dir: Option<PathBuf>,
    /// Replaces `dns.resolvers`.
    pub dns_resolvers: Option<Vec<SocketAddr>>,
    /// Replaces `metrics.listen` (`Some(None)` disables metrics).
    pub metrics_listen: Option<Option<SocketAddr>>,
    /// Listener name and the addresses it binds instead of its `bind:`.
    pub binds: Vec<(String, Vec<SocketAddr>)>,
}

/// Default metrics endpoint.
const DEFAULT_METRICS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9187);

/// Outcome of reading one YAML file.
pub(super) enum Read<T> {
    /// The file does not exist.
    Missing,
    /// It could not be read or parsed; the error is recorded.
    Failed,
    /// Parsed; `None` for an empty document.
    Parsed(Option<T>),
}

/// Reads and parses the file of `e` under `dir`, recording read and parse errors.
pub(super) fn read_yaml<T: DeserializeOwned>(dir: &Path, e: &mut FileErrors<'_>) -> Read<T> {
    let full = dir.join(&e.file);
    if !full.exists() {
        return Read::Missing;
    }
    let text = match std::fs::read_to_string(&full) {
        Ok(t) => t,
        Err(err) => {
            e.whole(format!("cannot read: {err}"));
            return Read::Failed;
        }
    };
    let mut text = text;
    // Each unknown key is reported, blanked out, and the file parsed again, so that the
    // other errors of the file are reported too (bounded: a file of nothing but typos).
    for _ in 0..100 {
        match serde_saphyr::from_str::<Option<T>>(&text) {
            Ok(v) => return Read::Parsed(v),
            Err(err) => {
                e.parse(&err);
                let at = err
                    .location()
                    .filter(|_| super::recover::is_unknown_key(&err.without_snippet().to_string()));
                let blanked = at.is_some_and(|l| {
                    let (line, column) = (l.line(), l.column());
                    match (u32::try_from(line), u32::try_from(column)) {
                        (Ok(line), Ok(column)) => {
                            super::recover::blank_entry(&mut text, line, column)
                        }
                        _ => false,
                    }
                });
                if !blanked {
                    return Read::Failed;
                }
            }
        }
    }
    Read::Failed
}

/// Resolves a directory key: relative to the config dir.
fn dir_key(
    v: &Option<SpannedStr>,
    default: &str,
    dir: &Path,
    path: &str,
    e: &mut FileErrors<'_>,
) -> PathBuf {
    match v {
        Some(s) if s.value.trim().is_empty() => {
            e.on(s, path, "path is empty");
            dir.join(default)
        }
        Some(s) => dir.join(s.value.trim()),
        None => dir.join(default),
    }
}

/// Parses an optional duration.
pub(super) fn duration(
    v: &Option<SpannedStr>,
    default: Duration,
    allow_zero: bool,
    path: &str,
    e: &mut FileErrors<'_>,
) -> Duration {
    let Some(s) = v else { return default };
    match parse_duration(&s.value) {
        Ok(d) if d.is_zero() && !allow_zero => {
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

/// Builds the global settings from `mxgate.yaml` and the overrides.
fn build_global(dir: &Path, d: &GlobalDef, o: &Overrides, e: &mut FileErrors<'_>) -> Global {
    let spool_dir = dir_key(&d.spool_dir, "spool", dir, "spool_dir", e);
    let certs_dir = dir_key(&d.certs_dir, "certs", dir, "certs_dir", e);
    let log = d.mail_log.as_ref();
    let mail_log = match log.and_then(|l| l.target.as_ref()) {
        Some(t) if t.value.trim().is_empty() => {
            e.on(t, "mail_log.target", "write stdout or a file path");
            MailLogTarget::Stdout
        }
        Some(t) if t.value.trim() == "stdout" => MailLogTarget::Stdout,
        Some(t) => MailLogTarget::File(dir.join(t.value.trim())),
        None => MailLogTarget::Stdout,
    };
    let mail_log_format = match log.and_then(|l| l.format.as_ref()) {
        Some(f) => parse_log_format(&f.value).unwrap_or_else(|m| {
            e.on(f, "mail_log.format", m);
            MailLogFormat::Text
        }),
        None => MailLogFormat::Text,
    };
    let mut resolvers = Vec::new();
    let dns = d.dns.as_ref();
    for (i, r) in dns
        .and_then(|x| x.resolvers.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        match parse_resolver(&r.value) {
            Ok(a) => resolvers.push(a),
            Err(m) => e.on(r, index("dns.resolvers", i), m),
        }
    }
    let dns_timeout = duration(
        &dns.and_then(|x| x.timeout.clone()),
        Duration::from_secs(5),
        false,
        "dns.timeout",
        e,
    );
    let self_check_interval = duration(
        &dns.and_then(|x| x.self_check_interval.clone()),
        Duration::from_secs(3600),
        true,
        "dns.self_check_interval",
        e,
    );
    let hosts_file = match dns.and_then(|x| x.hosts_file.as_ref()) {
        Some(h) if h.value.trim().is_empty() => {
            e.on(h, "dns.hosts_file", "path is empty");
            None
        }
        Some(h) => {
            let path = dir.join(h.value.trim());
            if let Err(err) = crate::dns::hosts::HostsFile::read(&path) {
                e.on(
                    h,
                    "dns.hosts_file",
                    format!("cannot read {}: {err}", path.display()),
                );
            }
            Some(path)
        }
        None => None,
    };
    let shutdown_grace = duration(
        &d.shutdown_grace,
        Duration::from_secs(30),
        true,
        "shutdown_grace",
        e,
    );
    let metrics_listen = match d.metrics.as_ref().and_then(|m| m.listen.as_ref()) {
        None => Some(DEFAULT_METRICS),
        Some(Spanned { value: None, .. }) => None,
        Some(s @ Spanned { value: Some(v), .. }) => match parse_listen_addr(v) {
            Ok(a) => Some(a),
            Err(m) => {
                e.on(
                    s,
                    "metrics.listen",
                    format!("{m}, or null to disable metrics"),
                );
                None
            }
        },
    };
    let ready_min_free_space = match d
        .metrics
        .as_ref()
        .and_then(|m| m.ready_min_free_space.as_ref())
    {
        None => crate::metrics::SPOOL_MIN_FREE_BYTES,
        Some(s) => parse_size(&s.value).unwrap_or_else(|m| {
            e.on(s, "metrics.ready_min_free_space", m);
            crate::metrics::SPOOL_MIN_FREE_BYTES
        }),
    };
    let dl = d.delivery.as_ref();
    let concurrency = match dl.and_then(|x| x.concurrency.as_ref()) {
        Some(c) => match c.value.trim().parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => {
                e.on(
                    c,
                    "delivery.concurrency",
                    "must be a whole number of at least 1",
                );
                20
            }
        },
        None => 20,
    };
    let delivery = DeliverySettings {
        concurrency,
        retry_initial: duration(
            &dl.and_then(|x| x.retry_initial.clone()),
            Duration::from_secs(60),
            false,
            "delivery.retry_initial",
            e,
        ),
        retry_max: duration(
            &dl.and_then(|x| x.retry_max.clone()),
            Duration::from_secs(3600),
            false,
            "delivery.retry_max",
            e,
        ),
        max_queue_lifetime: duration(
            &dl.and_then(|x| x.max_queue_lifetime.clone()),
            Duration::from_secs(5 * 24 * 3600),
            false,
            "delivery.max_queue_lifetime",
            e,
        ),
        hostname: dl
            .and_then(|x| x.hostname.as_ref())
            .map(|h| h.value.trim().to_string()),
    };
    let per_ip_ipv6_prefix = match d.per_ip.as_ref().and_then(|p| p.ipv6_prefix.as_ref()) {
        None => crate::policy::rate::DEFAULT_IPV6_PREFIX,
        Some(v) => match v.value.trim().trim_start_matches('/').parse::<u8>() {
            Ok(n) if (32..=128).contains(&n) => n,
            _ => {
                e.on(
                    v,
                    "per_ip.ipv6_prefix",
                    format!(
                        "{:?} is not a prefix length from 32 to 128 (64: each /64 counts as one client)",
                        v.value
                    ),
                );
                crate::policy::rate::DEFAULT_IPV6_PREFIX
            }
        },
    };
    let sender_orgs = super::sender_orgs::build_sender_orgs(
        d.metrics.as_ref().and_then(|m| m.sender_orgs.as_ref()),
        e,
    );
    let shared_state = super::shared_state::build_shared_state(d.shared_state.as_ref(), dir, e);
    Global {
        shared_state,
        delivery,
        per_ip_ipv6_prefix,
        sender_orgs,
        spool_dir: o.spool_dir.clone().unwrap_or(spool_dir),
        mail_log: o.mail_log.clone().unwrap_or(mail_log),
        mail_log_format,
        dns: DnsSettings {
            resolvers: o.dns_resolvers.clone().unwrap_or(resolvers),
            timeout: dns_timeout,
            hosts_file,
            self_check_interval,
        },
        certs_dir: o.certs_dir.clone().unwrap_or(certs_dir),
        shutdown_grace,
        metrics_listen: o.metrics_listen.unwrap_or(metrics_listen),
        ready_min_free_space,
    }
}

/// Everything read from `policies/`.
struct Tables {
    /// Mail-flow policies.
    policies: Named<MailFlowPolicy>,
    /// HATs.
    hats: Named<HostAccessTable>,
    /// Per HAT, why it relays for everyone.
    hat_relay_all: BTreeMap<String, Vec<String>>,
    /// RATs.
    rats: Named<RecipientAccessTable>,
    /// Per RAT, entries accepting every recipient.
    rat_accept_all: BTreeMap<String, Vec<String>>,
    /// Whether `policies/rat.yaml` exists.
    rat_file_exists: bool,
    /// `policies/validation.yaml`.
    validation: ValidationSettings,
}

/// Reads `policies/` (the routes are read first: a call-ahead entry needs one).
fn load_policies(dir: &Path, routes: &RouteTable, sink: &mut Vec<ConfigError>) -> Tables {
    let mut t = Tables {
        policies: Named::unknown(),
        hats: Named::unknown(),
        hat_relay_all: BTreeMap::new(),
        rats: Named::unknown(),
        rat_accept_all: BTreeMap::new(),
        rat_file_exists: true,
        validation: ValidationSettings::default(),
    };
    if !dir.join("policies").is_dir() {
        FileErrors::new("policies/", sink).whole(format!(
            "directory not found in {}: it holds mail_flow.yaml, hat.yaml and rat.yaml (--config-dir names the configuration directory)",
            dir.display()
        ));
        return t;
    }
    let mut e = FileErrors::new(Path::new("policies").join("mail_flow.yaml"), sink);
    match read_yaml::<MailFlowDef>(dir, &mut e) {
        Read::Missing => e.whole("file not found: it defines the mail-flow policies the HATs name"),
        Read::Failed => {}
        Read::Parsed(def) => {
            t.policies.map = build_policies(&def.unwrap_or_default(), &mut e);
            t.policies.complete = true;
        }
    }
    let mut e = FileErrors::new(Path::new("policies").join("hat.yaml"), sink);
    match read_yaml::<NamedMap<Option<HatDef>>>(dir, &mut e) {
        Read::Missing => e.whole("file not found: it defines the HATs the listeners name"),
        Read::Failed => {}
        Read::Parsed(def) => {
            (t.hats.map, t.hat_relay_all) =
                build_hats(&def.unwrap_or_default(), &t.policies, &mut e);
            t.hats.complete = true;
        }
    }
    let (validation, ldap_names) = load_validation(dir, sink);
    t.validation = validation;
    let vctx = ValidationContext {
        dir,
        ldap_names,
        routes,
    };
    let mut e = FileErrors::new(Path::new("policies").join("rat.yaml"), sink);
    match read_yaml::<NamedMap<Option<RatDef>>>(dir, &mut e) {
        Read::Missing => {
            t.rat_file_exists = false;
            t.rats.complete = true;
        }
        Read::Failed => {}
        Read::Parsed(def) => {
            (t.rats.map, t.rat_accept_all) = build_rats(&def.unwrap_or_default(), &vctx, &mut e);
            t.rats.complete = true;
        }
    }
    t
}

/// Lists `listeners/*.yaml` in file-name order.
fn listener_files(dir: &Path, sink: &mut Vec<ConfigError>) -> Vec<PathBuf> {
    let mut e = FileErrors::new("listeners/", sink);
    let ldir = dir.join("listeners");
    if !ldir.is_dir() {
        e.whole(format!(
            "directory not found in {}: it holds one YAML file per listener (--config-dir names the configuration directory)",
            dir.display()
        ));
        return Vec::new();
    }
    let entries = match std::fs::read_dir(&ldir) {
        Ok(it) => it,
        Err(err) => {
            e.whole(format!("cannot read directory: {err}"));
            return Vec::new();
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|x| x.path().is_file())
        .filter_map(|x| x.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && !n.starts_with('.'))
        .collect();
    names.sort();
    if names.is_empty() {
        e.whole("no listener defined: add a .yaml file per listener");
    }
    names
        .into_iter()
        .map(|n| Path::new("listeners").join(n))
        .collect()
}

/// Loads and validates the configuration in `dir`, reporting every error found.
pub fn load(dir: &Path, overrides: &Overrides) -> Result<Config, ConfigErrors> {
    let mut sink = Vec::new();
    if !dir.is_dir() {
        let e = ConfigError {
            file: PathBuf::new(),
            line: 0,
            column: 0,
            path: String::new(),
            message: format!("configuration directory {} not found", dir.display()),
        };
        return Err(ConfigErrors(vec![e]));
    }
    let mut e = FileErrors::new("mxgate.yaml", &mut sink);
    let global_def = match read_yaml::<GlobalDef>(dir, &mut e) {
        Read::Parsed(Some(d)) => d,
        _ => GlobalDef::default(),
    };
    let global = build_global(dir, &global_def, overrides, &mut e);
    let (routes, destinations) = load_outbound(dir, &global.certs_dir, &mut sink);
    let tables = load_policies(dir, &routes, &mut sink);
    let ctx = ListenerContext {
        dir,
        certs_dir: &global.certs_dir,
        hats: &tables.hats,
        rats: &tables.rats,
        rat_file_exists: tables.rat_file_exists,
        sender_orgs: &global.sender_orgs,
    };
    let mut built: Vec<BuiltListener> = Vec::new();
    let mut all_parsed = true;
    for file in listener_files(dir, &mut sink) {
        let mut e = FileErrors::new(file, &mut sink);
        match read_yaml::<Spanned<ListenerDef>>(dir, &mut e) {
            Read::Parsed(Some(def)) => built.push(build_listener(&def, &ctx, &mut e)),
            Read::Parsed(None) => {
                e.whole("file is empty: define a listener (name, type, bind, hostname, hat)");
                all_parsed = false;
            }
            Read::Missing | Read::Failed => all_parsed = false,
        }
    }
    let cc = CrossCheck {
        binds: &overrides.binds,
        all_parsed,
        hat_relay_all: &tables.hat_relay_all,
        rat_accept_all: &tables.rat_accept_all,
    };
    check_listeners(&mut built, &cc, &mut sink);
    let public_hosts: Vec<String> = built
        .iter()
        .filter(|b| b.listener.kind == super::model::ListenerKind::Public)
        .map(|b| b.listener.hostname.clone())
        .collect();
    let mta_sts = super::mta_sts::load_mta_sts(dir, &global.certs_dir, &public_hosts, &mut sink);
    // The policy endpoint binds beside the listeners: the same address fails at start.
    if let Some(m) = &mta_sts {
        for addr in &m.listen {
            let clash = built.iter().find_map(|b| {
                let l = &b.listener;
                l.bind
                    .iter()
                    .find(|x| super::listeners::conflicts(x, addr))
                    .map(|x| (l.name.clone(), *x))
            });
            if let Some((name, x)) = clash {
                sink.push(ConfigError {
                    file: Path::new("policies").join("mta_sts.yaml"),
                    line: 0,
                    column: 0,
                    path: "listen".into(),
                    message: format!("{addr} clashes with listener {name}'s bind address {x}: give the MTA-STS endpoint its own address or port (usually 443)"),
                });
            }
        }
    }
    let tlsrpt = super::tlsrpt::load_tlsrpt(dir, mta_sts.as_ref(), &mut sink);
    sink.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    let (warnings, errors): (Vec<ConfigError>, Vec<ConfigError>) =
        sink.into_iter().partition(ConfigError::is_warning);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        dir: dir.to_path_buf(),
        global,
        listeners: built.into_iter().map(|b| b.listener).collect(),
        hats: tables.hats.map,
        policies: tables.policies.map,
        rats: tables.rats.map,
        routes: Arc::new(routes),
        destinations: Arc::new(destinations),
        validation: Arc::new(tables.validation),
        mta_sts: mta_sts.map(Arc::new),
        tlsrpt: tlsrpt.map(Arc::new),
        warnings,
    })
}
