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
use crate::relay::client::ClientTimeouts;
use crate::relay::control;
use crate::relay::handle::QueueHandle;
use crate::relay::outbound_tls::OutboundTlsContext;
use crate::relay::queue::{QueueManager, RelaySettings};
use crate::relay::schedule::RetryPolicy;
use crate::relay::worker::WorkerContext;
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
    /// Metrics endpoint problem.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// Outbound TLS (client certificate) problem.
    #[error(transparent)]
    OutboundTls(#[from] crate::relay::outbound_tls::OutboundTlsError),
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
    /// The metrics endpoint, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The mail log (reopened on SIGHUP/SIGUSR1).
    pub mail_log: Arc<MailLog>,
    /// The spool.
    pub spool: Arc<Spool>,
    stop: watch::Sender<bool>,
    force_close: watch::Sender<bool>,
    tasks: JoinSet<()>,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
    queue_stop: watch::Sender<bool>,
    queue_task: tokio::task::JoinHandle<()>,
    control_task: tokio::task::JoinHandle<()>,
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
        // Listeners are down: stop the queue; deliveries under way finish (bounded by grace).
        self.control_task.abort();
        if let Some(t) = &self.metrics_task {
            t.abort();
        }
        let _ = self.queue_stop.send(true);
        if tokio::time::timeout(grace.max(Duration::from_secs(1)), &mut self.queue_task)
            .await
            .is_err()
        {
            self.queue_task.abort();
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
    let ready = Arc::new(crate::metrics::Readiness::default());
    let (metrics_addr, metrics_task) = match config.global.metrics_listen {
        Some(addr) => {
            let handle = crate::metrics::recorder()?;
            let (bound, task) = crate::metrics::serve(addr, handle, ready.clone()).await?;
            (Some(bound), Some(task))
        }
        None => (None, None),
    };
    let queue = start_queue(config, &spool, &mail_log)?;
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
        crate::metrics::certificate_expiry(&l.name, &cert);
        let acceptor = TlsAcceptor::from(tls::server_config(store));
        let ctx = Arc::new(ListenerContext {
            listener: l.clone(),
            tls: Some(acceptor),
            resolver: resolver.clone(),
            rate: rate.clone(),
            spool: spool.clone(),
            log: mail_log.clone(),
            env: env.clone(),
            queue: Some(queue.handle.clone()),
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
    // Listeners are bound and the spool is open: ready for traffic.
    ready.set(true);
    for (name, addr) in &bound {
        mail_log.log(&Event::Note {
            level: Level::Info,
            text: format!("listener {name} listening on {addr}"),
        });
    }
    Ok(Running {
        bound,
        metrics_addr,
        metrics_task,
        mail_log,
        spool,
        stop: stop_tx,
        force_close: force_tx,
        tasks,
        queue_stop: queue.stop,
        queue_task: queue.task,
        control_task: queue.control,
    })
}

struct QueueParts {
    handle: QueueHandle,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    control: tokio::task::JoinHandle<()>,
}

/// Starts the queue manager (delivery to the internal server) and its control socket.
fn start_queue(
    config: &Config,
    spool: &Arc<Spool>,
    log: &Arc<MailLog>,
) -> Result<QueueParts, AppError> {
    let hostname = config
        .global
        .delivery
        .hostname
        .clone()
        .or_else(|| config.listeners.first().map(|l| l.hostname.clone()))
        .unwrap_or_else(|| "localhost".into());
    let client_cert = match &config.destinations.client_certificate {
        None => None,
        Some(name) if name == "demo" => {
            let (c, k, _) = tls::ensure_demo_certificate(&config.global.certs_dir, &hostname)?;
            Some((c, k))
        }
        Some(name) => Some((
            config.global.certs_dir.join(format!("{name}.crt")),
            config.global.certs_dir.join(format!("{name}.key")),
        )),
    };
    let worker = Arc::new(WorkerContext {
        spool: spool.clone(),
        log: log.clone(),
        tls: Arc::new(OutboundTlsContext::new(client_cert)?),
        helo_name: hostname.clone(),
        timeouts: ClientTimeouts::default(),
        alert_enabled: config.destinations.alert.enabled,
    });
    let d = &config.global.delivery;
    let settings = RelaySettings {
        concurrency: d.concurrency,
        retry: RetryPolicy {
            initial: d.retry_initial,
            max: d.retry_max,
            max_queue_lifetime: d.max_queue_lifetime,
        },
        hostname,
    };
    let (manager, handle) = QueueManager::new(
        spool.clone(),
        log.clone(),
        config.routes.clone(),
        config.destinations.clone(),
        settings,
        worker,
    );
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(manager.run(stop_rx));
    let path = control::socket_path(spool.root());
    // Bind now so a failure is a start-up error, not a silent background one.
    let _ = std::fs::remove_file(&path);
    let control = match tokio::net::UnixListener::bind(&path) {
        Ok(listener) => tokio::spawn(control::serve(listener, handle.clone())),
        Err(e) => {
            // The gateway still works; only `mxgate queue retry|delete|bounce` cannot reach it.
            log.log(&Event::Note {
                level: Level::Warning,
                text: format!("queue control socket {} unavailable: {e}", path.display()),
            });
            tokio::spawn(async {})
        }
    };
    Ok(QueueParts {
        handle,
        stop,
        task,
        control,
    })
}
