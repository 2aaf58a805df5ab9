//! `install`: pair a CA-signed certificate with the key made by `csr`, and write `NAME.crt`.
//!
//! The checks are those ESA's certificate troubleshooting notes are about: the certificate
//! must carry the key's public key, nothing may be expired, the chain goes leaf→root
//! without duplicated intermediates, and a missing intermediate is called out.

use std::path::Path;

use super::cert::{read_certs, Cert, Key};
use super::chain::assemble;
use super::usage::{coverage_lines, usage, ConfigView};
use super::{describe_days_left, fmt_time, now, refuse, write_files, CertsDir, NewFile, Result};

/// What an install or import produced: a summary for stdout, warnings for stderr.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Summary lines.
    pub summary: String,
    /// `warning: ...` / `note: ...` lines.
    pub warnings: Vec<String>,
}

/// Where the key comes from.
pub(crate) enum KeySource<'a> {
    /// The key already in `certs_dir/NAME.key` (made by `csr`).
    Existing,
    /// A key to write as `NAME.key` (from `--key` or a PKCS#12 file).
    New(&'a Key, &'a str),
}

/// `mxgate certs install NAME --cert FILE [--chain FILE]... [--key FILE]`.
pub(crate) fn install(
    dir: &CertsDir,
    name: &str,
    cert: &Path,
    chains: &[std::path::PathBuf],
    key_file: Option<&Path>,
    force: bool,
    view: &ConfigView,
) -> Result<Outcome> {
    super::check_name(name)?;
    let given_key = match key_file {
        Some(p) => Some(Key::read(p)?),
        None => None,
    };
    let leaf_candidates = read_certs(cert)?;
    let mut rest = Vec::new();
    for c in chains {
        rest.extend(read_certs(c)?);
    }
    let label = key_file
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let source = match &given_key {
        Some(k) => KeySource::New(k, &label),
        None => KeySource::Existing,
    };
    place(dir, name, source, leaf_candidates, rest, force, view)
}

/// Pairs `key` with the matching certificate among `leaf_candidates`, builds the chain
/// from the rest, checks it, and writes `NAME.crt` (and `NAME.key` for a new key).
pub(crate) fn place(
    dir: &CertsDir,
    name: &str,
    key: KeySource<'_>,
    leaf_candidates: Vec<Cert>,
    rest: Vec<Cert>,
    force: bool,
    view: &ConfigView,
) -> Result<Outcome> {
    let (crt_path, key_path) = (dir.crt(name), dir.key(name));
    if !force && crt_path.exists() {
        return refuse(format!(
            "{} already exists: use --force to replace it",
            crt_path.display()
        ));
    }
    let existing;
    let (key, key_label, write_key) = match key {
        KeySource::Existing => {
            if !key_path.exists() {
                return refuse(format!(
                    "no private key {}: create the key and request with `mxgate certs csr {name}`, \
                     give --key FILE, or use import-p12",
                    key_path.display()
                ));
            }
            existing = Key::read(&key_path)?;
            (&existing, key_path.display().to_string(), false)
        }
        KeySource::New(k, label) => {
            // The same key may already be in place (renewal): then leave the file alone.
            let same =
                key_path.exists() && Key::read(&key_path).is_ok_and(|old| old.spki == k.spki);
            if !same && !force && key_path.exists() {
                return refuse(format!(
                    "{} already exists and holds another key: use --force to replace it",
                    key_path.display()
                ));
            }
            (k, label.to_string(), !same)
        }
    };
    let Some(leaf_at) = leaf_candidates.iter().position(|c| key.matches(c)) else {
        let c = &leaf_candidates[0];
        return refuse(format!(
            "certificate {} ({}) does not match the private key {} ({}): it was issued for \
             another key or CSR",
            c.short(),
            c.key_type,
            key_label,
            key.key_type
        ));
    };
    let mut others = leaf_candidates;
    let leaf = others.remove(leaf_at);
    others.extend(rest);
    let t = now();
    let a = assemble(leaf, others, t).with_ca_roots(&view.ca_roots());
    for (i, c) in a.chain.iter().enumerate() {
        if c.not_after < t {
            let what = if i == 0 {
                "certificate"
            } else {
                "chain certificate"
            };
            return refuse(format!(
                "{what} {} expired on {}: {}",
                c.subject,
                fmt_time(c.not_after),
                if i == 0 {
                    "get it renewed by the CA (mxgate certs csr NAME --reuse-key makes a new request)"
                } else {
                    "get the current intermediate from the CA"
                }
            ));
        }
    }
    let mut warnings = a.messages(true);
    let leaf = &a.chain[0];
    if leaf.not_before > t {
        warnings.push(format!(
            "warning: the certificate is not valid before {}",
            fmt_time(leaf.not_before)
        ));
    }
    if leaf.is_ca {
        warnings.push("warning: the certificate is a CA certificate (basicConstraints CA:TRUE), not a server certificate".into());
    }
    if let Some(w) = &view.warning {
        warnings.push(w.clone());
    }
    if let Some(cfg) = &view.cfg {
        let u = usage(cfg, &dir.dir, Some(name), &crt_path);
        for (ok, line) in coverage_lines(leaf, &u) {
            if !ok {
                warnings.push(format!("warning: {line}"));
            }
        }
        if u.is_empty() {
            warnings.push(format!(
                "note: nothing uses {name} yet: set `certificate: {name}` in a listener file \
                 (inbound TLS) or `client_certificate: {name}` in policies/destinations.yaml (delivery)"
            ));
        }
    }
    dir.ensure()?;
    let pem: String = a.chain.iter().map(Cert::pem).collect();
    let mut files = Vec::new();
    if write_key {
        files.push(NewFile::private(key_path.clone(), key.pem()));
    }
    files.push(NewFile::public(crt_path.clone(), pem));
    write_files(&files, force)?;
    let mut s = format!(
        "installed {} ({} certificate{}, leaf→root)\n",
        crt_path.display(),
        a.chain.len(),
        if a.chain.len() == 1 { "" } else { "s" }
    );
    for (i, c) in a.chain.iter().enumerate() {
        s.push_str(&format!(
            "  {}. {}  issuer {}  expires {} ({})\n",
            i + 1,
            c.subject,
            c.issuer,
            fmt_time(c.not_after),
            describe_days_left(c.not_after, t)
        ));
    }
    s.push_str(&format!(
        "  key   {} ({}){}\n  names {}\n  TLSA  3 1 1 {}\n",
        key_path.display(),
        key.key_type,
        if write_key {
            ", mode 0600"
        } else {
            ", matches"
        },
        leaf.names(),
        leaf.tlsa()
    ));
    Ok(Outcome {
        summary: s,
        warnings,
    })
}
