//! The mail-log events and the text of each line.

use std::net::IpAddr;

/// Severity word printed after the timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Normal events.
    Info,
    /// Things an admin should look at.
    Warning,
}

/// One mail-log event. Each variant renders to exactly one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new inbound connection.
    NewIcid {
        /// Connection id.
        icid: u64,
        /// Listener name.
        listener: String,
        /// Local address the client connected to.
        local_ip: IpAddr,
        /// Client address.
        peer_ip: IpAddr,
        /// Reverse-DNS host name or `unknown`.
        rdns_host: String,
        /// FCrDNS verified.
        verified: bool,
    },
    /// The HAT decision for a connection.
    Hat {
        /// Connection id (0 for TCPREFUSE, as ESA logs it).
        icid: u64,
        /// `ACCEPT`, `REJECT`, `RELAY`, `TCPREFUSE`.
        action: &'static str,
        /// Sender group.
        group: String,
        /// The criterion that matched.
        matched: String,
    },
    /// Inbound TLS negotiated.
    TlsSuccess {
        /// Connection id.
        icid: u64,
        /// `TLSv1.3` / `TLSv1.2`.
        protocol: String,
        /// Cipher suite name.
        cipher: String,
        /// The client certificate, when the policy asked for one (`tls_verify_client`).
        client_cert: crate::policy::flow::ClientCert,
    },
    /// Inbound TLS handshake failed.
    TlsFailed {
        /// Connection id.
        icid: u64,
        /// Reason.
        reason: String,
    },
    /// TLS was required and the client did not start it.
    TlsRequiredNotInitiated {
        /// Connection id.
        icid: u64,
    },
    /// A command or recipient refused by a rule; names the rule for the admin.
    Refused {
        /// Connection id.
        icid: u64,
        /// Message id when inside a transaction.
        mid: Option<u64>,
        /// What was refused (`RCPT TO: <a@b>`, `MAIL FROM: <x>`, `connection`).
        what: String,
        /// Which check refused it, as the stage's check decided (rendered as the rule's text).
        reason: crate::policy::check::DenialReason,
    },
    /// A recipient refused by the RAT.
    RatRejected {
        /// Connection id.
        icid: u64,
        /// Message id.
        mid: u64,
        /// The address.
        rcpt: String,
    },
    /// A client passed `max_invalid_recipients_per_hour`: its connection is dropped (ESA's
    /// Directory Harvest Attack Prevention line).
    DhapDrop {
        /// Connection id (not in ESA's line; for the JSON form's readers and tests).
        icid: u64,
        /// Client address.
        peer_ip: IpAddr,
        /// Its reverse-DNS name, when it has one.
        rdns_host: Option<String>,
        /// The limit it passed.
        limit: u64,
        /// Sender group.
        sender_group: String,
        /// Listener name.
        listener: String,
    },
    /// A recipient refused by an LDAP accept query (ESA's line; the `refused:` line that
    /// follows says why).
    LdapAcceptRejected {
        /// Connection id.
        icid: u64,
        /// Message id.
        mid: u64,
        /// The address.
        rcpt: String,
    },
    /// Envelope-sender DNS verification refused the sender (ESA's line).
    SenderRejected {
        /// Connection id.
        icid: u64,
        /// The envelope sender.
        address: String,
        /// Which of the three outcomes.
        outcome: crate::policy::check::sender::SenderDnsOutcome,
    },
    /// The SPF result of a transaction (ESA's line: under the MID once the message has one,
    /// under the ICID when the MAIL FROM was refused).
    Spf {
        /// Connection id.
        icid: u64,
        /// Message id, when the transaction opened.
        mid: Option<u64>,
        /// `mailfrom` or `helo`.
        identity: crate::auth::SpfIdentity,
        /// The identity as an address.
        address: String,
        /// The result.
        result: crate::auth::SpfVerdict,
    },
    /// A message check after DATA: DKIM, DMARC, forged headers removed.
    MessageAuth(super::message_auth::MessageAuthEvent),
    /// MAIL FROM accepted: a message id starts.
    StartMid {
        /// Message id.
        mid: u64,
        /// Connection id.
        icid: u64,
    },
    /// Envelope sender.
    From {
        /// Message id.
        mid: u64,
        /// Connection id.
        icid: u64,
        /// Address (empty for the null sender).
        from: String,
    },
    /// Accepted recipient.
    To {
        /// Message id.
        mid: u64,
        /// Connection id.
        icid: u64,
        /// Recipient id, 0-based per message.
        rid: u32,
        /// Address.
        rcpt: String,
    },
    /// Message-ID header.
    MessageIdHeader {
        /// Message id.
        mid: u64,
        /// Header value.
        message_id: String,
    },
    /// Subject header.
    Subject {
        /// Message id.
        mid: u64,
        /// Header value.
        subject: String,
    },
    /// End of DATA received.
    Ready {
        /// Message id.
        mid: u64,
        /// Size in bytes as stored.
        bytes: u64,
        /// Envelope sender.
        from: String,
    },
    /// Message durably queued.
    Queued {
        /// Message id.
        mid: u64,
    },
    /// Message not accepted after DATA started.
    ReceivingFailed {
        /// Message id.
        mid: u64,
        /// Connection id.
        icid: u64,
        /// Reason.
        reason: ReceivingFailure,
    },
    /// Pipelined plaintext behind STARTTLS thrown away.
    StartTlsInjection {
        /// Connection id.
        icid: u64,
        /// Bytes discarded.
        bytes: usize,
    },
    /// Client spoke before the greeting.
    PreGreet {
        /// Connection id.
        icid: u64,
    },
    /// The connection ended without QUIT.
    Lost {
        /// Connection id.
        icid: u64,
    },
    /// The connection closed.
    Close {
        /// Connection id.
        icid: u64,
    },
    /// A new delivery connection.
    NewDcid {
        /// Delivery connection id.
        dcid: u64,
        /// Local address used.
        interface: IpAddr,
        /// Remote address.
        address: IpAddr,
        /// Remote port.
        port: u16,
    },
    /// Outbound TLS negotiated (`verified` names the checked identity, e.g. `CN=mail.example.com`).
    DcidTlsSuccess {
        /// Delivery connection id.
        dcid: u64,
        /// `TLSv1.3` / `TLSv1.2`.
        protocol: String,
        /// Cipher suite.
        cipher: String,
        /// Verified identity, when the certificate was checked and passed.
        verified: Option<String>,
    },
    /// Outbound TLS failed or the certificate did not verify.
    DcidTlsFailed {
        /// Delivery connection id.
        dcid: u64,
        /// Reason (`STARTTLS unexpected response`, handshake error, verification error).
        reason: String,
    },
    /// A `required*` destination could not negotiate (or verify) TLS: the alert line.
    DcidTlsRequiredFailed {
        /// Delivery connection id.
        dcid: u64,
        /// Remote address.
        address: IpAddr,
        /// Destination domain.
        domain: String,
    },
    /// Delivery of some recipients of a message starts on a connection.
    DeliveryStart {
        /// Delivery connection id.
        dcid: u64,
        /// Message id.
        mid: u64,
        /// Recipient ids.
        rids: Vec<u32>,
    },
    /// Recipients accepted by the downstream server.
    MessageDone {
        /// Delivery connection id.
        dcid: u64,
        /// Message id.
        mid: u64,
        /// Recipient ids.
        rids: Vec<u32>,
    },
    /// A temporary failure: retried later.
    Delayed {
        /// Delivery connection id (0 when no connection was made).
        dcid: u64,
        /// Message id.
        mid: u64,
        /// Recipient ids.
        rids: Vec<u32>,
        /// Enhanced status code.
        enhanced: String,
        /// Reason and remote reply.
        reason: String,
    },
    /// A permanent failure for one recipient.
    Bounced {
        /// Delivery connection id.
        dcid: u64,
        /// Message id.
        mid: u64,
        /// Recipient id.
        rid: u32,
        /// Enhanced status code.
        enhanced: String,
        /// Reason and remote reply.
        reason: String,
    },
    /// A DSN was queued for a bounced message.
    BounceGenerated {
        /// The DSN's message id.
        mid: u64,
        /// The bounced message.
        original: u64,
    },
    /// Every recipient of a message has a final outcome; it left the queue.
    MessageFinished {
        /// Message id.
        mid: u64,
        /// `done` or `aborted` (ESA's words).
        how: String,
    },
    /// A delivery connection closed.
    DcidClose {
        /// Delivery connection id.
        dcid: u64,
    },
    /// A TLS-RPT report address accepted as a recipient (`policies/tlsrpt.yaml`).
    ReportRecipient {
        /// Message id.
        mid: u64,
        /// Connection id.
        icid: u64,
        /// The report address.
        rcpt: String,
        /// Also delivered to the internal server (`relay: true`).
        relayed: bool,
    },
    /// A TLS-RPT report received by mail or HTTPS, and what became of it.
    TlsRptReport {
        /// Where it came from: `MID n` or `HTTPS from ADDR`.
        via: String,
        /// The `outcome` label (`accepted`, `duplicate`, `malformed`, ...).
        outcome: &'static str,
        /// Which report, or why none.
        detail: String,
    },
    /// Free-form line (start-up, warnings).
    Note {
        /// Severity.
        level: Level,
        /// Text.
        text: String,
    },
}

