//! SPF (RFC 7208) of one transaction: the MAIL FROM identity, or the HELO identity for the
//! null sender (§2.4), evaluated by mail-auth (which applies the §4.6.4 lookup limits).

use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, SpfResult};

use super::SenderRequest;

/// An SPF result (RFC 7208 §2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfVerdict {
    /// The client is authorized.
    Pass,
    /// The client is not authorized.
    Fail,
    /// Weak statement that the client is probably not authorized.
    SoftFail,
    /// The domain asserts nothing.
    Neutral,
    /// No SPF record (or no domain to check).
    None,
    /// A transient (DNS) error.
    TempError,
    /// The published record could not be interpreted.
    PermError,
}

impl SpfVerdict {
    /// ESA's word in the mail log (`Pass`, `SoftFail`, `TempError`, ...).
    pub fn log_word(self) -> &'static str {
        match self {
            SpfVerdict::Pass => "Pass",
            SpfVerdict::Fail => "Fail",
            SpfVerdict::SoftFail => "SoftFail",
            SpfVerdict::Neutral => "Neutral",
            SpfVerdict::None => "None",
            SpfVerdict::TempError => "TempError",
            SpfVerdict::PermError => "PermError",
        }
    }

    /// The RFC 8601 result keyword (`pass`, `softfail`, `temperror`, ...), also the metric's
    /// `result` label.
    pub fn label(self) -> &'static str {
        match self {
            SpfVerdict::Pass => "pass",
            SpfVerdict::Fail => "fail",
            SpfVerdict::SoftFail => "softfail",
            SpfVerdict::Neutral => "neutral",
            SpfVerdict::None => "none",
            SpfVerdict::TempError => "temperror",
            SpfVerdict::PermError => "permerror",
        }
    }
}

impl From<SpfResult> for SpfVerdict {
    fn from(r: SpfResult) -> Self {
        match r {
            SpfResult::Pass => SpfVerdict::Pass,
            SpfResult::Fail => SpfVerdict::Fail,
            SpfResult::SoftFail => SpfVerdict::SoftFail,
            SpfResult::Neutral => SpfVerdict::Neutral,
            SpfResult::TempError => SpfVerdict::TempError,
            SpfResult::PermError => SpfVerdict::PermError,
            SpfResult::None => SpfVerdict::None,
        }
    }
}

/// Which identity was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfIdentity {
    /// The `MAIL FROM` address (RFC 8601 `smtp.mailfrom`).
    MailFrom,
    /// The HELO name, for the null sender (RFC 8601 `smtp.helo`).
    Helo,
}

impl SpfIdentity {
    /// ESA's word in the mail log.
    pub fn log_word(self) -> &'static str {
        match self {
            SpfIdentity::MailFrom => "mailfrom",
            SpfIdentity::Helo => "helo",
        }
    }
}

/// The SPF result of a transaction, kept with it (PART B writes it into
/// `Authentication-Results: …; spf=<result> smtp.mailfrom=<address>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfOutcome {
    /// The result.
    pub result: SpfVerdict,
    /// The identity checked.
    pub identity: SpfIdentity,
    /// The identity as an address: the sender, or `postmaster@<HELO name>`.
    pub address: String,
    /// The domain whose record was evaluated.
    pub domain: String,
}

impl SpfOutcome {
    /// The identity `req` asks about, with `result`.
    fn of(req: &SenderRequest, result: SpfVerdict) -> Self {
        let (identity, address, domain) = match req.from.rsplit_once('@') {
            Some((_, d)) if !req.from.is_empty() => (
                SpfIdentity::MailFrom,
                req.from.clone(),
                super::dns_verify::a_label(d).unwrap_or_else(|| d.to_ascii_lowercase()),
            ),
            _ => (
                SpfIdentity::Helo,
                format!("postmaster@{}", req.helo),
                req.helo.to_ascii_lowercase(),
            ),
        };
        SpfOutcome {
            result,
            identity,
            address,
            domain,
        }
    }

    /// A `temperror` for `req` (no answer in time).
    pub(crate) fn temp_error(req: &SenderRequest) -> Self {
        Self::of(req, SpfVerdict::TempError)
    }
}

/// True when `record` is an SPF record (RFC 7208 §4.5: `v=spf1` then a space or the end).
fn is_spf_record(record: &str) -> bool {
    let r = record.trim_start().as_bytes();
    r.len() >= 6 && r[..6].eq_ignore_ascii_case(b"v=spf1") && (r.len() == 6 || r[6] == b' ')
}

/// Evaluates SPF for `req`'s identity. `resolver` (the cache mail-auth shares) counts the
/// domain's SPF records first: mail-auth takes the first that parses, where RFC 7208 §4.5
/// makes several a `permerror` (otherwise the answer's order would decide a refusal).
pub(crate) async fn evaluate(
    auth: &MessageAuthenticator,
    resolver: &crate::dns::ReverseResolver,
    req: &SenderRequest,
) -> SpfOutcome {
    let outcome = SpfOutcome::of(req, SpfVerdict::None);
    // A HELO that is not a domain name (an address literal, a single label) has no SPF
    // record to check (RFC 7208 §2.3): none.
    if outcome.identity == SpfIdentity::Helo
        && (req.helo.starts_with('[') || !req.helo.trim_end_matches('.').contains('.'))
    {
        return outcome;
    }
    match resolver.lookup_txt(&outcome.domain).await {
        crate::dns::records::RecordLookup::Found(records)
            if records.iter().filter(|r| is_spf_record(r)).count() > 1 =>
        {
            return SpfOutcome {
                result: SpfVerdict::PermError,
                ..outcome
            };
        }
        // The record itself could not be fetched: a temperror now (RFC 7208 §4.4), rather
        // than mail-auth asking again and a dead DNS server costing its timeout twice more.
        crate::dns::records::RecordLookup::Failed(_) => {
            return SpfOutcome {
                result: SpfVerdict::TempError,
                ..outcome
            };
        }
        _ => {}
    }
    // The local part as sent (the `l` macro), the domain as DNS knows it (A-label).
    let local = req.from.rsplit_once('@').map_or("", |(l, _)| l);
    let sender = format!("{local}@{}", outcome.domain);
    let params = match outcome.identity {
        SpfIdentity::MailFrom => {
            SpfParameters::verify_mail_from(req.peer_ip, &req.helo, &req.host, &sender)
        }
        SpfIdentity::Helo => SpfParameters::verify_ehlo(req.peer_ip, &req.helo, &req.host),
    };
    let out = auth.verify_spf(params).await;
    SpfOutcome {
        result: out.result().into(),
        ..outcome
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn spf_records_are_v_spf1_then_a_space_or_the_end() {
        for (r, want) in [
            ("v=spf1 -all", true),
            ("V=SPF1", true),
            ("  v=spf1 ip4:192.0.2.1", true),
            ("v=spf10 -all", false),
            ("v=spf1-all", false),
            ("spf2.0/pra -all", false),
            ("google-site-verification=x", false),
        ] {
            assert_eq!(super::is_spf_record(r), want, "{r}");
        }
    }
}
