//! `new-self-signed` and `csr`: keys, self-signed certificates and requests for a CA (rcgen).
//!
//! Key generation goes through rcgen's aws-lc-rs backend for every type, RSA included
//! (`KeyPair::generate_rsa_for`), so no second crypto library is needed.

use std::net::IpAddr;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, RsaKeySize, SerialNumber,
};

use super::cert::Cert;
use super::{describe_days_left, fmt_time, now, refuse, write_files, CertsDir, NewFile, Result};
use crate::dns::name::is_host_name as is_dns_name;

/// Private key types offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KeyKind {
    /// ECDSA on P-256 (the default: small, fast, accepted everywhere that matters).
    #[default]
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    /// ECDSA on P-384.
    #[value(name = "ecdsa-p384")]
    EcdsaP384,
    /// RSA 2048 bits (for CAs or peers that want RSA).
    #[value(name = "rsa-2048")]
    Rsa2048,
    /// RSA 3072 bits.
    #[value(name = "rsa-3072")]
    Rsa3072,
}

impl KeyKind {
    /// Generates a key of this type.
    pub fn generate(self) -> Result<KeyPair> {
        let r = match self {
            KeyKind::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyKind::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyKind::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)
            }
            KeyKind::Rsa3072 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072)
            }
        };
        r.or_else(|e| refuse(format!("key generation failed: {e}")))
    }

    fn is_rsa(self) -> bool {
        matches!(self, KeyKind::Rsa2048 | KeyKind::Rsa3072)
    }
}

/// Subject and names of a new certificate or request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Subject {
    /// Common name: the host name (listener host name, MX record).
    pub cn: String,
    /// More host names or IP addresses for the subjectAltName.
    pub sans: Vec<String>,
    /// O.
    pub org: Option<String>,
    /// OU.
    pub org_unit: Option<String>,
    /// C (two letters).
    pub country: Option<String>,
    /// ST.
    pub state: Option<String>,
    /// L.
    pub locality: Option<String>,
}

fn is_host(s: &str) -> bool {
    let bare = s.strip_prefix("*.").unwrap_or(s);
    s.parse::<IpAddr>().is_ok() || is_dns_name(bare)
}

impl Subject {
    /// The subjectAltName list: the CN first (clients check SANs, not the CN), then the
    /// other names, without repeats.
    pub(crate) fn san_list(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for n in std::iter::once(&self.cn).chain(&self.sans) {
            let n = n.trim().trim_end_matches('.').to_ascii_lowercase();
            if !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }

    fn check(&self) -> Result<()> {
        let cn = self.cn.trim();
        if !is_host(cn) {
            return refuse(format!(
                "--cn {cn:?} is not a host name: give the listener's host name (as in the MX record)"
            ));
        }
        if let Some(bad) = self.sans.iter().find(|s| !is_host(s.trim())) {
            return refuse(format!(
                "--san {bad:?} is not a host name, *.wildcard or IP address"
            ));
        }
        if let Some(c) = &self.country {
            if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_alphabetic()) {
                return refuse(format!(
                    "--country {c:?}: use the two-letter ISO code (DE, US)"
                ));
            }
        }
        Ok(())
    }

    /// Certificate (or request) parameters: names, no validity or serial.
    fn params(&self) -> Result<CertificateParams> {
        self.check()?;
        let mut p = CertificateParams::new(self.san_list())
            .or_else(|e| refuse(format!("bad name: {e}")))?;
        let mut dn = DistinguishedName::new();
        if let Some(c) = &self.country {
            dn.push(DnType::CountryName, c.to_ascii_uppercase());
        }
        for (t, v) in [
            (DnType::StateOrProvinceName, &self.state),
            (DnType::LocalityName, &self.locality),
            (DnType::OrganizationName, &self.org),
            (DnType::OrganizationalUnitName, &self.org_unit),
        ] {
            if let Some(v) = v.as_ref().filter(|v| !v.trim().is_empty()) {
                dn.push(t, v.trim());
            }
        }
        dn.push(DnType::CommonName, self.cn.trim().trim_end_matches('.'));
        p.distinguished_name = dn;
        Ok(p)
    }
}

/// A random positive 128-bit serial number.
fn random_serial() -> Result<SerialNumber> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).or_else(|_| refuse("no randomness for the serial number"))?;
    b[0] = (b[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&b))
}

