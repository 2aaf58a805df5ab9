//! Starts the MTA-STS policy endpoint of `policies/mta_sts.yaml` and applies reloads to it:
//! new connections get the new policies and certificate; `listen:` needs a restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::AppError;
use crate::config::model::Config;
use crate::mail_log::{Event, Level, MailLog};
use crate::mta_sts::http::Served;
use crate::mta_sts::server::Endpoint;
use crate::mta_sts::{txt_record, MtaStsSettings};
use crate::net::tls::{self, CertStore, TlsError};
use crate::tlsrpt::intake::Intake;
use crate::tlsrpt::shared::SharedReports;

/// The name of the endpoint in logs and bind errors.
const NAME: &str = "mta-sts";

/// The running endpoint: what a reload swaps.
pub(crate) struct MtaStsEndpoint {
    /// `listen:` at start-up.
    listen: Vec<SocketAddr>,
    /// The policies served.
    served: Arc<ArcSwap<Served>>,
    /// The TLS-RPT intake of report POSTs.
    intake: Arc<ArcSwapOption<Intake>>,
    /// The certificate presented.
    store: Arc<CertStore>,
    /// Bound addresses (useful with port 0).
    pub(crate) bound: Vec<SocketAddr>,
    /// Report claims shared with other gateways (`shared_state:`; a change needs a restart).
    shared: Option<SharedReports>,
}

/// The certificate and key files: the configured pair, or the demo certificate made for the
/// policy host names (its own files: the listeners' demo certificate names other hosts).
fn certificate(
    settings: &MtaStsSettings,
    certs_dir: &Path,
) -> Result<(PathBuf, PathBuf), AppError> {
    match &settings.certificate {
        Some((c, k)) => Ok((c.clone(), k.clone())),
        None => Ok(ensure_demo(certs_dir, &settings.policy_hosts())?),
    }
}

/// True when the leaf of the PEM file `cert` covers every host of `hosts`.
fn covers(cert: &Path, hosts: &[String]) -> bool {
    crate::certs::cert::read_certs(cert).is_ok_and(|chain| {
        chain
            .first()
            .is_some_and(|leaf| hosts.iter().all(|h| leaf.covering_name(h).is_some()))
    })
}

/// Writes `mta-sts-demo.crt`/`.key`, self-signed for `hosts`, unless they exist and cover
/// them (a domain added later gets a new demo certificate).
fn ensure_demo(certs_dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert = certs_dir.join("mta-sts-demo.crt");
    let key = certs_dir.join("mta-sts-demo.key");
    if key.exists() && covers(&cert, hosts) {
        return Ok((cert, key));
    }
    tls::write_demo_certificate(certs_dir, hosts, &cert, &key)?;
    Ok((cert, key))
}

/// Without an MTA-STS endpoint: logs the TLS-RPT record of each report address's domain.
pub(crate) fn announce_tlsrpt(config: &Config, log: &MailLog) {
    let Some(t) = &config.tlsrpt else { return };
    let mut domains: Vec<&str> = t
        .addresses
        .iter()
        .filter_map(|a| a.rsplit_once('@').map(|(_, d)| d))
        .collect();
    domains.dedup();
    for domain in domains {
        let text = format!(
            "tlsrpt: reports for {domain}: publish _smtp._tls.{domain} TXT \"v=TLSRPTv1; rua={}\"",
            t.rua(None)
        );
        tracing::info!("{text}");
        log.log(&Event::Note {
            level: Level::Info,
            text,
        });
    }
}

/// The HTTPS report intake of `config`: when `policies/tlsrpt.yaml` sets `https_path`.
fn https_intake(config: &Config, shared: Option<&SharedReports>) -> Option<Arc<Intake>> {
    let settings = config.tlsrpt.clone().filter(|t| t.https_path.is_some())?;
    Some(Arc::new(
        Intake::new(
            settings,
            &config.global.spool_dir,
            config.global.ready_min_free_space,
        )
        .with_shared(shared.cloned()),
    ))
}

/// Warns at start when senders cannot verify the endpoint's certificate for a policy host:
/// they then apply no policy (`mxgate check` says the same before).
fn warn_certificate(settings: &MtaStsSettings, config: &Config, cert: &Path, log: &MailLog) {
    let text = match &settings.certificate {
        None => format!(
            "mta-sts: the endpoint uses the self-signed DEMO certificate {}: senders cannot verify it and apply no MTA-STS policy; install one from a public CA (docs/mta-sts.md)",
            cert.display()
        ),
        Some(_) => match MtaStsEndpoint::check_certificate(config) {
            Some(problem) => format!("mta-sts: {problem}"),
            None => return,
        },
    };
    tracing::warn!("{text}");
    log.log(&Event::Note {
        level: Level::Warning,
        text,
    });
}

/// Logs each domain's policy id and the TXT record to publish for it, and the TLS-RPT
/// record when reports are received.
fn announce(settings: &MtaStsSettings, config: &Config, log: &MailLog) {
    for (domain, policy) in &settings.domains {
        let text = format!(
            "mta-sts: policy of {domain} mode {} id {}: publish _mta-sts.{domain} TXT \"{}\"",
            policy.mode,
            policy.id(),
            txt_record(policy)
        );
        tracing::info!("{text}");
        log.log(&Event::Note {
            level: Level::Info,
            text,
        });
        if let Some(t) = &config.tlsrpt {
            let host = MtaStsSettings::policy_host(domain);
            let text = format!(
                "tlsrpt: reports for {domain}: publish _smtp._tls.{domain} TXT \"v=TLSRPTv1; rua={}\"",
                t.rua(Some(&host))
            );
            tracing::info!("{text}");
            log.log(&Event::Note {
                level: Level::Info,
                text,
            });
        }
    }
}

