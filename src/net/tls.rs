//! Inbound TLS: rustls server configuration, certificate loading and the demo certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

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
        message: e.to_string(),
    })
}

/// Writes a self-signed demo certificate for `hostname` unless one exists; returns (cert, key, created).
pub fn ensure_demo_certificate(
    certs_dir: &Path,
    hostname: &str,
) -> Result<(PathBuf, PathBuf, bool), TlsError> {
    let cert_path = certs_dir.join("demo.crt");
    let key_path = certs_dir.join("demo.key");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path, false));
    }
    std::fs::create_dir_all(certs_dir)
        .map_err(|e| TlsError::Generate(format!("{}: {e}", certs_dir.display())))?;
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()]).map_err(gen)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, hostname);
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
    let write = |p: &Path, data: String| {
        std::fs::write(p, data).map_err(|e| TlsError::Generate(format!("{}: {e}", p.display())))
    };
    write_private(&key_path, signing_key.serialize_pem().as_bytes())
        .map_err(|e| TlsError::Generate(format!("{}: {e}", key_path.display())))?;
    write(&cert_path, cert.pem())?;
    Ok((cert_path, key_path, true))
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

/// A server config: TLS 1.2 and 1.3 only; rustls offers only forward-secret (ECDHE) suites.
pub fn server_config(store: Arc<CertStore>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12]);
    // Version list is static and supported by the provider: this cannot fail.
    let builder = match builder {
        Ok(b) => b,
        Err(e) => unreachable!("static TLS versions rejected: {e}"),
    };
    let mut cfg = builder.with_no_client_auth().with_cert_resolver(store);
    cfg.ignore_client_order = true;
    Arc::new(cfg)
}

/// `TLSv1.3` / `TLSv1.2` as the mail log writes them.
pub fn protocol_name(v: Option<rustls::ProtocolVersion>) -> String {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
        Some(other) => format!("{other:?}"),
        None => "unknown".into(),
    }
}

/// Cipher suite name as rustls names it (`TLS13_AES_256_GCM_SHA384`).
pub fn cipher_name(s: Option<rustls::SupportedCipherSuite>) -> String {
    match s {
        Some(s) => format!("{:?}", s.suite()),
        None => "unknown".into(),
    }
}
