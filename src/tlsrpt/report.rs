//! The validated RFC 8460 §4 report, from the raw JSON of [`super::raw`].
//! Validation checks what the metrics and the store rely on (required fields, integer counts
//! within bounds, a sane date range); unknown JSON members are ignored, as reporters add some.

use super::raw::{OneOrMany, PolicyResultDef, ReportDef};

/// The largest session count one number of a report may carry: a day of mail to one domain
/// from one reporter stays far below it, and a counter that jumped by 2^63 would be useless.
pub const MAX_SESSION_COUNT: u64 = 1_000_000_000;
/// The longest date range accepted (reports cover a day; some reporters send a few).
pub const MAX_RANGE_SECONDS: i64 = 31 * 86_400;
/// How far in the future a range may start (clock skew between reporter and us).
pub const FUTURE_SLACK_SECONDS: i64 = 86_400;
/// The longest report-id kept (it names nothing on disk, but it is printed and stored).
pub const MAX_REPORT_ID_LEN: usize = 512;

/// Why a report is refused as malformed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReportError {
    /// Not JSON, or JSON of the wrong shape (serde names the member and position).
    #[error("not a TLS-RPT JSON report: {0}")]
    Json(String),
    /// A required member is missing or empty.
    #[error("missing required field {0}")]
    Missing(&'static str),
    /// A count is negative, fractional or over [`MAX_SESSION_COUNT`].
    #[error("{field}: {value} is not a session count (0..={MAX_SESSION_COUNT})")]
    BadCount {
        /// The member.
        field: &'static str,
        /// The number as sent.
        value: String,
    },
    /// The failure details add up to more failed sessions than the summary says.
    #[error("failure-details count {details} failed sessions, more than total-failure-session-count {total}")]
    FailuresExceedTotal {
        /// Sum of `failed-session-count`.
        details: u64,
        /// `total-failure-session-count`.
        total: u64,
    },
    /// A date is not RFC 3339.
    #[error("{field}: {value:?} is not an RFC 3339 date-time")]
    BadDate {
        /// The member.
        field: &'static str,
        /// The value as sent.
        value: String,
    },
    /// The range ends before it starts, is too long, or starts in the future.
    #[error("date-range {0}")]
    BadRange(&'static str),
    /// `policy-type` is none of `sts`, `tlsa`, `no-policy-found`.
    #[error("policy-type {0:?} is not sts, tlsa or no-policy-found")]
    BadPolicyType(String),
    /// The report-id is longer than [`MAX_REPORT_ID_LEN`] or has control characters.
    #[error("report-id is too long or has control characters")]
    BadReportId,
}

/// `policy-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyType {
    /// MTA-STS (RFC 8461).
    Sts,
    /// DANE TLSA (RFC 7672).
    Tlsa,
    /// Neither was found.
    NoPolicyFound,
}

impl PolicyType {
    /// The RFC's name, also the metric label.
    pub fn label(self) -> &'static str {
        match self {
            PolicyType::Sts => "sts",
            PolicyType::Tlsa => "tlsa",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }
}

/// The result types of RFC 8460 §4.3; anything else is reported as `other`.
pub const RESULT_TYPES: &[&str] = &[
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
    "tlsa-invalid",
    "dnssec-invalid",
    "dane-required",
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
];

/// A failure's `result-type` as a bounded label: one of [`RESULT_TYPES`] or `other`.
pub fn result_type_label(reported: &str) -> &'static str {
    let r = reported.trim().to_ascii_lowercase();
    RESULT_TYPES
        .iter()
        .find(|t| **t == r)
        .copied()
        .unwrap_or("other")
}

/// The validated date range, Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    /// `start-datetime`.
    pub start: i64,
    /// `end-datetime`.
    pub end: i64,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `policy-type`.
    pub policy_type: PolicyType,
    /// `policy-string` lines.
    pub policy_string: Vec<String>,
    /// `policy-domain`, lower case, without a trailing dot.
    pub policy_domain: String,
    /// `mx-host` patterns.
    pub mx_host: Vec<String>,
}

/// A validated summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// `total-successful-session-count`.
    pub successful: u64,
    /// `total-failure-session-count`.
    pub failed: u64,
}

