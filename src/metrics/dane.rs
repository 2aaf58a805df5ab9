//! DNS self-check gauges, refreshed by the running server every `dns.self_check_interval`
//! (`src/app/dane.rs`) with the checks of `mxgate dns check`. Labels come from the
//! configuration: listener names and MTA-STS domains.

/// Gauge per public listener, `{listener}`: whether the TLSA records at `_25._tcp.HOSTNAME`
/// match the key the listener serves: `1` one matches, `0` records are published and none
/// matches (DANE senders refuse delivery), `-1` no TLSA record (the name does not use DANE).
/// A failed lookup leaves the last value.
pub(crate) const DANE_TLSA_MATCH: &str = "mxgate_dane_tlsa_match";
/// Gauge per MTA-STS domain, `{domain}`: `1` when the published `_mta-sts` TXT record is
/// well-formed with the served policy's id and every MX host matches an `mx:` pattern, else
/// `0`. A failed lookup leaves the last value.
pub(crate) const MTA_STS_POLICY_VALID: &str = "mxgate_mta_sts_policy_valid";

/// Describes the DNS self-check gauges.
pub(crate) fn describe() {
    use metrics::describe_gauge;
    describe_gauge!(
        DANE_TLSA_MATCH,
        "1 when a published TLSA record matches the listener's key, 0 when none does, -1 when none is published"
    );
    describe_gauge!(
        MTA_STS_POLICY_VALID,
        "1 when the published _mta-sts id is the served policy's and every MX matches it, else 0"
    );
}

/// Sets a listener's TLSA gauge: `Some(true)` matches, `Some(false)` none matches, `None`
/// nothing published.
pub(crate) fn tlsa_match(listener: &str, matches: Option<bool>) {
    let v = match matches {
        Some(true) => 1.0,
        Some(false) => 0.0,
        None => -1.0,
    };
    metrics::gauge!(DANE_TLSA_MATCH, "listener" => listener.to_string()).set(v);
}

/// Sets a domain's MTA-STS policy gauge.
pub(crate) fn policy_valid(domain: &str, valid: bool) {
    metrics::gauge!(MTA_STS_POLICY_VALID, "domain" => domain.to_string()).set(if valid {
        1.0
    } else {
        0.0
    });
}
