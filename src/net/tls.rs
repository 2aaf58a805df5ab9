//! Inbound TLS: rustls server configuration, certificate loading and the demo certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

use crate::policy::flow::ClientCert;

/// Certificate problems.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {message}")]
    Pem {
        /// File.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The key does not fit the certificate, or rustls refused them.
    #[error("certificate {path}: {message}")]
    Key {
        /// Certificate file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Generating the demo certificate failed.
    #[error("generating demo certificate: {0}")]
    Generate(String),
    /// The trust anchors for client certificates (`client_ca_file`) are unusable.
    #[error("client CA bundle {path}: {message}")]
    ClientCa {
        /// CA bundle file (`webpki-roots` for the built-in roots).
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Serves the current certificate; swapped atomically on reload so new handshakes use the new one.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    /// A store holding `key`.
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(CertStore {
            current: ArcSwap::from_pointee(key),
        })
    }

    /// Replaces the certificate for future handshakes.
    pub fn replace(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Loads a PEM chain and key, checking that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let pem_err = |path: &Path, e: &dyn std::fmt::Display| TlsError::Pem {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(cert, &e))?;
    if chain.is_empty() {
        return Err(pem_err(cert, &"no certificate in file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, &e))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| TlsError::Key {
        path: cert.to_path_buf(),
        message: match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "the key {} is not this certificate's key: install the key the certificate was issued for",
                key.display()
            ),
            e => e.to_string(),
        },
    })
}

/// Writes a self-signed demo certificate for `hostname` unless one exists; returns (cert, key, created).
pub(crate) fn ensure_demo_certificate(
    certs_dir: &Path,
    hostname: &str,
) -> Result<(PathBuf, PathBuf, bool), TlsError> {
    let cert_path = certs_dir.join("demo.crt");
    let key_path = certs_dir.join("demo.key");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path, false));
    }
    write_demo_certificate(certs_dir, &[hostname.to_string()], &cert_path, &key_path)?;
    Ok((cert_path, key_path, true))
}

/// Writes a self-signed demo certificate for `hosts` (the first is the CN) to `cert_path`
/// and its key to `key_path` (0600), creating `certs_dir`.
pub(crate) fn write_demo_certificate(
    certs_dir: &Path,
    hosts: &[String],
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), TlsError> {
    std::fs::create_dir_all(certs_dir)
        .map_err(|e| TlsError::Generate(format!("{}: {e}", certs_dir.display())))?;
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut params = rcgen::CertificateParams::new(hosts.to_vec()).map_err(gen)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        hosts.first().cloned().unwrap_or_default(),
    );
    // Says what it is to anyone who inspects it with openssl.
    dn.push(
        rcgen::DnType::OrganizationName,
        "mxgate demo certificate (not verifiable)",
    );
    params.distinguished_name = dn;
    // Ten years, not rcgen's default of year 4096: the expiry gauge and `certs list` stay meaningful.
    let year = chrono::Datelike::year(&chrono::Utc::now());
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    let signing_key = rcgen::KeyPair::generate().map_err(gen)?;
    let cert = params.self_signed(&signing_key).map_err(gen)?;
    write_private(key_path, signing_key.serialize_pem().as_bytes())
        .map_err(|e| TlsError::Generate(format!("{}: {e}", key_path.display())))?;
    std::fs::write(cert_path, cert.pem())
        .map_err(|e| TlsError::Generate(format!("{}: {e}", cert_path.display())))
}

/// Creates a file readable by its owner only (private keys), never briefly world-readable.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// TLS 1.2 sessions kept for clients that resume by session id (those without tickets), per
/// listener. An entry is about 300 bytes (no client certificate is asked for), so a full cache
/// costs about 10 MB: room for a day of distinct sending MTAs at a busy MX.
pub const SESSION_CACHE_ENTRIES: usize = 32 * 1024;

/// The same for the config that asks for client certificates: its entries carry the client's
/// chain (kilobytes, up to rustls's 64 KiB handshake limit), so they stay few; such clients
/// resume with tickets, which cost the server no memory.
pub const VERIFYING_SESSION_CACHE_ENTRIES: usize = 256;

/// A server config: TLS 1.2 and 1.3 only; rustls offers only forward-secret (ECDHE) suites.
/// Returning clients resume (see `resumption`).
pub fn server_config(store: Arc<CertStore>) -> Arc<ServerConfig> {
    build_server_config(
        store,
        WebPkiClientVerifier::no_client_auth(),
        SESSION_CACHE_ENTRIES,
    )
}

