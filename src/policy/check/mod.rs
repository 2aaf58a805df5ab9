//! Policy checks per SMTP stage: where every refusing reply code is decided.
//!
//! Each stage has one file and one (or a few) pure `check_*` functions over a context struct
//! that carries what the decision needs; each returns `Ok(Permit)` or `Err(Denial)`. A
//! [`Denial`] is the reply the client gets plus a typed [`DenialReason`]: the mail log renders
//! the reason ([`DenialReason`]'s `Display`), the metrics use [`DenialReason::label`]. The
//! session (`src/smtp/session/`) only sequences parse → check → event → reply.
//!
//! | stage | file | decides |
//! |---|---|---|
//! | connect | [`connect`] | draining (421 4.3.2), listener full (421), ICID allocation failure (421), the pre-greet pause, TCPREFUSE, the REJECT banner, pre-greeting talk (554), per-IP connection limit, the greeting; for the whole session: too many bad commands, timeouts, shutdown (421) |
//! | helo | [`helo`] | whether STARTTLS is offered (EHLO keyword, 502 when not), the `tls: required` gate (530 before STARTTLS) |
//! | mail | [`mail`] | `MAIL FROM`: parameters after HELO (555), `tls_mandatory_senders` and client certificate (530), messages per connection, declared `SIZE=` (552), `BODY=BINARYMIME` (555), non-ASCII without SMTPUTF8 (553), 250 |
//! | rcpt | [`rcpt`] | `RCPT TO`: non-ASCII without SMTPUTF8 (553), relay tricks (550), DHAP (550, then the connection is dropped), the RAT (550 or its own 250), recipients per message and per hour (452), 250 |
//! | mail (2nd step) | [`sender`] | envelope-sender DNS verification (553 malformed / not existing, 451 unresolvable), SPF under `reject_fail` (550 5.7.23, 451 4.7.24; at `spf_at`) |
//! | data | [`data`] | `DATA` without recipients (554), 354, the message size (552), the spool commit (250 queued, 452 4.3.1) |
//! | rcpt (shared state) | [`shared`] | recipients per hour from the shared store's answer (452), or without one by `when_unavailable` (the local count, or 451 4.3.0); the 421 4.3.0 at connect |
//! | data (2nd step) | [`message_auth`] | DMARC under `dmarc: enforce`: `p=reject` failures (550 5.7.1), `p=quarantine` marked; `pct` |
//!
//! Syntax and sequence replies (500/501/503/504, including an invalid HELO name) are the
//! parser's and the session's (`src/smtp/command.rs`, `src/smtp/session/commands.rs`), and a
//! smuggling-unsafe DATA stream is refused by `src/smtp/data.rs`. The next check (recipient
//! validation, SPF) is one new function in its stage's file, called from that stage's
//! `check_*` in the order it should run, and one new [`DenialReason`] variant (`reason.rs`).

pub(crate) mod connect;
pub(crate) mod data;
pub(crate) mod helo;
pub(crate) mod mail;
pub(crate) mod message_auth;
pub(crate) mod rcpt;
mod reason;
pub(crate) mod sender;
pub(crate) mod shared;

use crate::smtp::reply::Reply;

pub(crate) use reason::Stage;
pub(crate) use reason::{DenialReason, LimitKind};

/// What a passing check lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Permit {
    /// The reply accepting the command, when the check decides it (the greeting, a RAT entry's
    /// own 250, ...); `None` when the stage answers later (after the spool commit).
    pub reply: Option<Reply>,
}

impl Permit {
    /// A permit answered with `reply`.
    pub(crate) fn with(reply: Reply) -> Self {
        Permit { reply: Some(reply) }
    }

    /// A permit whose reply comes later.
    pub(crate) fn later() -> Self {
        Permit { reply: None }
    }
}

/// A refusal: the reply the client gets and the reason the log and metrics get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Denial {
    /// The reply sent; `None` only for TCPREFUSE (the connection closes without a word).
    pub reply: Option<Reply>,
    /// Why, for the mail log and the metric label.
    pub reason: DenialReason,
}

impl Denial {
    /// A denial answered with `reply`.
    pub(crate) fn new(reply: Reply, reason: DenialReason) -> Self {
        Denial {
            reply: Some(reply),
            reason,
        }
    }
}

/// Table-test helper: the code, enhanced code and label of a check's result.
#[cfg(test)]
pub(crate) fn outcome(r: &Result<Permit, Denial>) -> (u16, String, &'static str) {
    let (reply, label) = match r {
        Ok(p) => (p.reply.clone(), "permit"),
        Err(d) => (d.reply.clone(), d.reason.label()),
    };
    match reply {
        Some(r) => (
            r.code,
            r.enhanced.map(|e| e.to_string()).unwrap_or_default(),
            label,
        ),
        None => (0, String::new(), label),
    }
}
