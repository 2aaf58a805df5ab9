//! `RCPT TO` when the hourly budget is in the shared store (`shared_state:`): the session
//! asks the driver ([`Action::TakeRecipient`]) and waits in `Phase::TakingRecipient`; the
//! answer comes back through [`Session::recipient_taken`], and
//! [`shared::check_hourly_answer`] decides (the store's answer, else `when_unavailable`).
//! Pipelined commands behind the RCPT wait in the driver's buffer, so replies stay in order.

use super::{Action, Phase, Session};
use crate::mail_log::Event;
use crate::policy::check::rcpt::HourlyAnswer;
use crate::policy::check::shared;
use crate::policy::check::Permit;
use crate::shared_state::settings::Fallback;

/// What the driver asks the shared store for one RCPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourlyRequest {
    /// The client (counted under its IPv4 address or IPv6 network).
    pub ip: std::net::IpAddr,
    /// `max_recipients_per_hour` of the session's policy.
    pub max: u64,
}

/// A RCPT waiting for its recipient from the hourly budget.
#[derive(Debug)]
pub(super) struct PendingTake {
    addr: String,
    permit: Permit,
    report: bool,
    /// A line to log once accepted (`accepted unverified` under `on_tempfail: accept`).
    note: Option<Event>,
}

impl Session {
    /// Parks an otherwise accepted RCPT and asks the driver for one recipient of the
    /// client's hourly budget.
    pub(super) fn take_recipient(
        &mut self,
        addr: String,
        permit: Permit,
        report: bool,
        note: Option<Event>,
    ) {
        // Only asked for with a limit (unlimited counts nothing).
        let max = self.policy.max_recipients_per_hour.max.unwrap_or(u64::MAX);
        self.actions.push(Action::TakeRecipient(HourlyRequest {
            ip: self.p.peer_ip,
            max,
        }));
        self.phase = Phase::TakingRecipient(Box::new(PendingTake {
            addr,
            permit,
            report,
            note,
        }));
    }

    /// The answer to [`Action::TakeRecipient`]: accepts or refuses the waiting RCPT, with
    /// the reply and log line the local count gives.
    pub fn recipient_taken(&mut self, answer: HourlyAnswer) {
        let Phase::TakingRecipient(p) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return;
        };
        let Some(mid) = self.txn.as_ref().map(|t| t.mid) else {
            return;
        };
        let fallback = self
            .p
            .shared_limits
            .map_or(Fallback::Local, |w| w.recipients_per_hour);
        let (rate, ip) = (&self.p.rate, self.p.peer_ip);
        let max = self.policy.max_recipients_per_hour.max;
        let take_local = || rate.try_recipient(ip, max);
        match shared::check_hourly_answer(&self.policy, ip, answer, fallback, &take_local) {
            Ok(()) => {
                if let Some(e) = p.note {
                    self.log(e);
                }
                match p.report {
                    true => self.accept_report(p.addr, p.permit),
                    false => self.accept_recipient(p.addr, p.permit),
                }
            }
            Err(d) => self.deny(format!("RCPT TO: <{}>", p.addr), Some(mid), d),
        }
    }
}
