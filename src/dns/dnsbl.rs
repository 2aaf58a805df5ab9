//! DNS block lists (DNSxL, RFC 5782) for the HAT criterion `dnslist: ZONE[=CODE,...]`.
//!
//! For every zone the listener's HAT names, the connection driver asks for the A records of
//! `<reversed client address>.<zone>` — IPv4 as reversed octets (`2.2.0.192.zen.example`),
//! IPv6 as 32 reversed nibbles — on the resolver and under the timeout of reverse DNS. All
//! zones are asked at once, together with the PTR lookup, so a slow DNS costs one timeout.
//!
//! What counts as "listed" is policy and lives in [`crate::policy::hat::DnsListZone`]: this
//! module only records every answer as `zone=address` for [`Peer::dnslists_listed`].
//!
//! **Fail open.** A timeout or server failure means "not listed": a block list outage must not
//! stop all inbound mail. Each failure is logged at Warning level so it is seen and can be
//! alerted on; a client that should not get through during an outage has to be kept out by
//! criteria that do not depend on the list.
//!
//! Every lookup is counted in `mxgate_dnsbl_lookups_total{zone,result}` (see
//! [`Outcome::metric_result`]), so a list that starts failing shows on the dashboard.
//!
//! [`Peer::dnslists_listed`]: crate::policy::hat::Peer::dnslists_listed

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::task::Poll;

use crate::dns::{ALookup, ReverseResolver};
use crate::mail_log::Level;
use crate::policy::hat::{dnslist_entry, is_default_listing_answer};

