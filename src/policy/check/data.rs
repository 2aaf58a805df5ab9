//! `DATA` and the message: the 354, the size limit, the answer to the spool commit, and the
//! answer to a message only to TLS-RPT report addresses.
//!
//! A stream that cannot be framed safely (smuggling bytes, bare CR/LF) is refused by the DATA
//! reader itself (`src/smtp/data.rs`): that is framing, not policy.

use super::mail::limit_denial;
use super::{Denial, DenialReason, LimitKind, Permit};
use crate::policy::flow::MailFlowPolicy;
use crate::smtp::reply::{Enhanced, Reply};
use crate::tlsrpt::ingest::Outcome;

/// `DATA`: 354 once at least one recipient was accepted.
pub(crate) fn check_data(recipients: usize) -> Result<Permit, Denial> {
    if recipients == 0 {
        return Err(Denial::new(
            Reply::new(554, Enhanced(5, 5, 1), "No valid recipients"),
            DenialReason::NoRecipients,
        ));
    }
    Ok(Permit::with(Reply::plain(
        354,
        "End data with <CR><LF>.<CR><LF>",
    )))
}

/// What the message-size decision needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageCtx<'a> {
    /// The session's mail-flow policy.
    pub policy: &'a MailFlowPolicy,
    /// Message bytes received so far (without our `Received:` header).
    pub size: u64,
}

/// The most a message held in memory for sender authentication may be when the policy's
/// `max_message_size` is unlimited (docs/sender-auth.md): DKIM needs the whole message.
pub(crate) const MAX_HELD_MESSAGE: u64 = 100 * 1024 * 1024;

/// The message so far is within `max_message_size`; checked while it streams and at its end.
/// With sender authentication on, an unlimited size is bounded by [`MAX_HELD_MESSAGE`].
pub(crate) fn check_message(ctx: &MessageCtx) -> Result<Permit, Denial> {
    let limit = &ctx.policy.max_message_size;
    let max = match limit.max {
        None if ctx.policy.is_message_auth_on() => Some(MAX_HELD_MESSAGE),
        m => m,
    };
    if max.is_some_and(|m| ctx.size > m) {
        return Err(limit_denial(
            ctx.policy,
            &limit.reply,
            max,
            LimitKind::MessageSize,
        ));
    }
    Ok(Permit::later())
}

/// The answer to the spool commit of message `mid`: 250 once it is durable.
pub(crate) fn check_commit(mid: u64, result: &Result<(), String>) -> Result<Permit, Denial> {
    match result {
        Ok(()) => Ok(Permit::with(Reply::new(
            250,
            Enhanced(2, 0, 0),
            format!("Ok: queued as {mid}"),
        ))),
        Err(e) => Err(Denial::new(
            Reply::new(452, Enhanced(4, 3, 1), "Insufficient system storage"),
            DenialReason::Spool { error: e.clone() },
        )),
    }
}

/// The answer to a message sent only to TLS-RPT report addresses (nothing is queued): 250
/// once the report is stored or was stored before (a sender must not send it again), 4xx
/// when it could not be stored, 5xx for a body that is no report. The refusal goes to the
/// reporter's MTA, never a message from us: no report loop.
pub(crate) fn check_report(outcome: &Outcome) -> Result<Permit, Denial> {
    let deny = |code, enhanced, text: &'static str| {
        Err(Denial::new(
            Reply::new(code, enhanced, text),
            DenialReason::Report {
                outcome: outcome.label(),
            },
        ))
    };
    match outcome {
        Outcome::Accepted { .. } => Ok(Permit::with(Reply::new(
            250,
            Enhanced(2, 6, 0),
            "Ok: TLS report accepted",
        ))),
        Outcome::Duplicate { .. } => Ok(Permit::with(Reply::new(
            250,
            Enhanced(2, 6, 0),
            "Ok: TLS report received before",
        ))),
        Outcome::Malformed(_) => deny(550, Enhanced(5, 6, 0), "Not a valid TLS report (RFC 8460)"),
        Outcome::TooLarge | Outcome::Bomb => deny(552, Enhanced(5, 3, 4), "TLS report too large"),
        Outcome::StoreFailed(_) => deny(
            451,
            Enhanced(4, 3, 0),
            "TLS report not stored, try again later",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::outcome;
    use super::*;

    #[test]
    fn data_table() {
        let mut p = MailFlowPolicy::builtin_default("P");
        p.max_message_size.max = Some(100);
        let mut unlimited = p.clone();
        unlimited.max_message_size.max = None;
        let mut held = unlimited.clone();
        held.dmarc = crate::policy::sender_auth::DmarcMode::Tag;
        let msg = |policy, size| check_message(&MessageCtx { policy, size });
        assert!(
            msg(&unlimited, MAX_HELD_MESSAGE + 1).is_ok(),
            "unlimited without auth"
        );
        assert!(msg(&held, MAX_HELD_MESSAGE).is_ok());
        assert_eq!(
            outcome(&msg(&held, MAX_HELD_MESSAGE + 1)).0,
            552,
            "a held message is bounded"
        );
        let table = [
            (check_data(0), (554, "5.5.1", "no_recipients")),
            (check_data(1), (354, "", "permit")),
            (msg(&p, 100), (0, "", "permit")),
            (msg(&p, 101), (552, "5.3.4", "size")),
            (msg(&unlimited, u64::MAX), (0, "", "permit")),
            (check_commit(7, &Ok(())), (250, "2.0.0", "permit")),
            (
                check_commit(7, &Err("disk full".into())),
                (452, "4.3.1", "spool"),
            ),
            (msg(&p, 0), (0, "", "permit")),
            (
                check_report(&Outcome::Duplicate {
                    report_id: "r".into(),
                }),
                (250, "2.6.0", "permit"),
            ),
            (
                check_report(&Outcome::Malformed("x".into())),
                (550, "5.6.0", "tlsrpt"),
            ),
            (check_report(&Outcome::TooLarge), (552, "5.3.4", "tlsrpt")),
            (check_report(&Outcome::Bomb), (552, "5.3.4", "tlsrpt")),
            (
                check_report(&Outcome::StoreFailed("disk".into())),
                (451, "4.3.0", "tlsrpt"),
            ),
        ];
        for (i, (r, (code, enh, label))) in table.into_iter().enumerate() {
            assert_eq!(outcome(&r), (code, enh.to_string(), label), "row {i}");
        }
        assert_eq!(
            check_commit(7, &Ok(())).unwrap().reply.unwrap().text,
            "Ok: queued as 7"
        );
        assert_eq!(
            msg(&p, 101).unwrap_err().reason.to_string(),
            "max_message_size 100 (policy P)"
        );
    }
}
