//! Delivery results: a finished batch is applied per recipient, required-TLS failures are
//! alerted, and each message is settled (DSN, next retry, or removal).

use crate::envelope::Envelope;
use crate::mail_log::{Event, Level};
use crate::metrics;
use crate::relay::bounce;
use crate::relay::dsn::{Diagnostic, FailedRecipient};
use crate::relay::state::Final;
use crate::relay::worker::{JobResult, Outcome};

use super::{now_unix, QueueManager};

impl QueueManager {
    /// A delivery task on `domain`'s lane ended: applies the results it did not report
    /// while its connection was open.
    pub(super) async fn finish_batch(&mut self, domain: &str, results: Vec<JobResult>) {
        if let Some(l) = self.lanes.get_mut(domain) {
            l.active = l.active.saturating_sub(1);
        }
        self.active_total = self.active_total.saturating_sub(1);
        self.apply_results(domain, results).await;
        self.remove_finished();
    }

    /// Applies results a connection reported as each transaction ended (`first`, and any
    /// others already waiting), while the connection may still be open: what was accepted
    /// is saved now, so a crash before the connection ends does not deliver it again.
    pub(super) async fn apply_reported(&mut self, first: (String, JobResult)) {
        let mut next = Some(first);
        while let Some((domain, r)) = next {
            self.apply_results(&domain, vec![r]).await;
            next = self.reported.try_recv().ok();
        }
        self.remove_finished();
    }

