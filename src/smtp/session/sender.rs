//! `MAIL FROM` with sender authentication: the session asks the driver
//! ([`Action::VerifySender`]) and waits in `Phase::VerifyingSender`; the answer comes back
//! through [`Session::sender_verified`], and `sender::check_mail_verdict` decides the reply.
//! Pipelined commands behind the MAIL wait in the driver's buffer, so replies stay in order.
//! An SPF refusal configured for a later stage (`spf_at: rcpt | data`) travels with the
//! transaction and is said there ([`Session::refuse_for_spf`]).

use super::{Action, Phase, Session};
use crate::auth::{SenderAnswer, SenderRequest};
use crate::mail_log::Event;
use crate::policy::check::sender::check_mail_verdict;
use crate::policy::check::Permit;
use crate::policy::sender_auth::SpfStage;
use crate::smtp::address::Mailbox;
use crate::smtp::command::MailParams;

/// A `MAIL FROM` waiting for its sender-authentication answer.
#[derive(Debug)]
pub(super) struct PendingMail {
    from: Option<Mailbox>,
    params: MailParams,
    /// The 250 `check_mail` gave.
    permit: Permit,
    /// `MAIL FROM: <a@b>`, for a refusal's log line.
    what: String,
}

impl Session {
    /// Parks the MAIL and asks the driver to authenticate its sender.
    pub(super) fn verify_sender(
        &mut self,
        request: SenderRequest,
        from: Option<Mailbox>,
        params: MailParams,
        permit: Permit,
        what: String,
    ) {
        self.actions.push(Action::VerifySender(request));
        self.phase = Phase::VerifyingSender(Box::new(PendingMail {
            from,
            params,
            permit,
            what,
        }));
    }

    /// The answer to [`Action::VerifySender`]: decides and answers the waiting MAIL.
    pub fn sender_verified(&mut self, answer: SenderAnswer) {
        let Phase::VerifyingSender(p) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return;
        };
        let p = *p;
        let from = p.from.as_ref().map(|m| m.address()).unwrap_or_default();
        let decision = check_mail_verdict(&self.policy, &from, &answer, p.permit);
        let icid = self.p.icid;
        let spf_line = |mid| {
            answer.spf.as_ref().map(|o| Event::Spf {
                icid,
                mid,
                identity: o.identity,
                address: o.address.clone(),
                result: o.result,
            })
        };
        match decision.now {
            Err(d) => {
                // A sender refused by DNS verification was not evaluated further in the log.
                if !matches!(
                    d.reason,
                    crate::policy::check::DenialReason::SenderDns { .. }
                ) {
                    if let Some(e) = spf_line(None) {
                        self.log(e);
                    }
                }
                self.deny(p.what, None, d);
            }
            Ok(permit) => {
                let Some(mid) = self.open_transaction(p.from, p.params) else {
                    return;
                };
                if let Some(e) = spf_line(Some(mid)) {
                    self.log(e);
                }
                if let Some(t) = self.txn.as_mut() {
                    t.spf = answer.spf;
                    t.spf_refusal = decision.later;
                }
                self.permit(permit);
            }
        }
    }

    /// Refuses the command of `stage` when the transaction carries an SPF refusal for it
    /// (`spf_at: rcpt` or `data`); true when it did.
    pub(super) fn refuse_for_spf(&mut self, stage: SpfStage, what: String) -> bool {
        let Some(t) = self.txn.as_ref() else {
            return false;
        };
        let Some((at, d)) = t.spf_refusal.as_ref().filter(|(at, _)| *at == stage) else {
            return false;
        };
        debug_assert_eq!(*at, stage);
        let (mid, d) = (t.mid, d.clone());
        self.deny(what, Some(mid), d);
        true
    }
}
