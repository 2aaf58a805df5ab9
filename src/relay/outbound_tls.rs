//! Outbound TLS (docs/relay.md): the rustls client configuration, trust roots and the
//! certificate checks of the `*-verify*` destination modes.
//!
//! # How verification works
//! The handshake itself never fails on the *content* of the server certificate:
//! the rustls verifier accepts any chain, but still checks the handshake
//! signatures, so the server has proven it holds the key of the certificate it
//! presented. Right after the handshake, before a single SMTP byte goes over the
//! encrypted channel, [`OutboundTlsContext::verify`] checks that certificate as
//! the destination's mode demands (chain to a trusted root, then identity). The
//! client (`relay::client`) then delivers (`preferred-verify`: a failure is only
//! logged) or closes the connection (`required-verify*`). One
//! [`rustls::ClientConfig`] thus serves every mode; the root stores are cached
//! per CA bundle.
//!
//! # Identity rules (docs/relay.md, "Outbound TLS modes")
//! - `preferred-verify` and `required-verify`: reference identities are the
//!   destination domain and the route host when it is a name; presented
//!   identities are the dNSName subjectAltNames and the subject CN (the CN is
//!   accepted even when SANs exist).
//! - `required-verify-hosted`: the reference identity is the destination domain
//!   only; presented identities are the dNSName SANs, and the subject CN only
//!   when the certificate has no dNSName SAN at all.
//!
//! A wildcard `*.example.com` matches exactly one left-most label.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::outbound::OutboundTls;
use crate::dns::name::is_host_name as is_dns_name;

/// Problems building the outbound TLS context or loading trust roots.
#[derive(Debug, thiserror::Error)]
pub enum OutboundTlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {message}")]
    Pem {
        /// File.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A CA bundle holds no usable certificate.
    #[error("{path}: no usable CA certificate in file")]
    NoRoots {
        /// File.
        path: PathBuf,
    },
    /// rustls refused the client certificate or key.
    #[error("client certificate {path}: {message}")]
    ClientCert {
        /// Certificate file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Built once from configuration; shared by every delivery connection.
#[derive(Debug)]
pub struct OutboundTlsContext {
    provider: Arc<CryptoProvider>,
    config: Arc<ClientConfig>,
    webpki_roots: Arc<RootCertStore>,
    bundles: Mutex<HashMap<PathBuf, Arc<RootCertStore>>>,
}

impl OutboundTlsContext {
    /// The context: webpki roots, and an optional client certificate (PEM chain, PEM key)
    /// presented to destinations that ask for one.
    pub fn new(client_cert: Option<(PathBuf, PathBuf)>) -> Result<Self, OutboundTlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = Arc::new(HandshakeOnlyVerifier {
            provider: provider.clone(),
        });
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12]);
        // The version list is static and the default provider supports both: cannot fail.
        let builder = match builder {
            Ok(b) => b,
            Err(e) => unreachable!("static TLS versions rejected: {e}"),
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = load_pem_certs(&cert)?;
                if chain.is_empty() {
                    return Err(OutboundTlsError::Pem {
                        path: cert,
                        message: "no certificate in file".into(),
                    });
                }
                let key_der =
                    PrivateKeyDer::from_pem_file(&key).map_err(|e| OutboundTlsError::Pem {
                        path: key.clone(),
                        message: e.to_string(),
                    })?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    OutboundTlsError::ClientCert {
                        path: cert.clone(),
                        message: e.to_string(),
                    }
                })?
            }
        };
        // Every handshake is a full one, so the certificate checked after it is
        // always the one the server presented on this connection.
        config.resumption = rustls::client::Resumption::disabled();
        let webpki_roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Ok(OutboundTlsContext {
            provider,
            config: Arc::new(config),
            webpki_roots: Arc::new(webpki_roots),
            bundles: Mutex::new(HashMap::new()),
        })
    }

    /// The client configuration used for every STARTTLS handshake.
    pub(crate) fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// Trust roots: the webpki roots, or the PEM bundle `ca_file` (loaded once, then cached).
    pub fn roots(&self, ca_file: Option<&Path>) -> Result<Arc<RootCertStore>, OutboundTlsError> {
        let Some(path) = ca_file else {
            return Ok(self.webpki_roots.clone());
        };
        let mut bundles = self.bundles.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = bundles.get(path) {
            return Ok(r.clone());
        }
        let mut store = RootCertStore::empty();
        let (added, _ignored) = store.add_parsable_certificates(load_pem_certs(path)?);
        if added == 0 {
            return Err(OutboundTlsError::NoRoots {
                path: path.to_path_buf(),
            });
        }
        let store = Arc::new(store);
        bundles.insert(path.to_path_buf(), store.clone());
        Ok(store)
    }

    /// Checks the chain the server presented (`chain[0]` = its certificate) as `mode` demands.
    ///
    /// Returns the identity that matched (`DNS:mx.example.com` or `CN=mx.example.com`) or
    /// the reason the check failed. Only meaningful for the `*-verify*` modes.
    pub fn verify(
        &self,
        mode: OutboundTls,
        ca_file: Option<&Path>,
        chain: &[CertificateDer<'_>],
        domain: &str,
        host: &str,
        now: UnixTime,
    ) -> Result<String, String> {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return Err("no certificate presented".into());
        };
        let roots = self.roots(ca_file).map_err(|e| e.to_string())?;
        let parsed = ParsedCertificate::try_from(end_entity)
            .map_err(|e| format!("unparsable certificate: {e}"))?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
        .map_err(|e| e.to_string())?;
        match_identity(mode, end_entity.as_ref(), domain, host)
    }
}

