//! One delivery connection: pick a route host, open the connection, send a batch of jobs.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::outbound::{DestinationControl, Route, RouteHost};
use crate::dns::ReverseResolver;
use crate::mail_log::{Event, Level, MailLog};
use crate::metrics;
use crate::relay::client::{
    ClientSettings, ClientTimeouts, Connection, DeliveryLog, OutgoingMessage, RcptOutcome, Target,
};
use crate::relay::handle::CachedBody;
use crate::relay::mx::{self, MxError, MxTarget};
use crate::relay::outbound_tls::OutboundTlsContext;
use crate::smtp::reply::Reply;
use crate::spool::Spool;

/// Some recipients of one message, bound for one destination domain.
#[derive(Debug, Clone)]
pub struct Job {
    /// Message id.
    pub mid: u64,
    /// Envelope sender.
    pub from: String,
    /// (RID, address) pairs.
    pub rcpts: Vec<(u32, String)>,
    /// Body file.
    pub body_path: PathBuf,
    /// The body in memory, on a message's first attempt (else it is read from `body_path`).
    pub body: Option<Arc<CachedBody>>,
    /// Body size.
    pub size: u64,
    /// The message was received with SMTPUTF8 addresses.
    pub smtputf8: bool,
    /// The message was received with `BODY=8BITMIME`.
    pub eightbitmime: bool,
}

impl Job {
    /// The same job without its in-memory body (it is read from the spool if sent again).
    fn without_body(&self) -> Job {
        Job {
            body: None,
            ..self.clone()
        }
    }
}

/// What happened to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted downstream.
    Delivered,
    /// Try again later: enhanced code and the reason for the log.
    Temporary {
        /// Enhanced status code.
        enhanced: String,
        /// Reason with the remote reply.
        reason: String,
    },
    /// Permanent failure.
    Permanent {
        /// Enhanced status code.
        enhanced: String,
        /// Reason with the remote reply.
        reason: String,
        /// The downstream reply, for the DSN.
        diagnostic: String,
    },
}

/// The result of one job.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// Message id.
    pub mid: u64,
    /// Delivery connection id used (0 when none could be opened).
    pub dcid: u64,
    /// Remote host that answered, for DSNs.
    pub remote: Option<String>,
    /// Outcome per RID.
    pub outcomes: Vec<(u32, Outcome)>,
    /// A `required*` TLS destination failed TLS: the reason, for the alert mail.
    pub tls_alert: Option<String>,
}

/// Jobs handed to a delivery connection that is already open: it takes them after its own,
/// up to the destination's `max_messages_per_connection`, so a busy destination is served
/// over few connections instead of one connection per message. The worker closes the feed
/// (under its lock) when it stops taking, so a job is never left behind in it.
#[derive(Debug)]
pub struct Feed {
    jobs: VecDeque<Job>,
    open: bool,
    /// Jobs the connection was given in all: its first batch and those fed since.
    given: usize,
    /// The fed jobs the connection took (without their in-memory bodies), so they can be
    /// answered for if the connection's task dies.
    taken: Vec<Job>,
    /// Where each transaction's result goes as soon as it ends, with the lane's domain.
    report: Option<(String, ResultSender)>,
    /// Jobs whose result went through `report`: the first ones given, in order.
    reported: usize,
}

/// The queue manager's end for results reported while a connection is open.
pub type ResultSender = tokio::sync::mpsc::UnboundedSender<(String, JobResult)>;

/// A feed shared by the queue manager (which offers) and one worker (which takes).
pub type SharedFeed = Arc<Mutex<Feed>>;

impl Feed {
    /// An open feed for a connection that starts with `first_batch` jobs.
    pub fn new(first_batch: usize) -> SharedFeed {
        Arc::new(Mutex::new(Feed {
            jobs: VecDeque::new(),
            open: true,
            given: first_batch,
            taken: Vec::new(),
            report: None,
            reported: 0,
        }))
    }

    /// [`Feed::new`], and the connection sends each message's result to `report` as soon as
    /// its transaction ends (so it is saved before the connection closes).
    pub fn reporting(first_batch: usize, domain: String, report: ResultSender) -> SharedFeed {
        let feed = Feed::new(first_batch);
        feed.lock().unwrap_or_else(|e| e.into_inner()).report = Some((domain, report));
        feed
    }

