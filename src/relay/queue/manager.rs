//! The queue manager task: feeds commands, delivery results and the clock into the
//! [`QueueState`] and carries out the [`Effect`]s it returns, the blocking ones (fsync,
//! file removal, state saves, DSN commits) on tokio's blocking pool, never on a runtime
//! thread.

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::outbound::{DestinationControls, RouteTable};
use crate::mail_log::{Event, Level, MailLog};
use crate::metrics;
use crate::relay::bounce;
use crate::relay::state::DeliveryState;
use crate::relay::worker::{self, Feed, JobResult, Reported, ResultSender, WorkerContext};
use crate::spool::{ReadError, Spool};

use super::command::{Command, Reconfiguration};
use super::core::{Loaded, QueueState};
use super::dispatch::Batch;
use super::effect::Effect;
use super::handle::QueueHandle;
use super::RelaySettings;

/// Longest the manager sleeps without refreshing `mxgate_queue_*` gauges.
const GAUGE_REFRESH: Duration = Duration::from_secs(2);

/// Seconds since the Unix epoch: the only clock the queue reads.
fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads message `mid` back from `spool` (blocking).
fn read_queued(spool: &Spool, mid: u64) -> Loaded {
    match spool.read_queued(mid) {
        Ok(q) => Loaded::Found {
            env: Box::new(q.env),
            state: DeliveryState::load(&spool.state_path(mid)),
            size: q.size,
        },
        Err(ReadError::Missing) => Loaded::Missing,
        Err(e) => Loaded::Unreadable(e.to_string()),
    }
}

/// Runs `f` on tokio's blocking pool and waits for it. Only ever called from the manager's
/// own (async) task: never from a blocking thread, so a blocking thread never waits for
/// another (a pool full of waiters would deadlock).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

/// The queue manager task.
pub(crate) struct QueueManager {
    pub(super) core: QueueState,
    spool: Arc<Spool>,
    log: Arc<MailLog>,
    worker: Arc<WorkerContext>,
    rx: mpsc::UnboundedReceiver<Command>,
    /// Delivery tasks, each ending with its domain and the results it did not report.
    workers: JoinSet<(String, Vec<JobResult>)>,
    /// When the oldest-message gauge was last computed (a scan of the whole queue).
    oldest_at: Option<std::time::Instant>,
    /// Its value then.
    oldest_age: u64,
    /// Bytes of [`CachedBody`](super::CachedBody) alive.
    body_budget: Arc<AtomicUsize>,
    /// Results connections report as each transaction ends (see [`Feed::report_to`]).
    reported: mpsc::UnboundedReceiver<Reported>,
    /// The sending end given to each new connection.
    reported_tx: ResultSender,
}

impl QueueManager {
    /// Creates the manager and its handle; run it with [`QueueManager::run`].
    pub(crate) fn new(
        spool: Arc<Spool>,
        log: Arc<MailLog>,
        routes: Arc<RouteTable>,
        controls: Arc<DestinationControls>,
        settings: RelaySettings,
        worker: Arc<WorkerContext>,
    ) -> (Self, QueueHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (reported_tx, reported) = mpsc::unbounded_channel();
        let m = QueueManager {
            core: QueueState::new(settings, routes, controls, spool.queue_dir()),
            spool,
            log,
            worker,
            rx,
            workers: JoinSet::new(),
            oldest_at: None,
            oldest_age: 0,
            body_budget: Arc::new(AtomicUsize::new(0)),
            reported,
            reported_tx,
        };
        let handle = QueueHandle::new(tx, m.body_budget.clone());
        (m, handle)
    }

