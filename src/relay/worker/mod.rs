//! One delivery connection: pick a route host, open the connection, send a batch of jobs.
//! Its parts: `job` (what is sent and how replies map to outcomes), `feed` (jobs handed to a
//! connection already open, results reported as each transaction ends) and `hosts` (which
//! hosts are tried, in what order, verified against which name); here the per-batch
//! attempt loop over those hosts and the sending of the jobs.

mod feed;
mod hosts;
mod job;

use std::sync::Arc;

use crate::config::outbound::{DestinationControl, Route};
use crate::dns::ReverseResolver;
use crate::mail_log::{Event, Level, MailLog};
use crate::metrics;
use crate::relay::client::{
    ClientSettings, ClientTimeouts, Connection, DeliveryLog, OutgoingMessage,
};
use crate::relay::mx::{self, MxError};
use crate::relay::outbound_tls::OutboundTlsContext;
use crate::spool::Spool;

pub(crate) use feed::{Feed, Reported, ResultSender, SharedFeed};
pub(crate) use hosts::{delivery_target, host_order};
#[cfg(test)]
pub(crate) use job::all_with;
pub(crate) use job::{all_permanent, all_temporary, Job, JobResult, Outcome};

use hosts::{mx_note, targets};
use job::outcome_of;

/// Everything a worker needs, shared by all workers.
#[derive(Clone)]
pub(crate) struct WorkerContext {
    /// The spool (DCIDs).
    pub spool: Arc<Spool>,
    /// The mail log.
    pub log: Arc<MailLog>,
    /// Outbound TLS configurations.
    pub tls: Arc<OutboundTlsContext>,
    /// EHLO name.
    pub helo_name: String,
    /// SMTP client timeouts.
    pub timeouts: ClientTimeouts,
    /// Log a Warning line on required-TLS failures (the alert switch).
    pub alert_enabled: bool,
    /// The configured resolver (`dns.resolvers`), for the MX lookups of `mx_lookup` routes.
    pub resolver: ReverseResolver,
}

/// [`deliver_batch`] in a task of its own, so that a panic in it (a bug) cannot strand its
/// jobs: they, and every job fed to the connection, come back as temporary failures to be
/// retried, and a Warning is logged.
pub(crate) async fn deliver_batch_guarded(
    ctx: Arc<WorkerContext>,
    domain: String,
    route: Route,
    control: DestinationControl,
    turn: usize,
    jobs: Vec<Job>,
    feed: SharedFeed,
) -> Vec<JobResult> {
    let first: Vec<Job> = jobs.iter().map(Job::without_body).collect();
    let log = ctx.log.clone();
    let delivery = deliver_batch(
        ctx,
        domain.clone(),
        route,
        control,
        turn,
        jobs,
        feed.clone(),
    );
    guarded(&domain, &log, first, &feed, delivery).await
}

/// Runs `delivery` as a task; if it dies, every job it was given (`first`, and whatever was
/// fed to it) gets a temporary result.
async fn guarded(
    domain: &str,
    log: &MailLog,
    first: Vec<Job>,
    feed: &SharedFeed,
    delivery: impl std::future::Future<Output = Vec<JobResult>> + Send + 'static,
) -> Vec<JobResult> {
    match tokio::spawn(delivery).await {
        Ok(results) => results,
        Err(e) => {
            let mut all = first;
            all.extend(Feed::close_all(feed));
            // Those reported already were settled: answer only for the rest.
            let reported = feed.lock().unwrap_or_else(|e| e.into_inner()).reported;
            all.drain(..reported.min(all.len()));
            let reason = format!("delivery task to {domain} failed: {e}");
            log.log(&Event::Note {
                level: Level::Warning,
                text: format!("{reason}; {} job(s) will be retried", all.len()),
            });
            all_temporary(&all, 0, "4.3.0", &reason)
        }
    }
}

