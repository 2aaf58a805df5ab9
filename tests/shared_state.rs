//! Several gateways, one policy (issue 17, docs/shared-state.md): three `mxgate serve`
//! processes behind a real HAProxy (PROXY v2, round-robin) share one real redis-server on
//! 127.0.0.1. A client's recipients per hour and concurrent connections are limited across
//! the nodes; with the store down mail keeps flowing under each node's own counts, the gauge
//! says so, the log says it once, and shared counting resumes when the store is back; a store
//! that stops answering costs an RCPT at most `shared_state.timeout`.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::client::connect_from;
use support::haproxy::Haproxy;
use support::redis::Redis;
use support::{free_port, wait_until, Client, Mxgate};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The per-IP limits of the `LIMITED` group (clients 127.0.0.9 to 127.0.0.19); 3 invalid
/// recipients per hour (harvest protection).
const PER_HOUR: usize = 20;
const REFUSED_HOURLY: &str = "452 4.5.3 Too many recipients received this hour\r\n";
const ACCEPTED: &str = "250 2.1.5 Recipient ok\r\n";
const MAX_INVALID: usize = 3;
const DHAP_550: &str = "550 5.7.1 Too many invalid recipients\r\n";

/// A configuration directory: one public listener behind the PROXY protocol, the LIMITED
/// group (20 recipients per hour, 2 concurrent connections per IP), the shared store at `url`.
fn config(url: &str, timeout: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let mut hosts: String = (1..=30)
        .map(|i| format!("127.0.0.{i} c{i}.test\n"))
        .collect();
    hosts.push_str("2001:db8:1:2::9 v6a.test\n2001:db8:1:2:ffff::1 v6b.test\n");
    let files = [
        (
            "mxgate.yaml",
            format!(
                "spool_dir: spool\nmail_log:\n  target: stdout\nmetrics:\n  listen: null\n\
                 dns:\n  resolvers: [\"127.0.0.1:{}\"]\n  timeout: 1s\n  hosts_file: hosts\n\
                 shutdown_grace: 1s\n\
                 shared_state:\n  url: {url}\n  key_prefix: \"mxgate:\"\n  timeout: {timeout}\n",
                free_port()
            ),
        ),
        ("hosts", hosts),
        (
            "listeners/inbound.yaml",
            "name: inbound\ntype: public\nbind: [\"127.0.0.1:0\"]\nhostname: mx.test.example\n\
             hat: inbound\nrat: inbound\nproxy_protocol:\n  trusted: [127.0.0.0/8]\n  timeout: 5s\n"
                .to_string(),
        ),
        (
            "policies/hat.yaml",
            "inbound:\n  sender_groups:\n    - name: LIMITED\n      policy: LIMITED\n      \
             match: [127.0.0.9-127.0.0.19, \"2001:db8:1::/48\"]\n  default_policy: ACCEPTED\n"
                .to_string(),
        ),
        (
            "policies/mail_flow.yaml",
            format!(
                "default:\n  tls: \"off\"\n  pre_greet_pause: 0s\n\
                 policies:\n  ACCEPTED:\n    action: accept\n  LIMITED:\n    action: accept\n    \
                 max_recipients_per_hour: {PER_HOUR}\n    max_concurrent_connections_per_ip: 2\n    \
                 max_invalid_recipients_per_hour: {MAX_INVALID}\n"
            ),
        ),
        (
            "policies/rat.yaml",
            "inbound:\n  entries:\n    - recipient: example.com\n".to_string(),
        ),
    ];
    for (path, text) in files {
        let p = d.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    d
}

/// One node: `mxgate serve` on `cfg` with its own work directory and metrics endpoint.
fn node(cfg: &Path) -> Mxgate {
    Mxgate::start_in_temp_with(cfg, &["--metrics-listen", "127.0.0.1:0"])
}

/// The value of a metric without labels on the node's `/metrics` (None when absent).
fn gauge(m: &Mxgate, name: &str) -> Option<f64> {
    m.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
}

/// Waits until every node's `mxgate_shared_state_up` is `want`.
async fn wait_gauge(nodes: &[Mxgate], want: f64) {
    for (i, n) in nodes.iter().enumerate() {
        wait_until(&format!("node {i} mxgate_shared_state_up {want}"), || {
            gauge(n, "mxgate_shared_state_up") == Some(want)
        })
        .await;
    }
}

/// How many lines of the node's mail log contain `needle`.
fn count(m: &Mxgate, needle: &str) -> usize {
    m.log_text().lines().filter(|l| l.contains(needle)).count()
}

/// A session from client address `from` through the load balancer, greeted.
async fn client(from: &str, front: SocketAddr) -> (Client<TcpStream>, String) {
    let mut c = Client {
        io: BufReader::new(connect_from(from, front).await),
    };
    let greeting = c.reply().await;
    (c, greeting)
}

/// One transaction from `from`: the replies to each `RCPT TO:<rN@example.com>`, N from
/// `first`, then QUIT. Returns them with the index of the node that served it.
async fn recipients(
    nodes: &[Mxgate],
    from: &str,
    front: SocketAddr,
    first: usize,
    n: usize,
) -> (Vec<String>, usize) {
    let marks: Vec<usize> = nodes.iter().map(Mxgate::log_mark).collect();
    let (mut c, greeting) = client(from, front).await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@sender.test>").await.starts_with("250"));
    let mut replies = Vec::new();
    for i in first..first + n {
        replies.push(c.cmd(&format!("RCPT TO:<r{i}@example.com>")).await);
    }
    assert!(c.cmd("QUIT").await.starts_with("221"));
    let served = nodes
        .iter()
        .zip(&marks)
        .position(|(m, &mark)| {
            m.log_since(mark)
                .contains(&format!("address {from} reverse dns host"))
        })
        .expect("one node logged the connection");
    (replies, served)
}

/// Three nodes sharing `redis` behind HAProxy: (nodes, configuration, balancer, its address).
fn cluster(redis: &Redis) -> Option<(Vec<Mxgate>, tempfile::TempDir, Haproxy, SocketAddr)> {
    let cfg = config(&redis.url(), "500ms");
    let nodes: Vec<Mxgate> = (0..3).map(|_| node(cfg.path())).collect();
    let backends: Vec<SocketAddr> = nodes.iter().map(|n| n.addr("inbound")).collect();
    let port = free_port();
    let hap = Haproxy::start_balanced(port, &backends)?;
    Some((nodes, cfg, hap, SocketAddr::from(([127, 0, 0, 1], port))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_behind_haproxy_share_the_per_ip_limits() {
    let Some(redis) = Redis::start() else { return };
    let Some((nodes, _cfg, _hap, front)) = cluster(&redis) else {
        return;
    };
    wait_gauge(&nodes, 1.0).await;
    for n in &nodes {
        let text = n.log_text();
        assert!(
            text.contains(&format!(
                "shared state: connected to {} as node ",
                redis.url()
            )),
            "{text}"
        );
    }

    // Recipients per hour: 7 sessions of 3 recipients from 127.0.0.9, spread round-robin;
    // the 21st recipient is refused on whichever node it reaches.
    let mut served = [0usize; 3];
    let mut all = Vec::new();
    let mut last_node = 0;
    for s in 0..7 {
        let (replies, node) = recipients(&nodes, "127.0.0.9", front, s * 3 + 1, 3).await;
        served[node] += 1;
        last_node = node;
        all.extend(replies);
    }
    assert!(served.iter().all(|&n| n >= 2), "round-robin: {served:?}");
    assert_eq!(all.len(), 21);
    for (i, r) in all[..PER_HOUR].iter().enumerate() {
        assert_eq!(r, ACCEPTED, "recipient {}", i + 1);
    }
    assert_eq!(all[PER_HOUR], REFUSED_HOURLY);
    let refusing = &nodes[last_node];
    refusing.wait_log(
        "RCPT TO: <r21@example.com> refused: max_recipients_per_hour 20 for 127.0.0.9 (policy LIMITED)",
    );
    // That node alone saw at most 3 sessions of 3: the count that refused is the shared one.
    assert!(count(refusing, "To: <r") <= 9, "{}", refusing.log_text());
    assert_eq!(redis.command(&["GET", "mxgate:rcpt:127.0.0.9"]), "20");
    for (i, n) in nodes.iter().enumerate() {
        if i != last_node {
            assert_eq!(count(n, "max_recipients_per_hour 20 for 127.0.0.9"), 0);
        }
    }

    // Concurrent connections: 2 per IP across the nodes. Two sessions from 127.0.0.10 are
    // open on two nodes; the third, on the third node, is refused.
    let (mut c1, g1) = client("127.0.0.10", front).await;
    let (_c2, g2) = client("127.0.0.10", front).await;
    assert!(g1.starts_with("220 ") && g2.starts_with("220 "), "{g1}{g2}");
    assert_eq!(redis.command(&["ZCARD", "mxgate:conn:127.0.0.10"]), ":2");
    // Leases expire unless their node refreshes them (a dead node's slots free themselves).
    let pttl: i64 = redis.command(&["PTTL", "mxgate:conn:127.0.0.10"])[1..]
        .parse()
        .unwrap();
    assert!(pttl > 0 && pttl <= 60_000, "PTTL {pttl}");
    let marks: Vec<usize> = nodes.iter().map(Mxgate::log_mark).collect();
    let (mut c3, g3) = client("127.0.0.10", front).await;
    assert_eq!(
        g3,
        "421 4.7.0 Too many concurrent connections from your address\r\n"
    );
    assert_eq!(c3.read_to_close().await, "");
    let refused_on: Vec<usize> = (0..3)
        .filter(|&i| {
            nodes[i]
                .log_since(marks[i])
                .contains("max_concurrent_connections_per_ip 2 (policy LIMITED)")
        })
        .collect();
    assert_eq!(refused_on.len(), 1, "one node refused");
    let refuser = &nodes[refused_on[0]];
    assert_eq!(
        count(refuser, "address 127.0.0.10 reverse dns host"),
        1,
        "the refusing node held none of the two open sessions"
    );
    // Closing one session gives its slot back (ZREM when the session ends).
    assert!(c1.cmd("QUIT").await.starts_with("221"));
    wait_until("the lease is given back", || {
        redis.command(&["ZCARD", "mxgate:conn:127.0.0.10"]) == ":1"
    })
    .await;
    let (_c4, g4) = client("127.0.0.10", front).await;
    assert!(g4.starts_with("220 "), "{g4}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harvester_refused_on_one_node_is_refused_at_its_first_rcpt_on_the_next() {
    let Some(redis) = Redis::start() else { return };
    let Some((nodes, _cfg, _hap, front)) = cluster(&redis) else {
        return;
    };
    wait_gauge(&nodes, 1.0).await;
    let marks: Vec<usize> = nodes.iter().map(Mxgate::log_mark).collect();
    let (mut c, greeting) = client("127.0.0.16", front).await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@sender.test>").await.starts_with("250"));
    for i in 1..=MAX_INVALID {
        let r = c.cmd(&format!("RCPT TO:<nobody{i}@other.example>")).await;
        assert!(r.starts_with("550 5.7.1 "), "{r}");
    }
    // The 4th invalid recipient passes the limit on this node: refused and dropped.
    assert_eq!(c.cmd("RCPT TO:<nobody4@other.example>").await, DHAP_550);
    assert_eq!(c.read_to_close().await, "");
    let first = (0..3)
        .find(|&i| {
            nodes[i]
                .log_since(marks[i])
                .contains("address 127.0.0.16 reverse dns")
        })
        .unwrap();
    nodes[first].wait_log(
        "Dropping connection due to potential Directory Harvest Attack from host=('127.0.0.16'",
    );
    // Every invalid recipient was pushed to the store.
    wait_until("the store counts 4 invalid recipients", || {
        redis.command(&["GET", "mxgate:dhap:127.0.0.16"]) == "4"
    })
    .await;
    // The next session lands on another node, which learnt the count at connect: even a
    // valid recipient gets the harvest refusal, at once.
    let marks: Vec<usize> = nodes.iter().map(Mxgate::log_mark).collect();
    let (mut c, greeting) = client("127.0.0.16", front).await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    let second = (0..3)
        .find(|&i| {
            nodes[i]
                .log_since(marks[i])
                .contains("address 127.0.0.16 reverse dns")
        })
        .unwrap();
    assert_ne!(first, second, "round-robin moved the client");
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@sender.test>").await.starts_with("250"));
    assert_eq!(c.cmd("RCPT TO:<r1@example.com>").await, DHAP_550);
    assert_eq!(c.read_to_close().await, "");
    nodes[second].wait_log(
        "RCPT TO: <r1@example.com> refused: max_invalid_recipients_per_hour 3 for 127.0.0.16",
    );
    assert_eq!(
        count(&nodes[second], "Rejected by RAT"),
        0,
        "the second node never saw an invalid recipient itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_sessions_keep_their_leases_fresh() {
    let Some(redis) = Redis::start() else { return };
    let cfg = config(&redis.url(), "500ms");
    let m = node(cfg.path());
    wait_gauge(std::slice::from_ref(&m), 1.0).await;
    let mut c = Client::connect(m.addr("inbound"), Some("127.0.0.18")).await;
    assert!(c.reply().await.starts_with("220 "));
    let pttl = || -> i64 {
        redis.command(&["PTTL", "mxgate:conn:127.0.0.18"])[1..]
            .parse()
            .unwrap()
    };
    let first = pttl();
    assert!(first > 50_000 && first <= 60_000, "PTTL {first}");
    // A lease lives 60 s; the node extends its open leases every 20 s. After 25 s an
    // unrefreshed lease would have 35 s left.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let later = pttl();
    assert!(later > 38_000, "PTTL {later}: the lease was not refreshed");
    assert_eq!(redis.command(&["ZCARD", "mxgate:conn:127.0.0.18"]), ":1");
    assert!(c.cmd("QUIT").await.starts_with("221"));
    wait_until("the lease is given back", || {
        redis.command(&["EXISTS", "mxgate:conn:127.0.0.18"]) == ":0"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_mail_flows_under_local_limits_and_counting_resumes() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let Some((nodes, _cfg, _hap, front)) = cluster(&redis) else {
        return;
    };
    wait_gauge(&nodes, 1.0).await;
    let (r, _) = recipients(&nodes, "127.0.0.11", front, 1, 1).await;
    assert_eq!(r, [ACCEPTED]);
    assert_eq!(redis.command(&["GET", "mxgate:rcpt:127.0.0.11"]), "1");

    redis.stop();
    // Every node notices, idle or not (the probe PINGs), and says so once.
    wait_gauge(&nodes, 0.0).await;
    let down = format!("shared state: {} unavailable (", redis.url());
    // Mail keeps flowing: sessions on every node are answered at once.
    for s in 0..3 {
        let (r, _) = recipients(&nodes, "127.0.0.11", front, 10 + s, 1).await;
        assert_eq!(r, [ACCEPTED], "session {s} during the outage");
    }
    // ...under the node's own count: 20 recipients, then the local limit's refusal.
    let (r, node) = recipients(&nodes, "127.0.0.12", front, 1, PER_HOUR + 1).await;
    assert!(r[..PER_HOUR].iter().all(|x| x == ACCEPTED), "{r:?}");
    assert_eq!(r[PER_HOUR], REFUSED_HOURLY);
    nodes[node].wait_log(
        "RCPT TO: <r21@example.com> refused: max_recipients_per_hour 20 for 127.0.0.12 (policy LIMITED)",
    );
    assert!(
        nodes[node].metric(
            "mxgate_shared_state_fallbacks_total",
            &[("counter", "recipients_per_hour")]
        ) >= 21.0
    );
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(
            count(n, &down),
            1,
            "node {i} says it once:\n{}",
            n.log_text()
        );
    }

    redis.restart();
    wait_gauge(&nodes, 1.0).await;
    for (i, n) in nodes.iter().enumerate() {
        let back = format!("shared state: {} answers again", redis.url());
        assert_eq!(count(n, &back), 1, "node {i}:\n{}", n.log_text());
        assert_eq!(count(n, &down), 1, "node {i}");
    }
    // The shared count is used again: a budget spent in the store is spent on every node.
    assert_eq!(
        redis.command(&["SET", "mxgate:rcpt:127.0.0.13", "20", "EX", "3600"]),
        "+OK"
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (r, node) = recipients(&nodes, "127.0.0.13", front, 1, 1).await;
        assert_eq!(r, [REFUSED_HOURLY], "node {node}");
        seen.push(node);
    }
    seen.sort();
    assert_eq!(seen, [0, 1, 2]);
    let (r, _) = recipients(&nodes, "127.0.0.14", front, 1, 1).await;
    assert_eq!(r, [ACCEPTED]);
    assert_eq!(redis.command(&["GET", "mxgate:rcpt:127.0.0.14"]), "1");
}

/// A TCP relay to the store that can go silent: it then keeps every connection open and
/// forwards nothing more, as a store that hangs.
async fn freezable_relay(to: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frozen = Arc::new(AtomicBool::new(false));
    let f = frozen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(to).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut r, mut w) in [
                (
                    Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                    Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                ),
                (Box::new(sr), Box::new(cw)),
            ] {
                let f = f.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if f.load(Ordering::SeqCst) {
                            // Silent for good, the connection held open.
                            std::future::pending::<()>().await;
                        }
                        if w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (addr, frozen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stops_answering_costs_an_rcpt_at_most_the_timeout() {
    let Some(redis) = Redis::start() else { return };
    let (relay, frozen) = freezable_relay(SocketAddr::from(([127, 0, 0, 1], redis.port))).await;
    let url = format!("redis://{relay}/0");
    let cfg = config(&url, "300ms");
    let m = node(cfg.path());
    wait_gauge(std::slice::from_ref(&m), 1.0).await;
    let addr = m.addr("inbound");
    let mut c = Client::connect(addr, Some("127.0.0.15")).await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@sender.test>").await.starts_with("250"));
    assert_eq!(c.cmd("RCPT TO:<r1@example.com>").await, ACCEPTED);
    assert_eq!(redis.command(&["GET", "mxgate:rcpt:127.0.0.15"]), "1");

    frozen.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let r = c.cmd("RCPT TO:<r2@example.com>").await;
    let took = started.elapsed();
    // Answered from the local count (when_unavailable: local) once the 300ms passed.
    assert_eq!(r, ACCEPTED);
    assert!(
        took < Duration::from_millis(1500),
        "the RCPT waited {took:?} for a silent store (timeout 300ms)"
    );
    m.wait_log(&format!(
        "shared state: {url} unavailable (no answer within 300ms)"
    ));
    // Known down now: the next RCPT does not wait at all.
    let started = Instant::now();
    assert_eq!(c.cmd("RCPT TO:<r3@example.com>").await, ACCEPTED);
    assert!(started.elapsed() < Duration::from_millis(300));
    assert!(c.cmd("QUIT").await.starts_with("221"));
    assert_eq!(gauge(&m, "mxgate_shared_state_up"), Some(0.0));
}

/// PEM text of DER blocks.
fn pem(label: &str, ders: &[&[u8]]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for der in ders {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        out.push_str(&format!("-----BEGIN {label}-----\n"));
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_a_password_file() {
    let pki = support::pki::TestPki::new();
    let leaf = pki.leaf(&["localhost"], None);
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (
        certs.path().join("redis.crt"),
        certs.path().join("redis.key"),
    );
    let chain: Vec<&[u8]> = leaf.chain.iter().map(|c| c.as_ref()).collect();
    std::fs::write(&cert, pem("CERTIFICATE", &chain)).unwrap();
    std::fs::write(&key, pem("PRIVATE KEY", &[leaf.key.secret_der()])).unwrap();
    let Some(redis) = Redis::start_tls(&cert, &key, Some("s3cret-pw")) else {
        return;
    };
    let tls_port = redis.tls.as_ref().unwrap().0;
    // The name in the URL is checked against the certificate (localhost), with the CA of
    // ca_file; the password comes from its file.
    let url = format!("rediss://localhost:{tls_port}/0");
    let cfg = config(&url, "500ms");
    pki.write_ca(&cfg.path().join("redis-ca.pem"));
    std::fs::write(cfg.path().join("redis.pass"), "s3cret-pw\n").unwrap();
    let global = std::fs::read_to_string(cfg.path().join("mxgate.yaml")).unwrap();
    std::fs::write(
        cfg.path().join("mxgate.yaml"),
        format!("{global}  password_file: redis.pass\n  ca_file: redis-ca.pem\n"),
    )
    .unwrap();
    let m = node(cfg.path());
    wait_gauge(std::slice::from_ref(&m), 1.0).await;
    let mut c = Client::connect(m.addr("inbound"), Some("127.0.0.17")).await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.cmd("HELO client.test").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@sender.test>").await.starts_with("250"));
    assert_eq!(c.cmd("RCPT TO:<r1@example.com>").await, ACCEPTED);
    assert_eq!(redis.command(&["GET", "mxgate:rcpt:127.0.0.17"]), "1");
    drop(m);

    // Without the private CA the server is not trusted: the store is unavailable.
    std::fs::write(
        cfg.path().join("mxgate.yaml"),
        format!("{global}  password_file: redis.pass\n"),
    )
    .unwrap();
    let m = node(cfg.path());
    assert_eq!(gauge(&m, "mxgate_shared_state_up"), Some(0.0));
    let text = m.log_text();
    assert!(
        text.contains(&format!("shared state: {url} unavailable (")),
        "{text}"
    );
}

/// Found by an outsider: a store that answers every write with an error (here out of memory)
/// counted as up, and counts written into the store by someone else (negative, without an
/// expiry) lifted the limits or refused valid recipients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_refusing_writes_is_down_and_foreign_counts_lift_no_limit() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let Some((nodes, _cfg, _hap, front)) = cluster(&redis) else {
        return;
    };
    wait_gauge(&nodes, 1.0).await;
    // A negative recipient count is no budget without end: 20, then the refusal.
    assert_eq!(
        redis.command(&["SET", "mxgate:rcpt:127.0.0.15", "-1000"]),
        "+OK"
    );
    let (r, _) = recipients(&nodes, "127.0.0.15", front, 1, PER_HOUR + 1).await;
    assert!(r[..PER_HOUR].iter().all(|x| x == ACCEPTED), "{r:?}");
    assert_eq!(r[PER_HOUR], REFUSED_HOURLY);
    // A negative harvest count is none: a valid recipient is accepted, not dropped.
    assert_eq!(
        redis.command(&["SET", "mxgate:dhap:127.0.0.16", "-1"]),
        "+OK"
    );
    let (r, _) = recipients(&nodes, "127.0.0.16", front, 1, 1).await;
    assert_eq!(r, [ACCEPTED]);

    // Out of memory: every write fails. The store is down on every node (the gauge says
    // so, and the log once), mail flows under local limits, and it comes back by itself.
    assert_eq!(redis.command(&["CONFIG", "SET", "maxmemory", "1"]), "+OK");
    wait_gauge(&nodes, 0.0).await;
    let (r, _) = recipients(&nodes, "127.0.0.17", front, 1, 1).await;
    assert_eq!(r, [ACCEPTED]);
    let down = format!("shared state: {} unavailable (", redis.url());
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(count(n, &down), 1, "node {i}:\n{}", n.log_text());
        assert!(n.log_text().contains("OOM"), "node {i} names the cause");
    }
    assert_eq!(redis.command(&["CONFIG", "SET", "maxmemory", "0"]), "+OK");
    wait_gauge(&nodes, 1.0).await;
}

/// A client connection straight to `node` with a PROXY v1 header claiming `from` (IPv4 or
/// IPv6), greeted.
async fn proxied(node: SocketAddr, from: &str) -> (Client<TcpStream>, String) {
    let mut s = TcpStream::connect(node).await.unwrap();
    let family = if from.contains(':') { "TCP6" } else { "TCP4" };
    let to = if from.contains(':') {
        "2001:db8::25"
    } else {
        "127.0.0.1"
    };
    s.write_all(format!("PROXY {family} {from} {to} 40000 25\r\n").as_bytes())
        .await
        .unwrap();
    let mut c = Client {
        io: BufReader::new(s),
    };
    let greeting = c.reply().await;
    (c, greeting)
}

/// Found by an outsider: a connection script the store got but answered only after the
/// timeout took a slot nobody owned, for the lease's whole minute; and an IPv6 client's key
/// did not say which prefix length it counts, so nodes with different `per_ip.ipv6_prefix`
/// added up different networks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answered_slot_is_given_back_and_ipv6_keys_carry_the_prefix() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let cfg = config(&redis.url(), "500ms");
    let m = node(cfg.path());
    wait_gauge(std::slice::from_ref(&m), 1.0).await;
    let addr = m.addr("inbound");
    let key = "mxgate:conn:127.0.0.18";

    // One session first: the store learns the script (a hanging store cannot).
    let (mut c, greeting) = proxied(addr, "127.0.0.18").await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert_eq!(redis.command(&["ZCARD", key]), ":1");
    assert!(c.cmd("QUIT").await.starts_with("221"));
    wait_until("the first lease given back", || {
        redis.command(&["EXISTS", key]) == ":0"
    })
    .await;
    assert_eq!(redis.command(&["CONFIG", "RESETSTAT"]), "+OK");

    // The store hangs while a client connects: after `timeout` the session opens under the
    // local count, and ends.
    redis.pause();
    let asked = Instant::now();
    let (mut c, greeting) = proxied(addr, "127.0.0.18").await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(asked.elapsed() >= Duration::from_millis(500));
    assert!(c.cmd("QUIT").await.starts_with("221"));
    wait_gauge(std::slice::from_ref(&m), 0.0).await;
    // It wakes up and runs the script it was sent (a lease for a session that is over);
    // the node gives that slot back as soon as the store answers, not a minute later.
    redis.resume();
    let woke = Instant::now();
    wait_gauge(std::slice::from_ref(&m), 1.0).await;
    wait_until("the late slot given back", || {
        redis.command(&["EXISTS", key]) == ":0"
    })
    .await;
    assert!(
        woke.elapsed() < Duration::from_secs(30),
        "{:?}",
        woke.elapsed()
    );
    assert!(redis.calls("zadd") >= 1, "the late script took a slot");
    assert!(redis.calls("zrem") >= 1, "the node gave it back");

    // Two IPv6 clients of one /64 count under one key that names the prefix length.
    for (i, from) in ["2001:db8:1:2::9", "2001:db8:1:2:ffff::1"]
        .iter()
        .enumerate()
    {
        let (mut c, greeting) = proxied(addr, from).await;
        assert!(greeting.starts_with("220 "), "{from}: {greeting}");
        assert!(c.cmd("EHLO client.test").await.starts_with("250"));
        assert!(c.cmd("MAIL FROM:<s@sender.test>").await.starts_with("250"));
        assert_eq!(
            c.cmd(&format!("RCPT TO:<v6{i}@example.com>")).await,
            ACCEPTED
        );
        assert!(c.cmd("QUIT").await.starts_with("221"));
    }
    assert_eq!(
        redis.command(&["GET", "mxgate:rcpt:2001:db8:1:2::/64"]),
        "2"
    );
}

/// A Redis Cluster node is not a store the counters can use (scripts over two keys, slots
/// owned elsewhere): the node says so and counts locally instead of counting wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_node_is_refused_with_the_reason() {
    let Some(redis) = Redis::start_cluster_node() else {
        return;
    };
    let cfg = config(&redis.url(), "500ms");
    let m = node(cfg.path());
    assert_eq!(gauge(&m, "mxgate_shared_state_up"), Some(0.0));
    m.wait_log("it is a Redis Cluster node; shared_state needs a single primary");
    let (mut c, greeting) = proxied(m.addr("inbound"), "127.0.0.19").await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@sender.test>").await.starts_with("250"));
    assert_eq!(c.cmd("RCPT TO:<r1@example.com>").await, ACCEPTED);
    assert!(c.cmd("QUIT").await.starts_with("221"));
    assert_eq!(redis.command(&["DBSIZE"]), ":0");
}