    /// Hands `result` to the queue manager now; gives it back when nobody takes reports.
    fn report(feed: &SharedFeed, result: JobResult) -> Option<JobResult> {
        let mut f = feed.lock().unwrap_or_else(|e| e.into_inner());
        let Some((domain, tx)) = &f.report else {
            return Some(result);
        };
        match tx.send((domain.clone(), result)) {
            Ok(()) => {
                f.reported += 1;
                None
            }
            Err(e) => Some(e.0 .1),
        }
    }

    /// Gives `job` to the connection unless it stopped taking or has `max` jobs already.
    pub fn offer(feed: &SharedFeed, job: Job, max: usize) -> Result<(), Job> {
        let mut f = feed.lock().unwrap_or_else(|e| e.into_inner());
        if f.open && f.given < max {
            f.given += 1;
            f.jobs.push_back(job);
            Ok(())
        } else {
            Err(job)
        }
    }

    /// True while the connection takes jobs and none are waiting in the feed.
    pub fn is_idle(feed: &SharedFeed) -> bool {
        let f = feed.lock().unwrap_or_else(|e| e.into_inner());
        f.open && f.jobs.is_empty()
    }

    /// True while the connection takes jobs.
    pub fn is_open(feed: &SharedFeed) -> bool {
        feed.lock().unwrap_or_else(|e| e.into_inner()).open
    }

    /// The next fed job; when there is none the feed closes.
    fn take(feed: &SharedFeed) -> Option<Job> {
        let mut f = feed.lock().unwrap_or_else(|e| e.into_inner());
        let job = f.jobs.pop_front();
        match &job {
            Some(j) => f.taken.push(j.without_body()),
            None => f.open = false,
        }
        job
    }

    /// Closes the feed and returns every job fed to it: taken or still waiting.
    fn close_all(feed: &SharedFeed) -> Vec<Job> {
        let mut f = feed.lock().unwrap_or_else(|e| e.into_inner());
        f.open = false;
        let mut all = std::mem::take(&mut f.taken);
        all.extend(f.jobs.drain(..));
        all
    }

    /// Closes the feed and returns what was waiting in it.
    fn close(feed: &SharedFeed) -> Vec<Job> {
        let mut f = feed.lock().unwrap_or_else(|e| e.into_inner());
        f.open = false;
        f.jobs.drain(..).collect()
    }
}

/// Everything a worker needs, shared by all workers.
#[derive(Clone)]
pub struct WorkerContext {
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

fn reply_reason(r: &Reply) -> (String, String) {
    let enhanced = r
        .enhanced
        .map(|e| e.to_string())
        .unwrap_or_else(|| format!("{}.0.0", r.code / 100));
    if crate::relay::client::is_lost_connection(r) {
        return (enhanced, r.text.to_string());
    }
    (
        enhanced,
        format!("('{}', ['{}'])", r.code, r.text.replace('\n', "', '")),
    )
}

fn outcome_of(o: &RcptOutcome) -> Outcome {
    match o {
        RcptOutcome::Delivered(_) => Outcome::Delivered,
        RcptOutcome::TempFail(r) => {
            let (enhanced, reason) = reply_reason(r);
            Outcome::Temporary { enhanced, reason }
        }
        RcptOutcome::PermFail(r) => {
            let (enhanced, reason) = reply_reason(r);
            Outcome::Permanent {
                enhanced,
                reason,
                diagnostic: r.to_string(),
            }
        }
    }
}

/// The same outcome for every recipient of every job, with no remote host (a failure before
/// or without a connection).
pub fn all_with(jobs: &[Job], dcid: u64, outcome: &Outcome) -> Vec<JobResult> {
    jobs.iter()
        .map(|j| JobResult {
            mid: j.mid,
            dcid,
            remote: None,
            tls_alert: None,
            outcomes: j
                .rcpts
                .iter()
                .map(|(rid, _)| (*rid, outcome.clone()))
                .collect(),
        })
        .collect()
}

/// Every recipient of every job bounces (e.g. a null MX).
pub fn all_permanent(
    jobs: &[Job],
    enhanced: &str,
    reason: &str,
    diagnostic: &str,
) -> Vec<JobResult> {
    let outcome = Outcome::Permanent {
        enhanced: enhanced.to_string(),
        reason: reason.to_string(),
        diagnostic: diagnostic.to_string(),
    };
    all_with(jobs, 0, &outcome)
}

/// Every recipient of every job is deferred with the same reason.
pub fn all_temporary(jobs: &[Job], dcid: u64, enhanced: &str, reason: &str) -> Vec<JobResult> {
    let outcome = Outcome::Temporary {
        enhanced: enhanced.to_string(),
        reason: reason.to_string(),
    };
    all_with(jobs, dcid, &outcome)
}

/// A route host without `mx_lookup`: through the system resolver (so `/etc/hosts` and container
/// DNS names keep working for the internal server), first address only.
async fn resolve(host: &RouteHost) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, host.port));
    }
    tokio::net::lookup_host((host.host.as_str(), host.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", host.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", host.host))
}

