//! Persistent id counters (MID, ICID, DCID): never reused across restarts.
//!
//! A reservation is written in place into the counter file, never into a new file: handing
//! out ids (a DCID to deliver, an ICID to greet) must work on a completely full disk, since
//! delivering is what frees space.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// How many ids are reserved on disk at a time, so the hot path rarely touches the disk.
const BLOCK: u64 = 1000;
/// Length of the counter file's one record: the end of the reserved block, left-aligned in 20
/// characters (any u64), and a newline. Fixed, so every rewrite covers the whole previous
/// record and the file's size never changes.
const RECORD_LEN: usize = 21;

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
    /// The counter file, open for the in-place rewrites.
    file: File,
    state: Mutex<State>,
    done: Condvar,
}

/// A counter whose high-water mark is persisted before ids are handed out.
///
/// The next block is reserved in the background once half of the current one is used, so
/// handing out an id normally never waits for the disk (an fsync there would stall every
/// session of the thread that asked).
#[derive(Debug)]
pub(crate) struct IdAllocator {
    inner: Arc<Inner>,
}

impl IdAllocator {
    /// Opens (or creates) the counter file; ids continue after the last reserved block.
    ///
    /// A new file (or one in an older, shorter format) gets its full record at once, so its
    /// block is allocated while there is space and later reservations never allocate.
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        Self::open_above(path, 0)
    }

    /// Like [`IdAllocator::open`], with ids above `used` whatever the file says: a lost or
    /// restored counter must never hand out the id of a message still queued (its commit
    /// would replace that message).
    pub(crate) fn open_above(path: &Path, used: u64) -> std::io::Result<Self> {
        let existed = path.exists();
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(super::FILE_MODE)
            .open(path)?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        // Empty: new, or created by a crash before its first record (no id was handed out).
        let start = match text.lines().next().map(str::trim) {
            None | Some("") => 1,
            Some(n) => n.parse::<u64>().map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
        };
        let behind = start <= used;
        let start = start.max(used + 1);
        if text.len() != RECORD_LEN || behind {
            persist(&file, start)?;
        }
        if !existed {
            // The name must be durable too: a lost file would restart the ids at 1.
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        // Left by versions that wrote a temp file and renamed it.
        let _ = fs::remove_file(path.with_extension("tmp"));
        Ok(IdAllocator {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                file,
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
    pub(crate) fn next(&self) -> std::io::Result<u64> {
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
            let result = persist(&inner.file, until);
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
        let result = persist(&self.file, until);
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.persisting = false;
        match result {
            Ok(()) => s.reserved_until = s.reserved_until.max(until),
            Err(e) => tracing::warn!("reserving ids in {}: {e}", self.path.display()),
        }
        self.done.notify_all();
    }
}

/// Writes the reservation durably, in place: one fixed-size record at offset 0, then
/// fdatasync. Only one runs at a time per counter, and each writes a larger value than any
/// before it; the caller hands out ids of the new block only after this returned.
///
/// Why in place is crash-safe: the record (21 bytes) lies within the first 512-byte sector,
/// and a disk writes a sector whole or not at all (the guarantee journaling filesystems rely
/// on for their commit blocks); overwriting already-allocated bytes changes no metadata. So
/// after a crash the file holds the old or the new end of block, both beyond every id handed
/// out. And it needs no free space: no new file, no new block (a temp file and a rename
/// would need both, and failed on a full disk).
///
/// Left-aligned digits also keep the one write that changes the size (a file of an older
/// version, `N\n`, growing to a record) safe: if a crash keeps the new bytes but the old size,
/// they read as a number no smaller than the old one.
fn persist(file: &File, until: u64) -> std::io::Result<()> {
    let record = format!("{until:<20}\n");
    debug_assert_eq!(record.len(), RECORD_LEN);
    file.write_all_at(record.as_bytes(), 0)?;
    file.sync_data()
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

    #[test]
    fn a_counter_of_an_older_version_is_continued_and_rewritten_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mid.counter");
        fs::write(&p, "1234\n").unwrap();
        fs::write(dir.path().join("mid.tmp"), "99\n").unwrap();
        let a = IdAllocator::open(&p).unwrap();
        assert_eq!(a.next().unwrap(), 1234);
        assert_eq!(fs::read_to_string(&p).unwrap(), "2234                \n");
        assert!(!dir.path().join("mid.tmp").exists());
        // A crash that keeps the new record's bytes but the old file's size still reads a
        // value no smaller than the old one.
        for old in [1u64, 9, 999, 1234, 99_999] {
            let old_len = format!("{old}\n").len();
            persist(&File::create(&p).unwrap(), old + 1000).unwrap();
            let torn = &fs::read_to_string(&p).unwrap()[..old_len];
            fs::write(&p, torn).unwrap();
            let reopened = IdAllocator::open(&p).unwrap();
            assert!(reopened.next().unwrap() >= old, "{torn:?} < {old}");
        }
    }
}
