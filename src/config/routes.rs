//! `policies/routes.yaml` and `policies/destinations.yaml`: SMTP routes and
//! destination controls from their `*Def` forms.
//!
//! Both files are optional: without `routes.yaml` the route table is empty
//! (delivery refuses to start, loading does not fail); without
//! `destinations.yaml` the built-in default controls apply to every domain.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_saphyr::Spanned;

use super::defs::{
    DestinationDef, DestinationsDef, RouteHostDef, RoutesDef, SpannedStr, TlsAlertDef,
};
use super::error::{index, join, ConfigError, FileErrors, Pos};
use super::load::{read_yaml, Read};
use super::outbound::{
    is_dns_name, DestinationControl, DestinationControls, DomainMatch, OutboundTls, Route,
    RouteHost, RouteTable, TlsAlert,
};
use super::values::{parse_bool, parse_count, parse_duration};

/// Reads `policies/routes.yaml` and `policies/destinations.yaml` (both optional).
pub(crate) fn load_outbound(
    dir: &Path,
    certs_dir: &Path,
    sink: &mut Vec<ConfigError>,
) -> (RouteTable, DestinationControls) {
    let mut e = FileErrors::new(Path::new("policies").join("routes.yaml"), sink);
    let routes = match read_yaml::<RoutesDef>(dir, &mut e) {
        Read::Parsed(Some(def)) => build_routes(&def, &mut e),
        Read::Parsed(None) | Read::Missing | Read::Failed => RouteTable::default(),
    };
    let mut e = FileErrors::new(Path::new("policies").join("destinations.yaml"), sink);
    let destinations = match read_yaml::<DestinationsDef>(dir, &mut e) {
        Read::Parsed(Some(def)) => build_destinations(&def, dir, certs_dir, &mut e),
        Read::Parsed(None) | Read::Missing | Read::Failed => DestinationControls::default(),
    };
    (routes, destinations)
}

/// Parses a whole number within `min..=max`.
fn ranged(s: &SpannedStr, min: u64, max: u64, e: &mut FileErrors<'_>, path: &str) -> Option<u64> {
    match parse_count(&s.value) {
        Ok(n) if (min..=max).contains(&n) => Some(n),
        Ok(n) => {
            e.on(s, path, format!("{n} is out of range: {min}-{max}"));
            None
        }
        Err(m) => {
            e.on(s, path, format!("{m}: write a number from {min} to {max}"));
            None
        }
    }
}

/// Parses a domain key, recording errors; `None` when missing or bad.
fn domain_key(
    d: &Option<SpannedStr>,
    entry: Pos,
    path: &str,
    e: &mut FileErrors<'_>,
) -> Option<(DomainMatch, Pos)> {
    let path = join(path, "domain");
    let Some(s) = d else {
        e.at(entry, path, "missing required key `domain`");
        return None;
    };
    match DomainMatch::parse(&s.value) {
        Ok(dm) => Some((dm, Pos::of(s))),
        Err(m) => {
            e.on(s, path, m);
            None
        }
    }
}

/// Records a duplicate domain, or remembers the first occurrence; true when new.
fn first_of(
    dm: &DomainMatch,
    at: Pos,
    seen: &mut BTreeMap<String, Pos>,
    what: &str,
    path: &str,
    e: &mut FileErrors<'_>,
) -> bool {
    let key = dm.to_string();
    if let Some(first) = seen.get(&key) {
        e.at(
            at,
            join(path, "domain"),
            format!("duplicate {what} for {key} (first at line {})", first.line),
        );
        return false;
    }
    seen.insert(key, at);
    true
}

/// Parses a route host: an IP address (IPv6 with or without brackets) or a host name.
fn parse_host(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("host is empty: write an IP address or a host name".into());
    }
    let unbracketed = t
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(t);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    let lower = t.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if is_dns_name(name) {
        return Ok(name.to_string());
    }
    if let Some((h, p)) = t.rsplit_once(':') {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        if p.parse::<u16>().is_ok() && (h.parse::<IpAddr>().is_ok() || is_dns_name(h)) {
            return Err(format!(
                "{t:?}: write the port under `port:`, not in `host`"
            ));
        }
    }
    Err(format!("{t:?} is not an IP address or host name"))
}

