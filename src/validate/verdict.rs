//! What a validation method answers about one recipient, and why it could not answer.

use std::fmt;

/// The answer about one recipient address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The internal directory knows the address: accept the RCPT.
    Valid,
    /// The internal directory refused the address: refuse the RCPT (5xx).
    Invalid,
    /// No answer now; the entry's `on_tempfail` decides. Never cached.
    TempFail(TempFailCause),
}

impl Verdict {
    /// The `result` label of `mxgate_recipient_validation_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Invalid => "invalid",
            Verdict::TempFail(_) => "tempfail",
        }
    }

    /// True for a tempfail (not cacheable).
    pub fn is_temporary(&self) -> bool {
        matches!(self, Verdict::TempFail(_))
    }
}

/// Why a lookup gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TempFailCause {
    /// No reply (connect, greeting, a command or the whole lookup) in time.
    Timeout,
    /// The internal server refused the TCP connection.
    Refused,
    /// Another socket error, or the server closed the connection.
    Io,
    /// The server's greeting or EHLO/HELO was not a 2xx.
    SessionRefused,
    /// The probe's MAIL FROM was not accepted (misconfiguration: e.g. the null sender).
    MailRefused,
    /// The server answered the RCPT with 4xx.
    Server4xx,
    /// The server sent something that is not an SMTP reply, or an unexpected code.
    Protocol,
    /// STARTTLS as the destination's TLS mode demands failed: not offered or refused under
    /// a `required*` mode, a failed handshake, or a failed certificate check under
    /// `required-verify*`.
    Tls,
    /// The destination's circuit breaker is open: nothing was asked.
    BreakerOpen,
    /// Too many lookups were already waiting for the destination: nothing was asked.
    Shed,
    /// The LDAP server could not be reached (connect, TLS, closed connection).
    LdapDown,
    /// The LDAP bind was refused (wrong DN or password).
    LdapBind,
    /// The LDAP search ended with a result code other than success (e.g. 32, no rights).
    LdapResult,
}

impl TempFailCause {
    /// Short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            TempFailCause::Timeout => "timeout",
            TempFailCause::Refused => "refused",
            TempFailCause::Io => "io",
            TempFailCause::SessionRefused => "session_refused",
            TempFailCause::MailRefused => "mail_refused",
            TempFailCause::Server4xx => "server_4xx",
            TempFailCause::Protocol => "protocol",
            TempFailCause::Tls => "tls",
            TempFailCause::BreakerOpen => "breaker_open",
            TempFailCause::Shed => "shed",
            TempFailCause::LdapDown => "ldap_down",
            TempFailCause::LdapBind => "ldap_bind",
            TempFailCause::LdapResult => "ldap_result",
        }
    }

    /// True when the cause says the destination is unwell, so its breaker counts it;
    /// an open breaker or a shed lookup asked nothing and says nothing about it.
    pub fn counts_for_breaker(&self) -> bool {
        !matches!(self, TempFailCause::BreakerOpen | TempFailCause::Shed)
    }
}

impl fmt::Display for TempFailCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TempFailCause::Timeout => "timeout",
            TempFailCause::Refused => "connection refused",
            TempFailCause::Io => "I/O error",
            TempFailCause::SessionRefused => "session refused",
            TempFailCause::MailRefused => "MAIL FROM refused",
            TempFailCause::Server4xx => "4xx reply",
            TempFailCause::Protocol => "protocol error",
            TempFailCause::Tls => "TLS failure",
            TempFailCause::BreakerOpen => "breaker open",
            TempFailCause::Shed => "too busy: too many lookups waiting",
            TempFailCause::LdapDown => "LDAP server unreachable",
            TempFailCause::LdapBind => "LDAP bind refused",
            TempFailCause::LdapResult => "LDAP search failed",
        })
    }
}

/// A verdict with the detail the mail log gets (e.g. `probe 10.0.0.25:25: 550 5.1.1 ...`).
/// The detail may name the internal server: it never goes into a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The verdict.
    pub verdict: Verdict,
    /// Log-only detail.
    pub detail: String,
}

impl Answer {
    /// An answer with its log detail.
    pub fn new(verdict: Verdict, detail: impl Into<String>) -> Self {
        Answer {
            verdict,
            detail: detail.into(),
        }
    }

    /// A tempfail with its log detail.
    pub fn temp(cause: TempFailCause, detail: impl Into<String>) -> Self {
        Answer::new(Verdict::TempFail(cause), detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_metric_results() {
        assert_eq!(Verdict::Valid.label(), "valid");
        assert_eq!(Verdict::Invalid.label(), "invalid");
        let t = Verdict::TempFail(TempFailCause::BreakerOpen);
        assert_eq!((t.label(), t.is_temporary()), ("tempfail", true));
        assert_eq!(TempFailCause::Server4xx.label(), "server_4xx");
        assert!(TempFailCause::Timeout.counts_for_breaker());
        assert_eq!(TempFailCause::Tls.label(), "tls");
        assert!(TempFailCause::Tls.counts_for_breaker());
        assert!(!TempFailCause::Shed.counts_for_breaker());
        assert!(!TempFailCause::BreakerOpen.counts_for_breaker());
    }
}
