//! Accept loop of one listener: connection cap, draining, backoff on accept errors,
//! graceful shutdown.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::mail_log::{Event, Level};
use crate::net::bind::canonical;
use crate::net::conn::{self, ListenerContext};
use crate::policy::check::connect::{self, AcceptCtx};
use crate::policy::check::Denial;

/// What every listener shares: whether new sessions are taken (`mxgate drain` says no), and
/// how many sessions are open across listeners (a drain waits for them).
#[derive(Debug, Default)]
pub(crate) struct Admission {
    draining: AtomicBool,
    sessions: AtomicUsize,
}

impl Admission {
    /// New connections get 421 4.3.2 from now on.
    pub(crate) fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether [`Admission::drain`] was called.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Sessions open on every listener.
    pub(crate) fn sessions(&self) -> usize {
        self.sessions.load(Ordering::SeqCst)
    }
}

/// How long a connection refused while draining may take to read its 421: the refusal must
/// go out even after open sessions were closed, so it does not wait on `force_close`.
const DRAIN_REFUSAL_WRITE: Duration = Duration::from_secs(5);

/// Accepts until `stop` turns true, then waits for open sessions (they get 421 when `force_close` fires).
pub(crate) async fn serve(
    socket: TcpListener,
    current: Arc<arc_swap::ArcSwap<ListenerContext>>,
    admission: Arc<Admission>,
    mut stop: watch::Receiver<bool>,
    force_close: watch::Receiver<bool>,
) {
    // Open sessions, checked against the cap of the context current at each accept, so a
    // reloaded max_connections applies to new connections at once.
    let open = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            r = socket.accept() => r,
            _ = stop.changed() => break,
        };
        while tasks.try_join_next().is_some() {}
        // Each connection takes the configuration current at accept time (live reload).
        let ctx = current.load_full();
        let (mut stream, peer) = match accepted {
            Ok((s, peer)) => {
                backoff = Duration::from_millis(10);
                // An IPv4 client of an IPv6 socket is `::ffff:a.b.c.d`: from here on it is
                // a.b.c.d, so IPv4 HAT entries, PROXY networks and per-IP limits see it.
                (s, canonical(peer))
            }
            Err(e) => {
                // EMFILE and friends: wait instead of spinning.
                tracing::warn!("accept on {}: {e}", ctx.listener.name);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let draining = admission.is_draining();
        let permit = (!draining)
            .then(|| Slot::take(&open, ctx.listener.max_connections, &admission))
            .flatten();
        let verdict = connect::check_accept(&AcceptCtx {
            slot_free: permit.is_some(),
            max_connections: ctx.listener.max_connections,
            draining,
            hostname: &ctx.listener.hostname,
        });
        let (Some(permit), Ok(_)) = (permit, &verdict) else {
            let (level, text) = if draining {
                (
                    Level::Info,
                    format!(
                        "interface {} draining: refused {}",
                        ctx.listener.name,
                        peer.ip()
                    ),
                )
            } else {
                (
                    Level::Warning,
                    format!(
                        "interface {} max_connections {} reached: refused {}",
                        ctx.listener.name,
                        ctx.listener.max_connections,
                        peer.ip()
                    ),
                )
            };
            ctx.log.log(&Event::Note { level, text });
            // Bounded like every session write: a peer that reads nothing must not keep this
            // task, and so shutdown, waiting.
            let mut limit = ctx
                .listener
                .timeouts
                .command
                .min(ctx.listener.timeouts.session);
            let mut force = force_close.clone();
            if draining {
                limit = limit.min(DRAIN_REFUSAL_WRITE);
                // A fresh receiver that never fires: see DRAIN_REFUSAL_WRITE.
                force = watch::channel(false).1;
            }
            let mut reply = Vec::new();
            if let Err(Denial { reply: Some(r), .. }) = verdict {
                r.write_to(&mut reply);
            }
            tasks.spawn(async move {
                use tokio::io::AsyncWriteExt;
                let refuse = async {
                    stream.write_all(&reply).await?;
                    stream.shutdown().await
                };
                tokio::select! {
                    _ = tokio::time::timeout(limit, refuse) => {}
                    // Err (sender gone) never ends the write early: it would drop the 421.
                    Ok(_) = force.wait_for(|closing| *closing) => {}
                }
            });
            continue;
        };
        let local = stream.local_addr().map(canonical).unwrap_or(peer);
        let ctx = ctx.clone();
        let force = force_close.clone();
        tasks.spawn(async move {
            conn::handle(stream, peer, local, ctx, force).await;
            drop(permit);
        });
    }
    drop(socket);
    while tasks.join_next().await.is_some() {}
}

/// One open session's place under the listener's connection cap (and in the count of all
/// listeners' sessions); freed on drop.
struct Slot(Arc<AtomicUsize>, Arc<Admission>);

impl Slot {
    /// A place if fewer than `cap` sessions are open. Only the accept loop takes places, so
    /// the check and the increment need not be one atomic step.
    fn take(open: &Arc<AtomicUsize>, cap: usize, all: &Arc<Admission>) -> Option<Slot> {
        if open.load(Ordering::Acquire) >= cap {
            return None;
        }
        open.fetch_add(1, Ordering::AcqRel);
        all.sessions.fetch_add(1, Ordering::AcqRel);
        Some(Slot(open.clone(), all.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        self.1.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}
