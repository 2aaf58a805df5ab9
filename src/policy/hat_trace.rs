//! What `mxgate hat trace` could not evaluate: criteria that need a reverse-DNS state or a
//! block-list answer the trace was not given. Only groups above the result matter: a group
//! below it could not have changed the first match.

use super::flow::Action;
use super::hat::{Criterion, HostAccessTable};

/// Groups the trace could not fully evaluate, as `GROUP (criterion, ...)`, by missing input.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unevaluated {
    /// Groups with host, `.suffix` or `ptr_*` criteria, when no reverse DNS was given.
    pub rdns: Vec<String>,
    /// Groups with `dnslist:` criteria on zones the trace was given no answer for.
    pub dnslists: Vec<String>,
}

/// The groups above `result_group` (every group when it is the fallback `ALL`) that have
/// criteria the trace had no input for; `continue` groups never decide and are left out.
pub fn unevaluated(
    hat: &HostAccessTable,
    result_group: &str,
    rdns_given: bool,
    listed_zones: &[&str],
) -> Unevaluated {
    let mut u = Unevaluated::default();
    for g in hat.groups.iter().take_while(|g| g.name != result_group) {
        if g.policy.action == Action::Continue {
            continue;
        }
        let mut rdns = Vec::new();
        let mut lists = Vec::new();
        for c in &g.criteria {
            match c {
                Criterion::Host(_)
                | Criterion::Suffix(_)
                | Criterion::PtrMissing
                | Criterion::PtrTempfail
                | Criterion::PtrMismatch
                    if !rdns_given =>
                {
                    rdns.push(c.to_string())
                }
                Criterion::DnsList(z) if !listed_zones.contains(&z.zone.as_str()) => {
                    lists.push(c.to_string())
                }
                _ => {}
            }
        }
        if !rdns.is_empty() {
            u.rdns.push(format!("{} ({})", g.name, rdns.join(", ")));
        }
        if !lists.is_empty() {
            u.dnslists
                .push(format!("{} ({})", g.name, lists.join(", ")));
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::policy::flow::MailFlowPolicy;
    use crate::policy::hat::SenderGroup;

    fn group(name: &str, crit: &[&str], action: Action) -> SenderGroup {
        let mut p = MailFlowPolicy::builtin_default(name);
        p.action = action;
        SenderGroup {
            name: name.into(),
            criteria: crit.iter().map(|c| Criterion::parse(c).unwrap()).collect(),
            policy: Arc::new(p),
        }
    }

    #[test]
    fn trust_24_groups_above_the_result_without_their_inputs() {
        let hat = HostAccessTable::new(
            "t".into(),
            vec![
                group("SKIP", &["ptr_missing"], Action::Continue),
                group("ALLOW", &["192.0.2.1", ".partner.example"], Action::Accept),
                group(
                    "BL",
                    &["dnslist:zen.example", "dnslist:dul.example"],
                    Action::Reject,
                ),
                group("NOPTR", &["ptr_missing", "ptr_tempfail"], Action::Accept),
                group("LATER", &["mail.example.com"], Action::Accept),
            ],
            Arc::new(MailFlowPolicy::builtin_default("ACCEPTED")),
        );
        let u = unevaluated(&hat, "NOPTR", false, &["zen.example"]);
        assert_eq!(u.rdns, ["ALLOW (.partner.example)"]);
        assert_eq!(u.dnslists, ["BL (dnslist[dul.example])"]);
        let u = unevaluated(&hat, "ALL", false, &[]);
        assert_eq!(
            u.rdns,
            [
                "ALLOW (.partner.example)",
                "NOPTR (ptr_missing, ptr_tempfail)",
                "LATER (mail.example.com)"
            ]
        );
        assert_eq!(
            unevaluated(&hat, "ALL", true, &["zen.example", "dul.example"]),
            Unevaluated::default()
        );
    }
}
