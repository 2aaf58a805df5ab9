//! The queue manager: picks up spooled messages (also those left from before a restart),
//! schedules delivery per destination, applies outcomes, retries, bounces and removes
//! a message only when every recipient has a final outcome.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::outbound::{DestinationControls, RouteTable};
use crate::mail_log::{Event, Level, MailLog};
use crate::metrics;
use crate::relay::bounce;
use crate::relay::dsn::FailedRecipient;
use crate::relay::handle::{CachedBody, Command, Committed, QueueHandle};
use crate::relay::schedule::RetryPolicy;
use crate::relay::state::{DeliveryState, Final};
use crate::relay::worker::{self, Feed, Job, JobResult, Outcome, SharedFeed, WorkerContext};
use crate::spool::{Envelope, Spool};

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
    bounced_this_round: Vec<FailedRecipient>,
}

struct Lane {
    jobs: VecDeque<Job>,
    active: usize,
    turn: usize,
    /// Feeds of this lane's open connections (closed ones are dropped at each dispatch).
    feeds: Vec<SharedFeed>,
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
}

/// Longest the manager sleeps without refreshing `mxgate_queue_*` gauges.
const GAUGE_REFRESH: Duration = Duration::from_secs(2);

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

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
        };
        let handle = QueueHandle::new(tx, m.body_budget.clone());
        (m, handle)
    }

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
        for mid in self.spool.queued_mids() {
            self.load(mid);
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
                Some(done) = workers.join_next(), if !workers.is_empty() => {
                    if let Ok((domain, results)) = done {
                        self.finish_batch(&domain, results).await;
                    }
                }
                _ = tokio::time::sleep(sleep_for) => {}
                _ = stop.changed() => break,
            }
        }
        while let Some(done) = workers.join_next().await {
            if let Ok((domain, results)) = done {
                self.finish_batch(&domain, results).await;
            }
        }
    }

    async fn command(&mut self, c: Command) {
        match c {
            Command::Enqueued(mid, None) => self.load(mid),
            Command::Enqueued(mid, Some(c)) => self.load_committed(mid, *c),
            Command::Reconfigure {
                routes,
                destinations,
                outbound,
            } => {
                // Connections under way finish with what they started with.
                self.worker = Arc::new(WorkerContext {
                    tls: outbound,
                    alert_enabled: destinations.alert.enabled,
                    ..(*self.worker).clone()
                });
                self.routes = routes;
                self.controls = destinations;
            }
            Command::Retry(which, reply) => {
                let mids: Vec<u64> = match which {
                    Some(mid) => vec![mid],
                    None => self.messages.keys().copied().collect(),
                };
                let (mut due, mut busy) = (0, 0);
                for mid in mids {
                    match self.messages.get_mut(&mid) {
                        // Its round's outcome decides the next try: nothing to change now.
                        Some(q) if q.jobs_in_flight > 0 => busy += 1,
                        Some(q) => {
                            q.state.next_try = 0;
                            self.file_due(mid);
                            due += 1;
                        }
                        None => {}
                    }
                }
                let _ = reply.send((due, busy));
            }
            Command::Delete(mid, reply) => {
                let ok = match self.messages.get(&mid) {
                    Some(q) if q.jobs_in_flight == 0 => {
                        self.forget(mid);
                        self.spool.remove_message(mid);
                        self.log.log(&Event::MessageFinished {
                            mid,
                            how: "deleted by administrator".into(),
                        });
                        true
                    }
                    _ => false,
                };
                let _ = reply.send(ok);
            }
            Command::Bounce(mid, reply) => {
                let ok = match self.messages.get_mut(&mid) {
                    Some(q) if q.jobs_in_flight == 0 => {
                        let pending: Vec<(u32, String)> = q
                            .env
                            .rcpts
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| !q.state.finals.contains_key(&(*i as u32)))
                            .map(|(i, r)| (i as u32, r.clone()))
                            .collect();
                        for (rid, rcpt) in pending {
                            q.state.finals.insert(rid, Final::Bounced);
                            self.log.log(&Event::Bounced {
                                dcid: 0,
                                mid,
                                rid,
                                enhanced: "5.0.0".into(),
                                reason: "bounced by administrator".into(),
                            });
                            q.bounced_this_round.push(FailedRecipient {
                                rcpt,
                                status: "5.0.0".into(),
                                diagnostic: "bounced by administrator".into(),
                                remote_mta: None,
                            });
                        }
                        true
                    }
                    _ => false,
                };
                if ok {
                    self.settle(mid).await;
                }
                let _ = reply.send(ok);
            }
        }
    }

    /// Turns due messages into jobs on their destination lanes and starts connections.
    fn dispatch(&mut self, workers: &mut JoinSet<(String, Vec<JobResult>)>) {
        let now = now_unix();
        let due: Vec<u64> = self
            .due
            .range(..=(now, u64::MAX))
            .map(|(_, m)| *m)
            .collect();
        for mid in due {
            let Some(q) = self.messages.get_mut(&mid) else {
                continue;
            };
            // In flight from here on: out of the due index until its round is settled.
            if let Some(t) = q.due_at.take() {
                self.due.remove(&(t, mid));
            }
            let mut by_domain: BTreeMap<String, Vec<(u32, String)>> = BTreeMap::new();
            for (i, r) in q.env.rcpts.iter().enumerate() {
                if !q.state.finals.contains_key(&(i as u32)) {
                    by_domain
                        .entry(domain_of(r))
                        .or_default()
                        .push((i as u32, r.clone()));
                }
            }
            // Not due again until this round's results are in: `jobs_in_flight` keeps it out of
            // `due`. `next_try` is left alone so a saved state is never "never" after a crash.
            q.temp_this_round = false;
            // Only the first round sends from memory; retries read the spool file.
            let body = q.body.take();
            let size = match &body {
                Some(b) => b.bytes.len() as u64,
                None => std::fs::metadata(self.spool.message_path(mid))
                    .map(|m| m.len())
                    .unwrap_or(0),
            };
            for (domain, rcpts) in by_domain {
                let per = self
                    .controls
                    .for_domain(&domain)
                    .max_recipients_per_message
                    .max(1) as usize;
                for chunk in rcpts.chunks(per) {
                    q.jobs_in_flight += 1;
                    let lane = self.lanes.entry(domain.clone()).or_insert_with(|| Lane {
                        jobs: VecDeque::new(),
                        active: 0,
                        turn: 0,
                        feeds: Vec::new(),
                    });
                    lane.jobs.push_back(Job {
                        mid,
                        from: q.env.from.clone(),
                        rcpts: chunk.to_vec(),
                        body_path: self.spool.message_path(mid),
                        body: body.clone(),
                        size,
                        smtputf8: q.env.rcpts.iter().any(|r| !r.is_ascii())
                            || !q.env.from.is_ascii(),
                    });
                }
            }
            if q.jobs_in_flight == 0 {
                // Every recipient already final (e.g. a crash right after the last save).
                self.forget(mid);
                self.spool.remove_message(mid);
                self.log.log(&Event::MessageFinished {
                    mid,
                    how: "done".into(),
                });
            }
        }
        let domains: Vec<String> = self.lanes.keys().cloned().collect();
        for domain in domains {
            let control = self.controls.for_domain(&domain).clone();
            let route = self.routes.route_for(&domain).cloned();
            let lane = self
                .lanes
                .get_mut(&domain)
                .expect("lane exists: keys just listed");
            let max_per_conn = control.max_messages_per_connection.max(1) as usize;
            // An open connection with nothing waiting takes the next job as soon as its current
            // transaction ends, sooner than a new connection would be ready: feed those first.
            lane.feeds.retain(Feed::is_open);
            for feed in &lane.feeds {
                if !Feed::is_idle(feed) {
                    continue;
                }
                let Some(job) = lane.jobs.pop_front() else {
                    break;
                };
                if let Err(job) = Feed::offer(feed, job, max_per_conn) {
                    lane.jobs.push_front(job);
                }
            }
            while !lane.jobs.is_empty()
                && lane.active < control.max_concurrent_connections as usize
                && self.active_total < self.settings.concurrency
            {
                let n = lane.jobs.len().min(max_per_conn);
                let batch: Vec<Job> = lane.jobs.drain(..n).collect();
                let Some(route) = route.clone() else {
                    let reason = format!("no SMTP route for {domain} (policies/routes.yaml)");
                    let results = worker::all_temporary(&batch, 0, "4.3.5", &reason);
                    let d = domain.clone();
                    lane.active += 1;
                    self.active_total += 1;
                    workers.spawn(async move { (d, results) });
                    continue;
                };
                lane.active += 1;
                lane.turn = lane.turn.wrapping_add(1);
                self.active_total += 1;
                let ctx = self.worker.clone();
                let d = domain.clone();
                let turn = lane.turn;
                let c = control.clone();
                let feed = Feed::new(batch.len());
                lane.feeds.push(feed.clone());
                workers.spawn(async move {
                    let r =
                        worker::deliver_batch_guarded(ctx, d.clone(), route, c, turn, batch, feed)
                            .await;
                    (d, r)
                });
            }
            // No connection to spare: queue the rest on the open connections, up to their
            // per-connection limit; what does not fit waits for a connection to end.
            for feed in &lane.feeds {
                while let Some(job) = lane.jobs.pop_front() {
                    if let Err(job) = Feed::offer(feed, job, max_per_conn) {
                        lane.jobs.push_front(job);
                        break;
                    }
                }
            }
        }
        self.lanes.retain(|_, l| !l.jobs.is_empty() || l.active > 0);
    }

    async fn finish_batch(&mut self, domain: &str, results: Vec<JobResult>) {
        if let Some(l) = self.lanes.get_mut(domain) {
            l.active = l.active.saturating_sub(1);
        }
        self.active_total = self.active_total.saturating_sub(1);
        let now = now_unix();
        let dest = metrics::destination_label(self.controls.for_domain(domain));
        if let Some(reason) = results.iter().find_map(|r| r.tls_alert.clone()) {
            self.alert(domain, &reason).await;
        }
        for r in results {
            for (_, o) in &r.outcomes {
                let result = match o {
                    Outcome::Delivered => "delivered",
                    Outcome::Temporary { .. } => "deferred",
                    Outcome::Permanent { .. } => "bounced",
                };
                metrics::delivery_attempt(&dest, result, 1);
            }
            let Some(q) = self.messages.get_mut(&r.mid) else {
                continue;
            };
            let expired = self.settings.retry.is_expired(q.env.received_unix, now);
            let mut temp_rids = Vec::new();
            let mut temp_reason = None;
            for (rid, outcome) in r.outcomes {
                match outcome {
                    Outcome::Delivered => {
                        q.state.finals.insert(rid, Final::Delivered);
                    }
                    Outcome::Temporary { enhanced, reason } if !expired => {
                        temp_rids.push(rid);
                        temp_reason = Some((enhanced, reason));
                    }
                    Outcome::Temporary { reason, .. } => {
                        q.state.finals.insert(rid, Final::Bounced);
                        let why = format!("message expired in queue, last error: {reason}");
                        self.log.log(&Event::Bounced {
                            dcid: r.dcid,
                            mid: r.mid,
                            rid,
                            enhanced: "4.4.7".into(),
                            reason: why.clone(),
                        });
                        q.bounced_this_round.push(FailedRecipient {
                            rcpt: q.env.rcpts.get(rid as usize).cloned().unwrap_or_default(),
                            status: "4.4.7".into(),
                            diagnostic: why,
                            remote_mta: r.remote.clone(),
                        });
                    }
                    Outcome::Permanent {
                        enhanced,
                        reason,
                        diagnostic,
                    } => {
                        q.state.finals.insert(rid, Final::Bounced);
                        self.log.log(&Event::Bounced {
                            dcid: r.dcid,
                            mid: r.mid,
                            rid,
                            enhanced: enhanced.clone(),
                            reason,
                        });
                        q.bounced_this_round.push(FailedRecipient {
                            rcpt: q.env.rcpts.get(rid as usize).cloned().unwrap_or_default(),
                            status: enhanced,
                            diagnostic,
                            remote_mta: r.remote.clone(),
                        });
                    }
                }
            }
            if let Some((enhanced, reason)) = temp_reason {
                self.log.log(&Event::Delayed {
                    dcid: r.dcid,
                    mid: r.mid,
                    rids: temp_rids,
                    enhanced,
                    reason: reason.clone(),
                });
                q.temp_this_round = true;
                q.state.last_error = Some(reason);
            }
            q.jobs_in_flight = q.jobs_in_flight.saturating_sub(1);
            if q.jobs_in_flight == 0 {
                // Persists the state, or removes the message when every recipient is final.
                self.settle(r.mid).await;
            } else {
                // Persist after every job: a crash now re-delivers at most this job's recipients.
                q.state_on_disk = true;
                if let Err(e) = q.state.save(&self.spool.state_path(r.mid)) {
                    tracing::error!("MID {}: cannot save delivery state: {e}", r.mid);
                }
            }
        }
        let done = std::mem::take(&mut self.finished);
        if !done.is_empty() {
            // Off the manager's (and the listeners') threads: renames in queue/ can wait for
            // its directory fsync. One fsync, shared with inbound commits, covers the batch;
            // nothing has to wait for it (a crash before it delivers these again).
            let spool = self.spool.clone();
            tokio::task::spawn_blocking(move || {
                for (mid, state) in done {
                    spool.unlink_message_files(mid, state);
                }
                spool.sync_queue_dir()
            });
        }
    }

    /// Mails the administrator about a required-TLS failure, at most once per domain per interval.
    async fn alert(&mut self, domain: &str, reason: &str) {
        let alert = &self.controls.alert;
        let (true, Some(to)) = (alert.enabled, alert.mail_to.clone()) else {
            return;
        };
        let now = std::time::Instant::now();
        if self
            .alerts_sent
            .get(domain)
            .is_some_and(|t| now.duration_since(*t) < alert.interval)
        {
            return;
        }
        self.alerts_sent.insert(domain.to_string(), now);
        match bounce::send_alert(&self.spool, &self.settings.hostname, &to, domain, reason).await {
            Ok(mid) => {
                self.log.log(&Event::Note {
                    level: Level::Warning,
                    text: format!("MID {mid} alert to {to}: required TLS to {domain} failed"),
                });
                self.load(mid);
            }
            Err(e) => self.log.log(&Event::Note {
                level: Level::Warning,
                text: format!("could not queue the required-TLS alert for {domain}: {e}"),
            }),
        }
    }

    /// After a round: send DSNs for bounced recipients, schedule a retry, or finish the message.
    async fn settle(&mut self, mid: u64) {
        let Some(q) = self.messages.get_mut(&mid) else {
            return;
        };
        let bounced = std::mem::take(&mut q.bounced_this_round);
        let all_final = (0..q.env.rcpts.len() as u32).all(|rid| q.state.finals.contains_key(&rid));
        if all_final && bounced.is_empty() {
            // The common case, every recipient delivered: no state to persist, just remove
            // (a crash before the removal is durable delivers the message again: at least once).
            let state_on_disk = q.state_on_disk;
            self.forget(mid);
            self.finished.push((mid, state_on_disk));
            self.log.log(&Event::MessageFinished {
                mid,
                how: "done".into(),
            });
            return;
        }
        if q.temp_this_round {
            q.state.attempts += 1;
            q.state.next_try =
                now_unix() + self.settings.retry.delay_after(q.state.attempts).as_secs();
        } else {
            q.state.next_try = now_unix();
        }
        q.state_on_disk = true;
        let _ = q.state.save(&self.spool.state_path(mid));
        let env = q.env.clone();
        self.file_due(mid);
        if !bounced.is_empty() {
            match bounce::send_dsn(&self.spool, &self.settings.hostname, &env, &bounced).await {
                Ok(Some(dsn_mid)) => {
                    self.log.log(&Event::BounceGenerated {
                        mid: dsn_mid,
                        original: mid,
                    });
                    self.load(dsn_mid);
                }
                Ok(None) => self.log.log(&Event::Note {
                    level: Level::Warning,
                    text: format!(
                        "MID {mid} double bounce: the sender is null, no DSN generated, dropped"
                    ),
                }),
                Err(e) => self.log.log(&Event::Note {
                    level: Level::Warning,
                    text: format!("MID {mid} could not queue its DSN: {e}"),
                }),
            }
        }
        if all_final {
            self.forget(mid);
            self.spool.remove_message(mid);
            self.log.log(&Event::MessageFinished {
                mid,
                how: "done".into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{MailLogFormat, MailLogTarget};
    use crate::relay::client::ClientTimeouts;
    use crate::relay::outbound_tls::OutboundTlsContext;
    use std::sync::atomic::Ordering;

    fn manager(spool: Arc<Spool>, log_path: std::path::PathBuf) -> QueueManager {
        let log =
            Arc::new(MailLog::open(&MailLogTarget::File(log_path), MailLogFormat::Text).unwrap());
        let worker = Arc::new(WorkerContext {
            spool: spool.clone(),
            log: log.clone(),
            tls: Arc::new(OutboundTlsContext::new(None).unwrap()),
            helo_name: "mx.test".into(),
            timeouts: ClientTimeouts::default(),
            alert_enabled: true,
            resolver: crate::net::dns::ReverseResolver::for_tests(),
        });
        let settings = RelaySettings {
            concurrency: 1,
            retry: RetryPolicy::default(),
            hostname: "mx.test".into(),
        };
        QueueManager::new(spool, log, Arc::default(), Arc::default(), settings, worker).0
    }

    fn queue_one(spool: &Spool) -> u64 {
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

    #[tokio::test]
    async fn only_due_messages_are_dispatched_and_the_due_index_follows_them() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(&dir.path().join("spool")).unwrap());
        let later = queue_one(&spool);
        let st = DeliveryState {
            attempts: 3,
            next_try: now_unix() + 3600,
            ..Default::default()
        };
        st.save(&spool.state_path(later)).unwrap();
        let now = queue_one(&spool);
        let mut m = manager(spool.clone(), dir.path().join("mail.log"));
        m.load(later);
        m.load(now);
        let fresh = 10_000;
        m.load_committed(
            fresh,
            Committed {
                env: Envelope {
                    mid: fresh,
                    ..m.messages[&now].env.clone()
                },
                body: CachedBody::reserve(b"Subject: x\r\n\r\nbody\r\n".to_vec(), &m.body_budget),
            },
        );
        // Received just now (queue_one's envelopes are from 1970: they would expire and bounce).
        for q in m.messages.values_mut() {
            q.env.received_unix = now_unix();
        }
        assert_eq!(m.due.len(), 3);
        assert_eq!(m.body_budget.load(Ordering::Relaxed), 20);
        let mut workers = JoinSet::new();
        m.dispatch(&mut workers);
        // The two due messages are in flight (here: no route, so a temporary result each);
        // the deferred one stays filed under its own time.
        assert_eq!(
            m.due.iter().copied().collect::<Vec<_>>(),
            [(m.messages[&later].state.next_try, later)]
        );
        assert!(m.messages[&now].jobs_in_flight > 0 && m.messages[&fresh].jobs_in_flight > 0);
        // Retrying a message in delivery changes nothing, and says so.
        let (tx, rx) = tokio::sync::oneshot::channel();
        m.command(Command::Retry(Some(now), tx)).await;
        assert_eq!(rx.await.unwrap(), (0, 1));
        assert!(!m.due.iter().any(|(_, mid)| *mid == now));
        while let Some(Ok((domain, results))) = workers.join_next().await {
            m.finish_batch(&domain, results).await;
        }
        // Settled as deferred: back in the index, after now; the cached body is given back.
        assert_eq!(m.due.len(), 3);
        assert!(m.due.iter().all(|(t, _)| *t > now_unix()));
        assert_eq!(m.body_budget.load(Ordering::Relaxed), 0);
        let (tx, rx) = tokio::sync::oneshot::channel();
        m.command(Command::Retry(Some(later), tx)).await;
        assert_eq!(rx.await.unwrap(), (1, 0));
        assert_eq!(m.due.first(), Some(&(0, later)));
        let (tx, rx) = tokio::sync::oneshot::channel();
        m.command(Command::Retry(Some(999_999), tx)).await;
        assert_eq!(rx.await.unwrap(), (0, 0), "an unknown MID is not retried");
        let (tx, _rx) = tokio::sync::oneshot::channel();
        m.command(Command::Delete(later, tx)).await;
        assert_eq!(m.due.len(), 2);
        assert!(!m.messages.contains_key(&later));
    }
}
