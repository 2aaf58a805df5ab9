//! Recipient validation at RCPT (issue 13): ask the internal directory whether a recipient
//! exists before accepting it, so the gateway never accepts mail the internal server would
//! bounce (backscatter).
//!
//! The foundation, not yet wired into the session, the config loader or the RAT
//! (docs/recipient-validation.md says what is still to come):
//! - [`verdict`]: [`Verdict`] (valid, invalid, tempfail with a typed [`TempFailCause`]) and
//!   [`Answer`] (a verdict with its log-only detail).
//! - [`list`]: the `list: FILE` method (addresses and `@domain` catch-alls, in memory).
//! - [`callahead`]: the SMTP probe pool of one destination (kept-open connections,
//!   concurrency cap, shedding, coalescing).
//! - [`ldap`]: the LDAP accept query.
//! - [`cache`] and [`persist`]: the verdict cache (separate TTLs, refresh flag, size cap that
//!   keeps the valid set) and its file.
//! - [`breaker`]: the pure circuit breaker of one destination.
//! - [`destination`]: a method with its breaker in front of the cache (the order of a
//!   lookup: cache, breaker, method, cache store, breaker record).
//! - [`control`]: the control socket's `validate`, `cache-list` and `cache-flush` verbs
//!   (`mxgate recipients ...`).
//! - [`shared`]: the verdicts shared with other gateways in the `shared_state:` store.

pub mod breaker;
pub mod cache;
pub mod callahead;
pub mod control;
pub mod destination;
pub mod ldap;
pub mod list;
pub mod persist;
pub mod rule;
pub mod service;
pub mod settings;
pub mod shared;
pub mod verdict;

pub use verdict::{Answer, TempFailCause, Verdict};
