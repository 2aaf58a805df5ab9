//! The cardinality budget of the `sender_org` and `tls_version` labels (issue 14, item 5),
//! end to end: the built binary (`mxgate serve`) with dnsmasq as its resolver, clients bound
//! to many 127.x.y.z source addresses (all local on Linux loopback), each with its own PTR
//! name, and the real `/metrics` endpoint scraped.
//!
//! A first wave covers every (organisation, client behaviour) pair once: PTR names under
//! google.com, under a configured suffix (`partner`), under nobody's suffix (`other`), and
//! without a verified name (none at all, or a google.com PTR whose forward lookup disagrees:
//! `unknown`); behaviours are a plaintext session, junk after STARTTLS, and a TLS handshake
//! offering exactly one cipher suite, for every suite the server's crypto provider has (the
//! RSA ones fail against the ECDSA demo certificate). Then a flood of connections repeats the
//! same pairs from fresh addresses, each with a distinct PTR name. The three counters may not
//! gain a single series from the flood, and each stays under the bound computed from the
//! table size, outcomes, versions and cipher suites; the flood has more distinct names than
//! any bound, so a PTR name leaking into any label fails both checks.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::SupportedCipherSuite;
use support::dnsmasq::Dnsmasq;
use support::{Client, Mxgate};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_rustls::TlsConnector;

/// The three counters under the budget.
const METRICS: [&str; 3] = [
    "mxgate_connections_total",
    "mxgate_inbound_tls_total",
    "mxgate_inbound_tls_sessions_total",
];

/// Flood connections: fresh addresses and names, the first wave's pairs over and over.
const FLOOD: usize = 660;

/// Client connections at once.
const PARALLEL: usize = 12;

/// Where a connection's source address points in DNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ptr {
    /// A verified name under google.com.
    Google,
    /// A verified name under the configured `mail.partner.example`.
    Partner,
    /// A verified name under no suffix of the table.
    Other,
    /// No PTR record.
    Missing,
    /// A PTR under google.com whose forward lookup does not contain the address.
    Forged,
}

impl Ptr {
    const ALL: [Ptr; 5] = [
        Ptr::Google,
        Ptr::Partner,
        Ptr::Other,
        Ptr::Missing,
        Ptr::Forged,
    ];

    /// The `sender_org` label the connection must get.
    fn org(self) -> &'static str {
        match self {
            Ptr::Google => "google",
            Ptr::Partner => "partner",
            Ptr::Other => "other",
            Ptr::Missing | Ptr::Forged => "unknown",
        }
    }

    /// The PTR name of connection `n` (distinct for every `n`), if any.
    fn name(self, n: usize) -> Option<String> {
        match self {
            Ptr::Google => Some(format!("mail-x{n}-f{}.google.com", n % 97)),
            Ptr::Partner => Some(format!("out{n}.mail.partner.example")),
            Ptr::Other => Some(format!("host{n}.sender{n}.flood.test")),
            Ptr::Missing => None,
            Ptr::Forged => Some(format!("mail-forged{n}.google.com")),
        }
    }
}

/// What the client does after the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// EHLO, QUIT.
    Plain,
    /// STARTTLS, then bytes that are no ClientHello.
    Junk,
    /// STARTTLS and a handshake offering only this cipher suite (index into the provider's).
    Suite(usize),
}

/// The provider's cipher suites: what the server can negotiate, and what the clients offer.
fn suites() -> Vec<SupportedCipherSuite> {
    rustls::crypto::aws_lc_rs::default_provider().cipher_suites
}

/// A client that offers exactly `suite` (and its protocol version).
fn connector(suite: SupportedCipherSuite) -> TlsConnector {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = vec![suite];
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[suite.version()])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(support::client::AcceptAny))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
}

