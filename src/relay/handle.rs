//! The handle through which listeners and the control socket talk to the queue manager.

use tokio::sync::mpsc;

/// Requests to the queue manager.
#[derive(Debug)]
pub enum Command {
    /// A message was committed to the spool; with its envelope and body when the caller
    /// has them at hand (the manager then need not read them back).
    Enqueued(u64, Option<Box<Committed>>),
    /// Deliver now: one message, or all; answered with how many queued messages that was.
    Retry(Option<u64>, tokio::sync::oneshot::Sender<usize>),
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
        /// Outbound TLS with the client certificate and CA bundles read again.
        outbound: std::sync::Arc<crate::relay::outbound_tls::OutboundTlsContext>,
    },
}

/// A freshly committed message as its listener had it.
#[derive(Debug)]
pub struct Committed {
    /// The envelope just written.
    pub env: crate::spool::Envelope,
    /// The body, when it was held in memory (not spilled to disk).
    pub body: Option<std::sync::Arc<[u8]>>,
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
        let _ = self.tx.send(Command::Enqueued(mid, None));
    }

    /// Tells the manager about a message just committed, handing over its envelope and body.
    pub fn committed(&self, env: crate::spool::Envelope, body: Option<Vec<u8>>) {
        let mid = env.mid;
        let body = body.map(std::sync::Arc::from);
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
