//! Envelope-sender DNS verification (ESA's "envelope sender verification"): does the domain of
//! `MAIL FROM` exist in DNS as a mail domain? MX records (not the RFC 7505 null MX) or, without
//! MX, an A/AAAA record say yes; NXDOMAIN, no records or a null MX say no; a server failure or
//! no answer says "could not be resolved", which is always temporary.

use crate::dns::{IpLookup, MxLookup, ReverseResolver};
use crate::smtp::address::Mailbox;

/// What the DNS verification of one sender must do, decided without DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsCheck {
    /// Not asked for (off, the null sender, or a domain DNS cannot be asked about as written).
    Skip,
    /// The sender is in the policy's exception table.
    Exempt,
    /// The address has no usable domain ([`classify`]).
    Malformed,
    /// Look this domain (lower case, no trailing dot) up.
    Lookup(String),
}

impl DnsCheck {
    /// The verdict of a check that needs no lookup.
    pub(crate) fn verdict_without_lookup(&self) -> DnsVerdict {
        match self {
            DnsCheck::Exempt => DnsVerdict::Exempt,
            DnsCheck::Malformed => DnsVerdict::Malformed,
            // Only `Exempt` and `Malformed` get here; a skipped check has no verdict.
            DnsCheck::Skip | DnsCheck::Lookup(_) => DnsVerdict::Exists,
        }
    }
}

/// What the DNS verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsVerdict {
    /// In the exception table: not looked up.
    Exempt,
    /// No usable domain.
    Malformed,
    /// MX, or A/AAAA, records exist.
    Exists,
    /// NXDOMAIN, no MX and no A/AAAA, or a null MX: what was found (log only).
    NotExist(String),
    /// A server failure or no answer: what happened (log only).
    Unresolvable(String),
}

impl DnsVerdict {
    /// True when the sender is refused for it (malformed, does not exist, unresolvable).
    pub fn refuses(&self) -> bool {
        !matches!(self, DnsVerdict::Exempt | DnsVerdict::Exists)
    }

    /// The `result` label of `mxgate_sender_auth_total{method="dns_verification"}`.
    pub fn label(&self) -> &'static str {
        match self {
            DnsVerdict::Exempt => "exempt",
            DnsVerdict::Malformed => "malformed",
            DnsVerdict::Exists => "pass",
            DnsVerdict::NotExist(_) => "not_exist",
            DnsVerdict::Unresolvable(_) => "unresolvable",
        }
    }
}

/// The check for a non-null sender: `Malformed` without a domain (`<postmaster>`, `<user>`),
/// with an address literal, or with a domain that is not a host name of at least two labels;
/// else `Lookup`. An internationalized domain (SMTPUTF8) is looked up in its A-label form.
pub(crate) fn classify(from: &Mailbox) -> DnsCheck {
    let domain = from.domain.trim_end_matches('.');
    if domain.is_empty() || from.flags.domain_literal || domain.starts_with('[') {
        return DnsCheck::Malformed;
    }
    let Some(domain) = a_label(domain) else {
        return DnsCheck::Malformed;
    };
    if !crate::dns::name::is_host_name(&domain) || !domain.contains('.') {
        return DnsCheck::Malformed;
    }
    DnsCheck::Lookup(domain)
}

/// `domain` as DNS knows it: lower case, and an internationalized (SMTPUTF8) domain in its
/// A-label form (UTS 46 mapping, then Punycode); `None` when it cannot be mapped.
pub(crate) fn a_label(domain: &str) -> Option<String> {
    if domain.is_ascii() {
        Some(domain.to_ascii_lowercase())
    } else {
        idna::domain_to_ascii(domain).ok()
    }
}

/// Looks `domain` up: its MX records, and its addresses when it has none.
pub(crate) async fn lookup_domain(resolver: &ReverseResolver, domain: &str) -> DnsVerdict {
    let fqdn = format!("{domain}.");
    match resolver.lookup_mx(&fqdn).await {
        MxLookup::Found(mx) => {
            // RFC 7505: a single MX with the root as exchange says "no mail here".
            if mx.len() == 1 && mx[0].exchange.is_empty() {
                DnsVerdict::NotExist("null MX (RFC 7505)".into())
            } else {
                DnsVerdict::Exists
            }
        }
        MxLookup::Failed(e) => DnsVerdict::Unresolvable(format!("MX lookup: {e}")),
        // NXDOMAIN or no MX: RFC 5321 §5.1 falls back to the address records.
        MxLookup::NotFound => match resolver.lookup_ip(&fqdn).await {
            IpLookup::Found(_) => DnsVerdict::Exists,
            IpLookup::NotFound => DnsVerdict::NotExist("no MX, A or AAAA record".into()),
            IpLookup::Failed(e) => DnsVerdict::Unresolvable(format!("address lookup: {e}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::parse_path;

    fn check(path: &str) -> DnsCheck {
        let m = parse_path(path).unwrap_or_else(|e| panic!("{path}: {e:?}"));
        classify(&m.0.unwrap())
    }

    #[test]
    fn classification_without_dns() {
        assert_eq!(
            check("<a@Example.COM>"),
            DnsCheck::Lookup("example.com".into())
        );
        assert_eq!(
            check("<a@example.com.>"),
            DnsCheck::Lookup("example.com".into())
        );
        assert_eq!(check("<a@[192.0.2.1]>"), DnsCheck::Malformed);
        assert_eq!(check("<a@localhost>"), DnsCheck::Malformed);
        assert_eq!(
            check("<a@Bücher.example>"),
            DnsCheck::Lookup("xn--bcher-kva.example".into())
        );
    }
}
