//! The SMTP session as a pure state machine: bytes and events in, replies and actions out.
//!
//! The connection driver feeds received bytes with [`Session::feed`] and carries out the
//! [`Action`]s it finds in [`Session::take_actions`]. The session never touches a socket,
//! the disk or the clock: ids and time come from [`SessionEnv`], per-IP counters from
//! [`RateLimiter`].

mod commands;
mod data;
mod forged;
pub(crate) mod headers;
mod message_auth;
mod report;
mod sender;
mod shared;
mod tls;
mod validation;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::envelope::Envelope;
use crate::mail_log::{Event, ReceivingFailure};
use crate::policy::check::connect::{self, ConnectCtx};
use crate::policy::check::{self, Denial, DenialReason, Permit};
use crate::policy::flow::{Action as PolicyAction, MailFlowPolicy, TlsMode};
use crate::policy::hat::Classification;
use crate::policy::rat::RecipientAccessTable;
use crate::policy::rate::RateLimiter;
use crate::smtp::address::Mailbox;
use crate::smtp::data::DataReader;
use crate::smtp::line::{LineEvent, LineReader};
use crate::smtp::reply::{Enhanced, Reply};

use headers::HeaderScanner;
pub use shared::HourlyRequest;
pub use tls::{TlsInfo, TlsOutcome};

/// What the session needs from the outside world, injectable for tests.
pub trait SessionEnv: Send + Sync {
    /// A fresh message id (persisted counter).
    fn next_mid(&self) -> Result<u64, String>;
    /// Current time as an RFC 5322 date for `Received:`.
    fn now_rfc2822(&self) -> String;
    /// Current time in seconds since the Unix epoch.
    fn now_unix(&self) -> u64;
}

/// Everything fixed for one connection, decided before the greeting.
#[derive(Clone)]
pub struct SessionParams {
    /// Connection id.
    pub icid: u64,
    /// Listener name.
    pub listener: String,
    /// Host name of the listener (the policy may override it).
    pub hostname: String,
    /// Local address the client connected to.
    pub local_ip: IpAddr,
    /// Client address (real client when behind PROXY protocol).
    pub peer_ip: IpAddr,
    /// Reverse-DNS name for logs and `Received:` (`unknown` when none).
    pub rdns_host: String,
    /// FCrDNS verified.
    pub rdns_verified: bool,
    /// HAT result: group, criterion, policy.
    pub classification: Classification,
    /// Recipient access table (public listeners).
    pub rat: Option<Arc<RecipientAccessTable>>,
    /// Longest command line accepted, CRLF included.
    pub max_command_line: usize,
    /// Bad commands tolerated before 421.
    pub max_bad_commands: u32,
    /// A certificate is loaded, so STARTTLS can work.
    pub tls_available: bool,
    /// Per-IP counters shared by all listeners.
    pub rate: Arc<RateLimiter>,
    /// Ids and time.
    pub env: Arc<dyn SessionEnv>,
    /// The TLS-RPT intake's settings, on public listeners when `policies/tlsrpt.yaml` is set.
    pub reports: Option<Arc<crate::tlsrpt::settings::TlsRptSettings>>,
    /// The per-IP budgets are in the shared store (`shared_state:`), with what each does
    /// when it does not answer; `None` = counted here alone.
    pub shared_limits: Option<crate::shared_state::settings::WhenUnavailable>,
}

/// How the connection opened, as the driver saw it before the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// The client waited for the greeting.
    Normal,
    /// The client sent data before the greeting (early talker).
    PreGreet,
    /// The client's IP already holds its maximum of concurrent connections.
    ConcurrencyFull,
    /// The shared store did not answer for the connection count (`harvest: false`) or the
    /// harvest count (`true`) and that counter's `when_unavailable` is `tempfail`: 421 4.3.0.
    SharedStateUnavailable {
        /// The harvest count, not the connection count.
        harvest: bool,
    },
}