/// A validated failure detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureDetail {
    /// `result-type` as reported.
    pub result_type: String,
    /// `sending-mta-ip`.
    pub sending_mta_ip: Option<String>,
    /// `receiving-mx-hostname`.
    pub receiving_mx_hostname: Option<String>,
    /// `receiving-mx-helo`.
    pub receiving_mx_helo: Option<String>,
    /// `receiving-ip`.
    pub receiving_ip: Option<String>,
    /// `failed-session-count`.
    pub failed_session_count: u64,
    /// `additional-information`.
    pub additional_information: Option<String>,
    /// `failure-reason-code`.
    pub failure_reason_code: Option<String>,
}

impl FailureDetail {
    /// The bounded `result_type` label.
    pub fn result_type_label(&self) -> &'static str {
        result_type_label(&self.result_type)
    }
}

/// One policy's results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyResult {
    /// The policy applied.
    pub policy: Policy,
    /// Its session counts.
    pub summary: Summary,
    /// The failures, grouped by the reporter.
    pub failure_details: Vec<FailureDetail>,
}

/// A validated report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `organization-name`.
    pub organization_name: String,
    /// `date-range`.
    pub date_range: DateRange,
    /// `contact-info`.
    pub contact_info: Option<String>,
    /// `report-id`.
    pub report_id: String,
    /// `policies`.
    pub policies: Vec<PolicyResult>,
}

