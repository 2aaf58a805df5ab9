//! Network edge: accept loops, connection set-up (`conn`), the connection driver (`driver`),
//! the per-IP connection slot (`per_ip`), TLS and the PROXY protocol (DNS is in `crate::dns`).

pub(crate) mod bind;
pub(crate) mod conn;
pub mod driver;
pub(crate) mod listener;
pub(crate) mod per_ip;
pub(crate) mod proxy;
mod read_deadline;
pub mod tls;
mod write_bound;
