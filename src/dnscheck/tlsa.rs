//! DANE for SMTP (RFC 7672, RFC 7671): whether a published TLSA record set matches the
//! certificate chain a listener serves. Usages 3 (DANE-EE, the leaf) and 2 (DANE-TA, an issuer
//! in the served chain) with selectors 0/1 and matching types 0/1/2; usages 0 and 1 are
//! unusable for SMTP (RFC 7672 §3.1.3) and match nothing.

use std::fmt;

use crate::certs::cert::Cert;
use crate::dns::records::{RecordLookup, TlsaRecord};

impl fmt::Display for TlsaRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.usage,
            self.selector,
            self.matching,
            crate::certs::hex(&self.data)
        )
    }
}

/// The `3 1 1` record of a certificate's key: what to publish (it survives renewals that
/// keep the key).
pub(crate) fn record_311(leaf: &Cert) -> TlsaRecord {
    TlsaRecord {
        usage: 3,
        selector: 1,
        matching: 1,
        data: crate::certs::sha256(&leaf.spki),
    }
}

/// The association data of `cert` for a selector and matching type; `None` for values
/// RFC 6698 does not define.
fn association(selector: u8, matching: u8, cert: &Cert) -> Option<Vec<u8>> {
    let selected: &[u8] = match selector {
        0 => cert.der.as_ref(),
        1 => &cert.spki,
        _ => return None,
    };
    match matching {
        0 => Some(selected.to_vec()),
        1 => Some(crate::certs::sha256(selected)),
        2 => Some(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, selected)
                .as_ref()
                .to_vec(),
        ),
        _ => None,
    }
}

/// True when a DANE sender can use `record` at all (usage 2 or 3, known selector and type).
pub(crate) fn is_usable(record: &TlsaRecord) -> bool {
    matches!(record.usage, 2 | 3) && record.selector <= 1 && record.matching <= 2
}

/// True when `record` authenticates `chain` (leaf first): DANE-EE against the leaf, DANE-TA
/// against any issuer certificate the chain carries.
pub(crate) fn matches(record: &TlsaRecord, chain: &[Cert]) -> bool {
    if !is_usable(record) {
        return false;
    }
    let candidates = match record.usage {
        3 => chain.get(..1).unwrap_or_default(),
        _ => chain.get(1..).unwrap_or_default(),
    };
    candidates.iter().any(|c| {
        association(record.selector, record.matching, c).as_deref() == Some(&record.data[..])
    })
}

/// A published TLSA record set judged against a served chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TlsaVerdict {
    /// No TLSA record: the name does not use DANE.
    NotPublished,
    /// This record matches.
    Matches(TlsaRecord),
    /// Records are published and none matches; `usable` of them a DANE sender would try.
    NoneMatches {
        /// The records.
        records: Vec<TlsaRecord>,
        /// How many have usage 2 or 3 and known parameters.
        usable: usize,
    },
    /// The lookup failed.
    Failed(String),
}

/// Judges a TLSA lookup against `chain`.
pub(crate) fn verdict(tlsa: &RecordLookup<TlsaRecord>, chain: &[Cert]) -> TlsaVerdict {
    match tlsa {
        RecordLookup::NotFound => TlsaVerdict::NotPublished,
        RecordLookup::Failed(e) => TlsaVerdict::Failed(e.clone()),
        RecordLookup::Found(records) => match records.iter().find(|r| matches(r, chain)) {
            Some(r) => TlsaVerdict::Matches(r.clone()),
            None => TlsaVerdict::NoneMatches {
                usable: records.iter().filter(|r| is_usable(r)).count(),
                records: records.clone(),
            },
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A CA and a leaf it signed, parsed: `[leaf, ca]`.
    pub(crate) fn chain(host: &str) -> Vec<Cert> {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec![host.to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        [leaf.der(), ca.der()]
            .into_iter()
            .map(|d| Cert::parse(d.clone()).unwrap())
            .collect()
    }

    fn rec(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> TlsaRecord {
        TlsaRecord {
            usage,
            selector,
            matching,
            data,
        }
    }

    #[test]
    fn every_selector_and_matching_type_of_dane_ee_and_dane_ta() {
        let c = chain("mx.example.com");
        let sha512 = |d: &[u8]| {
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, d)
                .as_ref()
                .to_vec()
        };
        let sha256 = crate::certs::sha256;
        for (i, cert) in c.iter().enumerate() {
            let usage = if i == 0 { 3 } else { 2 };
            let other = if i == 0 { 2 } else { 3 };
            for (selector, selected) in [(0, cert.der.to_vec()), (1, cert.spki.clone())] {
                for (matching, data) in [
                    (0, selected.clone()),
                    (1, sha256(&selected)),
                    (2, sha512(&selected)),
                ] {
                    let r = rec(usage, selector, matching, data.clone());
                    assert!(matches(&r, &c), "{r}");
                    // The same data under the other usage names the other end of the chain.
                    assert!(!matches(&rec(other, selector, matching, data), &c));
                }
            }
        }
        // PKIX usages and unknown parameters are unusable for SMTP.
        let spki_hash = sha256(&c[0].spki);
        for r in [
            rec(1, 1, 1, spki_hash.clone()),
            rec(0, 1, 1, sha256(&c[1].spki)),
            rec(3, 2, 1, spki_hash.clone()),
            rec(3, 1, 3, spki_hash.clone()),
        ] {
            assert!(!is_usable(&r) && !matches(&r, &c), "{r}");
        }
        assert_eq!(record_311(&c[0]), rec(3, 1, 1, spki_hash));
        assert!(record_311(&c[0])
            .to_string()
            .starts_with(&format!("3 1 1 {}", crate::certs::hex(&sha256(&c[0].spki)))));
    }

    #[test]
    fn verdicts() {
        let c = chain("mx.example.com");
        let other = chain("mx.example.com");
        let good = record_311(&c[0]);
        let stale = record_311(&other[0]);
        assert_eq!(
            verdict(&RecordLookup::NotFound, &c),
            TlsaVerdict::NotPublished
        );
        assert_eq!(
            verdict(&RecordLookup::Found(vec![stale.clone(), good.clone()]), &c),
            TlsaVerdict::Matches(good)
        );
        assert_eq!(
            verdict(
                &RecordLookup::Found(vec![stale.clone(), rec(1, 1, 1, vec![1])]),
                &c
            ),
            TlsaVerdict::NoneMatches {
                records: vec![stale, rec(1, 1, 1, vec![1])],
                usable: 1
            }
        );
        assert_eq!(
            verdict(&RecordLookup::Failed("SERVFAIL".into()), &c),
            TlsaVerdict::Failed("SERVFAIL".into())
        );
    }
}
