//! The bounded `sender_org` label of the inbound connection and TLS counters: which large
//! sender a connection came from, by the suffix of its *verified* PTR name (FCrDNS, the name
//! the HAT matches `.suffix` criteria against). A PTR that was not verified says nothing about
//! the sender (anyone can publish any PTR for their own addresses), so it is `unknown`;
//! a verified name no suffix covers is `other`. The label can take only the organisation names
//! of the table plus those two, whatever names the clients' PTRs carry.
//!
//! Suffixes match on DNS label boundaries (`google.com` covers `mail-wr1-f54.google.com` and
//! `google.com`, not `evilgoogle.com`), case-insensitively, with any trailing dot ignored; the
//! longest matching suffix wins. Organisation names agree with the TLS-RPT `reporter` labels
//! (`crate::tlsrpt::reporter`) where both know a sender, so the two can be read side by side.

use std::collections::{BTreeSet, HashMap};

use crate::policy::hat::ReverseDns;

/// Label of a verified PTR name that no suffix of the table covers.
pub const OTHER: &str = "other";

/// Label of a connection without a verified PTR name (none, a lookup failure, or a name
/// whose forward lookup does not contain the client address).
pub const UNKNOWN: &str = "unknown";

/// At most this many organisations in `metrics.sender_orgs`: the label stays bounded even
/// when every configured organisation is a new one.
pub const MAX_CONFIGURED_ORGS: usize = 32;

/// Longest organisation name (a label value that fits a dashboard legend).
pub const MAX_ORG_NAME: usize = 32;

/// The shipped table: `(organisation, PTR suffixes)`. The suffixes are the parents of the
/// names these senders' outbound servers carry, e.g. `mail-wr1-f54.google.com`,
/// `mail-db8eur05on2100.outbound.protection.outlook.com`, `sonic309-21.consmr.mail.gq1.yahoo.com`,
/// `ms11p00im-qufo17282101.me.com`, `a9-31.smtp-out.amazonses.com`,
/// `s.wrqvtzvf.outbound-mail.sendgrid.net`, `mx0a-001b2d01.pphosted.com`,
/// `us-smtp-delivery-124.mimecast.com`, `sender4-op-o12.zoho.com`,
/// `fout3-smtp.messagingengine.com`, `mout.gmx.net`.
pub const DEFAULT_SENDER_ORGS: &[(&str, &[&str])] = &[
    ("google", &["google.com", "googlemail.com"]),
    (
        "microsoft",
        &[
            "outlook.com",
            "protection.outlook.com",
            "hotmail.com",
            "office365.us",
        ],
    ),
    (
        "yahoo",
        &["yahoo.com", "yahoo.net", "yahoodns.net", "aol.com"],
    ),
    ("apple", &["icloud.com", "me.com", "apple.com"]),
    ("amazon_ses", &["amazonses.com"]),
    ("sendgrid", &["sendgrid.net"]),
    (
        "mailchimp",
        &["mcsv.net", "mcdlv.net", "rsgsv.net", "mandrillapp.com"],
    ),
    ("salesforce", &["exacttarget.com", "salesforce.com"]),
    ("proofpoint", &["pphosted.com", "ppe-hosted.com"]),
    ("mimecast", &["mimecast.com"]),
    ("zoho", &["zoho.com", "zoho.eu", "zoho.in", "zohomail.com"]),
    ("fastmail", &["messagingengine.com"]),
    ("gmx", &["gmx.net", "gmx.com", "gmx.de", "web.de"]),
    ("ionos", &["kundenserver.de"]),
    ("mailgun", &["mailgun.net"]),
    ("postmark", &["mtasv.net"]),
    ("sparkpost", &["sparkpostmail.com"]),
    ("brevo", &["sendinblue.com", "brevo.com"]),
    ("proton", &["protonmail.ch", "proton.ch"]),
    ("comcast", &["comcast.net"]),
    ("yandex", &["yandex.net", "yandex.ru"]),
    ("mailru", &["mail.ru"]),
];

/// Why a configured suffix is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuffixError {
    /// A `*` wildcard: every suffix already covers all the names under it.
    #[error("{0:?}: write the suffix without `*.`: {1} already covers every name under it")]
    Wildcard(String, String),
    /// Not a host name.
    #[error("{0:?} is not a DNS name (letters, digits and `-` in dot-separated labels)")]
    NotAName(String),
}

