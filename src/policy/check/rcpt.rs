//! `RCPT TO`: every reply after the sequence check (a transaction must be open), in the order
//! they run. Recipient validation splits the decision in two: [`check_rcpt`] runs every check
//! up to the RAT and the per-message limit and, when the RAT entry validates, says so
//! ([`RcptPermit::Validate`]); the driver asks the directory, and [`check_rcpt_verdict`]
//! turns its answer into the reply (550 5.1.1, 451 4.4.3 or `on_tempfail: accept`, then the
//! hourly limit).

use super::mail::{limit_denial, needs_smtputf8};
use super::{Denial, DenialReason, LimitKind, Permit};
use crate::policy::flow::{Action, MailFlowPolicy};
use crate::policy::rat::RecipientAccessTable;
use crate::policy::rate::DhapCount;
pub(crate) use crate::shared_state::counters::HourlyAnswer;
use crate::smtp::address::Mailbox;
use crate::smtp::reply::{Enhanced, Reply};
use crate::validate::destination::{Checked, Source};
use crate::validate::rule::{OnTempFail, RecipientValidation};
use crate::validate::Verdict;
use std::sync::Arc;

/// The address a recipient is stored under: `<postmaster>` (only it parses without a domain)
/// must be accepted (RFC 5321 §4.5.1) and goes to the RAT's postmaster address, past the RAT.
/// Returns the address and whether it is that postmaster.
pub(crate) fn recipient_address(
    to: &Mailbox,
    rat: Option<&RecipientAccessTable>,
) -> (String, bool) {
    let postmaster = match to.domain.is_empty() {
        true => rat.and_then(|r| r.postmaster()),
        false => None,
    };
    match postmaster {
        Some(p) => (p, true),
        None => (to.address(), false),
    }
}

/// What the RCPT decision needs.
pub(crate) struct RcptCtx<'a> {
    /// The session's mail-flow policy.
    pub policy: &'a MailFlowPolicy,
    /// The listener's recipient access table (`None` on listeners without one).
    pub rat: Option<&'a RecipientAccessTable>,
    /// The forward-path as parsed.
    pub to: &'a Mailbox,
    /// The address it is stored under ([`recipient_address`]).
    pub addr: &'a str,
    /// It is `<postmaster>`, resolved to the RAT's postmaster address.
    pub postmaster: bool,
    /// The transaction declared `SMTPUTF8`.
    pub smtputf8: bool,
    /// RCPT commands already accepted in this transaction, duplicates included.
    pub accepted: u64,
    /// Takes one recipient from the client's hourly budget (`max_recipients_per_hour`);
    /// false when it is spent. Called last, and only when every other check passed, because
    /// taking counts. `None` when the budget is in the shared store: the check then says
    /// it must be taken there ([`RcptPermit::TakeHourly`]).
    pub take_hourly: Option<&'a dyn Fn() -> bool>,
    /// The client address, for the log.
    pub peer_ip: std::net::IpAddr,
    /// Counts one invalid recipient for the client (`max_invalid_recipients_per_hour`, DHAP).
    pub record_invalid: &'a dyn Fn() -> DhapCount,
    /// The client already passed `max_invalid_recipients_per_hour` this hour.
    pub dhap_exceeded: bool,
    /// The TLS-RPT intake's settings on a public listener (`policies/tlsrpt.yaml`).
    pub reports: Option<&'a crate::tlsrpt::settings::TlsRptSettings>,
}

/// The DHAP refusal for a client past `max_invalid_recipients_per_hour` under `p`; the
/// session drops the connection after it (ESA's "Dropping connection").
pub(crate) fn dhap_denial(p: &MailFlowPolicy, ip: std::net::IpAddr) -> Denial {
    let limit = &p.max_invalid_recipients_per_hour;
    Denial::new(
        limit.reply.clone(),
        DenialReason::Dhap {
            // Only an IP past a set maximum gets here: unlimited counts nothing.
            max: limit.max.unwrap_or(0),
            ip,
            policy: p.name.clone(),
            reply: Box::new(limit.reply.clone()),
        },
    )
}

/// Counts `invalid` (the refusal of an address that does not exist: RAT or directory) against
/// the client's DHAP budget; the refusal that crosses the limit becomes the DHAP one.
pub(crate) fn count_invalid(ctx: &RcptCtx, invalid: Denial) -> Denial {
    match (ctx.record_invalid)() {
        DhapCount { exceeded: true, .. } => dhap_denial(ctx.policy, ctx.peer_ip),
        _ => invalid,
    }
}

