//! The commit thread: one OS thread per spool makes messages durable, in batches.
//!
//! Sessions hand their message over a channel and await a oneshot reply. The thread takes
//! every commit pending at once and, for the batch: writes each queue file, fdatasyncs
//! them, renames each into `queue/`, then fsyncs `queue/` once and replies to every commit.
//! No blocking-pool task per commit and no leader election among waiting threads: one
//! wake-up in, one out. Removals in `queue/` (the relay's) ask for a directory fsync the
//! same way and share the batch's.
//!
//! Nobody is answered before its data's fdatasync, its rename, and a directory fsync that
//! started after that rename have all succeeded. A commit that fails anywhere gets its own
//! error and leaves nothing in `queue/`; the others of its batch go on.

use std::fs::{self, File};
use std::io;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::envelope::Envelope;

use super::commit::{header_for, Writer};
use super::error::{io, SpoolError};
use super::incoming::Incoming;
use super::{queue_file, Spool};

/// What a commit gives back: the body when it was held in memory (not spilled).
type Committed = Result<Option<Vec<u8>>, SpoolError>;

/// Work for the commit thread.
enum Job {
    /// Make a message durable.
    Commit {
        inc: Incoming,
        /// The queue file's header (first line and envelope).
        header: Vec<u8>,
        done: oneshot::Sender<Committed>,
    },
    /// A directory fsync covering renames in `queue/` made before this was sent.
    Sync {
        done: oneshot::Sender<io::Result<()>>,
    },
}

/// The spool's commit thread: jobs go in over a channel; dropping this lets the thread
/// finish what it has and waits for it.
#[derive(Debug)]
pub(super) struct Committer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    #[cfg(test)]
    pub(super) hooks: Arc<hooks::Hooks>,
}

impl Committer {
    /// Starts the thread for the spool whose `queue/` is open as `queue_dir`.
    pub(super) fn start(writer: Writer, queue_dir: File) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let (dir_tx, dir_rx) = mpsc::channel();
        let hooks = Arc::new(hooks::Hooks::default());
        let dir = DirSyncer {
            writer: writer.clone(),
            queue_dir,
            hooks: hooks.clone(),
        };
        let batcher = Batcher {
            writer,
            syncers: Syncers::start(SYNC_THREADS)?,
            hooks: hooks.clone(),
        };
        let dir_thread = std::thread::Builder::new()
            .name("mxgate-dirsync".into())
            .spawn(move || dir.run(dir_rx))?;
        let thread = std::thread::Builder::new()
            .name("mxgate-commit".into())
            .spawn(move || batcher.run(rx, dir_tx, dir_thread))?;
        Ok(Committer {
            tx: Some(tx),
            thread: Some(thread),
            #[cfg(test)]
            hooks,
        })
    }

    /// Hands `job` to the thread; when the thread is gone, removes the job's file.
    fn send(&self, job: Job) -> Result<(), SpoolError> {
        let Some(tx) = &self.tx else {
            return Err(SpoolError::Stopped);
        };
        tx.send(job).map_err(|e| {
            if let Job::Commit { inc, .. } = e.0 {
                let _ = fs::remove_file(&inc.tmp);
            }
            SpoolError::Stopped
        })
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Threads that fdatasync a batch's files, the commit thread included. Concurrent
/// fdatasyncs share the disk's cache flushes; on the 2-core development VM (BENCHMARKS.md,
/// issue 16) one thread reached half the rate of four, and eight were no faster than four.
const SYNC_THREADS: usize = 4;

/// A copy of `e` for each of the jobs that share it.
fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

impl Spool {
    /// Makes the message durable: its queue file is written, fdatasynced, renamed into
    /// `queue/`, and the directory fsynced, by the commit thread together with every other
    /// commit pending (the future only waits). On error nothing is left in `queue/`.
    ///
    /// Resolves to the body when it was held in memory (not spilled), so the relay can send
    /// it without reading it back from disk. The job is handed over at once, not when the
    /// future is first polled.
    pub fn commit_async(
        &self,
        inc: Incoming,
        env: &Envelope,
    ) -> impl std::future::Future<Output = Committed> + Send + 'static {
        let (done, rx) = oneshot::channel();
        let sent = self.submit(inc, env, done);
        async move {
            sent?;
            rx.await.map_err(|_| SpoolError::Stopped)?
        }
    }

    /// [`Spool::commit_async`], blocking until it is done: for blocking threads (not the
    /// runtime's).
    pub fn commit(&self, inc: Incoming, env: &Envelope) -> Committed {
        let (done, rx) = oneshot::channel();
        self.submit(inc, env, done)?;
        rx.blocking_recv().map_err(|_| SpoolError::Stopped)?
    }

    fn submit(
        &self,
        inc: Incoming,
        env: &Envelope,
        done: oneshot::Sender<Committed>,
    ) -> Result<(), SpoolError> {
        let header = header_for(&inc, env);
        self.committer.send(Job::Commit { inc, header, done })
    }

    /// Fsyncs `queue/` (blocking), sharing the fsync with the commits under way: returns
    /// once an fsync that started after the call succeeded. Files recycled before the call
    /// are reusable from then on.
    pub fn sync_queue_dir(&self) -> Result<(), SpoolError> {
        let (done, rx) = oneshot::channel();
        self.committer.send(Job::Sync { done })?;
        let result = rx.blocking_recv().map_err(|_| SpoolError::Stopped)?;
        result.map_err(io("fsync directory", &self.queue_dir()))
    }
}

