//! MX expansion of route hosts under `mx_lookup: true` (Cisco ESA's `/MX` route hosts, Postfix's
//! `relayhost` without brackets): a host name stands for its MX exchanges, lowest preference
//! first, each resolved through A/AAAA; no MX records means the name itself (RFC 5321 §5.1
//! implicit MX), and a null MX (RFC 7505) means the domain accepts no mail.
//!
//! [`plan`] is the pure part (MX answer in, exchange order out); [`resolve`] does the lookups
//! on the configured resolver (`dns.resolvers`, `dns.timeout`).

use std::net::{IpAddr, SocketAddr};

use crate::config::outbound::RouteHost;
use crate::dns::{IpLookup, MxLookup, ReverseResolver};

/// At most this many addresses are tried for one route host, all MX exchanges together, so that
/// a domain with many unreachable MX hosts cannot hold a connection slot for long (Postfix's
/// `smtp_mx_address_limit` has the same purpose).
pub(crate) const MAX_ADDRESSES: usize = 10;

/// MX host names resolved per route host at most (Postfix looks at 5 addresses by default,
/// `smtp_mx_address_limit`); the rest of a longer list is ignored.
pub(crate) const MAX_EXCHANGES: usize = 5;

/// RFC 7505 enhanced status code for a domain that accepts no mail.
pub(crate) const NULL_MX_ENHANCED: &str = "5.1.10";

/// RFC 7505 reply code for a domain that accepts no mail.
pub(crate) const NULL_MX_CODE: u16 = 556;

/// Enhanced status code of DNS failures (directory server failure).
pub(crate) const DNS_FAILURE_ENHANCED: &str = "4.4.3";

/// One exchange to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exchange {
    /// Host name of the exchange.
    pub name: String,
    /// MX preference; `None` for the implicit MX (the name had no MX records).
    pub preference: Option<u16>,
}

/// What the MX answer for a route host says to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MxPlan {
    /// Try these exchanges in this order.
    Exchanges(Vec<Exchange>),
    /// RFC 7505 null MX: the domain accepts no mail.
    NullMx,
    /// The lookup failed temporarily; the text says why.
    Failed(String),
}

/// Orders the MX answer for `host`: by preference, equal preferences rotated by `turn` (so that
/// successive connections take turns, like equal-priority route hosts). No MX records gives the
/// implicit MX `host`. A null MX target `.` next to real exchanges is skipped (RFC 7505 §3 forbids
/// the mix; the real exchanges are still usable), alone it is [`MxPlan::NullMx`].
pub(crate) fn plan(host: &str, answer: MxLookup, turn: usize) -> MxPlan {
    let records = match answer {
        MxLookup::Failed(e) => return MxPlan::Failed(e),
        MxLookup::NotFound => Vec::new(),
        MxLookup::Found(r) => r,
    };
    if records.is_empty() {
        return MxPlan::Exchanges(vec![Exchange {
            name: host.trim_end_matches('.').to_ascii_lowercase(),
            preference: None,
        }]);
    }
    let mut real: Vec<_> = records
        .into_iter()
        .filter(|r| !r.exchange.is_empty())
        .collect();
    if real.is_empty() {
        return MxPlan::NullMx;
    }
    // Stable sort, then a duplicate exchange keeps only its lowest preference.
    real.sort_by_key(|r| r.preference);
    let mut seen = std::collections::HashSet::new();
    real.retain(|r| seen.insert(r.exchange.clone()));
    let mut out = Vec::with_capacity(real.len());
    let mut i = 0;
    while i < real.len() {
        let p = real[i].preference;
        let n = real[i..].iter().take_while(|r| r.preference == p).count();
        for k in 0..n {
            let r = &real[i + (k + turn) % n];
            out.push(Exchange {
                name: r.exchange.clone(),
                preference: Some(r.preference),
            });
        }
        i += n;
    }
    MxPlan::Exchanges(out)
}

/// One address to connect to, with the exchange it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MxTarget {
    /// Address and the route host's port.
    pub addr: SocketAddr,
    /// The exchange (the route host itself for an IP literal or the implicit MX).
    pub exchange: String,
    /// MX preference; `None` for an IP literal or the implicit MX.
    pub preference: Option<u16>,
}

