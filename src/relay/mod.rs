//! Relay to the internal mail server: queue manager, SMTP client, outbound TLS, retries, DSNs.
//!
//! # Tasks and channels
//! - **The queue manager** (`queue::QueueManager::run`, one task, spawned by `app`) owns the
//!   queue: every queued message with its delivery state, the due index and the lanes of
//!   jobs per destination, all in a `queue::QueueState`. It decides nothing itself: it
//!   reads the clock, passes commands and results to the `QueueState` and carries out the
//!   `queue::Effect`s that come back, in order.
//! - **One delivery task per connection** (`worker::deliver_batch_guarded`, in the manager's
//!   `JoinSet`; it runs the delivery in an inner task of its own so that a panic hands back
//!   every job). It owns the SMTP connection (`client`) and ends with the results it could
//!   not report.
//! - **The control socket** ([`control::serve`], one task plus one per connection) turns
//!   `retry`, `delete` and `bounce` into commands and waits for their answer (the
//!   recipient-validation verbs go to `validate::control`).
//!
//! Channels, all to the manager unless said otherwise:
//! - `queue::Command` over an unbounded mpsc, sent through a `queue::QueueHandle`:
//!   `Enqueued` by the connection tasks of the inbound side after each commit (with envelope
//!   and body), `Retry`/`Delete`/`Bounce` by the control socket (answered on a oneshot),
//!   `Reconfigure` by `app` on a reload.
//! - Reported results (`(domain, JobResult)`, an unbounded mpsc): from a delivery task as
//!   each transaction ends, so an accepted message is recorded while its connection is open.
//! - The end of a delivery task (the `JoinSet`): its remaining results; the lane gets its
//!   connection slot back.
//! - `worker::Feed` (shared memory under a mutex), manager → open connection: further jobs
//!   for a connection that is already open, up to `max_messages_per_connection`.
//! - A `watch` from `app`: stop (deliveries in flight finish first).
//!
//! # Where fsync happens
//! Never on a runtime thread. Inbound commits run on the blocking pool from the connection
//! tasks (`spool::Spool::commit`: one fdatasync of the message's one file, the directory
//! fsync shared by concurrent commits). The manager runs its blocking effects on the
//! blocking pool and waits for each before the next (state saves in `state`, not flushed,
//! see there; message removals; DSN and alert commits in `bounce`), except the removal of
//! delivered messages, whose directory fsync nobody waits for. The order that makes this durable is written at
//! the manager's effect executor and in docs/delivery.md.

pub(crate) mod bounce;
pub mod client;
pub mod control;
pub(crate) mod dsn;
pub(crate) mod mx;
pub mod outbound_tls;
pub(crate) mod queue;
pub(crate) mod schedule;
pub(crate) mod state;
pub(crate) mod worker;
