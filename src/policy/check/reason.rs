//! Why a check refused: the typed reasons the mail log renders and the metrics label.

use std::fmt;
use std::net::IpAddr;

use super::sender;
use crate::smtp::reply::Reply;

/// The SMTP stage a reason belongs to (decides which counter the metrics use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The connection as a whole.
    Connect,
    /// Between the greeting and `MAIL FROM`.
    Helo,
    /// `MAIL FROM`.
    Mail,
    /// `RCPT TO`.
    Rcpt,
    /// `DATA` and the message.
    Data,
}

/// Which numeric limit of the mail-flow policy was exceeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKind {
    /// `max_messages_per_connection`.
    MessagesPerConnection,
    /// `max_message_size`, against the `SIZE=` a client declared at `MAIL FROM`.
    DeclaredSize {
        /// The declared size.
        declared: u64,
    },
    /// `max_recipients_per_message`.
    RecipientsPerMessage,
    /// `max_recipients_per_hour` for one client address (network for IPv6).
    RecipientsPerHour {
        /// The client address.
        ip: IpAddr,
    },
    /// `max_message_size`, against the bytes received in DATA.
    MessageSize,
}

/// Why something was refused. `Display` is the mail log's text (after `refused: `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenialReason {
    /// The listener holds `max_connections` sessions.
    ListenerFull {
        /// The listener's `max_connections`.
        max: usize,
    },
    /// No connection id could be allocated (spool counter failure).
    LocalError,
    /// The HAT said TCPREFUSE: closed before any greeting.
    HatRefuse,
    /// The HAT said REJECT: the reject banner, then close.
    HatReject,
    /// The client talked before the greeting.
    PreGreet,
    /// The client's address already holds `max_concurrent_connections_per_ip`.
    PerIpFull {
        /// The limit.
        max: u64,
        /// Mail-flow policy name.
        policy: String,
        /// The reply sent (the log line names it).
        reply: Reply,
    },
    /// More bad commands than `max_bad_commands`.
    TooManyBadCommands {
        /// The listener's `max_bad_commands`.
        max: u32,
    },
    /// More `MAIL FROM` commands without a queued message than
    /// [`MAX_TRANSACTIONS_WITHOUT_MESSAGE`](super::mail::MAX_TRANSACTIONS_WITHOUT_MESSAGE).
    TooManyTransactions {
        /// The limit.
        max: u64,
    },
    /// More refused `RCPT TO` commands without a queued message than
    /// [`MAX_REFUSED_RECIPIENTS`](super::rcpt::MAX_REFUSED_RECIPIENTS).
    TooManyRefusedRecipients {
        /// The limit.
        max: u64,
    },
    /// A timeout fired (`command`, `data`, `session`, ...).
    Timeout {
        /// Which timeout.
        what: String,
    },
    /// The server is shutting down.
    Shutdown,
    /// The server is draining (`mxgate drain`): no new connections.
    Draining,
    /// STARTTLS is not offered (TLS off, or no certificate).
    StartTlsUnavailable,
    /// `tls: required` and the client sent a mail command before STARTTLS.
    TlsRequired,
    /// MAIL parameters after HELO (no extension was announced).
    ParamsNeedEhlo,
    /// The sender is in `tls_mandatory_senders` and TLS is not active.
    TlsMandatorySender,
    /// `tls_verify_client` under `tls: required` and no verified certificate: why.
    ClientCert {
        /// What the certificate check found (`no client certificate`, ...).
        why: String,
    },
    /// A numeric limit of the mail-flow policy.
    Limit {
        /// Which limit.
        kind: LimitKind,
        /// Its value.
        max: u64,
        /// Mail-flow policy name.
        policy: String,
    },
    /// `BODY=BINARYMIME` without CHUNKING.
    BinaryMime,
    /// A non-ASCII address without `SMTPUTF8`.
    NeedsSmtputf8,
    /// A recipient address form that reaches another domain, from a non-relay sender.
    RelayAttempt,
    /// The recipient access table refused the recipient.
    Rat {
        /// The recipient address.
        rcpt: String,
        /// Which RAT rule (`entry N` or `default`).
        rule: String,
    },
    /// The client passed `max_invalid_recipients_per_hour` (Directory Harvest Attack
    /// Prevention): refused, and the connection is dropped.
    Dhap {
        /// The limit.
        max: u64,
        /// The client address (network for IPv6 is counted, the address is logged).
        ip: IpAddr,
        /// Mail-flow policy name.
        policy: String,
        /// The reply sent (the log line names it); boxed to keep every `Denial` small.
        reply: Box<Reply>,
    },
    /// Recipient validation said the address does not exist.
    InvalidRecipient {
        /// The recipient address.
        rcpt: String,
        /// The method (`callahead`, `list`, `ldap`).
        method: &'static str,
        /// What the lookup found (log only: may name the internal server).
        detail: String,
        /// When the cached answer was obtained (unix seconds); `None`: asked just now.
        cached: Option<u64>,
    },
    /// Recipient validation gave no answer and the entry says `on_tempfail: tempfail`.
    ValidationTempFail {
        /// The method.
        method: &'static str,
        /// Why no answer.
        cause: crate::validate::TempFailCause,
        /// What happened (log only).
        detail: String,
    },
    /// `DATA` with no accepted recipient.
    NoRecipients,
    /// The spool could not store the message.
    Spool {
        /// The spool error.
        error: String,
    },
    /// A message only to TLS-RPT report addresses whose report was not taken.
    Report {
        /// The intake's outcome label (`malformed`, `too_large`, `bomb`, `store_failed`).
        outcome: &'static str,
    },
    /// Envelope-sender DNS verification refused the sender (`sender::check_mail_verdict`).
    SenderDns {
        /// Which of ESA's three outcomes.
        outcome: sender::SenderDnsOutcome,
        /// The envelope sender.
        address: String,
        /// What DNS said (log only).
        detail: String,
    },
    /// SPF refused the transaction under `spf: reject_fail`.
    Spf {
        /// `fail`, `softfail` or `temperror`.
        result: crate::auth::SpfVerdict,
        /// The identity checked.
        address: String,
        /// The stage that says the refusal (`spf_at`).
        at: crate::policy::sender_auth::SpfStage,
    },
    /// DMARC `p=reject` failure refused under `dmarc: enforce`.
    Dmarc {
        /// The RFC 5322 From domain.
        domain: String,
    },
    /// A header section we cannot authenticate as the internal server will read it.
    MalformedHeader {
        /// What is wrong.
        problem: crate::auth::header::HeaderProblem,
    },
    /// No single author domain for DMARC under `dmarc: enforce`.
    DmarcAuthor {
        /// What is wrong with the From field(s).
        problem: crate::auth::header::HeaderProblem,
    },
    /// The shared-state store did not answer and the counter's `when_unavailable` is
    /// `tempfail`.
    SharedStateUnavailable {
        /// `connections`, `recipients_per_hour` or `harvest`.
        counter: &'static str,
    },
}