/// Delivers `jobs` (all for `domain`) over one connection to the first route host that
/// answers, then the jobs the queue manager feeds it meanwhile (see [`Feed`]). Every job
/// given, fed ones included, gets a result. Under `mx_lookup` a route host stands for its MX
/// hosts, tried in MX order before the next route host.
pub(crate) async fn deliver_batch(
    ctx: Arc<WorkerContext>,
    domain: String,
    route: Route,
    control: DestinationControl,
    turn: usize,
    mut jobs: Vec<Job>,
    feed: SharedFeed,
) -> Vec<JobResult> {
    let log: &dyn DeliveryLog = ctx.log.as_ref();
    let settings = ClientSettings {
        helo_name: ctx.helo_name.clone(),
        control: control.clone(),
        tls: ctx.tls.clone(),
        timeouts: ctx.timeouts.clone(),
    };
    let mut tls_alert = None;
    let mut last = (
        "4.4.1".to_string(),
        "no route host could be reached".to_string(),
        0u64,
    );
    // Every host's failure, so `queue list` shows them all: a required-TLS failure of the
    // primary must not hide behind a backup host's `connection refused`.
    let mut failures: Vec<String> = Vec::new();
    let mut tls_failure: Option<(String, u64)> = None;
    // The recipients bounce for a null MX only when every route host has one: another host
    // that is merely unreachable keeps the mail queued.
    let mut null_mx: Option<String> = None;
    let mut all_null_mx = true;
    for host in host_order(&route, turn) {
        let candidates = match targets(&ctx, &route, &host, turn).await {
            Ok(c) => {
                all_null_mx = false;
                c
            }
            Err(e @ MxError::NullMx { .. }) => {
                null_mx = Some(e.to_string());
                continue;
            }
            Err(MxError::Temporary(e)) => {
                all_null_mx = false;
                failures.push(e.clone());
                last = (mx::DNS_FAILURE_ENHANCED.into(), e, 0);
                continue;
            }
            Err(e @ MxError::Loop { .. }) => {
                all_null_mx = false;
                failures.push(e.to_string());
                last = (mx::LOOP_ENHANCED.into(), e.to_string(), 0);
                continue;
            }
        };
        for target in candidates {
            let dcid = match ctx.spool.next_dcid() {
                Ok(d) => d,
                Err(e) => {
                    jobs.extend(Feed::close(&feed));
                    let reason = format!("cannot allocate DCID: {e}");
                    return all_temporary(&jobs, 0, "4.3.0", &reason);
                }
            };
            let note = mx_note(dcid, &route, &host, &target);
            let exchange = target.exchange;
            // The exchange, not the route host, is the server's name (SNI). The `-verify`
            // identity is the configured route host, or the exchange only when it lies within it.
            let target = delivery_target(target.addr, &domain, &host.host, &exchange);
            let dest_label = metrics::destination_label(&control);
            let e = match Connection::open(dcid, &target, &settings, log).await {
                Ok(conn) => {
                    metrics::outbound_tls(&dest_label, control.tls.as_str(), conn.tls());
                    if let Some(text) = note {
                        ctx.log.log(&Event::Note {
                            level: Level::Info,
                            text,
                        });
                    }
                    return send_jobs(conn, dcid, &exchange, jobs, &feed, log).await;
                }
                Err(e) => e,
            };
            if e.required_tls_failure {
                metrics::required_tls_failure(&dest_label);
            }
            if e.required_tls_failure
                || !matches!(e.tls, crate::relay::client::TlsOutcome::NotAttempted)
            {
                metrics::outbound_tls(&dest_label, control.tls.as_str(), &e.tls);
            }
            if e.required_tls_failure && ctx.alert_enabled {
                ctx.log.log(&Event::Note {
                    level: Level::Warning,
                    text: format!(
                        "ALERT: required TLS to destination {domain} failed (DCID {dcid}, {}): {}",
                        control.tls.as_str(),
                        e.reason
                    ),
                });
            }
            if e.required_tls_failure {
                tls_alert = Some(format!(
                    "{} (DCID {dcid}, host {exchange}): {}",
                    control.tls.as_str(),
                    e.reason
                ));
            }
            // The address alone does not say which MX host failed.
            let reason = match note {
                Some(note) => {
                    ctx.log.log(&Event::Note {
                        level: Level::Info,
                        text: format!("{note}: {}", e.reason),
                    });
                    format!("{} (MX host {exchange})", e.reason)
                }
                None => e.reason,
            };
            failures.push(reason.clone());
            if e.required_tls_failure && tls_failure.is_none() {
                tls_failure = Some((e.enhanced.clone(), dcid));
            }
            last = (e.enhanced, reason, dcid);
        }
    }
    jobs.extend(Feed::close(&feed));
    if let (true, Some(reason)) = (all_null_mx, null_mx) {
        let diagnostic = format!("{} {} {reason}", mx::NULL_MX_CODE, mx::NULL_MX_ENHANCED);
        return all_permanent(&jobs, mx::NULL_MX_ENHANCED, &reason, &diagnostic);
    }
    let (mut enhanced, mut reason, mut dcid) = last;
    if failures.len() > 1 {
        reason = format!(
            "{} hosts tried, all failed: {}",
            failures.len(),
            failures.join("; ")
        );
        // The required-TLS failure is the one the administrator must act on.
        if let Some((e, d)) = tls_failure {
            (enhanced, dcid) = (e, d);
        }
    }
    let mut results = all_temporary(&jobs, dcid, &enhanced, &reason);
    if let Some(r) = results.first_mut() {
        r.tls_alert = tls_alert;
    }
    results
}

