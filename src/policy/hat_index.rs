//! An index over a HAT's criteria so classification does not grow linearly with the table:
//! address criteria by (prefix length, masked network), host names and suffixes by hash.
//! It only finds candidate (group, criterion) pairs; first-match-wins order is kept by
//! sorting the candidates, so the result is the same as matching top to bottom.
//!
//! Address ranges (`a-b`) are split at build time into the CIDR blocks that cover exactly
//! the range, each filed under the range's own (group, criterion): a range then costs no
//! more per lookup than a network, and the log still names the range as written.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::hat::{Criterion, Peer, SenderGroup};

/// (group index, criterion index within the group).
type Hit = (u32, u32);

/// Candidate lookup structures for one HAT.
#[derive(Debug, Clone, Default)]
pub(crate) struct HatIndex {
    /// Networks by prefix length, then by masked network address.
    nets: HashMap<u16, HashMap<IpAddr, Vec<Hit>>>,
    /// Prefix lengths present, longest first (few distinct lengths in practice).
    v4_lens: Vec<u16>,
    v6_lens: Vec<u16>,
    /// Exact verified host names.
    hosts: HashMap<String, Vec<Hit>>,
    /// Domain suffixes, stored with their leading dot.
    suffixes: HashMap<String, Vec<Hit>>,
    /// Criteria checked directly for every peer (PTR states, block lists, `all`).
    others: Vec<Hit>,
}

fn key(n: &IpNet) -> (u16, IpAddr) {
    (
        n.prefix_len() as u16 + if n.addr().is_ipv6() { 129 } else { 0 },
        n.network(),
    )
}

/// The CIDR blocks that together cover exactly `lo..=hi`, smallest address first: at most
/// 62 for IPv4 and 254 for IPv6. `lo` and `hi` are of one family and `lo <= hi` (as
/// [`Criterion::parse`] guarantees); anything else yields no block.
fn range_blocks(lo: IpAddr, hi: IpAddr) -> Vec<IpNet> {
    match (lo, hi) {
        (IpAddr::V4(a), IpAddr::V4(b)) => blocks(u32::from(a).into(), u32::from(b).into(), 32)
            .into_iter()
            .filter_map(|(n, len)| {
                let ip = Ipv4Addr::from(u32::try_from(n).ok()?);
                IpNet::new(IpAddr::V4(ip), len).ok()
            })
            .collect(),
        (IpAddr::V6(a), IpAddr::V6(b)) => blocks(u128::from(a), u128::from(b), 128)
            .into_iter()
            .filter_map(|(n, len)| IpNet::new(IpAddr::V6(Ipv6Addr::from(n)), len).ok())
            .collect(),
        _ => Vec::new(),
    }
}

/// Greedy split of `lo..=hi` in a `bits`-wide address space: from `lo` up, take the largest
/// block that starts aligned at the current address and does not run past `hi`.
fn blocks(lo: u128, hi: u128, bits: u32) -> Vec<(u128, u8)> {
    let mut out = Vec::new();
    if lo > hi {
        return out;
    }
    let mut cur = lo;
    loop {
        // Block size 2^k: limited by the alignment of `cur` and by what is left of the range.
        let align = if cur == 0 {
            bits
        } else {
            cur.trailing_zeros().min(bits)
        };
        let left = hi - cur; // addresses left, minus one (u128::MAX only for all of IPv6)
        let fits = match left.checked_add(1) {
            Some(n) => 127 - n.leading_zeros(), // floor(log2(n))
            None => 128,
        };
        let k = align.min(fits);
        out.push((cur, (bits - k) as u8));
        let last = cur
            + if k >= 128 {
                u128::MAX
            } else {
                (1u128 << k) - 1
            };
        if last >= hi {
            return out;
        }
        cur = last + 1;
    }
}

