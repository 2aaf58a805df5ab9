//! The configuration side of `recipients check`: which listener, what its RAT decides
//! about the address (as `check_rcpt`'s first stage does) and how the accepting entry
//! validates it. No I/O.

use std::sync::Arc;

use super::{ListenerRat, RecipientView};
use crate::policy::check::rcpt::recipient_address;
use crate::policy::rat::RecipientPattern;
use crate::smtp::command::{parse_command, Command};
use crate::smtp::reply::{Enhanced, Reply};
use crate::validate::rule::{OnTempFail, RecipientValidation, ValidationMethod};
use crate::validate::service::route_id;

/// What the first stage of `RCPT TO` decides about the address on a listener.
#[derive(Debug)]
pub(crate) enum Decision {
    /// The listener has no RAT (a private listener).
    NoRat,
    /// A source route, %-hack, quoted @ or address literal: refused before the RAT.
    RelayTrick,
    /// `<postmaster>`: accepted past the RAT (RFC 5321 §4.5.1).
    Postmaster,
    /// Refused by entry `index` (`None`: no entry matched, the implicit last one refuses).
    Refused { index: Option<usize>, reply: Reply },
    /// Accepted by entry `index`, with its own 250 and validation rule.
    Accepted {
        index: usize,
        reply: Option<Reply>,
        rule: Option<Arc<RecipientValidation>>,
    },
}

/// The address on one listener, decided.
#[derive(Debug)]
pub(crate) struct Explained<'a> {
    /// The listener.
    pub listener: &'a ListenerRat,
    /// The address as stored (`<postmaster>` resolved).
    pub address: String,
    /// What its RAT decided.
    pub decision: Decision,
}

/// The 250 of an accepted recipient: the entry's own, else the standard one (as
/// `check_rcpt` gives it).
pub(crate) fn accepted(reply: Option<&Reply>) -> Reply {
    reply
        .cloned()
        .unwrap_or_else(|| Reply::new(250, Enhanced(2, 1, 5), "Recipient ok"))
}

/// `entry N` as the mail log names it, from the RAT's `entry N` rule text.
pub(crate) fn entry_index(rule: &str) -> Option<usize> {
    rule.strip_prefix("entry ")?.parse().ok()
}

/// The pattern as written in `policies/rat.yaml`.
pub(crate) fn pattern_text(p: &RecipientPattern) -> String {
    match p {
        RecipientPattern::Domain(d) | RecipientPattern::Subdomain(d) => d.clone(),
        RecipientPattern::Address(a) => a.clone(),
        RecipientPattern::LocalPart(l) => format!("{l}@"),
        RecipientPattern::All => "ALL".into(),
    }
}

/// Decides `address` on `listener` (default: the first listener with a RAT).
pub(crate) fn explain<'a>(
    view: &'a RecipientView,
    address: &str,
    listener: Option<&str>,
) -> Result<Explained<'a>, String> {
    let l = match listener {
        Some(name) => view
            .listeners
            .iter()
            .find(|l| l.name == name)
            .ok_or_else(|| format!("no listener named {name:?}"))?,
        None => view
            .listeners
            .iter()
            .find(|l| l.rat.is_some())
            .or(view.listeners.first())
            .ok_or("no listeners configured")?,
    };
    let bare = address.trim().trim_start_matches('<').trim_end_matches('>');
    let to = match parse_command(format!("RCPT TO:<{bare}>").as_bytes()) {
        Ok(Command::Rcpt { to, .. }) => to,
        _ => return Err(format!("{bare:?} is not an address RCPT TO accepts")),
    };
    let (stored, postmaster) = recipient_address(&to, l.rat.as_deref());
    let decision = match &l.rat {
        _ if to.is_relay_attempt() => Decision::RelayTrick,
        None => Decision::NoRat,
        Some(_) if postmaster => Decision::Postmaster,
        Some(rat) => match rat.check(&to.local, &to.domain) {
            Ok(m) => Decision::Accepted {
                index: entry_index(&m.rule).unwrap_or(0),
                reply: m.reply,
                rule: m.validation,
            },
            Err(d) => Decision::Refused {
                index: entry_index(&d.rule),
                reply: d.reply,
            },
        },
    };
    Ok(Explained {
        listener: l,
        address: stored,
        decision,
    })
}

/// The method, its route or directory, and `on_tempfail`.
pub(crate) fn describe_method(
    view: &RecipientView,
    rule: &RecipientValidation,
    domain: &str,
) -> String {
    let on_tempfail = match rule.on_tempfail {
        OnTempFail::TempFail => "tempfail",
        OnTempFail::Accept => "accept",
    };
    match &rule.method {
        ValidationMethod::List(list) => {
            let (a, d) = list.len();
            let plural = |n: usize, one: &str| match n {
                1 => format!("1 {one}"),
                n => format!("{n} {one}s"),
            };
            format!(
                "list {} ({}, {})",
                view.shown_path(list.path()),
                plural(a, "address").replace("addresss", "addresses"),
                plural(d, "catch-all domain")
            )
        }
        ValidationMethod::Ldap(name) => match view.settings.ldap.get(name) {
            Some(s) => format!(
                "ldap {name} ({}, base {}, filter {}); on_tempfail {on_tempfail}",
                s.url, s.base, s.filter
            ),
            None => format!("ldap {name}: no such directory in policies/validation.yaml"),
        },
        ValidationMethod::Callahead => match view.routes.route_for(domain) {
            Some(r) => {
                let h = &r.hosts[0];
                let more = match r.hosts.len() {
                    1 => String::new(),
                    n => format!(", first of {n} hosts"),
                };
                let tls = view.destinations.for_domain(domain).tls.as_str();
                format!(
                    "callahead, route {} -> {}:{}{more} (tls {tls}); on_tempfail {on_tempfail}",
                    r.domain, h.host, h.port
                )
            }
            None => format!(
                "callahead, but no SMTP route covers {domain}: every lookup answers tempfail; on_tempfail {on_tempfail}"
            ),
        },
    }
}

/// The cache key's method id of a lookup (`None`: a list, or no route).
pub(crate) fn method_id(
    view: &RecipientView,
    method: &ValidationMethod,
    domain: &str,
) -> Option<String> {
    match method {
        ValidationMethod::List(_) => None,
        ValidationMethod::Ldap(name) => Some(format!("ldap:{name}")),
        ValidationMethod::Callahead => view.routes.route_for(domain).map(route_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_numbers_come_from_the_rat_rule() {
        assert_eq!(entry_index("entry 3"), Some(3));
        assert_eq!(entry_index("default"), None);
        assert_eq!(
            pattern_text(&RecipientPattern::parse("postmaster@").unwrap()),
            "postmaster@"
        );
        assert_eq!(
            pattern_text(&RecipientPattern::parse("all").unwrap()),
            "ALL"
        );
    }
}
