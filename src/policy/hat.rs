//! HAT — host access table: ordered sender groups, first match wins (docs/configuration.md).

use std::net::IpAddr;
use std::sync::Arc;

use super::flow::{Action, MailFlowPolicy};
pub use super::hat_criterion::{dnslist_entry, is_default_listing_answer, Criterion, DnsListZone};
use super::hat_index::HatIndex;

/// Reverse-DNS state of the connecting host, as found by the connection driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReverseDns {
    /// PTR found and a forward lookup of it contains the client IP (FCrDNS).
    Verified(String),
    /// No PTR record (NXDOMAIN or empty answer).
    Missing,
    /// Lookup failed temporarily or timed out.
    TempFail,
    /// PTR exists but its forward lookup does not contain the client IP.
    Mismatch(String),
    /// Not looked up (e.g. `hat trace` without `--hostname`).
    NotChecked,
}

impl ReverseDns {
    /// The host name for the mail log (`unknown` when none).
    pub fn host_for_log(&self) -> &str {
        match self {
            ReverseDns::Verified(n) | ReverseDns::Mismatch(n) => n,
            _ => "unknown",
        }
    }

    /// The verified name, if any.
    pub(crate) fn verified_name(&self) -> Option<&str> {
        match self {
            ReverseDns::Verified(n) => Some(n),
            _ => None,
        }
    }
}

/// Everything the HAT may look at for one connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Client IP (after PROXY protocol, the real client).
    pub ip: IpAddr,
    /// Reverse-DNS state.
    pub rdns: ReverseDns,
    /// DNS block-list answers for the client: `zone=127.0.0.2` for each A record the zone
    /// returned (see [`dnslist_entry`]), or a bare `zone` when only "listed" is known
    /// (matches criteria without answer codes).
    pub dnslists_listed: Vec<String>,
}

/// A named sender group with its criteria and mail-flow policy.
#[derive(Debug, Clone)]
pub struct SenderGroup {
    /// Group name (`ALLOWLIST`, ...).
    pub name: String,
    /// Criteria; any one matching selects the group.
    pub criteria: Vec<Criterion>,
    /// The resolved policy of this group.
    pub policy: Arc<MailFlowPolicy>,
}

/// An ordered list of sender groups.
#[derive(Clone)]
pub struct HostAccessTable {
    /// Table name (listeners refer to it).
    pub name: String,
    /// Groups in order.
    pub groups: Vec<SenderGroup>,
    /// Policy applied when no group matches (the implicit `ALL`).
    pub fallback: Arc<MailFlowPolicy>,
    /// Lookup index over `groups` (built by [`HostAccessTable::new`]).
    index: HatIndex,
}

/// The outcome of classifying a peer.
#[derive(Debug, Clone)]
pub struct Classification {
    /// Matched group name (`ALL` for the implicit fallback).
    pub group: String,
    /// The criterion that matched, as shown in the log.
    pub matched: String,
    /// The policy to apply.
    pub policy: Arc<MailFlowPolicy>,
    /// Groups passed over because their policy said `continue` (for `hat trace`).
    pub continued: Vec<String>,
}

/// Without the index: it is derived from the groups, and its hash maps print in a different
/// order in each process (the configuration hash is taken over this output).
impl std::fmt::Debug for HostAccessTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostAccessTable")
            .field("name", &self.name)
            .field("groups", &self.groups)
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

impl HostAccessTable {
    /// The distinct DNS block-list zones the table refers to, in order of first use: the
    /// connection driver queries each once per connection.
    pub fn dnslist_zones(&self) -> Vec<&str> {
        let mut zones: Vec<&str> = Vec::new();
        for c in self.groups.iter().flat_map(|g| &g.criteria) {
            if let Criterion::DnsList(z) = c {
                if !zones.contains(&z.zone.as_str()) {
                    zones.push(&z.zone);
                }
            }
        }
        zones
    }

    /// A table; builds the lookup index once.
    pub fn new(name: String, groups: Vec<SenderGroup>, fallback: Arc<MailFlowPolicy>) -> Self {
        let index = HatIndex::build(&groups);
        HostAccessTable {
            name,
            groups,
            fallback,
            index,
        }
    }

