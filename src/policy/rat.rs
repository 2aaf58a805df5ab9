//! RAT — recipient access table: which recipients a public listener accepts (docs/configuration.md).

use std::sync::Arc;

use crate::dns::name::is_host_name;
use crate::smtp::reply::{Enhanced, Reply};
use crate::validate::rule::RecipientValidation;

/// What a RAT entry matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientPattern {
    /// A whole domain (`example.com`), exactly.
    Domain(String),
    /// Every domain below a domain (`.example.com`), not the domain itself.
    Subdomain(String),
    /// One full address (`postmaster@example.com`).
    Address(String),
    /// A local part at any domain (`postmaster@`).
    LocalPart(String),
    /// Every recipient (`ALL`).
    All,
}

impl RecipientPattern {
    /// Parses the YAML form.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        let t = t.trim_end_matches('.');
        if t.is_empty() {
            return Err("empty recipient pattern".into());
        }
        if t == "all" {
            return Ok(RecipientPattern::All);
        }
        if let Some(local) = t.strip_suffix('@') {
            if local.is_empty() || local.contains('@') {
                return Err(format!("{s:?} is not a valid user@ pattern"));
            }
            return Ok(RecipientPattern::LocalPart(local.to_string()));
        }
        if let Some((local, domain)) = t.rsplit_once('@') {
            if local.is_empty() || local.contains('@') || !is_host_name(domain) {
                return Err(format!("{s:?} is not a valid address"));
            }
            return Ok(RecipientPattern::Address(t.to_string()));
        }
        if let Some(rest) = t.strip_prefix('.') {
            if !is_host_name(rest) {
                return Err(format!("{s:?} is not a valid .subdomain pattern"));
            }
            return Ok(RecipientPattern::Subdomain(format!(".{rest}")));
        }
        if is_host_name(t) {
            return Ok(RecipientPattern::Domain(t.to_string()));
        }
        Err(format!(
            "{s:?} is not a domain, .subdomain, address, user@ or ALL"
        ))
    }

    /// True when the pattern matches `local@domain` (both already lower-cased).
    pub fn matches(&self, local: &str, domain: &str) -> bool {
        match self {
            RecipientPattern::Domain(d) => domain == d,
            RecipientPattern::Subdomain(s) => domain.ends_with(s.as_str()),
            RecipientPattern::Address(a) => {
                a.len() == local.len() + 1 + domain.len()
                    && a.starts_with(local)
                    && a.as_bytes()[local.len()] == b'@'
                    && a.ends_with(domain)
            }
            RecipientPattern::LocalPart(l) => local == l,
            RecipientPattern::All => true,
        }
    }
}

/// Accept or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RatAction {
    /// Accept the recipient.
    Accept,
    /// Reject the recipient.
    Reject,
}

/// One RAT entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatEntry {
    /// What it matches.
    pub pattern: RecipientPattern,
    /// What it does.
    pub action: RatAction,
    /// Custom reply (for accept: the 250 text; for reject: the refusal).
    pub reply: Option<Reply>,
    /// How an accepted recipient is validated (`validate:`); `None`: not at all.
    pub validation: Option<Arc<RecipientValidation>>,
}

/// What the RAT says about an accepted recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RatMatch {
    /// The entry's custom 250 reply.
    pub reply: Option<Reply>,
    /// The entry's validation rule.
    pub validation: Option<Arc<RecipientValidation>>,
    /// The entry that accepted (`entry N`), for the log.
    pub rule: String,
}

/// Why a recipient was refused by the RAT (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatDenied {
    /// Reply to send.
    pub reply: Reply,
    /// Entry that fired (`default` when none matched).
    pub rule: String,
}

/// An ordered recipient access table; the implicit last entry rejects.
#[derive(Debug, Clone)]
pub struct RecipientAccessTable {
    /// Table name.
    pub name: String,
    /// Entries in order; first match wins.
    pub entries: Vec<RatEntry>,
    /// Where `RCPT TO:<postmaster>` goes (`postmaster:`); `None`: postmaster@ the first domain.
    pub postmaster: Option<String>,
}

impl RecipientAccessTable {
    /// The reply given when no entry accepts a recipient.
    pub(crate) fn default_reply() -> Reply {
        Reply::new(550, Enhanced(5, 7, 1), "Recipient address rejected")
    }

    /// Checks a recipient; `Ok` carries the accepting entry's reply and validation rule.
    pub fn check(&self, local: &str, domain: &str) -> Result<RatMatch, RatDenied> {
        let local = local.to_ascii_lowercase();
        let domain = domain.to_ascii_lowercase();
        for (i, e) in self.entries.iter().enumerate() {
            // An accepting `user@` accepts at the RAT's own domains only: at any other domain
            // the internal server would bounce it to a forged sender (backscatter).
            let foreign = matches!(e.pattern, RecipientPattern::LocalPart(_))
                && e.action == RatAction::Accept
                && !self.is_own_domain(&domain);
            if e.pattern.matches(&local, &domain) && !foreign {
                return match e.action {
                    RatAction::Accept => Ok(RatMatch {
                        reply: e.reply.clone(),
                        validation: e.validation.clone(),
                        rule: format!("entry {i}"),
                    }),
                    RatAction::Reject => Err(RatDenied {
                        reply: e.reply.clone().unwrap_or_else(Self::default_reply),
                        rule: format!("entry {i}"),
                    }),
                };
            }
        }
        Err(RatDenied {
            reply: Self::default_reply(),
            rule: "default".into(),
        })
    }