/// The commit thread's state: it writes, fdatasyncs and renames; the directory thread
/// ([`DirSyncer`]) fsyncs `queue/` and replies, while this one goes on with the next batch.
struct Batcher {
    writer: Writer,
    syncers: Syncers,
    hooks: Arc<hooks::Hooks>,
}

/// A commit of the batch whose file is written.
struct Written {
    inc: Incoming,
    done: oneshot::Sender<Committed>,
    src: std::path::PathBuf,
}

/// What the directory thread gets from one batch: commits renamed into `queue/`, and the
/// waiters of removals.
struct Renamed {
    commits: Vec<Written>,
    syncs: Vec<oneshot::Sender<io::Result<()>>>,
}

impl Batcher {
    fn run(
        mut self,
        rx: mpsc::Receiver<Job>,
        tx: mpsc::Sender<Renamed>,
        dir_thread: JoinHandle<()>,
    ) {
        while let Ok(first) = rx.recv() {
            #[cfg(test)]
            let gate = self.hooks.gate.lock().unwrap_or_else(|e| e.into_inner());
            let mut jobs = vec![first];
            jobs.extend(rx.try_iter());
            #[cfg(test)]
            drop(gate);
            let renamed = self.batch(jobs);
            if !(renamed.commits.is_empty() && renamed.syncs.is_empty()) {
                let _ = tx.send(renamed);
            }
        }
        drop(tx);
        let _ = dir_thread.join();
    }

    /// One batch: write every file, fdatasync them, rename each into `queue/`.
    fn batch(&mut self, jobs: Vec<Job>) -> Renamed {
        let mut syncs = Vec::new();
        let mut written = Vec::new();
        let mut files = Vec::new();
        for job in jobs {
            match job {
                Job::Sync { done } => syncs.push(done),
                Job::Commit {
                    mut inc,
                    header,
                    done,
                } => match self.writer.write(&mut inc, &header) {
                    Ok((file, src)) => {
                        files.push(file);
                        written.push(Written { inc, done, src });
                    }
                    Err(e) => fail(&self.writer, inc, done, e, &self.hooks),
                },
            }
        }
        // The data and what is needed to read it back (the size); the name is made durable
        // by the directory fsync after the rename.
        let synced = self.syncers.sync_data(files);
        let mut commits = Vec::new();
        for (w, result) in written.into_iter().zip(synced) {
            let dst = queue_file::path(&self.writer.queue_dir, w.inc.mid);
            let result = result
                .map_err(io("fsync", &w.src))
                .and_then(|()| fs::rename(&w.src, &dst).map_err(io("rename", &dst)));
            match result {
                Ok(()) => {
                    self.hooks.step(hooks::Step::Renamed(w.inc.mid));
                    commits.push(w);
                }
                Err(e) => fail(&self.writer, w.inc, w.done, e, &self.hooks),
            }
        }
        Renamed { commits, syncs }
    }
}

/// The directory thread: one fsync of `queue/` for everything renamed since the last one.
struct DirSyncer {
    writer: Writer,
    queue_dir: File,
    hooks: Arc<hooks::Hooks>,
}

impl DirSyncer {
    fn run(self, rx: mpsc::Receiver<Renamed>) {
        while let Ok(first) = rx.recv() {
            let mut batches = vec![first];
            batches.extend(rx.try_iter());
            self.sync(batches);
        }
    }

