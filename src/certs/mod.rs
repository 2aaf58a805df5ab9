//! Certificate management (docs/certificates.md; ESA's `certconfig`): `mxgate certs ...`.
//!
//! Everything works on the certificates directory (`certs_dir`): a certificate named `NAME`
//! is `NAME.crt` (PEM chain, leaf first) with `NAME.key` (PEM private key, mode 0600); a
//! pending request is `NAME.csr`.
//!
//! - `create`: new self-signed certificates and key + CSR for a CA (rcgen).
//! - `install`: pairs a CA-signed certificate with its key, orders the chain, refuses
//!   mismatched keys and expired certificates.
//! - `pkcs12`: PKCS#12 import/export (p12-keystore, pure Rust, OpenSSL-compatible).
//! - `inspect`: `list` and `inspect`, with the DANE TLSA record and host-name coverage.
//! - [`cli`]: the clap commands.
//!
//! Every refusal is a [`CertError`] holding a one-line reason; no file is ever replaced
//! without `--force`, and files are written to a temporary name and then linked or renamed
//! into place so a reader (the live reloader) never sees half a file.

pub(crate) mod cert;
pub(crate) mod chain;
pub mod cli;
pub(crate) mod create;
pub(crate) mod inspect;
pub(crate) mod install;
pub(crate) mod pkcs12;
pub(crate) mod usage;

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A refusal: one line saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError(pub String);

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, whatever the cause carried.
        let one_line: Vec<&str> = self.0.lines().map(str::trim).collect();
        f.write_str(&one_line.join("; "))
    }
}

impl std::error::Error for CertError {}

/// Result of certificate operations.
pub type Result<T> = std::result::Result<T, CertError>;

/// Builds a [`CertError`].
pub fn refuse<T>(msg: impl Into<String>) -> Result<T> {
    Err(CertError(msg.into()))
}

/// Checks a certificate name: letters, digits, `-`, `_`, `.`, not starting with `.`
/// (the rule the configuration applies to `client_certificate`).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        refuse(format!(
            "{name:?} is not a certificate name: use letters, digits, '-', '_' and '.' (not first)"
        ))
    }
}

/// The certificates directory and the files of a name in it.
#[derive(Debug, Clone)]
pub struct CertsDir {
    /// The directory.
    pub dir: PathBuf,
}

impl CertsDir {
    /// `dir/NAME.crt`.
    pub fn crt(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.crt"))
    }
    /// `dir/NAME.key`.
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }
    /// `dir/NAME.csr`.
    pub fn csr(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.csr"))
    }
    /// Creates the directory if needed.
    pub(crate) fn ensure(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .or_else(|e| refuse(format!("cannot create {}: {e}", self.dir.display())))
    }
}

/// Current time, seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `2026-05-01 12:00:00 UTC`.
pub fn fmt_time(ts: i64) -> String {
    match chrono::DateTime::from_timestamp(ts, 0) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => format!("@{ts}"),
    }
}

/// Whole days from `now` to `until` (negative once past), rounded down.
pub fn days_left(until: i64, now: i64) -> i64 {
    (until - now).div_euclid(86_400)
}

/// `N days left`, `expires today`, or `EXPIRED N days ago`.
pub fn describe_days_left(until: i64, now: i64) -> String {
    if until < now {
        let ago = (now - until).div_euclid(86_400);
        format!("EXPIRED {ago} days ago")
    } else {
        format!("{} days left", days_left(until, now))
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// The DANE `3 1 1` association data: SHA-256 of the SubjectPublicKeyInfo, hex.
pub fn tlsa_311(spki_der: &[u8]) -> String {
    hex(&sha256(spki_der))
}

/// PEM-encodes `der` under `label` (64-column base64, RFC 7468).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A file to write.
#[derive(Debug)]
pub struct NewFile {
    /// Destination.
    pub path: PathBuf,
    /// Contents.
    pub data: Vec<u8>,
    /// Private key material: created 0600 (never chmod-ed afterwards).
    pub private: bool,
}

impl NewFile {
    /// A public file (mode 0644 before umask).
    pub fn public(path: PathBuf, data: impl Into<Vec<u8>>) -> Self {
        NewFile {
            path,
            data: data.into(),
            private: false,
        }
    }
    /// A private file (mode 0600).
    pub fn private(path: PathBuf, data: impl Into<Vec<u8>>) -> Self {
        NewFile {
            path,
            data: data.into(),
            private: true,
        }
    }
}

/// Refuses when any of `files` exists (unless `force`), then writes them all.
///
/// Each file is written under a temporary name in the same directory, synced, and then
/// hard-linked into place (fails if the name was taken meanwhile) or, with `force`,
/// renamed over the old file; readers see the old or the new file, never a partial one.
pub fn write_files(files: &[NewFile], force: bool) -> Result<()> {
    if !force {
        for f in files {
            if f.path.symlink_metadata().is_ok() {
                return refuse(format!(
                    "{} already exists: use --force to replace it",
                    f.path.display()
                ));
            }
        }
    }
    for f in files {
        write_one(f, force)?;
    }
    Ok(())
}

fn write_one(f: &NewFile, force: bool) -> Result<()> {
    let dir = match f.path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = f
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let fail = |what: &str, p: &Path, e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        CertError(format!("cannot {what} {}: {e}", p.display()))
    };
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if f.private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(|e| fail("create", &tmp, e))?;
    out.write_all(&f.data)
        .and_then(|_| out.sync_all())
        .map_err(|e| fail("write", &tmp, e))?;
    drop(out);
    if force {
        std::fs::rename(&tmp, &f.path).map_err(|e| fail("write", &f.path, e))?;
    } else {
        let linked = std::fs::hard_link(&tmp, &f.path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return refuse(format!(
                    "{} already exists: use --force to replace it",
                    f.path.display()
                ))
            }
            Err(e) => return refuse(format!("cannot write {}: {e}", f.path.display())),
        }
    }
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a file, with a one-line reason on failure.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).or_else(|e| refuse(format!("cannot read {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_through_rustls() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        for len in 0..70 {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let pem = pem_encode("CERTIFICATE", &der);
            let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            assert_eq!(back.as_ref(), &der[..], "length {len}");
        }
    }

    #[test]
    fn names() {
        assert!(check_name("mx.example.com").is_ok());
        assert!(check_name("mx_2026-01").is_ok());
        for bad in ["", ".hidden", "a/b", "../x", "sp ace"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn days() {
        assert_eq!(days_left(86_400 * 3 + 5, 0), 3);
        assert_eq!(describe_days_left(0, 86_400 * 2), "EXPIRED 2 days ago");
        assert_eq!(describe_days_left(86_400 * 2, 0), "2 days left");
    }

    #[test]
    fn writes_refuse_existing_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.key");
        write_files(&[NewFile::private(p.clone(), "one")], false).unwrap();
        let e = write_files(&[NewFile::private(p.clone(), "two")], false).unwrap_err();
        assert!(e.0.contains("--force"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "one");
        write_files(&[NewFile::private(p.clone(), "two")], true).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
