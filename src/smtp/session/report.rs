//! Mail to a TLS-RPT report address (`policies/tlsrpt.yaml`): the RCPT is accepted past the
//! RAT, the message is kept in memory as it streams (up to the intake's limit), and at its
//! end the driver takes the report out ([`Action::IngestReport`]) before anything is
//! queued. A message only to report addresses is answered by the intake's outcome
//! ([`check_report`]); one with other recipients (or under `relay: true`) is then committed
//! as usual and answered by the commit.

use super::{Action, Phase, Session};
use crate::envelope::Envelope;
use crate::mail_log::Event;
use crate::policy::check::data::check_report;
use crate::policy::check::Permit;
use crate::tlsrpt::ingest::Outcome;
use crate::tlsrpt::intake::MAX_REPORT_MAIL;

/// The message as received, for the intake.
#[derive(Debug, Default)]
pub(super) struct ReportCopy {
    bytes: Vec<u8>,
    /// It passed [`MAX_REPORT_MAIL`]: the bytes were dropped.
    over: bool,
}

impl ReportCopy {
    /// Appends message bytes, dropping everything once past the limit.
    pub(super) fn push(&mut self, bytes: &[u8]) {
        if self.over {
            return;
        }
        if self.bytes.len() + bytes.len() > MAX_REPORT_MAIL {
            self.over = true;
            self.bytes = Vec::new();
            return;
        }
        self.bytes.extend_from_slice(bytes);
    }

    /// The message, or `None` when it passed the limit.
    fn into_message(self) -> Option<Vec<u8>> {
        (!self.over).then_some(self.bytes)
    }
}

impl Session {
    /// Accepts a report address: logged as such, and queued for the internal server only
    /// under `relay: true`.
    pub(super) fn accept_report(&mut self, addr: String, permit: Permit) {
        let relayed = self.p.reports.as_ref().is_some_and(|r| r.relay);
        let icid = self.p.icid;
        let Some(t) = self.txn.as_mut() else { return };
        let mid = t.mid;
        let first = !t.reports.iter().any(|a| a.eq_ignore_ascii_case(&addr));
        if first {
            t.reports.push(addr.clone());
            self.log(Event::ReportRecipient {
                mid,
                icid,
                rcpt: addr.clone(),
                relayed,
            });
        }
        if relayed {
            // Stored, logged and counted like any recipient (duplicates merged there).
            return self.accept_recipient(addr, permit);
        }
        if let Some(t) = self.txn.as_mut() {
            t.rcpts_accepted += 1;
        }
        self.permit(permit);
    }

    /// At the end of DATA: whether the message goes to the intake first. `env` is what is
    /// queued afterwards, if anything; `copy` the message as received.
    pub(super) fn ingest_report(
        &mut self,
        env: Option<Envelope>,
        copy: Option<ReportCopy>,
    ) -> Option<Envelope> {
        let Some(copy) = copy else { return env };
        if self.txn.as_ref().is_none_or(|t| t.reports.is_empty()) {
            return env;
        }
        self.actions.push(Action::IngestReport(copy.into_message()));
        self.phase = Phase::Ingesting(env.map(Box::new));
        None
    }

    /// The answer to [`Action::IngestReport`]: logs the outcome, then commits what else is
    /// to be queued, or answers the message by the outcome.
    pub fn report_ingested(&mut self, outcome: Outcome) {
        let Phase::Ingesting(env) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return;
        };
        let Some(mid) = self.txn.as_ref().map(|t| t.mid) else {
            return;
        };
        self.log(Event::TlsRptReport {
            via: format!("MID {mid}"),
            outcome: outcome.label(),
            detail: outcome.describe(),
        });
        if let Some(env) = env {
            self.actions.push(Action::CommitMessage(*env));
            self.phase = Phase::Committing;
            return;
        }
        self.txn = None;
        self.body.clear();
        self.actions.push(Action::AbortMessage);
        match check_report(&outcome) {
            Ok(permit) => {
                self.messages += 1;
                self.mail_without_message = 0;
                self.refused_rcpts = 0;
                self.log(Event::MessageFinished {
                    mid,
                    how: "done".into(),
                });
                self.permit(permit);
            }
            Err(d) => {
                self.deny("message".into(), Some(mid), d);
                self.log(Event::MessageFinished {
                    mid,
                    how: "aborted".into(),
                });
            }
        }
    }
}
