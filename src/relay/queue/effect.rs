//! What the queue's decisions ask for: the effects [`QueueState`](super::QueueState) returns
//! and the [`QueueManager`](super::QueueManager) carries out, in order (see its executor for
//! the ordering that makes them durable).

use crate::envelope::Envelope;
use crate::mail_log::Event;
use crate::relay::dsn::FailedRecipient;
use crate::relay::state::DeliveryState;

use super::dispatch::Batch;

/// One thing for the queue manager to do.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Write a mail log line.
    Log(Event),
    /// Write mail log lines together.
    LogTogether(Vec<Event>),
    /// Start a delivery task.
    StartBatch(Batch),
    /// Write message `mid`'s delivery state (tmp file, rename, no fsync) before the next
    /// effect.
    SaveState {
        /// Message id.
        mid: u64,
        /// The state as it is to be found after a crash.
        state: DeliveryState,
    },
    /// Commit a DSN to the sender of `env` for `failed` (the recipients `rids` of message
    /// `mid`) before the next effect; its outcome goes to
    /// [`QueueState::dsn_done`](super::QueueState::dsn_done), whose effects come next.
    SendDsn {
        /// The bounced message.
        mid: u64,
        /// The bounced recipients.
        rids: Vec<u32>,
        /// Its envelope.
        env: Envelope,
        /// Why each bounced, for the DSN.
        failed: Vec<FailedRecipient>,
    },
    /// Commit an alert mail about a required-TLS failure.
    SendAlert {
        /// The administrator's address.
        to: String,
        /// The destination domain.
        domain: String,
        /// What failed.
        reason: String,
    },
    /// Remove message `mid`'s files before the next effect (the directory fsync that makes
    /// it survive a power loss follows, not waited for).
    RemoveMessage(u64),
    /// Remove delivered messages' files (MID, whether a delivery state file may exist) before
    /// the next effect; one directory fsync for all follows, not waited for.
    RemoveFinished(Vec<(u64, bool)>),
}