    /// True when an accepting domain, subdomain or address entry names `domain` (lower-case).
    fn is_own_domain(&self, domain: &str) -> bool {
        self.entries.iter().any(|e| {
            e.action == RatAction::Accept
                && match &e.pattern {
                    RecipientPattern::Domain(d) => d == domain,
                    RecipientPattern::Subdomain(s) => domain.ends_with(s.as_str()),
                    RecipientPattern::Address(a) => {
                        a.rsplit_once('@').is_some_and(|(_, d)| d == domain)
                    }
                    RecipientPattern::LocalPart(_) | RecipientPattern::All => false,
                }
        })
    }

    /// The address `RCPT TO:<postmaster>` goes to: the configured one, else postmaster at the
    /// first domain an entry accepts; `None` when the RAT names no domain.
    pub fn postmaster(&self) -> Option<String> {
        if let Some(p) = &self.postmaster {
            return Some(p.clone());
        }
        self.entries
            .iter()
            .filter(|e| e.action == RatAction::Accept)
            .find_map(|e| match &e.pattern {
                RecipientPattern::Domain(d) => Some(d.as_str()),
                RecipientPattern::Address(a) => a.rsplit_once('@').map(|(_, d)| d),
                _ => None,
            })
            .map(|d| format!("postmaster@{d}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rat(entries: &[(&str, RatAction)]) -> RecipientAccessTable {
        RecipientAccessTable {
            name: "t".into(),
            entries: entries
                .iter()
                .map(|(p, a)| RatEntry {
                    pattern: RecipientPattern::parse(p).unwrap(),
                    action: *a,
                    reply: None,
                    validation: None,
                })
                .collect(),
            postmaster: None,
        }
    }

    #[test]
    fn default_rejects() {
        let t = rat(&[("example.com", RatAction::Accept)]);
        assert!(t.check("a", "example.com").is_ok());
        assert!(t.check("a", "EXAMPLE.COM").is_ok());
        let d = t.check("a", "other.test").unwrap_err();
        assert_eq!(
            d.reply.to_wire(),
            "550 5.7.1 Recipient address rejected\r\n"
        );
        assert!(t.check("a", "sub.example.com").is_err());
        assert!(t.check("a", "example.com.evil.test").is_err());
    }

    #[test]
    fn forms_and_order() {
        let t = rat(&[
            ("spam-trap@example.com", RatAction::Reject),
            ("postmaster@", RatAction::Accept),
            (".example.com", RatAction::Accept),
            ("example.com", RatAction::Accept),
        ]);
        assert!(t.check("spam-trap", "example.com").is_err());
        assert!(t.check("postmaster", "anything.test").is_err());
        assert!(t.check("postmaster", "eu.example.com").is_ok());
        assert!(t.check("x", "eu.example.com").is_ok());
        assert!(t.check("x", "badexample.com").is_err());
        assert!(t.check("x", "example.com").is_ok());
    }

    /// `<postmaster>` goes to the configured address, else postmaster@ the first accepted
    /// domain; a `postmaster@` entry accepts only at the RAT's own domains.
    #[test]
    fn trust_13_postmaster_and_local_part_entries() {
        let mut t = rat(&[
            ("other.test", RatAction::Reject),
            ("postmaster@", RatAction::Accept),
            (".example.com", RatAction::Accept),
            ("vip@example.net", RatAction::Accept),
            ("example.org", RatAction::Accept),
        ]);
        assert_eq!(t.postmaster().as_deref(), Some("postmaster@example.net"));
        assert!(t.check("postmaster", "eu.example.com").is_ok());
        assert!(t.check("postmaster", "example.net").is_ok());
        assert!(t.check("postmaster", "EXAMPLE.ORG").is_ok());
        assert!(t.check("postmaster", "victim.test").is_err());
        assert!(t.check("postmaster", "other.test").is_err());
        t.postmaster = Some("hostmaster@example.org".into());
        assert_eq!(t.postmaster().as_deref(), Some("hostmaster@example.org"));
        assert_eq!(
            rat(&[("postmaster@", RatAction::Accept)]).postmaster(),
            None
        );
    }

    #[test]
    fn pattern_errors() {
        assert!(RecipientPattern::parse("").is_err());
        assert!(RecipientPattern::parse("a@@b").is_err());
        assert!(RecipientPattern::parse("exa mple.com").is_err());
        assert_eq!(
            RecipientPattern::parse("ALL").unwrap(),
            RecipientPattern::All
        );
    }
}