impl Event {
    /// Severity of the event.
    pub fn level(&self) -> Level {
        match self {
            Event::Note { level, .. } => *level,
            Event::TlsFailed { .. }
            | Event::StartTlsInjection { .. }
            | Event::PreGreet { .. }
            | Event::DcidTlsRequiredFailed { .. } => Level::Warning,
            _ => Level::Info,
        }
    }

    /// A short snake_case name for the JSON form.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::NewIcid { .. } => "new_icid",
            Event::Hat { .. } => "hat",
            Event::TlsSuccess { .. } => "tls_success",
            Event::TlsFailed { .. } => "tls_failed",
            Event::TlsRequiredNotInitiated { .. } => "tls_required_not_initiated",
            Event::Refused { .. } => "refused",
            Event::RatRejected { .. } => "rat_rejected",
            Event::DhapDrop { .. } => "dhap_drop",
            Event::LdapAcceptRejected { .. } => "ldap_accept_rejected",
            Event::StartMid { .. } => "start_mid",
            Event::SenderRejected { .. } => "sender_rejected",
            Event::Spf { .. } => "spf",
            Event::MessageAuth(e) => e.kind(),
            Event::From { .. } => "from",
            Event::To { .. } => "to",
            Event::MessageIdHeader { .. } => "message_id",
            Event::Subject { .. } => "subject",
            Event::Ready { .. } => "ready",
            Event::Queued { .. } => "queued",
            Event::ReceivingFailed { .. } => "receiving_failed",
            Event::StartTlsInjection { .. } => "starttls_injection",
            Event::PreGreet { .. } => "pregreet",
            Event::Lost { .. } => "lost",
            Event::Close { .. } => "close",
            Event::NewDcid { .. } => "new_dcid",
            Event::DcidTlsSuccess { .. } => "dcid_tls_success",
            Event::DcidTlsFailed { .. } => "dcid_tls_failed",
            Event::DcidTlsRequiredFailed { .. } => "dcid_tls_required_failed",
            Event::DeliveryStart { .. } => "delivery_start",
            Event::MessageDone { .. } => "message_done",
            Event::Delayed { .. } => "delayed",
            Event::Bounced { .. } => "bounced",
            Event::BounceGenerated { .. } => "bounce_generated",
            Event::MessageFinished { .. } => "message_finished",
            Event::DcidClose { .. } => "dcid_close",
            Event::ReportRecipient { .. } => "report_recipient",
            Event::TlsRptReport { .. } => "tlsrpt_report",
            Event::Note { .. } => "note",
        }
    }

    /// The ESA text of the event (without timestamp and level). Whatever a peer or the
    /// internal server sent, control characters become spaces: one event, one line.
    pub fn text(&self) -> String {
        let t = self.raw_text();
        if t.contains(is_unsafe) {
            printable(&t)
        } else {
            t
        }
    }

    fn raw_text(&self) -> String {
        match self {
            Event::NewIcid { icid, listener, local_ip, peer_ip, rdns_host, verified } => format!(
                "New SMTP ICID {icid} interface {listener} ({local_ip}) address {peer_ip} reverse dns host {rdns_host} verified {}",
                if *verified { "yes" } else { "no" }
            ),
            Event::Hat { icid, action, group, matched } => {
                format!("ICID {icid} {action} SG {group} match {matched} SBRS None")
            }
            Event::TlsSuccess { icid, protocol, cipher, client_cert } => match client_cert.describe() {
                // The subject comes from the client: no control characters in the log line.
                Some(c) => format!("ICID {icid} TLS success protocol {protocol} cipher {cipher} {}", printable(&c)),
                None => format!("ICID {icid} TLS success protocol {protocol} cipher {cipher}"),
            },
            Event::TlsFailed { icid, reason } => format!("ICID {icid} TLS failed: {reason}"),
            Event::TlsRequiredNotInitiated { icid } => {
                format!("ICID {icid} TLS was required but remote host did not initiate it")
            }
            // ESA has no line for these: the `mxgate:` prefix keeps ESA parsers from misreading them.
            Event::Refused { icid, mid: Some(mid), what, reason } => {
                format!("mxgate: ICID {icid} MID {mid} {what} refused: {reason}")
            }
            Event::Refused { icid, mid: None, what, reason } => format!("mxgate: ICID {icid} {what} refused: {reason}"),
            Event::RatRejected { icid, mid, rcpt } => format!("MID {mid} ICID {icid} To: <{rcpt}> Rejected by RAT"),
            // ESA's wording: the host pair is (address, name), the name repeats the address
            // when there is no PTR; reverse_dns is the address looked up.
            Event::DhapDrop { peer_ip, rdns_host, limit, sender_group, listener, .. } => format!(
                "Dropping connection due to potential Directory Harvest Attack from host=('{peer_ip}', '{}'), \
                 dhap_limit={limit}, sender_group={sender_group}, listener={listener}, reverse_dns={peer_ip}",
                rdns_host.as_deref().map_or_else(|| peer_ip.to_string(), str::to_string)
            ),
            Event::LdapAcceptRejected { icid, mid, rcpt } => format!("MID {mid} ICID {icid} To: <{rcpt}> Rejected by LDAPACCEPT"),
            Event::StartMid { mid, icid } => format!("Start MID {mid} ICID {icid}"),
            Event::From { mid, icid, from } => format!("MID {mid} ICID {icid} From: <{from}>"),
            Event::SenderRejected { icid, address, outcome } => format!(
                "ICID {icid} Address: <{}> sender rejected, {}",
                printable(address),
                outcome.esa_words()
            ),
            Event::Spf { icid, mid, identity, address, result } => {
                let who = match mid {
                    Some(mid) => format!("MID {mid}"),
                    None => format!("ICID {icid}"),
                };
                format!(
                    "{who} SPF: {} identity {} {}",
                    identity.log_word(),
                    printable(address),
                    result.log_word()
                )
            }
            Event::MessageAuth(e) => e.text(),
            Event::To { mid, icid, rid, rcpt } => format!("MID {mid} ICID {icid} RID {rid} To: <{rcpt}>"),
            Event::MessageIdHeader { mid, message_id } => format!("MID {mid} Message-ID '{}'", sanitize(message_id)),
            Event::Subject { mid, subject } => format!("MID {mid} Subject '{}'", sanitize(subject)),
            Event::Ready { mid, bytes, from } => format!("MID {mid} ready {bytes} bytes from <{from}>"),
            Event::Queued { mid } => format!("MID {mid} queued for delivery"),
            // ESA's form carries no MID; the session follows it with `Message finished MID n aborted`.
            Event::ReceivingFailed { icid, reason, .. } => format!("ICID {icid} Receiving Failed: {reason}"),
            Event::StartTlsInjection { icid, bytes } => {
                format!("mxgate: ICID {icid} discarded {bytes} bytes pipelined after STARTTLS")
            }
            Event::PreGreet { icid } => format!("mxgate: ICID {icid} pre-greeting traffic, rejected"),
            Event::Lost { icid } => format!("ICID {icid} lost"),
            Event::Close { icid } => format!("ICID {icid} close"),
            Event::NewDcid { dcid, interface, address, port } => {
                format!("New SMTP DCID {dcid} interface {interface} address {address} port {port}")
            }
            Event::DcidTlsSuccess { dcid, protocol, cipher, verified } => match verified {
                Some(id) => format!("DCID {dcid} TLS success protocol {protocol} cipher {cipher} verified {id}"),
                None => format!("DCID {dcid} TLS success protocol {protocol} cipher {cipher}"),
            },
            Event::DcidTlsFailed { dcid, reason } => format!("DCID {dcid} TLS failed: {reason}"),
            Event::DcidTlsRequiredFailed { dcid, address, domain } => format!(
                "DCID {dcid} IP {address} TLS was required but could not be successfully negotiated (destination {domain})"
            ),
            Event::DeliveryStart { dcid, mid, rids } => {
                format!("Delivery start DCID {dcid} MID {mid} to RID {}", rid_list(rids))
            }
            Event::MessageDone { dcid, mid, rids } => {
                format!("Message done DCID {dcid} MID {mid} to RID {}", rid_list(rids))
            }
            Event::Delayed { dcid, mid, rids, enhanced, reason } => {
                format!("Delayed: DCID {dcid} MID {mid} to RID {} - {enhanced} - {reason}", rid_list(rids))
            }
            Event::Bounced { dcid, mid, rid, enhanced, reason } => {
                format!("Bounced: DCID {dcid} MID {mid} to RID {rid} - {enhanced} - {reason}")
            }
            Event::BounceGenerated { mid, original } => {
                format!("MID {mid} was generated for bounce of MID {original}")
            }
            Event::MessageFinished { mid, how } => format!("Message finished MID {mid} {how}"),
            Event::DcidClose { dcid } => format!("DCID {dcid} close"),
            Event::ReportRecipient { mid, icid, rcpt, relayed } => format!(
                "mxgate: ICID {icid} MID {mid} To: <{rcpt}> TLS-RPT report address: {}",
                if *relayed { "report taken, message relayed too" } else { "report taken, not relayed" }
            ),
            Event::TlsRptReport { via, outcome, detail } => {
                format!("mxgate: TLS-RPT report via {via} {outcome}: {detail}")
            }
            // A note is mxgate's own line: one that would start like an ESA family gets the prefix.
            Event::Note { text, .. } if ["ICID ", "MID ", "DCID "].iter().any(|f| text.starts_with(f)) => {
                format!("mxgate: {text}")
            }
            Event::Note { text, .. } => text.clone(),
        }
    }
}

