//! The mail-log lines of the message checks after DATA (docs/sender-auth.md): ESA's `DKIM:`
//! and `DMARC:` lines, the quarantine mark, and forged headers removed.

use super::event::{printable, sanitize};
use crate::auth::results::QUARANTINE_HEADER;
use crate::auth::{DkimSignature, DkimVerdict, DmarcOutcome, DmarcVerdict};

/// One message-check event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageAuthEvent {
    /// The result of one DKIM signature (`MID n DKIM: pass signature verified (d=… s=… i=…)`).
    Dkim {
        /// Message id.
        mid: u64,
        /// The signature's result and identity.
        signature: DkimSignature,
    },
    /// A message without a DKIM signature (`MID n DKIM: no signature`).
    DkimNone {
        /// Message id.
        mid: u64,
    },
    /// The DMARC evaluation (`MID n DMARC: Message from domain x, DMARC pass …`).
    Dmarc {
        /// Message id.
        mid: u64,
        /// The result, the From domain, the policy and the alignment.
        outcome: DmarcOutcome,
    },
    /// A DMARC `p=quarantine` (or a `p=reject` not sampled by `pct`) applied: the message is
    /// marked with `X-Mxgate-DMARC: quarantine`.
    DmarcQuarantined {
        /// Message id.
        mid: u64,
        /// The From domain.
        domain: String,
    },
    /// Forged `Authentication-Results` (claiming our authserv-id) and `X-Mxgate-DMARC`
    /// headers were removed from a message.
    ForgedHeaders {
        /// Message id.
        mid: u64,
        /// How many fields were removed, by name.
        removed: crate::auth::results::Forged,
        /// Our authserv-id.
        authserv_id: String,
    },
}

impl MessageAuthEvent {
    /// A short snake_case name for the JSON form.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageAuthEvent::Dkim { .. } => "dkim",
            MessageAuthEvent::DkimNone { .. } => "dkim_none",
            MessageAuthEvent::Dmarc { .. } => "dmarc",
            MessageAuthEvent::DmarcQuarantined { .. } => "dmarc_quarantined",
            MessageAuthEvent::ForgedHeaders { .. } => "forged_headers",
        }
    }

    /// The line's text (without timestamp and level).
    pub fn text(&self) -> String {
        match self {
            MessageAuthEvent::Dkim { mid, signature: s } => {
                let what = match s.result {
                    DkimVerdict::Pass => "signature verified".to_string(),
                    _ => sanitize(&s.reason),
                };
                format!(
                    "MID {mid} DKIM: {} {what} (d={} s={} i={})",
                    s.result.log_word(),
                    printable(&s.domain),
                    printable(&s.selector),
                    printable(&s.identity)
                )
            }
            MessageAuthEvent::DkimNone { mid } => format!("MID {mid} DKIM: no signature"),
            MessageAuthEvent::Dmarc { mid, outcome } => dmarc_line(*mid, outcome),
            MessageAuthEvent::DmarcQuarantined { mid, domain } => format!(
                "MID {mid} DMARC: Message from domain {}, quarantine applied (X-Mxgate-DMARC: quarantine)",
                printable(domain)
            ),
            MessageAuthEvent::ForgedHeaders {
                mid,
                removed,
                authserv_id,
            } => {
                let mut what = Vec::new();
                if removed.results > 0 {
                    what.push(format!(
                        "{} Authentication-Results claiming {}",
                        removed.results,
                        printable(authserv_id)
                    ));
                }
                if removed.quarantine > 0 {
                    what.push(format!("{} {QUARANTINE_HEADER}", removed.quarantine));
                }
                format!("mxgate: MID {mid} removed forged headers: {}", what.join(", "))
            }
        }
    }
}

/// ESA's DMARC line: the domain, the result, the alignment of each identifier.
fn dmarc_line(mid: u64, o: &DmarcOutcome) -> String {
    let tf = |b: bool| if b { "True" } else { "False" };
    let domain = printable(&o.from_domain);
    let head = format!("MID {mid} DMARC: Message from domain {domain}, DMARC");
    match o.result {
        _ if o.from_domain.is_empty() => {
            format!("MID {mid} DMARC: Verification skipped (no single From domain)")
        }
        DmarcVerdict::Pass => format!(
            "{head} pass (SPF aligned {}, DKIM aligned {})",
            tf(o.spf_aligned),
            tf(o.dkim_aligned)
        ),
        DmarcVerdict::Fail => format!(
            "{head} fail (SPF aligned {}, DKIM aligned {}), policy {}",
            tf(o.spf_aligned),
            tf(o.dkim_aligned),
            o.policy.as_str()
        ),
        DmarcVerdict::None => format!("{head} record not found"),
        DmarcVerdict::TempError => format!("{head} temperror (DNS failure)"),
        DmarcVerdict::PermError => format!("{head} permerror (invalid record)"),
    }
}
