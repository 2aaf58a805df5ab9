//! `policies/routes.yaml`: SMTP routes from their `*Def` forms, and the loading of both
//! outbound files (the destinations are built in [`super::destinations`]).
//!
//! Both files are optional: without `routes.yaml` the route table is empty
//! (delivery refuses to start, loading does not fail); without
//! `destinations.yaml` the built-in default controls apply to every domain.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde_saphyr::Spanned;

use crate::dns::name::is_host_name;

use super::defs::{DestinationsDef, RouteHostDef, RoutesDef, SpannedStr};
use super::destinations::build_destinations;
use super::error::{index, join, ConfigError, FileErrors, Pos};
use super::load::{read_yaml, Read};
use super::outbound::{DestinationControls, DomainMatch, Route, RouteHost, RouteTable};
use super::values::{parse_bool, parse_count};

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
pub(super) fn ranged(
    s: &SpannedStr,
    min: u64,
    max: u64,
    e: &mut FileErrors<'_>,
    path: &str,
) -> Option<u64> {
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
pub(super) fn domain_key(
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
pub(super) fn first_of(
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
    if is_host_name(name) {
        return Ok(name.to_string());
    }
    if let Some((h, p)) = t.rsplit_once(':') {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        if p.parse::<u16>().is_ok() && (h.parse::<IpAddr>().is_ok() || is_host_name(h)) {
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
