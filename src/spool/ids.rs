//! Persistent id counters (MID, ICID, DCID): never reused across restarts.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// How many ids are reserved on disk at a time, so the hot path rarely touches the disk.
const BLOCK: u64 = 1000;

#[derive(Debug)]
struct State {
    next: u64,
    reserved_until: u64,
    /// A reservation is being written (at most one at a time).
    persisting: bool,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    state: Mutex<State>,
    done: Condvar,
}

/// A counter whose high-water mark is persisted before ids are handed out.
///
/// The next block is reserved in the background once half of the current one is used, so
/// handing out an id normally never waits for the disk (an fsync there would stall every
/// session of the thread that asked).
#[derive(Debug)]
pub struct IdAllocator {
    inner: Arc<Inner>,
}

impl IdAllocator {
    /// Opens (or creates) the counter file; ids continue after the last reserved block.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let start = match fs::read_to_string(path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(e),
        };
        Ok(IdAllocator {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                state: Mutex::new(State {
                    next: start,
                    reserved_until: start,
                    persisting: false,
                }),
                done: Condvar::new(),
            }),
        })
    }

    /// The next id. Fails only when the reservation cannot be written.
    pub fn next(&self) -> std::io::Result<u64> {
        let inner = &self.inner;
        let mut s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if s.next < s.reserved_until {
                let id = s.next;
                s.next += 1;
                if !s.persisting && s.reserved_until - s.next < BLOCK / 2 {
                    // Reserve the following block ahead of time, off this thread.
                    s.persisting = true;
                    let until = s.reserved_until + BLOCK;
                    let bg = inner.clone();
                    let spawned = std::thread::Builder::new()
                        .name("mxgate-ids".into())
                        .spawn(move || bg.reserve(until));
                    if spawned.is_err() {
                        s.persisting = false;
                    }
                }
                return Ok(id);
            }
            if s.persisting {
                s = inner.done.wait(s).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // The block is used up and nothing is being reserved: reserve here and wait.
            s.persisting = true;
            let until = s.next + BLOCK;
            drop(s);
            let result = persist(&inner.path, until);
            s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            s.persisting = false;
            inner.done.notify_all();
            result?;
            s.reserved_until = s.reserved_until.max(until);
        }
    }
}

impl Drop for IdAllocator {
    /// Waits for a background reservation, so no writer outlives the allocator (a new one
    /// opened on the same file must never race an old one's write).
    fn drop(&mut self) {
        let mut s = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.persisting {
            s = self.inner.done.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Inner {
    /// Background reservation; on failure the next exhausted block retries in the
    /// foreground and reports the error.
    fn reserve(&self, until: u64) {
        let result = persist(&self.path, until);
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.persisting = false;
        match result {
            Ok(()) => s.reserved_until = s.reserved_until.max(until),
            Err(e) => tracing::warn!("reserving ids in {}: {e}", self.path.display()),
        }
        self.done.notify_all();
    }
}

/// Writes the reservation durably: tmp file, fsync, rename, fsync the directory. Only one
/// runs at a time per counter, and each writes a larger value than any before it.
fn persist(path: &Path, until: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(super::FILE_MODE)
        .open(&tmp)?;
    writeln!(f, "{until}")?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_survive_restart_and_never_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mid");
        let a = IdAllocator::open(&p).unwrap();
        let first: Vec<u64> = (0..5).map(|_| a.next().unwrap()).collect();
        assert_eq!(first, vec![1, 2, 3, 4, 5]);
        drop(a);
        let b = IdAllocator::open(&p).unwrap();
        let n = b.next().unwrap();
        assert!(n > 5, "{n}");
    }

    #[test]
    fn ids_stay_unique_across_blocks_and_threads_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mid");
        let a = Arc::new(IdAllocator::open(&p).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let a = a.clone();
                std::thread::spawn(move || (0..1500).map(|_| a.next().unwrap()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 6000);
        let max = *all.last().unwrap();
        // Every handed-out id is below the persisted reservation.
        let persisted: u64 = fs::read_to_string(&p).unwrap().trim().parse().unwrap();
        assert!(persisted > max, "{persisted} <= {max}");
        drop(a);
        let b = IdAllocator::open(&p).unwrap();
        assert!(b.next().unwrap() > max);
    }
}
