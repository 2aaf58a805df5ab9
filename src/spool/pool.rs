//! The free-file pool: files of finished messages kept in `free/` to be overwritten by new
//! messages, which saves allocating and freeing an inode per file.
//!
//! The pool must never cost a message or readiness: it is bounded by bytes as well as by
//! count, it keeps nothing while the filesystem is short of space, and whoever runs short
//! of space (a write failing with ENOSPC, `/ready`) empties it first.

use std::collections::VecDeque;
use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Recycled files kept at most.
const MAX_FILES: usize = 4096;
/// Bytes (allocated on disk) the pool keeps at most.
pub(super) const MAX_BYTES: u64 = 64 << 20;
/// How long a free-space reading is trusted before recycling asks the filesystem again.
const SPACE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// A recycled file: its number in `free/`, length and allocated bytes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    n: u64,
    /// Content length: a reuse writing less must cut it.
    pub len: u64,
    size: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Reusable files, oldest first.
    reusable: VecDeque<Entry>,
    /// Renamed into `free/` but not yet covered by a `queue/` directory fsync: until then a
    /// crash may bring back the name in `queue/`, so the file must not be overwritten.
    pending: Vec<Entry>,
    /// Allocated bytes of every file in `free/` (reusable and pending).
    bytes: u64,
    /// The last number given to a file in `free/`.
    last: u64,
    /// When free space was last found short, or ample.
    space_checked: Option<(Instant, bool)>,
}

/// The pool of `free/`.
#[derive(Debug)]
pub(super) struct Pool {
    dir: PathBuf,
    state: Mutex<State>,
    /// Free bytes the filesystem must keep beyond the pool's bound for the pool to hold data.
    keep_free: AtomicU64,
    max_bytes: u64,
}

/// Files recycled before a directory fsync started, released when it succeeded.
#[derive(Debug)]
pub(super) struct Covered(Vec<Entry>);

impl Pool {
    /// The pool of the (emptied) directory `dir`.
    pub(super) fn new(dir: PathBuf) -> Self {
        Self::bounded(dir, MAX_BYTES)
    }

