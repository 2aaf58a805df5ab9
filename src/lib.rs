//! mxgate — an inbound SMTP gateway (public MX) with HAT sender groups, mail-flow policies,
//! TLS enforcement, an ESA-format mail log and a durable spool.
//!
//! # Layout
//! - [`config`]: YAML files (`mxgate.yaml`, `listeners/`, `policies/`) → validated [`config::model::Config`].
//! - [`policy`]: pure decisions — [`policy::hat`] (sender groups), [`policy::flow`] (mail-flow
//!   policies), [`policy::rat`] (recipients), [`policy::rate`] (per-IP limits).
//! - [`smtp`]: sans-IO SMTP — line framing, command and address parsing, the smuggling-safe
//!   DATA reader, [`smtp::reply::Reply`] and the [`smtp::session::Session`] state machine.
//! - [`net`]: I/O edge — accept loops, the connection driver, TLS, PROXY protocol.
//! - [`dns`]: DNS from the configured resolvers — reverse DNS (FCrDNS), block lists, MX and
//!   address lookups for relay, the opt-in hosts file.
//! - [`spool`]: durable queue (tmp → fsync → rename → fsync dir) and persistent ids.
//! - [`mail_log`]: ESA-format log lines.
//! - [`app`]: wires it all together and owns shutdown.

pub mod app;
pub mod certs;
pub mod config;
pub mod dns;
pub mod mail_log;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod relay;
pub mod smtp;
pub mod spool;
pub mod validate;
