//! Pure policy evaluation over the loaded configuration: HAT, mail-flow policies, RAT, rate
//! limits, and the per-stage checks that turn them into replies (`check`).

pub(crate) mod check;
pub mod flow;
pub mod hat;
pub(crate) mod hat_criterion;
pub(crate) mod hat_index;
pub mod hat_trace;
pub mod rat;
pub mod rate;
pub mod sender_auth;
