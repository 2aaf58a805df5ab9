//! `RCPT TO` with recipient validation: the session asks the driver
//! ([`Action::ValidateRecipient`]) and waits in `Phase::Validating`; the answer comes back
//! through [`Session::recipient_validated`], and [`rcpt::check_rcpt_verdict`] decides the
//! reply. Pipelined commands behind the RCPT wait in the driver's buffer, so replies stay
//! in order.

use std::sync::Arc;

use super::{Action, Phase, Session};
use crate::mail_log::{Event, Level};
use crate::policy::check::rcpt::{self, RcptPermit};
use crate::policy::check::DenialReason;
use crate::smtp::address::Mailbox;
use crate::smtp::reply::Reply;
use crate::validate::breaker::Transition;
use crate::validate::destination::{Checked, Source};
use crate::validate::rule::{OnTempFail, RecipientValidation, ValidationRequest};
use crate::validate::Verdict;

/// A RCPT waiting for its validation answer.
#[derive(Debug)]
pub(super) struct PendingRcpt {
    to: Mailbox,
    addr: String,
    postmaster: bool,
    rule: Arc<RecipientValidation>,
    reply: Option<Reply>,
}

impl Session {
    /// Parks the RCPT and asks the driver to validate its recipient.
    pub(super) fn validate_recipient(
        &mut self,
        to: Mailbox,
        addr: String,
        postmaster: bool,
        rule: Arc<RecipientValidation>,
        reply: Option<Reply>,
    ) {
        self.actions
            .push(Action::ValidateRecipient(ValidationRequest {
                address: addr.clone(),
                rule: rule.clone(),
            }));
        self.phase = Phase::Validating(Box::new(PendingRcpt {
            to,
            addr,
            postmaster,
            rule,
            reply,
        }));
    }

    /// The answer to [`Action::ValidateRecipient`]: decides and answers the waiting RCPT.
    pub fn recipient_validated(&mut self, checked: Checked) {
        let Phase::Validating(p) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return;
        };
        let icid = self.p.icid;
        if let Some(t) = checked.transition {
            let detail = &checked.answer.detail;
            let (level, text) = match t {
                Transition::Opened { failures } => (
                    Level::Warning,
                    format!(
                        "recipient validation breaker open after {failures} consecutive failures (last: {detail}); on_tempfail applies until a trial lookup succeeds"
                    ),
                ),
                Transition::Reopened => (
                    Level::Warning,
                    format!("recipient validation breaker open again: trial lookup failed ({detail})"),
                ),
                Transition::Closed => (
                    Level::Info,
                    format!("recipient validation breaker closed: trial lookup answered ({detail})"),
                ),
            };
            self.log(Event::Note { level, text });
        }
        let Some(mid) = self.txn.as_ref().map(|t| t.mid) else {
            return;
        };
        let verdict = self.with_rcpt_ctx(&p.to, &p.addr, p.postmaster, false, |ctx| {
            rcpt::check_rcpt_verdict(ctx, &p.rule, p.reply.clone(), &checked)
        });
        let Some(verdict) = verdict else { return };
        match verdict {
            Ok(permit) => {
                let note = match checked.answer.verdict {
                    Verdict::TempFail(_) => {
                        debug_assert_eq!(p.rule.on_tempfail, OnTempFail::Accept);
                        Some(Event::Note {
                            level: Level::Info,
                            text: format!(
                                "ICID {icid} MID {mid} RCPT TO: <{}> accepted unverified: validate {}: no answer ({}) (on_tempfail accept)",
                                p.addr,
                                p.rule.method.label(),
                                checked.answer.detail
                            ),
                        })
                    }
                    _ => None,
                };
                match permit {
                    RcptPermit::TakeHourly { permit, report } => {
                        self.take_recipient(p.addr, permit, report, note)
                    }
                    RcptPermit::Accept(permit) | RcptPermit::Report(permit) => {
                        if let Some(e) = note {
                            self.log(e);
                        }
                        self.accept_recipient(p.addr, permit);
                    }
                    // The second stage never asks to validate again.
                    RcptPermit::Validate { .. } => {}
                }
            }
            Err(d) => {
                let ldap = matches!(d.reason, DenialReason::InvalidRecipient { .. })
                    && p.rule.method.label() == "ldap"
                    && !matches!(checked.source, Source::Breaker);
                if ldap {
                    // ESA's own line for an LDAP accept refusal (log parsers count it).
                    self.log(Event::LdapAcceptRejected {
                        icid,
                        mid,
                        rcpt: p.addr.clone(),
                    });
                }
                self.deny(format!("RCPT TO: <{}>", p.addr), Some(mid), d);
            }
        }
    }
}
