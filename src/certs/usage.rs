//! Which listeners and deliveries use a certificate (configuration loaded read-only).

use std::path::{Path, PathBuf};

use super::cert::Cert;
use crate::config::model::Config;
use crate::config::{load, Overrides};

/// The configuration, when it loads; otherwise why not.
#[derive(Debug)]
pub(crate) struct ConfigView {
    /// The loaded configuration.
    pub cfg: Option<Config>,
    /// One line for stderr when it did not load.
    pub warning: Option<String>,
}

impl ConfigView {
    /// The self-signed certificates of the CA files the configuration names (listeners'
    /// `client_ca_file`, destinations' `ca_file`), each with its file: roots the operator
    /// supplies. Unreadable files are left out (`mxgate check` reports them).
    pub(crate) fn ca_roots(&self) -> Vec<(Cert, String)> {
        let Some(cfg) = &self.cfg else {
            return Vec::new();
        };
        let d = &cfg.destinations;
        let files = cfg
            .listeners
            .iter()
            .filter_map(|l| l.client_ca_file.clone())
            .chain(
                std::iter::once(&d.default)
                    .chain(&d.entries)
                    .filter_map(|c| c.ca_file.clone()),
            );
        let mut out = Vec::new();
        for f in files {
            let shown = f.strip_prefix(&cfg.dir).unwrap_or(&f).display().to_string();
            for c in super::cert::read_certs(&f).unwrap_or_default() {
                if c.self_signed {
                    out.push((c, shown.clone()));
                }
            }
        }
        out
    }
}

/// Loads the configuration without side effects; failure is a warning, not a refusal.
pub(crate) fn load_config(config_dir: &Path, certs_dir: Option<&Path>) -> ConfigView {
    let overrides = Overrides {
        certs_dir: certs_dir.map(Path::to_path_buf),
        ..Overrides::default()
    };
    match load(config_dir, &overrides) {
        Ok(cfg) => ConfigView {
            cfg: Some(cfg),
            warning: None,
        },
        Err(e) => ConfigView {
            cfg: None,
            warning: Some(format!(
                "warning: configuration in {} not loaded ({} errors; see `mxgate check`): \
                 which listeners use a certificate is unknown",
                config_dir.display(),
                e.0.len()
            )),
        },
    }
}

/// The certificates directory: `--certs-dir`, else the configuration's `certs_dir`
/// (from `mxgate.yaml` alone when the rest does not load), else `<config-dir>/certs`.
pub(crate) fn resolve_certs_dir(
    config_dir: &Path,
    given: Option<&Path>,
    view: &ConfigView,
) -> PathBuf {
    if let Some(d) = given {
        return d.to_path_buf();
    }
    if let Some(cfg) = &view.cfg {
        return cfg.global.certs_dir.clone();
    }
    let from_global = std::fs::read_to_string(config_dir.join("mxgate.yaml"))
        .ok()
        .and_then(|t| serde_saphyr::from_str::<Option<crate::config::defs::GlobalDef>>(&t).ok())
        .flatten()
        .and_then(|g| g.certs_dir)
        .map(|s| s.value.trim().to_string())
        .filter(|s| !s.is_empty());
    config_dir.join(from_global.as_deref().unwrap_or("certs"))
}

/// A listener presenting the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerUse {
    /// Listener name.
    pub name: String,
    /// Its host name (banner, EHLO; should be in the certificate).
    pub hostname: String,
}

/// Who uses a certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Listeners (inbound STARTTLS).
    pub listeners: Vec<ListenerUse>,
    /// The delivery client certificate (`client_certificate` in destinations.yaml).
    pub delivery: bool,
}

impl Usage {
    /// True when nothing uses it.
    pub(crate) fn is_empty(&self) -> bool {
        self.listeners.is_empty() && !self.delivery
    }

    /// `listener inbound, delivery` or `-`.
    pub(crate) fn summary(&self) -> String {
        let mut v: Vec<String> = self
            .listeners
            .iter()
            .map(|l| format!("listener {}", l.name))
            .collect();
        if self.delivery {
            v.push("delivery".to_string());
        }
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Who uses the certificate `cert_path` (named `name` when it lives in `certs_dir`).
pub(crate) fn usage(cfg: &Config, certs_dir: &Path, name: Option<&str>, cert_path: &Path) -> Usage {
    let listeners = cfg
        .listeners
        .iter()
        .filter(|l| match &l.certificate {
            Some(p) => same_file(p, cert_path),
            None => name == Some("demo") && same_file(&certs_dir.join("demo.crt"), cert_path),
        })
        .map(|l| ListenerUse {
            name: l.name.clone(),
            hostname: l.hostname.clone(),
        })
        .collect();
    let delivery = name.is_some() && cfg.destinations.client_certificate.as_deref() == name;
    Usage {
        listeners,
        delivery,
    }
}

/// Certificates the configuration names that are not on disk: (who, path).
pub(crate) fn missing_references(cfg: &Config, certs_dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for l in &cfg.listeners {
        let path = l
            .certificate
            .clone()
            .unwrap_or_else(|| certs_dir.join("demo.crt"));
        if !path.exists() {
            out.push((format!("listener {}", l.name), path));
        }
    }
    if let Some(n) = &cfg.destinations.client_certificate {
        let path = certs_dir.join(format!("{n}.crt"));
        if !path.exists() {
            out.push(("delivery".to_string(), path));
        }
    }
    out
}

/// One line per listener: is its host name in the certificate?
pub(crate) fn coverage_lines(cert: &Cert, usage: &Usage) -> Vec<(bool, String)> {
    usage
        .listeners
        .iter()
        .map(|l| match cert.covering_name(&l.hostname) {
            Some(n) => (
                true,
                format!(
                    "listener {} host name {} is covered by {n}",
                    l.name, l.hostname
                ),
            ),
            None => (
                false,
                format!(
                    "listener {} host name {} is NOT covered by the certificate ({}): \
                     verifying clients will reject it",
                    l.name,
                    l.hostname,
                    cert.names()
                ),
            ),
        })
        .collect()
}
