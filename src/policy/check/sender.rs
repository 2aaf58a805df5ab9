//! Sender authentication at `MAIL FROM`, in two steps like recipient validation: [`request`]
//! (called last by `check_mail`) says what to look up for this sender under the policy; the
//! driver asks `src/auth/`, and [`check_mail_verdict`] turns the answer into the reply.
//!
//! | finding | reply |
//! |---|---|
//! | DNS verification: malformed sender | `malformed` (553 5.1.7) |
//! | DNS verification: domain does not exist (NXDOMAIN, no MX/A/AAAA, null MX) | `not_exist` (553 5.1.8) |
//! | DNS verification: domain could not be resolved | `unresolvable` (451 4.1.8, always 4xx) |
//! | SPF `fail` (`softfail` with `spf_reject_softfail`) under `reject_fail` | 550 5.7.23 at `spf_at` |
//! | SPF `temperror` under `reject_fail` | 451 4.7.24 at `spf_at` |
//! | SPF `permerror`, `neutral`, `none`, `pass`; anything under `tag` | accepted, result kept |
//!
//! A `permerror` is accepted: a broken record of the sender's own is no evidence of forgery
//! (DMARC, PART B, counts it as a failure of SPF alignment).

use std::fmt;

use super::{Denial, DenialReason, Permit};
use crate::auth::{DnsCheck, DnsVerdict, SenderAnswer, SenderRequest, SpfOutcome, SpfVerdict};
use crate::policy::flow::MailFlowPolicy;
use crate::policy::sender_auth::{SpfMode, SpfStage};
use crate::smtp::address::Mailbox;
use crate::smtp::reply::{Enhanced, Reply};

/// Why DNS verification refused a sender (ESA's three outcomes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderDnsOutcome {
    /// No usable domain.
    Malformed,
    /// The domain does not exist as a mail domain.
    NotExist,
    /// The domain could not be resolved (temporary).
    Unresolvable,
}

impl SenderDnsOutcome {
    /// ESA's wording after `sender rejected, `.
    pub fn esa_words(self) -> &'static str {
        match self {
            SenderDnsOutcome::Malformed => "envelope sender domain missing",
            SenderDnsOutcome::NotExist => "envelope sender domain does not exist",
            SenderDnsOutcome::Unresolvable => "envelope sender domain could not be resolved",
        }
    }

    /// The metric label (`reason` of `mxgate_messages_rejected_total`).
    pub fn label(self) -> &'static str {
        match self {
            SenderDnsOutcome::Malformed => "sender_malformed",
            SenderDnsOutcome::NotExist => "sender_not_exist",
            SenderDnsOutcome::Unresolvable => "sender_unresolvable",
        }
    }
}

impl fmt::Display for SenderDnsOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.esa_words())
    }
}

/// What the sender step needs besides the `MailCtx`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SenderCtx<'a> {
    /// The client address.
    pub peer_ip: std::net::IpAddr,
    /// The EHLO/HELO name.
    pub helo: &'a str,
    /// Our host name (the SPF `r` macro).
    pub host: &'a str,
}

/// What to look up for `from` under `p`; `None` when nothing is asked for (the default).
/// The null sender is never DNS-verified; SPF then checks the HELO identity.
pub(crate) fn request(
    p: &MailFlowPolicy,
    from: Option<&Mailbox>,
    ctx: &SenderCtx,
) -> Option<SenderRequest> {
    let dns = match (&p.sender_dns_verification, from) {
        (Some(v), Some(m)) if v.is_exception(&m.address()) => DnsCheck::Exempt,
        (Some(_), Some(m)) => crate::auth::dns_verify::classify(m),
        _ => DnsCheck::Skip,
    };
    let spf = p.spf.mode != SpfMode::Off;
    if dns == DnsCheck::Skip && !spf {
        return None;
    }
    Some(SenderRequest {
        peer_ip: ctx.peer_ip,
        helo: ctx.helo.to_string(),
        from: from.map(|m| m.address()).unwrap_or_default(),
        host: ctx.host.to_string(),
        dns,
        spf,
    })
}

