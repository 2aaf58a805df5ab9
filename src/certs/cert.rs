//! Parsed certificates and private keys: what the other modules compare and print.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::SubjectPublicKeyInfo;

use super::{pem_encode, read_file, refuse, tlsa_311, CertError, Result};

/// One certificate, parsed once into owned fields.
#[derive(Debug, Clone)]
pub(crate) struct Cert {
    /// DER encoding.
    pub der: CertificateDer<'static>,
    /// Subject as text (`CN=mx.example.com, O=Example`).
    pub subject: String,
    /// Issuer as text.
    pub issuer: String,
    subject_raw: Vec<u8>,
    issuer_raw: Vec<u8>,
    /// First subject CN.
    pub cn: Option<String>,
    /// dNSName SANs.
    pub dns_names: Vec<String>,
    /// iPAddress SANs.
    pub ip_addrs: Vec<IpAddr>,
    /// Every SAN for display (`DNS:x`, `IP:y`, `email:z`, `URI:u`).
    pub sans: Vec<String>,
    /// Serial, colon-separated hex.
    pub serial: String,
    /// notBefore, seconds since the epoch.
    pub not_before: i64,
    /// notAfter, seconds since the epoch.
    pub not_after: i64,
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
    /// SubjectPublicKeyInfo, DER.
    pub spki: Vec<u8>,
    /// The subjectPublicKey bits (what a private key must match).
    pub public_key: Vec<u8>,
    /// `ECDSA P-256`, `RSA 2048`, ...
    pub key_type: String,
    /// Issuer equals subject and the certificate's own key verifies its signature.
    pub self_signed: bool,
}

impl Cert {
    /// Parses a DER certificate.
    pub(crate) fn parse(der: CertificateDer<'static>) -> std::result::Result<Cert, String> {
        let (_, x) = X509Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
        let cn = x
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string);
        let mut dns_names = Vec::new();
        let mut ip_addrs = Vec::new();
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = x.subject_alternative_name() {
            for n in &ext.value.general_names {
                match n {
                    GeneralName::DNSName(d) => {
                        dns_names.push(d.to_string());
                        sans.push(format!("DNS:{d}"));
                    }
                    GeneralName::IPAddress(b) => {
                        if let Some(ip) = ip_from_bytes(b) {
                            ip_addrs.push(ip);
                            sans.push(format!("IP:{ip}"));
                        }
                    }
                    GeneralName::RFC822Name(m) => sans.push(format!("email:{m}")),
                    GeneralName::URI(u) => sans.push(format!("URI:{u}")),
                    _ => {}
                }
            }
        }
        let subject_raw = x.subject().as_raw().to_vec();
        let issuer_raw = x.issuer().as_raw().to_vec();
        let self_signed = subject_raw == issuer_raw && signed_by(&x, &x);
        let spki = x.public_key();
        Ok(Cert {
            subject: x.subject().to_string(),
            issuer: x.issuer().to_string(),
            cn,
            dns_names,
            ip_addrs,
            sans,
            serial: x.raw_serial_as_string(),
            not_before: x.validity().not_before.timestamp(),
            not_after: x.validity().not_after.timestamp(),
            is_ca: x.is_ca(),
            spki: spki.raw.to_vec(),
            public_key: spki.subject_public_key.data.to_vec(),
            key_type: describe_spki(spki),
            self_signed,
            subject_raw,
            issuer_raw,
            der,
        })
    }

    /// True when `parent` issued this certificate: its subject is our issuer and its key
    /// verifies our signature (names alone when the signature algorithm is unsupported).
    pub(crate) fn issued_by(&self, parent: &Cert) -> bool {
        if self.issuer_raw != parent.subject_raw && self.issuer != parent.subject {
            return false;
        }
        match (
            X509Certificate::from_der(self.der.as_ref()),
            X509Certificate::from_der(parent.der.as_ref()),
        ) {
            (Ok((_, child)), Ok((_, p))) => signed_by(&child, &p),
            _ => false,
        }
    }

    /// The issuer name, DER (for comparing with trust anchors).
    pub(crate) fn issuer_der(&self) -> &[u8] {
        &self.issuer_raw
    }

    /// The CN, or the whole subject when there is none.
    pub(crate) fn short(&self) -> String {
        match &self.cn {
            Some(cn) => format!("CN={cn}"),
            None if self.subject.is_empty() => "(empty subject)".to_string(),
            None => self.subject.clone(),
        }
    }

    /// DANE `3 1 1` association data for this certificate's key.
    pub(crate) fn tlsa(&self) -> String {
        tlsa_311(&self.spki)
    }

    /// Which of this certificate's names covers `host`: the dNSName/iPAddress SANs, or the
    /// CN when there are no SANs (RFC 6125). `None` when nothing does.
    pub(crate) fn covering_name(&self, host: &str) -> Option<String> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self
                .ip_addrs
                .iter()
                .find(|a| **a == ip)
                .map(|a| format!("IP:{a}"));
        }
        if !self.dns_names.is_empty() || !self.ip_addrs.is_empty() {
            return self
                .dns_names
                .iter()
                .find(|p| name_matches(p, &host))
                .map(|p| format!("DNS:{p}"));
        }
        self.cn
            .as_ref()
            .filter(|cn| name_matches(cn, &host))
            .map(|cn| format!("CN={cn}"))
    }

    /// The names a client can check, for messages: the SANs, or the CN.
    pub(crate) fn names(&self) -> String {
        if self.sans.is_empty() {
            self.short()
        } else {
            self.sans.join(", ")
        }
    }

    /// PEM of this certificate.
    pub(crate) fn pem(&self) -> String {
        pem_encode("CERTIFICATE", self.der.as_ref())
    }
}

