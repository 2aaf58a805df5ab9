//! The queue core driven with a made-up clock (`T`, then `T + n`): retries, the queue
//! lifetime, the concurrency limits, the commands; and, through the manager on a real
//! spool, the order in which the effects become durable.

use std::sync::Arc;

use crate::config::outbound::{
    DestinationControl, DestinationControls, DomainMatch, Route, RouteHost, RouteTable,
};
use crate::envelope::Envelope;
use crate::mail_log::Event;
use crate::relay::schedule::RetryPolicy;
use crate::relay::state::{DeliveryState, Final};
use crate::relay::worker::{all_with, Feed, JobResult, Outcome};
use crate::spool::Spool;

use super::*;

/// A made-up "now": seconds since the epoch.
const T: u64 = 1_800_000_000;

fn settings(concurrency: usize) -> RelaySettings {
    RelaySettings {
        concurrency,
        retry: RetryPolicy::default(),
        hostname: "mx.test".into(),
    }
}

/// Every domain routed to one internal host.
fn routed() -> Arc<RouteTable> {
    Arc::new(RouteTable {
        routes: vec![Route {
            domain: DomainMatch::All,
            hosts: vec![RouteHost {
                host: "192.0.2.25".into(),
                port: 25,
                priority: 10,
            }],
            mx_lookup: false,
        }],
    })
}

fn queue(concurrency: usize, controls: DestinationControls) -> QueueState {
    QueueState::new(
        settings(concurrency),
        routed(),
        Arc::new(controls),
        "/nonexistent/queue".into(),
    )
}

fn env(mid: u64, rcpts: &[&str], received: u64) -> Envelope {
    Envelope {
        mid,
        icid: 1,
        listener: "l".into(),
        sender_group: "G".into(),
        policy: "P".into(),
        peer_ip: "192.0.2.1".parse().unwrap(),
        helo: "h".into(),
        from: "a@b.example".into(),
        rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
        received_unix: received,
        tls: None,
        body_8bitmime: false,
    }
}

/// The batches among `effects`.
fn batches(effects: Vec<Effect>) -> Vec<Batch> {
    effects
        .into_iter()
        .filter_map(|e| match e {
            Effect::StartBatch(b) => Some(b),
            _ => None,
        })
        .collect()
}

/// The saved states among `effects`.
fn saves(effects: &[Effect]) -> Vec<(u64, DeliveryState)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::SaveState { mid, state } => Some((*mid, state.clone())),
            _ => None,
        })
        .collect()
}

/// The connection of `b` ends: it takes no more jobs, and every job it had (its own and
/// any fed to it) gets `outcome`.
fn ended(b: &Batch, outcome: Outcome) -> Vec<JobResult> {
    let mut jobs = b.jobs.clone();
    if let Some(feed) = &b.feed {
        jobs.extend(Feed::close(feed));
    }
    all_with(&jobs, 7, &outcome)
}

fn deferred(b: &Batch) -> Vec<JobResult> {
    ended(
        b,
        Outcome::Temporary {
            enhanced: "4.4.1".into(),
            reason: "connection refused".into(),
        },
    )
}

