//! Sender authentication settings of a mail-flow policy (docs/sender-auth.md): envelope-sender
//! DNS verification, SPF and DMARC. Pure data; the decisions over it are in
//! `src/policy/check/sender.rs`, the lookups in `src/auth/`.

use std::sync::Arc;

use crate::smtp::reply::{Enhanced, Reply};

/// `sender_dns_verification:` when on: the reply of each outcome and the exception table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderDnsVerification {
    /// No domain, an address literal or a domain that is not a fully qualified host name.
    pub malformed: Reply,
    /// NXDOMAIN, no MX and no A/AAAA, or a null MX (RFC 7505).
    pub not_exist: Reply,
    /// SERVFAIL or no answer: always a 4xx (a DNS failure is never permanent).
    pub unresolvable: Reply,
    /// Senders always allowed: `user@domain`, `@domain` or `domain` (lower case).
    pub exceptions: Arc<Vec<String>>,
}

impl SenderDnsVerification {
    /// The built-in replies and an empty exception table.
    pub fn builtin() -> Self {
        SenderDnsVerification {
            // RFC 3463 X.1.7: bad sender's mailbox address syntax; 553: mailbox name not allowed.
            malformed: Reply::new(
                553,
                Enhanced(5, 1, 7),
                "Sender address must contain a fully qualified domain name",
            ),
            // X.1.8: bad sender's system address.
            not_exist: Reply::new(
                553,
                Enhanced(5, 1, 8),
                "Domain of sender address does not exist",
            ),
            unresolvable: Reply::new(
                451,
                Enhanced(4, 1, 8),
                "Domain of sender address could not be resolved, try again later",
            ),
            exceptions: Arc::new(Vec::new()),
        }
    }

    /// True when `address` (an envelope sender, `local@domain`) is in the exception table.
    pub fn is_exception(&self, address: &str) -> bool {
        let address = address.to_ascii_lowercase();
        let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        self.exceptions.iter().any(|entry| {
            if let Some(d) = entry.strip_prefix('@') {
                d == domain
            } else if entry.contains('@') {
                *entry == address
            } else {
                entry == domain
            }
        })
    }
}

/// `spf:` of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfMode {
    /// Not evaluated.
    Off,
    /// Evaluated and kept with the message; nothing refused.
    Tag,
    /// A `fail` (and a `softfail` under `reject_softfail`) refused, a `temperror` deferred.
    RejectFail,
}

impl SpfMode {
    /// Name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            SpfMode::Off => "off",
            SpfMode::Tag => "tag",
            SpfMode::RejectFail => "reject_fail",
        }
    }
}

/// `spf_at:` the SMTP stage that says the refusal (SPF is always evaluated at `MAIL FROM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfStage {
    /// The `MAIL FROM` reply.
    Mail,
    /// Every `RCPT TO` reply of the transaction (the sites that want to see the recipients).
    Rcpt,
    /// The `DATA` command's reply.
    Data,
}

impl SpfStage {
    /// Name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            SpfStage::Mail => "mail",
            SpfStage::Rcpt => "rcpt",
            SpfStage::Data => "data",
        }
    }
}

/// The SPF settings of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfPolicy {
    /// `spf:`.
    pub mode: SpfMode,
    /// `spf_reject_softfail:` a `softfail` is refused like a `fail` under `reject_fail`.
    pub reject_softfail: bool,
    /// `spf_at:`.
    pub at: SpfStage,
}

impl Default for SpfPolicy {
    fn default() -> Self {
        SpfPolicy {
            mode: SpfMode::Off,
            reject_softfail: false,
            at: SpfStage::Mail,
        }
    }
}

/// `dmarc:` of a policy: DKIM of every signature and DMARC, after DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DmarcMode {
    /// Not evaluated.
    #[default]
    Off,
    /// Evaluated and written into `Authentication-Results`; nothing refused.
    Tag,
    /// A failure under `p=reject` refused (550 5.7.1), under `p=quarantine` marked, with `pct`.
    Enforce,
}

impl DmarcMode {
    /// Name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            DmarcMode::Off => "off",
            DmarcMode::Tag => "tag",
            DmarcMode::Enforce => "enforce",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_table_matches_addresses_and_domains() {
        let mut v = SenderDnsVerification::builtin();
        v.exceptions = Arc::new(vec![
            "lab.test".into(),
            "@partner.test".into(),
            "ceo@home.test".into(),
        ]);
        assert!(v.is_exception("a@LAB.test"));
        assert!(v.is_exception("b@partner.test"));
        assert!(v.is_exception("CEO@home.test"));
        assert!(!v.is_exception("other@home.test"));
        assert!(!v.is_exception("a@sub.lab.test"));
    }
}