/// What passing the first stage of `RCPT TO` means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RcptPermit {
    /// Accepted, with this reply.
    Accept(Permit),
    /// A TLS-RPT report address: accepted past the RAT and any validation; the message is
    /// a report for the intake.
    Report(Permit),
    /// Accepted if the shared store gives one recipient of the hourly budget: ask, then
    /// call [`super::shared::check_hourly_answer`].
    TakeHourly {
        /// The reply once taken.
        permit: Permit,
        /// It is a TLS-RPT report address ([`RcptPermit::Report`] once taken).
        report: bool,
    },
    /// The RAT entry validates its recipients: ask, then call [`check_rcpt_verdict`].
    Validate {
        /// The entry's rule.
        rule: Arc<RecipientValidation>,
        /// The entry's own 250, if any.
        reply: Option<Reply>,
    },
}

/// The 250 of an accepted recipient: the RAT entry's own, else the standard one.
fn accepted(reply: Option<Reply>) -> Permit {
    Permit::with(reply.unwrap_or_else(|| Reply::new(250, Enhanced(2, 1, 5), "Recipient ok")))
}

/// The hourly budget, last: taking from it counts. `report`: the recipient is a TLS-RPT
/// report address.
fn hourly(ctx: &RcptCtx, reply: Option<Reply>, report: bool) -> Result<RcptPermit, Denial> {
    let permit = accepted(reply);
    let Some(take) = ctx.take_hourly else {
        return Ok(RcptPermit::TakeHourly { permit, report });
    };
    if !take() {
        return Err(hourly_denial(ctx.policy, ctx.peer_ip));
    }
    Ok(match report {
        true => RcptPermit::Report(permit),
        false => RcptPermit::Accept(permit),
    })
}

/// The refusal of a client whose `max_recipients_per_hour` is spent.
pub(super) fn hourly_denial(p: &MailFlowPolicy, ip: std::net::IpAddr) -> Denial {
    let per_hour = &p.max_recipients_per_hour;
    limit_denial(
        p,
        &per_hour.reply,
        per_hour.max,
        LimitKind::RecipientsPerHour { ip },
    )
}

/// The second stage of `RCPT TO`, after a validation lookup: the lookup's answer decides
/// (invalid: the rule's 5xx; no answer: the rule's 4xx or, under `on_tempfail: accept`,
/// on), then the hourly limit.
pub(crate) fn check_rcpt_verdict(
    ctx: &RcptCtx,
    rule: &RecipientValidation,
    reply: Option<Reply>,
    checked: &Checked,
) -> Result<RcptPermit, Denial> {
    let method = rule.method.label();
    let detail = checked.answer.detail.clone();
    let cached = match checked.source {
        Source::Cache { stored } => Some(stored),
        Source::Lookup | Source::Breaker => None,
    };
    match checked.answer.verdict {
        Verdict::Valid => hourly(ctx, reply, false),
        // A recipient the directory does not know counts towards the harvest limit.
        Verdict::Invalid => Err(count_invalid(
            ctx,
            Denial::new(
                rule.invalid_reply.clone(),
                DenialReason::InvalidRecipient {
                    rcpt: ctx.addr.to_owned(),
                    method,
                    detail,
                    cached,
                },
            ),
        )),
        Verdict::TempFail(cause) => match rule.on_tempfail {
            OnTempFail::Accept => hourly(ctx, reply, false),
            OnTempFail::TempFail => Err(Denial::new(
                rule.tempfail_reply.clone(),
                DenialReason::ValidationTempFail {
                    method,
                    cause,
                    detail,
                },
            )),
        },
    }
}

/// Refused `RCPT TO` commands a connection may send without a message being queued: each is
/// a log line, and a client could otherwise send them without end. Past this the connection
/// is closed with 421. Far above what a legitimate client meets (a message to many more
/// recipients than `max_recipients_per_message` gets a refusal for each extra one, up to
/// this); Postfix bounds the same with `smtpd_recipient_overshoot_limit` (1000).
pub(crate) const MAX_REFUSED_RECIPIENTS: u64 = 1000;

/// Before any other check of `RCPT TO`: the connection's budget of refused recipients.
pub(crate) fn check_refused_budget(refused: u64) -> Result<Permit, Denial> {
    if refused < MAX_REFUSED_RECIPIENTS {
        return Ok(Permit::later());
    }
    Err(Denial::new(
        Reply::new(
            421,
            Enhanced(4, 7, 0),
            "Too many refused recipients, closing connection",
        ),
        DenialReason::TooManyRefusedRecipients {
            max: MAX_REFUSED_RECIPIENTS,
        },
    ))
}