/// One session from `from`; true when TLS was established.
async fn session(
    server: SocketAddr,
    from: Ipv4Addr,
    mode: Mode,
    tls: Arc<Vec<TlsConnector>>,
) -> bool {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(IpAddr::V4(from), 0))
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    let stream = sock.connect(server).await.unwrap();
    let mut c = Client {
        io: BufReader::new(stream),
    };
    let greeting = c.reply().await;
    assert!(greeting.starts_with("220"), "{from}: {greeting:?}");
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(
        ehlo.starts_with("250") && ehlo.contains("STARTTLS"),
        "{from}: {ehlo:?}"
    );
    if mode == Mode::Plain {
        assert!(c.cmd("QUIT").await.starts_with("221"));
        return false;
    }
    let r = c.cmd("STARTTLS").await;
    assert!(r.starts_with("220"), "{from}: {r:?}");
    let mut tcp = c.io.into_inner();
    let Mode::Suite(i) = mode else {
        tcp.write_all(b"this is not a TLS ClientHello\r\n\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await;
        return false;
    };
    let name = ServerName::try_from("mx.test.example").unwrap();
    match tls[i].connect(name, tcp).await {
        Ok(t) => {
            let mut c = Client {
                io: BufReader::new(t),
            };
            assert!(c.cmd("EHLO client.test").await.starts_with("250"));
            assert!(c.cmd("QUIT").await.starts_with("221"));
            true
        }
        // The server refused the suite (an RSA suite against the ECDSA certificate).
        Err(_) => false,
    }
}

/// One connection of the test: source address, PTR kind and name, behaviour.
struct Conn {
    from: Ipv4Addr,
    ptr: Ptr,
    name: Option<String>,
    mode: Mode,
}

/// The first wave (one address per PTR kind, every mode) and the flood (an address and a
/// distinct name per connection, cycling through the same pairs).
fn plan(modes: &[Mode]) -> (Vec<Conn>, Vec<Conn>) {
    let pairs: Vec<(Ptr, Mode)> = Ptr::ALL
        .iter()
        .flat_map(|p| modes.iter().map(move |m| (*p, *m)))
        .collect();
    let first = pairs
        .iter()
        .map(|&(ptr, mode)| {
            let k = Ptr::ALL.iter().position(|p| *p == ptr).unwrap();
            Conn {
                from: Ipv4Addr::new(127, 1, 0, 10 + k as u8),
                ptr,
                name: ptr.name(k),
                mode,
            }
        })
        .collect();
    let flood = (0..FLOOD)
        .map(|i| {
            let (ptr, mode) = pairs[i % pairs.len()];
            let n = 1000 + i;
            Conn {
                from: Ipv4Addr::new(127, 2, (i / 200) as u8, (i % 200 + 1) as u8),
                ptr,
                name: ptr.name(n),
                mode,
            }
        })
        .collect();
    (first, flood)
}

/// dnsmasq records for every connection: verified names get a host record (A and PTR), forged
/// ones only a PTR (their name resolves to another address), missing ones nothing.
fn dns_conf(conns: &[&Conn], dir: &Path) -> String {
    let mut lines = BTreeSet::new();
    for c in conns {
        let Some(name) = &c.name else { continue };
        let o = c.from.octets();
        let arpa = format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0]);
        if c.ptr == Ptr::Forged {
            lines.insert(format!("ptr-record={arpa},{name}"));
            lines.insert(format!("host-record={name},192.0.2.254"));
        } else {
            lines.insert(format!("host-record={name},{}", c.from));
        }
    }
    let path = dir.join("dnsmasq.conf");
    std::fs::write(
        &path,
        lines.into_iter().collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
    path.display().to_string()
}

/// A one-listener configuration resolving through `dns`, with `partner` configured.
fn config(dir: &Path, dns: &Dnsmasq) {
    let files = [
        (
            "mxgate.yaml",
            format!(
                "dns:\n  resolvers: [\"127.0.0.1:{}\"]\n  timeout: 2s\nmetrics:\n  listen: null\n  \
                 sender_orgs:\n    partner: [mail.partner.example]\nshutdown_grace: 1s\n",
                dns.port
            ),
        ),
        (
            "listeners/inbound.yaml",
            "name: inbound\ntype: public\nbind: [\"127.0.0.1:0\"]\nhostname: mx.test.example\n\
             hat: inbound\nrat: inbound\n"
                .to_string(),
        ),
        (
            "policies/mail_flow.yaml",
            "default:\n  tls: preferred\n  pre_greet_pause: 0s\n  \
             max_concurrent_connections_per_ip: unlimited\npolicies:\n  ACCEPTED:\n    action: accept\n"
                .to_string(),
        ),
        (
            "policies/hat.yaml",
            "inbound:\n  sender_groups: []\n  default_policy: ACCEPTED\n".to_string(),
        ),
        (
            "policies/rat.yaml",
            "inbound:\n  entries:\n    - recipient: example.com\n".to_string(),
        ),
    ];
    for (path, text) in files {
        let full = dir.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
    }
}