    fn sync(&self, batches: Vec<Renamed>) {
        // Started after every rename of these batches, and after every file recycled so far
        // left `queue/`.
        let covered = self.writer.pool.covered();
        self.hooks.step(hooks::Step::DirSyncStarted);
        let result = self.queue_dir.sync_all();
        self.hooks.step(hooks::Step::DirSyncDone(result.is_ok()));
        self.writer.pool.synced(covered, result.is_ok());
        for b in batches {
            for mut w in b.commits {
                match &result {
                    Ok(()) => {
                        self.hooks.step(hooks::Step::Replied(w.inc.mid));
                        let body = (!w.inc.spilled).then(|| std::mem::take(&mut w.inc.buf));
                        let _ = w.done.send(Ok(body));
                    }
                    Err(e) => {
                        let e = io("fsync directory", &self.writer.queue_dir)(copy_error(e));
                        fail(&self.writer, w.inc, w.done, e, &self.hooks);
                    }
                }
            }
            for done in b.syncs {
                let _ = done.send(result.as_ref().map(|_| ()).map_err(copy_error));
            }
        }
    }
}

/// Tells a commit it failed, after removing its files.
fn fail(
    writer: &Writer,
    inc: Incoming,
    done: oneshot::Sender<Committed>,
    e: SpoolError,
    hooks: &hooks::Hooks,
) {
    writer.clean_up(&inc);
    hooks.step(hooks::Step::Failed(inc.mid));
    let _ = done.send(Err(e));
}

/// The threads that fdatasync a batch's files: the commit thread and `n - 1` helpers.
struct Syncers {
    helpers: Vec<mpsc::Sender<Arc<SyncBatch>>>,
    done: mpsc::Receiver<()>,
}

/// Files to fdatasync, taken one at a time by whichever thread is free.
struct SyncBatch {
    files: Vec<File>,
    next: std::sync::atomic::AtomicUsize,
    results: std::sync::Mutex<Vec<Option<io::Result<()>>>>,
}

impl SyncBatch {
    fn work(&self) {
        use std::sync::atomic::Ordering;
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(f) = self.files.get(i) else {
                return;
            };
            let r = f.sync_data();
            self.results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
        }
    }
}

impl Syncers {
    fn start(n: usize) -> io::Result<Self> {
        let (done_tx, done) = mpsc::channel();
        let mut helpers = Vec::new();
        for _ in 1..n {
            let (tx, rx) = mpsc::channel::<Arc<SyncBatch>>();
            let done_tx = done_tx.clone();
            std::thread::Builder::new()
                .name("mxgate-sync".into())
                .spawn(move || {
                    while let Ok(b) = rx.recv() {
                        b.work();
                        drop(b);
                        let _ = done_tx.send(());
                    }
                })?;
            helpers.push(tx);
        }
        Ok(Syncers { helpers, done })
    }

    /// fdatasyncs every file, in parallel when there are helpers; one result per file.
    fn sync_data(&self, files: Vec<File>) -> Vec<io::Result<()>> {
        let engaged = self.helpers.len().min(files.len().saturating_sub(1));
        if engaged == 0 {
            return files.iter().map(File::sync_data).collect();
        }
        let n = files.len();
        let batch = Arc::new(SyncBatch {
            files,
            next: 0.into(),
            results: std::sync::Mutex::new((0..n).map(|_| None).collect()),
        });
        for tx in &self.helpers[..engaged] {
            let _ = tx.send(batch.clone());
        }
        batch.work();
        for _ in 0..engaged {
            let _ = self.done.recv();
        }
        let mut results = batch.results.lock().unwrap_or_else(|e| e.into_inner());
        results
            .iter_mut()
            .map(|r| {
                r.take()
                    .unwrap_or_else(|| Err(io::Error::other("not synced")))
            })
            .collect()
    }
}

pub(super) mod hooks {
    //! What the tests see of the commit thread: the order of its steps, and a gate that
    //! holds it before it takes a batch. Outside tests, nothing.

