//! HAT — host access table: ordered sender groups, first match wins (SPEC §1.1).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::flow::{Action, MailFlowPolicy};

/// Reverse-DNS state of the connecting host, as found by the connection driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReverseDns {
    /// PTR found and a forward lookup of it contains the client IP (FCrDNS).
    Verified(String),
    /// No PTR record (NXDOMAIN or empty answer).
    Missing,
    /// Lookup failed temporarily or timed out.
    TempFail,
    /// PTR exists but its forward lookup does not contain the client IP.
    Mismatch(String),
    /// Not looked up (e.g. `hat trace` without `--hostname`).
    NotChecked,
}

impl ReverseDns {
    /// The host name for the mail log (`unknown` when none).
    pub fn host_for_log(&self) -> &str {
        match self {
            ReverseDns::Verified(n) | ReverseDns::Mismatch(n) => n,
            _ => "unknown",
        }
    }

    /// The verified name, if any.
    pub fn verified_name(&self) -> Option<&str> {
        match self {
            ReverseDns::Verified(n) => Some(n),
            _ => None,
        }
    }
}

/// Everything the HAT may look at for one connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Client IP (after PROXY protocol, the real client).
    pub ip: IpAddr,
    /// Reverse-DNS state.
    pub rdns: ReverseDns,
    /// DNS block-list zones on which the client is listed (with the matching answer).
    pub dnslists_listed: Vec<String>,
}

/// One match criterion of a sender group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Criterion {
    /// An address or CIDR network.
    Net(IpNet),
    /// An inclusive address range.
    Range(IpAddr, IpAddr),
    /// An exact verified host name (lower case, no trailing dot).
    Host(String),
    /// Every verified host name below a domain (stored with its leading dot).
    Suffix(String),
    /// No PTR record.
    PtrMissing,
    /// PTR lookup failed temporarily.
    PtrTempfail,
    /// PTR does not resolve back to the client IP.
    PtrMismatch,
    /// Listed on a DNS block list zone.
    DnsList(String),
    /// Every host.
    All,
}

impl Criterion {
    /// Parses the textual form used in the YAML (`10.0.0.0/8`, `.partner.example`, `ptr_missing`, ...).
    pub fn parse(s: &str) -> Result<Criterion, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("empty sender group criterion".into());
        }
        let lower = t.to_ascii_lowercase();
        match lower.as_str() {
            "all" => return Ok(Criterion::All),
            "ptr_missing" => return Ok(Criterion::PtrMissing),
            "ptr_tempfail" => return Ok(Criterion::PtrTempfail),
            "ptr_mismatch" => return Ok(Criterion::PtrMismatch),
            _ => {}
        }
        if let Some(zone) = lower.strip_prefix("dnslist:") {
            let zone = zone.trim().trim_end_matches('.');
            if !is_dns_name(zone) {
                return Err(format!("dnslist zone {zone:?} is not a DNS name"));
            }
            return Ok(Criterion::DnsList(zone.to_string()));
        }
        if let Ok(ip) = t.parse::<IpAddr>() {
            return Ok(Criterion::Net(IpNet::from(ip)));
        }
        if t.contains('/') {
            return t
                .parse::<IpNet>()
                .map(|n| Criterion::Net(n.trunc()))
                .map_err(|_| format!("{t:?} is not a valid CIDR network"));
        }
        if let Some((a, b)) = t.split_once('-') {
            if let (Ok(a), Ok(b)) = (a.trim().parse::<IpAddr>(), b.trim().parse::<IpAddr>()) {
                if a.is_ipv4() != b.is_ipv4() {
                    return Err(format!("range {t:?} mixes IPv4 and IPv6"));
                }
                if a > b {
                    return Err(format!("range {t:?} ends before it starts"));
                }
                return Ok(Criterion::Range(a, b));
            }
        }
        let name = lower.trim_end_matches('.');
        if let Some(rest) = name.strip_prefix('.') {
            if !is_dns_name(rest) {
                return Err(format!("{t:?} is not a valid domain suffix"));
            }
            return Ok(Criterion::Suffix(format!(".{rest}")));
        }
        if is_dns_name(name) {
            return Ok(Criterion::Host(name.to_string()));
        }
        Err(format!(
            "{t:?} is not an IP, CIDR, range, host name, .suffix, ptr_missing, ptr_tempfail, ptr_mismatch, dnslist:ZONE or all"
        ))
    }

    /// True when the criterion matches the peer.
    pub fn matches(&self, peer: &Peer) -> bool {
        match self {
            Criterion::Net(n) => n.contains(&peer.ip),
            Criterion::Range(a, b) => *a <= peer.ip && peer.ip <= *b,
            Criterion::Host(h) => peer
                .rdns
                .verified_name()
                .is_some_and(|n| n.trim_end_matches('.').eq_ignore_ascii_case(h)),
            Criterion::Suffix(s) => peer.rdns.verified_name().is_some_and(|n| {
                let n = n.trim_end_matches('.').to_ascii_lowercase();
                n.ends_with(s.as_str())
            }),
            Criterion::PtrMissing => peer.rdns == ReverseDns::Missing,
            Criterion::PtrTempfail => peer.rdns == ReverseDns::TempFail,
            Criterion::PtrMismatch => matches!(peer.rdns, ReverseDns::Mismatch(_)),
            Criterion::DnsList(z) => peer.dnslists_listed.iter().any(|l| l == z),
            Criterion::All => true,
        }
    }
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Criterion::Net(n) if n.prefix_len() == n.max_prefix_len() => write!(f, "{}", n.addr()),
            Criterion::Net(n) => write!(f, "{n}"),
            Criterion::Range(a, b) => write!(f, "{a}-{b}"),
            Criterion::Host(h) => f.write_str(h),
            Criterion::Suffix(s) => f.write_str(s),
            Criterion::PtrMissing => f.write_str("ptr_missing"),
            Criterion::PtrTempfail => f.write_str("ptr_tempfail"),
            Criterion::PtrMismatch => f.write_str("ptr_mismatch"),
            Criterion::DnsList(z) => write!(f, "dnslist[{z}]"),
            Criterion::All => f.write_str("ALL"),
        }
    }
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A named sender group with its criteria and mail-flow policy.
#[derive(Debug, Clone)]
pub struct SenderGroup {
    /// Group name (`ALLOWLIST`, ...).
    pub name: String,
    /// Criteria; any one matching selects the group.
    pub criteria: Vec<Criterion>,
    /// The resolved policy of this group.
    pub policy: Arc<MailFlowPolicy>,
}

