//! Chain assembly: order leaf→root, drop duplicates and strangers, find what is missing.
//!
//! Seed 003's troubleshooting note: after a renewal, administrators upload the intermediates
//! again, or a changed intermediate next to the old one, and verification fails. Install
//! therefore rebuilds the chain from the leaf by issuer name *and* signature, and inspect
//! reports the same problems for a chain already on disk.

use super::cert::Cert;

/// How the chain ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// With a self-signed certificate (a root, or a self-signed leaf).
    SelfSigned,
    /// With a certificate issued by a well-known public root (webpki-roots): complete.
    KnownRoot(String),
    /// With a certificate that is not a CA whose issuer is absent: an intermediate is missing.
    Missing {
        /// The last certificate (subject).
        last: String,
        /// Its issuer.
        issuer: String,
    },
    /// Below a root the configuration trusts as a CA (`client_ca_file`, `ca_file`): the
    /// operator supplies that root to the clients, so nothing is missing.
    SuppliedRoot {
        /// The last certificate (subject).
        last: String,
        /// The root (subject).
        root: String,
        /// The CA file holding it.
        file: String,
    },
    /// With a CA certificate whose issuer is absent and not a well-known root: fine when
    /// the clients trust that issuer as a root, otherwise an intermediate is missing.
    UnknownRoot {
        /// The last certificate (subject).
        last: String,
        /// Its issuer.
        issuer: String,
    },
}

/// The result of [`assemble`].
#[derive(Debug, Clone)]
pub(crate) struct Assembly {
    /// Leaf first, each next certificate the issuer of the one before.
    pub chain: Vec<Cert>,
    /// Exact copies dropped (of the leaf or of another certificate).
    pub duplicates: Vec<Cert>,
    /// Certificates that are not on the leaf's issuer path.
    pub unrelated: Vec<Cert>,
    /// How the chain ends.
    pub end: End,
    /// The input was not already in leaf→root order.
    pub reordered: bool,
}

/// True when `issuer` (a DER Name) is the subject of a webpki-roots trust anchor.
fn is_known_root(issuer: &[u8]) -> bool {
    // Trust anchors store the Name's contents without the outer SEQUENCE header.
    let inner = strip_der_header(issuer).unwrap_or(issuer);
    webpki_roots::TLS_SERVER_ROOTS
        .iter()
        .any(|ta| ta.subject.as_ref() == inner || ta.subject.as_ref() == issuer)
}

fn strip_der_header(der: &[u8]) -> Option<&[u8]> {
    let len_byte = *der.get(1)?;
    let header = if len_byte < 0x80 {
        2
    } else {
        2 + usize::from(len_byte & 0x7f)
    };
    der.get(header..)
}

/// Builds the chain from `leaf` through `rest` (in the order given).
pub(crate) fn assemble(leaf: Cert, rest: Vec<Cert>, now: i64) -> Assembly {
    let mut duplicates = Vec::new();
    let mut pool: Vec<Cert> = Vec::new();
    for c in rest {
        if c.der == leaf.der || pool.iter().any(|p| p.der == c.der) {
            duplicates.push(c);
        } else {
            pool.push(c);
        }
    }
    let mut used_at: Vec<Option<usize>> = vec![None; pool.len()];
    let mut chain = vec![leaf];
    let end = loop {
        let Some(cur) = chain.last() else {
            unreachable!("chain starts with the leaf")
        };
        if cur.self_signed {
            break End::SelfSigned;
        }
        // Several candidates (an old and a renewed intermediate): prefer one still valid,
        // then the one valid longest.
        let best = (0..pool.len())
            .filter(|&i| used_at[i].is_none() && cur.issued_by(&pool[i]))
            .max_by_key(|&i| (pool[i].not_after >= now, pool[i].not_after));
        match best {
            Some(i) if chain.len() < 16 => {
                used_at[i] = Some(chain.len());
                chain.push(pool[i].clone());
            }
            _ => {
                let last = cur.short();
                let issuer = cur.issuer.clone();
                break if is_known_root(cur.issuer_der()) {
                    End::KnownRoot(issuer)
                } else if cur.is_ca && chain.len() > 1 {
                    End::UnknownRoot { last, issuer }
                } else {
                    End::Missing { last, issuer }
                };
            }
        }
    };
    let positions: Vec<usize> = used_at.iter().flatten().copied().collect();
    let reordered = positions.windows(2).any(|w| w[0] > w[1]);
    let unrelated = pool
        .into_iter()
        .zip(used_at)
        .filter(|(_, u)| u.is_none())
        .map(|(c, _)| c)
        .collect();
    Assembly {
        chain,
        duplicates,
        unrelated,
        end,
        reordered,
    }
}

impl Assembly {
    /// Takes the self-signed roots of the configuration's CA files (with the file each is
    /// in) into account: a chain that stops right below one of them is complete.
    pub(crate) fn with_ca_roots(mut self, roots: &[(Cert, String)]) -> Assembly {
        if let End::Missing { last, .. } | End::UnknownRoot { last, .. } = &self.end {
            let cur = &self.chain[self.chain.len() - 1];
            if let Some((r, file)) = roots
                .iter()
                .find(|(r, _)| r.self_signed && cur.issued_by(r))
            {
                self.end = End::SuppliedRoot {
                    last: last.clone(),
                    root: r.subject.clone(),
                    file: file.clone(),
                };
            }
        }
        self
    }

