//! Test certificates made with rcgen (a CA, leaves it signs, self-signed ones), a rustls
//! server configuration presenting one, and a `DeliveryLog` that collects events.

use std::path::Path;
use std::sync::{Arc, Mutex};

use mxgate::mail_log::Event;
use mxgate::relay::client::DeliveryLog;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

/// Test certificates.
pub struct TestPki {
    ca: CertifiedIssuer<'static, KeyPair>,
    pub ca_pem: String,
}

/// A server certificate chain and its key.
pub struct ServerCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

fn leaf_params(sans: &[&str], cn: Option<&str>) -> CertificateParams {
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    if let Some(cn) = cn {
        p.distinguished_name.push(DnType::CommonName, cn);
    }
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p
}

impl TestPki {
    pub fn new() -> TestPki {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, "mxgate test CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        let ca_pem = ca.pem();
        TestPki { ca, ca_pem }
    }

    /// A leaf signed by the test CA.
    pub fn leaf(&self, sans: &[&str], cn: Option<&str>) -> ServerCert {
        let key = KeyPair::generate().unwrap();
        let cert = leaf_params(sans, cn).signed_by(&key, &self.ca).unwrap();
        ServerCert {
            chain: vec![cert.der().clone(), self.ca.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }

    /// Writes the CA certificate as a PEM bundle.
    pub fn write_ca(&self, path: &Path) {
        std::fs::write(path, &self.ca_pem).unwrap();
    }
}

/// A self-signed certificate.
pub fn self_signed(sans: &[&str], cn: Option<&str>) -> ServerCert {
    let key = KeyPair::generate().unwrap();
    let cert = leaf_params(sans, cn).self_signed(&key).unwrap();
    ServerCert {
        chain: vec![cert.der().clone()],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    }
}

/// A rustls server configuration presenting `cert`.
pub fn server_config(cert: ServerCert) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert.chain, cert.key)
        .unwrap();
    Arc::new(cfg)
}

/// Collects delivery events.
#[derive(Default)]
pub struct Collect(pub Mutex<Vec<Event>>);

impl DeliveryLog for Collect {
    fn log(&self, e: Event) {
        self.0.lock().unwrap().push(e);
    }
}

impl Collect {
    pub fn texts(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().map(Event::text).collect()
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}