/// The addresses to try for one route host: its MX expansion under `mx_lookup`, else its
/// (first) address.
async fn targets(
    ctx: &WorkerContext,
    route: &Route,
    host: &RouteHost,
    turn: usize,
) -> Result<Vec<MxTarget>, MxError> {
    if route.mx_lookup {
        return mx::resolve(&ctx.resolver, host, turn, &ctx.helo_name).await;
    }
    let addr = resolve(host).await.map_err(MxError::Temporary)?;
    Ok(vec![MxTarget {
        addr,
        exchange: host.host.clone(),
        preference: None,
    }])
}

/// The name a `-verify` certificate may present for a connection to `exchange` found for
/// the route host `route_host`: the exchange when it is the route host or a subdomain of
/// it, else the route host. An MX answer is not authenticated (no DNSSEC here), so a name
/// that only DNS supplied must not be what the certificate is checked against (like
/// Postfix's `secure` level, `nexthop:dot-nexthop`).
fn verify_identity(route_host: &str, exchange: &str) -> String {
    let r = route_host.trim_end_matches('.').to_ascii_lowercase();
    let x = exchange.trim_end_matches('.').to_ascii_lowercase();
    if x == r || x.ends_with(&format!(".{r}")) {
        exchange.to_string()
    } else {
        route_host.to_string()
    }
}

/// The mail log line naming the MX host of a delivery connection (logged once it is open, or
/// with the reason when it fails); `None` when the route host was used as it is (an IP
/// literal, or no `mx_lookup`).
fn mx_note(dcid: u64, route: &Route, host: &RouteHost, t: &MxTarget) -> Option<String> {
    if !route.mx_lookup || host.host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    Some(match t.preference {
        Some(p) => format!(
            "DCID {dcid} MX host {} preference {p} for route host {}",
            t.exchange, host.host
        ),
        None => format!(
            "DCID {dcid} MX host {} (implicit MX: no MX records)",
            t.exchange
        ),
    })
}

/// Hosts in try order: by priority, equal priorities rotated by `turn` (round-robin per connection).
pub fn host_order(route: &Route, turn: usize) -> Vec<RouteHost> {
    let mut hosts = route.hosts.clone();
    hosts.sort_by_key(|h| h.priority);
    let mut out = Vec::with_capacity(hosts.len());
    let mut i = 0;
    while i < hosts.len() {
        let p = hosts[i].priority;
        let group: Vec<RouteHost> = hosts[i..]
            .iter()
            .take_while(|h| h.priority == p)
            .cloned()
            .collect();
        let n = group.len();
        for k in 0..n {
            out.push(group[(k + turn) % n].clone());
        }
        i += n;
    }
    out
}

/// [`deliver_batch`] in a task of its own, so that a panic in it (a bug) cannot strand its
/// jobs: they, and every job fed to the connection, come back as temporary failures to be
/// retried, and a Warning is logged.
pub async fn deliver_batch_guarded(
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
pub async fn deliver_batch(
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
            let target = Target {
                addr: target.addr,
                identity: verify_identity(&host.host, &exchange),
                host: exchange.clone(),
                domain: domain.clone(),
            };
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
        results.extend(Feed::report(feed, result));
    }
    // Safe on a broken connection too: it skips QUIT but still closes and logs `DCID n close`.
    conn.quit(log).await;
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::outbound::DomainMatch;

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
        assert!(Feed::report(&feed, done).is_none());
        let (domain, r) = rx.try_recv().unwrap();
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