/// The DNS name asked for `ip` on `zone`, fully qualified (trailing dot).
///
/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.2`, from dual-stack sockets) are asked in
/// their IPv4 form, as block lists list the IPv4 address.
pub(crate) fn query_name(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{zone}.")
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(64 + zone.len() + 1);
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0x0f, byte >> 4] {
                    s.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
                    s.push('.');
                }
            }
            s.push_str(zone);
            s.push('.');
            s
        }
    }
}

/// What one zone said about the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The zone has A records for the client (whether they count is the criterion's call).
    Answered(Vec<Ipv4Addr>),
    /// NXDOMAIN / no A record: not listed.
    NotListed,
    /// Timeout or server failure: treated as not listed (fail open).
    Failed(String),
}

impl Outcome {
    /// The `result` label of `mxgate_dnsbl_lookups_total`: `listed` when an answer is a
    /// listing code by the default rule (whether a criterion's own codes count it is policy),
    /// `not_listed`, or `error` for a failure or an answer made only of list error codes
    /// (127.255.255.x, e.g. a refused public resolver): those mean the list is not usable.
    pub(crate) fn metric_result(&self) -> &'static str {
        match self {
            Outcome::Answered(ips) if ips.iter().any(|a| is_default_listing_answer(*a)) => "listed",
            Outcome::Answered(_) | Outcome::Failed(_) => "error",
            Outcome::NotListed => "not_listed",
        }
    }
}

/// The answer of one zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ZoneAnswer {
    /// The zone as configured.
    pub zone: String,
    /// The name that was asked.
    pub query: String,
    /// Its outcome.
    pub outcome: Outcome,
}

/// Asks every zone about `ip` concurrently; each lookup is bounded by the resolver's timeout,
/// so the whole call is too. Answers come back in the order of `zones`.
pub(crate) async fn check_zones(
    resolver: &ReverseResolver,
    ip: IpAddr,
    zones: &[&str],
) -> Vec<ZoneAnswer> {
    let lookups = zones.iter().map(|zone| {
        let query = query_name(ip, zone);
        let zone = zone.to_string();
        async move {
            let outcome = match resolver.lookup_a(&query).await {
                ALookup::Found(a) => Outcome::Answered(a),
                ALookup::NotFound => Outcome::NotListed,
                ALookup::Failed(e) => Outcome::Failed(e),
            };
            crate::metrics::dnsbl_lookup(&zone, outcome.metric_result());
            ZoneAnswer {
                zone,
                query,
                outcome,
            }
        }
    });
    join_all(lookups.collect()).await
}

/// The entries for [`crate::policy::hat::Peer::dnslists_listed`]: `zone=answer` per A record.
pub(crate) fn peer_entries(answers: &[ZoneAnswer]) -> Vec<String> {
    answers
        .iter()
        .flat_map(|a| match &a.outcome {
            Outcome::Answered(ips) => ips.iter().map(|ip| dnslist_entry(&a.zone, *ip)).collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// Mail-log notes for the answers of connection `icid` from `ip`: answers at Info, failures and
/// error codes at Warning. A plain "not listed" is not logged.
pub(crate) fn log_notes(icid: u64, ip: IpAddr, answers: &[ZoneAnswer]) -> Vec<(Level, String)> {
    let mut notes = Vec::new();
    for a in answers {
        match &a.outcome {
            Outcome::Answered(ips) => {
                let list: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
                notes.push((
                    Level::Info,
                    format!(
                        "ICID {icid} dnslist[{}] answered {} for {ip}",
                        a.zone,
                        list.join(",")
                    ),
                ));
                for e in ips.iter().filter(|e| !is_default_listing_answer(**e)) {
                    notes.push((
                        Level::Warning,
                        format!(
                            "ICID {icid} dnslist[{}] answer {e} for {ip} is not a listing code (127.255.255.x reports a list error such as a refused resolver); it counts only if configured as an answer code",
                            a.zone
                        ),
                    ));
                }
            }
            Outcome::NotListed => {}
            Outcome::Failed(e) => notes.push((
                Level::Warning,
                format!(
                    "ICID {icid} dnslist[{}] lookup {} failed: {e}; treated as not listed",
                    a.zone, a.query
                ),
            )),
        }
    }
    notes
}

/// Polls every future until all are done; outputs in input order (no extra dependency, no
/// spawned tasks: the lookups borrow the connection's resolver).
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<Option<Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut done: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_ready = true;
        for (slot, out) in pending.iter_mut().zip(done.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => all_ready = false,
                }
            }
        }
        if all_ready {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    // Every slot is Some once poll_fn returned Ready.
    done.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn query_names() {
        let v4: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(
            query_name(v4, "zen.example-rbl.test"),
            "2.2.0.192.zen.example-rbl.test."
        );
        assert_eq!(
            query_name(v4, "zen.example-rbl.test."),
            "2.2.0.192.zen.example-rbl.test."
        );
        let mapped: IpAddr = "::ffff:192.0.2.2".parse().unwrap();
        assert_eq!(
            query_name(mapped, "zen.example-rbl.test"),
            "2.2.0.192.zen.example-rbl.test."
        );
        // RFC 5782 §2.4 example.
        let v6: IpAddr = "2001:db8:1:2:3:4:567:89ab".parse().unwrap();
        assert_eq!(
            query_name(v6, "ugly.example.com"),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com."
        );
    }

    #[test]
    fn entries_and_notes() {
        let ip: IpAddr = "192.0.2.2".parse().unwrap();
        let answers = vec![
            ZoneAnswer {
                zone: "a.test".into(),
                query: "2.2.0.192.a.test.".into(),
                outcome: Outcome::Answered(vec![
                    Ipv4Addr::new(127, 0, 0, 2),
                    Ipv4Addr::new(127, 255, 255, 254),
                ]),
            },
            ZoneAnswer {
                zone: "b.test".into(),
                query: "2.2.0.192.b.test.".into(),
                outcome: Outcome::NotListed,
            },
            ZoneAnswer {
                zone: "c.test".into(),
                query: "2.2.0.192.c.test.".into(),
                outcome: Outcome::Failed("timeout after 1s".into()),
            },
        ];
        assert_eq!(
            peer_entries(&answers),
            vec!["a.test=127.0.0.2", "a.test=127.255.255.254"]
        );
        let notes: Vec<String> = log_notes(7, ip, &answers)
            .into_iter()
            .map(|(l, t)| format!("{l:?} {t}"))
            .collect();
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert_eq!(
            notes[0],
            "Info ICID 7 dnslist[a.test] answered 127.0.0.2,127.255.255.254 for 192.0.2.2"
        );
        assert!(notes[1].starts_with("Warning ICID 7 dnslist[a.test] answer 127.255.255.254 for 192.0.2.2 is not a listing code"));
        assert_eq!(
            notes[2],
            "Warning ICID 7 dnslist[c.test] lookup 2.2.0.192.c.test. failed: timeout after 1s; treated as not listed"
        );
    }

    #[test]
    fn metric_results() {
        let answered =
            |ips: &[[u8; 4]]| Outcome::Answered(ips.iter().map(|o| Ipv4Addr::from(*o)).collect());
        assert_eq!(answered(&[[127, 0, 0, 2]]).metric_result(), "listed");
        // A code the criterion may not count is still a listing by the list's own rule.
        assert_eq!(answered(&[[127, 0, 0, 10]]).metric_result(), "listed");
        assert_eq!(
            answered(&[[127, 255, 255, 254], [127, 0, 0, 4]]).metric_result(),
            "listed"
        );
        assert_eq!(answered(&[[127, 255, 255, 254]]).metric_result(), "error");
        assert_eq!(answered(&[[192, 0, 2, 99]]).metric_result(), "error");
        assert_eq!(Outcome::NotListed.metric_result(), "not_listed");
        assert_eq!(
            Outcome::Failed("timeout after 1s".into()).metric_result(),
            "error"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn join_all_runs_concurrently_and_keeps_order() {
        let started = tokio::time::Instant::now();
        let futs: Vec<_> = [30u64, 10, 20]
            .into_iter()
            .map(|ms| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                ms
            })
            .collect();
        assert_eq!(join_all(futs).await, vec![30, 10, 20]);
        // Concurrent: the longest (30 ms), not the sum (60 ms).
        assert!(started.elapsed() < Duration::from_millis(60));
        let none: Vec<std::future::Ready<u8>> = Vec::new();
        assert!(join_all(none).await.is_empty());
    }
}
