//! The queue: picks up spooled messages (also those left from before a restart), schedules
//! delivery per destination, applies outcomes, retries, bounces and removes a message only
//! when every recipient has a final outcome.
//!
//! Decisions and effects are apart. [`QueueState`] (`core`, with `dispatch`, `outcome` and
//! `command`) is synchronous code over the queue's memory: every entry point takes `now`
//! and returns the [`Effect`]s to carry out, so retries, the queue lifetime and the
//! concurrency limits are tested with a made-up clock. [`QueueManager`] (`manager`) is the
//! task around it: it reads the clock, receives [`Command`]s through a [`QueueHandle`]
//! (`handle`) and delivery results, and carries out the effects in order, the blocking ones
//! on tokio's blocking pool.

mod command;
mod core;
mod dispatch;
mod effect;
mod handle;
mod manager;
mod outcome;
#[cfg(test)]
mod tests;

pub(crate) use self::command::{Command, Reconfiguration};
pub(crate) use self::handle::{CachedBody, QueueHandle};
pub(crate) use self::manager::QueueManager;
#[cfg(test)]
use self::{
    core::{Loaded, QueueState},
    dispatch::Batch,
    effect::Effect,
};

use crate::relay::schedule::RetryPolicy;

/// Delivery settings from mxgate.yaml.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Simultaneous delivery connections in total.
    pub concurrency: usize,
    /// Retry schedule and queue lifetime.
    pub retry: RetryPolicy,
    /// Our host name in EHLO and DSNs.
    pub hostname: String,
}
