//! The mail log: ESA-format lines (docs/mail-log.md) with ICID/MID/RID/DCID ids, to stdout or a file.

mod event;
mod message_auth;
mod render;
mod writer;

pub use event::{is_unsafe, printable, Event, Level, ReceivingFailure};
pub use message_auth::MessageAuthEvent;
pub use render::{render, timestamp};
pub use writer::{MailLog, MailLogError};

#[cfg(test)]
mod tests;
