//! The second `fdatasync` of a commit runs on a helper thread of the spool's own.
//!
//! Commits run on tokio's blocking pool. Handing the second fsync to that same pool and
//! waiting for it deadlocks once every blocking thread is a commit waiting for its fsync
//! task, which can never start. The helpers here wait for nothing but the disk; when all of
//! them are busy, the commit syncs its two files one after the other.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, SendError, Sender, SyncSender};
use std::sync::Mutex;

/// Helper threads at most; more concurrent commits sync sequentially.
const MAX_HELPERS: usize = 64;

type Job = (File, SyncSender<io::Result<()>>);

/// Idle helper threads, each fed through its own channel (dropping it ends the thread).
#[derive(Debug, Default)]
pub(super) struct Flusher {
    idle: Mutex<Vec<Sender<Job>>>,
    spawned: AtomicUsize,
}

impl Flusher {
    /// fdatasyncs both files: `b` on a helper while this thread syncs `a`.
    pub(super) fn sync_both(&self, a: File, b: File) -> (io::Result<()>, io::Result<()>) {
        let Some(helper) = self.helper() else {
            return (a.sync_data(), b.sync_data());
        };
        let (tx, rx) = sync_channel(1);
        if let Err(SendError((b, _))) = helper.send((b, tx)) {
            return (a.sync_data(), b.sync_data());
        }
        let first = a.sync_data();
        let second = rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("fsync helper thread lost")));
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(helper);
        (first, second)
    }

    /// An idle helper, or a new one while fewer than [`MAX_HELPERS`] exist.
    fn helper(&self) -> Option<Sender<Job>> {
        if let Some(h) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Some(h);
        }
        if self.spawned.fetch_add(1, Ordering::Relaxed) >= MAX_HELPERS {
            self.spawned.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let (tx, rx) = channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("mxgate-fsync".into())
            .spawn(move || {
                while let Ok((file, done)) = rx.recv() {
                    let _ = done.send(file.sync_data());
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(_) => {
                self.spawned.fetch_sub(1, Ordering::Relaxed);
                None
            }
        }
    }
}
