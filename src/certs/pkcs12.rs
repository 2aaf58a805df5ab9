//! PKCS#12 import and export (backups, and importing a certificate with its key: docs/certificates.md).
//!
//! p12-keystore (pure Rust) reads and writes the files. Export defaults to what OpenSSL 3
//! writes (PBES2: PBKDF2-HMAC-SHA256 + AES-256-CBC, MAC HMAC-SHA256); `--legacy` writes
//! pbeWithSHA1And3-KeyTripleDES-CBC with an HMAC-SHA1 MAC for old Windows/Java/appliances.
//! Import reads both, and OpenSSL's `-legacy` RC2-40 certificate bags too.

use std::path::Path;

use p12_keystore::{
    Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, Pkcs12Archive,
    PrivateKey, PrivateKeyChain,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::cert::{Cert, Key};
use super::install::{place, KeySource, Outcome};
use super::usage::ConfigView;
use super::{read_file, refuse, write_files, CertsDir, NewFile, Result};

/// `mxgate certs export-p12 NAME FILE`: `NAME.crt` chain and `NAME.key` into one
/// password-protected file (mode 0600: it holds the private key).
pub(crate) fn export(
    dir: &CertsDir,
    name: &str,
    out: &Path,
    password: &str,
    legacy: bool,
    force: bool,
) -> Result<String> {
    super::check_name(name)?;
    let crt = dir.crt(name);
    if !crt.exists() {
        return refuse(format!("no certificate {}", crt.display()));
    }
    let certs = super::cert::read_certs(&crt)?;
    let key = Key::read(&dir.key(name))?;
    if !key.matches(&certs[0]) {
        return refuse(format!(
            "{} does not match {}: fix the pair before exporting it",
            crt.display(),
            dir.key(name).display()
        ));
    }
    if password.is_empty() {
        return refuse("empty password: the file holds the private key, give a password");
    }
    let pkcs8 = key.pkcs8()?;
    let private = PrivateKey::from_der(&pkcs8).or_else(|e| refuse(format!("key: {e}")))?;
    let p12_certs = certs
        .iter()
        .map(|c| Certificate::from_der(c.der.as_ref()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .or_else(|e| refuse(format!("certificate: {e}")))?;
    // OpenSSL uses the SHA-1 of the certificate as localKeyId; so do we.
    let local_key_id = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        certs[0].der.as_ref(),
    )
    .as_ref()
    .to_vec();
    let mut ks = KeyStore::new();
    ks.add_entry(
        name,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, private, p12_certs)),
    );
    let mut w = ks.writer(password);
    if legacy {
        w = w
            .encryption_algorithm(EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)
            .mac_algorithm(MacAlgorithm::HmacSha1);
    }
    let data = w
        .write()
        .or_else(|e| refuse(format!("cannot build PKCS#12: {e}")))?;
    write_files(&[NewFile::private(out.to_path_buf(), data)], force)?;
    Ok(format!(
        "exported {name} ({} certificate{} and the {} key) to {} (mode 0600, {})\n",
        certs.len(),
        if certs.len() == 1 { "" } else { "s" },
        key.key_type,
        out.display(),
        if legacy {
            "legacy 3DES encryption with SHA-1 MAC"
        } else {
            "AES-256-CBC with PBKDF2-SHA256, SHA-256 MAC"
        }
    ))
}

/// `mxgate certs import-p12 NAME FILE`: writes `NAME.key` (0600) and `NAME.crt`, with the
/// same checks as `install` (key match, expiry, chain order, duplicates).
pub(crate) fn import(
    dir: &CertsDir,
    name: &str,
    file: &Path,
    password: &str,
    force: bool,
    view: &ConfigView,
) -> Result<Outcome> {
    super::check_name(name)?;
    let what = file.display().to_string();
    let data = read_file(file)?;
    let archive = Pkcs12Archive::from_pkcs12(&data, password).or_else(|e| {
        refuse(match e {
            p12_keystore::error::Error::MacError(_) => {
                format!("{what}: wrong password (MAC check failed)")
            }
            other => format!("{what}: not a readable PKCS#12 file: {other}"),
        })
    })?;
    if archive.keys.is_empty() {
        return refuse(format!(
            "{what}: no private key inside (a certificate alone goes in with `install`)"
        ));
    }
    let mut certs = Vec::new();
    for (i, bag) in archive.certs.iter().enumerate() {
        let der = rustls::pki_types::CertificateDer::from(bag.cert.as_der().to_vec());
        certs.push(Cert::parse(der).or_else(|e| {
            refuse(format!(
                "{what}: certificate {}: not valid X.509: {e}",
                i + 1
            ))
        })?);
    }
    if certs.is_empty() {
        return refuse(format!("{what}: no certificate inside"));
    }
    let mut keys = Vec::new();
    for bag in &archive.keys {
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(bag.key.as_der().to_vec()));
        keys.push(Key::from_der(der, &what)?);
    }
    let Some(key) = keys.iter().find(|k| certs.iter().any(|c| k.matches(c))) else {
        return refuse(format!(
            "{what}: no certificate inside matches its private key"
        ));
    };
    let (leaves, rest): (Vec<Cert>, Vec<Cert>) = certs.into_iter().partition(|c| key.matches(c));
    let label = format!("{what} (private key)");
    let mut outcome = place(
        dir,
        name,
        KeySource::New(key, &label),
        leaves,
        rest,
        force,
        view,
    )?;
    if keys.len() > 1 {
        outcome.warnings.insert(
            0,
            format!(
                "warning: {what} holds {} private keys: imported the one with a certificate",
                keys.len()
            ),
        );
    }
    outcome.summary = format!("imported {what}\n{}", outcome.summary);
    Ok(outcome)
}
