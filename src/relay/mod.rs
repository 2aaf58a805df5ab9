//! Relay to the internal mail server: queue manager, SMTP client, outbound TLS, retries, DSNs.

pub mod client;
pub mod dsn;
pub mod outbound_tls;
pub mod schedule;
pub mod state;
