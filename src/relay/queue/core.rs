//! The queue's state and the decisions over it, as plain synchronous code: each entry point
//! takes `now` (seconds since the epoch) and returns the [`Effect`]s to carry out, in order.
//! Nothing here touches the disk, the clock, a socket or a task; the
//! [`QueueManager`](super::QueueManager) does, so these decisions are tested with a made-up
//! `now` and no sleeping.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::outbound::{DestinationControls, RouteTable};
use crate::envelope::Envelope;
use crate::mail_log::{Event, Level};
use crate::relay::dsn::FailedRecipient;
use crate::relay::state::DeliveryState;

use super::dispatch::Lane;
use super::effect::Effect;
use super::handle::CachedBody;
use super::RelaySettings;

/// One message in the queue, with its delivery progress.
pub(super) struct Queued {
    pub(super) env: Envelope,
    pub(super) state: DeliveryState,
    /// A delivery state file may exist (so removal must delete it).
    pub(super) state_on_disk: bool,
    /// The body in memory, for the first delivery attempt only.
    pub(super) body: Option<Arc<CachedBody>>,
    /// Body size in bytes, for `SIZE=`.
    pub(super) size: u64,
    /// Its `next_try` as filed in the due index, while no job is in flight.
    pub(super) due_at: Option<u64>,
    pub(super) jobs_in_flight: usize,
    pub(super) temp_this_round: bool,
    /// Recipients bounced in this round (by RID), for its DSN: they count as final on disk
    /// only once the DSN is committed.
    pub(super) bounced_this_round: Vec<(u32, FailedRecipient)>,
}

/// A queued message as read back from the spool.
#[derive(Debug)]
pub(crate) enum Loaded {
    /// No envelope (removed meanwhile, or never committed).
    Missing,
    /// The envelope does not parse: the reason.
    Unreadable(String),
    /// Envelope, delivery state (default when none) and body size.
    Found {
        /// The envelope.
        env: Box<Envelope>,
        /// The delivery state.
        state: DeliveryState,
        /// Body size in bytes.
        size: u64,
    },
}

/// Every queued message, the due index, the lanes and the limits they are run under.
pub(crate) struct QueueState {
    pub(super) settings: RelaySettings,
    pub(super) routes: Arc<RouteTable>,
    pub(super) controls: Arc<DestinationControls>,
    /// `spool/queue/`, where the bodies are (jobs carry their path).
    pub(super) queue_dir: PathBuf,
    pub(super) messages: BTreeMap<u64, Queued>,
    /// (next_try, MID) of every message with no job in flight: what is due is a range of
    /// it, so a long queue (a destination down for hours) costs nothing per new message.
    pub(super) due: BTreeSet<(u64, u64)>,
    pub(super) lanes: HashMap<String, Lane>,
    pub(super) active_total: usize,
    /// When the last required-TLS alert mail went out, per destination domain.
    pub(super) alerts_sent: HashMap<String, u64>,
    /// Delivered messages whose files are to be removed after the current batch, and
    /// whether each may have a delivery state file.
    pub(super) finished: Vec<(u64, bool)>,
}

/// The domain of a recipient address, lower-cased.
pub(super) fn domain_of(rcpt: &str) -> String {
    rcpt.rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

impl QueueState {
    /// An empty queue whose bodies are in `queue_dir`.
    pub(crate) fn new(
        settings: RelaySettings,
        routes: Arc<RouteTable>,
        controls: Arc<DestinationControls>,
        queue_dir: PathBuf,
    ) -> Self {
        QueueState {
            settings,
            routes,
            controls,
            queue_dir,
            messages: BTreeMap::new(),
            due: BTreeSet::new(),
            lanes: HashMap::new(),
            active_total: 0,
            alerts_sent: HashMap::new(),
            finished: Vec::new(),
        }
    }

    /// The queue file of message `mid` (as [`Spool::message_path`](crate::spool::Spool::message_path)).
    pub(super) fn message_path(&self, mid: u64) -> PathBuf {
        crate::spool::queue_file::path(&self.queue_dir, mid)
    }

    /// Takes message `mid` as read back from the spool (unless it is queued already).
    pub(crate) fn admit(&mut self, mid: u64, loaded: Loaded) -> Vec<Effect> {
        if self.messages.contains_key(&mid) {
            return Vec::new();
        }
        let (env, state, size) = match loaded {
            Loaded::Missing => return Vec::new(),
            Loaded::Unreadable(e) => {
                return vec![Effect::Log(Event::Note {
                    level: Level::Warning,
                    text: format!("MID {mid} queue file unreadable, left in queue: {e}"),
                })]
            }
            Loaded::Found { env, state, size } => (*env, state, size),
        };
        if (0..env.rcpts.len() as u32).all(|rid| state.finals.contains_key(&rid)) {
            // Every recipient was final before a crash or restart: finish the removal now.
            return vec![
                Effect::RemoveMessage(mid),
                Effect::Log(Event::MessageFinished {
                    mid,
                    how: "done".into(),
                }),
            ];
        }
        self.insert(mid, env, state, true, None, size);
        Vec::new()
    }

    /// Takes a message a listener has just committed, with its envelope and body: nothing
    /// to read back, and no delivery state can exist yet.
    pub(crate) fn admit_committed(
        &mut self,
        mid: u64,
        env: Envelope,
        body: Option<CachedBody>,
        size: u64,
    ) {
        if self.messages.contains_key(&mid) {
            return;
        }
        let body = body.map(Arc::new);
        self.insert(mid, env, DeliveryState::default(), false, body, size);
    }

    fn insert(
        &mut self,
        mid: u64,
        env: Envelope,
        state: DeliveryState,
        state_on_disk: bool,
        body: Option<Arc<CachedBody>>,
        size: u64,
    ) {
        self.messages.insert(
            mid,
            Queued {
                env,
                state,
                state_on_disk,
                body,
                size,
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
    pub(super) fn file_due(&mut self, mid: u64) {
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
    pub(crate) fn due_by(&mut self, mid: u64, at: u64) {
        if let Some(q) = self.messages.get_mut(&mid) {
            q.state.next_try = q.state.next_try.min(at);
            self.file_due(mid);
        }
    }

    /// Takes message `mid` out of the queue's memory (its files are the caller's business).
    pub(super) fn forget(&mut self, mid: u64) {
        if let Some(q) = self.messages.remove(&mid) {
            if let Some(t) = q.due_at {
                self.due.remove(&(t, mid));
            }
        }
    }

    /// When the earliest message is due (seconds since the epoch), if any is waiting.
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.due.first().map(|(t, _)| *t)
    }

    /// Messages in the queue.
    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }

    /// True when no message is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// When the oldest queued message was received.
    pub(crate) fn oldest_received(&self) -> Option<u64> {
        self.messages.values().map(|q| q.env.received_unix).min()
    }

    /// New limits after a reload. A message's next try stays as scheduled; the new retry
    /// delays apply from its next failure.
    pub(crate) fn reconfigure(
        &mut self,
        settings: RelaySettings,
        routes: Arc<RouteTable>,
        controls: Arc<DestinationControls>,
    ) {
        self.settings = settings;
        self.routes = routes;
        self.controls = controls;
    }
}