fn load_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, OutboundTlsError> {
    let err = |e: &dyn std::fmt::Display| OutboundTlsError::Pem {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    CertificateDer::pem_file_iter(path)
        .map_err(|e| err(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(&e))
}

/// The name sent as SNI (and handed to rustls): the route host when it is a DNS name,
/// else the destination domain when that is one, else the host's IP address (no SNI).
pub(crate) fn server_name_for(host: &str, domain: &str, ip: IpAddr) -> ServerName<'static> {
    for candidate in [host, domain] {
        let c = candidate.trim_end_matches('.');
        if is_dns_name(c) && c.parse::<IpAddr>().is_err() {
            if let Ok(name) = ServerName::try_from(c.to_ascii_lowercase()) {
                return name;
            }
        }
    }
    ServerName::IpAddress(ip.into())
}

/// True when the presented identity `pattern` (a dNSName or CN, perhaps `*.example.com`)
/// covers the reference identity `name`. Case-insensitive; trailing dots ignored; a
/// wildcard stands for exactly one whole left-most label.
pub(crate) fn dns_name_matches(pattern: &str, name: &str) -> bool {
    let p = pattern.trim_end_matches('.').to_ascii_lowercase();
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    if p.is_empty() || n.is_empty() {
        return false;
    }
    match p.strip_prefix("*.") {
        Some(rest) => {
            // At least two labels after the wildcard: `*.com` never matches.
            if !rest.contains('.') || rest.contains('*') {
                return false;
            }
            match n.split_once('.') {
                Some((first, tail)) => !first.is_empty() && tail == rest,
                None => false,
            }
        }
        None => !p.contains('*') && p == n,
    }
}

/// Presented identities of a certificate: (dNSName SANs, subject CNs).
fn presented_identities(der: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unparsable certificate: {e}"))?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for gn in &ext.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = gn {
                sans.push(d.to_string());
            }
        }
    }
    let cns = cert
        .subject()
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .map(str::to_string)
        .collect();
    Ok((sans, cns))
}

/// The identity check of a `*-verify*` mode on a DER certificate (no chain check).
///
/// Returns the presented identity that matched (`DNS:…` or `CN=…`), or the reason.
pub(crate) fn match_identity(
    mode: OutboundTls,
    der: &[u8],
    domain: &str,
    host: &str,
) -> Result<String, String> {
    let (sans, cns) = presented_identities(der)?;
    let hosted = mode == OutboundTls::RequiredVerifyHosted;
    let mut refs: Vec<&str> = vec![domain];
    let host_is_name = is_dns_name(host.trim_end_matches('.')) && host.parse::<IpAddr>().is_err();
    if !hosted && host_is_name && !host.eq_ignore_ascii_case(domain) {
        refs.push(host);
    }
    let use_cn = !hosted || sans.is_empty();
    for r in &refs {
        if let Some(s) = sans.iter().find(|s| dns_name_matches(s, r)) {
            return Ok(format!("DNS:{s}"));
        }
        if use_cn {
            if let Some(c) = cns.iter().find(|c| dns_name_matches(c, r)) {
                return Ok(format!("CN={c}"));
            }
        }
    }
    let mut presented: Vec<String> = sans.iter().map(|s| format!("DNS:{s}")).collect();
    if use_cn {
        presented.extend(cns.iter().map(|c| format!("CN={c}")));
    }
    let presented = if presented.is_empty() {
        "none".to_string()
    } else {
        presented.join(", ")
    };
    let note = if hosted && !sans.is_empty() && !cns.is_empty() {
        " (subject CN not used: the certificate has dNSName SANs)"
    } else {
        ""
    };
    Err(format!(
        "certificate name mismatch: presented {presented}{note}, expected {}",
        refs.join(" or ")
    ))
}

