//! One handler per SMTP command: parse → sequence → the stage's check → event → reply. The
//! checks (and so every refusing reply code) are in `src/policy/check/`.

use super::{Action, Phase, Session};
use crate::mail_log::{printable, Event};
use crate::policy::check::helo::{self, HeloCtx};
use crate::policy::check::mail::{self, MailCtx, MailPermit};
use crate::policy::check::rcpt::{self, RcptCtx, RcptPermit};
use crate::policy::check::sender::SenderCtx;
use crate::policy::check::{Denial, DenialReason};
use crate::policy::sender_auth::SpfStage;
use crate::smtp::address::Mailbox;
use crate::smtp::command::{parse_command, Body, Command, CommandError, MailParams};
use crate::smtp::reply::{Enhanced, Reply};

fn sequence(text: &'static str) -> Reply {
    Reply::new(503, Enhanced(5, 5, 1), text)
}

impl Session {
    /// Handles one complete command line (without CRLF).
    pub(super) fn command(&mut self, line: &[u8]) {
        let cmd = match parse_command(line) {
            Ok(c) => c,
            Err(e) => {
                self.command_error(e);
                return;
            }
        };
        if let Err(d) = helo::check_tls_gate(&self.helo_ctx(), &cmd) {
            return self.deny(String::new(), None, d);
        }
        match cmd {
            Command::Ehlo(name) => self.ehlo(name, true),
            Command::Helo(name) => self.ehlo(name, false),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, path, .. } => self.rcpt(to, &path),
            Command::Data => {
                if !self.refuse_for_spf(SpfStage::Data, "DATA".into()) {
                    self.start_data()
                }
            }
            Command::Rset => {
                self.txn = None;
                self.reply(Reply::new(250, Enhanced(2, 0, 0), "Ok"));
            }
            Command::Noop => self.reply(Reply::new(250, Enhanced(2, 0, 0), "Ok")),
            Command::Quit => {
                self.quit = true;
                let text = format!("{} closing connection", self.hostname);
                self.reply(Reply::new(221, Enhanced(2, 0, 0), text));
                self.close();
            }
            Command::StartTls => self.starttls(),
            Command::Help => self.reply(Reply::new(
                214,
                Enhanced(2, 0, 0),
                "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT STARTTLS HELP VRFY",
            )),
            Command::Vrfy(_) => self.reply(Reply::new(
                252,
                Enhanced(2, 5, 0),
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Expn(_) => {
                self.reply(Reply::new(502, Enhanced(5, 5, 1), "EXPN not available"))
            }
            Command::Bdat | Command::Auth => self.bad_command(Reply::new(
                502,
                Enhanced(5, 5, 1),
                "Command not implemented",
            )),
        }
    }

    fn command_error(&mut self, e: CommandError) {
        self.bad_command(e.reply());
    }

    fn helo_ctx(&self) -> HeloCtx {
        HeloCtx {
            tls_mode: self.policy.tls,
            tls_active: self.tls.is_some(),
            tls_available: self.p.tls_available,
        }
    }

    fn ehlo(&mut self, name: String, esmtp: bool) {
        // EHLO/HELO also reset any transaction (RFC 5321 §4.1.4).
        self.txn = None;
        self.helo = Some(name);
        self.esmtp = esmtp;
        if !esmtp {
            let text = self.hostname.clone();
            self.reply(Reply::plain(250, text));
            return;
        }
        let mut text = self.hostname.clone();
        text.push_str("\nPIPELINING");
        if let Some(max) = self.policy.max_message_size.max {
            text.push_str(&format!("\nSIZE {max}"));
        } else {
            text.push_str("\nSIZE");
        }
        text.push_str("\n8BITMIME\nENHANCEDSTATUSCODES\nSMTPUTF8");
        if helo::is_starttls_offered(&self.helo_ctx()) {
            text.push_str("\nSTARTTLS");
        }
        self.reply(Reply::plain(250, text));
    }

    fn starttls(&mut self) {
        if self.tls.is_some() {
            return self.reply(sequence("TLS already active"));
        }
        let permit = match helo::check_starttls(&self.helo_ctx()) {
            Ok(p) => p,
            // Not offered: the client should not have asked, so it counts as a bad command.
            Err(Denial { reply: Some(r), .. }) => return self.bad_command(r),
            Err(d) => return self.deny(String::new(), None, d),
        };
        if self.txn.is_some() {
            return self.reply(sequence("MAIL transaction in progress"));
        }
        self.permit(permit);
        self.actions.push(Action::StartTls);
        self.phase = Phase::TlsPending;
    }

    fn mail(&mut self, from: Option<Mailbox>, params: MailParams) {
        if self.helo.is_none() {
            return self.reply(sequence("Send EHLO/HELO first"));
        }
        if self.txn.is_some() {
            return self.reply(sequence("Sender already specified"));
        }
        let what = format!(
            "MAIL FROM: <{}>",
            from.as_ref().map(|m| m.address()).unwrap_or_default()
        );
        let helo = self.helo.clone().unwrap_or_default();
        let without_message = self.mail_without_message;
        self.mail_without_message += 1;
        let verdict = mail::check_mail(&MailCtx {
            policy: &self.policy,
            esmtp: self.esmtp,
            from: from.as_ref(),
            params: &params,
            tls: self.tls.as_ref().map(|t| &t.client_cert),
            messages: self.messages,
            without_message,
            sender: SenderCtx {
                peer_ip: self.p.peer_ip,
                helo: &helo,
                host: &self.hostname,
            },
        });
        match verdict {
            Ok(MailPermit::Accept(permit)) => {
                if self.open_transaction(from, params).is_some() {
                    self.permit(permit);
                }
            }
            Ok(MailPermit::Verify { request, permit }) => {
                self.verify_sender(request, from, params, permit, what)
            }
            Err(d) => self.deny(what, None, d),
        }
    }

    /// Opens the transaction of an accepted `MAIL FROM` (the caller answers it); returns its
    /// MID (`None` when no MID could be allocated: the client got a 451).
    pub(super) fn open_transaction(
        &mut self,
        from: Option<Mailbox>,
        params: MailParams,
    ) -> Option<u64> {
        let mid = match self.new_transaction(&from, params.smtputf8) {
            Ok(mid) => mid,
            Err(e) => {
                self.log(Event::Note {
                    level: crate::mail_log::Level::Warning,
                    text: format!("ICID {} cannot allocate MID: {e}", self.p.icid),
                });
                self.reply(Reply::new(
                    451,
                    Enhanced(4, 3, 0),
                    "Local error in processing",
                ));
                return None;
            }
        };
        if let Some(t) = self.txn.as_mut() {
            t.body_8bitmime = params.body == Some(Body::EightBitMime);
        }
        let icid = self.p.icid;
        self.log(Event::StartMid { mid, icid });
        let from_addr = from.as_ref().map(|m| m.address()).unwrap_or_default();
        self.log(Event::From {
            mid,
            icid,
            from: from_addr,
        });
        Some(mid)
    }

    fn rcpt(&mut self, to: Mailbox, path: &str) {
        let Some(txn) = &self.txn else {
            return self.reply(sequence("Need MAIL command"));
        };
        let mid = txn.mid;
        if let Err(d) = rcpt::check_refused_budget(self.refused_rcpts) {
            return self.deny(format!("RCPT TO: <{}>", to.address()), Some(mid), d);
        }
        if self.refuse_for_spf(SpfStage::Rcpt, format!("RCPT TO: <{}>", to.address())) {
            return;
        }
        let (addr, postmaster) = rcpt::recipient_address(&to, self.p.rat.as_deref());
        let Some(verdict) = self.with_rcpt_ctx(&to, &addr, postmaster, true, rcpt::check_rcpt)
        else {
            return;
        };
        let permit = match verdict {
            Ok(RcptPermit::Accept(p)) => p,
            Ok(RcptPermit::Report(p)) => return self.accept_report(addr, p),
            Ok(RcptPermit::TakeHourly { permit, report }) => {
                return self.take_recipient(addr, permit, report, None)
            }
            Ok(RcptPermit::Validate { rule, reply }) => {
                return self.validate_recipient(to, addr, postmaster, rule, reply)
            }
            // A refused form is logged as sent: normalising would hide the trick tried.
            Err(d) if d.reason == DenialReason::RelayAttempt => {
                return self.deny(format!("RCPT TO: {}", printable(path)), Some(mid), d)
            }
            Err(d) => return self.deny(format!("RCPT TO: <{addr}>"), Some(mid), d),
        };
        self.accept_recipient(addr, permit);
    }

    /// Runs `f` with the RCPT context of the open transaction (`None` without one). The
    /// harvest check of the first stage (`first_stage`) refuses a client already past
    /// `max_invalid_recipients_per_hour` before anything is asked.
    pub(super) fn with_rcpt_ctx<R>(
        &mut self,
        to: &Mailbox,
        addr: &str,
        postmaster: bool,
        first_stage: bool,
        f: impl FnOnce(&RcptCtx) -> R,
    ) -> Option<R> {
        let txn = self.txn.as_ref()?;
        let (rate, ip) = (&self.p.rate, self.p.peer_ip);
        let per_hour = self.policy.max_recipients_per_hour.max;
        let max_invalid = self.policy.max_invalid_recipients_per_hour.max;
        let take_hourly = || rate.try_recipient(ip, per_hour);
        // In the shared store only with a limit: unlimited counts nothing anywhere.
        let shared_hourly = self.p.shared_limits.is_some() && per_hour.is_some();
        let counted_invalid = std::cell::Cell::new(false);
        let record_invalid = || {
            counted_invalid.set(true);
            rate.record_invalid(ip, max_invalid)
        };
        let r = f(&RcptCtx {
            policy: &self.policy,
            rat: self.p.rat.as_deref(),
            to,
            addr,
            postmaster,
            smtputf8: txn.smtputf8,
            // Limits count every accepted RCPT, duplicates included: what the client sent.
            accepted: txn.rcpts_accepted,
            take_hourly: (!shared_hourly).then_some(&take_hourly as &dyn Fn() -> bool),
            peer_ip: ip,
            record_invalid: &record_invalid,
            dhap_exceeded: first_stage && rate.dhap_exceeded(ip, max_invalid),
            reports: self.p.reports.as_deref(),
        });
        // The local count decided; the shared one learns of it (and raises the local count
        // to what every node together saw).
        if counted_invalid.get() && max_invalid.is_some() && self.p.shared_limits.is_some() {
            self.actions.push(Action::CountInvalid(ip));
        }
        Some(r)
    }

    /// Adds an accepted recipient to the transaction and answers it.
    pub(super) fn accept_recipient(&mut self, addr: String, permit: crate::policy::check::Permit) {
        let Some(mid) = self.txn.as_ref().map(|t| t.mid) else {
            return;
        };
        let icid = self.p.icid;
        let Some(t) = self.txn.as_mut() else { return };
        t.rcpts_accepted += 1;
        // A duplicate still gets 250 (as from every MTA) but is stored, and relayed, once.
        match t.rcpt_ids.get(&recipient_key(&addr)).copied() {
            Some(rid) => self.log(Event::Note {
                level: crate::mail_log::Level::Info,
                text: format!(
                    "ICID {icid} MID {mid} duplicate recipient <{addr}> merged with RID {rid}"
                ),
            }),
            None => {
                let rid = t.rcpts.len() as u32;
                t.rcpt_ids.insert(recipient_key(&addr), rid);
                t.rcpts.push(addr.clone());
                self.log(Event::To {
                    mid,
                    icid,
                    rid,
                    rcpt: addr,
                });
            }
        }
        self.permit(permit);
    }
}

impl Session {
    /// ESA's "drop" after a DHAP refusal (`max_invalid_recipients_per_hour`): its log line,
    /// then close.
    pub(super) fn dhap_drop(&mut self, limit: u64) {
        let rdns = (self.p.rdns_host != "unknown").then(|| self.p.rdns_host.clone());
        self.log(Event::DhapDrop {
            icid: self.p.icid,
            peer_ip: self.p.peer_ip,
            rdns_host: rdns,
            limit,
            sender_group: self.p.classification.group.clone(),
            listener: self.p.listener.clone(),
        });
        if !matches!(self.phase, Phase::Closed) {
            self.close();
        }
    }
}

/// What makes two recipients the same mailbox: the domain is case-insensitive, the local
/// part is compared as sent (RFC 5321 §2.4; the internal server decides about its case).
fn recipient_key(addr: &str) -> String {
    match addr.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
        None => addr.to_owned(),
    }
}