/// True when `pattern` (a SAN or CN, maybe `*.example.com`) matches the lower-case `host`.
pub(crate) fn name_matches(pattern: &str, host: &str) -> bool {
    let p = pattern.trim_end_matches('.').to_ascii_lowercase();
    match p.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        None => p == host,
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        }
        _ => None,
    }
}

/// True when `parent`'s key made `child`'s signature. RSA-PSS signatures, which the check
/// below does not always manage (OpenSSL's default salt length), count when `child`'s
/// authorityKeyIdentifier is `parent`'s subjectKeyIdentifier, as in a path-building verifier.
fn signed_by(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> bool {
    use x509_parser::extensions::ParsedExtension;
    if signature_ok(child, parent.public_key()) {
        return true;
    }
    let pss = child.signature_algorithm.algorithm.to_id_string() == "1.2.840.113549.1.1.10";
    let aki = child
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0),
            _ => None,
        });
    let ski = parent
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
            _ => None,
        });
    pss && aki.is_some() && aki == ski
}

fn signature_ok(cert: &X509Certificate<'_>, key: &SubjectPublicKeyInfo<'_>) -> bool {
    match cert.verify_signature(Some(key)) {
        Ok(()) => true,
        // An algorithm aws-lc-rs cannot check: trust the name match.
        Err(X509Error::SignatureUnsupportedAlgorithm) => true,
        Err(_) => false,
    }
}

/// `RSA 2048`, `ECDSA P-256`, `Ed25519`, ...
pub(crate) fn describe_spki(spki: &SubjectPublicKeyInfo<'_>) -> String {
    let bits = || spki.parsed().map(|k| k.key_size()).unwrap_or(0);
    match spki.algorithm.algorithm.to_id_string().as_str() {
        "1.2.840.113549.1.1.1" => format!("RSA {}", bits()),
        "1.2.840.113549.1.1.10" => format!("RSA-PSS {}", bits()),
        "1.2.840.10045.2.1" => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => "ECDSA P-256".to_string(),
                Some("1.3.132.0.34") => "ECDSA P-384".to_string(),
                Some("1.3.132.0.35") => "ECDSA P-521".to_string(),
                Some(other) => format!("ECDSA (curve {other})"),
                None => "ECDSA".to_string(),
            }
        }
        "1.3.101.112" => "Ed25519".to_string(),
        "1.3.101.113" => "Ed448".to_string(),
        other => format!("unknown key algorithm {other}"),
    }
}

/// Parses every certificate in PEM text (or one DER certificate), in file order.
pub(crate) fn parse_certs(data: &[u8], what: &str) -> Result<Vec<Cert>> {
    let ders: Vec<CertificateDer<'static>> = if data.windows(11).any(|w| w == b"-----BEGIN ") {
        CertificateDer::pem_slice_iter(data)
            .collect::<std::result::Result<_, _>>()
            .or_else(|e| refuse(format!("{what}: bad PEM: {e}")))?
    } else if data.first() == Some(&0x30) {
        vec![CertificateDer::from(data.to_vec())]
    } else {
        Vec::new()
    };
    if ders.is_empty() {
        return refuse(format!(
            "{what}: no certificate found (expected PEM -----BEGIN CERTIFICATE----- or DER)"
        ));
    }
    ders.into_iter()
        .enumerate()
        .map(|(i, d)| {
            Cert::parse(d).map_err(|e| {
                CertError(format!(
                    "{what}: certificate {}: not valid X.509: {e}",
                    i + 1
                ))
            })
        })
        .collect()
}

/// Reads and parses a certificate file.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<Cert>> {
    parse_certs(&read_file(path)?, &path.display().to_string())
}

/// A private key with its public half.
#[derive(Debug)]
pub(crate) struct Key {
    /// The key as stored (PKCS#8, PKCS#1 or SEC1).
    pub der: PrivateKeyDer<'static>,
    /// SubjectPublicKeyInfo, DER.
    pub spki: Vec<u8>,
    /// The subjectPublicKey bits.
    pub public_key: Vec<u8>,
    /// `ECDSA P-256`, `RSA 2048`, ...
    pub key_type: String,
}