/// Something the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this reply (the driver flushes when it has no more input to process).
    Reply(Reply),
    /// Write this mail-log event.
    Log(Event),
    /// Flush replies, drop any buffered input, run the TLS handshake, then call
    /// `Session::tls_established` or `Session::tls_failed`.
    StartTls,
    /// Open a spool file for this message id; body bytes follow in [`Session::body_mut`].
    BeginMessage(u64),
    /// Write the remaining body, make the message durable, then call [`Session::committed`].
    CommitMessage(Envelope),
    /// Throw the message being received away.
    AbortMessage,
    /// Ask whether this recipient exists (bounded by the command timeout), then call
    /// [`Session::recipient_validated`].
    ValidateRecipient(crate::validate::rule::ValidationRequest),
    /// Authenticate the sender (DNS verification, SPF; bounded by the command timeout), then
    /// call [`Session::sender_verified`].
    VerifySender(crate::auth::SenderRequest),
    /// Take the TLS-RPT report out of this message (the message as received; `None` when it
    /// passed the intake's size limit), then call [`Session::report_ingested`].
    IngestReport(Option<Vec<u8>>),
    /// Verify the message's DKIM signatures and DMARC (bounded by the command timeout), then
    /// call [`Session::message_authenticated`].
    AuthenticateMessage(crate::auth::MessageRequest),
    /// Take one recipient of the client's hourly budget from the shared store (bounded by
    /// `shared_state.timeout`), then call [`Session::recipient_taken`].
    TakeRecipient(HourlyRequest),
    /// Count one invalid recipient of this client in the shared store; not awaited.
    CountInvalid(std::net::IpAddr),
    /// Flush and close the connection.
    Close,
}

#[derive(Debug)]
enum Phase {
    Command,
    Data(Box<DataState>),
    TlsPending,
    Committing,
    Validating(Box<validation::PendingRcpt>),
    /// Waiting for the shared store's answer on the hourly budget.
    TakingRecipient(Box<shared::PendingTake>),
    VerifyingSender(Box<sender::PendingMail>),
    /// The report of a message is being taken; the envelope (if anything else is to be
    /// queued) is committed after.
    Ingesting(Option<Box<Envelope>>),
    /// The message's DKIM and DMARC are being checked.
    Authenticating(Box<message_auth::PendingMessage>),
    Closed,
}

#[derive(Debug)]
struct DataState {
    reader: DataReader,
    headers: HeaderScanner,
    /// Message bytes received (without our `Received:` header).
    size: u64,
    too_big: bool,
    /// The message as received, kept for the TLS-RPT intake when it has a report address.
    report: Option<report::ReportCopy>,
    /// The message held back until its `Authentication-Results` is known (auth on).
    held: Option<message_auth::HeldMessage>,
    /// Otherwise its header section, held until complete to remove forged trust headers.
    head: Option<forged::HeadHold>,
}

#[derive(Debug)]
struct Transaction {
    mid: u64,
    from: String,
    /// Distinct recipients, in order (the RID is the index).
    rcpts: Vec<String>,
    /// RID of each recipient by its duplicate key (`recipient_key`): O(1) per RCPT.
    rcpt_ids: HashMap<String, u32>,
    /// Accepted RCPT commands, duplicates included (what the limits count).
    rcpts_accepted: u64,
    smtputf8: bool,
    body_8bitmime: bool,
    /// TLS-RPT report addresses accepted, in order (also in `rcpts` under `relay: true`).
    reports: Vec<String>,
    /// The SPF result of the transaction (for Authentication-Results).
    spf: Option<crate::auth::SpfOutcome>,
    /// An SPF refusal said at `spf_at: rcpt` or `data`.
    spf_refusal: Option<(crate::policy::sender_auth::SpfStage, Denial)>,
}

