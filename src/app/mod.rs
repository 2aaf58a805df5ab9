//! Wires listeners, spool, mail log and resolver together; owns start-up and shutdown.
//! [`reload`] runs the started server: reload, certificate watching, signals.

mod dane;
pub mod drain;
mod mta_sts;
pub mod reload;
pub(crate) mod tls_files;
pub(crate) mod validation;

pub use tls_files::check_tls_files;
use tls_files::client_certificate_files;
pub(crate) use tls_files::outbound_tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::config::model::Config;
use crate::dns::{DnsError, ReverseResolver};
use crate::mail_log::{Event, Level, MailLog, MailLogError};
use crate::net::conn::ListenerContext;
use crate::net::listener;
use crate::net::tls::{self, CertStore, TlsError};
use crate::policy::rate::RateLimiter;
use crate::relay::client::ClientTimeouts;
use crate::relay::control;
use crate::relay::queue::QueueHandle;
use crate::relay::queue::{QueueManager, RelaySettings};
use crate::relay::schedule::RetryPolicy;
use crate::relay::worker::WorkerContext;
use crate::smtp::session::SessionEnv;
use crate::spool::{Spool, SpoolError};
use crate::tlsrpt::intake::Intake;
use crate::validate::control::LiveRecipients;

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Spool directory unusable (the cause in the message, not a `source`: `mxgate: {e:#}`
    /// would print it twice).
    #[error("spool: {0}")]
    Spool(SpoolError),
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
    /// The shared-state client could not be built.
    #[error(transparent)]
    SharedState(#[from] crate::shared_state::SharedStateError),
    /// A bind address could not be bound.
    #[error("listener {listener}: cannot bind {addr}: {cause}")]
    Bind {
        /// Listener name.
        listener: String,
        /// Address.
        addr: SocketAddr,
        /// Cause (in the message, not a `source`: `mxgate: {e:#}` would print it twice).
        cause: std::io::Error,
    },
    /// The signal handlers (stop, reload, reopen) could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

impl From<SpoolError> for AppError {
    fn from(e: SpoolError) -> Self {
        AppError::Spool(e)
    }
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
    slots: Vec<ListenerSlot>,
    shared: Shared,
    /// Every bound address by listener name (useful with port 0).
    pub bound: Vec<(String, SocketAddr)>,
    /// Bound addresses of the MTA-STS policy endpoint (empty without `policies/mta_sts.yaml`).
    pub mta_sts_bound: Vec<SocketAddr>,
    mta_sts: Option<mta_sts::MtaStsEndpoint>,
    /// The DNS self-check gauges' refresh task, when metrics are on.
    dane: Option<dane::DaneRefresh>,
    /// The metrics endpoint, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// `metrics.listen` as configured at start-up (a change needs a restart).
    metrics_listen: Option<SocketAddr>,
    /// What `/ready` answers.
    pub ready: Arc<crate::metrics::Readiness>,
    /// The mail log (reopened on SIGHUP/SIGUSR1).
    pub mail_log: Arc<MailLog>,
    /// The spool.
    pub spool: Arc<Spool>,
    stop: watch::Sender<bool>,
    force_close: watch::Sender<bool>,
    /// Draining, and the count of open sessions.
    admission: Arc<listener::Admission>,
    tasks: JoinSet<()>,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
    queue_stop: watch::Sender<bool>,
    queue_task: tokio::task::JoinHandle<()>,
    control_task: tokio::task::JoinHandle<()>,
    validation: validation::ValidationRuntime,
    /// What the control socket's recipient verbs see (replaced on reload).
    recipients: Arc<ArcSwap<LiveRecipients>>,
}

/// One listener's swappable context: new connections take the current one.
struct ListenerSlot {
    name: String,
    bind: Vec<SocketAddr>,
    ctx: Arc<ArcSwap<ListenerContext>>,
}

/// What every listener context shares and a reload keeps.
#[derive(Clone)]
struct Shared {
    resolver: ReverseResolver,
    rate: Arc<RateLimiter>,
    spool: Arc<Spool>,
    log: Arc<MailLog>,
    env: Arc<dyn SessionEnv>,
    queue: QueueHandle,
    /// Recipient validation of the current configuration (replaced on reload).
    validator: Arc<crate::validate::service::Validator>,
    /// The TLS-RPT intake of the current configuration (replaced on reload).
    tlsrpt: Option<Arc<Intake>>,
    /// The store shared with other gateways (`shared_state:`; a change needs a restart).
    shared_state: Option<crate::shared_state::SharedState>,
}

/// The TLS-RPT intake of `config` (`policies/tlsrpt.yaml`), storing under its spool.
fn intake(
    config: &Config,
    shared: Option<&crate::shared_state::SharedState>,
) -> Option<Arc<Intake>> {
    let settings = config.tlsrpt.clone()?;
    Some(Arc::new(
        Intake::new(
            settings,
            &config.global.spool_dir,
            config.global.ready_min_free_space,
        )
        .with_shared(
            shared
                .cloned()
                .map(crate::tlsrpt::shared::SharedReports::new),
        ),
    ))
}

/// Loads a listener's certificate (the demo one when none is configured) and builds its context.
fn build_context(
    l: &crate::config::model::Listener,
    shared: &Shared,
    resolver: &ReverseResolver,
    certs_dir: &std::path::Path,
    announce_demo: bool,
) -> Result<ListenerContext, AppError> {
    let (cert, key) = match (&l.certificate, &l.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let (c, k, created) = tls::ensure_demo_certificate(certs_dir, &l.hostname)?;
            if announce_demo {
                let text = format!(
                    "listener {} uses the self-signed DEMO certificate {} ({}): clients cannot verify it; install a real certificate",
                    l.name,
                    c.display(),
                    if created { "generated now" } else { "generated earlier" }
                );
                tracing::warn!("{text}");
                shared.log.log(&Event::Note {
                    level: Level::Warning,
                    text,
                });
            }
            (c, k)
        }
    };
    let store = CertStore::new(tls::load_certified_key(&cert, &key)?);
    crate::metrics::certificate_expiry(&l.name, &cert);
    // Built for every listener: which policies ask for client certificates can change on reload.
    let tls_verify = tls::ClientVerifyTls::new(store.clone(), l.client_ca_file.as_deref())?;
    Ok(ListenerContext {
        listener: l.clone(),
        tls: Some(TlsAcceptor::from(tls::server_config(store))),
        tls_verify: Some(tls_verify),
        resolver: resolver.clone(),
        rate: shared.rate.clone(),
        spool: shared.spool.clone(),
        log: shared.log.clone(),
        env: shared.env.clone(),
        queue: Some(shared.queue.clone()),
        validator: Some(shared.validator.clone()),
        tlsrpt: shared.tlsrpt.clone(),
        sender_auth: crate::auth::SenderAuth::new(resolver),
        shared_state: shared.shared_state.clone(),
    })
}

impl Running {
    /// Applies a newly loaded configuration: new connections use the new HAT, policies, RAT
    /// and certificates; open ones finish under the old. Routes and destination controls go
    /// to the queue manager. Bind addresses and global settings need a restart (logged).
    pub fn apply(&self, config: &Config) -> Result<(), AppError> {
        // `dns:` applies to new connections and the next delivery connections.
        let resolver = ReverseResolver::new(&config.global.dns)?;
        // Re-read too: the client certificate and the CA bundles (a renewed file behind an
        // unchanged path is read again).
        let outbound = Arc::new(outbound_tls(config)?);
        let shared = Shared {
            validator: self.validation.validator(
                config,
                delivery_hostname(config),
                outbound.clone(),
            ),
            tlsrpt: intake(config, self.shared.shared_state.as_ref()),
            ..self.shared.clone()
        };
        if config.validation.cache != *self.validation.cache.settings() {
            self.warn(
                "reload: the recipient validation cache settings changed; the change needs a restart"
                    .into(),
            );
        }
        let mut contexts = Vec::new();
        for l in &config.listeners {
            let Some(slot) = self.slots.iter().find(|s| s.name == l.name) else {
                self.warn(format!(
                    "reload: new listener {} needs a restart to be bound",
                    l.name
                ));
                continue;
            };
            if slot.bind != l.bind {
                self.warn(format!(
                    "reload: listener {} bind addresses changed; the change needs a restart",
                    l.name
                ));
            }
            // Build everything first: one bad certificate keeps the whole old configuration.
            contexts.push((
                slot,
                build_context(l, &shared, &resolver, &config.global.certs_dir, false)?,
            ));
        }
        let running = self.shared.shared_state.as_ref().map(|s| s.settings());
        if config.global.shared_state.as_deref() != running {
            self.warn("reload: shared_state changed; the change needs a restart".into());
        }
        if config.global.metrics_listen != self.metrics_listen {
            let show = |a: Option<SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
            self.warn(format!(
                "reload: metrics.listen changed from {} to {}; the change needs a restart",
                show(self.metrics_listen),
                show(config.global.metrics_listen)
            ));
        }
        for slot in &self.slots {
            if !config.listeners.iter().any(|l| l.name == slot.name) {
                self.warn(format!(
                    "reload: listener {} was removed from the configuration; it stops after a restart",
                    slot.name
                ));
            }
        }
        mta_sts::MtaStsEndpoint::apply(self.mta_sts.as_ref(), config, &self.mail_log, |w| {
            self.warn(w)
        })?;
        dane::DaneRefresh::apply(self.dane.as_ref(), config, &resolver);
        for (slot, ctx) in contexts {
            slot.ctx.store(Arc::new(ctx));
        }
        crate::metrics::config_info::set(&crate::config::hash::config_hash(
            &self.as_applied(config),
        ));
        let live = LiveRecipients::new(config, shared.validator.clone());
        self.recipients.store(Arc::new(live));
        self.shared
            .queue
            .send(crate::relay::queue::Command::Reconfigure(Box::new(
                crate::relay::queue::Reconfiguration {
                    routes: config.routes.clone(),
                    destinations: config.destinations.clone(),
                    outbound,
                    settings: relay_settings(config),
                    resolver,
                },
            )));
        Ok(())
    }

    /// `config` as this process runs it after a reload: the settings that need a restart
    /// keep their running values and listeners not bound are left out, so the exported hash
    /// tells a node still waiting for a restart from one that had it.
    fn as_applied(&self, config: &Config) -> Config {
        let mut applied = config.clone();
        applied.global.shared_state = self
            .shared
            .shared_state
            .as_ref()
            .map(|s| Arc::new(s.settings().clone()));
        let mut validation = (*config.validation).clone();
        validation.cache = self.validation.cache.settings().clone();
        applied.validation = Arc::new(validation);
        applied
            .listeners
            .retain(|l| self.slots.iter().any(|s| s.name == l.name));
        applied
    }

    /// Certificate files of every listener (for change detection).
    pub(crate) fn certificate_files(config: &Config) -> Vec<std::path::PathBuf> {
        let mut v = Vec::new();
        for l in &config.listeners {
            match (&l.certificate, &l.key) {
                (Some(c), Some(k)) => {
                    v.push(c.clone());
                    v.push(k.clone());
                }
                _ => {
                    v.push(config.global.certs_dir.join("demo.crt"));
                    v.push(config.global.certs_dir.join("demo.key"));
                }
            }
        }
        v.extend(mta_sts::MtaStsEndpoint::certificate_files(config));
        // Inbound client-certificate trust anchors.
        v.extend(
            config
                .listeners
                .iter()
                .filter_map(|l| l.client_ca_file.clone()),
        );
        // Outbound: the client certificate and the destinations' CA bundles.
        if let Some((c, k)) = client_certificate_files(config) {
            v.push(c);
            v.push(k);
        }
        let d = &config.destinations;
        for control in std::iter::once(&d.default).chain(&d.entries) {
            if let Some(ca) = &control.ca_file {
                v.push(ca.clone());
            }
        }
        v.sort();
        v.dedup();
        v
    }

    fn warn(&self, text: String) {
        tracing::warn!("{text}");
        self.mail_log.log(&Event::Note {
            level: Level::Warning,
            text,
        });
    }

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
        self.validation.stop().await;
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
    let rate = RateLimiter::with_ipv6_prefix(
        Arc::new(crate::policy::rate::SystemClock),
        config.global.per_ip_ipv6_prefix,
    );
    // Forget clients that no longer limit anything; the task ends with the limiter.
    let weak = Arc::downgrade(&rate);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::policy::rate::PRUNE_EVERY);
        loop {
            tick.tick().await;
            match weak.upgrade() {
                Some(rate) => rate.prune(),
                None => break,
            }
        }
    });
    let env: Arc<dyn SessionEnv> = Arc::new(SpoolEnv {
        spool: spool.clone(),
    });
    let ready = Arc::new(crate::metrics::Readiness::default());
    // A full spool volume takes the gateway out of rotation rather than failing every DATA.
    ready.watch_spool(
        config.global.spool_dir.clone(),
        config.global.ready_min_free_space,
    );
    // Recycled spool files never make the gateway unready: they give way to that free space.
    spool.keep_free(config.global.ready_min_free_space);
    let weak = Arc::downgrade(&spool);
    ready.on_low_space(move || weak.upgrade().is_some_and(|s| s.reclaim_space()));
    let (metrics_addr, metrics_task) = match config.global.metrics_listen {
        Some(addr) => {
            let handle = crate::metrics::recorder()?;
            let (bound, task) = crate::metrics::serve(addr, handle, ready.clone()).await?;
            (Some(bound), Some(task))
        }
        None => (None, None),
    };
    let shared_state = match &config.global.shared_state {
        Some(settings) => Some(
            crate::shared_state::SharedState::start(settings.clone(), Some(mail_log.clone()))
                .await?,
        ),
        None => None,
    };
    let mut validation = validation::ValidationRuntime::start(config, &mail_log);
    validation.share(shared_state.as_ref());
    let validator = validation.validator(
        config,
        delivery_hostname(config),
        Arc::new(outbound_tls(config)?),
    );
    let live = LiveRecipients::new(config, validator.clone());
    let recipients = Arc::new(ArcSwap::from_pointee(live));
    let queue = start_queue(config, &spool, &mail_log, recipients.clone())?;
    let tlsrpt = intake(config, shared_state.as_ref());
    let shared = Shared {
        shared_state,
        validator,
        tlsrpt,
        resolver,
        rate,
        spool: spool.clone(),
        log: mail_log.clone(),
        env,
        queue: queue.handle.clone(),
    };
    let mut slots = Vec::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (force_tx, force_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut bound = Vec::new();
    let admission = Arc::new(listener::Admission::default());
    for l in &config.listeners {
        let ctx = Arc::new(ArcSwap::from_pointee(build_context(
            l,
            &shared,
            &shared.resolver,
            &config.global.certs_dir,
            true,
        )?));
        slots.push(ListenerSlot {
            name: l.name.clone(),
            bind: l.bind.clone(),
            ctx: ctx.clone(),
        });
        for addr in &l.bind {
            let socket = crate::net::bind::bind(*addr).map_err(|cause| AppError::Bind {
                listener: l.name.clone(),
                addr: *addr,
                cause,
            })?;
            let actual = socket.local_addr().unwrap_or(*addr);
            bound.push((l.name.clone(), actual));
            tasks.spawn(listener::serve(
                socket,
                ctx.clone(),
                admission.clone(),
                stop_rx.clone(),
                force_rx.clone(),
            ));
        }
    }
    let mta_sts = mta_sts::MtaStsEndpoint::start(
        config,
        &mail_log,
        shared.shared_state.as_ref(),
        &stop_rx,
        &mut tasks,
    )?;
    if config.mta_sts.is_none() {
        mta_sts::announce_tlsrpt(config, &mail_log);
    }
    let dane = dane::DaneRefresh::start(config, &shared.resolver, &stop_rx, &mut tasks);
    crate::metrics::config_info::set(&crate::config::hash::config_hash(config));
    // Listeners are bound and the spool is open: ready for traffic.
    ready.set(true);
    for (name, addr) in &bound {
        mail_log.log(&Event::Note {
            level: Level::Info,
            text: format!("listener {name} listening on {addr}"),
        });
    }
    Ok(Running {
        slots,
        shared,
        bound,
        mta_sts_bound: mta_sts
            .as_ref()
            .map(|m| m.bound.clone())
            .unwrap_or_default(),
        mta_sts,
        dane,
        metrics_addr,
        metrics_listen: config.global.metrics_listen,
        ready,
        metrics_task,
        mail_log,
        spool,
        stop: stop_tx,
        force_close: force_tx,
        admission,
        tasks,
        queue_stop: queue.stop,
        queue_task: queue.task,
        control_task: queue.control,
        validation,
        recipients,
    })
}