/// The decision after the lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SenderDecision {
    /// The `MAIL FROM` reply: its permit, or the refusal.
    pub now: Result<Permit, Denial>,
    /// A refusal the transaction carries to `spf_at: rcpt` (every RCPT) or `data` (DATA).
    pub later: Option<(SpfStage, Denial)>,
}

/// The second step of `MAIL FROM`: DNS verification first, then SPF; `permit` is the 250
/// `check_mail` gave.
pub(crate) fn check_mail_verdict(
    p: &MailFlowPolicy,
    from: &str,
    answer: &SenderAnswer,
    permit: Permit,
) -> SenderDecision {
    if let (Some(v), Some(found)) = (&p.sender_dns_verification, &answer.dns) {
        let refusal = match found {
            DnsVerdict::Exempt | DnsVerdict::Exists => None,
            DnsVerdict::Malformed => Some((&v.malformed, SenderDnsOutcome::Malformed, "")),
            DnsVerdict::NotExist(d) => Some((&v.not_exist, SenderDnsOutcome::NotExist, d.as_str())),
            DnsVerdict::Unresolvable(d) => {
                Some((&v.unresolvable, SenderDnsOutcome::Unresolvable, d.as_str()))
            }
        };
        if let Some((reply, outcome, detail)) = refusal {
            let d = Denial::new(
                reply.clone(),
                DenialReason::SenderDns {
                    outcome,
                    address: from.to_string(),
                    detail: detail.to_string(),
                },
            );
            return SenderDecision {
                now: Err(d),
                later: None,
            };
        }
    }
    let spf_refusal = answer.spf.as_ref().and_then(|o| spf_denial(p, o));
    match spf_refusal {
        Some(d) if p.spf.at == SpfStage::Mail => SenderDecision {
            now: Err(d),
            later: None,
        },
        later => SenderDecision {
            now: Ok(permit),
            later: later.map(|d| (p.spf.at, d)),
        },
    }
}

/// The refusal an SPF result earns under `p`, if any.
fn spf_denial(p: &MailFlowPolicy, o: &SpfOutcome) -> Option<Denial> {
    if p.spf.mode != SpfMode::RejectFail {
        return None;
    }
    let reply = match o.result {
        SpfVerdict::Fail => spf_fail_reply(o),
        SpfVerdict::SoftFail if p.spf.reject_softfail => spf_fail_reply(o),
        // RFC 7372 X.7.24: SPF validation error; a DNS failure is never permanent.
        SpfVerdict::TempError => Reply::new(
            451,
            Enhanced(4, 7, 24),
            "SPF validation error (temporary DNS failure), try again later",
        ),
        _ => return None,
    };
    Some(Denial::new(
        reply,
        DenialReason::Spf {
            result: o.result,
            address: o.address.clone(),
            at: p.spf.at,
        },
    ))
}

