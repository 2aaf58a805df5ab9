//! Delivery results: a finished batch is applied per recipient, required-TLS failures are
//! alerted, and each message's round is settled (DSN, next retry, or removal).

use crate::mail_log::{Event, Level};
use crate::metrics;
use crate::relay::dsn::{Diagnostic, FailedRecipient};
use crate::relay::state::Final;
use crate::relay::worker::{JobResult, Outcome};

use super::core::QueueState;
use super::effect::Effect;

/// What came of committing a DSN: its MID, `None` for a null sender (a double bounce,
/// dropped), or why it could not be committed.
pub(crate) type DsnOutcome = Result<Option<u64>, String>;

impl QueueState {
    /// A delivery task on `domain`'s lane ended: applies the results it did not report
    /// while its connection was open.
    pub(crate) fn finish_batch(
        &mut self,
        domain: &str,
        results: Vec<JobResult>,
        now: u64,
    ) -> Vec<Effect> {
        if let Some(l) = self.lanes.get_mut(domain) {
            l.active = l.active.saturating_sub(1);
        }
        self.active_total = self.active_total.saturating_sub(1);
        let mut effects = Vec::new();
        self.apply_results(domain, results, now, &mut effects);
        self.remove_finished(&mut effects);
        effects
    }

    /// Applies results connections reported as each transaction ended, while they may
    /// still be open: what was accepted is saved now, so a crash before the connection
    /// ends does not deliver it again.
    pub(crate) fn apply_reported(
        &mut self,
        reported: Vec<(String, JobResult)>,
        now: u64,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        for (domain, r) in reported {
            self.apply_results(&domain, vec![r], now, &mut effects);
        }
        self.remove_finished(&mut effects);
        effects
    }

