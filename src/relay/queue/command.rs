//! Commands to the queue manager: a message queued by a listener, a reload, and the
//! administrator's retry, delete and bounce.

use std::sync::Arc;

use crate::mail_log::Event;
use crate::relay::dsn::{Diagnostic, FailedRecipient};
use crate::relay::handle::{Command, Reconfiguration};
use crate::relay::state::Final;
use crate::relay::worker::WorkerContext;

use super::QueueManager;

impl QueueManager {
    /// Handles one command from a [`QueueHandle`](crate::relay::handle::QueueHandle).
    pub(super) async fn command(&mut self, c: Command) {
        match c {
            Command::Enqueued(mid, None) => self.load(mid),
            Command::Enqueued(mid, Some(c)) => self.load_committed(mid, *c),
            Command::Reconfigure(r) => {
                let Reconfiguration {
                    routes,
                    destinations,
                    outbound,
                    settings,
                    resolver,
                } = *r;
                // Connections under way finish with what they started with. A message's next
                // try stays as scheduled; the new retry delays apply from its next failure.
                self.worker = Arc::new(WorkerContext {
                    tls: outbound,
                    alert_enabled: destinations.alert.enabled,
                    helo_name: settings.hostname.clone(),
                    resolver,
                    ..(*self.worker).clone()
                });
                self.settings = settings;
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
                        // ESA's word is `aborted`; the line before says why.
                        self.log.log_many(&[
                            Event::Note {
                                level: crate::mail_log::Level::Info,
                                text: format!("mxgate: MID {mid} deleted by administrator"),
                            },
                            Event::MessageFinished {
                                mid,
                                how: "aborted".into(),
                            },
                        ]);
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
                            q.bounced_this_round.push((
                                rid,
                                FailedRecipient {
                                    rcpt,
                                    status: "5.0.0".into(),
                                    diagnostic: Diagnostic::Local(
                                        "bounced by administrator".into(),
                                    ),
                                    remote_mta: None,
                                },
                            ));
                        }
                        true
                    }
                    _ => false,
                };
                // Not done when the DSN could not be queued: the recipients stay pending.
                let ok = ok && self.settle(mid).await;
                let _ = reply.send(ok);
            }
        }
    }
}