/// Why a route host yields no address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MxError {
    /// RFC 7505 null MX: permanent.
    #[error("{host} has a null MX (RFC 7505): the domain accepts no mail")]
    NullMx {
        /// The route host.
        host: String,
    },
    /// DNS failure or no address: temporary.
    #[error("{0}")]
    Temporary(String),
    /// The most preferred MX host is this host: delivering would loop (RFC 5321 §5.1).
    /// Temporary here, because a route host is configuration that the administrator fixes.
    #[error(
        "the MX list of {host} names this host ({own}) at the best preference: mail would loop"
    )]
    Loop {
        /// The route host.
        host: String,
        /// Our own name as found in the list.
        own: String,
    },
}

/// Enhanced status code of a routing loop.
pub(crate) const LOOP_ENHANCED: &str = "4.4.6";

/// RFC 5321 §5.1: when this host (`own`) is in the MX list, it and every exchange of the same
/// or a less preferred (higher) preference are dropped; `None` when nothing is left.
pub(crate) fn without_self(exchanges: Vec<Exchange>, own: &str) -> Option<Vec<Exchange>> {
    let own = own.trim_end_matches('.').to_ascii_lowercase();
    let is_own = |e: &Exchange| e.name.trim_end_matches('.').eq_ignore_ascii_case(&own);
    let Some(cut) = exchanges.iter().find(|e| is_own(e)).map(|e| e.preference) else {
        return Some(exchanges);
    };
    let kept: Vec<Exchange> = exchanges
        .into_iter()
        .filter(|e| e.preference < cut && !is_own(e))
        .collect();
    (!kept.is_empty()).then_some(kept)
}

