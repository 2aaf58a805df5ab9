//! Network edge: accept loops, the connection driver, TLS, reverse DNS and PROXY protocol.

pub mod conn;
pub mod dns;
pub mod listener;
pub mod proxy;
pub mod tls;