    /// Matches the peer top to bottom; `continue` groups are skipped. The index finds the
    /// matching criteria without scanning the table; their order keeps first-match-wins.
    pub fn classify(&self, peer: &Peer) -> Classification {
        let mut continued = Vec::new();
        let mut last_group = u32::MAX;
        for (g, c) in self.index.matches(&self.groups, peer) {
            if g == last_group {
                continue; // a later criterion of a group already decided
            }
            last_group = g;
            let group = &self.groups[g as usize];
            if group.policy.action == Action::Continue {
                continued.push(group.name.clone());
                continue;
            }
            return Classification {
                group: group.name.clone(),
                matched: group.criteria[c as usize].to_string(),
                policy: group.policy.clone(),
                continued,
            };
        }
        Classification {
            group: "ALL".into(),
            matched: "ALL".into(),
            policy: self.fallback.clone(),
            continued,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Parts {
        name: String,
        groups: Vec<SenderGroup>,
        fallback: Arc<MailFlowPolicy>,
    }

    fn table(p: Parts) -> HostAccessTable {
        HostAccessTable::new(p.name, p.groups, p.fallback)
    }
    use crate::policy::flow::Action;

    fn policy(name: &str, action: Action) -> Arc<MailFlowPolicy> {
        let mut p = MailFlowPolicy::builtin_default(name);
        p.action = action;
        Arc::new(p)
    }

    fn group(name: &str, crit: &[&str], action: Action) -> SenderGroup {
        SenderGroup {
            name: name.into(),
            criteria: crit.iter().map(|c| Criterion::parse(c).unwrap()).collect(),
            policy: policy(name, action),
        }
    }

    fn peer(ip: &str, rdns: ReverseDns) -> Peer {
        Peer {
            ip: ip.parse().unwrap(),
            rdns,
            dnslists_listed: vec![],
        }
    }

    #[test]
    fn first_match_wins_and_continue_skips() {
        let hat = table(Parts {
            name: "t".into(),
            groups: vec![
                group("SKIP", &["10.0.0.0/8"], Action::Continue),
                group("BLOCK", &["10.1.0.0/16"], Action::Reject),
                group("WIDE", &["10.0.0.0/8"], Action::Accept),
            ],
            fallback: policy("ACCEPTED", Action::Accept),
        });
        let c = hat.classify(&peer("10.1.2.3", ReverseDns::Missing));
        assert_eq!(
            (c.group.as_str(), c.matched.as_str()),
            ("BLOCK", "10.1.0.0/16")
        );
        assert_eq!(c.continued, vec!["SKIP".to_string()]);
        let c = hat.classify(&peer("10.2.2.3", ReverseDns::Missing));
        assert_eq!(c.group, "WIDE");
        let c = hat.classify(&peer("192.0.2.1", ReverseDns::Missing));
        assert_eq!(
            (c.group.as_str(), c.policy.name.as_str()),
            ("ALL", "ACCEPTED")
        );
    }

    #[test]
    fn names_match_only_when_verified() {
        let hat = table(Parts {
            name: "t".into(),
            groups: vec![
                group("EXACT", &["mail.partner.example"], Action::Accept),
                group("SUFFIX", &[".partner.example"], Action::Accept),
                group("MISMATCH", &["ptr_mismatch"], Action::Accept),
            ],
            fallback: policy("ACCEPTED", Action::Accept),
        });
        let v = |n: &str| ReverseDns::Verified(n.into());
        assert_eq!(
            hat.classify(&peer("192.0.2.1", v("MAIL.partner.example.")))
                .group,
            "EXACT"
        );
        assert_eq!(
            hat.classify(&peer("192.0.2.1", v("a.b.partner.example")))
                .group,
            "SUFFIX"
        );
        // The bare domain is not "below" itself, and a look-alike is not either.
        assert_eq!(
            hat.classify(&peer("192.0.2.1", v("partner.example"))).group,
            "ALL"
        );
        assert_eq!(
            hat.classify(&peer("192.0.2.1", v("evilpartner.example")))
                .group,
            "ALL"
        );
        let spoof = ReverseDns::Mismatch("mail.partner.example".into());
        assert_eq!(hat.classify(&peer("192.0.2.1", spoof)).group, "MISMATCH");
    }

    #[test]
    fn dnslist_zones_are_distinct_and_ordered() {
        let hat = table(Parts {
            name: "t".into(),
            groups: vec![
                group(
                    "A",
                    &["192.0.2.1", "dnslist: b.test=127.0.0.2"],
                    Action::Reject,
                ),
                group("B", &["dnslist: a.test", "dnslist: b.test"], Action::Accept),
            ],
            fallback: policy("ACCEPTED", Action::Accept),
        });
        assert_eq!(hat.dnslist_zones(), vec!["b.test", "a.test"]);
        // First match wins across codes: b.test=127.0.0.3 is not A's code, so B matches.
        let mut p = peer("192.0.2.9", ReverseDns::Missing);
        p.dnslists_listed = vec!["b.test=127.0.0.3".into()];
        let c = hat.classify(&p);
        assert_eq!(
            (c.group.as_str(), c.matched.as_str()),
            ("B", "dnslist[b.test]")
        );
        p.dnslists_listed = vec!["b.test=127.0.0.2".into()];
        assert_eq!(hat.classify(&p).group, "A");
    }

    #[test]
    fn ranges_and_ptr_states() {
        let hat = table(Parts {
            name: "t".into(),
            groups: vec![
                group("R", &["192.0.2.10-192.0.2.20"], Action::Accept),
                group("TEMP", &["ptr_tempfail"], Action::Accept),
                group("NOPTR", &["ptr_missing"], Action::Accept),
            ],
            fallback: policy("ACCEPTED", Action::Accept),
        });
        assert_eq!(
            hat.classify(&peer("192.0.2.20", ReverseDns::Missing)).group,
            "R"
        );
        assert_eq!(
            hat.classify(&peer("192.0.2.21", ReverseDns::TempFail))
                .group,
            "TEMP"
        );
        assert_eq!(
            hat.classify(&peer("192.0.2.21", ReverseDns::Missing)).group,
            "NOPTR"
        );
    }
}
