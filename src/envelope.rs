//! The envelope of a received message: everything about it except its body. The session
//! builds it; the spool stores it beside the body (`crate::spool::envelope`) and the
//! relay delivers from it.

use std::net::IpAddr;

/// Everything about a queued message except its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Message id.
    pub mid: u64,
    /// Inbound connection id.
    pub icid: u64,
    /// Listener it arrived on.
    pub listener: String,
    /// HAT sender group of the client.
    pub sender_group: String,
    /// Mail-flow policy applied.
    pub policy: String,
    /// Client address.
    pub peer_ip: IpAddr,
    /// EHLO/HELO name given by the client.
    pub helo: String,
    /// Envelope sender; empty for the null sender `<>`.
    pub from: String,
    /// Accepted recipients in RID order.
    pub rcpts: Vec<String>,
    /// Arrival time, seconds since the Unix epoch.
    pub received_unix: u64,
    /// `protocol cipher` when received over TLS.
    pub tls: Option<String>,
    /// The client declared `BODY=8BITMIME` (RFC 6152); relayed with the message.
    pub body_8bitmime: bool,
}
