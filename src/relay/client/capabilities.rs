//! Capabilities: what the server announced in its EHLO reply.

use crate::smtp::reply::Reply;

/// What the server announced in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// EHLO succeeded (false after a HELO fallback).
    pub esmtp: bool,
    /// STARTTLS offered.
    pub starttls: bool,
    /// PIPELINING offered.
    pub pipelining: bool,
    /// SIZE offered; `Some(0)` = no fixed limit.
    pub size: Option<u64>,
    /// SMTPUTF8 offered.
    pub smtputf8: bool,
    /// 8BITMIME offered.
    pub eightbitmime: bool,
    /// ENHANCEDSTATUSCODES offered.
    pub enhanced_status_codes: bool,
}

impl Capabilities {
    /// Capabilities from an EHLO reply (the first line is the server's name).
    pub(crate) fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities {
            esmtp: true,
            ..Capabilities::default()
        };
        for line in reply.text.split('\n').skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "STARTTLS" => caps.starttls = true,
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "SMTPUTF8" => caps.smtputf8 = true,
                "8BITMIME" => caps.eightbitmime = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                _ => {}
            }
        }
        caps
    }
}
