//! Wires listeners, spool, mail log and resolver together; owns start-up and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::config::model::Config;
use crate::mail_log::{Event, Level, MailLog, MailLogError};
use crate::net::conn::ListenerContext;
use crate::net::dns::{DnsError, ReverseResolver};
use crate::net::listener;
use crate::net::tls::{self, CertStore, TlsError};
use crate::policy::rate::RateLimiter;
use crate::smtp::session::SessionEnv;
use crate::spool::{Spool, SpoolError};

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Spool directory unusable.
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    /// Mail log unusable.
    #[error(transparent)]
    MailLog(#[from] MailLogError),
    /// Certificate problem.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Resolver problem.
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// A bind address could not be bound.
    #[error("listener {listener}: cannot bind {addr}: {source}")]
    Bind {
        /// Listener name.
        listener: String,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Ids from the spool's persistent counters, time from the system clock.
#[derive(Debug)]
pub struct SpoolEnv {
    spool: Arc<Spool>,
}

impl SessionEnv for SpoolEnv {
    fn next_mid(&self) -> Result<u64, String> {
        self.spool.next_mid().map_err(|e| e.to_string())
    }

    fn now_rfc2822(&self) -> String {
        chrono::Local::now().to_rfc2822()
    }

    fn now_unix(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// A running gateway.
pub struct Running {
    /// Every bound address by listener name (useful with port 0).
    pub bound: Vec<(String, SocketAddr)>,
    /// The mail log (reopened on SIGHUP/SIGUSR1).
    pub mail_log: Arc<MailLog>,
    /// The spool.
    pub spool: Arc<Spool>,
    stop: watch::Sender<bool>,
    force_close: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stops accepting, lets sessions finish for `grace`, then closes the rest with 421.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let all_done = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all_done).await.is_err() {
            let _ = self.force_close.send(true);
            while self.tasks.join_next().await.is_some() {}
        }
        self.mail_log.log(&Event::Note {
            level: Level::Info,
            text: "mxgate stopped".into(),
        });
    }
}

/// Opens the spool and log, loads certificates, binds every listener and starts serving.
pub async fn start(config: &Config) -> Result<Running, AppError> {
    let spool = Arc::new(Spool::open(&config.global.spool_dir)?);
    let mail_log = Arc::new(MailLog::open(
        &config.global.mail_log,
        config.global.mail_log_format,
    )?);
    let resolver = ReverseResolver::new(&config.global.dns)?;
    let rate = RateLimiter::system();
    let env: Arc<dyn SessionEnv> = Arc::new(SpoolEnv {
        spool: spool.clone(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (force_tx, force_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut bound = Vec::new();
    for l in &config.listeners {
        let (cert, key) = match (&l.certificate, &l.key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => {
                let (c, k, created) =
                    tls::ensure_demo_certificate(&config.global.certs_dir, &l.hostname)?;
                let text = format!(
                    "listener {} uses the self-signed DEMO certificate {} ({}): clients cannot verify it; install a real certificate",
                    l.name,
                    c.display(),
                    if created { "generated now" } else { "generated earlier" }
                );
                tracing::warn!("{text}");
                mail_log.log(&Event::Note {
                    level: Level::Warning,
                    text,
                });
                (c, k)
            }
        };
        let store = CertStore::new(tls::load_certified_key(&cert, &key)?);
        let acceptor = TlsAcceptor::from(tls::server_config(store));
        let ctx = Arc::new(ListenerContext {
            listener: l.clone(),
            tls: Some(acceptor),
            resolver: resolver.clone(),
            rate: rate.clone(),
            spool: spool.clone(),
            log: mail_log.clone(),
            env: env.clone(),
        });
        for addr in &l.bind {
            let socket = TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Bind {
                    listener: l.name.clone(),
                    addr: *addr,
                    source,
                })?;
            let actual = socket.local_addr().unwrap_or(*addr);
            bound.push((l.name.clone(), actual));
            tasks.spawn(listener::serve(
                socket,
                ctx.clone(),
                stop_rx.clone(),
                force_rx.clone(),
            ));
        }
    }
    for (name, addr) in &bound {
        mail_log.log(&Event::Note {
            level: Level::Info,
            text: format!("listener {name} listening on {addr}"),
        });
    }
    Ok(Running {
        bound,
        mail_log,
        spool,
        stop: stop_tx,
        force_close: force_tx,
        tasks,
    })
}