/// The suffix table: organisation per PTR suffix (lower case, no leading or trailing dot).
#[derive(Clone, PartialEq, Eq)]
pub struct SenderOrgs {
    by_suffix: HashMap<String, String>,
}

/// Sorted: the configuration hash is taken over this output, the same in every process.
impl std::fmt::Debug for SenderOrgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sorted: std::collections::BTreeMap<_, _> = self.by_suffix.iter().collect();
        f.debug_struct("SenderOrgs")
            .field("by_suffix", &sorted)
            .finish()
    }
}

impl Default for SenderOrgs {
    /// The shipped table.
    fn default() -> Self {
        let mut t = SenderOrgs {
            by_suffix: HashMap::new(),
        };
        for (org, suffixes) in DEFAULT_SENDER_ORGS {
            for s in *suffixes {
                t.by_suffix.insert((*s).to_string(), (*org).to_string());
            }
        }
        t
    }
}

impl SenderOrgs {
    /// Maps `suffix` (already normalised by [`normalize_suffix`]) to `org`, replacing the
    /// organisation the table had for exactly that suffix.
    pub fn insert(&mut self, org: &str, suffix: &str) {
        self.by_suffix.insert(suffix.to_string(), org.to_string());
    }

    /// The `sender_org` label of a connection's reverse-DNS result.
    pub fn label(&self, rdns: &ReverseDns) -> &str {
        match rdns.verified_name() {
            Some(name) => self.org_of(name),
            None => UNKNOWN,
        }
    }

    /// The organisation of a verified PTR name: its longest suffix in the table, else `other`.
    pub fn org_of(&self, verified_name: &str) -> &str {
        let name = verified_name.trim_end_matches('.').to_ascii_lowercase();
        // Every label boundary from the left: the whole name first, so the longest suffix wins.
        let mut rest = name.as_str();
        loop {
            if let Some(org) = self.by_suffix.get(rest) {
                return org;
            }
            match rest.split_once('.') {
                Some((_, parent)) => rest = parent,
                None => return OTHER,
            }
        }
    }

    /// Every value the label can take: the table's organisations, `other` and `unknown`.
    pub fn label_values(&self) -> BTreeSet<&str> {
        self.by_suffix
            .values()
            .map(String::as_str)
            .chain([OTHER, UNKNOWN])
            .collect()
    }
}

