//! DKIM (RFC 6376) of every signature of a message and DMARC (RFC 7489) over it, run after
//! DATA by mail-auth on the shared resolver. This file only reports what was found; what a
//! result does under a policy is decided in `src/policy/check/message_auth.rs`.

use std::sync::Arc;

use mail_auth::dkim::DkimError;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::{
    AuthenticatedMessage, DkimResult, DmarcResult, Error, MessageAuthenticator, SpfOutput,
};

use super::header::{self, HeaderProblem, Unverified};
use super::{spf, SenderRequest, SpfOutcome, SpfVerdict};
use crate::dns::ReverseResolver;

/// What to verify about one message, asked at the end of DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRequest {
    /// The message as received (without our `Received:` header).
    pub message: Arc<Vec<u8>>,
    /// The transaction's identities; `spf: true` when SPF was not evaluated at `MAIL FROM`
    /// and DMARC needs it.
    pub sender: SenderRequest,
    /// The SPF result from `MAIL FROM`, if evaluated there.
    pub spf: Option<SpfOutcome>,
    /// Verify DKIM signatures and evaluate DMARC.
    pub dmarc: bool,
}

/// A DKIM result (RFC 8601 §2.7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkimVerdict {
    /// The signature verified.
    Pass,
    /// The signature did not verify (body hash, signature).
    Fail,
    /// The signature could not be processed (syntax, key record, expired).
    PermError,
    /// The key could not be fetched (DNS failure).
    TempError,
    /// Unusable for another reason (mail-auth's `neutral`).
    Neutral,
    /// Not verified by local policy: over the signature limit, or rsa-sha1 (RFC 8601 §2.7.1).
    Policy,
}

impl DkimVerdict {
    /// The RFC 8601 keyword, also the metric's `result` label.
    pub fn label(self) -> &'static str {
        match self {
            DkimVerdict::Pass => "pass",
            DkimVerdict::Fail => "fail",
            DkimVerdict::PermError => "permerror",
            DkimVerdict::TempError => "temperror",
            DkimVerdict::Neutral => "neutral",
            DkimVerdict::Policy => "policy",
        }
    }

    /// ESA's word in the mail log (`pass`, `permfail`, `tempfail`, ...).
    pub fn log_word(self) -> &'static str {
        match self {
            DkimVerdict::Pass => "pass",
            DkimVerdict::Fail | DkimVerdict::PermError => "permfail",
            DkimVerdict::TempError => "tempfail",
            DkimVerdict::Neutral => "neutral",
            DkimVerdict::Policy => "policy",
        }
    }
}

/// The result of one DKIM signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimSignature {
    /// The result.
    pub result: DkimVerdict,
    /// `d=` (empty when the signature could not be parsed).
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// `i=` (empty when absent).
    pub identity: String,
    /// Why it did not pass (empty on pass).
    pub reason: String,
}

/// A DMARC result (RFC 7489 §11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcVerdict {
    /// An aligned identifier passed.
    Pass,
    /// No aligned identifier passed.
    Fail,
    /// A DNS failure.
    TempError,
    /// The record could not be interpreted.
    PermError,
    /// No record (or no single From domain).
    None,
}

impl DmarcVerdict {
    /// The RFC 8601 keyword, also the metric's `result` label.
    pub fn label(self) -> &'static str {
        match self {
            DmarcVerdict::Pass => "pass",
            DmarcVerdict::Fail => "fail",
            DmarcVerdict::TempError => "temperror",
            DmarcVerdict::PermError => "permerror",
            DmarcVerdict::None => "none",
        }
    }
}

/// A DMARC policy (`p=`, or `sp=` for a subdomain), after the `t=y` testing downgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcPolicy {
    /// `none`, or no record.
    None,
    /// `quarantine`.
    Quarantine,
    /// `reject`.
    Reject,
}

impl DmarcPolicy {
    /// The record's word.
    pub fn as_str(self) -> &'static str {
        match self {
            DmarcPolicy::None => "none",
            DmarcPolicy::Quarantine => "quarantine",
            DmarcPolicy::Reject => "reject",
        }
    }
}

/// The DMARC evaluation of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmarcOutcome {
    /// The result.
    pub result: DmarcVerdict,
    /// The RFC 5322 From domain (empty when there is none, or more than one).
    pub from_domain: String,
    /// The policy that applies to that domain (`sp=` for a subdomain).
    pub policy: DmarcPolicy,
    /// `pct=` of the record (100 when absent).
    pub pct: u8,
    /// SPF passed for an aligned domain.
    pub spf_aligned: bool,
    /// A DKIM signature passed for an aligned domain.
    pub dkim_aligned: bool,
}

impl DmarcOutcome {
    /// A temporary failure (no answer in time).
    pub fn temp_error() -> Self {
        DmarcOutcome {
            result: DmarcVerdict::TempError,
            from_domain: String::new(),
            policy: DmarcPolicy::None,
            pct: 100,
            spf_aligned: false,
            dkim_aligned: false,
        }
    }
}

