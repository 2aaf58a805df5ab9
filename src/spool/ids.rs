//! Persistent id counters (MID, ICID, DCID): never reused across restarts.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How many ids are reserved on disk at a time, so the hot path rarely touches the disk.
const BLOCK: u64 = 1000;

#[derive(Debug)]
struct State {
    next: u64,
    reserved_until: u64,
}

/// A counter whose high-water mark is persisted before ids are handed out.
#[derive(Debug)]
pub struct IdAllocator {
    path: PathBuf,
    state: Mutex<State>,
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
        let alloc = IdAllocator {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                next: start,
                reserved_until: start,
            }),
        };
        Ok(alloc)
    }

    fn persist(&self, until: u64) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        writeln!(f, "{until}")?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The next id. Fails only when the reservation cannot be written.
    pub fn next(&self) -> std::io::Result<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.next >= s.reserved_until {
            let until = s.next + BLOCK;
            self.persist(until)?;
            s.reserved_until = until;
        }
        let id = s.next;
        s.next += 1;
        Ok(id)
    }
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
}