impl MtaStsEndpoint {
    /// Binds and serves `policies/mta_sts.yaml`'s endpoint; `None` without the file.
    pub(crate) fn start(
        config: &Config,
        log: &Arc<MailLog>,
        shared: Option<&crate::shared_state::SharedState>,
        stop: &watch::Receiver<bool>,
        tasks: &mut JoinSet<()>,
    ) -> Result<Option<MtaStsEndpoint>, AppError> {
        let shared = shared.cloned().map(SharedReports::new);
        let Some(settings) = &config.mta_sts else {
            return Ok(None);
        };
        let (cert, key) = certificate(settings, &config.global.certs_dir)?;
        let store = CertStore::new(tls::load_certified_key(&cert, &key)?);
        warn_certificate(settings, config, &cert, log);
        crate::metrics::certificate_expiry(NAME, &cert);
        let served = Arc::new(ArcSwap::from_pointee(Served::new(settings)));
        let intake = Arc::new(ArcSwapOption::new(https_intake(config, shared.as_ref())));
        let endpoint = Endpoint {
            served: served.clone(),
            intake: intake.clone(),
            log: log.clone(),
        };
        let acceptor = TlsAcceptor::from(tls::server_config(store.clone()));
        let mut bound = Vec::new();
        for addr in &settings.listen {
            let socket = crate::net::bind::bind(*addr).map_err(|cause| AppError::Bind {
                listener: NAME.into(),
                addr: *addr,
                cause,
            })?;
            bound.push(socket.local_addr().unwrap_or(*addr));
            tasks.spawn(crate::mta_sts::server::serve(
                socket,
                acceptor.clone(),
                endpoint.clone(),
                stop.clone(),
            ));
        }
        for addr in &bound {
            log.log(&Event::Note {
                level: Level::Info,
                text: format!("{NAME} listening on {addr}"),
            });
        }
        announce(settings, config, log);
        Ok(Some(MtaStsEndpoint {
            listen: settings.listen.clone(),
            served,
            intake,
            store,
            bound,
            shared,
        }))
    }

    /// Applies a reloaded configuration: policies and certificate now; a changed `listen:`,
    /// a new or a removed file need a restart (`warn` says so). Fails, changing nothing, when
    /// the certificate cannot be loaded.
    pub(crate) fn apply(
        this: Option<&MtaStsEndpoint>,
        config: &Config,
        log: &MailLog,
        warn: impl Fn(String),
    ) -> Result<(), AppError> {
        match (this, &config.mta_sts) {
            (None, None) => Ok(()),
            (None, Some(_)) => {
                warn("reload: policies/mta_sts.yaml is new; the MTA-STS endpoint starts after a restart".into());
                Ok(())
            }
            (Some(ep), None) => {
                warn("reload: policies/mta_sts.yaml was removed; no policy is served, the endpoint stops after a restart".into());
                ep.served.store(Arc::new(Served::default()));
                ep.intake.store(None);
                Ok(())
            }
            (Some(ep), Some(settings)) => {
                let (cert, key) = certificate(settings, &config.global.certs_dir)?;
                let certified = tls::load_certified_key(&cert, &key)?;
                if settings.listen != ep.listen {
                    warn(format!(
                        "reload: mta_sts.yaml listen addresses changed; the change needs a restart (still {})",
                        ep.listen.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    ));
                }
                crate::metrics::certificate_expiry(NAME, &cert);
                ep.store.replace(certified);
                ep.served.store(Arc::new(Served::new(settings)));
                ep.intake.store(https_intake(config, ep.shared.as_ref()));
                announce(settings, config, log);
                Ok(())
            }
        }
    }

    /// The configured certificate's problem, read without binding (for `mxgate check`).
    pub(crate) fn check_certificate(config: &Config) -> Option<String> {
        let settings = config.mta_sts.as_ref()?;
        let (cert, key) = settings.certificate.as_ref()?;
        let hosts = settings.policy_hosts();
        let name = cert
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let problem = match [cert, key].into_iter().find(|p| !p.exists()) {
            // Senders that apply MTA-STS fetch the policy with WebPKI validation (RFC 8461
            // §3.3): only a certificate from a public CA serves.
            Some(missing) => format!(
                "{} not found: make a key and a request with `mxgate certs csr {name} --cn {} --san {}`, have a public CA sign it (senders check the policy host's certificate like a browser), then `mxgate certs install {name} --cert SIGNED.pem`",
                missing.display(),
                hosts.first().cloned().unwrap_or_default(),
                hosts.join(","),
            ),
            None => {
                if let Err(e) = tls::load_certified_key(cert, key) {
                    return Some(format!("policies/mta_sts.yaml: certificate: {e}"));
                }
                if covers(cert, &hosts) {
                    return None;
                }
                let missing: Vec<&String> = hosts
                    .iter()
                    .filter(|h| !covers(cert, std::slice::from_ref(h)))
                    .collect();
                format!(
                    "{} does not cover {}: senders fetching that policy fail the TLS check and apply none; request a certificate for every policy host (`mxgate certs csr {name} --cn {} --san {}`)",
                    cert.display(),
                    missing.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", "),
                    hosts.first().cloned().unwrap_or_default(),
                    hosts.join(","),
                )
            }
        };
        Some(format!("policies/mta_sts.yaml: certificate: {problem}"))
    }

    /// The certificate files to watch for renewals.
    pub(crate) fn certificate_files(config: &Config) -> Vec<PathBuf> {
        match config.mta_sts.as_deref() {
            Some(MtaStsSettings {
                certificate: Some((c, k)),
                ..
            }) => vec![c.clone(), k.clone()],
            _ => Vec::new(),
        }
    }
}