/// Builds one route host.
fn build_host(h: &Spanned<RouteHostDef>, path: &str, e: &mut FileErrors<'_>) -> Option<RouteHost> {
    let d = &h.value;
    let host = match &d.host {
        Some(s) => parse_host(&s.value)
            .map_err(|m| e.on(s, join(path, "host"), m))
            .ok(),
        None => {
            e.on(h, join(path, "host"), "missing required key `host`");
            None
        }
    };
    let port = match &d.port {
        Some(s) => ranged(s, 1, 65535, e, &join(path, "port")),
        None => Some(25),
    };
    let priority = match &d.priority {
        Some(s) => ranged(s, 0, 65535, e, &join(path, "priority")),
        None => Some(0),
    };
    Some(RouteHost {
        host: host?,
        port: u16::try_from(port?).ok()?,
        priority: u16::try_from(priority?).ok()?,
    })
}

/// Builds the route table.
pub(crate) fn build_routes(def: &RoutesDef, e: &mut FileErrors<'_>) -> RouteTable {
    let mut routes = Vec::new();
    let mut seen: BTreeMap<String, Pos> = BTreeMap::new();
    // Positions of `ALL` routes not yet followed by another route.
    let mut all_at: Vec<(Pos, String)> = Vec::new();
    let mut misplaced: Vec<(Pos, String)> = Vec::new();
    for (i, r) in def.routes.iter().flatten().enumerate() {
        let path = index("routes", i);
        let domain = domain_key(&r.value.domain, Pos::of(r), &path, e);
        if let Some((dm, at)) = &domain {
            if *dm == DomainMatch::All {
                all_at.push((*at, join(&path, "domain")));
            } else {
                misplaced.append(&mut all_at);
            }
        }
        let domain = domain.filter(|(dm, at)| first_of(dm, *at, &mut seen, "route", &path, e));
        let mut hosts = Vec::new();
        let mut hosts_ok = true;
        match &r.value.hosts {
            None => {
                e.on(r, join(&path, "hosts"), "missing required key `hosts`");
                hosts_ok = false;
            }
            Some(list) if list.value.is_empty() => {
                e.on(
                    list,
                    join(&path, "hosts"),
                    "a route needs at least one host",
                );
                hosts_ok = false;
            }
            Some(list) => {
                let mut seen_hosts: BTreeMap<(String, u16), Pos> = BTreeMap::new();
                for (j, h) in list.value.iter().enumerate() {
                    let hpath = index(&join(&path, "hosts"), j);
                    let Some(rh) = build_host(h, &hpath, e) else {
                        hosts_ok = false;
                        continue;
                    };
                    let key = (rh.host.clone(), rh.port);
                    if let Some(first) = seen_hosts.get(&key) {
                        e.on(
                            h,
                            hpath,
                            format!(
                                "host {} port {} is listed twice in this route (first at line {})",
                                rh.host, rh.port, first.line
                            ),
                        );
                        continue;
                    }
                    seen_hosts.insert(key, Pos::of(h));
                    hosts.push(rh);
                }
            }
        }
        let mx_lookup = match &r.value.mx_lookup {
            Some(s) => parse_bool(&s.value).unwrap_or_else(|m| {
                e.on(s, join(&path, "mx_lookup"), m);
                false
            }),
            None => false,
        };
        if let (Some((domain, _)), true) = (domain, hosts_ok) {
            hosts.sort_by_key(|h| h.priority);
            routes.push(Route {
                domain,
                hosts,
                mx_lookup,
            });
        }
    }
    for (at, path) in misplaced {
        e.at(
            at,
            path,
            "the default route ALL must be the last route (other routes follow it)",
        );
    }
    RouteTable { routes }
}

/// Parses a count that must be at least 1.
fn count(v: &Option<SpannedStr>, base: u32, path: &str, e: &mut FileErrors<'_>) -> u32 {
    match v {
        Some(s) => ranged(s, 1, u64::from(u32::MAX), e, path)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(base),
        None => base,
    }
}

