//! The DATA phase: 354, streaming the body through the smuggling-safe reader, size limit, commit.

use super::{Action, DataState, Phase, Session};
use crate::envelope::Envelope;
use crate::mail_log::{Event, ReceivingFailure};
use crate::policy::check::{self, Denial, Permit};
use crate::policy::flow::MailFlowPolicy;
use crate::smtp::data::{DataReader, DataStatus};
use crate::smtp::reply::{Enhanced, Reply};

use super::headers::HeaderScanner;
use super::message_auth::HeldMessage;
use super::report::ReportCopy;

/// The inside of an RFC 5321 §4.1.3 address literal: `192.0.2.1` or `IPv6:2001:db8::1`.
fn address_literal(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("IPv6:{v6}"),
    }
}

/// The size check of the message received so far.
fn message_check(policy: &MailFlowPolicy, size: u64) -> Result<Permit, Denial> {
    check::data::check_message(&check::data::MessageCtx { policy, size })
}

impl Session {
    pub(super) fn start_data(&mut self) {
        let Some(txn) = &self.txn else {
            return self.reply(Reply::new(503, Enhanced(5, 5, 1), "Need MAIL command"));
        };
        let permit = match check::data::check_data(txn.rcpts.len() + txn.reports.len()) {
            Ok(p) => p,
            Err(d) => return self.deny(String::new(), None, d),
        };
        let mid = txn.mid;
        let report = (!txn.reports.is_empty()).then(ReportCopy::default);
        let received = self.received_header();
        self.actions.push(Action::BeginMessage(mid));
        // With sender authentication on, the message waits for its Authentication-Results.
        let (held, head) = if self.policy.is_message_auth_on() {
            (Some(HeldMessage::new(received)), None)
        } else {
            self.body.extend_from_slice(received.as_bytes());
            (None, Some(super::forged::HeadHold::default()))
        };
        self.permit(permit);
        self.phase = Phase::Data(Box::new(DataState {
            reader: DataReader::new(),
            headers: HeaderScanner::default(),
            size: 0,
            too_big: false,
            report,
            held,
            head,
        }));
    }

    /// The trace header we prepend (RFC 5321 §4.4), with the TLS parameters when used.
    fn received_header(&self) -> String {
        let txn = self.txn.as_ref();
        // Defence in depth: a name that could add clauses to the header is never written.
        let helo = self
            .helo
            .as_deref()
            .filter(|h| crate::smtp::helo::is_valid_helo_name(h))
            .unwrap_or("unknown");
        let mut proto = String::from(if self.esmtp { "ESMTP" } else { "SMTP" });
        if txn.is_some_and(|t| t.smtputf8) {
            proto = "UTF8SMTP".into();
        }
        if self.tls.is_some() {
            proto.push('S');
        }
        let using = match &self.tls {
            Some(t) => format!("\r\n\t(using {} with cipher {})", t.protocol, t.cipher),
            None => String::new(),
        };
        let mid = txn.map(|t| t.mid).unwrap_or(0);
        let for_clause = match txn.map(|t| t.rcpts.as_slice()) {
            Some([one]) => format!("\r\n\tfor <{one}>"),
            _ => String::new(),
        };
        format!(
            "Received: from {helo} ({} [{}]){using}\r\n\tby {} (mxgate) with {proto} id {mid}{for_clause};\r\n\t{}\r\n",
            self.p.rdns_host,
            address_literal(self.p.peer_ip),
            self.hostname,
            self.p.env.now_rfc2822()
        )
    }

    /// Feeds DATA bytes; returns (bytes used, end of data reached).
    pub(super) fn data(&mut self, input: &[u8]) -> (usize, bool) {
        let Phase::Data(st) = &mut self.phase else {
            return (0, true);
        };
        let before = self.body.len();
        let result = st.reader.feed(input, &mut self.body);
        let produced = self.body.len() - before;
        st.size += produced as u64;
        if !st.too_big {
            if let Some(h) = st.headers.feed(&self.body[before..]) {
                self.log_headers(h);
            }
        }
        let Phase::Data(st) = &mut self.phase else {
            return (0, true);
        };
        if !st.too_big && message_check(&self.policy, st.size).is_err() {
            st.too_big = true;
        }
        let mut head_done = None;
        if st.too_big {
            // Keep reading to the end of DATA so the session stays in sync, but store nothing.
            self.body.truncate(before);
        } else {
            if let Some(copy) = st.report.as_mut() {
                copy.push(&self.body[before..]);
            }
            if let Some(held) = st.held.as_mut() {
                held.take_from(&mut self.body, before);
            } else if let Some(h) = st.head.as_mut() {
                if h.take_from(&mut self.body, before) {
                    head_done = st.head.take();
                }
            }
        }
        if let (Some(h), Some(mid)) = (head_done, self.txn.as_ref().map(|t| t.mid)) {
            self.release_head(mid, h);
        }
        match result {
            Err(e) => {
                let reply = e.reply();
                let mid = self.txn.as_ref().map(|t| t.mid).unwrap_or(0);
                self.receiving_failed(mid, ReceivingFailure::DataSyntax(e.to_string()));
                self.txn = None;
                self.body.clear();
                self.actions.push(Action::AbortMessage);
                self.phase = Phase::Command;
                self.reply(reply);
                // The rest of the stream cannot be framed safely: close.
                self.close();
                (input.len(), true)
            }
            Ok(p) if matches!(p.status, DataStatus::Done) => {
                self.end_of_data();
                (p.consumed, true)
            }
            Ok(p) => (p.consumed, false),
        }
    }