#[test]
fn a_deferred_message_is_retried_after_its_backoff_and_not_before() {
    let mut q = queue(10, DestinationControls::default());
    q.admit_committed(1, env(1, &["c@example.com"], T), None, 10);
    let b = batches(q.dispatch(T));
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].domain.as_str(), b[0].jobs[0].mid), ("example.com", 1));
    assert!(batches(q.dispatch(T)).is_empty(), "in delivery: not due");

    // Refused at T+5: one minute of back-off, saved with the first attempt counted.
    let effects = q.finish_batch("example.com", deferred(&b[0]), T + 5);
    assert!(matches!(
        &effects[0],
        Effect::Log(Event::Delayed { mid: 1, .. })
    ));
    let saved = saves(&effects);
    assert_eq!(saved.len(), 1);
    assert_eq!((saved[0].1.attempts, saved[0].1.next_try), (1, T + 65));
    assert_eq!(saved[0].1.last_error.as_deref(), Some("connection refused"));
    assert_eq!(q.next_due(), Some(T + 65));
    assert!(batches(q.dispatch(T + 64)).is_empty());
    let b = batches(q.dispatch(T + 65));
    assert_eq!(b.len(), 1, "due after the back-off");

    // The second failure doubles the delay.
    let effects = q.finish_batch("example.com", deferred(&b[0]), T + 70);
    assert_eq!(saves(&effects)[0].1.next_try, T + 70 + 120);

    // `retry` makes it due now; delivered, it is finished and its files go.
    assert_eq!(q.retry(Some(1)), (1, 0));
    let b = batches(q.dispatch(T + 71));
    let effects = q.finish_batch("example.com", ended(&b[0], Outcome::Delivered), T + 72);
    assert!(matches!(
        &effects[..],
        [Effect::Log(Event::MessageFinished { mid: 1, .. }), Effect::RemoveFinished(done)]
            if done == &[(1, true)]
    ));
    assert!(q.is_empty() && q.next_due().is_none());
}