impl Key {
    /// Loads a DER key (any form rustls takes) and derives its public key.
    pub(crate) fn from_der(der: PrivateKeyDer<'static>, what: &str) -> Result<Key> {
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)
            .or_else(|e| refuse(format!("{what}: unsupported or invalid private key: {e}")))?;
        let Some(spki) = signer.public_key() else {
            return refuse(format!("{what}: cannot derive the public key"));
        };
        let spki = spki.as_ref().to_vec();
        let (public_key, key_type) = match SubjectPublicKeyInfo::from_der(&spki) {
            Ok((_, p)) => (p.subject_public_key.data.to_vec(), describe_spki(&p)),
            Err(e) => return refuse(format!("{what}: bad public key: {e}")),
        };
        Ok(Key {
            der,
            spki,
            public_key,
            key_type,
        })
    }

    /// Parses PEM key text.
    pub(crate) fn from_pem(data: &[u8], what: &str) -> Result<Key> {
        if data
            .windows(27)
            .any(|w| w == b"-----BEGIN ENCRYPTED PRIVAT")
        {
            return refuse(format!(
                "{what}: the private key is encrypted: give an unencrypted PEM key (PKCS#8, PKCS#1 or SEC1)"
            ));
        }
        let der = PrivateKeyDer::from_pem_slice(data)
            .or_else(|e| refuse(format!("{what}: no private key found: {e}")))?;
        Key::from_der(der, what)
    }

    /// Reads a PEM key file.
    pub(crate) fn read(path: &Path) -> Result<Key> {
        Key::from_pem(&read_file(path)?, &path.display().to_string())
    }

    /// True when `cert` carries this key's public key.
    pub(crate) fn matches(&self, cert: &Cert) -> bool {
        self.public_key == cert.public_key
    }

    /// The key as PKCS#8 DER (converting PKCS#1 RSA and SEC1 EC keys).
    pub(crate) fn pkcs8(&self) -> Result<Vec<u8>> {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
        use aws_lc_rs::signature as sig;
        match &self.der {
            PrivateKeyDer::Pkcs8(k) => Ok(k.secret_pkcs8_der().to_vec()),
            PrivateKeyDer::Pkcs1(k) => {
                let kp = aws_lc_rs::rsa::KeyPair::from_der(k.secret_pkcs1_der())
                    .or_else(|e| refuse(format!("RSA key: {e}")))?;
                let p8: Pkcs8V1Der<'static> = kp
                    .as_der()
                    .or_else(|e| refuse(format!("RSA key to PKCS#8: {e}")))?;
                Ok(p8.as_ref().to_vec())
            }
            PrivateKeyDer::Sec1(k) => {
                for alg in [
                    &sig::ECDSA_P256_SHA256_ASN1_SIGNING,
                    &sig::ECDSA_P384_SHA384_ASN1_SIGNING,
                    &sig::ECDSA_P521_SHA512_ASN1_SIGNING,
                ] {
                    if let Ok(kp) =
                        sig::EcdsaKeyPair::from_private_key_der(alg, k.secret_sec1_der())
                    {
                        return kp
                            .to_pkcs8v1()
                            .map(|d| d.as_ref().to_vec())
                            .or_else(|e| refuse(format!("EC key to PKCS#8: {e}")));
                    }
                }
                refuse("EC key: unsupported curve")
            }
            _ => refuse("unsupported private key format"),
        }
    }

    /// PEM in the form it was read (`PRIVATE KEY`, `RSA PRIVATE KEY`, `EC PRIVATE KEY`).
    pub(crate) fn pem(&self) -> String {
        let (label, der) = match &self.der {
            PrivateKeyDer::Pkcs1(k) => ("RSA PRIVATE KEY", k.secret_pkcs1_der()),
            PrivateKeyDer::Sec1(k) => ("EC PRIVATE KEY", k.secret_sec1_der()),
            other => ("PRIVATE KEY", other.secret_der()),
        };
        pem_encode(label, der)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("*.example.com", "mx.example.com"));
        assert!(!name_matches("*.example.com", "a.mx.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(name_matches("MX.Example.com.", "mx.example.com"));
    }

    #[test]
    fn generated_certificate_parses() {
        let ck = rcgen::generate_simple_self_signed(vec!["mx.example.com".into()]).unwrap();
        let c = Cert::parse(ck.cert.der().clone()).unwrap();
        assert!(c.self_signed);
        assert_eq!(c.dns_names, vec!["mx.example.com".to_string()]);
        assert_eq!(c.key_type, "ECDSA P-256");
        assert_eq!(
            c.covering_name("mx.example.com").as_deref(),
            Some("DNS:mx.example.com")
        );
        assert_eq!(c.covering_name("other.example.com"), None);
        let k = Key::from_pem(ck.signing_key.serialize_pem().as_bytes(), "key").unwrap();
        assert!(k.matches(&c));
        assert_eq!(k.spki, c.spki);
    }
}
