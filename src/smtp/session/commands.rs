//! One handler per SMTP command: where each command's reply code comes from.

use super::{Action, Phase, Session};
use crate::mail_log::Event;
use crate::policy::flow::{Action as PolicyAction, TlsMode};
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
        if self.is_tls_gate_closed(&cmd) {
            self.log_tls_required();
            self.reply(Reply::new(
                530,
                Enhanced(5, 7, 0),
                "Must issue a STARTTLS command first",
            ));
            return;
        }
        match cmd {
            Command::Ehlo(name) => self.ehlo(name, true),
            Command::Helo(name) => self.ehlo(name, false),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, .. } => self.rcpt(to),
            Command::Data => self.start_data(),
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

    /// Under `tls: required`, only these commands work before STARTTLS (docs/tls.md).
    fn is_tls_gate_closed(&self, cmd: &Command) -> bool {
        self.policy.tls == TlsMode::Required
            && self.tls.is_none()
            && !matches!(
                cmd,
                Command::Ehlo(_)
                    | Command::Helo(_)
                    | Command::Noop
                    | Command::Rset
                    | Command::Quit
                    | Command::StartTls
            )
    }

    fn is_starttls_offered(&self) -> bool {
        self.policy.tls != TlsMode::Off && self.tls.is_none() && self.p.tls_available
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
        if self.is_starttls_offered() {
            text.push_str("\nSTARTTLS");
        }
        self.reply(Reply::plain(250, text));
    }

    fn starttls(&mut self) {
        if self.tls.is_some() {
            return self.reply(sequence("TLS already active"));
        }
        if !self.is_starttls_offered() {
            return self.bad_command(Reply::new(502, Enhanced(5, 5, 1), "STARTTLS not available"));
        }
        if self.txn.is_some() {
            return self.reply(sequence("MAIL transaction in progress"));
        }
        self.reply(Reply::new(220, Enhanced(2, 0, 0), "Ready to start TLS"));
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
        // After HELO no extension was announced, so none of their parameters may be used
        // (RFC 5321 §4.1.1.1, RFC 6152, RFC 6531).
        if !self.esmtp && params != MailParams::default() {
            return self.reply(Reply::new(
                555,
                Enhanced(5, 5, 4),
                "MAIL parameters require EHLO",
            ));
        }
        let what = format!(
            "MAIL FROM: <{}>",
            from.as_ref().map(|m| m.address()).unwrap_or_default()
        );
        if self.tls.is_none() {
            if let Some(m) = &from {
                if self.policy.is_tls_mandatory_for(&m.address()) {
                    self.refused(None, what, "tls_mandatory_senders".into());
                    return self.reply(Reply::new(
                        530,
                        Enhanced(5, 7, 0),
                        "Must issue a STARTTLS command first",
                    ));
                }
            }
        }
        let client_cert = self.tls.as_ref().map(|t| &t.client_cert);
        if let Some(reason) = self.policy.client_cert_refusal(client_cert) {
            self.refused(None, what, format!("tls_verify_client ({reason})"));
            return self.reply(Reply::new(
                530,
                Enhanced(5, 7, 0),
                "A verified client certificate is required",
            ));
        }
        let limit = self.policy.max_messages_per_connection.clone();
        if limit.is_exceeded_by(self.messages + 1) {
            let rule = format!(
                "max_messages_per_connection {} (policy {})",
                limit.max.unwrap_or(0),
                self.policy.name
            );
            self.refused(None, what, rule);
            return self.reply(limit.reply);
        }
        let size_limit = self.policy.max_message_size.clone();
        if let Some(declared) = params.size {
            if size_limit.is_exceeded_by(declared) {
                let rule = format!(
                    "max_message_size {} < SIZE={declared} (policy {})",
                    size_limit.max.unwrap_or(0),
                    self.policy.name
                );
                self.refused(None, what, rule);
                return self.reply(size_limit.reply);
            }
        }
        if params.body == Some(Body::BinaryMime) {
            return self.reply(Reply::new(
                555,
                Enhanced(5, 5, 4),
                "BODY=BINARYMIME requires CHUNKING, which is not offered",
            ));
        }
        if from.as_ref().is_some_and(|m| m.flags.utf8) && !params.smtputf8 {
            return self.reply(Reply::new(
                553,
                Enhanced(5, 6, 7),
                "Non-ASCII address requires SMTPUTF8",
            ));
        }
        let mid = match self.new_transaction(&from, params.smtputf8) {
            Ok(mid) => mid,
            Err(e) => {
                self.log(Event::Note {
                    level: crate::mail_log::Level::Warning,
                    text: format!("ICID {} cannot allocate MID: {e}", self.p.icid),
                });
                return self.reply(Reply::new(
                    451,
                    Enhanced(4, 3, 0),
                    "Local error in processing",
                ));
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
        self.reply(Reply::new(250, Enhanced(2, 1, 0), "Sender ok"));
    }

    fn rcpt(&mut self, to: Mailbox) {
        let Some(txn) = &self.txn else {
            return self.reply(sequence("Need MAIL command"));
        };
        let mid = txn.mid;
        let smtputf8 = txn.smtputf8;
        // Limits count every accepted RCPT, duplicates included: what the client sent.
        let count = txn.rcpts_accepted;
        // `<postmaster>` (only it parses without a domain) must be accepted (RFC 5321 §4.5.1):
        // it goes to the RAT's postmaster address, past the RAT.
        let postmaster = match to.domain.is_empty() {
            true => self.p.rat.as_ref().and_then(|r| r.postmaster()),
            false => None,
        };
        let addr = postmaster.clone().unwrap_or_else(|| to.address());
        let what = format!("RCPT TO: <{addr}>");
        let relay = self.policy.action == PolicyAction::Relay;
        if to.flags.utf8 && !smtputf8 {
            return self.reply(Reply::new(
                553,
                Enhanced(5, 6, 7),
                "Non-ASCII address requires SMTPUTF8",
            ));
        }
        if !relay && to.is_relay_attempt() {
            // %-hack, quoted @, source routes, literals, trailing dots: ways to reach another domain.
            self.refused(
                Some(mid),
                what,
                "address form not accepted from non-relay senders".into(),
            );
            return self.reply(Reply::new(550, Enhanced(5, 7, 1), "Relay access denied"));
        }
        let mut accept_reply = None;
        if !relay && postmaster.is_none() {
            let verdict = match &self.p.rat {
                Some(rat) => rat.check(&to.local, &to.domain).map_err(|d| d.reply),
                None => Err(crate::policy::rat::RecipientAccessTable::default_reply()),
            };
            match verdict {
                Ok(custom) => accept_reply = custom,
                Err(reply) => {
                    self.log(Event::RatRejected {
                        icid: self.p.icid,
                        mid,
                        rcpt: addr,
                    });
                    return self.reply(reply);
                }
            }
        }
        let per_msg = self.policy.max_recipients_per_message.clone();
        if per_msg.is_exceeded_by(count + 1) {
            let rule = format!(
                "max_recipients_per_message {} (policy {})",
                per_msg.max.unwrap_or(0),
                self.policy.name
            );
            self.refused(Some(mid), what, rule);
            return self.reply(per_msg.reply);
        }
        let per_hour = self.policy.max_recipients_per_hour.clone();
        if !self.p.rate.try_recipient(self.p.peer_ip, per_hour.max) {
            let rule = format!(
                "max_recipients_per_hour {} for {} (policy {})",
                per_hour.max.unwrap_or(0),
                self.p.peer_ip,
                self.policy.name
            );
            self.refused(Some(mid), what, rule);
            return self.reply(per_hour.reply);
        }
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
        self.reply(
            accept_reply.unwrap_or_else(|| Reply::new(250, Enhanced(2, 1, 5), "Recipient ok")),
        );
    }

    fn refused(&mut self, mid: Option<u64>, what: String, rule: String) {
        self.log(Event::Refused {
            icid: self.p.icid,
            mid: mid.or(self.txn.as_ref().map(|t| t.mid)),
            what,
            rule,
        });
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