/// What the message checks found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageAnswer {
    /// One result per `DKIM-Signature` header, in order (empty: no signature, or DKIM was
    /// not asked for).
    pub dkim: Vec<DkimSignature>,
    /// The SPF result: from `MAIL FROM`, or evaluated now for DMARC.
    pub spf: Option<SpfOutcome>,
    /// SPF was evaluated now (not at `MAIL FROM`): its result has not been logged yet.
    pub spf_now: bool,
    /// The DMARC evaluation; `None` when it was not asked for.
    pub dmarc: Option<DmarcOutcome>,
    /// A uniform sample in `0..100` against the record's `pct=` (RFC 7489 §6.6.4).
    pub sample: u8,
    /// What is wrong with the header section, if anything (malformed, or no single From).
    pub header: Option<HeaderProblem>,
}

impl MessageAnswer {
    /// The answer when the lookups ran out of time: temporary failures.
    pub fn timed_out(req: &MessageRequest) -> Self {
        let spf_now = req.spf.is_none() && req.sender.spf;
        MessageAnswer {
            dkim: Vec::new(),
            spf: req
                .spf
                .clone()
                .or_else(|| spf_now.then(|| SpfOutcome::temp_error(&req.sender))),
            spf_now,
            dmarc: req.dmarc.then(DmarcOutcome::temp_error),
            sample: 0,
            header: None,
        }
    }
}

/// A sample in `0..100` from the process's random hasher keys (no extra dependency).
fn random_sample() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64),
    );
    (h.finish() % 100) as u8
}

fn dkim_signature(out: &mail_auth::DkimOutput<'_>) -> DkimSignature {
    let (result, reason) = match out.result() {
        DkimResult::Pass => (DkimVerdict::Pass, String::new()),
        // mail-auth 0.13 says `neutral` here; RFC 6376 §6.1.3 makes it a PERMFAIL, and ESA's
        // words are these.
        DkimResult::Neutral(Error::Dkim(DkimError::FailedBodyHashMatch))
        | DkimResult::Fail(Error::Dkim(DkimError::FailedBodyHashMatch)) => {
            (DkimVerdict::Fail, "body hash did not verify".into())
        }
        DkimResult::Fail(e) => (DkimVerdict::Fail, e.to_string()),
        DkimResult::PermError(e) => (DkimVerdict::PermError, e.to_string()),
        DkimResult::TempError(e) => (DkimVerdict::TempError, e.to_string()),
        DkimResult::Neutral(e) => (DkimVerdict::Neutral, e.to_string()),
        DkimResult::None => (DkimVerdict::Neutral, "no signature".into()),
    };
    let (domain, selector, identity) = out
        .signature()
        .map(|s| (s.d.to_ascii_lowercase(), s.s.clone(), s.i.clone()))
        .unwrap_or_default();
    DkimSignature {
        result,
        domain,
        selector,
        identity,
        reason,
    }
}

/// A signature taken out before verification: `policy`, with the reason.
fn policy_signature(u: Unverified) -> DkimSignature {
    DkimSignature {
        result: DkimVerdict::Policy,
        domain: u.domain,
        selector: u.selector,
        identity: u.identity,
        reason: u.why.to_string(),
    }
}

fn dmarc_verdict(r: &DmarcResult) -> DmarcVerdict {
    match r {
        DmarcResult::Pass => DmarcVerdict::Pass,
        DmarcResult::Fail(_) => DmarcVerdict::Fail,
        DmarcResult::TempError(_) => DmarcVerdict::TempError,
        DmarcResult::PermError(_) => DmarcVerdict::PermError,
        DmarcResult::None => DmarcVerdict::None,
    }
}

