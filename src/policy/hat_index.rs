//! An index over a HAT's criteria so classification does not grow linearly with the table:
//! address criteria by (prefix length, masked network), host names and suffixes by hash.
//! It only finds candidate (group, criterion) pairs; first-match-wins order is kept by
//! sorting the candidates, so the result is the same as matching top to bottom.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::hat::{Criterion, Peer, SenderGroup};

/// (group index, criterion index within the group).
type Hit = (u32, u32);

/// Candidate lookup structures for one HAT.
#[derive(Debug, Clone, Default)]
pub struct HatIndex {
    /// Networks by prefix length, then by masked network address.
    nets: HashMap<u16, HashMap<IpAddr, Vec<Hit>>>,
    /// Prefix lengths present, longest first (few distinct lengths in practice).
    v4_lens: Vec<u16>,
    v6_lens: Vec<u16>,
    /// Exact verified host names.
    hosts: HashMap<String, Vec<Hit>>,
    /// Domain suffixes, stored with their leading dot.
    suffixes: HashMap<String, Vec<Hit>>,
    /// Criteria checked directly for every peer (ranges, PTR states, block lists, `all`).
    others: Vec<Hit>,
}

fn key(n: &IpNet) -> (u16, IpAddr) {
    (
        n.prefix_len() as u16 + if n.addr().is_ipv6() { 129 } else { 0 },
        n.network(),
    )
}

impl HatIndex {
    /// Builds the index for `groups`.
    pub fn build(groups: &[SenderGroup]) -> Self {
        let mut ix = HatIndex::default();
        for (g, group) in groups.iter().enumerate() {
            for (c, crit) in group.criteria.iter().enumerate() {
                let hit = (g as u32, c as u32);
                match crit {
                    Criterion::Net(n) => {
                        // IPv6 lengths are offset by 129 so the two families never share a bucket.
                        let (len, net) = key(n);
                        ix.nets
                            .entry(len)
                            .or_default()
                            .entry(net)
                            .or_default()
                            .push(hit);
                    }
                    Criterion::Host(h) => ix.hosts.entry(h.clone()).or_default().push(hit),
                    Criterion::Suffix(s) => ix.suffixes.entry(s.clone()).or_default().push(hit),
                    _ => ix.others.push(hit),
                }
            }
        }
        let mut lens: Vec<u16> = ix.nets.keys().copied().collect();
        lens.sort_unstable_by(|a, b| b.cmp(a));
        ix.v4_lens = lens.iter().copied().filter(|l| *l <= 32).collect();
        ix.v6_lens = lens.iter().copied().filter(|l| *l >= 129).collect();
        ix
    }

    /// Every (group, criterion) that matches the peer, in table order.
    pub fn matches(&self, groups: &[SenderGroup], peer: &Peer) -> Vec<Hit> {
        let mut hits: Vec<Hit> = Vec::new();
        let lens = if peer.ip.is_ipv4() {
            &self.v4_lens
        } else {
            &self.v6_lens
        };
        for &len in lens {
            let plen = (if peer.ip.is_ipv6() { len - 129 } else { len }) as u8;
            let Ok(net) = IpNet::new(peer.ip, plen) else {
                continue;
            };
            if let Some(v) = self.nets.get(&len).and_then(|m| m.get(&net.network())) {
                hits.extend_from_slice(v);
            }
        }
        if let Some(name) = peer.rdns.verified_name() {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(v) = self.hosts.get(&name) {
                hits.extend_from_slice(v);
            }
            // Every proper suffix: "a.b.c" → ".b.c", ".c".
            let mut rest = name.as_str();
            while let Some(dot) = rest.find('.') {
                let suffix = &rest[dot..];
                if let Some(v) = self.suffixes.get(suffix) {
                    hits.extend_from_slice(v);
                }
                rest = &rest[dot + 1..];
            }
        }
        for &(g, c) in &self.others {
            if groups[g as usize].criteria[c as usize].matches(peer) {
                hits.push((g, c));
            }
        }
        hits.sort_unstable();
        hits.dedup();
        hits
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::super::flow::{Action, MailFlowPolicy};
    use super::super::hat::{HostAccessTable, ReverseDns};
    use super::*;

    /// The definition the index must agree with: scan top to bottom.
    fn linear(hat: &HostAccessTable, peer: &Peer) -> (String, String, Vec<String>) {
        let mut continued = Vec::new();
        for g in &hat.groups {
            if let Some(c) = g.criteria.iter().find(|c| c.matches(peer)) {
                if g.policy.action == Action::Continue {
                    continued.push(g.name.clone());
                    continue;
                }
                return (g.name.clone(), c.to_string(), continued);
            }
        }
        ("ALL".into(), "ALL".into(), continued)
    }

    fn criterion() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u8..4, 0u8..=32).prop_map(|(b, len)| format!("198.51.{b}.0/{}", len.max(16))),
            (0u8..8).prop_map(|h| format!("198.51.0.{h}")),
            (0u8..4, 0u8..4).prop_map(|(a, b)| format!("198.51.0.{}-198.51.0.{}", a, a + b)),
            (0u8..3).prop_map(|h| format!("mx{h}.p.example")),
            prop_oneof![Just(".p.example".to_string()), Just(".example".to_string())],
            prop_oneof![
                Just("ptr_missing".to_string()),
                Just("ptr_mismatch".to_string()),
                Just("all".to_string())
            ],
            (0u8..2).prop_map(|h| format!("2001:db8::{h}/127")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn index_agrees_with_the_linear_scan(
            groups in proptest::collection::vec((proptest::collection::vec(criterion(), 0..4), any::<bool>()), 0..8),
            host in 0u8..8,
            name in 0u8..5,
            v6 in any::<bool>(),
        ) {
            let groups: Vec<SenderGroup> = groups
                .into_iter()
                .enumerate()
                .map(|(i, (crits, cont))| {
                    let mut p = MailFlowPolicy::builtin_default(&format!("P{i}"));
                    p.action = if cont { Action::Continue } else { Action::Accept };
                    SenderGroup {
                        name: format!("G{i}"),
                        criteria: crits.iter().map(|c| Criterion::parse(c).unwrap()).collect(),
                        policy: Arc::new(p),
                    }
                })
                .collect();
            let hat = HostAccessTable::new("t".into(), groups, Arc::new(MailFlowPolicy::builtin_default("ACCEPTED")));
            let ip: IpAddr = if v6 { format!("2001:db8::{host}").parse().unwrap() } else { format!("198.51.0.{host}").parse().unwrap() };
            let rdns = match name {
                0 => ReverseDns::Missing,
                1 => ReverseDns::Mismatch("mx0.p.example".into()),
                n => ReverseDns::Verified(format!("mx{}.p.example", n - 2)),
            };
            let peer = Peer { ip, rdns, dnslists_listed: vec![] };
            let c = hat.classify(&peer);
            prop_assert_eq!((c.group, c.matched, c.continued), linear(&hat, &peer));
        }
    }
}
