//! Configuration: YAML files -> validated model.
//!
//! `defs` holds the raw serde shapes, `load` turns a config directory into a
//! [`model::Config`] or a list of every error found ([`ConfigErrors`]).
pub(crate) mod defs;
mod destinations;
pub(crate) mod error;
pub mod hash;
mod listeners;
pub(crate) mod load;
pub mod model;
mod mta_sts;
pub mod outbound;
mod policies;
mod recover;
mod routes;
pub(crate) mod sender_auth;
mod sender_orgs;
mod shared_state;
mod tables;
mod tlsrpt;
mod validation;
pub(crate) mod values;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_listeners;
#[cfg(test)]
mod tests_network;
#[cfg(test)]
mod tests_outbound;
#[cfg(test)]
mod tests_policies;
#[cfg(test)]
mod tests_shared_state;
#[cfg(test)]
mod tests_tlsrpt;
#[cfg(test)]
mod tests_validation;

pub use error::{ConfigError, ConfigErrors};
pub use load::{load, Overrides};
