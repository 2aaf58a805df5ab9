//! `policies/tlsrpt.yaml` as validated: where reports are received and how many are kept.

use super::domains::PolicyDomains;

/// Default cap on stored reports: some years of daily reports from a dozen reporters.
pub const DEFAULT_MAX_REPORTS: usize = 10_000;
/// Default cap on the bytes of stored reports.
pub const DEFAULT_MAX_STORE_BYTES: u64 = 512 << 20;

/// The TLS-RPT intake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRptSettings {
    /// Report addresses (lower case), intercepted at RCPT on public listeners.
    pub addresses: Vec<String>,
    /// Report mail is also delivered to the internal server.
    pub relay: bool,
    /// Path of the HTTPS intake on the MTA-STS endpoint (`None`: no HTTPS intake).
    pub https_path: Option<String>,
    /// The `policy_domain` label values.
    pub domains: PolicyDomains,
    /// Most reports kept; the oldest are removed past it.
    pub max_reports: usize,
    /// Most bytes of reports kept; the oldest are removed past it.
    pub max_store_bytes: u64,
}

impl TlsRptSettings {
    /// Whether `address` (as the RCPT named it) is a report address. The local part is
    /// compared ignoring ASCII case too: the address is ours and published in DNS.
    pub fn is_report_address(&self, address: &str) -> bool {
        self.addresses
            .iter()
            .any(|a| a.eq_ignore_ascii_case(address))
    }

    /// The `rua=` value to publish in `_smtp._tls.DOMAIN` TXT for these settings, given the
    /// HTTPS host (the MTA-STS policy host) when there is an HTTPS intake.
    pub fn rua(&self, https_host: Option<&str>) -> String {
        let mut uris: Vec<String> = self
            .addresses
            .iter()
            .map(|a| format!("mailto:{a}"))
            .collect();
        if let (Some(path), Some(host)) = (&self.https_path, https_host) {
            uris.push(format!("https://{host}{path}"));
        }
        uris.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_addresses_match_ignoring_case_and_rua_lists_both_intakes() {
        let s = TlsRptSettings {
            addresses: vec!["tlsrpt@example.com".into()],
            relay: false,
            https_path: Some("/tlsrpt".into()),
            domains: PolicyDomains::default(),
            max_reports: DEFAULT_MAX_REPORTS,
            max_store_bytes: DEFAULT_MAX_STORE_BYTES,
        };
        assert!(s.is_report_address("TLSRPT@Example.com"));
        assert!(!s.is_report_address("tlsrpt@example.org"));
        assert!(!s.is_report_address("xtlsrpt@example.com"));
        assert_eq!(
            s.rua(Some("mta-sts.example.com")),
            "mailto:tlsrpt@example.com,https://mta-sts.example.com/tlsrpt"
        );
        assert_eq!(s.rua(None), "mailto:tlsrpt@example.com");
    }
}
