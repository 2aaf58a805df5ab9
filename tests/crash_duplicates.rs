//! The outsider's attack on duplicate deliveries: mail flows in and out of mxgate while it
//! is killed with `kill -9` and restarted, again and again. Every acknowledged message must
//! reach the internal server, and a crash may repeat only what it interrupted: the one
//! message whose `250` had come in from the internal server and was not yet recorded (one
//! delivery connection here), never a message repeated across several restarts.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{free_port, relay_config, try_send_one, Mxgate, Sink};

/// Kills (and restarts) of the server.
const KILLS: usize = 7;
/// Clients sending at the same time.
const SENDERS: usize = 4;

fn body(id: &str) -> String {
    format!("Message-ID: <{id}>\r\nSubject: crash {id}\r\n\r\nbody of {id}\r\n")
}

/// A small xorshift generator: random kill points without a dependency, its seed printed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_repeats_at_most_the_message_in_flight_at_each_kill() {
    // The internal server takes 2 ms over each final dot: a delivery is often in flight.
    let sink = Sink::start_with_delay("127.0.0.1:0", Duration::from_millis(2)).await;
    let cfg = relay_config(sink.addr, "1s");
    // One delivery connection: at most one message is between its 250 and its record.
    let yaml = cfg.path().join("mxgate.yaml");
    let mut text = std::fs::read_to_string(&yaml).unwrap();
    text.push_str("  concurrency: 1\n");
    std::fs::write(&yaml, text).unwrap();
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let port = free_port();
    let bind = format!("preferred=127.0.0.1:{port}");
    let args = ["--bind", bind.as_str()];
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut child = Mxgate::start_with(cfg.path(), work.path(), &args);

    // Senders: a stream of distinct messages, each on its own connection; one that is not
    // acknowledged (the server died under it) is not sent again.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let (stop, acked) = (stop.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            let mut tried = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("crash-{s}-{tried}");
                tried += 1;
                match try_send_one(addr, "crash@other.example", "bob@example.com", &body(&id)).await
                {
                    Ok(r) if r.starts_with("250") => acked.lock().unwrap().push(id),
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
            tried
        }));
    }

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill points from seed {seed}");
    let mut rng = Rng(seed);
    // Deliveries the internal server had when each kill was over.
    let mut boundaries = Vec::new();
    for kill in 0..KILLS {
        let before = sink.message_ids().len();
        let at = 300 + rng.below(1200);
        tokio::time::sleep(Duration::from_millis(at)).await;
        child.kill();
        // A final dot the internal server read before the kill is recorded after its 2 ms.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = sink.message_ids().len();
        assert!(
            now > before,
            "kill {kill}: nothing was delivered in the {at} ms before it"
        );
        boundaries.push(now);
        child = Mxgate::start_with(cfg.path(), work.path(), &args);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut tried = 0;
    for s in senders {
        tried += s.await.unwrap();
    }
    // The backlog drains over one connection; fail only when it stops moving.
    let (mut left, mut still) = (usize::MAX, 0);
    while left > 0 {
        let now = mxgate::relay::control::entries(&spool).len();
        still = if now < left { 0 } else { still + 1 };
        assert!(still < 100, "{now} messages stay queued");
        left = now;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.stop();

    let ids = sink.message_ids();
    let acked = acked.lock().unwrap().clone();
    let mut copies: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        copies.entry(id.as_str()).or_default().push(i);
    }
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !copies.contains_key(id.as_str()))
        .collect();
    // Each repeated message, by the kill that interrupted its first delivery.
    let mut per_kill: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    let mut too_many = Vec::new();
    for (id, at) in &copies {
        if at.len() < 2 {
            continue;
        }
        if at.len() > 2 {
            too_many.push((*id, at.len()));
        }
        let kill = boundaries.iter().filter(|&&b| b <= at[0]).count();
        per_kill.entry(kill).or_default().push(id);
    }
    let repeated: usize = copies.values().map(|a| a.len() - 1).sum();
    eprintln!(
        "{KILLS} kills: {tried} messages sent, {} acknowledged, {} deliveries of {} distinct \
         messages, {repeated} repeated ({per_kill:?}), {} lost",
        acked.len(),
        ids.len(),
        copies.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
    assert!(
        too_many.is_empty(),
        "delivered more than twice (repeated across restarts): {too_many:?}"
    );
    for (kill, repeated) in &per_kill {
        assert!(
            *kill < KILLS,
            "repeated without a crash after its first delivery: {repeated:?}"
        );
        assert!(
            repeated.len() <= 1,
            "kill {kill} repeated {} messages (one delivery connection: at most one): {repeated:?}",
            repeated.len()
        );
    }
}
