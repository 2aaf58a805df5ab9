//! Deadlines for reads from the client, so a client that trickles bytes cannot hold a
//! connection slot until the session timeout (slowloris).
//!
//! - A command line has one deadline, `timeouts.command`, from the moment the server is ready
//!   for it (its last reply written) until the complete line has arrived. Bytes of the line
//!   arriving in the meantime do not extend it. Commands already buffered (pipelined) are
//!   answered without a read, so they never wait on it.
//! - In DATA, RFC 5321 §4.5.3.2.5 bounds each read ("3 minutes for each TCP SEND"), so
//!   `timeouts.data` stays the allowed silence between reads. On top of that the message must
//!   make progress: after the first `timeouts.data` of the DATA phase it must have arrived at
//!   an average of at least [`DATA_MIN_RATE`] bytes per second. A fixed deadline for the whole
//!   phase would cut off a large message on a slow but honest link; a floor rate only cuts
//!   off a client that sends (almost) nothing.
//! - Nothing waits past the session deadline.

use std::time::{Duration, Instant};

use crate::config::model::Timeouts;

/// The lowest average rate DATA may arrive at once the first `timeouts.data` has passed.
pub(super) const DATA_MIN_RATE: u64 = 1024;

/// Deadlines of one connection's reads.
#[derive(Default)]
pub(super) struct ReadDeadlines {
    /// Until when the command line being read must be complete; set at the first read for it.
    command: Option<Instant>,
    /// When the current DATA phase started reading, and the bytes read in it since.
    data: Option<(Instant, u64)>,
}

impl ReadDeadlines {
    /// The server answered a command: the next line gets a fresh `timeouts.command`, counted
    /// from its first read (after the answer is written).
    pub(super) fn replied(&mut self) {
        self.command = None;
    }

    /// A new message (DATA) starts: its progress is counted from its first read.
    pub(super) fn message_started(&mut self) {
        self.data = None;
    }

    /// The latest moment the next read may finish, and the timeout that sets it (for the log).
    pub(super) fn next(
        &mut self,
        in_data: bool,
        now: Instant,
        t: &Timeouts,
        session: Instant,
    ) -> (Instant, &'static str) {
        let at = if in_data {
            let (start, received) = *self.data.get_or_insert((now, 0));
            let earned = Duration::from_secs_f64(received as f64 / DATA_MIN_RATE as f64);
            (now + t.data).min(start + t.data + earned)
        } else {
            *self.command.get_or_insert(now + t.command)
        };
        if session <= at {
            (session, "session")
        } else {
            (at, if in_data { "data" } else { "command" })
        }
    }

    /// `n` bytes arrived; in DATA they count towards the minimum rate.
    pub(super) fn received(&mut self, in_data: bool, n: usize) {
        if let (true, Some((_, received))) = (in_data, self.data.as_mut()) {
            *received += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Timeouts {
        Timeouts {
            command: Duration::from_secs(20),
            data: Duration::from_secs(20),
            tls_handshake: Duration::from_secs(30),
            session: Duration::from_secs(120),
        }
    }

    #[test]
    fn trust_02_a_command_line_has_one_deadline_however_its_bytes_trickle_in() {
        let t0 = Instant::now();
        let session = t0 + Duration::from_secs(120);
        let mut d = ReadDeadlines::default();
        assert_eq!(
            d.next(false, t0, &t(), session),
            (t0 + t().command, "command")
        );
        for s in [4, 8, 12, 16] {
            d.received(false, 1);
            let now = t0 + Duration::from_secs(s);
            assert_eq!(d.next(false, now, &t(), session).0, t0 + t().command);
        }
        // The line is complete and answered: the next one counts from its first read.
        d.replied();
        let later = t0 + Duration::from_secs(17);
        assert_eq!(d.next(false, later, &t(), session).0, later + t().command);
    }

    #[test]
    fn trust_02_data_needs_progress_after_the_first_data_timeout() {
        let t0 = Instant::now();
        let session = t0 + Duration::from_secs(3600);
        let mut d = ReadDeadlines::default();
        d.message_started();
        assert_eq!(d.next(true, t0, &t(), session), (t0 + t().data, "data"));
        // One byte every 4 s: the silence limit never fires, the progress rule does.
        let mut now = t0;
        for _ in 0..4 {
            d.received(true, 1);
            now += Duration::from_secs(4);
            let (at, what) = d.next(true, now, &t(), session);
            assert_eq!(what, "data");
            assert!(at < t0 + t().data + Duration::from_millis(10), "{at:?}");
        }
        // 100 KiB bought 100 s more; silence is still limited to `timeouts.data` per read.
        d.received(true, 100 * 1024);
        let (at, _) = d.next(true, now, &t(), session);
        assert_eq!(at, now + t().data);
        // A new message starts its own clock.
        d.message_started();
        let late = t0 + Duration::from_secs(1000);
        assert_eq!(d.next(true, late, &t(), session).0, late + t().data);
    }

    #[test]
    fn trust_02_the_session_deadline_bounds_every_read() {
        let t0 = Instant::now();
        let session = t0 + Duration::from_secs(5);
        let mut d = ReadDeadlines::default();
        assert_eq!(d.next(false, t0, &t(), session), (session, "session"));
        assert_eq!(d.next(true, t0, &t(), session), (session, "session"));
    }
}