    /// Applies delivery results for `domain` per recipient and settles each message whose
    /// round is complete.
    async fn apply_results(&mut self, domain: &str, results: Vec<JobResult>) {
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
                        q.bounced_this_round.push((
                            rid,
                            FailedRecipient {
                                rcpt: q.env.rcpts.get(rid as usize).cloned().unwrap_or_default(),
                                status: "4.4.7".into(),
                                diagnostic: Diagnostic::Local(why),
                                remote_mta: r.remote.clone(),
                            },
                        ));
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
                        q.bounced_this_round.push((
                            rid,
                            FailedRecipient {
                                rcpt: q.env.rcpts.get(rid as usize).cloned().unwrap_or_default(),
                                status: enhanced,
                                diagnostic: Diagnostic::Smtp(diagnostic),
                                remote_mta: r.remote.clone(),
                            },
                        ));
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
                // Those bounced this round stay pending on disk until their DSN is committed.
                q.state_on_disk = true;
                let mut durable = q.state.clone();
                for (rid, _) in &q.bounced_this_round {
                    durable.finals.remove(rid);
                }
                if let Err(e) = durable.save_in(&self.spool, r.mid) {
                    tracing::error!("MID {}: cannot save delivery state: {e}", r.mid);
                }
            }
        }
    }

    /// Removes the files of the messages finished since the last call.
    fn remove_finished(&mut self) {
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

    /// After a round: send DSNs for bounced recipients, schedule a retry, or finish the
    /// message. False when a DSN could not be queued: its recipients then stay pending and
    /// the message is retried later, as after a temporary failure.
    pub(super) async fn settle(&mut self, mid: u64) -> bool {
        let Some(q) = self.messages.get_mut(&mid) else {
            return false;
        };
        let bounced = std::mem::take(&mut q.bounced_this_round);
        let mut dsn_queued = true;
        if !bounced.is_empty() {
            // The DSN is committed before any recipient is saved as bounced, so a crash or a
            // failed commit never removes a message without its bounce (a crash in between
            // bounces it again: a DSN may come twice, never not at all).
            let env = q.env.clone();
            let failed: Vec<FailedRecipient> = bounced.iter().map(|(_, f)| f.clone()).collect();
            let error = self.queue_dsn(&env, &failed).await;
            let Some(q) = self.messages.get_mut(&mid) else {
                return false;
            };
            if let Some(e) = error {
                dsn_queued = false;
                for (rid, _) in &bounced {
                    q.state.finals.remove(rid);
                }
                q.temp_this_round = true;
                q.state.last_error = Some(format!("could not queue the DSN: {e}"));
            }
        }
        let Some(q) = self.messages.get_mut(&mid) else {
            return false;
        };
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
            return true;
        }
        if all_final {
            self.forget(mid);
            self.spool.remove_message(mid);
            self.log.log(&Event::MessageFinished {
                mid,
                how: "done".into(),
            });
            return dsn_queued;
        }
        if q.temp_this_round {
            q.state.attempts += 1;
            q.state.next_try =
                now_unix() + self.settings.retry.delay_after(q.state.attempts).as_secs();
        } else {
            q.state.next_try = now_unix();
        }
        q.state_on_disk = true;
        let _ = q.state.save_in(&self.spool, mid);
        self.file_due(mid);
        dsn_queued
    }

    /// Commits a DSN to the sender of `env` for `failed` and queues it; the error when it
    /// could not be committed (a null sender needs none: a double bounce is dropped).
    async fn queue_dsn(&mut self, env: &Envelope, failed: &[FailedRecipient]) -> Option<String> {
        let mid = env.mid;
        match bounce::send_dsn(&self.spool, &self.settings.hostname, env, failed).await {
            Ok(Some(dsn_mid)) => {
                self.log.log(&Event::BounceGenerated {
                    mid: dsn_mid,
                    original: mid,
                });
                self.load(dsn_mid);
                None
            }
            Ok(None) => {
                self.log.log(&Event::Note {
                    level: Level::Warning,
                    text: format!(
                        "MID {mid} double bounce: the sender is null, no DSN generated, dropped"
                    ),
                });
                None
            }
            Err(e) => {
                self.log.log(&Event::Note {
                    level: Level::Warning,
                    text: format!(
                        "MID {mid} could not queue its DSN, its bounced recipients stay queued: {e}"
                    ),
                });
                Some(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::relay::queue::tests::{manager, queue_one};
    use crate::relay::state::DeliveryState;
    use crate::relay::worker::{JobResult, Outcome};
    use crate::spool::Spool;

    #[tokio::test]
    async fn trust_06_a_bounce_is_not_saved_while_its_dsn_waits_for_the_rest_of_the_round() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(&dir.path().join("spool")).unwrap());
        let mid = queue_one(&spool);
        let mut m = manager(spool.clone(), dir.path().join("mail.log"));
        m.load(mid);
        // Two jobs in flight (e.g. two connections); the first bounces RID 0.
        m.messages.get_mut(&mid).unwrap().jobs_in_flight = 2;
        let bounced = JobResult {
            mid,
            dcid: 7,
            remote: Some("mx.example.com".into()),
            outcomes: vec![(
                0,
                Outcome::Permanent {
                    enhanced: "5.1.1".into(),
                    reason: "no such user".into(),
                    diagnostic: "550 5.1.1 no such user".into(),
                },
            )],
            tls_alert: None,
        };
        m.finish_batch("example.com", vec![bounced]).await;
        // A crash now must not find RID 0 final: no DSN has been committed for it yet.
        let on_disk = DeliveryState::load(&spool.state_path(mid));
        assert!(on_disk.finals.is_empty(), "{on_disk:?}");
        let delivered = JobResult {
            mid,
            dcid: 8,
            remote: Some("mx.example.com".into()),
            outcomes: vec![(1, Outcome::Delivered)],
            tls_alert: None,
        };
        m.finish_batch("example.com", vec![delivered]).await;
        // The round is complete: one DSN queued, then the original removed.
        assert!(!spool.envelope_path(mid).exists());
        let queued = spool.queued_mids();
        assert_eq!(queued.len(), 1, "the DSN");
        let log = std::fs::read_to_string(dir.path().join("mail.log")).unwrap();
        assert_eq!(
            log.matches(&format!("was generated for bounce of MID {mid}"))
                .count(),
            1,
            "{log}"
        );
    }
}
