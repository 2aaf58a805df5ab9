//! After DATA, with sender authentication on (`spf` or `dmarc` not `off`): the message is
//! held in memory instead of streaming to the spool, so that our `Authentication-Results`
//! (RFC 8601) can follow our `Received:` header and forged ones can be removed before a byte
//! is written. At the end of DATA the session asks the driver for DKIM and DMARC
//! ([`Action::AuthenticateMessage`]), then [`Session::message_authenticated`] decides
//! (`check::message_auth`), writes the header section and commits.
//!
//! The copy is bounded by the policy's message size limit: a message over it is refused
//! (552) and its bytes dropped, as without authentication.

use std::sync::Arc;

use super::{Action, Phase, Session};
use crate::auth::results::{self, QUARANTINE_HEADER};
use crate::auth::{DnsCheck, MessageAnswer, MessageRequest, SenderRequest};
use crate::envelope::Envelope;
use crate::mail_log::{Event, MessageAuthEvent};
use crate::policy::check::message_auth::{check_message_auth, Disposition, MessageAuthCtx};
use crate::policy::sender_auth::DmarcMode;

use super::report::ReportCopy;

/// The message held back while it streams: our `Received:` header and what the client sent.
#[derive(Debug)]
pub(super) struct HeldMessage {
    received: String,
    bytes: Vec<u8>,
}

impl HeldMessage {
    /// Holds a message that will start with `received`.
    pub(super) fn new(received: String) -> Self {
        HeldMessage {
            received,
            bytes: Vec::new(),
        }
    }

    /// Takes the bytes the DATA reader just produced.
    pub(super) fn take_from(&mut self, body: &mut Vec<u8>, from: usize) {
        self.bytes.extend_from_slice(&body[from..]);
        body.truncate(from);
    }
}

/// A message waiting for its DKIM/DMARC answer.
#[derive(Debug)]
pub(super) struct PendingMessage {
    received: String,
    message: Arc<Vec<u8>>,
    env: Option<Envelope>,
    report: Option<ReportCopy>,
}

impl Session {
    /// At the end of DATA: asks the driver to authenticate the held message.
    pub(super) fn authenticate_message(
        &mut self,
        env: Option<Envelope>,
        report: Option<ReportCopy>,
        held: HeldMessage,
    ) {
        let Some(t) = self.txn.as_ref() else { return };
        let dmarc = self.policy.dmarc != DmarcMode::Off;
        let message = Arc::new(held.bytes);
        let req = MessageRequest {
            message: message.clone(),
            sender: SenderRequest {
                peer_ip: self.p.peer_ip,
                helo: self.helo.clone().unwrap_or_default(),
                from: t.from.clone(),
                host: self.hostname.clone(),
                dns: DnsCheck::Skip,
                // DMARC needs SPF: evaluated now when `spf: off` did not at MAIL FROM.
                spf: t.spf.is_none() && dmarc,
            },
            spf: t.spf.clone(),
            dmarc,
        };
        self.actions.push(Action::AuthenticateMessage(req));
        self.phase = Phase::Authenticating(Box::new(PendingMessage {
            received: held.received,
            message,
            env,
            report,
        }));
    }

    /// The answer to [`Action::AuthenticateMessage`]: logs the results, refuses a DMARC
    /// `p=reject` failure under `enforce`, else writes the message with its
    /// `Authentication-Results` and commits it.
    pub fn message_authenticated(&mut self, answer: MessageAnswer) {
        let Phase::Authenticating(p) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return;
        };
        let p = *p;
        let Some(mid) = self.txn.as_ref().map(|t| t.mid) else {
            return;
        };
        self.log_message_auth(mid, &answer);
        let decision = check_message_auth(&MessageAuthCtx {
            policy: &self.policy,
            answer: &answer,
        });
        let disposition = match decision {
            Ok(d) => d,
            Err(d) => {
                self.deny("message".into(), Some(mid), d);
                self.drop_refused_message(mid);
                return;
            }
        };
        let dmarc_asked = self.policy.dmarc != DmarcMode::Off;
        let mut head = p.received;
        head.push_str(&results::render(&self.hostname, &answer, dmarc_asked));
        if disposition == Disposition::Quarantine {
            head.push_str(&format!("{QUARANTINE_HEADER}: quarantine\r\n"));
            let domain = answer
                .dmarc
                .as_ref()
                .map(|d| d.from_domain.clone())
                .unwrap_or_default();
            self.log(Event::MessageAuth(MessageAuthEvent::DmarcQuarantined {
                mid,
                domain,
            }));
        }
        let ours = [self.hostname.as_str(), self.p.hostname.as_str()];
        let (message, removed) = results::strip_forged(&p.message, &ours);
        if removed != results::Forged::default() {
            self.log(Event::MessageAuth(MessageAuthEvent::ForgedHeaders {
                mid,
                removed,
                authserv_id: self.hostname.clone(),
            }));
        }
        self.body.extend_from_slice(head.as_bytes());
        self.body.extend_from_slice(&message);
        if let Some(env) = self.ingest_report(p.env, p.report) {
            self.actions.push(Action::CommitMessage(env));
            self.phase = Phase::Committing;
        }
    }

    /// ESA's per-message lines: SPF (when evaluated only now), each DKIM signature, DMARC.
    fn log_message_auth(&mut self, mid: u64, answer: &MessageAnswer) {
        if answer.spf_now {
            if let Some(o) = &answer.spf {
                self.log(Event::Spf {
                    icid: self.p.icid,
                    mid: Some(mid),
                    identity: o.identity,
                    address: o.address.clone(),
                    result: o.result,
                });
            }
        }
        // A malformed header section is refused before any lookup: nothing to log here.
        if self.policy.dmarc == DmarcMode::Off || answer.header.is_some_and(|p| p.is_malformed()) {
            return;
        }
        if answer.dkim.is_empty() {
            self.log(Event::MessageAuth(MessageAuthEvent::DkimNone { mid }));
        }
        for s in &answer.dkim {
            self.log(Event::MessageAuth(MessageAuthEvent::Dkim {
                mid,
                signature: s.clone(),
            }));
        }
        if let Some(d) = &answer.dmarc {
            self.log(Event::MessageAuth(MessageAuthEvent::Dmarc {
                mid,
                outcome: d.clone(),
            }));
        }
    }
}