/// The same server config, but asking for a client certificate that `check` judges after the
/// handshake. Shares `store`, so a reloaded certificate is served by both configs.
pub(crate) fn server_config_verifying(
    store: Arc<CertStore>,
    check: &ClientCertCheck,
) -> Arc<ServerConfig> {
    build_server_config(
        store,
        Arc::new(AskingVerifier {
            inner: check.inner.clone(),
        }),
        VERIFYING_SESSION_CACHE_ENTRIES,
    )
}

fn build_server_config(
    store: Arc<CertStore>,
    verifier: Arc<dyn ClientCertVerifier>,
    cache_entries: usize,
) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12]);
    // Version list is static and supported by the provider: this cannot fail.
    let builder = match builder {
        Ok(b) => b,
        Err(e) => unreachable!("static TLS versions rejected: {e}"),
    };
    let mut cfg = builder
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(store);
    cfg.ignore_client_order = true;
    resumption(&mut cfg, cache_entries);
    Arc::new(cfg)
}

/// Session resumption for returning senders, so they skip the certificate signature and key
/// exchange: TLS 1.3 tickets and TLS 1.2 tickets (RFC 5077) from a ticketer whose key rotates
/// every 6 hours (tickets live 12 hours), which costs the server no memory per session; TLS 1.2
/// session ids in a cache of `cache_entries`. Each config gets its own ticket key and cache, so
/// a session from the config that asks for client certificates never resumes in the other one,
/// nor the other way round (rustls leaves that to us). A reload builds new configs: returning
/// senders then make one full handshake.
fn resumption(cfg: &mut ServerConfig, cache_entries: usize) {
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(cache_entries);
    match rustls::crypto::aws_lc_rs::Ticketer::new() {
        Ok(t) => cfg.ticketer = t,
        // Only the system's random source can fail here; TLS 1.3 tickets then come from the
        // session cache (rustls's stateful tickets), TLS 1.2 resumes by session id.
        Err(e) => tracing::warn!("no TLS ticket key ({e}): resumption uses the session cache only"),
    }
}

/// What a listener needs for policies with `tls_verify_client`: a config that asks for a
/// client certificate, and the check that judges it.
#[derive(Clone)]
pub struct ClientVerifyTls {
    /// Acceptor whose handshake asks for a client certificate.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Judges the certificate after the handshake.
    pub check: ClientCertCheck,
}

impl ClientVerifyTls {
    /// Builds both around the listener's certificate store.
    pub fn new(store: Arc<CertStore>, ca_file: Option<&Path>) -> Result<Self, TlsError> {
        let check = ClientCertCheck::new(ca_file)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config_verifying(store, &check));
        Ok(ClientVerifyTls { acceptor, check })
    }
}

/// Longest subject kept for the log: the text comes from the client.
const MAX_SUBJECT: usize = 256;

/// Judges client certificates against the trust anchors of a listener: the PEM bundle
/// `client_ca_file`, or the webpki roots.
#[derive(Debug, Clone)]
pub struct ClientCertCheck {
    /// rustls's WebPKI verifier: chain to a trust anchor, validity, `clientAuth` usage.
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertCheck {
    /// Loads the trust anchors: `ca_file` (PEM), or the webpki roots when `None`.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, TlsError> {
        let err = |message: String| TlsError::ClientCa {
            path: ca_file.map_or_else(|| PathBuf::from("webpki-roots"), Path::to_path_buf),
            message,
        };
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| err(e.to_string()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| err(e.to_string()))?;
                let (added, _ignored) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(err("no usable CA certificate in file".into()));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        if ca_file.is_none() {
            // Naming ~150 public roots in every CertificateRequest costs kilobytes and helps
            // no client choose; a private CA's name does.
            builder = builder.clear_root_hint_subjects();
        }
        let inner = builder.build().map_err(|e| err(e.to_string()))?;
        Ok(ClientCertCheck { inner })
    }

    /// Judges the chain the client presented (leaf first; `None` or empty when it sent none).
    pub fn check(&self, chain: Option<&[CertificateDer<'_>]>, now: UnixTime) -> ClientCert {
        let Some((leaf, intermediates)) = chain.and_then(|c| c.split_first()) else {
            return ClientCert::Missing;
        };
        match self.inner.verify_client_cert(leaf, intermediates, now) {
            Ok(_) => ClientCert::Verified(subject_for_log(leaf)),
            Err(e) => {
                let why = e.to_string();
                let why = why
                    .strip_prefix("invalid peer certificate: ")
                    .unwrap_or(&why)
                    .to_string();
                ClientCert::Failed(why)
            }
        }
    }
}

/// `CN=<common name>` of a certificate, or its whole subject when it has no CN.
fn subject_for_log(cert: &CertificateDer<'_>) -> String {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return "unknown subject".into();
    };
    let subject = parsed.subject();
    let text = match subject.iter_common_name().next().map(|cn| cn.as_str()) {
        Some(Ok(cn)) => format!("CN={cn}"),
        _ => subject.to_string(),
    };
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_SUBJECT)
        .collect();
    if text.is_empty() {
        "empty subject".into()
    } else {
        text
    }
}

