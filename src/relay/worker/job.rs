//! A job (some recipients of one message for one destination), its result, and the mapping
//! from the SMTP client's per-recipient replies to delivery outcomes.

use std::path::PathBuf;
use std::sync::Arc;

use crate::relay::client::RcptOutcome;
use crate::relay::queue::CachedBody;
use crate::smtp::reply::Reply;

/// Some recipients of one message, bound for one destination domain.
#[derive(Debug, Clone)]
pub(crate) struct Job {
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
    pub(super) fn without_body(&self) -> Job {
        Job {
            body: None,
            ..self.clone()
        }
    }
}

/// What happened to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
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
pub(crate) struct JobResult {
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

pub(super) fn outcome_of(o: &RcptOutcome) -> Outcome {
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
pub(crate) fn all_with(jobs: &[Job], dcid: u64, outcome: &Outcome) -> Vec<JobResult> {
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
pub(crate) fn all_permanent(
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
pub(crate) fn all_temporary(
    jobs: &[Job],
    dcid: u64,
    enhanced: &str,
    reason: &str,
) -> Vec<JobResult> {
    let outcome = Outcome::Temporary {
        enhanced: enhanced.to_string(),
        reason: reason.to_string(),
    };
    all_with(jobs, dcid, &outcome)
}
