//! State several gateways share in one Redis/Valkey store (`shared_state:` in `mxgate.yaml`,
//! docs/shared-state.md): per-client counters today, other users on the same handle.
//!
//! [`SharedState`] is the one handle: every call goes through [`SharedState::run`], bounded
//! by `shared_state.timeout`. A failure or a timeout marks the store down (said once in the
//! mail log, `mxgate_shared_state_up` 0); while down, calls fail at once with
//! [`SharedError::Down`] so no reply waits for a store known not to answer, and a background
//! probe PINGs every [`PROBE_EVERY`] (so an idle node notices an outage too) and reconnects
//! once it answers again (said once, gauge 1).

pub mod counters;
pub mod settings;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, RedisResult};

use crate::mail_log::{Event, Level, MailLog};
use settings::SharedStateSettings;

/// How often a down store is asked again.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Longest wait for a connection and its PING in the background probe (not on any reply's
/// path, so longer than `timeout`: a TLS handshake may need it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a call to the store gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedError {
    /// The store is marked down: nothing was asked.
    #[error("shared state store unavailable")]
    Down,
    /// No answer within `shared_state.timeout`.
    #[error("no answer from the shared state store within {0:?}")]
    Timeout(Duration),
    /// The store answered with an error, or the connection failed.
    #[error("shared state store: {0}")]
    Store(String),
}

/// Building the client from the settings failed.
#[derive(Debug, thiserror::Error)]
pub enum SharedStateError {
    /// The URL or the TLS settings were refused by the client.
    #[error("shared_state.url: {0}")]
    Client(String),
    /// `ca_file` could not be read.
    #[error("shared_state.ca_file {path}: {cause}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

/// The handle on the shared store; cheap to clone, one per process.
#[derive(Clone)]
pub struct SharedState {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Arc<SharedStateSettings>,
    client: Client,
    /// The connection while the store is up; `None` while down.
    conn: Mutex<Option<MultiplexedConnection>>,
    up: AtomicBool,
    log: Option<Arc<MailLog>>,
    node_id: String,
    /// This node's connection leases.
    leases: counters::Leases,
    /// Stops the background tasks when the last handle is dropped.
    stop: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState")
            .field("url", &self.inner.settings.url)
            .field("node_id", &self.inner.node_id)
            .field("up", &self.is_up())
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl SharedState {
    /// Connects (one attempt, bounded) and starts the probe that keeps the store's up/down
    /// state; a store that does not answer now is not an error: counting falls back until
    /// it does. Says the node id and the outcome in the mail log.
    pub async fn start(
        settings: Arc<SharedStateSettings>,
        log: Option<Arc<MailLog>>,
    ) -> Result<SharedState, SharedStateError> {
        let client = client(&settings)?;
        let (stop, _) = tokio::sync::watch::channel(false);
        let state = SharedState {
            inner: Arc::new(Inner {
                settings,
                client,
                conn: Mutex::new(None),
                up: AtomicBool::new(false),
                log,
                node_id: node_id(),
                leases: counters::Leases::default(),
                stop,
            }),
        };
        let first = state.connect().await;
        let url = &state.inner.settings.url;
        let node = &state.inner.node_id;
        match first {
            Ok(conn) => {
                *state.lock() = Some(conn);
                state.inner.up.store(true, Ordering::SeqCst);
                state.say(
                    Level::Info,
                    format!("shared state: connected to {url} as node {node}"),
                );
            }
            Err(e) => state.say(
                Level::Warning,
                format!("shared state: {url} unavailable ({e}); node {node}: counting falls back (shared_state.when_unavailable) until it answers"),
            ),
        }
        crate::metrics::shared_state::up(state.is_up());
        tokio::spawn(probe(
            Arc::downgrade(&state.inner),
            state.inner.stop.subscribe(),
        ));
        tokio::spawn(counters::refresh_leases(
            Arc::downgrade(&state.inner),
            state.inner.stop.subscribe(),
        ));
        Ok(state)
    }

    /// True while the store answers.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::SeqCst)
    }

    /// This node's id in the store (host name, pid, random): lease members carry it.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The settings it runs on.
    pub fn settings(&self) -> &SharedStateSettings {
        &self.inner.settings
    }

    /// Counts one decision `counter` took without the store
    /// (`mxgate_shared_state_fallbacks_total{counter}`).
    pub fn fallback(&self, counter: &'static str) {
        crate::metrics::shared_state::fallback(counter);
    }