/// The checks of `RCPT TO`, in order; `Ok` carries the 250 (or the RAT entry's own), or
/// says the recipient must be validated first.
pub(crate) fn check_rcpt(ctx: &RcptCtx) -> Result<RcptPermit, Denial> {
    let p = ctx.policy;
    let relay = p.action == Action::Relay;
    if ctx.to.flags.utf8 && !ctx.smtputf8 {
        return Err(needs_smtputf8());
    }
    if !relay && ctx.to.is_relay_attempt() {
        // %-hack, quoted @, source routes, literals, trailing dots: ways to reach another domain.
        return Err(Denial::new(
            Reply::new(550, Enhanced(5, 7, 1), "Relay access denied"),
            DenialReason::RelayAttempt,
        ));
    }
    let to_postmaster = ctx.postmaster || ctx.to.local.eq_ignore_ascii_case("postmaster");
    if ctx.dhap_exceeded && !to_postmaster {
        // Past the DHAP limit every recipient gets the same refusal, valid or not: the
        // harvester learns nothing more from this address until its hour is over. Postmaster
        // stays reachable (RFC 5321 §4.5.1): other senders behind the same address (a
        // shared provider's) can still report the block; it tells a harvester nothing.
        return Err(dhap_denial(p, ctx.peer_ip));
    }
    let per_msg = &p.max_recipients_per_message;
    let over_per_msg = || {
        limit_denial(
            p,
            &per_msg.reply,
            per_msg.max,
            LimitKind::RecipientsPerMessage,
        )
    };
    // Unquoted: `"tlsrpt"@example.com` is the same mailbox (RFC 5321 §4.1.2).
    let unquoted = format!("{}@{}", ctx.to.local, ctx.to.domain);
    if ctx.reports.is_some_and(|r| r.is_report_address(&unquoted)) {
        // Our own published address: the RAT and the internal server need not know it.
        if per_msg.is_exceeded_by(ctx.accepted + 1) {
            return Err(over_per_msg());
        }
        return hourly(ctx, None, true);
    }
    let mut accept = None;
    let mut validation = None;
    if !relay && !ctx.postmaster {
        let verdict = match ctx.rat {
            Some(rat) => rat.check(&ctx.to.local, &ctx.to.domain),
            None => Err(crate::policy::rat::RatDenied {
                reply: RecipientAccessTable::default_reply(),
                rule: "no table".into(),
            }),
        };
        match verdict {
            Ok(m) => {
                accept = m.reply;
                validation = m.validation;
            }
            Err(d) => {
                let refusal = Denial::new(
                    d.reply,
                    DenialReason::Rat {
                        rcpt: ctx.addr.to_owned(),
                        rule: d.rule,
                    },
                );
                return Err(count_invalid(ctx, refusal));
            }
        }
    }
    if per_msg.is_exceeded_by(ctx.accepted + 1) {
        return Err(over_per_msg());
    }
    if let Some(rule) = validation {
        // Asked before the hourly budget is taken: an invalid recipient must not spend it.
        return Ok(RcptPermit::Validate {
            rule,
            reply: accept,
        });
    }
    hourly(ctx, accept, false)
}

#[cfg(test)]
mod tests {
    use super::super::outcome;
    use super::*;
    use crate::smtp::command::{parse_command, Command};
    use std::cell::Cell;

