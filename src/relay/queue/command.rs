//! Commands to the queue manager (a message queued by a listener, a reload, and the
//! administrator's retry, delete and bounce), and the queue's answer to the last three.

use crate::mail_log::{Event, Level};
use crate::relay::dsn::{Diagnostic, FailedRecipient};
use crate::relay::state::Final;

use super::core::QueueState;
use super::effect::Effect;
use super::handle::Committed;

/// Requests to the queue manager.
#[derive(Debug)]
pub enum Command {
    /// A message was committed to the spool; with its envelope and body when the caller
    /// has them at hand (the manager then need not read them back).
    Enqueued(u64, Option<Box<Committed>>),
    /// Deliver now: one message, or all; answered with how many were made due, and how many
    /// of those asked for are being delivered right now (left alone).
    Retry(Option<u64>, tokio::sync::oneshot::Sender<(usize, usize)>),
    /// Remove a message without delivering it.
    Delete(u64, tokio::sync::oneshot::Sender<bool>),
    /// Bounce every pending recipient of a message now.
    Bounce(u64, tokio::sync::oneshot::Sender<bool>),
    /// New routes, destination controls and delivery settings after a configuration reload.
    Reconfigure(Box<Reconfiguration>),
}

/// What a configuration reload changes for the relay.
#[derive(Debug)]
pub struct Reconfiguration {
    /// SMTP routes.
    pub routes: std::sync::Arc<crate::config::outbound::RouteTable>,
    /// Destination controls.
    pub destinations: std::sync::Arc<crate::config::outbound::DestinationControls>,
    /// Outbound TLS with the client certificate and CA bundles read again.
    pub outbound: std::sync::Arc<crate::relay::outbound_tls::OutboundTlsContext>,
    /// `delivery:` settings (concurrency, retries, host name).
    pub settings: super::RelaySettings,
    /// A resolver on the new `dns:` settings, for MX lookups.
    pub resolver: crate::dns::ReverseResolver,
}

impl QueueState {
    /// `retry`: makes one message (or all) due now; how many were made due, and how many
    /// of those asked for are in delivery right now (left alone: their round's outcome
    /// decides their next try).
    pub(crate) fn retry(&mut self, which: Option<u64>) -> (usize, usize) {
        let mids: Vec<u64> = match which {
            Some(mid) => vec![mid],
            None => self.messages.keys().copied().collect(),
        };
        let (mut due, mut busy) = (0, 0);
        for mid in mids {
            match self.messages.get_mut(&mid) {
                Some(q) if q.jobs_in_flight > 0 => busy += 1,
                Some(q) => {
                    q.state.next_try = 0;
                    self.file_due(mid);
                    due += 1;
                }
                None => {}
            }
        }
        (due, busy)
    }

    /// `delete`: removes a message that is not in delivery right now; `None` when there
    /// is no such message.
    pub(crate) fn delete(&mut self, mid: u64) -> Option<Vec<Effect>> {
        match self.messages.get(&mid) {
            Some(q) if q.jobs_in_flight == 0 => {}
            _ => return None,
        }
        self.forget(mid);
        Some(vec![
            Effect::RemoveMessage(mid),
            // ESA's word is `aborted`; the line before says why.
            Effect::LogTogether(vec![
                Event::Note {
                    level: Level::Info,
                    text: format!("mxgate: MID {mid} deleted by administrator"),
                },
                Event::MessageFinished {
                    mid,
                    how: "aborted".into(),
                },
            ]),
        ])
    }

    /// `bounce`: bounces every pending recipient of a message that is not in delivery right
    /// now; `None` when there is no such message. Done only when its DSN is committed: if
    /// it is not, the recipients stay pending.
    pub(crate) fn bounce(&mut self, mid: u64, now: u64) -> Option<Vec<Effect>> {
        let q = match self.messages.get_mut(&mid) {
            Some(q) if q.jobs_in_flight == 0 => q,
            _ => return None,
        };
        let mut effects = Vec::new();
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
            effects.push(Effect::Log(Event::Bounced {
                dcid: 0,
                mid,
                rid,
                enhanced: "5.0.0".into(),
                reason: "bounced by administrator".into(),
            }));
            q.bounced_this_round.push((
                rid,
                FailedRecipient {
                    rcpt,
                    status: "5.0.0".into(),
                    diagnostic: Diagnostic::Local("bounced by administrator".into()),
                    remote_mta: None,
                },
            ));
        }
        self.settle(mid, now, &mut effects);
        Some(effects)
    }
}