/// `mxgate certs new-self-signed`: writes `NAME.key` (0600) and `NAME.crt`.
pub(crate) fn new_self_signed(
    dir: &CertsDir,
    name: &str,
    subject: &Subject,
    days: u32,
    kind: KeyKind,
    force: bool,
) -> Result<String> {
    super::check_name(name)?;
    if days == 0 {
        return refuse("--days must be at least 1");
    }
    let mut params = subject.params()?;
    let (crt, key) = (dir.crt(name), dir.key(name));
    if !force {
        if let Some(p) = [&key, &crt].into_iter().find(|p| p.exists()) {
            return refuse(format!(
                "{} already exists: use --force to replace it",
                p.display()
            ));
        }
    }
    dir.ensure()?;
    let t = now();
    let start = time::OffsetDateTime::from_unix_timestamp(t - 3600)
        .or_else(|e| refuse(format!("clock: {e}")))?;
    params.not_before = start;
    params.not_after = start + time::Duration::days(i64::from(days)) + time::Duration::hours(1);
    params.serial_number = Some(random_serial()?);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = if kind.is_rsa() {
        vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ]
    } else {
        vec![KeyUsagePurpose::DigitalSignature]
    };
    // Server for the listeners, client for delivery (`client_certificate`).
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let kp = kind.generate()?;
    let cert = params
        .self_signed(&kp)
        .or_else(|e| refuse(format!("signing failed: {e}")))?;
    write_files(
        &[
            NewFile::private(key.clone(), kp.serialize_pem()),
            NewFile::public(crt.clone(), cert.pem()),
        ],
        force,
    )?;
    let c = Cert::parse(cert.der().clone()).or_else(refuse)?;
    Ok(format!(
        "wrote {} ({}, mode 0600) and {}\n  subject  {}\n  names    {}\n  expires  {} ({})\n  \
         self-signed: TLS works, but clients cannot verify it; for verifiable TLS use `mxgate certs csr`\n",
        key.display(),
        c.key_type,
        crt.display(),
        c.subject,
        c.names(),
        fmt_time(c.not_after),
        describe_days_left(c.not_after, t),
    ))
}

/// `mxgate certs csr`: writes `NAME.key` (0600, unless `reuse_key`) and `NAME.csr`.
pub(crate) fn csr(
    dir: &CertsDir,
    name: &str,
    subject: &Subject,
    kind: KeyKind,
    reuse_key: bool,
    force: bool,
) -> Result<String> {
    super::check_name(name)?;
    let params = subject.params()?;
    let (crt, key, csr) = (dir.crt(name), dir.key(name), dir.csr(name));
    let mut notes = String::new();
    let kp = if reuse_key {
        let pem = std::fs::read_to_string(&key)
            .or_else(|e| refuse(format!("--reuse-key: cannot read {}: {e}", key.display())))?;
        KeyPair::from_pem(&pem)
            .or_else(|e| refuse(format!("{}: not a usable private key: {e}", key.display())))?
    } else {
        if key.exists() && !force {
            return refuse(format!(
                "{} already exists: use --reuse-key to request a certificate for the same key, \
                 or --force to replace the key",
                key.display()
            ));
        }
        if crt.exists() {
            if !force {
                return refuse(format!(
                    "{} is installed and a new key would not match it: use another name \
                     (e.g. {name}-new) or --reuse-key",
                    crt.display()
                ));
            }
            notes.push_str(&format!(
                "warning: {} does not match the new key: install the signed certificate before \
                 the next restart or reload\n",
                crt.display()
            ));
        }
        if !force && csr.exists() {
            return refuse(format!(
                "{} already exists: use --force to replace it",
                csr.display()
            ));
        }
        kind.generate()?
    };
    // No serial number in a CSR: rcgen refuses one (UnsupportedInCsr), and the CA picks it.
    let req = params
        .serialize_request(&kp)
        .and_then(|r| r.pem())
        .or_else(|e| refuse(format!("cannot build the request: {e}")))?;
    dir.ensure()?;
    let mut files = Vec::new();
    if !reuse_key {
        files.push(NewFile::private(key.clone(), kp.serialize_pem()));
    }
    files.push(NewFile::public(csr.clone(), req));
    write_files(&files, force)?;
    let key_note = if reuse_key {
        format!("{} (kept)", key.display())
    } else {
        format!("{} (mode 0600)", key.display())
    };
    Ok(format!(
        "{notes}wrote {} for {}\n  key      {key_note}\n  names    {}\n\
         next: send {} to the CA, then run\n  \
         mxgate certs install {name} --cert SIGNED.pem --chain INTERMEDIATES.pem\n",
        csr.display(),
        params.distinguished_name_text(),
        subject.san_list().join(", "),
        csr.display(),
    ))
}

trait DnText {
    fn distinguished_name_text(&self) -> String;
}

impl DnText for CertificateParams {
    fn distinguished_name_text(&self) -> String {
        let mut parts = Vec::new();
        for (t, v) in self.distinguished_name.iter() {
            let label = match t {
                DnType::CountryName => "C",
                DnType::StateOrProvinceName => "ST",
                DnType::LocalityName => "L",
                DnType::OrganizationName => "O",
                DnType::OrganizationalUnitName => "OU",
                DnType::CommonName => "CN",
                _ => "?",
            };
            let value = match v {
                rcgen::DnValue::Utf8String(s) => s.clone(),
                rcgen::DnValue::PrintableString(s) => s.as_str().to_string(),
                other => format!("{other:?}"),
            };
            parts.push(format!("{label}={value}"));
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cn_goes_first_into_the_sans() {
        let s = Subject {
            cn: "MX.example.com".into(),
            sans: vec!["mail.example.com".into(), "mx.example.com".into()],
            ..Subject::default()
        };
        assert_eq!(s.san_list(), ["mx.example.com", "mail.example.com"]);
    }

    #[test]
    fn bad_names_are_refused() {
        let s = Subject {
            cn: "not a host".into(),
            ..Subject::default()
        };
        assert!(s.params().is_err());
        let s = Subject {
            cn: "mx.example.com".into(),
            country: Some("Germany".into()),
            ..Subject::default()
        };
        assert!(s.params().unwrap_err().0.contains("two-letter"));
    }
}
