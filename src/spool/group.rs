//! Group commit of the spool's `queue/` directory fsync.
//!
//! Every commit renames its files into `queue/` and then needs a directory fsync before its
//! `250`. One fsync covers every rename that completed before it started, so concurrent
//! commits share it: the first committer to arrive while no fsync runs becomes the leader,
//! fsyncs once for everybody who is waiting, and wakes them; who arrives during that fsync
//! waits for the next one (its rename may have missed the running one). Nobody returns
//! before an fsync that started after its own rename has completed successfully.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::sync::{Condvar, Mutex};

#[derive(Debug, Default)]
struct State {
    /// Tickets handed out: one per commit whose renames are done.
    issued: u64,
    /// Every ticket below this is covered by a finished fsync.
    durable: u64,
    /// An fsync is running.
    running: bool,
    /// Rounds that failed and still have waiters to tell.
    failures: VecDeque<Failure>,
}

#[derive(Debug)]
struct Failure {
    /// Tickets `[from, to)` the failed fsync was to cover.
    from: u64,
    to: u64,
    /// Waiters of the round that have not been told yet.
    untold: u64,
    kind: io::ErrorKind,
    text: String,
}

/// Shared by all commits of one spool.
#[derive(Debug)]
pub(super) struct DirSync {
    dir: File,
    state: Mutex<State>,
    cv: Condvar,
}

impl DirSync {
    /// Group commit for the directory `dir` (kept open for the spool's lifetime).
    pub(super) fn new(dir: File) -> Self {
        DirSync {
            dir,
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        }
    }

    /// Returns once an fsync of the directory that started after this call has succeeded
    /// (blocking; call it after the renames it must cover).
    pub(super) fn sync(&self) -> io::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = s.issued;
        s.issued += 1;
        loop {
            if s.durable > ticket {
                let Some(i) = s
                    .failures
                    .iter()
                    .position(|f| (f.from..f.to).contains(&ticket))
                else {
                    return Ok(());
                };
                let f = &mut s.failures[i];
                let err = io::Error::new(f.kind, f.text.clone());
                f.untold -= 1;
                if f.untold == 0 {
                    s.failures.remove(i);
                }
                return Err(err);
            }
            if s.running {
                s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // Leader: cover every ticket issued so far, ours included.
            s.running = true;
            let (from, to) = (s.durable, s.issued);
            drop(s);
            let result = self.dir.sync_all();
            s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.running = false;
            s.durable = to;
            if let Err(e) = result {
                s.failures.push_back(Failure {
                    from,
                    to,
                    untold: to - from,
                    kind: e.kind(),
                    text: e.to_string(),
                });
            }
            self.cv.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn concurrent_commits_share_fsyncs_and_all_return() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Arc::new(DirSync::new(File::open(dir.path()).unwrap()));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let ds = ds.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        ds.sync().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = ds.state.lock().unwrap();
        assert_eq!(s.issued, 320);
        assert_eq!(s.durable, 320);
        assert!(!s.running);
    }
}