/// One series of the exposition: metric name and labels.
type Series = (String, BTreeMap<String, String>);

/// The series of `METRICS` on a `/metrics` page, with their values.
fn parse(text: &str) -> BTreeMap<Series, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        if !METRICS.contains(&name) {
            continue;
        }
        let (labels, value) = rest.rsplit_once("} ").expect(line);
        let mut map = BTreeMap::new();
        // Label values here never hold `",` (names, versions, suite names): split on it.
        for pair in labels.trim_end_matches('"').split("\",") {
            let (k, v) = pair.split_once("=\"").expect(line);
            map.insert(k.to_string(), v.to_string());
        }
        out.insert((name.to_string(), map), value.parse().expect(line));
    }
    out
}

fn sum(series: &BTreeMap<Series, f64>, metric: &str, label: Option<(&str, &str)>) -> f64 {
    series
        .iter()
        .filter(|((n, l), _)| {
            n == metric && label.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Runs `conns` with [`PARALLEL`] at a time; returns how many established TLS.
async fn run(server: SocketAddr, conns: &[Conn], tls: &Arc<Vec<TlsConnector>>) -> usize {
    let mut ok = 0;
    for chunk in conns.chunks(PARALLEL) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|c| tokio::spawn(session(server, c.from, c.mode, tls.clone())))
            .collect();
        for t in tasks {
            ok += usize::from(t.await.unwrap());
        }
    }
    ok
}

/// Scrapes until every connection's TLS outcome is counted (it is counted at the close).
async fn scrape_after(gate: &Mxgate, connections: usize) -> BTreeMap<Series, f64> {
    let mut last = BTreeMap::new();
    for _ in 0..200 {
        last = parse(&gate.metrics_text());
        if sum(&last, "mxgate_inbound_tls_total", None) >= connections as f64 {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not every outcome of {connections} connections was counted: {last:#?}");
}

/// Series per metric.
fn counts(series: &BTreeMap<Series, f64>) -> BTreeMap<&str, usize> {
    METRICS
        .iter()
        .map(|m| (*m, series.keys().filter(|(n, _)| n == m).count()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_ptr_names_and_cipher_suites_stays_within_the_series_budget() {
    let cfg = tempfile::tempdir().unwrap();
    let suites = suites();
    let mut modes = vec![Mode::Plain, Mode::Junk];
    modes.extend((0..suites.len()).map(Mode::Suite));
    let (first, flood) = plan(&modes);
    let all: Vec<&Conn> = first.iter().chain(&flood).collect();
    let conf = dns_conf(&all, cfg.path());
    let Some(dns) = Dnsmasq::start(&[
        "--local=/127.in-addr.arpa/",
        "--local=/google.com/",
        "--local=/partner.example/",
        "--local=/flood.test/",
        &format!("--conf-file={conf}"),
    ]) else {
        return;
    };
    config(cfg.path(), &dns);

    // The bound, from the table as configured: organisations × what each counter can carry.
    let loaded = mxgate::config::load(cfg.path(), &mxgate::config::Overrides::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let orgs = loaded.global.sender_orgs.label_values();
    assert!(
        orgs.contains("partner") && orgs.contains("unknown"),
        "{orgs:?}"
    );
    // One listener, one sender group (ALL), one policy; no client certificates asked for.
    let outcomes_without_tls = [
        "handshake_failed",
        "plaintext",
        "required_refused",
        "not_offered",
    ];
    let versions = ["TLSv1.2", "TLSv1.3"];
    let actions = ["accept", "relay", "reject", "tcprefuse"];
    let bound: BTreeMap<&str, usize> = [
        ("mxgate_connections_total", orgs.len() * actions.len()),
        // `success` with a version, every other outcome with `none`.
        (
            "mxgate_inbound_tls_total",
            orgs.len() * (versions.len() + outcomes_without_tls.len()),
        ),
        // A suite fixes its protocol version.
        (
            "mxgate_inbound_tls_sessions_total",
            orgs.len() * suites.len(),
        ),
    ]
    .into_iter()
    .collect();
    // More distinct names than any bound: a name in a label would break it.
    let distinct: BTreeSet<&String> = flood.iter().filter_map(|c| c.name.as_ref()).collect();
    let verified_tls = flood
        .iter()
        .filter(|c| matches!(c.ptr, Ptr::Google | Ptr::Partner | Ptr::Other))
        .filter(
            |c| matches!(c.mode, Mode::Suite(i) if suites[i].version() == &rustls::version::TLS13),
        )
        .count();
    assert!(
        distinct.len() > *bound.values().max().unwrap() && verified_tls > 0,
        "the flood must outnumber the bounds: {} names, bounds {bound:?}",
        distinct.len()
    );

    let gate = Mxgate::start_with(
        cfg.path(),
        &cfg.path().join("work"),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let server = gate.addr("inbound");
    let tls: Arc<Vec<TlsConnector>> = Arc::new(suites.iter().map(|s| connector(*s)).collect());

    let established_first = run(server, &first, &tls).await;
    let before = scrape_after(&gate, first.len()).await;
    let established_flood = run(server, &flood, &tls).await;
    let total = first.len() + flood.len();
    let after = scrape_after(&gate, total).await;

    // Every connection was counted, under the organisation its verified name says.
    let text = gate.metrics_text();
    assert_eq!(
        sum(&after, "mxgate_connections_total", None),
        total as f64,
        "{text}"
    );
    assert_eq!(
        sum(&after, "mxgate_inbound_tls_total", None),
        total as f64,
        "{text}"
    );
    let established = established_first + established_flood;
    assert_eq!(
        sum(&after, "mxgate_inbound_tls_sessions_total", None),
        established as f64,
        "{text}"
    );
    assert_eq!(
        sum(
            &after,
            "mxgate_inbound_tls_total",
            Some(("outcome", "success"))
        ),
        established as f64,
        "{text}"
    );
    // The flood added no series, and each counter is within its bound.
    let (n_before, n_after) = (counts(&before), counts(&after));
    assert_eq!(
        n_before,
        n_after,
        "the flood of {} distinct PTR names added series:\n{text}",
        distinct.len()
    );
    for (m, n) in &n_after {
        assert!(
            *n > 0 && *n <= bound[m],
            "{m}: {n} series, bound {}\n{text}",
            bound[m]
        );
    }
    // Every label value is one of the bounded sets; no PTR name appears anywhere.
    for (m, labels) in after.keys() {
        let org = labels.get("sender_org").map(String::as_str);
        assert!(org.is_some_and(|o| orgs.contains(o)), "{m} {labels:?}");
        if let Some(v) = labels.get("tls_version") {
            assert!(
                ["TLSv1.2", "TLSv1.3", "none"].contains(&v.as_str()),
                "{labels:?}"
            );
        }
    }
    // The mapping itself: each kind of PTR under its organisation.
    for ptr in Ptr::ALL {
        let want = all.iter().filter(|c| c.ptr.org() == ptr.org()).count();
        assert_eq!(
            sum(
                &after,
                "mxgate_connections_total",
                Some(("sender_org", ptr.org()))
            ),
            want as f64,
            "{ptr:?}\n{text}"
        );
    }
    // TLS 1.2 and 1.3 both negotiated; the version label follows the suite.
    for v in versions {
        assert!(
            sum(&after, "mxgate_inbound_tls_total", Some(("tls_version", v))) > 0.0,
            "{v}\n{text}"
        );
    }
    assert!(
        sum(
            &after,
            "mxgate_inbound_tls_total",
            Some(("tls_version", "none"))
        ) > 0.0
    );

    for c in &all {
        if let Some(name) = &c.name {
            assert!(!text.contains(name.as_str()), "{name} on /metrics:\n{text}");
        }
    }
    gate.stop();
    drop(dns);
}
