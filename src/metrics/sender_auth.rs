//! Sender-authentication metrics: one counter of results by method. Labels come from the
//! configuration (listener, sender group) and typed results, never from an address or a
//! domain.

use crate::auth::{MessageAnswer, SenderAnswer};
use crate::metrics::InboundLabels;

/// Counter: sender-authentication results by listener, sender group, method
/// (`dns_verification`, `spf`, `dkim`, `dmarc`) and result (`pass`, `exempt`, `malformed`,
/// `not_exist`, `unresolvable` for DNS verification; RFC 8601's keywords for the others:
/// `pass`, `fail`, `softfail`, `neutral`, `none`, `temperror`, `permerror`).
pub(crate) const SENDER_AUTH: &str = "mxgate_sender_auth_total";

/// Describes the sender-authentication metrics.
pub(crate) fn describe() {
    metrics::describe_counter!(
        SENDER_AUTH,
        "Sender authentication results (DNS verification, SPF, DKIM, DMARC) by method and result"
    );
}

/// Counts one result of `method`.
pub(crate) fn count(l: &InboundLabels, method: &'static str, result: &'static str) {
    metrics::counter!(SENDER_AUTH, "listener" => l.listener.clone(),
        "sender_group" => l.sender_group.clone(), "method" => method, "result" => result)
    .increment(1);
}

/// Counts the results of one `MAIL FROM`'s lookups. A sender refused by the DNS
/// verification has no SPF result, in the log as here, although SPF ran alongside.
pub(crate) fn observe(l: &InboundLabels, answer: &SenderAnswer) {
    if let Some(d) = &answer.dns {
        count(l, "dns_verification", d.label());
        if d.refuses() {
            return;
        }
    }
    if let Some(s) = &answer.spf {
        count(l, "spf", s.result.label());
    }
}

/// Counts the results of one message's checks: each DKIM signature (`none` when there is
/// none), DMARC, and SPF when it was evaluated only now.
pub(crate) fn observe_message(l: &InboundLabels, answer: &MessageAnswer) {
    if answer.spf_now {
        if let Some(s) = &answer.spf {
            count(l, "spf", s.result.label());
        }
    }
    if let Some(d) = &answer.dmarc {
        if answer.dkim.is_empty() {
            count(l, "dkim", "none");
        }
        for s in &answer.dkim {
            count(l, "dkim", s.result.label());
        }
        count(l, "dmarc", d.result.label());
    }
}
