//! The queue manager: picks up spooled messages (also those left from before a restart),
//! schedules delivery per destination, applies outcomes, retries, bounces and removes
//! a message only when every recipient has a final outcome.
//! Its parts: `command` (what a [`QueueHandle`] asks), `dispatch` (due messages onto lanes
//! and connections) and `outcome` (results applied, DSNs, retries, removal).

mod command;
mod dispatch;
mod outcome;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::outbound::{DestinationControls, RouteTable};
use crate::envelope::Envelope;
use crate::mail_log::{Event, Level, MailLog};
use crate::metrics;
use crate::relay::dsn::FailedRecipient;
use crate::relay::handle::{CachedBody, Command, Committed, QueueHandle};
use crate::relay::schedule::RetryPolicy;
use crate::relay::state::DeliveryState;
use crate::relay::worker::{JobResult, ResultSender, WorkerContext};
use crate::spool::Spool;

use dispatch::Lane;

/// Delivery settings from mxgate.yaml.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Simultaneous delivery connections in total.
    pub concurrency: usize,
    /// Retry schedule and queue lifetime.
    pub retry: RetryPolicy,
    /// Our host name in EHLO and DSNs.
    pub hostname: String,
}

struct Queued {
    env: Envelope,
    state: DeliveryState,
    /// A delivery state file may exist (so removal must delete it).
    state_on_disk: bool,
    /// The body in memory, for the first delivery attempt only.
    body: Option<Arc<CachedBody>>,
    /// Its `next_try` as filed in the manager's due index, while no job is in flight.
    due_at: Option<u64>,
    jobs_in_flight: usize,
    temp_this_round: bool,
    /// Recipients bounced in this round (by RID), for its DSN: they count as final on disk
    /// only once the DSN is committed.
    bounced_this_round: Vec<(u32, FailedRecipient)>,
}

/// The queue manager task.
pub struct QueueManager {
    spool: Arc<Spool>,
    log: Arc<MailLog>,
    routes: Arc<RouteTable>,
    controls: Arc<DestinationControls>,
    settings: RelaySettings,
    worker: Arc<WorkerContext>,
    rx: mpsc::UnboundedReceiver<Command>,
    messages: BTreeMap<u64, Queued>,
    /// (next_try, MID) of every message with no job in flight: what is due is a range of
    /// it, so a long queue (a destination down for hours) costs nothing per new message.
    due: BTreeSet<(u64, u64)>,
    /// When the oldest-message gauge was last computed (a scan of the whole queue).
    oldest_at: Option<std::time::Instant>,
    /// Its value then.
    oldest_age: u64,
    lanes: HashMap<String, Lane>,
    active_total: usize,
    /// When the last required-TLS alert mail went out, per destination domain.
    alerts_sent: HashMap<String, std::time::Instant>,
    /// Delivered messages whose files are to be removed after the current batch, and
    /// whether each may have a delivery state file.
    finished: Vec<(u64, bool)>,
    /// Bytes of [`CachedBody`] alive.
    body_budget: Arc<AtomicUsize>,
    /// Results connections report as each transaction ends (see [`Feed::reporting`](crate::relay::worker::Feed::reporting)).
    reported: mpsc::UnboundedReceiver<(String, JobResult)>,
    /// The sending end given to each new connection.
    reported_tx: ResultSender,
}

/// Longest the manager sleeps without refreshing `mxgate_queue_*` gauges.
const GAUGE_REFRESH: Duration = Duration::from_secs(2);

