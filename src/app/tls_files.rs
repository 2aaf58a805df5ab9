//! The TLS files a configuration names: the listeners' certificates and client CAs, and the
//! outbound client certificate and CA bundles: checked for `mxgate check`, loaded for
//! delivery (and call-ahead probes).

use crate::config::model::Config;
use crate::net::tls;
use crate::relay::outbound_tls::OutboundTlsContext;

use super::{delivery_hostname, AppError};

/// The client certificate files `destinations.yaml` names (`demo` = the demo certificate).
pub(super) fn client_certificate_files(
    config: &Config,
) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let dir = &config.global.certs_dir;
    config.destinations.client_certificate.as_ref().map(|name| {
        (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        )
    })
}

/// The certificate, key and CA files `serve` would refuse to start with, read without
/// binding anything (for `mxgate check`): one line per problem. The demo certificate is
/// left out, because `serve` generates it.
pub fn check_tls_files(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for l in &config.listeners {
        let mut problem = None;
        if let (Some(cert), Some(key)) = (&l.certificate, &l.key) {
            let missing = [("certificate", cert), ("key", key)]
                .into_iter()
                .find(|(_, p)| !p.exists());
            let name = cert.file_stem().map(|s| s.to_string_lossy().into_owned());
            problem = match missing {
                Some((what, path)) => Some(format!(
                    "{what} file {} not found: `mxgate certs list` shows what is installed; \
                     `mxgate certs new-self-signed {n}` makes a self-signed one, `mxgate certs csr {n}` then \
                     `mxgate certs install {n} --cert SIGNED` a CA-signed one",
                    path.display(),
                    n = name.as_deref().unwrap_or("NAME")
                )),
                None => tls::load_certified_key(cert, key)
                    .err()
                    .map(|e| e.to_string()),
            };
        }
        let problem = problem.or_else(|| {
            let ca = l.client_ca_file.as_deref()?;
            tls::ClientCertCheck::new(Some(ca))
                .err()
                .map(|e| e.to_string())
        });
        if let Some(p) = problem {
            out.push(format!("listener {}: {p}", l.name));
        }
    }
    out.extend(super::mta_sts::MtaStsEndpoint::check_certificate(config));
    let d = &config.destinations;
    if d.client_certificate.as_deref() != Some("demo") {
        let checked = OutboundTlsContext::new(client_certificate_files(config)).and_then(|ctx| {
            std::iter::once(&d.default)
                .chain(&d.entries)
                .filter_map(|c| c.ca_file.as_deref())
                .try_for_each(|ca| ctx.roots(Some(ca)).map(|_| ()))
        });
        if let Err(e) = checked {
            out.push(format!("policies/destinations.yaml: {e}"));
        }
    }
    out
}

/// Outbound TLS as configured: the client certificate read now, and every destination's
/// `ca_file` loaded now, so a bad file fails start-up or the reload rather than a delivery.
pub(crate) fn outbound_tls(config: &Config) -> Result<OutboundTlsContext, AppError> {
    if config.destinations.client_certificate.as_deref() == Some("demo") {
        tls::ensure_demo_certificate(&config.global.certs_dir, &delivery_hostname(config))?;
    }
    let ctx = OutboundTlsContext::new(client_certificate_files(config))?;
    let d = &config.destinations;
    for control in std::iter::once(&d.default).chain(&d.entries) {
        if let Some(ca) = &control.ca_file {
            ctx.roots(Some(ca))?;
        }
    }
    Ok(ctx)
}