    fn log_headers(&mut self, h: super::headers::FoundHeaders) {
        let Some(mid) = self.txn.as_ref().map(|t| t.mid) else {
            return;
        };
        if let Some(message_id) = h.message_id {
            self.log(Event::MessageIdHeader { mid, message_id });
        }
        if let Some(subject) = h.subject {
            self.log(Event::Subject { mid, subject });
        }
    }

    fn end_of_data(&mut self) {
        let Phase::Data(st) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return;
        };
        let mut st = st;
        if !st.too_big {
            if let Some(h) = st.headers.finish() {
                self.log_headers(h);
            }
        }
        // A message that is all header section: written now.
        if let (Some(h), Some(mid)) = (st.head.take(), self.txn.as_ref().map(|t| t.mid)) {
            self.release_head(mid, h);
        }
        let Some(txn) = &self.txn else { return };
        let mid = txn.mid;
        if let Err(d) = message_check(&self.policy, st.size) {
            // ESA's words, then which limit it was (ESA has no line for that).
            self.log(Event::ReceivingFailed {
                mid,
                icid: self.p.icid,
                reason: ReceivingFailure::TooBig,
            });
            self.log_denial("message".into(), Some(mid), d.reason);
            self.drop_refused_message(mid);
            if let Some(r) = d.reply {
                self.reply(r);
            }
            return;
        }
        let from = txn.from.clone();
        self.log(Event::Ready {
            mid,
            bytes: st.size,
            from: from.clone(),
        });
        let Some(txn) = &self.txn else { return };
        let env = (!txn.rcpts.is_empty()).then(|| Envelope {
            mid,
            icid: self.p.icid,
            listener: self.p.listener.clone(),
            sender_group: self.p.classification.group.clone(),
            policy: self.policy.name.clone(),
            peer_ip: self.p.peer_ip,
            helo: self.helo.clone().unwrap_or_default(),
            from,
            rcpts: txn.rcpts.clone(),
            received_unix: self.p.env.now_unix(),
            tls: self
                .tls
                .as_ref()
                .map(|t| format!("{} {}", t.protocol, t.cipher)),
            body_8bitmime: txn.body_8bitmime,
        });
        if let Some(held) = st.held.take() {
            return self.authenticate_message(env, st.report.take(), held);
        }
        // A message to a report address goes to the TLS-RPT intake first.
        if let Some(env) = self.ingest_report(env, st.report.take()) {
            self.actions.push(Action::CommitMessage(env));
            self.phase = Phase::Committing;
        }
    }

    /// A message refused at the end of DATA: its `Message finished … aborted` line, and its
    /// transaction and spool file gone.
    pub(super) fn drop_refused_message(&mut self, mid: u64) {
        self.log(Event::MessageFinished {
            mid,
            how: "aborted".into(),
        });
        self.txn = None;
        self.body.clear();
        self.actions.push(Action::AbortMessage);
    }

    /// Drops the message being received (timeout, shutdown, lost connection).
    pub(super) fn abort_data(&mut self) {
        if let Some(txn) = self.txn.take() {
            self.receiving_failed(txn.mid, ReceivingFailure::ConnectionEnded);
        }
        self.body.clear();
        self.actions.push(Action::AbortMessage);
        self.phase = Phase::Command;
    }

    /// A message was not accepted after DATA began: ESA's `ICID n Receiving Failed: reason`
    /// line, then `Message finished MID n aborted` to tie it to the MID.
    pub(super) fn receiving_failed(&mut self, mid: u64, reason: ReceivingFailure) {
        self.log(Event::ReceivingFailed {
            mid,
            icid: self.p.icid,
            reason,
        });
        if mid != 0 {
            self.log(Event::MessageFinished {
                mid,
                how: "aborted".into(),
            });
        }
    }
}
