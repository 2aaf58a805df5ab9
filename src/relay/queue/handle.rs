//! The handle through which listeners and the control socket talk to the queue manager,
//! and the bodies listeners hand over with it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::command::Command;

/// Bodies held in memory for their first delivery attempt, in bytes at most; beyond it
/// (a slow or unreachable destination with a long queue) bodies are read from the spool.
pub(crate) const BODY_CACHE_MAX: usize = 32 * 1024 * 1024;

/// A just-committed body kept in memory so its first delivery need not read it back;
/// counted against [`BODY_CACHE_MAX`] from the hand-over until the last job holding it is
/// dropped (the channel to the queue manager included).
#[derive(Debug)]
pub struct CachedBody {
    /// The message as spooled (CRLF lines, not dot-stuffed).
    pub bytes: Arc<Vec<u8>>,
    budget: Arc<AtomicUsize>,
}

impl CachedBody {
    /// Takes `bytes` if they fit in what is left of `budget`, else gives nothing (the relay
    /// then reads the spool file).
    pub(crate) fn reserve(bytes: Vec<u8>, budget: &Arc<AtomicUsize>) -> Option<CachedBody> {
        let len = bytes.len();
        let fits = budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + len <= BODY_CACHE_MAX).then_some(used + len)
            })
            .is_ok();
        fits.then(|| CachedBody {
            bytes: Arc::new(bytes),
            budget: budget.clone(),
        })
    }
}

impl Drop for CachedBody {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.bytes.len(), Ordering::Relaxed);
    }
}

/// A freshly committed message as its listener had it.
#[derive(Debug)]
pub struct Committed {
    /// The envelope just written.
    pub env: crate::envelope::Envelope,
    /// The body, when it was held in memory (not spilled to disk) and fit the budget.
    pub body: Option<CachedBody>,
}

/// Handle used by listeners and the control socket.
#[derive(Debug, Clone)]
pub struct QueueHandle {
    tx: mpsc::UnboundedSender<Command>,
    /// Bytes of [`CachedBody`] alive, shared with the manager.
    body_budget: Arc<AtomicUsize>,
}

impl QueueHandle {
    /// Wraps the manager's command channel.
    pub fn new(tx: mpsc::UnboundedSender<Command>, body_budget: Arc<AtomicUsize>) -> Self {
        QueueHandle { tx, body_budget }
    }

    /// Tells the manager about a message just committed, handing over its envelope and body.
    pub fn committed(&self, env: crate::envelope::Envelope, body: Option<Vec<u8>>) {
        let mid = env.mid;
        let body = body.and_then(|b| CachedBody::reserve(b, &self.body_budget));
        let _ = self.tx.send(Command::Enqueued(
            mid,
            Some(Box::new(Committed { env, body })),
        ));
    }

    /// Sends a command.
    pub fn send(&self, c: Command) -> bool {
        self.tx.send(c).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_held_only_within_the_budget_and_given_back_on_drop() {
        let budget = Arc::new(AtomicUsize::new(0));
        let a = CachedBody::reserve(vec![b'a'; BODY_CACHE_MAX - 10], &budget).unwrap();
        assert_eq!(budget.load(Ordering::Relaxed), BODY_CACHE_MAX - 10);
        // Does not fit: nothing is reserved, the relay will read the spool file.
        assert!(CachedBody::reserve(vec![b'b'; 11], &budget).is_none());
        assert_eq!(budget.load(Ordering::Relaxed), BODY_CACHE_MAX - 10);
        let b = CachedBody::reserve(vec![b'b'; 10], &budget).unwrap();
        assert_eq!(budget.load(Ordering::Relaxed), BODY_CACHE_MAX);
        drop(a);
        drop(b);
        assert_eq!(budget.load(Ordering::Relaxed), 0);
    }
}