/// True when `org` may be a configured organisation: lower-case letters, digits and `_`,
/// starting with a letter, at most [`MAX_ORG_NAME`] characters, and not `unknown` (which means
/// "no verified name"). `other` is allowed: mapping a suffix to it takes a default out.
pub fn is_org_name(org: &str) -> bool {
    org != UNKNOWN
        && org.len() <= MAX_ORG_NAME
        && org.starts_with(|c: char| c.is_ascii_lowercase())
        && org
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A configured suffix in table form: lower case, without a leading `.` (HAT style) or a
/// trailing dot.
pub fn normalize_suffix(raw: &str) -> Result<String, SuffixError> {
    let s = raw.trim().to_ascii_lowercase();
    if let Some(rest) = s.strip_prefix("*.") {
        let hint = rest.trim_end_matches('.').to_string();
        return Err(SuffixError::Wildcard(raw.to_string(), hint));
    }
    let s = s.strip_prefix('.').unwrap_or(&s);
    let s = s.strip_suffix('.').unwrap_or(s);
    if !crate::dns::name::is_host_name(s) {
        return Err(SuffixError::NotAName(raw.to_string()));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(name: &str) -> ReverseDns {
        ReverseDns::Verified(name.to_string())
    }

    #[test]
    fn real_ptr_names_of_the_large_senders() {
        let t = SenderOrgs::default();
        for (name, want) in [
            ("mail-wr1-f54.google.com", "google"),
            ("mail-sor-f41.google.com.", "google"),
            (
                "mail-dbaeur03on2058.outbound.protection.outlook.com",
                "microsoft",
            ),
            (
                "mail-bn8nam04on2046.outbound.protection.outlook.com",
                "microsoft",
            ),
            ("sonic309-21.consmr.mail.gq1.yahoo.com", "yahoo"),
            ("ms11p00im-qufo17282101.me.com", "apple"),
            ("a9-31.smtp-out.amazonses.com", "amazon_ses"),
            ("s.wrqvtzvf.outbound-mail.sendgrid.net", "sendgrid"),
            ("o1678910x203.outbound-mail.sendgrid.net", "sendgrid"),
            ("mail180.atl121.mcsv.net", "mailchimp"),
            ("mx0a-001b2d01.pphosted.com", "proofpoint"),
            ("us-smtp-delivery-124.mimecast.com", "mimecast"),
            ("sender4-op-o12.zoho.com", "zoho"),
            ("fout3-smtp.messagingengine.com", "fastmail"),
            ("mout.gmx.net", "gmx"),
            ("mout.web.de", "gmx"),
            ("mout.kundenserver.de", "ionos"),
            ("mta-10-20-30.exacttarget.com", "salesforce"),
        ] {
            assert_eq!(t.label(&verified(name)), want, "{name}");
        }
    }

    #[test]
    fn matching_is_on_label_boundaries_case_insensitive_trailing_dot_ignored() {
        let t = SenderOrgs::default();
        assert_eq!(t.org_of("evilgoogle.com"), OTHER);
        assert_eq!(t.org_of("google.com.evil.example"), OTHER);
        assert_eq!(t.org_of("google.com"), "google");
        assert_eq!(t.org_of("MAIL-WR1-F54.Google.COM."), "google");
        assert_eq!(t.org_of("com"), OTHER);
        assert_eq!(t.org_of(""), OTHER);
        assert_eq!(t.org_of("."), OTHER);
        assert_eq!(t.org_of("mail.partner.example"), OTHER);
    }

    #[test]
    fn only_a_verified_name_counts() {
        let t = SenderOrgs::default();
        let name = "mail-wr1-f54.google.com".to_string();
        assert_eq!(t.label(&ReverseDns::Mismatch(name)), UNKNOWN);
        assert_eq!(t.label(&ReverseDns::Missing), UNKNOWN);
        assert_eq!(t.label(&ReverseDns::TempFail), UNKNOWN);
        assert_eq!(t.label(&ReverseDns::NotChecked), UNKNOWN);
    }

    #[test]
    fn the_longest_suffix_wins_and_an_entry_replaces_its_suffix_only() {
        let mut t = SenderOrgs::default();
        t.insert("workspace", "smtp.google.com");
        t.insert("partner", "partner.example");
        assert_eq!(t.org_of("a.smtp.google.com"), "workspace");
        assert_eq!(t.org_of("mail-wr1-f54.google.com"), "google");
        assert_eq!(t.org_of("mx.partner.example"), "partner");
        // Mapping a default suffix to `other` takes it out.
        t.insert(OTHER, "sendgrid.net");
        assert_eq!(t.org_of("s.x.outbound-mail.sendgrid.net"), OTHER);
        let values = t.label_values();
        assert!(values.contains("workspace") && values.contains("partner"));
        assert!(values.contains(OTHER) && values.contains(UNKNOWN));
        assert!(!values.contains("sendgrid"), "{values:?}");
    }

    #[test]
    fn the_shipped_table_is_label_safe_and_has_no_suffix_twice() {
        let mut seen = BTreeSet::new();
        for (org, suffixes) in DEFAULT_SENDER_ORGS {
            assert!(is_org_name(org) && *org != OTHER, "{org}");
            for s in *suffixes {
                assert_eq!(normalize_suffix(s).as_deref(), Ok(*s));
                assert!(seen.insert(*s), "{s} listed twice");
            }
        }
        let t = SenderOrgs::default();
        assert_eq!(t.label_values().len(), DEFAULT_SENDER_ORGS.len() + 2);
    }

    #[test]
    fn org_names_and_suffixes_are_checked() {
        for ok in ["google", "amazon_ses", "acme2", "other"] {
            assert!(is_org_name(ok), "{ok}");
        }
        let long = "a".repeat(MAX_ORG_NAME + 1);
        for bad in [
            "",
            "Google",
            "2acme",
            "_x",
            "acme-corp",
            "a b",
            "unknown",
            &long,
        ] {
            assert!(!is_org_name(bad), "{bad:?}");
        }
        assert_eq!(
            normalize_suffix(".Example.COM.").as_deref(),
            Ok("example.com")
        );
        assert!(matches!(
            normalize_suffix("*.google.com"),
            Err(SuffixError::Wildcard(_, h)) if h == "google.com"
        ));
        for bad in ["", ".", "a..b", "exa mple.com", "-x.com", "x_y.com"] {
            assert!(
                matches!(normalize_suffix(bad), Err(SuffixError::NotAName(_))),
                "{bad:?}"
            );
        }
    }
}