struct QueueParts {
    handle: QueueHandle,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    control: tokio::task::JoinHandle<()>,
}

/// The name the relay says in EHLO and signs DSNs with.
pub(crate) fn delivery_hostname(config: &Config) -> String {
    config
        .global
        .delivery
        .hostname
        .clone()
        .or_else(|| config.listeners.first().map(|l| l.hostname.clone()))
        .unwrap_or_else(|| "localhost".into())
}

/// `delivery:` of mxgate.yaml as the queue manager uses it.
fn relay_settings(config: &Config) -> RelaySettings {
    let d = &config.global.delivery;
    RelaySettings {
        concurrency: d.concurrency,
        retry: RetryPolicy {
            initial: d.retry_initial,
            max: d.retry_max,
            max_queue_lifetime: d.max_queue_lifetime,
        },
        hostname: delivery_hostname(config),
    }
}

/// Starts the queue manager (delivery to the internal server) and its control socket.
fn start_queue(
    config: &Config,
    spool: &Arc<Spool>,
    log: &Arc<MailLog>,
    recipients: Arc<ArcSwap<LiveRecipients>>,
) -> Result<QueueParts, AppError> {
    let hostname = delivery_hostname(config);
    let worker = Arc::new(WorkerContext {
        spool: spool.clone(),
        log: log.clone(),
        tls: Arc::new(outbound_tls(config)?),
        helo_name: hostname.clone(),
        timeouts: ClientTimeouts::default(),
        alert_enabled: config.destinations.alert.enabled,
        // Its own instance (and cache) of the listeners' resolver: same servers and timeout.
        resolver: ReverseResolver::new(&config.global.dns)?,
    });
    let settings = relay_settings(config);
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
        Ok(listener) => {
            let targets = control::ControlTargets {
                queue: handle.clone(),
                recipients,
            };
            tokio::spawn(control::serve(listener, targets))
        }
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