/// One SMTP session.
pub struct Session {
    p: SessionParams,
    policy: Arc<MailFlowPolicy>,
    hostname: String,
    phase: Phase,
    lines: LineReader,
    actions: Vec<Action>,
    body: Vec<u8>,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    // Boxed: hundreds of bytes that an idle session (most of them) does not need.
    txn: Option<Box<Transaction>>,
    messages: u64,
    /// `MAIL FROM` commands since the last queued message (check::mail's loop bound).
    mail_without_message: u64,
    /// Refused `RCPT TO` commands since the last queued message (check::rcpt's bound).
    refused_rcpts: u64,
    bad_commands: u32,
    quit: bool,
    tls_failed: bool,
    closed_by_server: bool,
    tls_required_logged: bool,
}

impl Session {
    /// A session for a classified connection; call [`Session::start`] next.
    pub fn new(p: SessionParams) -> Self {
        let policy = p.classification.policy.clone();
        let hostname = policy
            .override_hostname
            .clone()
            .unwrap_or_else(|| p.hostname.clone());
        let lines = LineReader::new(p.max_command_line);
        Session {
            p,
            policy,
            hostname,
            phase: Phase::Command,
            lines,
            actions: Vec::new(),
            body: Vec::new(),
            helo: None,
            esmtp: false,
            tls: None,
            txn: None,
            messages: 0,
            mail_without_message: 0,
            refused_rcpts: 0,
            bad_commands: 0,
            quit: false,
            tls_failed: false,
            closed_by_server: false,
            tls_required_logged: false,
        }
    }

    /// Logs the connection and the HAT decision, then greets, rejects or refuses
    /// (`connect::check_connect` decides which).
    pub fn start(&mut self, opening: Opening) {
        let c = self.p.classification.clone();
        let verdict = connect::check_connect(&ConnectCtx {
            policy: &self.policy,
            peer_ip: self.p.peer_ip,
            hostname: &self.hostname,
            group: &c.group,
            talked_first: opening == Opening::PreGreet,
            per_ip_full: opening == Opening::ConcurrencyFull,
            store_unavailable: match opening {
                Opening::SharedStateUnavailable { harvest: true } => Some("harvest"),
                Opening::SharedStateUnavailable { harvest: false } => Some("connections"),
                _ => None,
            },
        });
        let action = self.policy.action;
        if let Err(Denial {
            reason: DenialReason::HatRefuse,
            ..
        }) = verdict
        {
            // ESA logs refused connections under ICID 0: no SMTP session ever existed.
            self.log(Event::Hat {
                icid: 0,
                action: action.log_word(),
                group: c.group.clone(),
                matched: format!("{} address {}", c.matched, self.p.peer_ip),
            });
            self.phase = Phase::Closed;
            self.actions.push(Action::Close);
            return;
        }
        self.log(Event::NewIcid {
            icid: self.p.icid,
            listener: self.p.listener.clone(),
            local_ip: self.p.local_ip,
            peer_ip: self.p.peer_ip,
            rdns_host: self.p.rdns_host.clone(),
            verified: self.p.rdns_verified,
        });
        self.log(Event::Hat {
            icid: self.p.icid,
            action: action.log_word(),
            group: c.group.clone(),
            matched: c.matched.clone(),
        });
        match verdict {
            Ok(permit) => self.permit(permit),
            Err(d) => {
                let what = format!("connection from {}", self.p.peer_ip);
                self.deny(what, None, d);
                self.close();
            }
        }
    }