/// Why a message was not accepted after DATA began (ESA's `Receiving Failed:` reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceivingFailure {
    /// The message passed `max_message_size`.
    TooBig,
    /// The DATA stream could not be framed safely: the reader's error.
    DataSyntax(String),
    /// The spool could not store it: the spool error.
    Spool(String),
    /// The connection ended (timeout, shutdown, lost) during DATA.
    ConnectionEnded,
}

impl ReceivingFailure {
    /// The `reason` label of `mxgate_messages_rejected_total`.
    pub fn label(&self) -> &'static str {
        match self {
            ReceivingFailure::TooBig => "size",
            ReceivingFailure::DataSyntax(_) => "data_syntax",
            ReceivingFailure::Spool(_) => "spool",
            ReceivingFailure::ConnectionEnded => "aborted",
        }
    }
}

impl std::fmt::Display for ReceivingFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReceivingFailure::TooBig => f.write_str("Message size exceeds limit"),
            ReceivingFailure::DataSyntax(e) => f.write_str(e),
            ReceivingFailure::Spool(e) => write!(f, "spool error: {e}"),
            ReceivingFailure::ConnectionEnded => f.write_str("connection ended during DATA"),
        }
    }
}

/// `[0, 1, 2]` as ESA prints recipient id lists.
fn rid_list(rids: &[u32]) -> String {
    let inner: Vec<String> = rids.iter().map(|r| r.to_string()).collect();
    format!("[{}]", inner.join(", "))
}

/// Keeps log lines one line each whatever a peer sent: control characters, line and
/// paragraph separators and bidirectional overrides (which make a viewer show text other
/// than what is there) become spaces.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if is_unsafe(c) { ' ' } else { c })
        .collect()
}

/// A character that must not reach a log line or a terminal as it is: a control character
/// (ESC starts terminal sequences), U+2028/U+2029, or a bidirectional format character.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// [`printable`], for a value the line puts in single quotes (a header).
pub(super) fn sanitize(s: &str) -> String {
    printable(s).replace('\'', "\\'")
}
