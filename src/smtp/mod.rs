//! Sans-IO SMTP: framing, parsing, replies and the session state machine.

pub mod address;
pub mod command;
pub mod data;
pub mod helo;
pub mod line;
pub mod reply;
pub mod session;