    /// Runs until `stop` turns true; in-flight deliveries finish first.
    pub(crate) async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let spool = self.spool.clone();
        let found = blocking(move || {
            spool.remove_orphans();
            let mids = spool.queued_mids();
            mids.into_iter()
                .map(|mid| (mid, read_queued(&spool, mid)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let now = now_unix();
        for (i, (mid, loaded)) in found.into_iter().enumerate() {
            let effects = self.core.admit(mid, loaded);
            self.execute(effects).await;
            // A saved next try may be up to `retry_max` away, though the internal server may
            // be back by now: try the queue soon, spread out (50 a second, all within a minute).
            self.core.due_by(mid, now + (i as u64 / 50).min(60));
        }
        loop {
            let effects = self.core.dispatch(now_unix());
            self.execute(effects).await;
            self.refresh_gauges();
            let sleep_for = match self.core.next_due() {
                Some(t) => Duration::from_secs(t.saturating_sub(now_unix()))
                    .max(Duration::from_millis(200)),
                None => Duration::from_secs(3600),
            }
            // Wake at least every few seconds so the queue gauges (oldest age) stay current.
            .min(GAUGE_REFRESH);
            tokio::select! {
                c = self.rx.recv() => match c {
                    Some(c) => self.command(c).await,
                    None => break,
                },
                Some(r) = self.reported.recv() => self.apply_reported(r).await,
                Some(done) = self.workers.join_next(), if !self.workers.is_empty() => {
                    if let Ok((domain, results)) = done {
                        self.finish_batch(&domain, results).await;
                    }
                }
                _ = tokio::time::sleep(sleep_for) => {}
                _ = stop.changed() => break,
            }
        }
        // In-flight deliveries finish; what they accept meanwhile is saved as it comes.
        loop {
            tokio::select! {
                Some(r) = self.reported.recv() => self.apply_reported(r).await,
                done = self.workers.join_next() => match done {
                    Some(Ok((domain, results))) => self.finish_batch(&domain, results).await,
                    Some(Err(_)) => {}
                    None => break,
                },
            }
        }
        // Reported before their task ended, not yet applied.
        if let Ok(r) = self.reported.try_recv() {
            self.apply_reported(r).await;
        }
    }

    /// Sets the `mxgate_queue_*` gauges; the oldest message needs a scan of the queue, so
    /// at most once a second.
    fn refresh_gauges(&mut self) {
        if self
            .oldest_at
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.oldest_age = self
                .core
                .oldest_received()
                .map(|t| now_unix().saturating_sub(t))
                .unwrap_or(0);
            self.oldest_at = Some(std::time::Instant::now());
        }
        if self.core.is_empty() {
            self.oldest_age = 0;
        }
        metrics::queue_state(self.core.len(), self.oldest_age);
    }

    /// A delivery task ended with the results it did not report.
    pub(super) async fn finish_batch(&mut self, domain: &str, results: Vec<JobResult>) {
        let effects = self.core.finish_batch(domain, results, now_unix());
        self.execute(effects).await;
    }

    /// Results reported by open connections: `first`, and any others already waiting. Their
    /// connections hear back once the effects are carried out (the results recorded).
    async fn apply_reported(&mut self, first: Reported) {
        let mut reported = vec![first];
        while let Ok(r) = self.reported.try_recv() {
            reported.push(r);
        }
        let mut acks = Vec::with_capacity(reported.len());
        let results = reported
            .into_iter()
            .map(|r| {
                acks.push(r.recorded);
                (r.domain, r.result)
            })
            .collect();
        let effects = self.core.apply_reported(results, now_unix());
        self.execute(effects).await;
        for ack in acks {
            let _ = ack.send(());
        }
    }

    /// Reads message `mid` back from the spool into the queue (unless it is there already).
    pub(super) async fn load(&mut self, mid: u64) {
        let spool = self.spool.clone();
        let loaded = blocking(move || read_queued(&spool, mid))
            .await
            .unwrap_or(Loaded::Missing);
        let effects = self.core.admit(mid, loaded);
        self.execute(effects).await;
    }

    /// Handles one command from a [`QueueHandle`].
    pub(super) async fn command(&mut self, c: Command) {
        match c {
            Command::Enqueued(mid, None) => self.load(mid).await,
            Command::Enqueued(mid, Some(c)) => {
                let size = match &c.body {
                    Some(b) => b.bytes.len() as u64,
                    // Spilled to disk: its header read back, not a sync.
                    None => self.spool.read_queued(mid).map(|q| q.size).unwrap_or(0),
                };
                self.core.admit_committed(mid, c.env, c.body, size);
            }
            Command::Reconfigure(r) => {
                let Reconfiguration {
                    routes,
                    destinations,
                    outbound,
                    settings,
                    resolver,
                } = *r;
                // Connections under way finish with what they started with.
                self.worker = Arc::new(WorkerContext {
                    tls: outbound,
                    alert_enabled: destinations.alert.enabled,
                    helo_name: settings.hostname.clone(),
                    resolver,
                    ..(*self.worker).clone()
                });
                self.core.reconfigure(settings, routes, destinations);
            }
            Command::Retry(which, reply) => {
                let _ = reply.send(self.core.retry(which));
            }
            Command::Delete(mid, reply) => {
                let effects = self.core.delete(mid);
                let ok = effects.is_some();
                self.execute(effects.unwrap_or_default()).await;
                let _ = reply.send(ok);
            }
            Command::Bounce(mid, reply) => {
                let ok = match self.core.bounce(mid, now_unix()) {
                    Some(effects) => self.execute(effects).await,
                    None => false,
                };
                let _ = reply.send(ok);
            }
        }
    }

    /// Carries out `effects` in order; false when a DSN among them could not be committed.
    ///
    /// Durability rests on the order, which this keeps exactly: each effect that records
    /// something (SaveState, SendDsn, RemoveMessage, RemoveFinished) is finished before the
    /// next effect starts, and the core emits them in the order the guarantees need
    /// (docs/delivery.md):
    /// - a DSN is committed before any recipient it covers is saved as bounced: SendDsn
    ///   comes first, and the round's SaveState or RemoveMessage only from
    ///   [`QueueState::dsn_done`], which runs after the commit and whose effects run next;
    /// - a message's files are removed only once its final outcome is durable: after its DSN,
    ///   or (everything delivered) with nothing else to record;
    /// - what a connection reported is saved before the next report is applied, and before
    ///   the connection sends its next message, so a crash
    ///   re-delivers at most the message whose reply was just in.
    ///
    /// A delivery state is saved and a finished message's files are unlinked right here, on
    /// the manager's thread: each is a few short metadata calls into the page cache (no
    /// fsync), and on the blocking pool they used to queue behind inbound commits' fsyncs,
    /// the window in which a `kill -9` delivered a message again (docs/spool.md). What a
    /// crash of the process cannot undo, only a power loss can: the directory fsync that
    /// makes a removal durable against that is not waited for (one, shared with inbound
    /// commits, for each batch). DSN commits run on tokio's blocking pool, one level deep:
    /// never a blocking task that waits for another.
    async fn execute(&mut self, effects: Vec<Effect>) -> bool {
        let mut todo: VecDeque<Effect> = effects.into();
        let mut dsns_committed = true;
        while let Some(effect) = todo.pop_front() {
            match effect {
                Effect::Log(e) => self.log.log(&e),
                Effect::LogTogether(events) => self.log.log_many(&events),
                Effect::StartBatch(batch) => self.start(batch),
                Effect::SaveState { mid, state } => {
                    if let Err(e) = state.save_in(&self.spool, mid) {
                        tracing::error!("MID {mid}: cannot save delivery state: {e}");
                    }
                }
                Effect::RemoveMessage(mid) => self.remove(&[(mid, true)]),
                Effect::RemoveFinished(done) => self.remove(&done),
                Effect::SendDsn {
                    mid,
                    rids,
                    env,
                    failed,
                } => {
                    // Commits on the blocking pool itself, and waits for it.
                    let outcome =
                        bounce::send_dsn(&self.spool, &self.core.settings.hostname, &env, &failed)
                            .await;
                    dsns_committed &= outcome.is_ok();
                    let then = self.core.dsn_done(mid, &rids, &outcome, now_unix());
                    if let Ok(Some(dsn_mid)) = outcome {
                        Box::pin(self.load(dsn_mid)).await;
                    }
                    for e in then.into_iter().rev() {
                        todo.push_front(e);
                    }
                }
                Effect::SendAlert { to, domain, reason } => {
                    let hostname = self.core.settings.hostname.clone();
                    match bounce::send_alert(&self.spool, &hostname, &to, &domain, &reason).await {
                        Ok(mid) => {
                            self.log.log(&Event::Note {
                                level: Level::Warning,
                                text: format!(
                                    "MID {mid} alert to {to}: required TLS to {domain} failed"
                                ),
                            });
                            Box::pin(self.load(mid)).await;
                        }
                        Err(e) => self.log.log(&Event::Note {
                            level: Level::Warning,
                            text: format!(
                                "could not queue the required-TLS alert for {domain}: {e}"
                            ),
                        }),
                    }
                }
            }
        }
        dsns_committed
    }

    /// Unlinks the files of finished messages (MID, whether a delivery state may exist) now,
    /// and leaves the directory fsync that makes it survive a power loss to the blocking
    /// pool, not waited for.
    fn remove(&self, done: &[(u64, bool)]) {
        for &(mid, state) in done {
            self.spool.unlink_message_files(mid, state);
        }
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || spool.sync_queue_dir());
    }

    /// Starts a delivery task for `batch`.
    fn start(&mut self, batch: Batch) {
        let Batch {
            domain,
            route,
            control,
            turn,
            jobs,
            feed,
        } = batch;
        let (Some(route), Some(feed)) = (route, feed) else {
            let reason = format!("no SMTP route for {domain} (policies/routes.yaml)");
            let results = worker::all_temporary(&jobs, 0, "4.3.5", &reason);
            self.workers.spawn(async move { (domain, results) });
            return;
        };
        Feed::report_to(&feed, domain.clone(), self.reported_tx.clone());
        let ctx = self.worker.clone();
        self.workers.spawn(async move {
            let r = worker::deliver_batch_guarded(
                ctx,
                domain.clone(),
                route,
                control,
                turn,
                jobs,
                feed,
            )
            .await;
            (domain, r)
        });
    }
}