    /// Problems to report, each one line, `warning:` or `note:` first. `install` is true
    /// when the certificates are being installed (so duplicates and strangers are dropped).
    pub(crate) fn messages(&self, install: bool) -> Vec<String> {
        let mut out = Vec::new();
        let leaf_der = &self.chain[0].der;
        for d in &self.duplicates {
            out.push(match (&d.der == leaf_der, install) {
                (true, true) => {
                    "warning: the chain repeats the certificate itself: copy dropped".to_string()
                }
                (true, false) => {
                    "warning: duplicate: the file repeats the leaf certificate".to_string()
                }
                (false, true) => {
                    format!("warning: duplicate intermediate dropped: {}", d.subject)
                }
                (false, false) => format!(
                    "warning: duplicate intermediate: {} appears more than once",
                    d.subject
                ),
            });
        }
        for u in &self.unrelated {
            out.push(format!(
                "warning: {} certificate {} (issued by {}) is not part of this chain",
                if install { "dropped" } else { "unrelated" },
                u.subject,
                u.issuer
            ));
        }
        if self.reordered {
            out.push(if install {
                "note: chain reordered leaf→root".to_string()
            } else {
                format!(
                    "warning: wrong order: the chain must go leaf→root: {}",
                    self.chain
                        .iter()
                        .map(|c| c.short())
                        .collect::<Vec<_>>()
                        .join(" → ")
                )
            });
        }
        match &self.end {
            End::Missing { last, issuer } => out.push(format!(
                "warning: missing intermediate: {last} was issued by {issuer}, which is not in the \
                 chain and it is not self-signed; clients will fail to verify{}",
                if install { ": add it with --chain" } else { "" }
            )),
            End::UnknownRoot { last, issuer } => out.push(format!(
                "note: the chain ends at {last}, issued by {issuer}, which is not included and is \
                 not a well-known root: clients must trust it as a root, or an intermediate is missing"
            )),
            End::SuppliedRoot { last, root, file } => out.push(format!(
                "note: the chain ends at {last}, issued by the root {root} of {file}, which is \
                 not included: clients must trust that root"
            )),
            End::SelfSigned | End::KnownRoot(_) => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    fn ca(name: &str, parent: Option<&Issuer<'_, KeyPair>>) -> (Cert, Issuer<'static, KeyPair>) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = match parent {
            Some(i) => p.signed_by(&key, i).unwrap(),
            None => p.self_signed(&key).unwrap(),
        };
        (
            Cert::parse(cert.der().clone()).unwrap(),
            Issuer::new(p, key),
        )
    }

    fn leaf(issuer: &Issuer<'_, KeyPair>) -> Cert {
        let mut p = CertificateParams::new(vec!["mx.example.com".to_string()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "mx.example.com");
        let key = KeyPair::generate().unwrap();
        Cert::parse(p.signed_by(&key, issuer).unwrap().der().clone()).unwrap()
    }

    #[test]
    fn orders_dedupes_and_drops_strangers() {
        let (root, root_i) = ca("Root", None);
        let (int, int_i) = ca("Intermediate", Some(&root_i));
        let (other, _) = ca("Other", None);
        let l = leaf(&int_i);
        let a = assemble(l, vec![root.clone(), int.clone(), int.clone(), other], 0);
        let subjects: Vec<String> = a.chain.iter().map(|c| c.short()).collect();
        assert_eq!(
            subjects,
            ["CN=mx.example.com", "CN=Intermediate", "CN=Root"].map(String::from)
        );
        assert_eq!(a.duplicates.len(), 1);
        assert_eq!(a.unrelated.len(), 1);
        assert!(a.reordered);
        assert_eq!(a.end, End::SelfSigned);
        let m = a.messages(true).join("\n");
        assert!(
            m.contains("duplicate intermediate dropped: CN=Intermediate"),
            "{m}"
        );
    }

    #[test]
    fn leaf_alone_misses_its_intermediate() {
        let (_, root_i) = ca("Root", None);
        let (_, int_i) = ca("Intermediate", Some(&root_i));
        let a = assemble(leaf(&int_i), vec![], 0);
        assert!(matches!(a.end, End::Missing { .. }), "{:?}", a.end);
        assert!(a.messages(true)[0].contains("missing intermediate"));
    }

    #[test]
    fn a_leaf_signed_directly_by_a_supplied_root_misses_nothing() {
        let (root, root_i) = ca("Root", None);
        let a = assemble(leaf(&root_i), vec![root], 0);
        assert_eq!(a.end, End::SelfSigned);
        assert!(a.messages(true).is_empty(), "{:?}", a.messages(true));
    }

    #[test]
    fn intermediate_without_root_is_a_note() {
        let (_, root_i) = ca("Root", None);
        let (int, int_i) = ca("Intermediate", Some(&root_i));
        let a = assemble(leaf(&int_i), vec![int], 0);
        assert!(matches!(a.end, End::UnknownRoot { .. }));
        assert!(!a.reordered);
        assert!(a.messages(false)[0].starts_with("note:"));
    }
}
