//! The bounded `policy_domain` label: a report names any domain its sender likes, so only the
//! domains the operator configured become label values; the rest are `other`.

use std::collections::BTreeSet;

/// The policy domains allowed as label values (lower case, no trailing dot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyDomains(BTreeSet<String>);

impl PolicyDomains {
    /// The allow-list from configured domain names.
    pub fn new<I, S>(domains: I) -> PolicyDomains
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        PolicyDomains(
            domains
                .into_iter()
                .map(|d| normalise(d.as_ref()))
                .filter(|d| !d.is_empty())
                .collect(),
        )
    }

    /// The label of a reported `policy-domain`: itself when allowed, else `other`.
    pub fn label(&self, policy_domain: &str) -> String {
        let d = normalise(policy_domain);
        if self.0.contains(&d) {
            d
        } else {
            "other".to_string()
        }
    }
}

fn normalise(d: &str) -> String {
    d.trim().trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_domains_are_labels() {
        let d = PolicyDomains::new(["Example.COM.", "company-y.example"]);
        assert_eq!(d.label("example.com"), "example.com");
        assert_eq!(d.label("COMPANY-Y.example."), "company-y.example");
        assert_eq!(d.label("attacker-chosen-1234.example"), "other");
        assert_eq!(PolicyDomains::default().label("example.com"), "other");
    }
}
