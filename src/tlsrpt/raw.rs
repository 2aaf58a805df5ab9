//! The RFC 8460 §4 report as sent: serde structs (`*Def`) with every member optional, so
//! that validation ([`super::report`]) can name what is missing. Unknown members are ignored,
//! as reporters add some.

use serde::Deserialize;

/// One string or a list of them: RFC 8460's example has `mx-host` as a string, the big
/// reporters send lists.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single string.
    One(String),
    /// A list.
    Many(Vec<String>),
}

impl OneOrMany {
    pub(crate) fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `date-range` as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DateRangeDef {
    /// `start-datetime`.
    pub start_datetime: Option<String>,
    /// `end-datetime`.
    pub end_datetime: Option<String>,
}

/// `policy` as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyDef {
    /// `policy-type`.
    pub policy_type: Option<String>,
    /// `policy-string`.
    pub policy_string: Option<OneOrMany>,
    /// `policy-domain`.
    pub policy_domain: Option<String>,
    /// `mx-host`.
    pub mx_host: Option<OneOrMany>,
}

/// `summary` as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SummaryDef {
    /// `total-successful-session-count`.
    pub total_successful_session_count: Option<serde_json::Number>,
    /// `total-failure-session-count`.
    pub total_failure_session_count: Option<serde_json::Number>,
}

/// One `failure-details` entry as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FailureDetailDef {
    /// `result-type`.
    pub result_type: Option<String>,
    /// `sending-mta-ip`.
    pub sending_mta_ip: Option<String>,
    /// `receiving-mx-hostname`.
    pub receiving_mx_hostname: Option<String>,
    /// `receiving-mx-helo`.
    pub receiving_mx_helo: Option<String>,
    /// `receiving-ip`.
    pub receiving_ip: Option<String>,
    /// `failed-session-count`.
    pub failed_session_count: Option<serde_json::Number>,
    /// `additional-information`.
    pub additional_information: Option<String>,
    /// `failure-reason-code`.
    pub failure_reason_code: Option<String>,
}

/// One `policies[]` entry as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyResultDef {
    /// `policy`.
    pub policy: Option<PolicyDef>,
    /// `summary`.
    pub summary: Option<SummaryDef>,
    /// `failure-details` (absent when nothing failed).
    #[serde(default)]
    pub failure_details: Vec<FailureDetailDef>,
}

/// The report as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReportDef {
    /// `organization-name`.
    pub organization_name: Option<String>,
    /// `date-range`.
    pub date_range: Option<DateRangeDef>,
    /// `contact-info` (required by the RFC, missing from some real reports: not enforced).
    pub contact_info: Option<String>,
    /// `report-id`.
    pub report_id: Option<String>,
    /// `policies`.
    pub policies: Option<Vec<PolicyResultDef>>,
}