/// Accepts any server certificate during the handshake but checks the handshake
/// signatures; the certificate itself is checked afterwards (see the module docs).
#[derive(Debug)]
struct HandshakeOnlyVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for HandshakeOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Must at least be a certificate the signature checks can use.
        ParsedCertificate::try_from(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: &[&str], cn: Option<&str>) -> Vec<u8> {
        let mut p =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(dns_name_matches("*.example.com", "mx.example.com"));
        assert!(dns_name_matches("*.Example.COM.", "MX.example.com"));
        assert!(!dns_name_matches("*.example.com", "example.com"));
        assert!(!dns_name_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_name_matches("*.com", "example.com"));
        assert!(!dns_name_matches("m*.example.com", "mx.example.com"));
        assert!(dns_name_matches("tls.test", "TLS.test."));
        assert!(!dns_name_matches("tls.test", "xtls.test"));
        assert!(!dns_name_matches("", ""));
    }

    #[test]
    fn verify_takes_cn_even_with_sans() {
        let der = cert(&["other.test"], Some("tls.test"));
        let m = OutboundTls::RequiredVerify;
        assert_eq!(
            match_identity(m, &der, "tls.test", "127.0.0.1"),
            Ok("CN=tls.test".into())
        );
        assert_eq!(
            match_identity(m, &der, "x.test", "other.test"),
            Ok("DNS:other.test".into())
        );
        assert_eq!(
            match_identity(OutboundTls::PreferredVerify, &der, "tls.test", "127.0.0.1"),
            Ok("CN=tls.test".into())
        );
    }

    #[test]
    fn hosted_uses_cn_only_without_dns_sans() {
        let h = OutboundTls::RequiredVerifyHosted;
        let with_san = cert(&["other.test"], Some("tls.test"));
        let err = match_identity(h, &with_san, "tls.test", "127.0.0.1").unwrap_err();
        assert_eq!(
            err,
            "certificate name mismatch: presented DNS:other.test (subject CN not used: \
             the certificate has dNSName SANs), expected tls.test"
        );
        let cn_only = cert(&[], Some("tls.test"));
        assert_eq!(
            match_identity(h, &cn_only, "tls.test", "127.0.0.1"),
            Ok("CN=tls.test".into())
        );
        let wild = cert(&["*.tls.test"], None);
        assert_eq!(
            match_identity(h, &wild, "mx.tls.test", "127.0.0.1"),
            Ok("DNS:*.tls.test".into())
        );
        // The route host is not a reference identity for the hosted mode.
        let host_only = cert(&["mx.internal.test"], None);
        assert!(match_identity(h, &host_only, "tls.test", "mx.internal.test").is_err());
        assert_eq!(
            match_identity(
                OutboundTls::RequiredVerify,
                &host_only,
                "tls.test",
                "mx.internal.test"
            ),
            Ok("DNS:mx.internal.test".into())
        );
    }

    #[test]
    fn sni_prefers_host_then_domain() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            server_name_for("mx.example.com", "example.com", ip),
            ServerName::try_from("mx.example.com").unwrap()
        );
        assert_eq!(
            server_name_for("127.0.0.1", "tls.test", ip),
            ServerName::try_from("tls.test").unwrap()
        );
        assert_eq!(
            server_name_for("127.0.0.1", "[127.0.0.1]", ip),
            ServerName::IpAddress(ip.into())
        );
    }

    #[test]
    fn context_builds_and_loads_bundles() {
        let ctx = OutboundTlsContext::new(None).unwrap();
        assert!(!ctx.roots(None).unwrap().is_empty());
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("empty.pem");
        std::fs::write(&bad, "").unwrap();
        assert!(matches!(
            ctx.roots(Some(&bad)),
            Err(OutboundTlsError::NoRoots { .. })
        ));
        let missing = dir.path().join("missing.pem");
        assert!(ctx.roots(Some(&missing)).is_err());
    }
}
