//! Dispatch: due messages become jobs on per-destination lanes, and lanes get connections
//! within the concurrency limits.

use std::collections::{BTreeMap, VecDeque};

use tokio::task::JoinSet;

use crate::mail_log::Event;
use crate::relay::worker::{self, Feed, Job, JobResult, SharedFeed};

use super::{domain_of, now_unix, QueueManager};

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

impl QueueManager {
    /// Turns due messages into jobs on their destination lanes and starts connections.
    pub(super) fn dispatch(&mut self, workers: &mut JoinSet<(String, Vec<JobResult>)>) {
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
                        eightbitmime: q.env.body_8bitmime,
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
                let feed = Feed::reporting(batch.len(), domain.clone(), self.reported_tx.clone());
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use crate::relay::handle::{CachedBody, Command, Committed};
    use crate::relay::queue::tests::{manager, queue_one};
    use crate::relay::state::DeliveryState;
    use crate::spool::Spool;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

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