/// Seconds since the Unix epoch.
fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The domain of a recipient address, lower-cased.
fn domain_of(rcpt: &str) -> String {
    rcpt.rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

impl QueueManager {
    /// Creates the manager and its handle; run it with [`QueueManager::run`].
    pub fn new(
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
            spool,
            log,
            routes,
            controls,
            settings,
            worker,
            rx,
            messages: BTreeMap::new(),
            due: BTreeSet::new(),
            oldest_at: None,
            oldest_age: 0,
            lanes: HashMap::new(),
            active_total: 0,
            alerts_sent: HashMap::new(),
            finished: Vec::new(),
            body_budget: Arc::new(AtomicUsize::new(0)),
            reported,
            reported_tx,
        };
        let handle = QueueHandle::new(tx, m.body_budget.clone());
        (m, handle)
    }

    /// Reads message `mid` back from the spool into the queue (unless it is there already).
    fn load(&mut self, mid: u64) {
        if self.messages.contains_key(&mid) {
            return;
        }
        let text = match std::fs::read_to_string(self.spool.envelope_path(mid)) {
            Ok(t) => t,
            Err(_) => return,
        };
        let env = match Envelope::parse(&text) {
            Ok(e) => e,
            Err(e) => {
                self.log.log(&Event::Note {
                    level: Level::Warning,
                    text: format!("MID {mid} envelope unreadable, left in queue: {e}"),
                });
                return;
            }
        };
        let state = DeliveryState::load(&self.spool.state_path(mid));
        if (0..env.rcpts.len() as u32).all(|rid| state.finals.contains_key(&rid)) {
            // Every recipient was final before a crash or restart: finish the removal now.
            self.spool.remove_message(mid);
            self.log.log(&Event::MessageFinished {
                mid,
                how: "done".into(),
            });
            return;
        }
        self.messages.insert(
            mid,
            Queued {
                env,
                state,
                state_on_disk: true,
                body: None,
                due_at: None,
                jobs_in_flight: 0,
                temp_this_round: false,
                bounced_this_round: Vec::new(),
            },
        );
        self.file_due(mid);
    }

    /// Takes a message a listener has just committed, with its envelope and body: nothing
    /// to read back, and no delivery state can exist yet.
    fn load_committed(&mut self, mid: u64, c: Committed) {
        if self.messages.contains_key(&mid) {
            return;
        }
        let body = c.body.map(Arc::new);
        self.messages.insert(
            mid,
            Queued {
                env: c.env,
                state: DeliveryState::default(),
                state_on_disk: false,
                body,
                due_at: None,
                jobs_in_flight: 0,
                temp_this_round: false,
                bounced_this_round: Vec::new(),
            },
        );
        self.file_due(mid);
    }

    /// Files message `mid` in the due index under its current `next_try` when no job of it
    /// is in flight (and takes out a stale entry). Call after every change of either.
    fn file_due(&mut self, mid: u64) {
        let Some(q) = self.messages.get_mut(&mid) else {
            return;
        };
        if let Some(t) = q.due_at.take() {
            self.due.remove(&(t, mid));
        }
        if q.jobs_in_flight == 0 {
            q.due_at = Some(q.state.next_try);
            self.due.insert((q.state.next_try, mid));
        }
    }

    /// Brings message `mid`'s next try forward to `at` at the latest (in memory only: the
    /// saved state, and the attempt count the back-off is computed from, stay as they are).
    fn due_by(&mut self, mid: u64, at: u64) {
        if let Some(q) = self.messages.get_mut(&mid) {
            q.state.next_try = q.state.next_try.min(at);
            self.file_due(mid);
        }
    }

    /// Takes message `mid` out of the queue's memory (its files are the caller's business).
    fn forget(&mut self, mid: u64) {
        if let Some(q) = self.messages.remove(&mid) {
            if let Some(t) = q.due_at {
                self.due.remove(&(t, mid));
            }
        }
    }

    /// Runs until `stop` turns true; in-flight deliveries finish first.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        self.spool.remove_orphans();
        let now = now_unix();
        for (i, mid) in self.spool.queued_mids().into_iter().enumerate() {
            self.load(mid);
            // A saved next try may be up to `retry_max` away, though the internal server may
            // be back by now: try the queue soon, spread out (50 a second, all within a minute).
            self.due_by(mid, now + (i as u64 / 50).min(60));
        }
        let mut workers: JoinSet<(String, Vec<JobResult>)> = JoinSet::new();
        loop {
            self.dispatch(&mut workers);
            // The oldest message needs a scan of the queue: at most once a second.
            if self
                .oldest_at
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            {
                let oldest = self.messages.values().map(|q| q.env.received_unix).min();
                self.oldest_age = oldest.map(|t| now_unix().saturating_sub(t)).unwrap_or(0);
                self.oldest_at = Some(std::time::Instant::now());
            }
            if self.messages.is_empty() {
                self.oldest_age = 0;
            }
            metrics::queue_state(self.messages.len(), self.oldest_age);
            let next_due = self.due.first().map(|(t, _)| *t);
            let sleep_for = match next_due {
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
                Some(done) = workers.join_next(), if !workers.is_empty() => {
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
                done = workers.join_next() => match done {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{MailLogFormat, MailLogTarget};
    use crate::relay::client::ClientTimeouts;
    use crate::relay::outbound_tls::OutboundTlsContext;
    use crate::relay::state::Final;

    pub(super) fn manager(spool: Arc<Spool>, log_path: std::path::PathBuf) -> QueueManager {
        let log =
            Arc::new(MailLog::open(&MailLogTarget::File(log_path), MailLogFormat::Text).unwrap());
        let worker = Arc::new(WorkerContext {
            spool: spool.clone(),
            log: log.clone(),
            tls: Arc::new(OutboundTlsContext::new(None).unwrap()),
            helo_name: "mx.test".into(),
            timeouts: ClientTimeouts::default(),
            alert_enabled: true,
            resolver: crate::dns::ReverseResolver::for_tests(),
        });
        let settings = RelaySettings {
            concurrency: 1,
            retry: RetryPolicy::default(),
            hostname: "mx.test".into(),
        };
        QueueManager::new(spool, log, Arc::default(), Arc::default(), settings, worker).0
    }

    pub(super) fn queue_one(spool: &Spool) -> u64 {
        let mid = spool.next_mid().unwrap();
        let mut inc = spool.begin(mid);
        inc.write(b"Subject: x\r\n\r\nbody\r\n").unwrap();
        let env = Envelope {
            mid,
            icid: 1,
            listener: "l".into(),
            sender_group: "G".into(),
            policy: "P".into(),
            peer_ip: "192.0.2.1".parse().unwrap(),
            helo: "h".into(),
            from: "a@b.example".into(),
            rcpts: vec!["c@example.com".into(), "d@example.com".into()],
            received_unix: 1,
            tls: None,
            body_8bitmime: false,
        };
        spool.commit(inc, &env).unwrap();
        mid
    }

    #[test]
    fn a_message_final_before_a_crash_is_removed_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(&dir.path().join("spool")).unwrap());
        let mid = queue_one(&spool);
        let mut st = DeliveryState::default();
        st.finals.insert(0, Final::Delivered);
        st.finals.insert(1, Final::Bounced);
        st.save(&spool.state_path(mid)).unwrap();
        let mut m = manager(spool.clone(), dir.path().join("mail.log"));
        m.load(mid);
        assert!(m.messages.is_empty());
        assert!(!spool.envelope_path(mid).exists() && !spool.message_path(mid).exists());
        let log = std::fs::read_to_string(dir.path().join("mail.log")).unwrap();
        assert!(
            log.contains(&format!("Message finished MID {mid} done")),
            "{log}"
        );
    }

    #[test]
    fn a_partly_delivered_message_keeps_its_pending_recipients_and_is_due() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(&dir.path().join("spool")).unwrap());
        let mid = queue_one(&spool);
        let mut st = DeliveryState::default();
        st.finals.insert(0, Final::Delivered);
        st.next_try = 5;
        st.save(&spool.state_path(mid)).unwrap();
        let mut m = manager(spool.clone(), dir.path().join("mail.log"));
        m.load(mid);
        let q = &m.messages[&mid];
        assert!(
            q.state.next_try <= now_unix(),
            "due at once after a restart"
        );
        assert!(q.state.finals.contains_key(&0) && !q.state.finals.contains_key(&1));
    }
}
