//! Network edge: accept loops, the connection driver, TLS, reverse DNS, DNS block lists and
//! PROXY protocol.

pub mod bind;
pub mod conn;
pub mod dns;
pub mod dnsbl;
pub mod hosts;
pub mod listener;
pub mod proxy;
mod read_deadline;
pub mod tls;
mod write_bound;
