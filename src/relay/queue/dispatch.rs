//! Dispatch: due messages become jobs on per-destination lanes, and lanes get connections
//! within the concurrency limits.

use std::collections::{BTreeMap, VecDeque};

use crate::config::outbound::{DestinationControl, Route};
use crate::mail_log::Event;
use crate::relay::worker::{Feed, Job, SharedFeed};

use super::core::{domain_of, QueueState};
use super::effect::Effect;

/// A delivery connection to start: a batch of jobs for one destination.
#[derive(Debug)]
pub(crate) struct Batch {
    /// The destination domain (its lane).
    pub domain: String,
    /// Where to deliver; `None` when no route matches (the batch is deferred).
    pub route: Option<Route>,
    /// The destination's controls.
    pub control: DestinationControl,
    /// The lane's round-robin counter for this connection.
    pub turn: usize,
    /// Its first jobs.
    pub jobs: Vec<Job>,
    /// Where more jobs for the open connection come from.
    pub feed: Option<SharedFeed>,
}

/// The jobs and delivery connections of one destination domain.
pub(super) struct Lane {
    /// Jobs waiting for a connection.
    pub(super) jobs: VecDeque<Job>,
    /// Delivery tasks running for this lane.
    pub(super) active: usize,
    /// Round-robin counter over equal-priority hosts, one step per new connection.
    pub(super) turn: usize,
    /// Feeds of this lane's open connections (closed ones are dropped at each dispatch).
    pub(super) feeds: Vec<SharedFeed>,
}

impl QueueState {
    /// Turns the messages due at `now` into jobs on their destination lanes and starts
    /// connections within the total and per-destination limits.
    pub(crate) fn dispatch(&mut self, now: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        let due: Vec<u64> = self
            .due
            .range(..=(now, u64::MAX))
            .map(|(_, m)| *m)
            .collect();
        for mid in due {
            let body_path = self.message_path(mid);
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
            let size = q.size;
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
                        body_path: body_path.clone(),
                        body: body.clone(),
                        size,
                        smtputf8: q.env.rcpts.iter().any(|r| !r.is_ascii())
                            || !q.env.from.is_ascii(),
                        eightbitmime: q.env.body_8bitmime,
                    });
                }
            }
            if q.jobs_in_flight == 0 {
                // Every recipient already final (e.g. a crash right after the last save).
                self.forget(mid);
                effects.push(Effect::RemoveMessage(mid));
                effects.push(Effect::Log(Event::MessageFinished {
                    mid,
                    how: "done".into(),
                }));
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
                lane.active += 1;
                self.active_total += 1;
                let Some(route) = route.clone() else {
                    // Deferred by a task of its own, so it comes back like any batch.
                    effects.push(Effect::StartBatch(Batch {
                        domain: domain.clone(),
                        route: None,
                        control: control.clone(),
                        turn: lane.turn,
                        jobs: batch,
                        feed: None,
                    }));
                    continue;
                };
                lane.turn = lane.turn.wrapping_add(1);
                let feed = Feed::new(batch.len());
                lane.feeds.push(feed.clone());
                effects.push(Effect::StartBatch(Batch {
                    domain: domain.clone(),
                    route: Some(route),
                    control: control.clone(),
                    turn: lane.turn,
                    jobs: batch,
                    feed: Some(feed),
                }));
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
        effects
    }
}
