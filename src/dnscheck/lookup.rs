//! The DNS edge of the self-check: every record the checks judge, looked up once.

use std::collections::BTreeMap;

use crate::dns::records::{RecordLookup, TlsaRecord};
use crate::dns::{MxLookup, ReverseResolver};

/// The records a domain publishes for its senders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lookups {
    /// `_mta-sts.DOMAIN` TXT.
    pub(crate) sts: RecordLookup<String>,
    /// `_smtp._tls.DOMAIN` TXT.
    pub(crate) tlsrpt: RecordLookup<String>,
    /// The MX hosts of DOMAIN, by preference (`""` for a null MX).
    pub(crate) mx: RecordLookup<String>,
    /// `_25._tcp.HOST` TLSA by host: every MX host and every public listener's host name.
    pub(crate) tlsa: BTreeMap<String, RecordLookup<TlsaRecord>>,
}

/// The TLSA owner name of an MX host (RFC 7672 §2.2: port 25, TCP).
pub(crate) fn tlsa_name(host: &str) -> String {
    format!("_25._tcp.{host}")
}

/// The MX hosts of `domain`, lowest preference first.
pub(crate) async fn mx_hosts(resolver: &ReverseResolver, domain: &str) -> RecordLookup<String> {
    match resolver.lookup_mx(domain).await {
        MxLookup::Found(mut records) => {
            records.sort_by(|a, b| (a.preference, &a.exchange).cmp(&(b.preference, &b.exchange)));
            RecordLookup::Found(records.into_iter().map(|r| r.exchange).collect())
        }
        MxLookup::NotFound => RecordLookup::NotFound,
        MxLookup::Failed(e) => RecordLookup::Failed(e),
    }
}

/// Looks up everything for `domain`, and TLSA for its MX hosts and `hosts`.
pub(crate) async fn lookups(resolver: &ReverseResolver, domain: &str, hosts: &[String]) -> Lookups {
    let sts = resolver.lookup_txt(&format!("_mta-sts.{domain}")).await;
    let tlsrpt = resolver.lookup_txt(&format!("_smtp._tls.{domain}")).await;
    let mx = mx_hosts(resolver, domain).await;
    let mut names: Vec<String> = match &mx {
        RecordLookup::Found(h) => h.iter().filter(|h| !h.is_empty()).cloned().collect(),
        _ => Vec::new(),
    };
    names.extend(hosts.iter().cloned());
    names.sort();
    names.dedup();
    let mut tlsa = BTreeMap::new();
    for host in names {
        let found = resolver.lookup_tlsa(&tlsa_name(&host)).await;
        tlsa.insert(host, found);
    }
    Lookups {
        sts,
        tlsrpt,
        mx,
        tlsa,
    }
}