    /// Applies delivery results for `domain` per recipient and settles each message whose
    /// round is complete.
    fn apply_results(
        &mut self,
        domain: &str,
        results: Vec<JobResult>,
        now: u64,
        effects: &mut Vec<Effect>,
    ) {
        let dest = metrics::destination_label(self.controls.for_domain(domain));
        if let Some(reason) = results.iter().find_map(|r| r.tls_alert.clone()) {
            self.alert(domain, &reason, now, effects);
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
                        effects.push(Effect::Log(Event::Bounced {
                            dcid: r.dcid,
                            mid: r.mid,
                            rid,
                            enhanced: "4.4.7".into(),
                            reason: why.clone(),
                        }));
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
                        effects.push(Effect::Log(Event::Bounced {
                            dcid: r.dcid,
                            mid: r.mid,
                            rid,
                            enhanced: enhanced.clone(),
                            reason,
                        }));
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
                effects.push(Effect::Log(Event::Delayed {
                    dcid: r.dcid,
                    mid: r.mid,
                    rids: temp_rids,
                    enhanced,
                    reason: reason.clone(),
                }));
                q.temp_this_round = true;
                q.state.last_error = Some(reason);
            }
            q.jobs_in_flight = q.jobs_in_flight.saturating_sub(1);
            if q.jobs_in_flight == 0 {
                // Persists the state, or removes the message when every recipient is final.
                self.settle(r.mid, now, effects);
            } else {
                // Persist after every job: a crash now re-delivers at most this job's recipients.
                // Those bounced this round stay pending on disk until their DSN is committed.
                q.state_on_disk = true;
                let mut durable = q.state.clone();
                for (rid, _) in &q.bounced_this_round {
                    durable.finals.remove(rid);
                }
                effects.push(Effect::SaveState {
                    mid: r.mid,
                    state: durable,
                });
            }
        }
    }

    /// Hands the messages finished since the last call to removal.
    fn remove_finished(&mut self, effects: &mut Vec<Effect>) {
        let done = std::mem::take(&mut self.finished);
        if !done.is_empty() {
            effects.push(Effect::RemoveFinished(done));
        }
    }

    /// Mails the administrator about a required-TLS failure, at most once per domain per interval.
    fn alert(&mut self, domain: &str, reason: &str, now: u64, effects: &mut Vec<Effect>) {
        let alert = &self.controls.alert;
        let (true, Some(to)) = (alert.enabled, alert.mail_to.clone()) else {
            return;
        };
        let interval = alert.interval.as_secs();
        if self
            .alerts_sent
            .get(domain)
            .is_some_and(|t| now.saturating_sub(*t) < interval)
        {
            return;
        }
        self.alerts_sent.insert(domain.to_string(), now);
        effects.push(Effect::SendAlert {
            to,
            domain: domain.to_string(),
            reason: reason.to_string(),
        });
    }

    /// After a round: a DSN for the recipients bounced in it (the round then ends in
    /// [`QueueState::dsn_done`] once the DSN is committed, or not), else the round ends now.
    pub(super) fn settle(&mut self, mid: u64, now: u64, effects: &mut Vec<Effect>) {
        let Some(q) = self.messages.get_mut(&mid) else {
            return;
        };
        let bounced = std::mem::take(&mut q.bounced_this_round);
        if bounced.is_empty() {
            self.end_round(mid, false, now, effects);
            return;
        }
        // The DSN is committed before any recipient is saved as bounced, so a crash or a
        // failed commit never removes a message without its bounce (a crash in between
        // bounces it again: a DSN may come twice, never not at all).
        effects.push(Effect::SendDsn {
            mid,
            rids: bounced.iter().map(|(rid, _)| *rid).collect(),
            env: q.env.clone(),
            failed: bounced.into_iter().map(|(_, f)| f).collect(),
        });
    }

    /// The DSN for message `mid`'s recipients `rids` was committed, or could not be: the
    /// round ends. When it could not, those recipients stay pending and the message is
    /// retried later, as after a temporary failure.
    pub(crate) fn dsn_done(
        &mut self,
        mid: u64,
        rids: &[u32],
        outcome: &DsnOutcome,
        now: u64,
    ) -> Vec<Effect> {
        let mut effects = vec![Effect::Log(match outcome {
            Ok(Some(dsn_mid)) => Event::BounceGenerated {
                mid: *dsn_mid,
                original: mid,
            },
            Ok(None) => Event::Note {
                level: Level::Warning,
                text: format!(
                    "MID {mid} double bounce: the sender is null, no DSN generated, dropped"
                ),
            },
            Err(e) => Event::Note {
                level: Level::Warning,
                text: format!(
                    "MID {mid} could not queue its DSN, its bounced recipients stay queued: {e}"
                ),
            },
        })];
        let Some(q) = self.messages.get_mut(&mid) else {
            return effects;
        };
        if let Err(e) = outcome {
            for rid in rids {
                q.state.finals.remove(rid);
            }
            q.temp_this_round = true;
            q.state.last_error = Some(format!("could not queue the DSN: {e}"));
        }
        self.end_round(mid, true, now, &mut effects);
        effects
    }

    /// Ends message `mid`'s round: removal when every recipient is final, else the next
    /// try saved (after the retry delay when something failed temporarily this round).
    fn end_round(&mut self, mid: u64, had_bounces: bool, now: u64, effects: &mut Vec<Effect>) {
        let Some(q) = self.messages.get_mut(&mid) else {
            return;
        };
        let all_final = (0..q.env.rcpts.len() as u32).all(|rid| q.state.finals.contains_key(&rid));
        let finished = Effect::Log(Event::MessageFinished {
            mid,
            how: "done".into(),
        });
        if all_final && !had_bounces {
            // The common case, every recipient delivered: no state to persist, just remove
            // (a crash before the removal is durable delivers the message again: at least once).
            let state_on_disk = q.state_on_disk;
            self.forget(mid);
            self.finished.push((mid, state_on_disk));
            effects.push(finished);
            return;
        }
        if all_final {
            self.forget(mid);
            effects.push(Effect::RemoveMessage(mid));
            effects.push(finished);
            return;
        }
        if q.temp_this_round {
            q.state.attempts += 1;
            q.state.next_try = now + self.settings.retry.delay_after(q.state.attempts).as_secs();
        } else {
            q.state.next_try = now;
        }
        q.state_on_disk = true;
        effects.push(Effect::SaveState {
            mid,
            state: q.state.clone(),
        });
        self.file_due(mid);
    }
}
