//! The handle through which listeners and the control socket talk to the queue manager.

use tokio::sync::mpsc;

/// Requests to the queue manager.
#[derive(Debug)]
pub enum Command {
    /// A message was committed to the spool.
    Enqueued(u64),
    /// Deliver now: one message, or all.
    Retry(Option<u64>),
    /// Remove a message without delivering it.
    Delete(u64, tokio::sync::oneshot::Sender<bool>),
    /// Bounce every pending recipient of a message now.
    Bounce(u64, tokio::sync::oneshot::Sender<bool>),
    /// New routes and destination controls after a configuration reload.
    Reconfigure {
        /// SMTP routes.
        routes: std::sync::Arc<crate::config::outbound::RouteTable>,
        /// Destination controls.
        destinations: std::sync::Arc<crate::config::outbound::DestinationControls>,
    },
}

/// Handle used by listeners and the control socket.
#[derive(Debug, Clone)]
pub struct QueueHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl QueueHandle {
    /// Wraps the manager's command channel.
    pub fn new(tx: mpsc::UnboundedSender<Command>) -> Self {
        QueueHandle { tx }
    }

    /// Tells the manager about a newly committed message.
    pub fn enqueued(&self, mid: u64) {
        let _ = self.tx.send(Command::Enqueued(mid));
    }

    /// Sends a command.
    pub fn send(&self, c: Command) -> bool {
        self.tx.send(c).is_ok()
    }
}