/// Resolves and checks a CA bundle: it must exist and hold at least one PEM certificate.
pub(super) fn ca_file(
    s: &Spanned<Option<String>>,
    dir: &Path,
    path: &str,
    e: &mut FileErrors<'_>,
) -> Option<PathBuf> {
    let t = s.value.as_deref()?.trim();
    if t.is_empty() {
        e.on(
            s,
            path,
            "path is empty: write a PEM file, or null for the webpki roots",
        );
        return None;
    }
    let full = dir.join(t);
    if !full.is_file() {
        e.on(
            s,
            path,
            format!("CA bundle {t:?} not found (relative paths start at the config directory)"),
        );
        return None;
    }
    let certs = CertificateDer::pem_file_iter(&full)
        .map_err(|err| err.to_string())
        .and_then(|it| {
            it.collect::<Result<Vec<_>, _>>()
                .map_err(|err| err.to_string())
        });
    match certs {
        Ok(c) if c.is_empty() => {
            e.on(
                s,
                path,
                format!("CA bundle {t:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
            );
            None
        }
        Ok(_) => Some(full),
        Err(m) => {
            e.on(s, path, format!("cannot read CA bundle {t:?}: {m}"));
            None
        }
    }
}

/// Applies a destination Def over `base` (the resolved default).
fn apply_destination(
    base: &DestinationControl,
    d: &DestinationDef,
    dir: &Path,
    path: &str,
    e: &mut FileErrors<'_>,
) -> DestinationControl {
    let tls = match &d.tls {
        Some(s) => s.value.parse::<OutboundTls>().unwrap_or_else(|m| {
            e.on(s, join(path, "tls"), m);
            base.tls
        }),
        None => base.tls,
    };
    let ca_file = match &d.ca_file {
        Some(s) => ca_file(s, dir, &join(path, "ca_file"), e),
        None => base.ca_file.clone(),
    };
    DestinationControl {
        domain: base.domain.clone(),
        max_concurrent_connections: count(
            &d.max_concurrent_connections,
            base.max_concurrent_connections,
            &join(path, "max_concurrent_connections"),
            e,
        ),
        max_messages_per_connection: count(
            &d.max_messages_per_connection,
            base.max_messages_per_connection,
            &join(path, "max_messages_per_connection"),
            e,
        ),
        max_recipients_per_message: count(
            &d.max_recipients_per_message,
            base.max_recipients_per_message,
            &join(path, "max_recipients_per_message"),
            e,
        ),
        tls,
        ca_file,
    }
}

/// Checks a mail address (`postmaster@example.com`).
pub(crate) fn check_address(s: &str) -> Result<String, String> {
    let t = s.trim();
    let bad = || format!("{t:?} is not a mail address (e.g. postmaster@example.com)");
    let (local, domain) = t.rsplit_once('@').ok_or_else(bad)?;
    let domain = domain.to_ascii_lowercase();
    if local.is_empty()
        || local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>@,;".contains(c))
        || !is_dns_name(&domain)
    {
        return Err(bad());
    }
    Ok(format!("{local}@{domain}"))
}

/// Builds the required-TLS failure alert.
fn build_alert(d: &TlsAlertDef, e: &mut FileErrors<'_>) -> TlsAlert {
    let base = TlsAlert::default();
    let path = "alert_on_required_tls_failure";
    let enabled = match &d.enabled {
        Some(s) => parse_bool(&s.value).unwrap_or_else(|m| {
            e.on(s, join(path, "enabled"), m);
            base.enabled
        }),
        None => base.enabled,
    };
    let interval = match &d.interval {
        Some(s) => match parse_duration(&s.value) {
            Ok(x) if x.is_zero() => {
                e.on(s, join(path, "interval"), "must be longer than 0");
                base.interval
            }
            Ok(x) => x,
            Err(m) => {
                e.on(s, join(path, "interval"), m);
                base.interval
            }
        },
        None => base.interval,
    };
    let mail_to = match &d.mail_to {
        Some(s @ Spanned { value: Some(v), .. }) => check_address(v)
            .map_err(|m| {
                e.on(
                    s,
                    join(path, "mail_to"),
                    format!("{m}, or null for no mail"),
                )
            })
            .ok(),
        _ => None,
    };
    TlsAlert {
        enabled,
        interval,
        mail_to,
    }
}

/// Checks `client_certificate`: a name in `certs_dir` with `NAME.crt` and `NAME.key`.
fn client_certificate(
    s: &Spanned<Option<String>>,
    certs_dir: &Path,
    e: &mut FileErrors<'_>,
) -> Option<String> {
    let path = "client_certificate";
    let name = s.value.as_deref()?.trim();
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    {
        e.on(
            s,
            path,
            format!("{name:?} is not a certificate name: write NAME for certs_dir/NAME.crt and NAME.key, or null"),
        );
        return None;
    }
    if name == "demo" {
        // Generated on first start like the listeners' demo certificate.
        return Some(name.to_string());
    }
    let missing: Vec<String> = ["crt", "key"]
        .iter()
        .map(|ext| format!("{name}.{ext}"))
        .filter(|f| !certs_dir.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        e.on(
            s,
            path,
            format!(
                "certificate {name:?} not found: certs_dir has no {}",
                missing.join(" and no ")
            ),
        );
        return None;
    }
    Some(name.to_string())
}

/// Builds the destination controls.
pub(crate) fn build_destinations(
    def: &DestinationsDef,
    dir: &Path,
    certs_dir: &Path,
    e: &mut FileErrors<'_>,
) -> DestinationControls {
    let builtin = DestinationControl::builtin_default();
    let default = match &def.default {
        Some(d) => {
            if let Some(dom) = &d.value.domain {
                e.on(
                    dom,
                    "default.domain",
                    "`default` applies to every domain: remove `domain`, or add an entry under `destinations`",
                );
            }
            apply_destination(&builtin, &d.value, dir, "default", e)
        }
        None => builtin,
    };
    let mut entries = Vec::new();
    let mut seen: BTreeMap<String, Pos> = BTreeMap::new();
    for (i, d) in def.destinations.iter().flatten().enumerate() {
        let path = index("destinations", i);
        let domain = match domain_key(&d.value.domain, Pos::of(d), &path, e) {
            Some((DomainMatch::All, at)) => {
                e.at(
                    at,
                    join(&path, "domain"),
                    "ALL is not a destination entry: set its values under `default`",
                );
                None
            }
            Some((dm, at)) => Some((dm, at))
                .filter(|(dm, at)| first_of(dm, *at, &mut seen, "destination", &path, e)),
            None => None,
        };
        let mut c = apply_destination(&default, &d.value, dir, &path, e);
        if let Some((dm, _)) = domain {
            c.domain = dm;
            entries.push(c);
        }
    }
    let alert = def
        .alert_on_required_tls_failure
        .as_ref()
        .map(|a| build_alert(a, e))
        .unwrap_or_default();
    let client_certificate = def
        .client_certificate
        .as_ref()
        .and_then(|s| client_certificate(s, certs_dir, e));
    DestinationControls {
        default,
        entries,
        alert,
        client_certificate,
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use crate::config::outbound::{DomainMatch, OutboundTls, RouteHost};
    use crate::config::tests::{config_dir, errors, loaded};
    use crate::config::{load, Overrides};

    /// The shipped config (as in `config::tests`).
    fn shipped_dir() -> PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let s = root.join("shipped");
        if s.join("policies").is_dir() {
            s
        } else {
            root.to_path_buf()
        }
    }

    fn host(h: &str, port: u16, priority: u16) -> RouteHost {
        RouteHost {
            host: h.into(),
            port,
            priority,
        }
    }

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMAo=\n-----END CERTIFICATE-----\n";

    #[test]
    fn shipped_routes_and_destinations_load() {
        let c = load(&shipped_dir(), &Overrides::default())
            .unwrap_or_else(|e| panic!("shipped config has errors:\n{e}"));
        assert_eq!(c.routes.routes.len(), 1);
        let r = c.routes.route_for("example.com").unwrap();
        assert_eq!(r.domain, DomainMatch::All);
        assert_eq!(r.hosts, [host("127.0.0.1", 2526, 10)]);
        assert!(!r.mx_lookup);
        let d = &c.destinations;
        assert_eq!(d.default.domain, DomainMatch::All);
        assert_eq!(d.default.max_concurrent_connections, 20);
        assert_eq!(d.default.max_messages_per_connection, 10);
        assert_eq!(d.default.max_recipients_per_message, 100);
        assert_eq!(d.default.tls, OutboundTls::Preferred);
        assert_eq!(d.default.ca_file, None);
        assert!(d.entries.is_empty());
        assert!(d.alert.enabled);
        assert_eq!(d.alert.interval, Duration::from_secs(3600));
        assert_eq!(d.alert.mail_to, None);
        assert_eq!(d.client_certificate, None);
        // The shipped file spells out the built-in values.
        assert_eq!(**d, Default::default());
    }

    #[test]
    fn absent_files_give_empty_routes_and_builtin_controls() {
        let c = loaded(&config_dir(&[]), &Overrides::default());
        assert!(c.routes.routes.is_empty());
        assert_eq!(c.routes.route_for("example.com"), None);
        assert_eq!(*c.destinations, Default::default());
        // Empty files are the same as absent ones.
        let d = config_dir(&[
            ("policies/routes.yaml", Some("# nothing yet\n")),
            ("policies/destinations.yaml", Some("")),
        ]);
        let c = loaded(&d, &Overrides::default());
        assert!(c.routes.routes.is_empty());
        assert_eq!(*c.destinations, Default::default());
    }

    #[test]
    fn routes_are_normalised_and_matched_by_precedence() {
        let routes = "\
routes:
  - domain: Example.COM.
    hosts:
      - {host: MAIL2.Internal.Example., priority: 20}
      - {host: 10.0.0.1, port: 2525, priority: 10}
      - {host: 10.0.0.2, port: 2525, priority: 10}
  - domain: .example.com
    hosts:
      - host: \"[2001:db8::25]\"
    mx_lookup: true
  - domain: all
    hosts:
      - host: 127.0.0.1
        port: 2526
";
        let d = config_dir(&[("policies/routes.yaml", Some(routes))]);
        let c = loaded(&d, &Overrides::default());
        let t = &c.routes;
        let exact = t.route_for("example.com").unwrap();
        assert_eq!(exact.domain, DomainMatch::Exact("example.com".into()));
        // Sorted by priority, file order kept within a priority.
        assert_eq!(
            exact.hosts,
            [
                host("10.0.0.1", 2525, 10),
                host("10.0.0.2", 2525, 10),
                host("mail2.internal.example", 25, 20)
            ]
        );
        assert!(!exact.mx_lookup);
        let sub = t.route_for("a.b.EXAMPLE.com").unwrap();
        assert_eq!(sub.hosts, [host("2001:db8::25", 25, 0)]);
        assert!(sub.mx_lookup);
        assert_eq!(
            t.route_for("badexample.com").unwrap().domain,
            DomainMatch::All
        );
    }

    #[test]
    fn destination_entries_inherit_from_default() {
        let dests = "\
default:
  max_concurrent_connections: 5
  tls: required
  ca_file: certs/internal-ca.pem
destinations:
  - domain: partner.example
    tls: required-verify
    ca_file: certs/partner-ca.pem
  - domain: .partner.example
    max_messages_per_connection: 3
  - domain: public.example
    tls: preferred-verify
    ca_file: null
  - domain: legacy.example
    tls: no
alert_on_required_tls_failure:
  enabled: false
  interval: 30m
  mail_to: Postmaster@Corp.Example
client_certificate: outbound
";
        let d = config_dir(&[
            ("policies/destinations.yaml", Some(dests)),
            ("certs/internal-ca.pem", Some(CA)),
            ("certs/partner-ca.pem", Some(CA)),
            ("certs/outbound.crt", Some("x")),
            ("certs/outbound.key", Some("x")),
        ]);
        let c = loaded(&d, &Overrides::default());
        let ds = &c.destinations;
        let root = d.path();
        assert_eq!(ds.default.max_concurrent_connections, 5);
        assert_eq!(ds.default.max_messages_per_connection, 10);
        assert_eq!(ds.default.tls, OutboundTls::Required);
        assert_eq!(
            ds.default.ca_file.as_deref(),
            Some(root.join("certs/internal-ca.pem").as_path())
        );

        let p = ds.for_domain("partner.example");
        assert_eq!(p.domain, DomainMatch::Exact("partner.example".into()));
        assert_eq!(p.tls, OutboundTls::RequiredVerify);
        assert_eq!(p.max_concurrent_connections, 5);
        assert_eq!(p.max_recipients_per_message, 100);
        assert_eq!(
            p.ca_file.as_deref(),
            Some(root.join("certs/partner-ca.pem").as_path())
        );

        let s = ds.for_domain("mx1.partner.example");
        assert_eq!(s.domain, DomainMatch::Subdomains("partner.example".into()));
        assert_eq!(s.max_messages_per_connection, 3);
        assert_eq!(s.tls, OutboundTls::Required);
        assert_eq!(s.max_concurrent_connections, 5);
        assert_eq!(
            s.ca_file.as_deref(),
            Some(root.join("certs/internal-ca.pem").as_path())
        );

        let pubd = ds.for_domain("public.example");
        assert_eq!(pubd.tls, OutboundTls::PreferredVerify);
        assert_eq!(pubd.ca_file, None);
        // `tls: no` is the mode, not a YAML boolean.
        assert_eq!(ds.for_domain("legacy.example").tls, OutboundTls::No);
        assert_eq!(ds.for_domain("other.example").domain, DomainMatch::All);

        assert!(!ds.alert.enabled);
        assert_eq!(ds.alert.interval, Duration::from_secs(1800));
        assert_eq!(ds.alert.mail_to.as_deref(), Some("Postmaster@corp.example"));
        assert_eq!(ds.client_certificate.as_deref(), Some("outbound"));

        let d = config_dir(&[(
            "policies/destinations.yaml",
            Some("client_certificate: demo\n"),
        )]);
        let c = loaded(&d, &Overrides::default());
        assert_eq!(c.destinations.client_certificate.as_deref(), Some("demo"));
    }

    #[test]
    fn route_errors_are_located() {
        let routes = "\
routes:
  - domain: ALL
    hosts:
      - host: 127.0.0.1
  - domain: Example.com
    hosts:
      - host: 127.0.0.1:25
      - host: mail..internal
        port: 0
        priority: 70000
      - {host: 10.0.0.1, port: abc}
  - domain: example.com.
    hosts: []
  - domain: \".bad..example\"
    hosts:
      - {host: a.example, priority: 1}
      - {host: A.example., priority: 2}
    mx_lookup: maybe
  - hosts:
      - {port: 25}
  - domain: .sub.example
";
        let d = config_dir(&[("policies/routes.yaml", Some(routes))]);
        assert_eq!(
            errors(&d, &Overrides::default()),
            [
                "policies/routes.yaml:2:13: routes[0].domain: the default route ALL must be the last route (other routes follow it)",
                "policies/routes.yaml:7:15: routes[1].hosts[0].host: \"127.0.0.1:25\": write the port under `port:`, not in `host`",
                "policies/routes.yaml:8:15: routes[1].hosts[1].host: \"mail..internal\" is not an IP address or host name",
                "policies/routes.yaml:9:15: routes[1].hosts[1].port: 0 is out of range: 1-65535",
                "policies/routes.yaml:10:19: routes[1].hosts[1].priority: 70000 is out of range: 0-65535",
                "policies/routes.yaml:11:32: routes[1].hosts[2].port: \"abc\" is not a whole number: write a number from 1 to 65535",
                "policies/routes.yaml:12:13: routes[2].domain: duplicate route for example.com (first at line 5)",
                "policies/routes.yaml:13:12: routes[2].hosts: a route needs at least one host",
                "policies/routes.yaml:14:13: routes[3].domain: \".bad..example\" is not a valid .subdomain form (e.g. .example.com)",
                "policies/routes.yaml:17:9: routes[3].hosts[1]: host a.example port 25 is listed twice in this route (first at line 16)",
                "policies/routes.yaml:18:16: routes[3].mx_lookup: \"maybe\" is not a boolean: write true or false",
                "policies/routes.yaml:19:5: routes[4].domain: missing required key `domain`",
                "policies/routes.yaml:20:9: routes[4].hosts[0].host: missing required key `host`",
                "policies/routes.yaml:21:5: routes[5].hosts: missing required key `hosts`",
            ]
        );
    }

    #[test]
    fn duplicate_default_route_is_one_error() {
        let routes = "\
routes:
  - {domain: ALL, hosts: [{host: a.example}]}
  - {domain: all, hosts: [{host: b.example}]}
";
        let d = config_dir(&[("policies/routes.yaml", Some(routes))]);
        assert_eq!(
            errors(&d, &Overrides::default()),
            ["policies/routes.yaml:3:14: routes[1].domain: duplicate route for ALL (first at line 2)"]
        );
    }

    #[test]
    fn destination_errors_are_located() {
        let dests = "\
default:
  domain: example.com
  max_concurrent_connections: 0
  tls: Required
destinations:
  - domain: partner.example
    max_messages_per_connection: many
    ca_file: certs/missing.pem
  - domain: Partner.Example.
    tls: required-verify
    ca_file: certs/not-pem.pem
  - domain: ALL
    max_recipients_per_message: 0
  - tls: no
  - domain: ok.example
    ca_file: \"\"
alert_on_required_tls_failure:
  enabled: maybe
  interval: 0s
  mail_to: admin
client_certificate: outbound
";
        let d = config_dir(&[
            ("policies/destinations.yaml", Some(dests)),
            ("certs/not-pem.pem", Some("not a certificate\n")),
            ("certs/outbound.crt", Some("x")),
        ]);
        assert_eq!(
            errors(&d, &Overrides::default()),
            [
                "policies/destinations.yaml:2:11: default.domain: `default` applies to every domain: remove `domain`, or add an entry under `destinations`",
                "policies/destinations.yaml:3:31: default.max_concurrent_connections: 0 is out of range: 1-4294967295",
                "policies/destinations.yaml:4:8: default.tls: unknown outbound TLS mode \"Required\": expected no, preferred, required, preferred-verify, required-verify or required-verify-hosted",
                "policies/destinations.yaml:7:34: destinations[0].max_messages_per_connection: \"many\" is not a whole number: write a number from 1 to 4294967295",
                "policies/destinations.yaml:8:14: destinations[0].ca_file: CA bundle \"certs/missing.pem\" not found (relative paths start at the config directory)",
                "policies/destinations.yaml:9:13: destinations[1].domain: duplicate destination for partner.example (first at line 6)",
                "policies/destinations.yaml:11:14: destinations[1].ca_file: CA bundle \"certs/not-pem.pem\" holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                "policies/destinations.yaml:12:13: destinations[2].domain: ALL is not a destination entry: set its values under `default`",
                "policies/destinations.yaml:13:33: destinations[2].max_recipients_per_message: 0 is out of range: 1-4294967295",
                "policies/destinations.yaml:14:5: destinations[3].domain: missing required key `domain`",
                "policies/destinations.yaml:16:14: destinations[4].ca_file: path is empty: write a PEM file, or null for the webpki roots",
                "policies/destinations.yaml:18:12: alert_on_required_tls_failure.enabled: \"maybe\" is not a boolean: write true or false",
                "policies/destinations.yaml:19:13: alert_on_required_tls_failure.interval: must be longer than 0",
                "policies/destinations.yaml:20:12: alert_on_required_tls_failure.mail_to: \"admin\" is not a mail address (e.g. postmaster@example.com), or null for no mail",
                "policies/destinations.yaml:21:21: client_certificate: certificate \"outbound\" not found: certs_dir has no outbound.key",
            ]
        );
    }

    #[test]
    fn unknown_keys_and_syntax_errors_do_not_cascade() {
        let d = config_dir(&[
            (
                "policies/routes.yaml",
                Some("routes:\n  - domain: ALL\n    hosts: [{host: a.example, prio: 1}]\n"),
            ),
            (
                "policies/destinations.yaml",
                Some("default:\n  tls: [preferred\n"),
            ),
        ]);
        let errs = errors(&d, &Overrides::default());
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(
            errs[0].starts_with("policies/destinations.yaml:"),
            "{errs:#?}"
        );
        assert!(
            errs[1].starts_with("policies/routes.yaml:3:")
                && errs[1].contains("unknown key `prio`"),
            "{errs:#?}"
        );
    }
}
