//! The policy file of RFC 8461 §3.2 as pure data: its exact text and the id that the
//! `_mta-sts` TXT record publishes (§3.1), which must change whenever the text does.

use std::fmt;

/// Longest `max_age` RFC 8461 §3.2 allows: 31557600 seconds (about a year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// `mode:` of a policy (RFC 8461 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Senders must not deliver to an MX that fails the checks.
    Enforce,
    /// Senders deliver anyway and report failures (TLS-RPT).
    Testing,
    /// The domain withdraws its policy.
    None,
}

impl Mode {
    /// Parses `enforce`, `testing` or `none` (case-insensitive).
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "enforce" => Ok(Mode::Enforce),
            "testing" => Ok(Mode::Testing),
            "none" => Ok(Mode::None),
            _ => Err(format!(
                "{:?} is not a mode: write enforce, testing or none",
                s.trim()
            )),
        }
    }

    /// The word of the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One domain's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `mode:`.
    pub mode: Mode,
    /// `mx:` patterns: host names or `*.example.com` wildcards, in configuration order.
    pub mx: Vec<String>,
    /// `max_age:` in seconds (at most [`MAX_AGE_LIMIT`]).
    pub max_age: u64,
}

impl Policy {
    /// The policy file exactly as served: CRLF after every line (RFC 8461 §3.2 allows
    /// LF too, but CRLF is what its ABNF and example write).
    pub fn text(&self) -> String {
        let mut out = String::from("version: STSv1\r\n");
        out.push_str(&format!("mode: {}\r\n", self.mode));
        for mx in &self.mx {
            out.push_str(&format!("mx: {mx}\r\n"));
        }
        out.push_str(&format!("max_age: {}\r\n", self.max_age));
        out
    }

    /// The id to publish in `_mta-sts.DOMAIN TXT "v=STSv1; id=ID"`: see [`policy_id`].
    pub fn id(&self) -> String {
        policy_id(&self.text())
    }
}

/// A policy id derived from the policy text: the first 20 hex digits of its SHA-256.
/// RFC 8461 §3.1 wants 1–32 letters and digits that change when the policy does; a hash
/// changes exactly then, and the same text gives the same id after a restart.
pub fn policy_id(text: &str) -> String {
    let digest = crate::certs::sha256(text.as_bytes());
    let mut hex = crate::certs::hex(&digest);
    hex.truncate(20);
    hex
}

/// The TXT record to publish for a domain: `v=STSv1; id=ID`.
pub fn txt_record(policy: &Policy) -> String {
    format!("v=STSv1; id={}", policy.id())
}

/// True when `s` is an `mx:` pattern: a host name, or `*.` followed by one (RFC 8461 §4.1:
/// the wildcard stands for exactly one leftmost label).
pub fn is_mx_pattern(s: &str) -> bool {
    let name = s.strip_prefix("*.").unwrap_or(s);
    crate::dns::name::is_host_name(name) && name.contains('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8461 §3.2's example policy.
    fn rfc_example() -> Policy {
        Policy {
            mode: Mode::Enforce,
            mx: vec![
                "mail.example.com".into(),
                "*.example.net".into(),
                "backupmx.example.com".into(),
            ],
            max_age: 604_800,
        }
    }

    #[test]
    fn text_is_the_rfc_example_with_crlf_lines() {
        assert_eq!(
            rfc_example().text(),
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n\
             mx: backupmx.example.com\r\nmax_age: 604800\r\n"
        );
    }

    #[test]
    fn id_is_short_alphanumeric_stable_and_follows_the_text() {
        let p = rfc_example();
        let id = p.id();
        assert_eq!(id.len(), 20);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(id, rfc_example().id());
        let testing = Policy {
            mode: Mode::Testing,
            ..rfc_example()
        };
        assert_ne!(testing.id(), id);
        assert_eq!(txt_record(&p), format!("v=STSv1; id={id}"));
    }

    #[test]
    fn modes_and_mx_patterns() {
        assert_eq!(Mode::parse(" Enforce"), Ok(Mode::Enforce));
        assert_eq!(Mode::parse("none"), Ok(Mode::None));
        assert!(Mode::parse("enforcing")
            .unwrap_err()
            .contains("enforce, testing or none"));
        assert!(is_mx_pattern("mx1.example.com"));
        assert!(is_mx_pattern("*.example.net"));
        assert!(!is_mx_pattern("*example.net"));
        assert!(!is_mx_pattern("mx.*.example.net"));
        assert!(!is_mx_pattern("*.com"));
        assert!(!is_mx_pattern("mx_1.example.com"));
    }
}
