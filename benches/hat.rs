//! HAT classification with 10, 1 000 and 100 000 criteria, built with `mxgate::policy::hat`
//! types directly: `hat_classify` is the mix (40 % single addresses, 40 % CIDR
//! networks of /16../28, 10 % host names, 10 % `.suffix` entries); `hat_classify_ranges`
//! turns a quarter of the networks into address ranges (`a-b`). The target (issue 7) is
//! < 2 µs per lookup at 100 000 entries, i.e. a lookup that does not grow linearly with
//! the table. `cargo bench --bench hat`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use mxgate::policy::flow::{Action, MailFlowPolicy};
use mxgate::policy::hat::{Criterion as Crit, HostAccessTable, Peer, ReverseDns, SenderGroup};

/// Deterministic xorshift, so every run builds the same table.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn policy(name: &str, action: Action) -> Arc<MailFlowPolicy> {
    let mut p = MailFlowPolicy::builtin_default(name);
    p.action = action;
    Arc::new(p)
}

/// `n` criteria spread over four sender groups the way a large site's HAT looks: an allow
/// list (addresses, networks, partner host names and suffixes), a block list (addresses,
/// networks, ranges, suffixes) and a throttle list; ptr_missing last. All in 10.0.0.0/8 and
/// under `.hat-bench.test`, so the probes below are guaranteed misses or hits.
fn table(n: usize, ranges: bool) -> HostAccessTable {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut groups: Vec<Vec<Crit>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for i in 0..n {
        let g = i % 3;
        let r = rng.next();
        let a = Ipv4Addr::new(10, (r >> 8) as u8, (r >> 16) as u8, (r >> 24) as u8);
        let c = match i % 10 {
            0..=3 => Crit::Net(IpAddr::V4(a).into()),
            7 if ranges => {
                let hi = Ipv4Addr::from(u32::from(a).saturating_add(((r >> 32) % 64) as u32));
                Crit::Range(IpAddr::V4(a), IpAddr::V4(hi))
            }
            4..=7 => {
                let len = 16 + (r % 13) as u8;
                Crit::Net(ipnet::Ipv4Net::new(a, len).unwrap().trunc().into())
            }
            8 => Crit::Host(format!("mx{i}.host{}.hat-bench.test", r % 1000)),
            _ => Crit::Suffix(format!(".d{i}.hat-bench.test")),
        };
        groups[g].push(c);
    }
    let names = ["ALLOWLIST", "BLOCKLIST", "SUSPECTLIST"];
    let actions = [Action::Accept, Action::Reject, Action::Accept];
    let mut sg: Vec<SenderGroup> = groups
        .into_iter()
        .enumerate()
        .map(|(i, criteria)| SenderGroup {
            name: names[i].into(),
            criteria,
            policy: policy(names[i], actions[i]),
        })
        .collect();
    sg.push(SenderGroup {
        name: "UNKNOWNLIST".into(),
        criteria: vec![Crit::PtrMissing],
        policy: policy("ACCEPTED", Action::Accept),
    });
    HostAccessTable::new("inbound".into(), sg, policy("ACCEPTED", Action::Accept))
}

fn peer(ip: &str, rdns: ReverseDns) -> Peer {
    Peer {
        ip: ip.parse().unwrap(),
        rdns,
        dnslists_listed: Vec::new(),
    }
}

fn classify(c: &mut Criterion) {
    classify_mix(c, "hat_classify", false);
    classify_mix(c, "hat_classify_ranges", true);
}

fn classify_mix(c: &mut Criterion, group: &str, ranges: bool) {
    let mut g = c.benchmark_group(group);
    for n in [10usize, 1_000, 100_000] {
        let hat = table(n, ranges);
        // The common case on a public MX: a stranger that matches nothing (every criterion
        // is looked at before the implicit ALL), with a verified name.
        let miss = peer(
            "198.51.100.7",
            ReverseDns::Verified("mail.stranger.example".into()),
        );
        // A stranger without a PTR record: falls through to ptr_missing.
        let no_ptr = peer("198.51.100.8", ReverseDns::Missing);
        // A host in the last (throttle) list's last address entry.
        let last_ip = hat.groups[2]
            .criteria
            .iter()
            .rev()
            .find_map(|c| match c {
                Crit::Net(n) if n.prefix_len() == 32 => Some(n.addr()),
                _ => None,
            })
            .unwrap_or(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        let hit = Peer {
            ip: last_ip,
            rdns: ReverseDns::Missing,
            dnslists_listed: Vec::new(),
        };
        assert_eq!(hat.classify(&miss).group, "ALL");
        assert_eq!(hat.classify(&no_ptr).group, "UNKNOWNLIST");
        assert_ne!(hat.classify(&hit).group, "ALL");
        for (name, p) in [("miss", &miss), ("no_ptr", &no_ptr), ("hit_ip", &hit)] {
            g.bench_with_input(BenchmarkId::new(name, n), p, |b, p| {
                b.iter(|| hat.classify(black_box(p)))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, classify);
criterion_main!(benches);
