//! Sans-IO SMTP: framing, parsing, replies and the session state machine.

pub mod address;
pub mod command;
pub mod data;
pub(crate) mod helo;
pub mod line;
pub(crate) mod reply;
pub mod session;