    /// Consumes as much input as the current phase allows; returns the bytes used.
    /// Stops early while waiting for TLS, a spool commit, or after close.
    pub fn feed(&mut self, input: &[u8]) -> usize {
        let mut pos = 0;
        loop {
            match &mut self.phase {
                Phase::Command => match self.lines.next(&input[pos..]) {
                    LineEvent::Incomplete => break,
                    LineEvent::Line { line, consumed } => {
                        pos += consumed;
                        self.command(line);
                    }
                    LineEvent::TooLong { consumed, complete } => {
                        pos += consumed;
                        if !complete {
                            break;
                        }
                        self.bad_command(Reply::new(500, Enhanced(5, 5, 2), "Line too long"));
                    }
                    LineEvent::BareNewline { consumed } => {
                        pos += consumed;
                        self.bad_command(Reply::new(
                            500,
                            Enhanced(5, 5, 2),
                            "Bare CR or LF in command line refused (RFC 5321 section 2.3.8)",
                        ));
                    }
                },
                Phase::Data(_) => {
                    let (used, done) = self.data(&input[pos..]);
                    pos += used;
                    if !done {
                        break;
                    }
                }
                Phase::TlsPending
                | Phase::Committing
                | Phase::Validating(_)
                | Phase::TakingRecipient(_)
                | Phase::VerifyingSender(_)
                | Phase::Ingesting(_)
                | Phase::Authenticating(_)
                | Phase::Closed => break,
            }
            if pos >= input.len() && !matches!(self.phase, Phase::Data(_)) {
                break;
            }
            if pos >= input.len() {
                break;
            }
        }
        pos
    }

    /// Takes the actions produced so far.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// True when actions are waiting to be taken.
    pub(crate) fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    /// Body bytes produced so far for the current message; the driver drains them to the spool.
    pub fn body_mut(&mut self) -> &mut Vec<u8> {
        &mut self.body
    }

    /// True once the session wants the connection closed.
    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// True while the session waits for the driver (TLS handshake or spool commit).
    pub(crate) fn is_waiting(&self) -> bool {
        matches!(
            self.phase,
            Phase::TlsPending
                | Phase::Committing
                | Phase::Validating(_)
                | Phase::TakingRecipient(_)
                | Phase::VerifyingSender(_)
                | Phase::Ingesting(_)
                | Phase::Authenticating(_)
        )
    }

    /// True inside DATA (the driver applies the data timeout).
    pub(crate) fn is_in_data(&self) -> bool {
        matches!(self.phase, Phase::Data(_))
    }

    /// The policy applied to this session.
    pub fn policy(&self) -> &Arc<MailFlowPolicy> {
        &self.policy
    }

    /// Connection id.
    pub fn icid(&self) -> u64 {
        self.p.icid
    }

    /// The spool commit finished.
    pub fn committed(&mut self, result: Result<(), String>) {
        let Some(txn) = self.txn.take() else { return };
        self.phase = Phase::Command;
        match check::data::check_commit(txn.mid, &result) {
            Ok(permit) => {
                self.messages += 1;
                self.mail_without_message = 0;
                self.refused_rcpts = 0;
                self.log(Event::Queued { mid: txn.mid });
                self.permit(permit);
            }
            Err(d) => {
                if let Err(e) = result {
                    self.receiving_failed(txn.mid, ReceivingFailure::Spool(e));
                }
                self.deny(String::new(), None, d);
            }
        }
    }

    /// A timeout fired: `what` names it for the log.
    pub fn timeout(&mut self, what: &str) {
        if matches!(self.phase, Phase::Data(_) | Phase::Authenticating(_)) {
            self.abort_data();
        }
        let d = connect::timeout(what, &self.hostname);
        self.deny("session".into(), None, d);
        self.close();
    }

    /// The server is shutting down.
    pub fn shutdown(&mut self) {
        if matches!(self.phase, Phase::Data(_) | Phase::Authenticating(_)) {
            self.abort_data();
        }
        let d = connect::shutdown(&self.hostname);
        self.deny("session".into(), None, d);
        self.close();
    }

    /// The connection is over (peer closed, or the driver closed it): final log lines.
    pub fn finish(&mut self) {
        if matches!(self.phase, Phase::Data(_) | Phase::Authenticating(_)) {
            self.abort_data();
        }
        if self.policy.action == PolicyAction::TcpRefuse {
            return;
        }
        if !self.quit && !self.closed_by_server {
            self.log(Event::Lost { icid: self.p.icid });
        }
        if self.policy.tls == TlsMode::Required && self.tls.is_none() {
            self.log_tls_required();
        }
        self.log(Event::Close { icid: self.p.icid });
        self.phase = Phase::Closed;
    }