    /// One step of the commit or directory thread.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Step {
        Renamed(u64),
        DirSyncStarted,
        DirSyncDone(bool),
        Replied(u64),
        Failed(u64),
    }

    /// Records the steps (tests only).
    #[derive(Debug, Default)]
    pub(crate) struct Hooks {
        #[cfg(test)]
        pub(crate) steps: std::sync::Mutex<Vec<Step>>,
        /// Held by a test: the commit thread waits before taking the jobs pending.
        #[cfg(test)]
        pub(crate) gate: std::sync::Mutex<()>,
    }

    impl Hooks {
        #[cfg_attr(not(test), allow(clippy::unused_self))]
        pub(crate) fn step(&self, _s: Step) {
            #[cfg(test)]
            self.steps.lock().unwrap().push(_s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::hooks::Step;
    use super::*;
    use crate::spool::incoming::SPILL_AT;
    use crate::spool::tests::env;

    fn pos(steps: &[Step], s: Step) -> usize {
        steps
            .iter()
            .position(|x| *x == s)
            .unwrap_or_else(|| panic!("no {s:?} in {steps:?}"))
    }

    /// `mid` was answered only after a directory fsync that began after its rename and
    /// succeeded.
    fn durable_before_reply(steps: &[Step], mid: u64) {
        let renamed = pos(steps, Step::Renamed(mid));
        let replied = pos(steps, Step::Replied(mid));
        let started = renamed
            + steps[renamed..]
                .iter()
                .position(|s| *s == Step::DirSyncStarted)
                .expect("a directory fsync after the rename");
        let done = started
            + steps[started..]
                .iter()
                .position(|s| matches!(s, Step::DirSyncDone(_)))
                .expect("the fsync ends");
        assert_eq!(steps[done], Step::DirSyncDone(true), "MID {mid}: {steps:?}");
        assert!(
            done < replied,
            "MID {mid} answered before its fsync: {steps:?}"
        );
    }

    /// Commits pending together form one batch: every file written, fdatasynced and renamed,
    /// one directory fsync, then every reply. A commit whose file cannot be written, and one
    /// whose rename fails, get their own errors and leave nothing in queue/; the rest of the
    /// batch is committed.
    #[test]
    fn a_batch_shares_one_directory_fsync_and_an_error_fails_only_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let hooks = spool.committer.hooks.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut pending = Vec::new();
        let (mut cannot_write, mut cannot_rename) = (0, 0);
        let gate = hooks.gate.lock().unwrap();
        for i in 0..24 {
            let mid = spool.next_mid().unwrap();
            let body: Vec<u8> = if i % 4 == 3 {
                vec![b'L'; SPILL_AT + 100 * i]
            } else {
                format!("message {i}\r\n").into_bytes()
            };
            let mut inc = spool.begin(mid);
            inc.write(&body).unwrap();
            if i == 5 {
                // Its file in tmp/ cannot be created: something is in the way.
                fs::write(dir.path().join("tmp").join(format!("{mid}.mail")), b"x").unwrap();
                cannot_write = mid;
            }
            if i == 9 {
                // Its rename cannot happen: a directory holds its name in queue/.
                fs::create_dir_all(spool.message_path(mid).join("x")).unwrap();
                cannot_rename = mid;
            }
            pending.push((mid, body, spool.commit_async(inc, &env(mid))));
        }
        drop(gate);
        let mut committed = Vec::new();
        for (mid, body, commit) in pending {
            let result = rt.block_on(commit);
            if mid == cannot_write || mid == cannot_rename {
                let e = result.unwrap_err().to_string();
                let op = if mid == cannot_write {
                    "create"
                } else {
                    "rename"
                };
                assert!(e.starts_with(op), "MID {mid}: {e}");
                assert!(!spool.message_path(mid).is_file());
                continue;
            }
            let in_memory = result.unwrap();
            assert_eq!(in_memory.is_some(), body.len() <= SPILL_AT);
            let q = spool.read_queued(mid).unwrap();
            assert_eq!((q.env, q.size), (env(mid), body.len() as u64));
            committed.push(mid);
        }
        let steps = hooks.steps.lock().unwrap().clone();
        let fsyncs = steps.iter().filter(|s| **s == Step::DirSyncStarted).count();
        assert_eq!(fsyncs, 1, "{steps:?}");
        assert_eq!(committed.len(), 22);
        for mid in committed {
            durable_before_reply(&steps, mid);
        }
        assert!(steps.contains(&Step::Failed(cannot_write)));
        assert!(steps.contains(&Step::Failed(cannot_rename)));
        // Nothing of the failed commits stays in tmp/ (the file in the way was theirs).
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    /// Many threads committing at once: each is answered after a directory fsync begun after
    /// its rename, and the fsyncs are shared.
    #[test]
    fn concurrent_commits_each_wait_for_a_directory_fsync_after_their_rename() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let spool = spool.clone();
                std::thread::spawn(move || {
                    for _ in 0..15 {
                        let mid = spool.next_mid().unwrap();
                        let mut inc = spool.begin(mid);
                        inc.write(b"hello\r\n").unwrap();
                        spool.commit(inc, &env(mid)).unwrap();
                        // Durable when answered: a removal may follow at once.
                        if mid.is_multiple_of(3) {
                            spool.remove_message(mid);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let steps = spool.committer.hooks.steps.lock().unwrap().clone();
        let replies = steps
            .iter()
            .filter(|s| matches!(s, Step::Replied(_)))
            .count();
        assert_eq!(replies, 180);
        for s in &steps {
            if let Step::Replied(mid) = s {
                durable_before_reply(&steps, *mid);
            }
        }
        let fsyncs = steps.iter().filter(|s| **s == Step::DirSyncStarted).count();
        assert!(fsyncs <= 180 + 60, "{fsyncs} directory fsyncs");
        assert_eq!(spool.queued_mids().len(), 120);
    }
}