/// Sends `jobs`, then what the feed brings, over the open connection `conn` to `remote`; closes it.
/// Each message's result is reported through the feed as its transaction ends; what could not
/// be reported (and the jobs a lost connection never sent) is returned.
async fn send_jobs(
    mut conn: Connection,
    dcid: u64,
    remote: &str,
    jobs: Vec<Job>,
    feed: &SharedFeed,
    log: &dyn DeliveryLog,
) -> Vec<JobResult> {
    let mut results = Vec::with_capacity(jobs.len());
    let mut lost = false;
    let mut first = jobs.into_iter();
    // The previous message's result, until the queue manager has recorded it.
    let mut recording: Option<feed::Recorded> = None;
    while let Some(job) = first.next().or_else(|| Feed::take(feed)) {
        let job = &job;
        if lost {
            // Nothing more is sent on a broken connection: the rest, fed jobs included,
            // is tried again later.
            let mut rest = vec![job.clone()];
            rest.extend(first.by_ref());
            rest.extend(Feed::close(feed));
            results.extend(all_temporary(&rest, dcid, "4.4.2", "connection lost"));
            break;
        }
        let msg = OutgoingMessage {
            mid: job.mid,
            from: job.from.clone(),
            rcpts: job.rcpts.clone(),
            body_path: job.body_path.clone(),
            body: job.body.as_ref().map(|b| b.bytes.clone()),
            size: job.size,
            smtputf8: job.smtputf8,
            eightbitmime: job.eightbitmime,
        };
        // Nothing more is delivered while the last `250` is not recorded: a crash repeats
        // at most one message per connection (an error only means the manager is gone).
        if let Some(done) = recording.take() {
            let _ = done.await;
        }
        let r = conn.send(&msg, log).await;
        lost = r.connection_lost;
        let result = JobResult {
            mid: job.mid,
            dcid,
            remote: Some(remote.to_string()),
            tls_alert: None,
            outcomes: r
                .rcpts
                .iter()
                .map(|(rid, o)| (*rid, outcome_of(o)))
                .collect(),
        };
        // Saved now, not after QUIT: a crash while the connection is still open (a slow
        // QUIT, more messages to send) must not deliver this message again.
        match Feed::report(feed, result) {
            Ok(done) => recording = Some(done),
            Err(result) => results.push(result),
        }
    }
    // Safe on a broken connection too: it skips QUIT but still closes and logs `DCID n close`.
    conn.quit(log).await;
    results
}

#[cfg(test)]
mod tests {
    use super::hosts::verify_identity;
    use super::*;
    use crate::config::outbound::{DomainMatch, RouteHost};
    use std::path::PathBuf;

    fn h(host: &str, priority: u16) -> RouteHost {
        RouteHost {
            host: host.into(),
            port: 25,
            priority,
        }
    }

    #[test]
    fn equal_priorities_rotate_lower_first() {
        let route = Route {
            domain: DomainMatch::All,
            hosts: vec![h("b1", 20), h("a1", 10), h("a2", 10), h("b2", 20)],
            mx_lookup: false,
        };
        let names = |turn| {
            host_order(&route, turn)
                .into_iter()
                .map(|h| h.host)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(0), vec!["a1", "a2", "b1", "b2"]);
        assert_eq!(names(1), vec!["a2", "a1", "b2", "b1"]);
        assert_eq!(names(2), names(0));
    }