    fn mailbox(s: &str) -> Mailbox {
        match parse_command(format!("RCPT TO:{s}").as_bytes()) {
            Ok(Command::Rcpt { to, .. }) => to,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn rat() -> RecipientAccessTable {
        use crate::policy::rat::{RatAction, RatEntry, RecipientPattern};
        RecipientAccessTable {
            name: "t".into(),
            entries: vec![RatEntry {
                pattern: RecipientPattern::parse("example.com").unwrap(),
                action: RatAction::Accept,
                reply: None,
                validation: None,
            }],
            postmaster: None,
        }
    }

    /// A first-stage result as a plain check result (`Validate` has no reply yet).
    fn first_stage(r: Result<RcptPermit, Denial>) -> Result<Permit, Denial> {
        r.map(|p| match p {
            RcptPermit::Accept(p) => p,
            RcptPermit::Validate { .. } => Permit::later(),
            RcptPermit::Report(p) => p,
            RcptPermit::TakeHourly { permit, .. } => permit,
        })
    }

    /// A report address is accepted past a RAT that refuses its domain, without validation,
    /// within the per-message and hourly limits; only on listeners given the intake.
    #[test]
    fn report_addresses_pass_the_rat_but_not_the_limits() {
        use crate::tlsrpt::settings::TlsRptSettings;
        let mut p = MailFlowPolicy::builtin_default("ACCEPTED");
        p.max_recipients_per_message.max = Some(2);
        let reports = TlsRptSettings {
            addresses: vec!["tlsrpt@reports.example".into()],
            relay: false,
            https_path: None,
            domains: Default::default(),
            max_reports: 10,
            max_store_bytes: 1 << 20,
        };
        let table = rat();
        let run = |to: &str, accepted: u64, budget: bool, intake: bool, dhap: bool| {
            let to = mailbox(to);
            let (addr, postmaster) = recipient_address(&to, Some(&table));
            let take = || budget;
            let r = check_rcpt(&RcptCtx {
                policy: &p,
                rat: Some(&table),
                to: &to,
                addr: &addr,
                postmaster,
                smtputf8: false,
                accepted,
                take_hourly: Some(&take),
                peer_ip: "198.51.100.7".parse().unwrap(),
                record_invalid: &|| DhapCount {
                    count: 1,
                    exceeded: false,
                },
                dhap_exceeded: dhap,
                reports: intake.then_some(&reports),
            });
            let report = matches!(r, Ok(RcptPermit::Report(_)));
            (outcome(&first_stage(r)), report)
        };
        let ok = ((250, "2.1.5".to_string(), "permit"), true);
        assert_eq!(run("<tlsrpt@reports.example>", 0, true, true, false), ok);
        assert_eq!(run("<TLSRPT@Reports.Example>", 1, true, true, false), ok);
        assert_eq!(
            run("<\"tlsrpt\"@reports.example>", 1, true, true, false),
            ok
        );
        assert_eq!(
            run("<tlsrpt@reports.example>", 0, true, false, false),
            ((550, "5.7.1".to_string(), "rat"), false)
        );
        assert_eq!(
            run("<other@reports.example>", 0, true, true, false),
            ((550, "5.7.1".to_string(), "rat"), false)
        );
        assert_eq!(
            run("<tlsrpt@reports.example>", 2, true, true, false).0 .0,
            (452, "4.5.3".to_string(), "limit").0
        );
        assert_eq!(
            run("<tlsrpt@reports.example>", 0, false, true, false).0 .2,
            "limit"
        );
        assert_eq!(
            run("<tlsrpt@reports.example>", 0, true, true, true).0 .2,
            "dhap"
        );
    }

    #[test]
    fn rcpt_table() {
        let mut accept = MailFlowPolicy::builtin_default("P");
        accept.max_recipients_per_message.max = Some(2);
        let mut relay = accept.clone();
        relay.action = Action::Relay;
        let table = rat();

        // (policy, rat, address, smtputf8, accepted so far, hourly budget left)
        //   -> (code, enhanced, label)
        type Row<'a> = (
            &'a MailFlowPolicy,
            Option<&'a RecipientAccessTable>,
            &'a str,
            bool,
            u64,
            bool,
            (u16, &'a str, &'a str),
        );
        let rows: Vec<Row> = vec![
            (
                &accept,
                Some(&table),
                "<a@example.com>",
                false,
                0,
                true,
                (250, "2.1.5", "permit"),
            ),
            (
                &accept,
                Some(&table),
                "<a@other.example>",
                false,
                0,
                true,
                (550, "5.7.1", "rat"),
            ),
            (
                &accept,
                None,
                "<a@example.com>",
                false,
                0,
                true,
                (550, "5.7.1", "rat"),
            ),
            (
                &relay,
                None,
                "<a@other.example>",
                false,
                0,
                true,
                (250, "2.1.5", "permit"),
            ),
            (
                &accept,
                Some(&table),
                "<a%b@example.com>",
                false,
                0,
                true,
                (550, "5.7.1", "relay_attempt"),
            ),
            (
                &relay,
                None,
                "<a%b@example.com>",
                false,
                0,
                true,
                (250, "2.1.5", "permit"),
            ),
            (
                &accept,
                Some(&table),
                "<δ@example.com>",
                false,
                0,
                true,
                (553, "5.6.7", "smtputf8"),
            ),
            (
                &accept,
                Some(&table),
                "<δ@example.com>",
                true,
                0,
                true,
                (250, "2.1.5", "permit"),
            ),
            (
                &accept,
                Some(&table),
                "<a@example.com>",
                false,
                1,
                true,
                (250, "2.1.5", "permit"),
            ),
            (
                &accept,
                Some(&table),
                "<a@example.com>",
                false,
                2,
                true,
                (452, "4.5.3", "limit"),
            ),
            (
                &accept,
                Some(&table),
                "<a@example.com>",
                false,
                0,
                false,
                (452, "4.5.3", "limit"),
            ),
            (
                &accept,
                Some(&table),
                "<Postmaster>",
                false,
                0,
                true,
                (250, "2.1.5", "permit"),
            ),
            // The order: the RAT before the limits.
            (
                &accept,
                Some(&table),
                "<a@other.example>",
                false,
                2,
                false,
                (550, "5.7.1", "rat"),
            ),
        ];
        for (i, (policy, rat, to, smtputf8, accepted, budget, (code, enh, label))) in
            rows.into_iter().enumerate()
        {
            let to = mailbox(to);
            let (addr, postmaster) = recipient_address(&to, rat);
            let taken = Cell::new(false);
            let take = || {
                taken.set(true);
                budget
            };
            let ctx = RcptCtx {
                policy,
                rat,
                to: &to,
                addr: &addr,
                postmaster,
                smtputf8,
                accepted,
                take_hourly: Some(&take),
                peer_ip: "192.0.2.1".parse().unwrap(),
                record_invalid: &|| DhapCount {
                    count: 1,
                    exceeded: false,
                },
                dhap_exceeded: false,
                reports: None,
            };
            assert_eq!(
                outcome(&first_stage(check_rcpt(&ctx))),
                (code, enh.to_string(), label),
                "row {i}"
            );
            // The hourly budget is only touched when everything before it passed.
            let reached_hourly = code == 250 || (label == "limit" && accepted < 2);
            assert_eq!(taken.get(), reached_hourly, "row {i}");
        }
    }

    /// DHAP: RAT refusals count; the one crossing the limit and every RCPT after it (valid,
    /// postmaster, relay policy alike) get the DHAP reply; relay tricks do not count.
    #[test]
    fn dhap_counts_rat_refusals_and_refuses_past_the_limit() {
        let mut p = MailFlowPolicy::builtin_default("ACCEPTED");
        p.max_invalid_recipients_per_hour.max = Some(2);
        let table = rat();
        let count = Cell::new(0u64);
        let record = || {
            count.set(count.get() + 1);
            DhapCount {
                count: count.get(),
                exceeded: count.get() > 2,
            }
        };
        let take = || true;
        let run = |to: &str, exceeded: bool| {
            let to = mailbox(to);
            let (addr, postmaster) = recipient_address(&to, Some(&table));
            let r = check_rcpt(&RcptCtx {
                policy: &p,
                rat: Some(&table),
                to: &to,
                addr: &addr,
                postmaster,
                smtputf8: false,
                accepted: 0,
                take_hourly: Some(&take),
                peer_ip: "198.51.100.7".parse().unwrap(),
                record_invalid: &record,
                dhap_exceeded: exceeded,
                reports: None,
            });
            let text = match &r {
                Err(d) => d.reason.to_string(),
                Ok(_) => String::new(),
            };
            (outcome(&first_stage(r)), text)
        };
        let rat_550 = ((550, "5.7.1".to_string(), "rat"), "RAT default".to_string());
        assert_eq!(run("<x@other.example>", false), rat_550);
        assert_eq!(run("<a%b@example.com>", false).0 .2, "relay_attempt");
        assert_eq!(count.get(), 1, "relay tricks are not counted");
        assert_eq!(run("<y@other.example>", false), rat_550);
        let dhap = (
            (550, "5.7.1".to_string(), "dhap"),
            "max_invalid_recipients_per_hour 2 for 198.51.100.7 (policy ACCEPTED) \
             -> 550 5.7.1 Too many invalid recipients"
                .to_string(),
        );
        assert_eq!(run("<z@other.example>", false), dhap, "the third crosses 2");
        // Already past the limit: refused before the RAT, counted no further.
        assert_eq!(run("<a@example.com>", true), dhap);
        // Except postmaster (RFC 5321 §4.5.1), in either form.
        assert_eq!(run("<Postmaster>", true).0 .2, "permit");
        assert_eq!(run("<postmaster@example.com>", true).0 .2, "permit");
        assert_eq!(count.get(), 3);
        assert_eq!(run("<a@example.com>", false).0 .2, "permit");
    }

    #[test]
    fn postmaster_goes_to_the_rat_postmaster() {
        let table = rat();
        let (addr, pm) = recipient_address(&mailbox("<Postmaster>"), Some(&table));
        assert_eq!((addr.as_str(), pm), ("postmaster@example.com", true));
        let (addr, pm) = recipient_address(&mailbox("<a@example.com>"), Some(&table));
        assert_eq!((addr.as_str(), pm), ("a@example.com", false));
    }
}
