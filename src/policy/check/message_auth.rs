//! The DATA stage's second step: what the DMARC result of a message does under the policy's
//! `dmarc:` (docs/sender-auth.md). Pure: the lookups are `src/auth/message.rs`'s, the random
//! sample against `pct=` comes with the answer.
//!
//! | result | `off`, `tag` | `enforce` |
//! |---|---|---|
//! | `pass`, `none`, `permerror` | delivered | delivered |
//! | `temperror` (DNS) | delivered | delivered (a DNS failure never refuses; RFC 7489 §6.6.3 leaves it to us) |
//! | `fail`, `p=none` | delivered | delivered |
//! | `fail`, `p=quarantine` | delivered | quarantined when sampled (`pct`), else delivered |
//! | `fail`, `p=reject` | delivered | `550 5.7.1` when sampled, else quarantined (§6.6.4: the next policy down) |

use super::{Denial, DenialReason};
use crate::auth::{DmarcOutcome, DmarcPolicy, DmarcVerdict, MessageAnswer};
use crate::policy::flow::MailFlowPolicy;
use crate::policy::sender_auth::DmarcMode;
use crate::smtp::reply::{Enhanced, Reply};

/// What happens to an accepted message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Delivered as is (with its `Authentication-Results`).
    Deliver,
    /// Delivered with `X-Mxgate-DMARC: quarantine`, for the internal server to file.
    Quarantine,
}

/// What the check needs.
pub(crate) struct MessageAuthCtx<'a> {
    /// The session's policy.
    pub policy: &'a MailFlowPolicy,
    /// What the lookups found.
    pub answer: &'a MessageAnswer,
}

/// The decision over a message: its header section, then DMARC.
pub(crate) fn check_message_auth(ctx: &MessageAuthCtx<'_>) -> Result<Disposition, Denial> {
    if let Some(problem) = ctx.answer.header {
        // We add `Authentication-Results` on top: a header section the internal server would
        // read differently from us (or that folds into ours) cannot carry it.
        if problem.is_malformed() {
            return Err(Denial::new(
                Reply::new(
                    550,
                    Enhanced(5, 6, 0),
                    format!(
                        "Message refused: malformed header section ({})",
                        problem.describe()
                    ),
                ),
                DenialReason::MalformedHeader { problem },
            ));
        }
        // RFC 7489 §6.6.1: without a single author domain DMARC cannot apply, and a forger
        // would only need to add a second From.
        if ctx.policy.dmarc == DmarcMode::Enforce {
            return Err(Denial::new(
                Reply::new(
                    550,
                    Enhanced(5, 7, 1),
                    format!(
                        "Message refused: DMARC needs one From address ({})",
                        problem.describe()
                    ),
                ),
                DenialReason::DmarcAuthor { problem },
            ));
        }
    }
    if ctx.policy.dmarc != DmarcMode::Enforce {
        return Ok(Disposition::Deliver);
    }
    let Some(d) = &ctx.answer.dmarc else {
        return Ok(Disposition::Deliver);
    };
    if d.result != DmarcVerdict::Fail {
        return Ok(Disposition::Deliver);
    }
    let sampled = ctx.answer.sample < d.pct;
    match (d.policy, sampled) {
        (DmarcPolicy::Reject, true) => Err(reject(d)),
        (DmarcPolicy::Reject, false) | (DmarcPolicy::Quarantine, true) => {
            Ok(Disposition::Quarantine)
        }
        _ => Ok(Disposition::Deliver),
    }
}