    #[tokio::test]
    async fn a_delivery_task_that_panics_hands_back_every_job_it_was_given() {
        let job = |mid: u64| Job {
            mid,
            from: "a@b.example".into(),
            rcpts: vec![(0, "c@example.com".into()), (1, "d@example.com".into())],
            body_path: PathBuf::from(format!("/nonexistent/{mid}.msg")),
            body: None,
            size: 10,
            smtputf8: false,
            eightbitmime: false,
        };
        let dir = tempfile::tempdir().unwrap();
        let log = MailLog::open(
            &crate::config::model::MailLogTarget::File(dir.path().join("mail.log")),
            crate::config::model::MailLogFormat::Text,
        )
        .unwrap();
        let feed = Feed::new(1);
        Feed::offer(&feed, job(2), 10).unwrap();
        Feed::offer(&feed, job(3), 10).unwrap();
        // The connection took MID 2 before it died; MID 3 was still waiting.
        assert_eq!(Feed::take(&feed).map(|j| j.mid), Some(2));
        let results = guarded("example.com", &log, vec![job(1)], &feed, async {
            panic!("a bug in the delivery code")
        })
        .await;
        let mids: Vec<u64> = results.iter().map(|r| r.mid).collect();
        assert_eq!(mids, [1, 2, 3]);
        for r in &results {
            assert_eq!(r.outcomes.len(), 2);
            for (_, o) in &r.outcomes {
                assert!(
                    matches!(o, Outcome::Temporary { enhanced, reason }
                        if enhanced == "4.3.0" && reason.starts_with("delivery task to example.com failed")),
                    "{o:?}"
                );
            }
        }
        assert!(
            !Feed::is_open(&feed),
            "nothing more is fed to a dead connection"
        );
        let text = std::fs::read_to_string(dir.path().join("mail.log")).unwrap();
        assert!(
            text.contains("Warning: delivery task to example.com failed: task ")
                && text.contains("panicked")
                && text.contains("3 job(s) will be retried"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn trust_11_each_result_is_reported_at_once_and_a_dead_task_answers_only_for_the_rest() {
        let job = |mid: u64| Job {
            mid,
            from: "a@b.example".into(),
            rcpts: vec![(0, "c@example.com".into())],
            body_path: PathBuf::from(format!("/nonexistent/{mid}.msg")),
            body: None,
            size: 10,
            smtputf8: false,
            eightbitmime: false,
        };
        let dir = tempfile::tempdir().unwrap();
        let log = MailLog::open(
            &crate::config::model::MailLogTarget::File(dir.path().join("mail.log")),
            crate::config::model::MailLogFormat::Text,
        )
        .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let feed = Feed::reporting(1, "example.com".into(), tx);
        Feed::offer(&feed, job(2), 10).unwrap();
        // MID 1 (the first batch) was accepted: its result goes to the queue manager now.
        let done = all_with(&[job(1)], 5, &Outcome::Delivered).remove(0);
        assert!(Feed::report(&feed, done).is_ok());
        let Reported {
            domain, result: r, ..
        } = rx.try_recv().unwrap();
        assert_eq!((domain.as_str(), r.mid, r.dcid), ("example.com", 1, 5));
        assert_eq!(Feed::take(&feed).map(|j| j.mid), Some(2));
        let results = guarded("example.com", &log, vec![job(1)], &feed, async {
            panic!("a bug in the delivery code")
        })
        .await;
        // MID 1 is not answered for twice (a temporary result would send it again).
        assert_eq!(results.iter().map(|r| r.mid).collect::<Vec<_>>(), [2]);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn only_an_mx_host_within_the_route_host_is_a_verify_identity() {
        assert_eq!(
            verify_identity("internal.example", "mx1.internal.example"),
            "mx1.internal.example"
        );
        assert_eq!(
            verify_identity("mx.internal.example", "MX.internal.example."),
            "MX.internal.example."
        );
        // A name only DNS gave (a forged answer could name any host with a valid certificate).
        assert_eq!(
            verify_identity("internal.example", "mx.attacker.example"),
            "internal.example"
        );
        assert_eq!(
            verify_identity("internal.example", "evilinternal.example"),
            "internal.example"
        );
    }
}