    fn bounded(dir: PathBuf, max_bytes: u64) -> Self {
        Pool {
            dir,
            state: Mutex::new(State::default()),
            keep_free: AtomicU64::new(0),
            max_bytes,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool keeps data only while the filesystem has `bytes` free beyond its bound.
    pub(super) fn keep_free(&self, bytes: u64) {
        self.keep_free.store(bytes, Ordering::Relaxed);
    }

    /// Path of file `n`.
    pub(super) fn path(&self, n: u64) -> PathBuf {
        self.dir.join(n.to_string())
    }

    /// Takes the oldest reusable file.
    pub(super) fn take(&self) -> Option<(PathBuf, Entry)> {
        let mut s = self.state();
        let e = s.reusable.pop_front()?;
        s.bytes = s.bytes.saturating_sub(e.size);
        drop(s);
        Some((self.path(e.n), e))
    }

    /// A reusable file opened for writing, its path and its length; files that cannot be
    /// reused are deleted on the way. A recycled file is reused only as a regular file of
    /// ours (no symlink followed) and with our mode, whatever it was left with.
    pub(super) fn take_open(&self) -> Option<(fs::File, PathBuf, u64)> {
        while let Some((p, e)) = self.take() {
            let opened = fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p)
                .and_then(super::private_file);
            match opened {
                Ok(f) => return Some((f, p, e.len)),
                Err(_) => {
                    let _ = fs::remove_file(&p);
                }
            }
        }
        None
    }

    /// Moves the file of a finished message at `path` into `free/` (reusable after the next
    /// directory fsync), or deletes it when the pool is full or space is short. False when
    /// there was no file at `path`.
    pub(super) fn recycle(&self, path: &Path) -> bool {
        let meta = fs::symlink_metadata(path);
        if meta.is_err() {
            return false;
        }
        let short = self.space_short();
        let n = {
            let mut s = self.state();
            match &meta {
                Ok(m) if !short && m.file_type().is_file() => {
                    let size = m.blocks() * 512;
                    let files = s.reusable.len() + s.pending.len();
                    if files >= MAX_FILES || s.bytes + size > self.max_bytes {
                        None
                    } else {
                        s.last += 1;
                        s.bytes += size;
                        Some(Entry {
                            n: s.last,
                            len: m.len(),
                            size,
                        })
                    }
                }
                _ => None,
            }
        };
        if short {
            self.drain();
        }
        let Some(e) = n else {
            let _ = fs::remove_file(path);
            return true;
        };
        if fs::rename(path, self.path(e.n)).is_ok() {
            self.state().pending.push(e);
        } else {
            let mut s = self.state();
            s.bytes = s.bytes.saturating_sub(e.size);
        }
        true
    }

    /// Files a directory fsync starting now covers.
    pub(super) fn covered(&self) -> Covered {
        Covered(std::mem::take(&mut self.state().pending))
    }

    /// After the directory fsync: `covered` becomes reusable when it succeeded, else waits
    /// for the next one.
    pub(super) fn synced(&self, covered: Covered, ok: bool) {
        let mut s = self.state();
        if ok {
            s.reusable.extend(covered.0);
        } else {
            s.pending.extend(covered.0);
        }
    }

    /// Deletes every reusable file (space is short); returns the bytes given back.
    pub(super) fn drain(&self) -> u64 {
        let drained: Vec<Entry> = {
            let mut guard = self.state();
            let s = &mut *guard;
            let all: Vec<Entry> = s.reusable.drain(..).collect();
            let freed: u64 = all.iter().map(|e| e.size).sum();
            s.bytes = s.bytes.saturating_sub(freed);
            all
        };
        for e in &drained {
            let _ = fs::remove_file(self.path(e.n));
        }
        drained.iter().map(|e| e.size).sum()
    }

    /// True when the filesystem has less free than `keep_free` plus the pool's bound (read
    /// at most every [`SPACE_CHECK_EVERY`]).
    fn space_short(&self) -> bool {
        if let Some((at, short)) = self.state().space_checked {
            if at.elapsed() < SPACE_CHECK_EVERY {
                return short;
            }
        }
        let need = self
            .keep_free
            .load(Ordering::Relaxed)
            .saturating_add(self.max_bytes);
        let short = crate::metrics::free_space(&self.dir).map_or(true, |f| f.bytes < need);
        self.state().space_checked = Some((Instant::now(), short));
        short
    }

    /// Bytes held in `free/`.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.state().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, len: usize) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, vec![b'x'; len]).unwrap();
        p
    }

    #[test]
    fn the_pool_is_bounded_by_bytes_and_released_after_the_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let free = dir.path().join("free");
        fs::create_dir(&free).unwrap();
        let pool = Pool::bounded(free.clone(), 48 << 10);
        for i in 0..4 {
            assert!(pool.recycle(&file(dir.path(), &format!("{i}.mail"), 20 << 10)));
        }
        // Two 20 KiB files fit in 48 KiB; the others were deleted.
        assert_eq!(fs::read_dir(&free).unwrap().count(), 2);
        assert!(pool.bytes() <= 48 << 10, "{}", pool.bytes());
        assert!(pool.take().is_none(), "reusable before the fsync");
        assert!(!pool.recycle(&dir.path().join("absent.mail")));
        let c = pool.covered();
        pool.synced(c, true);
        let (p, e) = pool.take().unwrap();
        assert_eq!(e.len, 20 << 10);
        assert!(p.starts_with(&free));
        // Space is short: the rest is deleted.
        assert!(pool.drain() > 0);
        assert_eq!(pool.bytes(), 0);
        assert_eq!(
            fs::read_dir(&free).unwrap().count(),
            1,
            "only the one taken"
        );
    }
}
