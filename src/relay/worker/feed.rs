//! The feed: jobs handed to a delivery connection that is already open, and the channel
//! its results go back through as each transaction ends.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::job::{Job, JobResult};

/// Jobs handed to a delivery connection that is already open: it takes them after its own,
/// up to the destination's `max_messages_per_connection`, so a busy destination is served
/// over few connections instead of one connection per message. The worker closes the feed
/// (under its lock) when it stops taking, so a job is never left behind in it.
#[derive(Debug)]
pub(crate) struct Feed {
    jobs: VecDeque<Job>,
    open: bool,
    /// Jobs the connection was given in all: its first batch and those fed since.
    given: usize,
    /// The fed jobs the connection took (without their in-memory bodies), so they can be
    /// answered for if the connection's task dies.
    taken: Vec<Job>,
    /// Where each transaction's result goes as soon as it ends, with the lane's domain.
    report: Option<(String, ResultSender)>,
    /// Jobs whose result went through `report`: the first ones given, in order.
    pub(super) reported: usize,
}

/// The queue manager's end for results reported while a connection is open.
pub(crate) type ResultSender = tokio::sync::mpsc::UnboundedSender<Reported>;

/// A transaction's result on its way to the queue manager, with the lane's domain and the
/// manager's word back once the result is recorded on disk (state saved, or the message's
/// file removed). The connection sends no other message before that word: a crash then
/// delivers again at most the one message whose `250` was just in.
#[derive(Debug)]
pub(crate) struct Reported {
    /// The lane's domain.
    pub domain: String,
    /// The result.
    pub result: JobResult,
    /// Dropped (or sent) once the result is recorded.
    pub recorded: tokio::sync::oneshot::Sender<()>,
}

/// Resolves once the manager recorded a reported result (or is gone).
pub(crate) type Recorded = tokio::sync::oneshot::Receiver<()>;

/// A feed shared by the queue manager (which offers) and one worker (which takes).
pub(crate) type SharedFeed = Arc<Mutex<Feed>>;

impl Feed {
    /// An open feed for a connection that starts with `first_batch` jobs.
    pub(crate) fn new(first_batch: usize) -> SharedFeed {
        Arc::new(Mutex::new(Feed {
            jobs: VecDeque::new(),
            open: true,
            given: first_batch,
            taken: Vec::new(),
            report: None,
            reported: 0,
        }))
    }

    /// [`Feed::new`], and the connection sends each message's result to `report` as soon as
    /// its transaction ends (so it is saved before the connection closes).
    #[cfg(test)]
    pub(crate) fn reporting(
        first_batch: usize,
        domain: String,
        report: ResultSender,
    ) -> SharedFeed {
        let feed = Feed::new(first_batch);
        Feed::report_to(&feed, domain, report);
        feed
    }

    /// From now on, the connection sends each message's result to `report` as soon as its
    /// transaction ends, with the lane's `domain`.
    pub(crate) fn report_to(feed: &SharedFeed, domain: String, report: ResultSender) {
        feed.lock().unwrap_or_else(|e| e.into_inner()).report = Some((domain, report));
    }

    /// Hands `result` to the queue manager now, and what resolves when it is recorded; gives
    /// the result back when nobody takes reports.
    pub(super) fn report(feed: &SharedFeed, result: JobResult) -> Result<Recorded, JobResult> {
        let mut f = feed.lock().unwrap_or_else(|e| e.into_inner());
        let Some((domain, tx)) = &f.report else {
            return Err(result);
        };
        let (recorded, done) = tokio::sync::oneshot::channel();
        let r = Reported {
            domain: domain.clone(),
            result,
            recorded,
        };
        match tx.send(r) {
            Ok(()) => {
                f.reported += 1;
                Ok(done)
            }
            Err(e) => Err(e.0.result),
        }
    }

    /// Gives `job` to the connection unless it stopped taking or has `max` jobs already.
    pub(crate) fn offer(feed: &SharedFeed, job: Job, max: usize) -> Result<(), Job> {
        let mut f = feed.lock().unwrap_or_else(|e| e.into_inner());
        if f.open && f.given < max {
            f.given += 1;
            f.jobs.push_back(job);
            Ok(())
        } else {
            Err(job)
        }
    }

    /// True while the connection takes jobs and none are waiting in the feed.
    pub(crate) fn is_idle(feed: &SharedFeed) -> bool {
        let f = feed.lock().unwrap_or_else(|e| e.into_inner());
        f.open && f.jobs.is_empty()
    }

    /// True while the connection takes jobs.
    pub(crate) fn is_open(feed: &SharedFeed) -> bool {
        feed.lock().unwrap_or_else(|e| e.into_inner()).open
    }

    /// The next fed job; when there is none the feed closes.
    pub(super) fn take(feed: &SharedFeed) -> Option<Job> {
        let mut f = feed.lock().unwrap_or_else(|e| e.into_inner());
        let job = f.jobs.pop_front();
        match &job {
            Some(j) => f.taken.push(j.without_body()),
            None => f.open = false,
        }
        job
    }

    /// Closes the feed and returns every job fed to it: taken or still waiting.
    pub(super) fn close_all(feed: &SharedFeed) -> Vec<Job> {
        let mut f = feed.lock().unwrap_or_else(|e| e.into_inner());
        f.open = false;
        let mut all = std::mem::take(&mut f.taken);
        all.extend(f.jobs.drain(..));
        all
    }

    /// Closes the feed and returns what was waiting in it.
    pub(crate) fn close(feed: &SharedFeed) -> Vec<Job> {
        let mut f = feed.lock().unwrap_or_else(|e| e.into_inner());
        f.open = false;
        f.jobs.drain(..).collect()
    }
}