/// Expands `host` into the addresses to try, in order: MX exchanges as [`plan`] orders them, each
/// exchange's addresses as the resolver returns them, at most [`MAX_ADDRESSES`]. An IP literal is
/// used as it is.
pub(crate) async fn resolve(
    resolver: &ReverseResolver,
    host: &RouteHost,
    turn: usize,
    own: &str,
) -> Result<Vec<MxTarget>, MxError> {
    if let Ok(ip) = host.host.parse::<IpAddr>() {
        return Ok(vec![MxTarget {
            addr: SocketAddr::new(ip, host.port),
            exchange: host.host.clone(),
            preference: None,
        }]);
    }
    let exchanges = match plan(&host.host, resolver.lookup_mx(&host.host).await, turn) {
        MxPlan::Exchanges(e) => without_self(e, own).ok_or_else(|| MxError::Loop {
            host: host.host.clone(),
            own: own.to_string(),
        })?,
        MxPlan::NullMx => {
            return Err(MxError::NullMx {
                host: host.host.clone(),
            })
        }
        MxPlan::Failed(e) => {
            return Err(MxError::Temporary(format!(
                "MX lookup for {} failed: {e}",
                host.host
            )))
        }
    };
    let mut out = Vec::new();
    let mut failure = None;
    // Each name costs a lookup of up to `dns.timeout`: a long MX list (or one an attacker
    // answered with) must not hold a delivery slot for long.
    for ex in exchanges.iter().take(MAX_EXCHANGES) {
        if out.len() >= MAX_ADDRESSES {
            break;
        }
        match resolver.lookup_ip(&ex.name).await {
            IpLookup::Found(addrs) => {
                out.extend(addrs.into_iter().map(|ip| MxTarget {
                    addr: SocketAddr::new(ip, host.port),
                    exchange: ex.name.clone(),
                    preference: ex.preference,
                }));
            }
            IpLookup::NotFound => {}
            // Another exchange may still resolve; the failure matters only when none does.
            IpLookup::Failed(e) => failure = Some(format!("cannot resolve {}: {e}", ex.name)),
        }
    }
    out.truncate(MAX_ADDRESSES);
    if out.is_empty() {
        let implicit = exchanges.iter().all(|e| e.preference.is_none());
        return Err(MxError::Temporary(failure.unwrap_or_else(|| {
            if implicit {
                format!("{} has no MX, A or AAAA records", host.host)
            } else {
                format!("no MX host of {} has an A or AAAA record", host.host)
            }
        })));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::MxRecord;

    fn mx(preference: u16, exchange: &str) -> MxRecord {
        MxRecord {
            preference,
            exchange: exchange.into(),
        }
    }

    fn names(p: MxPlan) -> Vec<(String, Option<u16>)> {
        match p {
            MxPlan::Exchanges(e) => e.into_iter().map(|e| (e.name, e.preference)).collect(),
            other => panic!("not exchanges: {other:?}"),
        }
    }

    #[test]
    fn lowest_preference_first() {
        let answer = MxLookup::Found(vec![mx(20, "b.test"), mx(10, "a.test"), mx(30, "c.test")]);
        assert_eq!(
            names(plan("d.test", answer, 0)),
            vec![
                ("a.test".into(), Some(10)),
                ("b.test".into(), Some(20)),
                ("c.test".into(), Some(30))
            ]
        );
    }

    #[test]
    fn equal_preferences_rotate_by_turn() {
        let answer = MxLookup::Found(vec![
            mx(10, "a1.test"),
            mx(20, "b.test"),
            mx(10, "a2.test"),
            mx(10, "a3.test"),
        ]);
        let order = |turn| {
            names(plan("d.test", answer.clone(), turn))
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
        };
        assert_eq!(order(0), ["a1.test", "a2.test", "a3.test", "b.test"]);
        assert_eq!(order(1), ["a2.test", "a3.test", "a1.test", "b.test"]);
        assert_eq!(order(2), ["a3.test", "a1.test", "a2.test", "b.test"]);
        assert_eq!(order(3), order(0));
    }

    #[test]
    fn no_mx_records_is_the_implicit_mx() {
        assert_eq!(
            names(plan("Relay.Test.", MxLookup::NotFound, 5)),
            vec![("relay.test".into(), None)]
        );
        assert_eq!(
            names(plan("relay.test", MxLookup::Found(vec![]), 0)),
            vec![("relay.test".into(), None)]
        );
    }

    #[test]
    fn null_mx() {
        assert_eq!(
            plan("d.test", MxLookup::Found(vec![mx(0, "")]), 0),
            MxPlan::NullMx
        );
        // Mixed with a real exchange, the `.` target is skipped.
        assert_eq!(
            names(plan(
                "d.test",
                MxLookup::Found(vec![mx(0, ""), mx(10, "a.test")]),
                0
            )),
            vec![("a.test".into(), Some(10))]
        );
    }

    #[test]
    fn duplicate_exchange_keeps_lowest_preference() {
        let answer = MxLookup::Found(vec![mx(30, "a.test"), mx(20, "b.test"), mx(10, "a.test")]);
        assert_eq!(
            names(plan("d.test", answer, 0)),
            vec![("a.test".into(), Some(10)), ("b.test".into(), Some(20))]
        );
    }

    #[test]
    fn lookup_failure_is_kept() {
        assert_eq!(
            plan("d.test", MxLookup::Failed("timeout".into()), 0),
            MxPlan::Failed("timeout".into())
        );
    }

    #[test]
    fn errors_read_well() {
        let e = MxError::NullMx {
            host: "d.test".into(),
        };
        assert_eq!(
            e.to_string(),
            "d.test has a null MX (RFC 7505): the domain accepts no mail"
        );
    }

    #[test]
    fn this_host_and_every_less_preferred_exchange_are_dropped() {
        let ex = |p: u16, n: &str| Exchange {
            name: n.into(),
            preference: Some(p),
        };
        let list = vec![
            ex(10, "a.test"),
            ex(20, "mx.self.test"),
            ex(20, "b.test"),
            ex(30, "c.test"),
        ];
        let kept = without_self(list.clone(), "MX.Self.Test.").unwrap();
        assert_eq!(kept, vec![ex(10, "a.test")]);
        // Not in the list: unchanged.
        assert_eq!(without_self(list.clone(), "other.test").unwrap(), list);
        // The best preference is this host: nothing is left, delivering would loop.
        assert_eq!(
            without_self(
                vec![ex(10, "mx.self.test"), ex(20, "b.test")],
                "mx.self.test"
            ),
            None
        );
    }
}