impl DenialReason {
    /// The metric label (`reason` of `mxgate_messages_rejected_total` and
    /// `mxgate_recipients_rejected_total` for the MAIL and RCPT stages).
    pub fn label(&self) -> &'static str {
        match self {
            DenialReason::ListenerFull { .. } => "listener_full",
            DenialReason::LocalError => "local_error",
            DenialReason::HatRefuse => "hat_refuse",
            DenialReason::HatReject => "hat_reject",
            DenialReason::PreGreet => "pre_greet",
            DenialReason::PerIpFull { .. } => "per_ip_full",
            DenialReason::TooManyBadCommands { .. } => "bad_commands",
            DenialReason::TooManyTransactions { .. } => "transactions",
            DenialReason::TooManyRefusedRecipients { .. } => "refused_recipients",
            DenialReason::Timeout { .. } => "timeout",
            DenialReason::Shutdown => "shutdown",
            DenialReason::Draining => "draining",
            DenialReason::StartTlsUnavailable => "starttls_unavailable",
            DenialReason::TlsRequired | DenialReason::TlsMandatorySender => "tls_required",
            DenialReason::ParamsNeedEhlo => "params_need_ehlo",
            DenialReason::ClientCert { .. } => "client_cert",
            DenialReason::Limit {
                kind: LimitKind::DeclaredSize { .. } | LimitKind::MessageSize,
                ..
            } => "size",
            DenialReason::Limit { .. } => "limit",
            DenialReason::BinaryMime => "binarymime",
            DenialReason::NeedsSmtputf8 => "smtputf8",
            DenialReason::RelayAttempt => "relay_attempt",
            DenialReason::Rat { .. } => "rat",
            DenialReason::Dhap { .. } => "dhap",
            DenialReason::InvalidRecipient { .. } => "invalid_recipient",
            DenialReason::ValidationTempFail { .. } => "validation_tempfail",
            DenialReason::NoRecipients => "no_recipients",
            DenialReason::Spool { .. } => "spool",
            DenialReason::Report { .. } => "tlsrpt",
            DenialReason::SenderDns { outcome, .. } => outcome.label(),
            DenialReason::Spf {
                result: crate::auth::SpfVerdict::TempError,
                ..
            } => "spf_temperror",
            DenialReason::Spf { .. } => "spf_fail",
            DenialReason::Dmarc { .. } => "dmarc_reject",
            DenialReason::MalformedHeader { .. } => "malformed_header",
            DenialReason::DmarcAuthor { .. } => "dmarc_from",
            DenialReason::SharedStateUnavailable { .. } => "shared_state_unavailable",
        }
    }

    /// The stage whose check decides this reason.
    pub(crate) fn stage(&self) -> Stage {
        match self {
            DenialReason::ListenerFull { .. }
            | DenialReason::LocalError
            | DenialReason::HatRefuse
            | DenialReason::HatReject
            | DenialReason::PreGreet
            | DenialReason::PerIpFull { .. }
            | DenialReason::TooManyBadCommands { .. }
            | DenialReason::Timeout { .. }
            | DenialReason::Shutdown
            | DenialReason::Draining
            | DenialReason::SharedStateUnavailable {
                counter: "connections",
            } => Stage::Connect,
            DenialReason::SharedStateUnavailable { .. } => Stage::Rcpt,
            DenialReason::StartTlsUnavailable | DenialReason::TlsRequired => Stage::Helo,
            DenialReason::ParamsNeedEhlo
            | DenialReason::TlsMandatorySender
            | DenialReason::ClientCert { .. }
            | DenialReason::TooManyTransactions { .. }
            | DenialReason::BinaryMime
            | DenialReason::Limit {
                kind: LimitKind::MessagesPerConnection | LimitKind::DeclaredSize { .. },
                ..
            } => Stage::Mail,
            // Decided at RCPT as well; never logged as `Refused`, so never counted.
            DenialReason::NeedsSmtputf8 => Stage::Mail,
            DenialReason::RelayAttempt
            | DenialReason::TooManyRefusedRecipients { .. }
            | DenialReason::Rat { .. }
            | DenialReason::Dhap { .. }
            | DenialReason::InvalidRecipient { .. }
            | DenialReason::ValidationTempFail { .. }
            | DenialReason::Limit {
                kind: LimitKind::RecipientsPerMessage | LimitKind::RecipientsPerHour { .. },
                ..
            } => Stage::Rcpt,
            // A refused DATA refuses the message: counted with the MAIL refusals.
            DenialReason::SenderDns { .. } => Stage::Mail,
            DenialReason::Spf { at, .. } => match at {
                crate::policy::sender_auth::SpfStage::Rcpt => Stage::Rcpt,
                _ => Stage::Mail,
            },
            // Refused after DATA: counted with the MAIL refusals, like a refused DATA.
            DenialReason::Dmarc { .. }
            | DenialReason::MalformedHeader { .. }
            | DenialReason::DmarcAuthor { .. } => Stage::Mail,
            DenialReason::NoRecipients
            | DenialReason::Spool { .. }
            | DenialReason::Report { .. }
            | DenialReason::Limit {
                kind: LimitKind::MessageSize,
                ..
            } => Stage::Data,
        }
    }
}

