//! Which hosts a delivery connection tries: route hosts in priority order (rotated per
//! connection), each expanded to its MX hosts under `mx_lookup`, and the name each is
//! verified against.

use std::net::SocketAddr;

use crate::config::outbound::{Route, RouteHost};
use crate::relay::client::Target;
use crate::relay::mx::{self, MxError, MxTarget};

use super::WorkerContext;

/// A route host without `mx_lookup`: through the system resolver (so `/etc/hosts` and container
/// DNS names keep working for the internal server), first address only.
async fn resolve(host: &RouteHost) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, host.port));
    }
    tokio::net::lookup_host((host.host.as_str(), host.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", host.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", host.host))
}

/// The addresses to try for one route host: its MX expansion under `mx_lookup`, else its
/// (first) address.
pub(super) async fn targets(
    ctx: &WorkerContext,
    route: &Route,
    host: &RouteHost,
    turn: usize,
) -> Result<Vec<MxTarget>, MxError> {
    if route.mx_lookup {
        return mx::resolve(&ctx.resolver, host, turn, &ctx.helo_name).await;
    }
    let addr = resolve(host).await.map_err(MxError::Temporary)?;
    Ok(vec![MxTarget {
        addr,
        exchange: host.host.clone(),
        preference: None,
    }])
}

/// Where a connection for mail to `domain` goes: `addr` of `exchange`, found for the route
/// host `route_host` (the same name without `mx_lookup`). The exchange, not the route host,
/// is the server's name (SNI); the `-verify` identity is [`verify_identity`]. Delivery and
/// the call-ahead probes (`validate::callahead::ProbeTls`) both build their targets here.
pub(crate) fn delivery_target(
    addr: SocketAddr,
    domain: &str,
    route_host: &str,
    exchange: &str,
) -> Target {
    Target {
        addr,
        identity: verify_identity(route_host, exchange),
        host: exchange.to_string(),
        domain: domain.to_string(),
    }
}

/// The name a `-verify` certificate may present for a connection to `exchange` found for
/// the route host `route_host`: the exchange when it is the route host or a subdomain of
/// it, else the route host. An MX answer is not authenticated (no DNSSEC here), so a name
/// that only DNS supplied must not be what the certificate is checked against (like
/// Postfix's `secure` level, `nexthop:dot-nexthop`).
pub(super) fn verify_identity(route_host: &str, exchange: &str) -> String {
    let r = route_host.trim_end_matches('.').to_ascii_lowercase();
    let x = exchange.trim_end_matches('.').to_ascii_lowercase();
    if x == r || x.ends_with(&format!(".{r}")) {
        exchange.to_string()
    } else {
        route_host.to_string()
    }
}

/// The mail log line naming the MX host of a delivery connection (logged once it is open, or
/// with the reason when it fails); `None` when the route host was used as it is (an IP
/// literal, or no `mx_lookup`).
pub(super) fn mx_note(dcid: u64, route: &Route, host: &RouteHost, t: &MxTarget) -> Option<String> {
    if !route.mx_lookup || host.host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    Some(match t.preference {
        Some(p) => format!(
            "DCID {dcid} MX host {} preference {p} for route host {}",
            t.exchange, host.host
        ),
        None => format!(
            "DCID {dcid} MX host {} (implicit MX: no MX records)",
            t.exchange
        ),
    })
}

/// Hosts in try order: by priority, equal priorities rotated by `turn` (round-robin per connection).
pub(crate) fn host_order(route: &Route, turn: usize) -> Vec<RouteHost> {
    let mut hosts = route.hosts.clone();
    hosts.sort_by_key(|h| h.priority);
    let mut out = Vec::with_capacity(hosts.len());
    let mut i = 0;
    while i < hosts.len() {
        let p = hosts[i].priority;
        let group: Vec<RouteHost> = hosts[i..]
            .iter()
            .take_while(|h| h.priority == p)
            .cloned()
            .collect();
        let n = group.len();
        for k in 0..n {
            out.push(group[(k + turn) % n].clone());
        }
        i += n;
    }
    out
}
