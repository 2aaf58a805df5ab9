//! The criteria of a HAT sender group: addresses, networks and ranges, verified host names
//! and `.suffix`es, reverse-DNS states, DNS block-list zones (docs/configuration.md).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use super::hat::{Peer, ReverseDns};
use crate::dns::name::is_host_name;

/// The [`Peer::dnslists_listed`] entry recording that `zone` answered `answer`.
pub fn dnslist_entry(zone: &str, answer: Ipv4Addr) -> String {
    format!("{zone}={answer}")
}

/// A DNS block-list zone and the answers that count as "listed" (`dnslist: ZONE=CODE,CODE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsListZone {
    /// The zone, lower case, no trailing dot (`zen.example-rbl.test`).
    pub zone: String,
    /// Answer codes that count; empty = the default rule of [`DnsListZone::counts`].
    pub codes: Vec<Ipv4Addr>,
}

impl DnsListZone {
    /// True when an answer from this zone means "listed".
    ///
    /// With codes configured, only those answers count. Without, any answer in 127.0.0.0/8
    /// counts except 127.255.255.0/24, which lists use to report errors rather than listings
    /// (e.g. 127.255.255.254: "query through a public resolver"): counting those would put
    /// every client on the list at once. Answers outside 127.0.0.0/8 (RFC 5782 §2.3) are
    /// typically a resolver rewriting NXDOMAIN and never count by default either.
    pub fn counts(&self, answer: Ipv4Addr) -> bool {
        if !self.codes.is_empty() {
            return self.codes.contains(&answer);
        }
        is_default_listing_answer(answer)
    }

    /// True when the peer's recorded answers include one that counts for this zone.
    pub(crate) fn is_listed(&self, entries: &[String]) -> bool {
        entries.iter().any(|e| match e.split_once('=') {
            Some((z, a)) => z == self.zone && a.parse().is_ok_and(|a| self.counts(a)),
            // Only "listed" is known: enough for a criterion without codes.
            None => e == &self.zone && self.codes.is_empty(),
        })
    }
}

/// The default listing rule: 127.0.0.0/8 except the 127.255.255.0/24 error codes.
pub fn is_default_listing_answer(answer: Ipv4Addr) -> bool {
    let o = answer.octets();
    o[0] == 127 && !(o[1] == 255 && o[2] == 255)
}

impl From<&str> for DnsListZone {
    /// A zone without answer codes.
    fn from(zone: &str) -> Self {
        DnsListZone {
            zone: zone.to_string(),
            codes: Vec::new(),
        }
    }
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
    /// Listed on a DNS block list zone (optionally: with one of the given answer codes).
    DnsList(DnsListZone),
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
        if let Some(spec) = lower.strip_prefix("dnslist:") {
            return parse_dnslist(spec).map(Criterion::DnsList);
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
            if !is_host_name(rest) {
                return Err(format!("{t:?} is not a valid domain suffix"));
            }
            return Ok(Criterion::Suffix(format!(".{rest}")));
        }
        if is_host_name(name) {
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
            Criterion::DnsList(z) => z.is_listed(&peer.dnslists_listed),
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
            Criterion::DnsList(z) => write!(f, "dnslist[{}]", z.zone),
            Criterion::All => f.write_str("ALL"),
        }
    }
}

/// `ZONE` or `ZONE=CODE,CODE` (codes are IPv4 answers such as `127.0.0.2`).
fn parse_dnslist(spec: &str) -> Result<DnsListZone, String> {
    let (zone, codes) = match spec.split_once('=') {
        Some((z, c)) => (z, Some(c)),
        None => (spec, None),
    };
    let zone = zone.trim().trim_end_matches('.');
    if !is_host_name(zone) {
        return Err(format!("dnslist zone {zone:?} is not a DNS name"));
    }
    let mut parsed = Vec::new();
    if let Some(codes) = codes {
        for c in codes.split(',').map(str::trim) {
            let a: Ipv4Addr = c.parse().map_err(|_| {
                format!("dnslist {zone}: answer code {c:?} is not an IPv4 address like 127.0.0.2")
            })?;
            if !parsed.contains(&a) {
                parsed.push(a);
            }
        }
    }
    Ok(DnsListZone {
        zone: zone.to_string(),
        codes: parsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn dnslist_answer_codes() {
        let c = Criterion::parse("dnslist: Zen.Example-RBL.test.=127.0.0.2, 127.0.0.4").unwrap();
        assert_eq!(
            c,
            Criterion::DnsList(DnsListZone {
                zone: "zen.example-rbl.test".into(),
                codes: vec![Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 4)],
            })
        );
        // The log names the list, not the codes.
        assert_eq!(c.to_string(), "dnslist[zen.example-rbl.test]");
        assert_eq!(
            Criterion::parse("dnslist:bl.example-rbl.test")
                .unwrap()
                .to_string(),
            "dnslist[bl.example-rbl.test]"
        );
        assert!(Criterion::parse("dnslist: zen.example-rbl.test=127.0.0").is_err());
        assert!(Criterion::parse("dnslist: zen.example-rbl.test=").is_err());
        assert!(Criterion::parse("dnslist: =127.0.0.2").is_err());
        assert!(Criterion::parse("dnslist: bad zone").is_err());

        let any = Criterion::parse("dnslist: zen.example-rbl.test").unwrap();
        let listed = |entries: &[&str]| Peer {
            ip: "192.0.2.2".parse().unwrap(),
            rdns: ReverseDns::Missing,
            dnslists_listed: entries.iter().map(|e| e.to_string()).collect(),
        };
        let p = listed(&["zen.example-rbl.test=127.0.0.4"]);
        assert!(c.matches(&p) && any.matches(&p));
        let p = listed(&["zen.example-rbl.test=127.0.0.10"]);
        assert!(!c.matches(&p) && any.matches(&p));
        // Error codes and non-loopback answers never count by default; a bare zone entry counts
        // only for criteria without codes; another zone's answer never counts.
        let p = listed(&["zen.example-rbl.test=127.255.255.254"]);
        assert!(!c.matches(&p) && !any.matches(&p));
        let p = listed(&["zen.example-rbl.test=192.0.2.99"]);
        assert!(!any.matches(&p));
        let p = listed(&["zen.example-rbl.test"]);
        assert!(!c.matches(&p) && any.matches(&p));
        let p = listed(&["other.example-rbl.test=127.0.0.2"]);
        assert!(!c.matches(&p) && !any.matches(&p));
        assert_eq!(
            dnslist_entry("zen.example-rbl.test", Ipv4Addr::new(127, 0, 0, 2)),
            "zen.example-rbl.test=127.0.0.2"
        );
    }
}
