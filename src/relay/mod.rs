//! Relay to the internal mail server: queue manager, SMTP client, outbound TLS, retries, DSNs.

pub mod bounce;
pub mod client;
pub mod control;
pub mod dsn;
pub mod mx;
pub mod outbound_tls;
pub mod queue;
pub mod schedule;
pub mod state;
pub mod worker;