/// The handshake-time verifier: asks for a certificate but never fails the handshake over the
/// chain, so the session can answer in SMTP (a 530, or a log line) instead of a TLS alert.
/// The chain is judged after the handshake by [`ClientCertCheck::check`]: rustls gives a
/// verifier no way to tell which connection it serves. The proof of key possession is still
/// checked here, so a client replaying someone else's certificate fails the handshake.
#[derive(Debug)]
struct AskingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for AskingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `TLSv1.3` / `TLSv1.2` as the mail log writes them.
pub(crate) fn protocol_name(v: Option<rustls::ProtocolVersion>) -> String {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
        Some(other) => format!("{other:?}"),
        None => "unknown".into(),
    }
}

/// Cipher suite name as rustls names it (`TLS13_AES_256_GCM_SHA384`).
pub(crate) fn cipher_name(s: Option<rustls::SupportedCipherSuite>) -> String {
    match s {
        Some(s) => format!("{:?}", s.suite()),
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    }

    fn leaf(
        ca: &CertifiedIssuer<'static, KeyPair>,
        cn: Option<&str>,
        eku: ExtendedKeyUsagePurpose,
    ) -> CertificateDer<'static> {
        let mut p = CertificateParams::new(vec!["mx.partner.example".to_string()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.distinguished_name
            .push(DnType::OrganizationName, "Partner Inc");
        p.extended_key_usages = vec![eku];
        let key = KeyPair::generate().unwrap();
        p.signed_by(&key, ca).unwrap().der().clone()
    }

    fn check_with(ca_pem: &str) -> ClientCertCheck {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca_pem).unwrap();
        ClientCertCheck::new(Some(&path)).unwrap()
    }

    #[test]
    fn client_certificates_are_judged_against_the_ca_bundle() {
        let partner = ca("Partner CA");
        let other = ca("Other CA");
        let check = check_with(&partner.pem());
        let now = UnixTime::now();
        let good = leaf(
            &partner,
            Some("mx.partner.example"),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        assert_eq!(
            check.check(Some(&[good]), now),
            ClientCert::Verified("CN=mx.partner.example".into())
        );
        // Without a CN the whole subject is shown.
        let no_cn = leaf(&partner, None, ExtendedKeyUsagePurpose::ClientAuth);
        assert_eq!(
            check.check(Some(&[no_cn]), now),
            ClientCert::Verified("O=Partner Inc".into())
        );
        assert_eq!(check.check(None, now), ClientCert::Missing);
        assert_eq!(check.check(Some(&[]), now), ClientCert::Missing);
        let foreign = leaf(
            &other,
            Some("mx.partner.example"),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        assert_eq!(
            check.check(Some(&[foreign]), now),
            ClientCert::Failed("UnknownIssuer".into())
        );
        // A server-only certificate may not authenticate a client.
        let server_only = leaf(
            &partner,
            Some("mx.partner.example"),
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        match check.check(Some(&[server_only]), now) {
            ClientCert::Failed(why) => assert!(why.contains("client authentication"), "{why}"),
            other => panic!("{other:?}"),
        }
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(matches!(
            check.check(Some(&[garbage]), now),
            ClientCert::Failed(_)
        ));
    }

    #[test]
    fn webpki_roots_by_default_and_unusable_bundles_refused() {
        let check = ClientCertCheck::new(None).unwrap();
        // The webpki roots are not named in the CertificateRequest; a private CA is.
        assert!(check.inner.root_hint_subjects().is_empty());
        let partner = ca("Partner CA");
        assert_eq!(
            check_with(&partner.pem()).inner.root_hint_subjects().len(),
            1
        );
        let self_made = leaf(
            &partner,
            Some("mx.partner.example"),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        assert_eq!(
            check.check(Some(&[self_made]), UnixTime::now()),
            ClientCert::Failed("UnknownIssuer".into())
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "").unwrap();
        let e = ClientCertCheck::new(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("no usable CA certificate"), "{e}");
    }

    #[test]
    fn the_handshake_verifier_asks_but_never_insists() {
        let check = ClientCertCheck::new(None).unwrap();
        let v = AskingVerifier {
            inner: check.inner.clone(),
        };
        assert!(v.offer_client_auth());
        assert!(!v.client_auth_mandatory());
        let junk = CertificateDer::from(vec![1, 2, 3]);
        assert!(v.verify_client_cert(&junk, &[], UnixTime::now()).is_ok());
        assert!(!v.supported_verify_schemes().is_empty());
    }
}
