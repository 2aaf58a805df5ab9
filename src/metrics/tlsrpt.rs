//! TLS-RPT metrics: the sessions senders reported to us and the reports themselves. Every
//! label is bounded: `reporter` from the shipped table, `policy_domain` from the configured
//! allow-list, `result_type` from RFC 8460 §4.3 (else `other`). The counters advance when a
//! report is ingested, though the sessions happened during the report's date range (days ago).

use crate::tlsrpt::domains::PolicyDomains;
use crate::tlsrpt::report::Report;

/// Counter: sessions as reported,
/// `{policy_domain, policy_type, result, result_type, reporter}`: result `success` (result_type
/// `none`) or `failure` (result_type from the failure details, `other` for the rest).
pub(crate) const TLSRPT_SESSIONS: &str = "mxgate_tlsrpt_sessions_total";
/// Counter: report bodies received, `{reporter, outcome}` with outcome `accepted`,
/// `duplicate`, `malformed`, `too_large`, `bomb`, `store_failed`.
pub(crate) const TLSRPT_REPORTS: &str = "mxgate_tlsrpt_reports_total";

/// Describes the TLS-RPT metrics.
pub(crate) fn describe() {
    use metrics::describe_counter;
    describe_counter!(
        TLSRPT_SESSIONS,
        "TLS sessions to us as senders reported them (RFC 8460), counted when the report arrives"
    );
    describe_counter!(TLSRPT_REPORTS, "TLS-RPT report bodies received, by outcome");
}

/// Counts one report body.
pub(crate) fn report_outcome(reporter: &'static str, outcome: &'static str) {
    metrics::counter!(TLSRPT_REPORTS, "reporter" => reporter, "outcome" => outcome).increment(1);
}

/// Counts the sessions of an accepted report.
pub(crate) fn sessions(report: &Report, reporter: &'static str, domains: &PolicyDomains) {
    for p in &report.policies {
        let domain = domains.label(&p.policy.policy_domain);
        let policy_type = p.policy.policy_type.label();
        let count = |result: &'static str, result_type: &'static str, n: u64| {
            metrics::counter!(TLSRPT_SESSIONS, "policy_domain" => domain.clone(),
                "policy_type" => policy_type, "result" => result,
                "result_type" => result_type, "reporter" => reporter)
            .increment(n);
        };
        count("success", "none", p.summary.successful);
        for d in &p.failure_details {
            count("failure", d.result_type_label(), d.failed_session_count);
        }
        let rest = p.unattributed_failures();
        if rest > 0 {
            count("failure", "other", rest);
        }
    }
}