fn required(v: Option<String>, field: &'static str) -> Result<String, ReportError> {
    match v {
        Some(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => Err(ReportError::Missing(field)),
    }
}

fn count(n: Option<serde_json::Number>, field: &'static str) -> Result<u64, ReportError> {
    let n = n.ok_or(ReportError::Missing(field))?;
    match n.as_u64() {
        Some(v) if v <= MAX_SESSION_COUNT => Ok(v),
        _ => Err(ReportError::BadCount {
            field,
            value: n.to_string(),
        }),
    }
}

fn date(v: Option<String>, field: &'static str) -> Result<i64, ReportError> {
    let v = required(v, field)?;
    chrono::DateTime::parse_from_rfc3339(&v)
        .map(|d| d.timestamp())
        .map_err(|_| ReportError::BadDate { field, value: v })
}

impl Report {
    /// Parses and validates a JSON report received at `now` (Unix seconds).
    pub fn from_json(json: &[u8], now: i64) -> Result<Report, ReportError> {
        let r = Report::from_json_unchecked_time(json)?;
        if r.date_range.start > now + FUTURE_SLACK_SECONDS {
            return Err(ReportError::BadRange("starts in the future"));
        }
        Ok(r)
    }

    /// Parses and validates a stored report: everything but the range against the clock
    /// (it was checked at ingestion).
    pub fn from_json_unchecked_time(json: &[u8]) -> Result<Report, ReportError> {
        let def: ReportDef =
            serde_json::from_slice(json).map_err(|e| ReportError::Json(e.to_string()))?;
        Report::from_def(def)
    }

    /// Validates a parsed report.
    pub fn from_def(def: ReportDef) -> Result<Report, ReportError> {
        let organization_name = required(def.organization_name, "organization-name")?;
        let report_id = required(def.report_id, "report-id")?;
        if report_id.len() > MAX_REPORT_ID_LEN || report_id.chars().any(char::is_control) {
            return Err(ReportError::BadReportId);
        }
        let range = def.date_range.ok_or(ReportError::Missing("date-range"))?;
        let start = date(range.start_datetime, "start-datetime")?;
        let end = date(range.end_datetime, "end-datetime")?;
        if end < start {
            return Err(ReportError::BadRange("ends before it starts"));
        }
        if end - start > MAX_RANGE_SECONDS {
            return Err(ReportError::BadRange("is longer than 31 days"));
        }
        let defs = def.policies.ok_or(ReportError::Missing("policies"))?;
        if defs.is_empty() {
            return Err(ReportError::Missing("policies"));
        }
        let mut policies = Vec::with_capacity(defs.len());
        for p in defs {
            policies.push(PolicyResult::from_def(p)?);
        }
        Ok(Report {
            organization_name,
            date_range: DateRange { start, end },
            contact_info: def.contact_info.filter(|c| !c.trim().is_empty()),
            report_id,
            policies,
        })
    }

    /// Successful sessions over all policies.
    pub fn successful(&self) -> u64 {
        self.policies.iter().map(|p| p.summary.successful).sum()
    }

    /// Failed sessions over all policies.
    pub fn failed(&self) -> u64 {
        self.policies.iter().map(|p| p.summary.failed).sum()
    }
}

impl PolicyResult {
    fn from_def(def: PolicyResultDef) -> Result<PolicyResult, ReportError> {
        let p = def.policy.ok_or(ReportError::Missing("policy"))?;
        let policy_type = match required(p.policy_type, "policy-type")?.as_str() {
            "sts" => PolicyType::Sts,
            "tlsa" => PolicyType::Tlsa,
            "no-policy-found" => PolicyType::NoPolicyFound,
            other => return Err(ReportError::BadPolicyType(other.to_string())),
        };
        let policy_domain = required(p.policy_domain, "policy-domain")?
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let s = def.summary.ok_or(ReportError::Missing("summary"))?;
        let summary = Summary {
            successful: count(
                s.total_successful_session_count,
                "total-successful-session-count",
            )?,
            failed: count(s.total_failure_session_count, "total-failure-session-count")?,
        };
        let mut failure_details = Vec::with_capacity(def.failure_details.len());
        let mut details = 0u64;
        for d in def.failure_details {
            let n = count(d.failed_session_count, "failed-session-count")?;
            details = details.saturating_add(n);
            failure_details.push(FailureDetail {
                result_type: required(d.result_type, "result-type")?,
                sending_mta_ip: d.sending_mta_ip,
                receiving_mx_hostname: d.receiving_mx_hostname,
                receiving_mx_helo: d.receiving_mx_helo,
                receiving_ip: d.receiving_ip,
                failed_session_count: n,
                additional_information: d.additional_information,
                failure_reason_code: d.failure_reason_code,
            });
        }
        if details > summary.failed {
            return Err(ReportError::FailuresExceedTotal {
                details,
                total: summary.failed,
            });
        }
        Ok(PolicyResult {
            policy: Policy {
                policy_type,
                policy_string: p.policy_string.map(OneOrMany::into_vec).unwrap_or_default(),
                policy_domain,
                mx_host: p.mx_host.map(OneOrMany::into_vec).unwrap_or_default(),
            },
            summary,
            failure_details,
        })
    }

    /// Failed sessions the details do not attribute to a result type (counted as `other`).
    pub fn unattributed_failures(&self) -> u64 {
        let details: u64 = self
            .failure_details
            .iter()
            .map(|d| d.failed_session_count)
            .sum();
        self.summary.failed.saturating_sub(details)
    }
}

/// The RFC 8460 Appendix B example report, as test data. Copied from the RFC; the one
/// change: the RFC's text wraps the `additional-information` string over two lines, which
/// JSON does not allow, so the two halves are joined.
#[cfg(test)]
pub(crate) const RFC_EXAMPLE: &str = include_str!("rfc8460-example.json");

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-05, long after the example's range.
    const NOW: i64 = 1_796_428_800;

    #[test]
    fn the_rfc_example_parses_with_every_field() {
        let r = Report::from_json(RFC_EXAMPLE.as_bytes(), NOW).unwrap();
        assert_eq!(r.organization_name, "Company-X");
        assert_eq!(r.report_id, "5065427c-23d3-47ca-b6e0-946ea0e8c4be");
        assert_eq!(
            r.contact_info.as_deref(),
            Some("sts-reporting@company-x.example")
        );
        assert_eq!(
            r.date_range,
            DateRange {
                start: 1_459_468_800,
                end: 1_459_468_800 + 86_399
            }
        );
        let p = &r.policies[0];
        assert_eq!(p.policy.policy_type, PolicyType::Sts);
        assert_eq!(p.policy.policy_domain, "company-y.example");
        assert_eq!(p.policy.mx_host, vec!["*.mail.company-y.example"]);
        assert_eq!(p.policy.policy_string.len(), 4);
        assert_eq!(
            p.summary,
            Summary {
                successful: 5326,
                failed: 303
            }
        );
        let d: Vec<(&str, u64)> = p
            .failure_details
            .iter()
            .map(|d| (d.result_type_label(), d.failed_session_count))
            .collect();
        assert_eq!(
            d,
            vec![
                ("certificate-expired", 100),
                ("starttls-not-supported", 200),
                ("validation-failure", 3)
            ]
        );
        assert_eq!(
            p.failure_details[2].failure_reason_code.as_deref(),
            Some("X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED")
        );
        assert_eq!(
            p.failure_details[1].receiving_ip.as_deref(),
            Some("203.0.113.56")
        );
        assert_eq!(p.unattributed_failures(), 0);
    }

    fn edited(from: &str, to: &str) -> Result<Report, ReportError> {
        assert!(RFC_EXAMPLE.contains(from), "{from}");
        Report::from_json(RFC_EXAMPLE.replacen(from, to, 1).as_bytes(), NOW)
    }

    #[test]
    fn missing_fields_bad_counts_and_ranges_are_refused_by_name() {
        let e = |from: &str, to: &str| edited(from, to).unwrap_err().to_string();
        assert_eq!(
            e(
                r#""report-id": "5065427c-23d3-47ca-b6e0-946ea0e8c4be","#,
                ""
            ),
            "missing required field report-id"
        );
        assert_eq!(
            e(
                r#""organization-name": "Company-X","#,
                r#""organization-name": " ","#
            ),
            "missing required field organization-name"
        );
        assert_eq!(
            e(r#""policy-domain": "company-y.example","#, ""),
            "missing required field policy-domain"
        );
        assert_eq!(
            e(
                r#""total-successful-session-count": 5326"#,
                r#""total-successful-session-count": -5"#
            ),
            "total-successful-session-count: -5 is not a session count (0..=1000000000)"
        );
        assert!(e(
            r#""failed-session-count": 3,"#,
            r#""failed-session-count": 99999999999999999999999,"#
        )
        .contains("failed-session-count"));
        assert!(e(
            r#""failed-session-count": 3,"#,
            r#""failed-session-count": 2.5,"#
        )
        .contains("is not a session count"));
        assert_eq!(
            e(
                r#""failed-session-count": 3,"#,
                r#""failed-session-count": 4,"#
            ),
            "failure-details count 304 failed sessions, more than total-failure-session-count 303"
        );
        assert_eq!(
            e("2016-04-01T23:59:59Z", "2016-03-01T23:59:59Z"),
            "date-range ends before it starts"
        );
        assert_eq!(
            e("2016-04-01T23:59:59Z", "2016-06-01T23:59:59Z"),
            "date-range is longer than 31 days"
        );
        assert!(e("2016-04-01T00:00:00Z", "yesterday").contains("not an RFC 3339"));
        assert_eq!(
            e(r#""policy-type": "sts""#, r#""policy-type": "dmarc""#),
            r#"policy-type "dmarc" is not sts, tlsa or no-policy-found"#
        );
        assert!(e("{", "[").starts_with("not a TLS-RPT JSON report"));
        // A range in the future is refused at ingestion, not when read back.
        let future = RFC_EXAMPLE
            .replace("2016-04-01T00:00:00Z", "2027-04-01T00:00:00Z")
            .replace("2016-04-01T23:59:59Z", "2027-04-01T23:59:59Z");
        assert_eq!(
            Report::from_json(future.as_bytes(), NOW)
                .unwrap_err()
                .to_string(),
            "date-range starts in the future"
        );
        assert!(Report::from_json_unchecked_time(future.as_bytes()).is_ok());
    }

    #[test]
    fn unknown_result_types_are_other_and_lists_are_accepted() {
        let r = edited(
            r#""result-type": "certificate-expired""#,
            r#""result-type": "Certificate-Expired""#,
        )
        .unwrap();
        assert_eq!(
            r.policies[0].failure_details[0].result_type_label(),
            "certificate-expired"
        );
        let r = edited(
            r#""result-type": "certificate-expired""#,
            r#""result-type": "martian""#,
        )
        .unwrap();
        assert_eq!(
            r.policies[0].failure_details[0].result_type_label(),
            "other"
        );
        let r = edited(
            r#""mx-host": "*.mail.company-y.example""#,
            r#""mx-host": ["a.example", "b.example"]"#,
        )
        .unwrap();
        assert_eq!(r.policies[0].policy.mx_host, vec!["a.example", "b.example"]);
        // Fewer details than failures: the rest is unattributed.
        let r = edited(
            r#""total-failure-session-count": 303"#,
            r#""total-failure-session-count": 310"#,
        )
        .unwrap();
        assert_eq!(r.policies[0].unattributed_failures(), 7);
    }
}