/// RFC 7372 X.7.23: SPF validation failed.
fn spf_fail_reply(o: &SpfOutcome) -> Reply {
    Reply::new(
        550,
        Enhanced(5, 7, 23),
        format!(
            "SPF validation failed: {} does not authorize this host to send for {}",
            o.domain, o.address
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::super::outcome;
    use super::*;
    use crate::auth::SpfIdentity;
    use crate::policy::sender_auth::SenderDnsVerification;

    fn spf(result: SpfVerdict) -> SenderAnswer {
        SenderAnswer {
            dns: None,
            spf: Some(SpfOutcome {
                result,
                identity: SpfIdentity::MailFrom,
                address: "a@s.test".into(),
                domain: "s.test".into(),
            }),
        }
    }

    fn ok() -> Permit {
        Permit::with(Reply::new(250, Enhanced(2, 1, 0), "Sender ok"))
    }

    #[test]
    fn dns_verification_table() {
        let mut p = MailFlowPolicy::builtin_default("P");
        p.sender_dns_verification = Some(SenderDnsVerification::builtin());
        let rows = [
            (DnsVerdict::Exists, (250, "2.1.0", "permit")),
            (DnsVerdict::Exempt, (250, "2.1.0", "permit")),
            (DnsVerdict::Malformed, (553, "5.1.7", "sender_malformed")),
            (
                DnsVerdict::NotExist("x".into()),
                (553, "5.1.8", "sender_not_exist"),
            ),
            (
                DnsVerdict::Unresolvable("x".into()),
                (451, "4.1.8", "sender_unresolvable"),
            ),
        ];
        for (found, (code, enh, label)) in rows {
            let answer = SenderAnswer {
                dns: Some(found.clone()),
                spf: None,
            };
            let d = check_mail_verdict(&p, "a@s.test", &answer, ok());
            assert_eq!(outcome(&d.now), (code, enh.to_string(), label), "{found:?}");
            assert_eq!(d.later, None);
        }
    }

    #[test]
    fn spf_table() {
        use SpfVerdict::*;
        let mut tag = MailFlowPolicy::builtin_default("P");
        tag.spf.mode = SpfMode::Tag;
        let mut reject = tag.clone();
        reject.spf.mode = SpfMode::RejectFail;
        let mut soft = reject.clone();
        soft.spf.reject_softfail = true;
        let accept = (250, "2.1.0", "permit");
        let fail = (550, "5.7.23", "spf_fail");
        let temp = (451, "4.7.24", "spf_temperror");
        let rows = [
            (&tag, Fail, accept),
            (&tag, TempError, accept),
            (&reject, Pass, accept),
            (&reject, Fail, fail),
            (&reject, SoftFail, accept),
            (&reject, Neutral, accept),
            (&reject, None, accept),
            (&reject, TempError, temp),
            (&reject, PermError, accept),
            (&soft, SoftFail, fail),
            (&soft, Fail, fail),
        ];
        for (i, (p, result, (code, enh, label))) in rows.into_iter().enumerate() {
            let d = check_mail_verdict(p, "a@s.test", &spf(result), ok());
            assert_eq!(outcome(&d.now), (code, enh.to_string(), label), "row {i}");
        }
    }

    #[test]
    fn spf_refusal_moves_to_the_configured_stage() {
        let mut p = MailFlowPolicy::builtin_default("P");
        p.spf.mode = SpfMode::RejectFail;
        p.spf.at = SpfStage::Rcpt;
        let d = check_mail_verdict(&p, "a@s.test", &spf(SpfVerdict::Fail), ok());
        assert!(d.now.is_ok());
        let (stage, denial) = d.later.expect("deferred refusal");
        assert_eq!(stage, SpfStage::Rcpt);
        assert_eq!(denial.reply.unwrap().code, 550);
        // DNS verification always answers at MAIL FROM.
        p.sender_dns_verification = Some(SenderDnsVerification::builtin());
        let answer = SenderAnswer {
            dns: Some(DnsVerdict::NotExist("x".into())),
            ..spf(SpfVerdict::Fail)
        };
        assert!(check_mail_verdict(&p, "a@s.test", &answer, ok())
            .now
            .is_err());
    }

    #[test]
    fn requests_follow_the_policy() {
        let ctx = SenderCtx {
            peer_ip: "192.0.2.1".parse().unwrap(),
            helo: "client.test",
            host: "mx.test",
        };
        let m = crate::smtp::address::parse_path("<a@s.test>")
            .unwrap()
            .0
            .unwrap();
        let mut p = MailFlowPolicy::builtin_default("P");
        assert_eq!(request(&p, Some(&m), &ctx), None, "off by default");
        p.spf.mode = SpfMode::Tag;
        let r = request(&p, None, &ctx).unwrap();
        assert_eq!((r.dns, r.spf, r.from.as_str()), (DnsCheck::Skip, true, ""));
        p.spf.mode = SpfMode::Off;
        p.sender_dns_verification = Some(SenderDnsVerification::builtin());
        assert_eq!(
            request(&p, None, &ctx),
            None,
            "the null sender is never verified"
        );
        let r = request(&p, Some(&m), &ctx).unwrap();
        assert_eq!(r.dns, DnsCheck::Lookup("s.test".into()));
        p.sender_dns_verification.as_mut().unwrap().exceptions =
            std::sync::Arc::new(vec!["@s.test".into()]);
        assert_eq!(request(&p, Some(&m), &ctx).unwrap().dns, DnsCheck::Exempt);
    }
}
