//! Sender-authentication metrics: one counter of results by method. Labels come from the
//! configuration (listener, sender group) and typed results, never from an address or a
//! domain. PART B adds the `dkim` and `dmarc` methods here.

use crate::auth::SenderAnswer;
use crate::metrics::InboundLabels;

/// Counter: sender-authentication results by listener, sender group, method
/// (`dns_verification`, `spf`) and result (`pass`, `exempt`, `malformed`, `not_exist`,
/// `unresolvable` for DNS verification; RFC 8601's `pass`, `fail`, `softfail`, `neutral`,
/// `none`, `temperror`, `permerror` for SPF).
pub(crate) const SENDER_AUTH: &str = "mxgate_sender_auth_total";

/// Describes the sender-authentication metrics.
pub(crate) fn describe() {
    metrics::describe_counter!(
        SENDER_AUTH,
        "Sender authentication results (DNS verification, SPF) by method and result"
    );
}

/// Counts one result of `method`.
pub(crate) fn count(l: &InboundLabels, method: &'static str, result: &'static str) {
    metrics::counter!(SENDER_AUTH, "listener" => l.listener.clone(),
        "sender_group" => l.sender_group.clone(), "method" => method, "result" => result)
    .increment(1);
}

/// Counts the results of one `MAIL FROM`'s lookups.
pub(crate) fn observe(l: &InboundLabels, answer: &SenderAnswer) {
    if let Some(d) = &answer.dns {
        count(l, "dns_verification", d.label());
    }
    if let Some(s) = &answer.spf {
        count(l, "spf", s.result.label());
    }
}