    fn log_tls_required(&mut self) {
        if !self.tls_required_logged {
            self.tls_required_logged = true;
            self.log(Event::TlsRequiredNotInitiated { icid: self.p.icid });
        }
    }

    fn log(&mut self, e: Event) {
        self.actions.push(Action::Log(e));
    }

    fn reply(&mut self, r: Reply) {
        // A 421 always ends the session (RFC 5321 §3.8).
        let closing = r.code == 421;
        self.actions.push(Action::Reply(r));
        if closing && !matches!(self.phase, Phase::Closed) {
            self.close();
        }
    }

    fn close(&mut self) {
        self.closed_by_server = true;
        self.phase = Phase::Closed;
        self.actions.push(Action::Close);
    }

    fn bad_command(&mut self, r: Reply) {
        self.bad_commands += 1;
        match connect::check_bad_commands(self.bad_commands, self.p.max_bad_commands) {
            Ok(_) => self.reply(r),
            // A refusal of the whole connection: its line carries no MID, open transaction or not.
            Err(d) => self.deny("session".into(), None, d),
        }
    }

    /// Sends the reply a check's permit carries, if it carries one.
    fn permit(&mut self, permit: Permit) {
        if let Some(r) = permit.reply {
            self.reply(r);
        }
    }

    /// Logs a denial, then sends its reply. A DHAP refusal also drops the connection.
    fn deny(&mut self, what: String, mid: Option<u64>, d: Denial) {
        let dhap = match &d.reason {
            DenialReason::Dhap { max, .. } => Some(*max),
            _ => None,
        };
        if d.reason.stage() == check::Stage::Rcpt {
            self.refused_rcpts += 1;
        }
        self.log_denial(what, mid, d.reason);
        if let Some(r) = d.reply {
            self.reply(r);
        }
        if let Some(limit) = dhap {
            self.dhap_drop(limit);
        }
    }

    /// What a denial means for the mail log: ESA's own line where ESA has one, else
    /// `refused: <reason>` for `what`.
    fn log_denial(&mut self, what: String, mid: Option<u64>, reason: DenialReason) {
        let icid = self.p.icid;
        match reason {
            DenialReason::PreGreet => self.log(Event::PreGreet { icid }),
            DenialReason::Rat { ref rcpt, .. } => self.log(Event::RatRejected {
                icid,
                mid: mid.unwrap_or(0),
                rcpt: rcpt.clone(),
            }),
            DenialReason::TlsRequired => self.log_tls_required(),
            DenialReason::SenderDns {
                outcome,
                ref address,
                ..
            } => self.log(Event::SenderRejected {
                icid,
                address: address.clone(),
                outcome,
            }),
            // The reply says all there is (or, for a message, `Receiving Failed` did).
            DenialReason::HatRefuse
            | DenialReason::HatReject
            | DenialReason::LocalError
            | DenialReason::ListenerFull { .. }
            | DenialReason::StartTlsUnavailable
            | DenialReason::ParamsNeedEhlo
            | DenialReason::BinaryMime
            | DenialReason::NeedsSmtputf8
            | DenialReason::NoRecipients
            | DenialReason::Spool { .. } => {}
            reason => self.log(Event::Refused {
                icid,
                mid,
                what,
                reason,
            }),
        }
    }

    fn new_transaction(&mut self, from: &Option<Mailbox>, smtputf8: bool) -> Result<u64, String> {
        let mid = self.p.env.next_mid()?;
        self.txn = Some(Box::new(Transaction {
            mid,
            from: from.as_ref().map(|m| m.address()).unwrap_or_default(),
            rcpts: Vec::new(),
            rcpt_ids: HashMap::new(),
            rcpts_accepted: 0,
            smtputf8,
            body_8bitmime: false,
            reports: Vec::new(),
            spf: None,
            spf_refusal: None,
        }));
        Ok(mid)
    }
}
