//! Host names as the configuration writes them: one rule for every file that names a host,
//! a domain or a DNS zone (HAT criteria and block lists, RAT patterns, listener and policy
//! host names, routes, destinations, alert addresses).
//!
//! The rule is the host-name syntax of RFC 1035 §2.2.1 as relaxed by RFC 1123 §2.1 (a label
//! may start with a digit). The forms around a name — a trailing dot, HAT and RAT
//! `.suffix` patterns, `ALL` — are the callers' to strip before asking.

/// Longest name in text form without the trailing dot (255 octets on the wire).
const MAX_NAME: usize = 253;
/// Longest label.
const MAX_LABEL: usize = 63;

/// True when `name` is a host name: dot-separated labels of 1–63 letters, digits and `-`,
/// no label starting or ending with `-`, 253 octets in all. `name` is written without the
/// trailing dot of the absolute form (strip it first where a file may write one).
pub(crate) fn is_host_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && name.split('.').all(is_label)
}

/// One label: 1–63 letters, digits and `-`, not at either end.
fn is_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= MAX_LABEL
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::is_host_name;

    #[test]
    fn host_names_follow_rfc_1123() {
        let label63 = "a".repeat(63);
        // 4 labels of 63 and 3 dots: 255 octets; one label shorter gives exactly 253.
        let name253 = format!("{label63}.{label63}.{label63}.{}", "a".repeat(61));
        assert_eq!(name253.len(), 253);
        for ok in [
            "localhost",
            "example.com",
            "Mail.Partner.Example",
            "3com.example",
            "zen.example-rbl.test",
            "a-b.c--d.example",
            "xn--bcher-kva.example",
            label63.as_str(),
            name253.as_str(),
        ] {
            assert!(is_host_name(ok), "{ok:?} should be a host name");
        }
        let label64 = "a".repeat(64);
        let name254 = format!("{name253}a");
        for bad in [
            "",
            ".",
            "example.com.",
            ".example.com",
            "mail..example",
            "-mail.example",
            "mail-.example",
            "mail.-example",
            "under_score.example",
            "exa mple.com",
            "mail.example:25",
            "*.example.com",
            "bücher.example",
            label64.as_str(),
            name254.as_str(),
        ] {
            assert!(!is_host_name(bad), "{bad:?} should not be a host name");
        }
    }
}