#[test]
fn a_message_older_than_the_queue_lifetime_bounces_with_a_dsn_before_anything_is_saved() {
    let lifetime = RetryPolicy::default().max_queue_lifetime.as_secs();
    let mut q = queue(10, DestinationControls::default());
    q.admit_committed(1, env(1, &["c@example.com", "d@example.com"], T), None, 10);

    // A second short of the lifetime: still deferred.
    let b = batches(q.dispatch(T));
    let effects = q.finish_batch("example.com", deferred(&b[0]), T + lifetime - 1);
    assert_eq!(saves(&effects).len(), 1);
    assert!(!effects.iter().any(|e| matches!(e, Effect::SendDsn { .. })));

    // The next failure is past the lifetime: both recipients bounce, the DSN goes first.
    let now = T + lifetime + 60;
    let b = batches(q.dispatch(now));
    let effects = q.finish_batch("example.com", deferred(&b[0]), now);
    let bounced: Vec<&str> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Log(Event::Bounced { enhanced, .. }) => Some(enhanced.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(bounced, ["4.4.7", "4.4.7"]);
    let Some(Effect::SendDsn {
        mid, rids, failed, ..
    }) = effects.last()
    else {
        panic!("the round ends with the DSN: {effects:?}");
    };
    assert_eq!((*mid, rids.as_slice()), (1, &[0, 1][..]));
    assert!(failed[0]
        .diagnostic
        .text()
        .contains("message expired in queue"));
    assert!(
        saves(&effects).is_empty(),
        "nothing saved before the DSN is committed"
    );

    // The DSN committed: the message is removed (durably, before it is logged finished).
    let effects = q.dsn_done(1, &[0, 1], &Ok(Some(2)), now);
    assert!(matches!(
        &effects[..],
        [
            Effect::Log(Event::BounceGenerated {
                mid: 2,
                original: 1
            }),
            Effect::RemoveMessage(1),
            Effect::Log(Event::MessageFinished { mid: 1, .. }),
        ]
    ));
    assert!(q.is_empty());
}

#[test]
fn a_dsn_that_cannot_be_committed_leaves_its_recipients_pending_for_a_retry() {
    let mut q = queue(10, DestinationControls::default());
    q.admit_committed(1, env(1, &["c@example.com"], T), None, 10);
    let b = batches(q.dispatch(T));
    let effects = q.finish_batch(
        "example.com",
        ended(
            &b[0],
            Outcome::Permanent {
                enhanced: "5.1.1".into(),
                reason: "no such user".into(),
                diagnostic: "550 5.1.1 no such user".into(),
            },
        ),
        T + 1,
    );
    assert!(matches!(effects.last(), Some(Effect::SendDsn { .. })));
    let effects = q.dsn_done(1, &[0], &Err("disk full".into()), T + 2);
    let saved = saves(&effects);
    assert_eq!(saved.len(), 1);
    let st = &saved[0].1;
    assert!(st.finals.is_empty(), "{st:?}");
    assert_eq!((st.attempts, st.next_try), (1, T + 2 + 60));
    assert_eq!(
        st.last_error.as_deref(),
        Some("could not queue the DSN: disk full")
    );
    assert_eq!(q.next_due(), Some(T + 62));
}

#[test]
fn connections_stay_within_the_destination_and_the_total_limits() {
    let mut controls = DestinationControls::default();
    controls.entries.push(DestinationControl {
        domain: DomainMatch::parse("slow.example").unwrap(),
        max_concurrent_connections: 2,
        max_messages_per_connection: 1,
        ..DestinationControl::builtin_default()
    });
    let mut q = queue(3, controls);
    for mid in 1..=5 {
        q.admit_committed(mid, env(mid, &["x@slow.example"], T), None, 10);
    }
    q.admit_committed(6, env(6, &["y@fast.example"], T), None, 10);
    q.admit_committed(7, env(7, &["z@fast.example"], T), None, 10);
    let count = |b: &[Batch], d: &str| b.iter().filter(|b| b.domain == d).count();

    let started = batches(q.dispatch(T));
    // slow.example: two connections of one message each; fast.example: one with both.
    assert_eq!(count(&started, "slow.example"), 2);
    assert_eq!(count(&started, "fast.example"), 1);
    assert!(started
        .iter()
        .all(|b| b.domain != "slow.example" || b.jobs.len() == 1));
    assert!(
        batches(q.dispatch(T + 1)).is_empty(),
        "three connections: the total limit"
    );

    // fast.example's connection ends: its slot goes to slow.example, which still has two.
    let fast = started.iter().find(|b| b.domain == "fast.example").unwrap();
    let done = ended(fast, Outcome::Delivered);
    q.finish_batch("fast.example", done, T + 2);
    assert!(
        batches(q.dispatch(T + 2)).is_empty(),
        "slow.example is at its own limit"
    );

    // One of slow.example's ends: exactly one more starts.
    let slow = started.iter().find(|b| b.domain == "slow.example").unwrap();
    q.finish_batch("slow.example", ended(slow, Outcome::Delivered), T + 3);
    let next = batches(q.dispatch(T + 3));
    assert_eq!(count(&next, "slow.example"), 1);
    assert_eq!(next.len(), 1);
}

#[test]
fn a_message_in_delivery_is_neither_retried_deleted_nor_bounced() {
    let mut q = queue(10, DestinationControls::default());
    q.admit_committed(1, env(1, &["c@example.com"], T), None, 10);
    q.admit_committed(2, env(2, &["c@example.com"], T), None, 10);
    let mut st = DeliveryState {
        next_try: T + 3600,
        ..Default::default()
    };
    st.attempts = 3;
    q.admit(
        3,
        Loaded::Found {
            env: Box::new(env(3, &["c@example.com"], T)),
            state: st,
            size: 10,
        },
    );
    let b = batches(q.dispatch(T));
    assert_eq!(b.len(), 1, "1 and 2 in one connection, 3 is not due");
    assert_eq!(q.retry(Some(1)), (0, 1));
    assert!(q.delete(1).is_none() && q.bounce(1, T).is_none());
    assert_eq!(q.retry(Some(999)), (0, 0), "an unknown MID is not retried");
    assert_eq!(q.retry(None), (1, 2));
    assert_eq!(q.next_due(), Some(0));
    let effects = q.delete(3).unwrap();
    assert!(matches!(effects[0], Effect::RemoveMessage(3)));
    assert_eq!(q.len(), 2);
}

#[test]
fn a_message_final_before_a_crash_is_removed_on_load() {
    let mut q = queue(10, DestinationControls::default());
    let mut st = DeliveryState::default();
    st.finals.insert(0, Final::Delivered);
    st.finals.insert(1, Final::Bounced);
    let loaded = Loaded::Found {
        env: Box::new(env(4, &["c@example.com", "d@example.com"], T)),
        state: st,
        size: 10,
    };
    let effects = q.admit(4, loaded);
    assert!(matches!(
        &effects[..],
        [
            Effect::RemoveMessage(4),
            Effect::Log(Event::MessageFinished { mid: 4, .. })
        ]
    ));
    assert!(q.is_empty());
}

#[test]
fn a_partly_delivered_message_keeps_its_pending_recipients_and_is_due() {
    let mut q = queue(10, DestinationControls::default());
    let mut st = DeliveryState::default();
    st.finals.insert(0, Final::Delivered);
    st.next_try = T + 600;
    let loaded = Loaded::Found {
        env: Box::new(env(4, &["c@example.com", "d@example.com"], T)),
        state: st,
        size: 10,
    };
    assert!(q.admit(4, loaded).is_empty());
    // After a restart the queue is tried soon, whatever the saved next try.
    q.due_by(4, T + 1);
    let b = batches(q.dispatch(T + 1));
    assert_eq!(b[0].jobs[0].rcpts, [(1, "d@example.com".to_string())]);
}

/// The manager on a real spool, with no route (every batch comes back deferred).
fn manager(spool: Arc<Spool>, log_path: std::path::PathBuf) -> QueueManager {
    use crate::config::model::{MailLogFormat, MailLogTarget};
    use crate::mail_log::MailLog;
    use crate::relay::client::ClientTimeouts;
    use crate::relay::outbound_tls::OutboundTlsContext;
    use crate::relay::worker::WorkerContext;
    let log = Arc::new(MailLog::open(&MailLogTarget::File(log_path), MailLogFormat::Text).unwrap());
    let worker = Arc::new(WorkerContext {
        spool: spool.clone(),
        log: log.clone(),
        tls: Arc::new(OutboundTlsContext::new(None).unwrap()),
        helo_name: "mx.test".into(),
        timeouts: ClientTimeouts::default(),
        alert_enabled: true,
        resolver: crate::dns::ReverseResolver::for_tests(),
    });
    QueueManager::new(
        spool,
        log,
        Arc::default(),
        Arc::default(),
        settings(1),
        worker,
    )
    .0
}

/// Queues one message (from async tests: the blocking `commit` would block the runtime).
async fn queue_one(spool: &Spool) -> u64 {
    let mid = spool.next_mid().unwrap();
    let mut inc = spool.begin(mid);
    inc.write(b"Subject: x\r\n\r\nbody\r\n").unwrap();
    spool
        .commit_async(inc, &env(mid, &["c@example.com", "d@example.com"], 1))
        .await
        .unwrap();
    mid
}

#[tokio::test]
async fn trust_06_a_bounce_is_not_saved_while_its_dsn_waits_for_the_rest_of_the_round() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(&dir.path().join("spool")).unwrap());
    let mid = queue_one(&spool).await;
    let mut m = manager(spool.clone(), dir.path().join("mail.log"));
    m.load(mid).await;
    // Two jobs in flight (e.g. two connections); the first bounces RID 0.
    m.core.messages.get_mut(&mid).unwrap().jobs_in_flight = 2;
    let bounced = JobResult {
        mid,
        dcid: 7,
        remote: Some("mx.example.com".into()),
        outcomes: vec![(
            0,
            Outcome::Permanent {
                enhanced: "5.1.1".into(),
                reason: "no such user".into(),
                diagnostic: "550 5.1.1 no such user".into(),
            },
        )],
        tls_alert: None,
    };
    m.finish_batch("example.com", vec![bounced]).await;
    // A crash now must not find RID 0 final: no DSN has been committed for it yet.
    let on_disk = DeliveryState::load(&spool.state_path(mid));
    assert!(on_disk.finals.is_empty(), "{on_disk:?}");
    let delivered = JobResult {
        mid,
        dcid: 8,
        remote: Some("mx.example.com".into()),
        outcomes: vec![(1, Outcome::Delivered)],
        tls_alert: None,
    };
    m.finish_batch("example.com", vec![delivered]).await;
    // The round is complete: one DSN queued, then the original removed.
    assert!(!spool.message_path(mid).exists());
    let queued = spool.queued_mids();
    assert_eq!(queued.len(), 1, "the DSN");
    assert!(
        m.core.messages.contains_key(&queued[0]),
        "the DSN is queued for delivery"
    );
    let log = std::fs::read_to_string(dir.path().join("mail.log")).unwrap();
    assert_eq!(
        log.matches(&format!("was generated for bounce of MID {mid}"))
            .count(),
        1,
        "{log}"
    );
}

