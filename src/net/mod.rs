//! Network edge: accept loops, connection set-up (`conn`), the connection driver (`driver`),
//! TLS and the PROXY protocol (DNS is in [`crate::dns`]).

pub mod bind;
pub mod conn;
pub mod driver;
pub mod listener;
pub mod proxy;
mod read_deadline;
pub mod tls;
mod write_bound;
