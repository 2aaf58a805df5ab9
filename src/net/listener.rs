//! Accept loop of one listener: connection cap, backoff on accept errors, graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::mail_log::{Event, Level};
use crate::net::bind::canonical;
use crate::net::conn::{self, ListenerContext};
use crate::policy::check::connect::{self, AcceptCtx};
use crate::policy::check::Denial;

/// Accepts until `stop` turns true, then waits for open sessions (they get 421 when `force_close` fires).
pub(crate) async fn serve(
    socket: TcpListener,
    current: Arc<arc_swap::ArcSwap<ListenerContext>>,
    mut stop: watch::Receiver<bool>,
    force_close: watch::Receiver<bool>,
) {
    // The connection cap is fixed at start (a changed max_connections needs a restart).
    let cap = Arc::new(Semaphore::new(current.load().listener.max_connections));
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
        let permit = cap.clone().try_acquire_owned().ok();
        let verdict = connect::check_accept(&AcceptCtx {
            slot_free: permit.is_some(),
            max_connections: ctx.listener.max_connections,
        });
        let (Some(permit), Ok(_)) = (permit, &verdict) else {
            ctx.log.log(&Event::Note {
                level: Level::Warning,
                text: format!(
                    "interface {} max_connections {} reached: refused {}",
                    ctx.listener.name,
                    ctx.listener.max_connections,
                    peer.ip()
                ),
            });
            // Bounded like every session write: a peer that reads nothing must not keep this
            // task, and so shutdown, waiting.
            let limit = ctx
                .listener
                .timeouts
                .command
                .min(ctx.listener.timeouts.session);
            let mut force = force_close.clone();
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
                    _ = force.wait_for(|closing| *closing) => {}
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