impl fmt::Display for DenialReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenialReason::ListenerFull { max } => write!(f, "max_connections {max} reached"),
            DenialReason::LocalError => f.write_str("local error"),
            DenialReason::HatRefuse => f.write_str("HAT TCPREFUSE"),
            DenialReason::HatReject => f.write_str("HAT REJECT"),
            DenialReason::PreGreet => f.write_str("pre-greeting traffic"),
            DenialReason::PerIpFull { max, policy, reply } => write!(
                f,
                "max_concurrent_connections_per_ip {max} (policy {policy}) -> {reply}"
            ),
            DenialReason::TooManyBadCommands { max } => {
                write!(f, "max_bad_commands {max} exceeded")
            }
            DenialReason::TooManyTransactions { max } => {
                write!(f, "{max} transactions without a message")
            }
            DenialReason::TooManyRefusedRecipients { max } => {
                write!(f, "{max} refused recipients without a message")
            }
            DenialReason::Timeout { what } => write!(f, "{what} timeout"),
            DenialReason::Shutdown => f.write_str("shutdown"),
            DenialReason::Draining => f.write_str("draining"),
            DenialReason::StartTlsUnavailable => f.write_str("STARTTLS not offered"),
            DenialReason::TlsRequired => f.write_str("tls required"),
            DenialReason::ParamsNeedEhlo => f.write_str("MAIL parameters after HELO"),
            DenialReason::TlsMandatorySender => f.write_str("tls_mandatory_senders"),
            DenialReason::ClientCert { why } => write!(f, "tls_verify_client ({why})"),
            DenialReason::Limit { kind, max, policy } => match kind {
                LimitKind::MessagesPerConnection => {
                    write!(f, "max_messages_per_connection {max} (policy {policy})")
                }
                LimitKind::DeclaredSize { declared } => write!(
                    f,
                    "max_message_size {max} < SIZE={declared} (policy {policy})"
                ),
                LimitKind::RecipientsPerMessage => {
                    write!(f, "max_recipients_per_message {max} (policy {policy})")
                }
                LimitKind::RecipientsPerHour { ip } => write!(
                    f,
                    "max_recipients_per_hour {max} for {ip} (policy {policy})"
                ),
                LimitKind::MessageSize => write!(f, "max_message_size {max} (policy {policy})"),
            },
            DenialReason::BinaryMime => f.write_str("BODY=BINARYMIME without CHUNKING"),
            DenialReason::NeedsSmtputf8 => f.write_str("non-ASCII address without SMTPUTF8"),
            DenialReason::RelayAttempt => {
                f.write_str("address form not accepted from non-relay senders")
            }
            DenialReason::Rat { rule, .. } => write!(f, "RAT {rule}"),
            DenialReason::Dhap {
                max,
                ip,
                policy,
                reply,
            } => write!(
                f,
                "max_invalid_recipients_per_hour {max} for {ip} (policy {policy}) -> {reply}"
            ),
            DenialReason::InvalidRecipient {
                method,
                detail,
                cached,
                ..
            } => {
                write!(f, "validate {method}: invalid ({detail}")?;
                match cached {
                    Some(t) => match chrono::DateTime::from_timestamp(*t as i64, 0) {
                        Some(at) => write!(f, ", cached {})", at.format("%Y-%m-%dT%H:%M:%SZ")),
                        None => f.write_str(", cached)"),
                    },
                    None => f.write_str(")"),
                }
            }
            DenialReason::ValidationTempFail { method, detail, .. } => {
                write!(f, "validate {method}: no answer ({detail})")
            }
            DenialReason::NoRecipients => f.write_str("no valid recipients"),
            DenialReason::Spool { error } => write!(f, "spool error: {error}"),
            DenialReason::Report { outcome } => write!(f, "TLS-RPT report {outcome}"),
            DenialReason::SenderDns {
                outcome, detail, ..
            } if !detail.is_empty() => write!(f, "{outcome} ({detail})"),
            DenialReason::SenderDns { outcome, .. } => write!(f, "{outcome}"),
            DenialReason::Spf {
                result,
                address,
                at,
            } => write!(
                f,
                "SPF {} for {address} (spf: reject_fail, spf_at: {})",
                result.label(),
                at.as_str()
            ),
            DenialReason::Dmarc { domain } => {
                write!(f, "DMARC fail for {domain} (p=reject, dmarc: enforce)")
            }
            DenialReason::MalformedHeader { problem } => {
                write!(f, "malformed header section: {}", problem.describe())
            }
            DenialReason::DmarcAuthor { problem } => {
                write!(
                    f,
                    "DMARC needs one From address: {} (dmarc: enforce)",
                    problem.describe()
                )
            }
            DenialReason::SharedStateUnavailable { counter } => write!(
                f,
                "shared state unavailable ({counter}: when_unavailable tempfail)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::Enhanced;

    /// The log texts are the ones the mail log printed before the checks were typed.
    #[test]
    fn reasons_render_as_the_mail_log_always_printed_them() {
        let lim = |kind, max| DenialReason::Limit {
            kind,
            max,
            policy: "THROTTLED".into(),
        };
        let cases = [
            (
                lim(LimitKind::RecipientsPerMessage, 2),
                "max_recipients_per_message 2 (policy THROTTLED)",
            ),
            (
                lim(
                    LimitKind::RecipientsPerHour {
                        ip: "192.0.2.42".parse().unwrap(),
                    },
                    3,
                ),
                "max_recipients_per_hour 3 for 192.0.2.42 (policy THROTTLED)",
            ),
            (
                lim(LimitKind::MessagesPerConnection, 1),
                "max_messages_per_connection 1 (policy THROTTLED)",
            ),
            (
                lim(LimitKind::DeclaredSize { declared: 5000 }, 2048),
                "max_message_size 2048 < SIZE=5000 (policy THROTTLED)",
            ),
            (
                lim(LimitKind::MessageSize, 2048),
                "max_message_size 2048 (policy THROTTLED)",
            ),
            (DenialReason::TlsMandatorySender, "tls_mandatory_senders"),
            (
                DenialReason::ClientCert {
                    why: "no client certificate".into(),
                },
                "tls_verify_client (no client certificate)",
            ),
            (
                DenialReason::RelayAttempt,
                "address form not accepted from non-relay senders",
            ),
            (
                DenialReason::TooManyBadCommands { max: 3 },
                "max_bad_commands 3 exceeded",
            ),
            (
                DenialReason::TooManyTransactions { max: 100 },
                "100 transactions without a message",
            ),
            (
                DenialReason::TooManyRefusedRecipients { max: 1000 },
                "1000 refused recipients without a message",
            ),
            (
                DenialReason::Timeout {
                    what: "command".into(),
                },
                "command timeout",
            ),
            (
                DenialReason::PerIpFull {
                    max: 5,
                    policy: "ACCEPTED".into(),
                    reply: Reply::new(421, Enhanced(4, 7, 0), "Too many"),
                },
                "max_concurrent_connections_per_ip 5 (policy ACCEPTED) -> 421 4.7.0 Too many",
            ),
            (
                DenialReason::Dhap {
                    max: 25,
                    ip: "198.51.100.7".parse().unwrap(),
                    policy: "ACCEPTED".into(),
                    reply: Box::new(Reply::new(
                        550,
                        Enhanced(5, 7, 1),
                        "Too many invalid recipients",
                    )),
                },
                "max_invalid_recipients_per_hour 25 for 198.51.100.7 (policy ACCEPTED) \
                 -> 550 5.7.1 Too many invalid recipients",
            ),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
    }

    /// The metric labels dashboards already use, and the counter each stage feeds.
    #[test]
    fn labels_and_stages_of_counted_reasons() {
        let lim = |kind| DenialReason::Limit {
            kind,
            max: 1,
            policy: "P".into(),
        };
        let cases = [
            (
                DenialReason::TlsMandatorySender,
                "tls_required",
                Stage::Mail,
            ),
            (
                DenialReason::ClientCert { why: "x".into() },
                "client_cert",
                Stage::Mail,
            ),
            (
                lim(LimitKind::DeclaredSize { declared: 9 }),
                "size",
                Stage::Mail,
            ),
            (lim(LimitKind::MessagesPerConnection), "limit", Stage::Mail),
            (DenialReason::RelayAttempt, "relay_attempt", Stage::Rcpt),
            (
                DenialReason::Rat {
                    rcpt: "a@b".into(),
                    rule: "default".into(),
                },
                "rat",
                Stage::Rcpt,
            ),
            (lim(LimitKind::RecipientsPerMessage), "limit", Stage::Rcpt),
            (
                lim(LimitKind::RecipientsPerHour {
                    ip: "192.0.2.1".parse().unwrap(),
                }),
                "limit",
                Stage::Rcpt,
            ),
            (lim(LimitKind::MessageSize), "size", Stage::Data),
            (
                DenialReason::Dhap {
                    max: 25,
                    ip: "192.0.2.1".parse().unwrap(),
                    policy: "P".into(),
                    reply: Box::new(Reply::new(550, Enhanced(5, 7, 1), "x")),
                },
                "dhap",
                Stage::Rcpt,
            ),
        ];
        for (reason, label, stage) in cases {
            assert_eq!((reason.label(), reason.stage()), (label, stage), "{reason}");
        }
    }
}
