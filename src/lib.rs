//! mxgate — an inbound SMTP gateway (public MX) with HAT sender groups, mail-flow policies,
//! TLS enforcement, an ESA-format mail log and a durable spool.
//!
//! # Layout
//! One line per top-level module, from start-up along the path of a message;
//! docs/architecture.md follows one message through them with the file of each step.
//! - [`config`]: `mxgate.yaml`, `listeners/`, `policies/` → a validated [`config::model::Config`].
//! - [`app`]: starts listeners, spool, queue and metrics from a config; reload, signals, shutdown.
//! - [`net`]: I/O edge — accept loops, the connection driver, TLS, PROXY protocol.
//! - `dns`: reverse DNS (FCrDNS), block lists, MX/address lookups, the one host-name syntax.
//! - [`auth`]: sender authentication lookups — envelope-sender DNS verification, SPF.
//! - [`policy`]: pure decisions — HAT sender groups, mail-flow policies, RAT, per-IP limits.
//! - [`smtp`]: sans-IO SMTP — framing, commands, addresses, DATA reader, replies, the session.
//! - [`envelope`]: the [`envelope::Envelope`] of a received message (everything but the body).
//! - [`spool`]: durable queue (tmp → fsync → rename → fsync dir), its envelope files, the ids.
//! - [`relay`]: delivery to the internal server — queue manager, SMTP client, outbound TLS, DSNs.
//! - [`mail_log`]: ESA-format mail-log events, their text and JSON lines, the log file.
//! - [`metrics`]: Prometheus names, the recorder, `/metrics`, `/health` and `/ready`.
//! - [`mta_sts`]: the MTA-STS policy endpoint (RFC 8461) — policy text and id, HTTPS server.
//! - [`tlsrpt`]: TLS-RPT (RFC 8460) reports from senders — decode, validate, store, count.
//! - [`dnscheck`]: `mxgate dns check` — the domain's MTA-STS, TLS-RPT, MX and TLSA records
//!   against what mxgate serves; the DANE and MTA-STS gauges reuse its checks.
//! - [`shared_state`]: counters several gateways share in Redis/Valkey (`shared_state:`).
//! - [`certs`]: certificate files behind `mxgate certs` (self-signed, CSR, install, PKCS#12).
//!
//! The `mxgate` binary (`src/main.rs`, `src/cli/`) parses the command line and calls these.
//! Modules and items that neither it nor tests/ and benches/ use are `pub(crate)`.

// Here rather than in Cargo.toml's [lints]: there it would also reach tests/support.
#![warn(unreachable_pub)]

pub mod app;
pub mod auth;
pub mod certs;
pub mod config;
pub(crate) mod dns;
pub mod dnscheck;
pub mod envelope;
pub mod mail_log;
pub mod metrics;
pub mod mta_sts;
pub mod net;
pub mod policy;
pub mod relay;
pub mod shared_state;
pub mod smtp;
pub mod spool;
pub mod tlsrpt;
pub mod validate;