/// An ordered list of sender groups.
#[derive(Debug, Clone)]
pub struct HostAccessTable {
    /// Table name (listeners refer to it).
    pub name: String,
    /// Groups in order.
    pub groups: Vec<SenderGroup>,
    /// Policy applied when no group matches (the implicit `ALL`).
    pub fallback: Arc<MailFlowPolicy>,
}

/// The outcome of classifying a peer.
#[derive(Debug, Clone)]
pub struct Classification {
    /// Matched group name (`ALL` for the implicit fallback).
    pub group: String,
    /// The criterion that matched, as shown in the log.
    pub matched: String,
    /// The policy to apply.
    pub policy: Arc<MailFlowPolicy>,
    /// Groups passed over because their policy said `continue` (for `hat trace`).
    pub continued: Vec<String>,
}

impl HostAccessTable {
    /// Matches the peer top to bottom; `continue` groups are skipped.
    pub fn classify(&self, peer: &Peer) -> Classification {
        let mut continued = Vec::new();
        for g in &self.groups {
            if let Some(c) = g.criteria.iter().find(|c| c.matches(peer)) {
                if g.policy.action == Action::Continue {
                    continued.push(g.name.clone());
                    continue;
                }
                return Classification {
                    group: g.name.clone(),
                    matched: c.to_string(),
                    policy: g.policy.clone(),
                    continued,
                };
            }
        }
        Classification {
            group: "ALL".into(),
            matched: "ALL".into(),
            policy: self.fallback.clone(),
            continued,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::flow::Action;

    fn policy(name: &str, action: Action) -> Arc<MailFlowPolicy> {
        let mut p = MailFlowPolicy::builtin_default(name);
        p.action = action;
        Arc::new(p)
    }

    fn group(name: &str, crit: &[&str], action: Action) -> SenderGroup {
        SenderGroup {
            name: name.into(),
            criteria: crit.iter().map(|c| Criterion::parse(c).unwrap()).collect(),
            policy: policy(name, action),
        }
    }

    fn peer(ip: &str, rdns: ReverseDns) -> Peer {
        Peer {
            ip: ip.parse().unwrap(),
            rdns,
            dnslists_listed: vec![],
        }
    }

    #[test]
    fn parses_every_criterion_form() {
        assert_eq!(
            Criterion::parse("10.0.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            Criterion::parse("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            Criterion::parse("192.0.2.7").unwrap().to_string(),
            "192.0.2.7"
        );
        assert_eq!(
            Criterion::parse("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(
            Criterion::parse("192.0.2.10-192.0.2.20").unwrap(),
            Criterion::Range("192.0.2.10".parse().unwrap(), "192.0.2.20".parse().unwrap())
        );
        assert_eq!(
            Criterion::parse("Mail.Partner.Example.").unwrap(),
            Criterion::Host("mail.partner.example".into())
        );
        assert_eq!(
            Criterion::parse(".partner.example").unwrap(),
            Criterion::Suffix(".partner.example".into())
        );
        assert_eq!(
            Criterion::parse("ptr_missing").unwrap(),
            Criterion::PtrMissing
        );
        assert_eq!(
            Criterion::parse("dnslist: zen.example-rbl.test").unwrap(),
            Criterion::DnsList("zen.example-rbl.test".into())
        );
        assert_eq!(Criterion::parse("ALL").unwrap(), Criterion::All);
        assert!(Criterion::parse("192.0.2.20-192.0.2.10").is_err());
        assert!(Criterion::parse("10.0.0.0/33").is_err());
        assert!(Criterion::parse("not a host!").is_err());
        assert!(Criterion::parse("192.0.2.1-2001:db8::1").is_err());
    }

    #[test]
    fn first_match_wins_and_continue_skips() {
        let hat = HostAccessTable {
            name: "t".into(),
            groups: vec![
                group("SKIP", &["10.0.0.0/8"], Action::Continue),
                group("BLOCK", &["10.1.0.0/16"], Action::Reject),
                group("WIDE", &["10.0.0.0/8"], Action::Accept),
            ],
            fallback: policy("ACCEPTED", Action::Accept),
        };
        let c = hat.classify(&peer("10.1.2.3", ReverseDns::Missing));
        assert_eq!(
            (c.group.as_str(), c.matched.as_str()),
            ("BLOCK", "10.1.0.0/16")
        );
        assert_eq!(c.continued, vec!["SKIP".to_string()]);
        let c = hat.classify(&peer("10.2.2.3", ReverseDns::Missing));
        assert_eq!(c.group, "WIDE");
        let c = hat.classify(&peer("192.0.2.1", ReverseDns::Missing));
        assert_eq!(
            (c.group.as_str(), c.policy.name.as_str()),
            ("ALL", "ACCEPTED")
        );
    }

    #[test]
    fn names_match_only_when_verified() {
        let hat = HostAccessTable {
            name: "t".into(),
            groups: vec![
                group("EXACT", &["mail.partner.example"], Action::Accept),
                group("SUFFIX", &[".partner.example"], Action::Accept),
                group("MISMATCH", &["ptr_mismatch"], Action::Accept),
            ],
            fallback: policy("ACCEPTED", Action::Accept),
        };
        let v = |n: &str| ReverseDns::Verified(n.into());
        assert_eq!(
            hat.classify(&peer("192.0.2.1", v("MAIL.partner.example.")))
                .group,
            "EXACT"
        );
        assert_eq!(
            hat.classify(&peer("192.0.2.1", v("a.b.partner.example")))
                .group,
            "SUFFIX"
        );
        // The bare domain is not "below" itself, and a look-alike is not either.
        assert_eq!(
            hat.classify(&peer("192.0.2.1", v("partner.example"))).group,
            "ALL"
        );
        assert_eq!(
            hat.classify(&peer("192.0.2.1", v("evilpartner.example")))
                .group,
            "ALL"
        );
        let spoof = ReverseDns::Mismatch("mail.partner.example".into());
        assert_eq!(hat.classify(&peer("192.0.2.1", spoof)).group, "MISMATCH");
    }

    #[test]
    fn ranges_and_ptr_states() {
        let hat = HostAccessTable {
            name: "t".into(),
            groups: vec![
                group("R", &["192.0.2.10-192.0.2.20"], Action::Accept),
                group("TEMP", &["ptr_tempfail"], Action::Accept),
                group("NOPTR", &["ptr_missing"], Action::Accept),
            ],
            fallback: policy("ACCEPTED", Action::Accept),
        };
        assert_eq!(
            hat.classify(&peer("192.0.2.20", ReverseDns::Missing)).group,
            "R"
        );
        assert_eq!(
            hat.classify(&peer("192.0.2.21", ReverseDns::TempFail))
                .group,
            "TEMP"
        );
        assert_eq!(
            hat.classify(&peer("192.0.2.21", ReverseDns::Missing)).group,
            "NOPTR"
        );
    }
}
