//! Draining for rolling updates (`mxgate drain`): the server stops taking mail (new
//! connections get 421 4.3.2, `/ready` answers 503), lets open sessions finish, delivers its
//! queue, and then stops through the common shutdown ([`Running::shutdown`]), all within a
//! deadline; what is still queued then stays in the spool for the next start.
//!
//! The command asks by writing the deadline to [`DRAIN_FILE`] in the spool (next to the pid
//! file) and sending SIGUSR2 to the spool lock's holder.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use super::Running;
use crate::mail_log::{Event, Level};

/// The file in the spool directory holding the deadline of a requested drain, in seconds.
pub const DRAIN_FILE: &str = "mxgate.drain";
/// The deadline when [`DRAIN_FILE`] is missing or unreadable (a bare SIGUSR2).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);
/// Exit status of `mxgate serve` after a drain whose deadline passed with mail still queued
/// (`EX_TEMPFAIL`: the mail is safe in the spool and is delivered after the next start).
pub const EXIT_MAIL_LEFT: u8 = 75;
/// How often the mail log says how the drain is going.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How often the sessions and the queue are looked at.
const POLL: Duration = Duration::from_millis(250);

/// The longest drain deadline: a rolling update that waits longer has lost its way.
pub const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// Parses `--deadline`: a duration such as `120s`, `2m`, `1h`, or a bare number of seconds;
/// at most [`MAX_DEADLINE`].
pub fn parse_deadline(s: &str) -> Result<Duration, String> {
    let d = crate::config::values::parse_duration(s)?;
    if d > MAX_DEADLINE {
        return Err(format!("{s}: a drain deadline is at most 24h"));
    }
    Ok(d)
}

/// Asks for a drain with `deadline`: writes [`DRAIN_FILE`] in `spool` (the caller then sends
/// SIGUSR2).
pub fn write_request(spool: &Path, deadline: Duration) -> std::io::Result<()> {
    super::reload::write_private(
        &spool.join(DRAIN_FILE),
        &format!("{}\n", deadline.as_secs()),
    )
}

/// The deadline a drain was asked with ([`MAX_DEADLINE`] at most); [`DEFAULT_DEADLINE`]
/// without a readable request.
pub(crate) fn read_request(spool: &Path) -> Duration {
    std::fs::read_to_string(spool.join(DRAIN_FILE))
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map_or(DEFAULT_DEADLINE, Duration::from_secs)
        .min(MAX_DEADLINE)
}

/// Messages in the spool's queue.
pub(crate) fn queued(spool: &crate::spool::Spool) -> usize {
    spool.queued_mids().len()
}

impl Running {
    /// Starts draining: `/ready` answers 503 and new connections get 421 4.3.2 from now on.
    pub fn begin_drain(&self, deadline: Duration) {
        self.ready.set_draining();
        self.admission.drain();
        self.info(format!(
            "drain started: deadline {}s, {} sessions open, {} messages queued; new connections get 421 4.3.2, /ready answers 503",
            deadline.as_secs(),
            self.admission.sessions(),
            queued(&self.spool)
        ));
    }

    /// A second `mxgate drain` during the drain: its deadline counts from now.
    pub fn drain_deadline_changed(&self, deadline: Duration) {
        self.info(format!(
            "drain: new deadline {}s from now ({} messages queued)",
            deadline.as_secs(),
            queued(&self.spool)
        ));
    }

    /// A stop signal ended the drain before its deadline: what is queued stays.
    pub fn drain_cut_short(&self, signal: &str) {
        self.info(format!(
            "drain ended by {signal} before its deadline: {} messages stay in the spool for the next start",
            queued(&self.spool)
        ));
    }

    /// Waits for open sessions to end (after `session_grace` they are closed with 421, as at
    /// shutdown), then for the queue manager to deliver the queue on its retry schedule;
    /// returns when the queue is empty or at `until`, whichever comes first. Progress goes to
    /// the mail log.
    pub async fn drain_wait(&self, until: Instant, session_grace: Duration) {
        let close_sessions_at = (Instant::now() + session_grace).min(until);
        let mut closed = false;
        let mut next_report = Instant::now() + PROGRESS_EVERY;
        loop {
            let now = Instant::now();
            let sessions = self.admission.sessions();
            let queue = queued(&self.spool);
            if sessions == 0 && queue == 0 {
                self.info("drain finished: no sessions open, queue empty".into());
                return;
            }
            if now >= until {
                self.info(format!(
                    "drain deadline passed: {sessions} sessions open, {queue} messages stay in the spool for the next start"
                ));
                return;
            }
            if sessions > 0 && !closed && now >= close_sessions_at {
                closed = true;
                self.info(format!(
                    "drain: closing {sessions} sessions still open after {}s",
                    session_grace.as_secs()
                ));
                let _ = self.force_close.send(true);
            }
            if now >= next_report {
                next_report = now + PROGRESS_EVERY;
                self.info(format!(
                    "drain: {sessions} sessions open, {queue} messages queued, {}s left",
                    until.saturating_duration_since(now).as_secs()
                ));
            }
            tokio::time::sleep(POLL.min(until.saturating_duration_since(now))).await;
        }
    }

    fn info(&self, text: String) {
        tracing::info!("{text}");
        self.mail_log.log(&Event::Note {
            level: Level::Info,
            text,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines() {
        assert_eq!(parse_deadline("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_deadline("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_deadline("90"), Ok(Duration::from_secs(90)));
        assert!(parse_deadline("soon").is_err());
        assert_eq!(parse_deadline("24h"), Ok(MAX_DEADLINE));
        assert!(parse_deadline("99999999999999s").is_err());
    }

    #[test]
    fn request_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_request(dir.path()), DEFAULT_DEADLINE);
        write_request(dir.path(), Duration::from_secs(42)).unwrap();
        assert_eq!(read_request(dir.path()), Duration::from_secs(42));
    }
}
