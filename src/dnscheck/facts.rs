//! What mxgate serves, read from the configuration and the certificate files: the MTA-STS
//! policy of a domain and each listener's certificate chain (the demo certificate for a
//! listener without one, as `serve` uses it).

use std::path::{Path, PathBuf};

use super::{Facts, NextCert, ServedCert};
use crate::config::model::{Config, ListenerKind};

/// The domain as compared: lower case, no trailing dot.
pub(crate) fn normalise(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The chain in `path`, or a one-line reason.
fn read_chain(path: &Path) -> Result<Vec<crate::certs::cert::Cert>, String> {
    match crate::certs::cert::read_certs(path) {
        Ok(chain) if !chain.is_empty() => Ok(chain),
        Ok(_) => Err(format!("{}: no certificate in the file", path.display())),
        Err(e) => Err(e.to_string()),
    }
}

/// The certificate file each listener serves.
pub(crate) fn listener_files(config: &Config) -> Vec<(String, String, bool, PathBuf)> {
    config
        .listeners
        .iter()
        .map(|l| {
            let path = l
                .certificate
                .clone()
                .unwrap_or_else(|| config.global.certs_dir.join("demo.crt"));
            (
                l.name.clone(),
                normalise(&l.hostname),
                l.kind == ListenerKind::Public,
                path,
            )
        })
        .collect()
}

/// Reads one listener's certificate.
pub(crate) fn served_cert(listener: &str, hostname: &str, public: bool, path: &Path) -> ServedCert {
    let chain = if path.exists() {
        read_chain(path)
    } else {
        Err(format!("{} does not exist", path.display()))
    };
    ServedCert {
        listener: listener.to_string(),
        hostname: hostname.to_string(),
        public,
        path: path.to_path_buf(),
        chain,
    }
}

/// The host names of the public listeners, in configuration order, once each.
pub(crate) fn public_hosts(listeners: &[ServedCert]) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    for l in listeners.iter().filter(|l| l.public) {
        if !hosts.contains(&l.hostname) {
            hosts.push(l.hostname.clone());
        }
    }
    hosts
}

/// Everything the checks of `domain` compare DNS with.
pub(crate) fn gather(config: &Config, domain: &str, next_certs: &[PathBuf]) -> Facts {
    let domain = normalise(domain);
    let policy = config.mta_sts.as_ref().and_then(|s| {
        s.domains
            .iter()
            .find(|(d, _)| *d == domain)
            .map(|(_, p)| p.clone())
    });
    let listeners = listener_files(config)
        .iter()
        .map(|(name, host, public, path)| served_cert(name, host, *public, path))
        .collect();
    let next = next_certs
        .iter()
        .map(|p| NextCert {
            path: p.clone(),
            chain: read_chain(p),
        })
        .collect();
    // The HTTPS intake answers on the policy host, as the start-up log line announces it.
    let https_host = policy
        .as_ref()
        .map(|_| crate::mta_sts::MtaStsSettings::policy_host(&domain));
    let tlsrpt_rua = config
        .tlsrpt
        .as_ref()
        .map(|t| t.rua(https_host.as_deref()))
        .filter(|r| !r.is_empty());
    let policy_cert = config
        .mta_sts
        .as_ref()
        .filter(|_| policy.is_some())
        .map(|s| super::webpki::policy_cert(s, &config.global.certs_dir));
    Facts {
        domain,
        policy,
        listeners,
        next,
        tlsrpt_rua,
        policy_cert,
    }
}