impl HatIndex {
    /// Builds the index for `groups`.
    pub(crate) fn build(groups: &[SenderGroup]) -> Self {
        let mut ix = HatIndex::default();
        for (g, group) in groups.iter().enumerate() {
            for (c, crit) in group.criteria.iter().enumerate() {
                let hit = (g as u32, c as u32);
                match crit {
                    Criterion::Net(n) => ix.add_net(n, hit),
                    Criterion::Range(lo, hi) => {
                        // Disjoint blocks: a peer is in at most one, so the hit is found once.
                        for n in range_blocks(*lo, *hi) {
                            ix.add_net(&n, hit);
                        }
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

    /// Files `hit` under network `n`. IPv6 lengths are offset by 129 so the two families
    /// never share a bucket.
    fn add_net(&mut self, n: &IpNet, hit: Hit) {
        let (len, net) = key(n);
        self.nets
            .entry(len)
            .or_default()
            .entry(net)
            .or_default()
            .push(hit);
    }

    /// Every (group, criterion) that matches the peer, in table order.
    pub(crate) fn matches(&self, groups: &[SenderGroup], peer: &Peer) -> Vec<Hit> {
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
            // Ranges that are not one aligned block, and ranges reaching in from below.
            (0u8..16, 0u8..16).prop_map(|(a, b)| format!("198.51.0.{}-198.51.0.{}", a, a + b)),
            (240u8..=255, 0u8..16).prop_map(|(a, b)| format!("198.50.255.{a}-198.51.0.{b}")),
            (0u8..16, 0u8..16).prop_map(|(a, b)| format!(
                "2001:db8::{:x}-2001:db8::{:x}",
                a,
                a + b
            )),
            (0u8..16).prop_map(|b| format!("2001:db7:ffff::-2001:db8::{b:x}")),
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
            host in 0u8..16,
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
            let ip: IpAddr = if v6 { format!("2001:db8::{host:x}").parse().unwrap() } else { format!("198.51.0.{host}").parse().unwrap() };
            let rdns = match name {
                0 => ReverseDns::Missing,
                1 => ReverseDns::Mismatch("mx0.p.example".into()),
                n => ReverseDns::Verified(format!("mx{}.p.example", n - 2)),
            };
            let peer = Peer { ip, rdns, dnslists_listed: vec![] };
            let c = hat.classify(&peer);
            prop_assert_eq!((c.group, c.matched, c.continued), linear(&hat, &peer));
        }

        #[test]
        fn v4_blocks_cover_exactly_the_range(a in any::<u32>(), b in any::<u32>()) {
            let (lo, hi) = (a.min(b), a.max(b));
            let nets = range_blocks(Ipv4Addr::from(lo).into(), Ipv4Addr::from(hi).into());
            check_cover(&nets, lo.into(), hi.into(), 32, 62)?;
        }

        #[test]
        fn v6_blocks_cover_exactly_the_range(a in any::<u128>(), b in any::<u128>()) {
            let (lo, hi) = (a.min(b), a.max(b));
            let nets = range_blocks(Ipv6Addr::from(lo).into(), Ipv6Addr::from(hi).into());
            check_cover(&nets, lo, hi, 128, 254)?;
        }
    }

    fn as_u128(ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(a) => u32::from(a).into(),
            IpAddr::V6(a) => a.into(),
        }
    }

    /// The blocks are aligned, adjacent, start at `lo`, end at `hi`, and no more than `max`.
    fn check_cover(
        nets: &[IpNet],
        lo: u128,
        hi: u128,
        bits: u32,
        max: usize,
    ) -> Result<(), TestCaseError> {
        prop_assert!(
            !nets.is_empty() && nets.len() <= max,
            "{} blocks",
            nets.len()
        );
        let mut next = Some(lo);
        for n in nets {
            let start = as_u128(n.network());
            prop_assert_eq!(Some(start), next, "gap or overlap before {}", n);
            prop_assert_eq!(n.addr(), n.network(), "{} is not aligned", n);
            let host_bits = bits - u32::from(n.prefix_len());
            let end = start
                + if host_bits == 128 {
                    u128::MAX
                } else {
                    (1u128 << host_bits) - 1
                };
            prop_assert!(end <= hi, "{} runs past the range", n);
            next = end.checked_add(1);
        }
        // Adjacent blocks ending exactly at `hi`: nothing of the range is left out.
        let last = nets.last().unwrap();
        let host_bits = bits - u32::from(last.prefix_len());
        let last_end = as_u128(last.network())
            + if host_bits == 128 {
                u128::MAX
            } else {
                (1u128 << host_bits) - 1
            };
        prop_assert_eq!(last_end, hi);
        Ok(())
    }

    #[test]
    fn range_blocks_examples() {
        let r = |a: &str, b: &str| -> Vec<String> {
            range_blocks(a.parse().unwrap(), b.parse().unwrap())
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            r("192.0.2.10", "192.0.2.20"),
            [
                "192.0.2.10/31",
                "192.0.2.12/30",
                "192.0.2.16/30",
                "192.0.2.20/32"
            ]
        );
        assert_eq!(r("192.0.2.7", "192.0.2.7"), ["192.0.2.7/32"]);
        assert_eq!(r("0.0.0.0", "255.255.255.255"), ["0.0.0.0/0"]);
        assert_eq!(r("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), ["::/0"]);
        // The worst cases: one address short of the whole space at both ends.
        assert_eq!(r("0.0.0.1", "255.255.255.254").len(), 62);
        assert_eq!(
            r("::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe").len(),
            254
        );
        assert!(r("192.0.2.1", "2001:db8::1").is_empty());
    }

    #[test]
    fn a_range_is_reported_as_written() {
        let p = Arc::new(MailFlowPolicy::builtin_default("P"));
        let group = |name: &str, crit: &[&str]| SenderGroup {
            name: name.into(),
            criteria: crit.iter().map(|c| Criterion::parse(c).unwrap()).collect(),
            policy: p.clone(),
        };
        let hat = HostAccessTable::new(
            "t".into(),
            vec![
                group("A", &["192.0.2.0/28", "192.0.2.10-192.0.2.40"]),
                group("B", &["192.0.2.30-192.0.2.50", "192.0.2.0/24"]),
            ],
            p.clone(),
        );
        let at = |ip: &str| {
            let c = hat.classify(&Peer {
                ip: ip.parse().unwrap(),
                rdns: ReverseDns::NotChecked,
                dnslists_listed: vec![],
            });
            (c.group, c.matched)
        };
        let s = |g: &str, m: &str| (g.to_string(), m.to_string());
        assert_eq!(at("192.0.2.3"), s("A", "192.0.2.0/28"));
        assert_eq!(at("192.0.2.20"), s("A", "192.0.2.10-192.0.2.40"));
        assert_eq!(at("192.0.2.40"), s("A", "192.0.2.10-192.0.2.40"));
        assert_eq!(at("192.0.2.41"), s("B", "192.0.2.30-192.0.2.50"));
        assert_eq!(at("192.0.2.51"), s("B", "192.0.2.0/24"));
        assert_eq!(at("192.0.3.1"), s("ALL", "ALL"));
    }
}