fn reject(d: &DmarcOutcome) -> Denial {
    Denial::new(
        // RFC 7372 has no DMARC code; X.7.1 "delivery not authorized" is what large receivers use.
        Reply::new(
            550,
            Enhanced(5, 7, 1),
            "Message refused: DMARC policy of the From domain (reject)",
        ),
        DenialReason::Dmarc {
            domain: d.from_domain.clone(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::DmarcOutcome;

    fn answer(result: DmarcVerdict, policy: DmarcPolicy, pct: u8, sample: u8) -> MessageAnswer {
        MessageAnswer {
            dkim: vec![],
            spf: None,
            spf_now: false,
            dmarc: Some(DmarcOutcome {
                result,
                from_domain: "a.example".into(),
                policy,
                pct,
                spf_aligned: false,
                dkim_aligned: false,
            }),
            sample,
            header: None,
        }
    }

    type Decided = Result<Disposition, (u16, String)>;

    fn decide(mode: DmarcMode, a: &MessageAnswer) -> Decided {
        let mut policy = MailFlowPolicy::builtin_default("ACCEPTED");
        policy.dmarc = mode;
        check_message_auth(&MessageAuthCtx {
            policy: &policy,
            answer: a,
        })
        .map_err(|d| {
            let r = d.reply.unwrap();
            (r.code, r.enhanced.unwrap().to_string())
        })
    }

    #[test]
    fn decision_table() {
        use Disposition::*;
        use DmarcPolicy as P;
        use DmarcVerdict as V;
        let rej = Err((550, "5.7.1".to_string()));
        let rows: &[(DmarcMode, V, P, u8, u8, Decided)] = &[
            (DmarcMode::Tag, V::Fail, P::Reject, 100, 0, Ok(Deliver)),
            (DmarcMode::Off, V::Fail, P::Reject, 100, 0, Ok(Deliver)),
            (DmarcMode::Enforce, V::Pass, P::Reject, 100, 0, Ok(Deliver)),
            (
                DmarcMode::Enforce,
                V::TempError,
                P::Reject,
                100,
                0,
                Ok(Deliver),
            ),
            (DmarcMode::Enforce, V::None, P::None, 100, 0, Ok(Deliver)),
            (DmarcMode::Enforce, V::Fail, P::None, 100, 0, Ok(Deliver)),
            (DmarcMode::Enforce, V::Fail, P::Reject, 100, 99, rej.clone()),
            (DmarcMode::Enforce, V::Fail, P::Reject, 30, 29, rej),
            (
                DmarcMode::Enforce,
                V::Fail,
                P::Reject,
                30,
                30,
                Ok(Quarantine),
            ),
            (DmarcMode::Enforce, V::Fail, P::Reject, 0, 0, Ok(Quarantine)),
            (
                DmarcMode::Enforce,
                V::Fail,
                P::Quarantine,
                100,
                99,
                Ok(Quarantine),
            ),
            (
                DmarcMode::Enforce,
                V::Fail,
                P::Quarantine,
                50,
                50,
                Ok(Deliver),
            ),
        ];
        for (mode, v, p, pct, sample, want) in rows {
            let got = decide(*mode, &answer(*v, *p, *pct, *sample));
            assert_eq!(&got, want, "{mode:?} {v:?} {p:?} pct={pct} sample={sample}");
        }
    }

    #[test]
    fn a_malformed_header_is_refused_in_every_mode_and_no_author_only_under_enforce() {
        use crate::auth::header::HeaderProblem;
        let with = |h| MessageAnswer {
            header: Some(h),
            ..answer(DmarcVerdict::Pass, DmarcPolicy::Reject, 100, 0)
        };
        for mode in [DmarcMode::Off, DmarcMode::Tag, DmarcMode::Enforce] {
            for h in [
                HeaderProblem::FoldedFirstLine,
                HeaderProblem::LineWithoutColon,
            ] {
                assert_eq!(
                    decide(mode, &with(h)),
                    Err((550, "5.6.0".into())),
                    "{mode:?}"
                );
            }
        }
        for h in [HeaderProblem::FromFields(0), HeaderProblem::FromAddress] {
            assert_eq!(
                decide(DmarcMode::Enforce, &with(h)),
                Err((550, "5.7.1".into()))
            );
            assert_eq!(decide(DmarcMode::Tag, &with(h)), Ok(Disposition::Deliver));
        }
    }
}
