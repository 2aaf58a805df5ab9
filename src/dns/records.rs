//! TXT and TLSA lookups for the DNS self-check ([`crate::dnscheck`]): the `_mta-sts` and
//! `_smtp._tls` TXT records and the `_25._tcp` TLSA records, on the same resolver and
//! timeout as every other lookup.

use hickory_resolver::proto::rr::{RData, RecordType};

use super::{fqdn, ReverseResolver};

/// Outcome of one bounded lookup of a record type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordLookup<T> {
    /// The name has these records of the type asked.
    Found(Vec<T>),
    /// NXDOMAIN or no record of the type asked.
    NotFound,
    /// Timeout or server failure; the text says which.
    Failed(String),
}

/// One TLSA record (RFC 6698 §2.1): the three numbers and the association data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsaRecord {
    /// Certificate usage: 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE.
    pub(crate) usage: u8,
    /// Selector: 0 the whole certificate, 1 its SubjectPublicKeyInfo.
    pub(crate) selector: u8,
    /// Matching type: 0 exact, 1 SHA-256, 2 SHA-512.
    pub(crate) matching: u8,
    /// Certificate association data.
    pub(crate) data: Vec<u8>,
}

impl ReverseResolver {
    /// Records of `rtype` at `name`, bounded by the configured timeout.
    async fn lookup_records(&self, name: &str, rtype: RecordType) -> RecordLookup<RData> {
        let query = async {
            match self.resolver.lookup(fqdn(name), rtype).await {
                Ok(l) => {
                    // A CNAME on the way is in the answers too: keep the type asked for.
                    let data: Vec<RData> = l
                        .answers()
                        .iter()
                        .filter(|r| r.record_type() == rtype)
                        .map(|r| r.data.clone())
                        .collect();
                    if data.is_empty() {
                        RecordLookup::NotFound
                    } else {
                        RecordLookup::Found(data)
                    }
                }
                Err(e) if e.is_nx_domain() || e.is_no_records_found() => RecordLookup::NotFound,
                Err(e) => RecordLookup::Failed(e.to_string()),
            }
        };
        match tokio::time::timeout(self.timeout, query).await {
            Ok(r) => r,
            Err(_) => RecordLookup::Failed(format!("timeout after {:?}", self.timeout)),
        }
    }

    /// TXT records of `name`, each record's strings joined (RFC 7208 §3.3 style, as RFC 8461
    /// and RFC 8460 read them); bytes that are not UTF-8 are replaced.
    pub(crate) async fn lookup_txt(&self, name: &str) -> RecordLookup<String> {
        map(
            self.lookup_records(name, RecordType::TXT).await,
            |d| match d {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s))
                        .collect::<String>(),
                ),
                _ => None,
            },
        )
    }

    /// TLSA records of `name` (e.g. `_25._tcp.mx.example.com`).
    pub(crate) async fn lookup_tlsa(&self, name: &str) -> RecordLookup<TlsaRecord> {
        map(
            self.lookup_records(name, RecordType::TLSA).await,
            |d| match d {
                RData::TLSA(t) => Some(TlsaRecord {
                    usage: t.cert_usage.into(),
                    selector: t.selector.into(),
                    matching: t.matching.into(),
                    data: t.cert_data.clone(),
                }),
                _ => None,
            },
        )
    }
}

/// Converts the records of a lookup, dropping those `f` does not take.
fn map<T>(l: RecordLookup<RData>, f: impl Fn(&RData) -> Option<T>) -> RecordLookup<T> {
    match l {
        RecordLookup::Found(data) => {
            let v: Vec<T> = data.iter().filter_map(f).collect();
            if v.is_empty() {
                RecordLookup::NotFound
            } else {
                RecordLookup::Found(v)
            }
        }
        RecordLookup::NotFound => RecordLookup::NotFound,
        RecordLookup::Failed(e) => RecordLookup::Failed(e),
    }
}