/// The DMARC record that applies to `domain` (its own, else the nearest parent's): its
/// `pct=` (mail-auth 0.13 follows DMARCbis and does not keep it; 100 on any doubt), and
/// whether that name has several records (RFC 7489 §6.6.3: then no policy applies; mail-auth
/// takes one). Cached DNS.
async fn lookup_record(resolver: &ReverseResolver, domain: &str) -> (u8, bool) {
    let hickory = resolver.hickory();
    let mut name = domain.trim_end_matches('.');
    loop {
        if let Ok(txt) = hickory.txt_lookup(format!("_dmarc.{name}.")).await {
            let records: Vec<String> = txt
                .answers()
                .iter()
                .filter_map(|rec| match &rec.data {
                    hickory_resolver::proto::rr::RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .filter(|text| text.trim_start().starts_with("v=DMARC1"))
                .collect();
            if let Some(first) = records.first() {
                return (parse_pct(first), records.len() > 1);
            }
        }
        match name.split_once('.') {
            Some((_, parent)) if parent.contains('.') => name = parent,
            _ => return (100, false),
        }
    }
}

/// The `pct=` tag of a DMARC record (0..=100; 100 when absent or invalid).
pub(crate) fn parse_pct(record: &str) -> u8 {
    record
        .split(';')
        .filter_map(|t| t.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("pct"))
        .and_then(|(_, v)| v.trim().parse::<u8>().ok())
        .filter(|p| *p <= 100)
        .unwrap_or(100)
}

/// Runs DKIM and DMARC (and SPF when it was not evaluated at `MAIL FROM`) for `req`.
pub(crate) async fn authenticate(
    auth: &MessageAuthenticator,
    resolver: &ReverseResolver,
    req: &MessageRequest,
) -> MessageAnswer {
    let spf_now = req.spf.is_none() && req.sender.spf;
    let spf = match &req.spf {
        Some(o) => Some(o.clone()),
        None if spf_now => Some(spf::evaluate(auth, resolver, &req.sender).await),
        None => None,
    };
    let mut answer = MessageAnswer {
        dkim: Vec::new(),
        spf,
        spf_now,
        dmarc: None,
        sample: random_sample(),
        header: None,
    };
    let from_fields = match header::structure(&req.message) {
        Ok(n) => n,
        Err(p) => {
            // Refused whatever DNS says: no lookups.
            answer.header = Some(p);
            return answer;
        }
    };
    if !req.dmarc {
        return answer;
    }
    let (view, unverified) = header::dkim_view(&req.message);
    let Some(msg) = AuthenticatedMessage::parse(&view) else {
        // No header section at all has no From; anything else mail-auth cannot read is a
        // header section the internal server may read differently.
        answer.header = Some(if from_fields == 0 {
            HeaderProblem::FromFields(0)
        } else {
            HeaderProblem::Unreadable
        });
        answer.dmarc = Some(DmarcOutcome {
            result: DmarcVerdict::None,
            ..DmarcOutcome::temp_error()
        });
        return answer;
    };
    answer.header = match from_fields {
        1 => header::from_problem(&msg.from),
        n => Some(HeaderProblem::FromFields(n)),
    };
    let dkim = auth.verify_dkim(&msg).await;
    answer.dkim = dkim.iter().map(dkim_signature).collect();
    answer
        .dkim
        .extend(unverified.into_iter().map(policy_signature));
    let spf_output = match &answer.spf {
        Some(o) => SpfOutput::new(o.domain.clone()).with_result(match o.result {
            SpfVerdict::Pass => mail_auth::SpfResult::Pass,
            SpfVerdict::Fail => mail_auth::SpfResult::Fail,
            SpfVerdict::SoftFail => mail_auth::SpfResult::SoftFail,
            SpfVerdict::Neutral => mail_auth::SpfResult::Neutral,
            SpfVerdict::None => mail_auth::SpfResult::None,
            SpfVerdict::TempError => mail_auth::SpfResult::TempError,
            SpfVerdict::PermError => mail_auth::SpfResult::PermError,
        }),
        None => SpfOutput::new(String::new()),
    };
    let mail_from_domain = answer
        .spf
        .as_ref()
        .map(|o| o.domain.clone())
        .unwrap_or_default();
    let out = auth
        .verify_dmarc(DmarcParameters::new(
            &msg,
            &dkim,
            &mail_from_domain,
            &spf_output,
        ))
        .await;
    if answer.header.is_some() {
        // No single author domain: DMARC cannot apply (mail-auth may still have picked one).
        answer.dmarc = Some(DmarcOutcome {
            result: DmarcVerdict::None,
            ..DmarcOutcome::temp_error()
        });
        return answer;
    }
    let result = dmarc_verdict(&out.result());
    let policy = match out.policy() {
        Policy::Reject => DmarcPolicy::Reject,
        Policy::Quarantine => DmarcPolicy::Quarantine,
        Policy::None | Policy::Unspecified => DmarcPolicy::None,
    };
    // A record was evaluated: check there was only one (cached, mail-auth just asked).
    let (pct, several) = if matches!(result, DmarcVerdict::Fail | DmarcVerdict::Pass) {
        lookup_record(resolver, out.domain()).await
    } else {
        (100, false)
    };
    let (result, policy) = if several {
        (DmarcVerdict::None, DmarcPolicy::None)
    } else {
        (result, policy)
    };
    answer.dmarc = Some(DmarcOutcome {
        result,
        from_domain: out.domain().to_ascii_lowercase(),
        policy,
        pct,
        spf_aligned: *out.spf_result() == DmarcResult::Pass,
        dkim_aligned: *out.dkim_result() == DmarcResult::Pass,
    });
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pct_tag() {
        assert_eq!(parse_pct("v=DMARC1; p=reject; pct=20"), 20);
        assert_eq!(parse_pct("v=DMARC1; p=reject"), 100);
        assert_eq!(parse_pct("v=DMARC1; p=reject; PCT = 0 ;"), 0);
        assert_eq!(parse_pct("v=DMARC1; pct=300"), 100);
    }
}