    /// `{key_prefix}{kind}:{id}`.
    pub fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.inner.settings.key_prefix)
    }

    /// Runs `f` on the connection, bounded by `shared_state.timeout`. A connection failure
    /// or a timeout marks the store down; while it is down, fails at once.
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<T, SharedError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.run_within(self.inner.settings.timeout, f).await
    }

    /// [`SharedState::run`] with another bound (background work off the reply path).
    pub async fn run_within<T, F, Fut>(&self, limit: Duration, f: F) -> Result<T, SharedError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let Some(conn) = self.lock().clone() else {
            return Err(SharedError::Down);
        };
        match tokio::time::timeout(limit, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let text = e.to_string();
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
                    || refuses_everything(e.code())
                {
                    self.down(&text);
                }
                Err(SharedError::Store(text))
            }
            Err(_) => {
                self.down(&format!("no answer within {limit:?}"));
                Err(SharedError::Timeout(limit))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.inner.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the store down (said once per outage); the probe brings it back.
    fn down(&self, why: &str) {
        *self.lock() = None;
        if self.inner.up.swap(false, Ordering::SeqCst) {
            crate::metrics::shared_state::up(false);
            self.say(
                Level::Warning,
                format!(
                    "shared state: {} unavailable ({why}); counting falls back (shared_state.when_unavailable) until it answers",
                    self.inner.settings.url
                ),
            );
        }
    }

    /// A new connection that answered PING.
    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(CONNECT_TIMEOUT);
        let attempt = async {
            let mut conn = self
                .inner
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok::<_, redis::RedisError>(conn)
        };
        let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
        };
        not_a_cluster(&mut conn).await?;
        self.health(&mut conn, true).await?;
        Ok(conn)
    }

    /// Up means: the store takes a write (not out of memory, not a read-only replica, not
    /// loading) and, to come back up (`fast`), answers within `timeout`: a store slower than
    /// that would only make every decision wait and then fall back, and the gauge flap.
    async fn health(&self, conn: &mut MultiplexedConnection, fast: bool) -> Result<(), String> {
        let limit = self.inner.settings.timeout;
        let started = std::time::Instant::now();
        let mut set = redis::cmd("SET");
        set.arg(self.key("health", &self.inner.node_id))
            .arg(1)
            .arg("PX")
            .arg(PROBE_EVERY.as_millis() as u64 * 5);
        let write = set.query_async::<()>(conn);
        match tokio::time::timeout(CONNECT_TIMEOUT, write).await {
            Ok(Ok(())) if !fast || started.elapsed() <= limit => Ok(()),
            Ok(Ok(())) => Err(format!(
                "answers in {} ms, slower than shared_state.timeout ({} ms)",
                started.elapsed().as_millis(),
                limit.as_millis()
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
        }
    }

    fn say(&self, level: Level, text: String) {
        match level {
            Level::Warning => tracing::warn!("{text}"),
            _ => tracing::info!("{text}"),
        }
        if let Some(log) = &self.inner.log {
            log.log(&Event::Note { level, text });
        }
    }
}

/// Every [`PROBE_EVERY`]: PINGs the store while it is up (an idle node notices an outage
/// too), tries to reconnect while it is down; ends with the last handle.
async fn probe(inner: std::sync::Weak<Inner>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let state = SharedState { inner: strong };
        if state.is_up() {
            // An idle node learns of an outage too (its gauge must not say up meanwhile).
            let conn = state.lock().clone();
            if let Some(mut conn) = conn {
                // Slowness alone is left to the decisions' own timeouts.
                if let Err(why) = state.health(&mut conn, false).await {
                    state.down(&why);
                }
            }
            counters::release_orphans(&state).await;
        } else {
            if let Ok(conn) = state.connect().await {
                *state.lock() = Some(conn);
                counters::release_orphans(&state).await;
                if !state.inner.up.swap(true, Ordering::SeqCst) {
                    crate::metrics::shared_state::up(true);
                    state.say(
                        Level::Info,
                        format!(
                            "shared state: {} answers again; shared counting resumed",
                            state.inner.settings.url
                        ),
                    );
                }
            }
        }
        // Not held while sleeping: dropping the last handle ends the task.
        drop(state);
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A Redis Cluster node answers only for its own hash slots and refuses scripts over keys of
/// several slots, which the counters need: mxgate wants one primary (docs/shared-state.md).
/// A store that does not let us ask (`INFO` refused by an ACL) is taken as it is.
async fn not_a_cluster(conn: &mut MultiplexedConnection) -> Result<(), String> {
    let mut ask = redis::cmd("INFO");
    ask.arg("cluster");
    let info = ask.query_async::<String>(conn);
    match tokio::time::timeout(CONNECT_TIMEOUT, info).await {
        Ok(Ok(text)) if text.lines().any(|l| l.trim() == "cluster_enabled:1") => Err(
            "it is a Redis Cluster node; shared_state needs a single primary (docs/shared-state.md)"
                .into(),
        ),
        Ok(_) => Ok(()),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

/// Error codes that refuse every command, not just one key's: the store cannot count now
/// (out of memory, a read-only replica, loading, not authenticated …), so it is down.
fn refuses_everything(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "OOM"
                | "READONLY"
                | "LOADING"
                | "NOAUTH"
                | "WRONGPASS"
                | "NOPERM"
                | "MASTERDOWN"
                | "MISCONF"
                | "BUSY"
                | "CLUSTERDOWN"
                | "TRYAGAIN"
        )
    )
}

/// The client for the settings: password from its file, trust anchors from `ca_file`.
fn client(s: &SharedStateSettings) -> Result<Client, SharedStateError> {
    let mut info = s
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| SharedStateError::Client(e.to_string()))?;
    if s.password.is_some() {
        info.redis.password = s.password.clone();
    }
    match &s.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|cause| SharedStateError::CaFile {
                path: path.clone(),
                cause,
            })?;
            Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(|e| SharedStateError::Client(e.to_string()))
        }
        None => Client::open(info).map_err(|e| SharedStateError::Client(e.to_string())),
    }
}

/// `hostname:pid:random`: unique per process, readable in `ZRANGE` output.
fn node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let mut random = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut random);
    format!(
        "{host}:{}:{:08x}",
        std::process::id(),
        u32::from_be_bytes(random)
    )
}