#[tokio::test]
async fn the_administrators_bounce_and_delete_reach_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(&dir.path().join("spool")).unwrap());
    let bounced = queue_one(&spool).await;
    let deleted = queue_one(&spool).await;
    let mut m = manager(spool.clone(), dir.path().join("mail.log"));
    m.load(bounced).await;
    m.load(deleted).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    m.command(Command::Bounce(bounced, tx)).await;
    assert!(rx.await.unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    m.command(Command::Delete(deleted, tx)).await;
    assert!(rx.await.unwrap());
    assert!(!spool.message_path(bounced).exists() && !spool.message_path(deleted).exists());
    assert_eq!(spool.queued_mids().len(), 1, "the DSN");
    let log = std::fs::read_to_string(dir.path().join("mail.log")).unwrap();
    assert!(
        log.contains(&format!("Message finished MID {deleted} aborted")),
        "{log}"
    );
}

#[test]
fn a_required_tls_failure_is_alerted_at_most_once_per_interval() {
    let mut controls = DestinationControls::default();
    controls.alert.enabled = true;
    controls.alert.mail_to = Some("ops@admin.test".into());
    let interval = controls.alert.interval.as_secs();
    let mut q = queue(10, controls);
    let mut failed_at = |mid: u64, now: u64| {
        q.admit_committed(mid, env(mid, &["c@example.com"], now), None, 10);
        let b = batches(q.dispatch(now));
        let mut results = deferred(&b[0]);
        results[0].tls_alert = Some("required-verify: no STARTTLS".into());
        let effects = q.finish_batch("example.com", results, now);
        effects
            .iter()
            .filter(|e| {
                matches!(e, Effect::SendAlert { to, domain, .. }
                if to == "ops@admin.test" && domain == "example.com")
            })
            .count()
    };
    assert_eq!(failed_at(1, T), 1);
    assert_eq!(failed_at(2, T + interval - 1), 0, "within the interval");
    assert_eq!(failed_at(3, T + interval), 1);
}

#[test]
fn a_cached_body_goes_with_the_first_attempt_only_and_is_given_back() {
    let budget = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let used = || budget.load(std::sync::atomic::Ordering::Relaxed);
    let mut q = queue(10, DestinationControls::default());
    let body = CachedBody::reserve(b"Subject: x\r\n\r\nbody\r\n".to_vec(), &budget);
    q.admit_committed(1, env(1, &["c@example.com"], T), body, 20);
    assert_eq!(used(), 20);
    let b = batches(q.dispatch(T));
    assert!(b[0].jobs[0].body.is_some());
    q.finish_batch("example.com", deferred(&b[0]), T + 1);
    drop(b);
    assert_eq!(used(), 0, "given back once the first attempt is over");
    let b = batches(q.dispatch(T + 61));
    assert!(b[0].jobs[0].body.is_none(), "a retry reads the spool file");
    assert_eq!(b[0].jobs[0].size, 20);
}
