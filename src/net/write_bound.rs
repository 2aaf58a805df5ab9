//! Bounded writes for the connection driver: every write to a client (and the TLS shutdown)
//! ends by a deadline or when shutdown forces the close, so a client that never reads cannot
//! hold a connection, or shutdown, forever.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::model::Timeouts;

/// How long the 421 (and TLS close_notify) may take once shutdown forced the close.
pub(super) const CLOSING_WRITE: Duration = Duration::from_secs(1);

/// Why a write did not finish.
pub(super) enum WriteStop {
    /// The peer is gone or the socket failed.
    Failed,
    /// The client did not take our bytes in time; names the timeout for the log.
    Timeout(&'static str),
    /// Shutdown forced the close.
    Shutdown,
}

/// The latest moment a write may finish, and the timeout that sets it.
#[derive(Clone, Copy)]
pub(super) struct WriteDeadline {
    pub(super) at: Instant,
    what: &'static str,
}

/// A write may block for `timeouts.command` (a client that takes none of our bytes for that
/// long is as gone as one that sends nothing), never past the session deadline.
pub(super) fn write_deadline(timeouts: &Timeouts, session_deadline: Instant) -> WriteDeadline {
    let per_write = Instant::now() + timeouts.command;
    if session_deadline <= per_write {
        WriteDeadline {
            at: session_deadline,
            what: "session",
        }
    } else {
        WriteDeadline {
            at: per_write,
            what: "write",
        }
    }
}

/// Runs a write (or TLS shutdown) until `deadline`, giving up when shutdown forces the close:
/// a client that never reads must not hold a connection, or shutdown, forever.
pub(super) async fn bounded_write(
    write: impl Future<Output = std::io::Result<()>>,
    deadline: WriteDeadline,
    force_close: &mut watch::Receiver<bool>,
) -> Result<(), WriteStop> {
    // One select built in place (no future moved from local to local), so the room every
    // connection's task keeps for its writes stays small.
    let forced = async {
        // Already closing for shutdown: the deadline is short; nothing more to race. A dropped
        // sender is no shutdown signal either: then only the deadline applies.
        if *force_close.borrow() || force_close.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        r = tokio::time::timeout_at(deadline.at.into(), write) => r,
        _ = forced => return Err(WriteStop::Shutdown),
    };
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(WriteStop::Failed),
        Err(_) => Err(WriteStop::Timeout(deadline.what)),
    }
}
