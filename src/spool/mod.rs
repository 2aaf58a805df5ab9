//! Durable spool: write a file, fsync, rename into `queue/`, fsync the directory, then 250.
//!
//! Files of finished messages are recycled rather than deleted: they are renamed into
//! `free/` and later overwritten (and truncated) for new messages. Creating and deleting
//! two files per message was the largest CPU cost of the accept path (inode allocation,
//! especially on ext4 without a journal, which scans recently freed inodes); reusing
//! them costs a rename. `free/` holds nothing of value and is emptied at start-up.

pub(crate) mod envelope;
mod error;
mod fsync;
mod group;
pub(crate) mod ids;
mod incoming;
pub mod lock;
mod pool;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::envelope::Envelope;

use error::io;
pub use error::SpoolError;
use fsync::Flusher;
use group::DirSync;
use ids::IdAllocator;
pub use incoming::Incoming;
use pool::Pool;

/// Mode of the spool's directories: only the server's user may enter them.
const DIR_MODE: u32 = 0o700;
/// Mode of the spool's files: only the server's user may read them.
pub(crate) const FILE_MODE: u32 = 0o600;

/// The spool directory with its id counters.
#[derive(Debug)]
pub struct Spool {
    root: PathBuf,
    /// Group commit of `queue/` directory fsyncs, shared by concurrent commits.
    queue_sync: DirSync,
    /// The exclusive lock on the spool, held while this is open.
    _lock: File,
    /// Helper threads for the second fdatasync of a commit.
    flusher: Flusher,
    /// Recycled files in `free/`.
    pool: Arc<Pool>,
    mids: IdAllocator,
    icids: IdAllocator,
    dcids: IdAllocator,
}

impl Spool {
    /// Opens the spool, creating `tmp/` and `queue/`; clears leftovers in `tmp/` (never acknowledged).
    /// Fails with [`SpoolError::Locked`] while another process has it open.
    pub fn open(root: &Path) -> Result<Self, SpoolError> {
        // Messages are private: directories 0700, files 0600 (existing ones are tightened).
        for d in ["", "tmp", "queue", "free"] {
            let p = root.join(d);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(&p)
                .map_err(io("create directory", &p))?;
            // Best effort: a directory owned by another user keeps its mode.
            let _ = fs::set_permissions(&p, fs::Permissions::from_mode(DIR_MODE));
        }
        // Before touching anything a running server uses (tmp/, free/, its socket).
        let lock = lock::lock(root)?;
        for d in ["tmp", "free"] {
            if let Ok(entries) = fs::read_dir(root.join(d)) {
                for e in entries.flatten() {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let open = |name: &str| {
            let p = root.join(name);
            IdAllocator::open(&p).map_err(io("open id counter", &root.join(name)))
        };
        let qdir = root.join("queue");
        let queue_sync = DirSync::new(File::open(&qdir).map_err(io("open directory", &qdir))?);
        Ok(Spool {
            root: root.to_path_buf(),
            queue_sync,
            _lock: lock,
            flusher: Flusher::default(),
            pool: Arc::new(Pool::new(root.join("free"))),
            mids: open("mid.counter")?,
            icids: open("icid.counter")?,
            dcids: open("dcid.counter")?,
        })
    }

    /// Recycled files are kept only while the filesystem has `bytes` free beyond their
    /// bound (the free space `/ready` requires).
    pub(crate) fn keep_free(&self, bytes: u64) {
        self.pool.keep_free(bytes);
    }

    /// Deletes the recycled files kept for reuse; true when that freed space.
    pub(crate) fn reclaim_space(&self) -> bool {
        self.pool.drain() > 0
    }

    /// Spool root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The queue directory.
    pub(crate) fn queue_dir(&self) -> PathBuf {
        self.root.join("queue")
    }

    /// Next message id.
    pub fn next_mid(&self) -> Result<u64, SpoolError> {
        self.mids.next().map_err(io("reserve MID", &self.root))
    }

    /// Next inbound connection id.
    pub fn next_icid(&self) -> Result<u64, SpoolError> {
        self.icids.next().map_err(io("reserve ICID", &self.root))
    }

    /// Next delivery connection id.
    pub fn next_dcid(&self) -> Result<u64, SpoolError> {
        self.dcids.next().map_err(io("reserve DCID", &self.root))
    }

    /// Starts receiving message `mid`.
    pub fn begin(&self, mid: u64) -> Incoming {
        Incoming {
            mid,
            tmp_msg: self.root.join("tmp").join(format!("{mid}.msg")),
            tmp_env: None,
            buf: Vec::new(),
            file: None,
            spilled: false,
            bytes: 0,
            on_disk: 0,
            reused_len: 0,
            pool: self.pool.clone(),
        }
    }

    /// Path of a queued message body.
    pub fn message_path(&self, mid: u64) -> PathBuf {
        self.queue_dir().join(format!("{mid}.msg"))
    }

    /// Path of a queued envelope.
    pub(crate) fn envelope_path(&self, mid: u64) -> PathBuf {
        self.queue_dir().join(format!("{mid}.env"))
    }

    /// Makes the message durable: fsync body and envelope, rename into `queue/`, fsync the directory.
    /// The directory fsync is a group commit: one fsync covers every commit whose renames
    /// completed before it started, and this returns only after such an fsync succeeded.
    /// Blocking: call from a blocking thread. On error nothing is left in `queue/`.
    ///
    /// Returns the body when it was held in memory (not spilled), so the relay can send it
    /// without reading it back from disk.
    pub fn commit(&self, mut inc: Incoming, env: &Envelope) -> Result<Option<Vec<u8>>, SpoolError> {
        let result = self.commit_inner(&mut inc, env);
        if let Err(e) = result {
            // Envelope first: an envelope in queue/ always has its body beside it.
            let _ = fs::remove_file(self.envelope_path(inc.mid));
            let _ = fs::remove_file(self.message_path(inc.mid));
            let _ = fs::remove_file(&inc.tmp_msg);
            if let Some(p) = &inc.tmp_env {
                let _ = fs::remove_file(p);
            }
            return Err(e);
        }
        Ok((!inc.spilled).then(|| std::mem::take(&mut inc.buf)))
    }

    fn tmp_env(&self, mid: u64) -> PathBuf {
        self.root.join("tmp").join(format!("{mid}.env"))
    }

    fn commit_inner(&self, inc: &mut Incoming, env: &Envelope) -> Result<(), SpoolError> {
        let body = match inc.file.take() {
            // Spilled: the body is in tmp/ already.
            Some(file) => {
                inc.spilled = true;
                inc.file = Some(file);
                if !inc.buf.is_empty() {
                    let buf = std::mem::take(&mut inc.buf);
                    inc.append(&buf)?;
                }
                let file = inc.file.take().expect("just put back");
                // A recycled file may be longer than this body: cut it.
                if inc.reused_len > inc.on_disk {
                    file.set_len(inc.on_disk)
                        .map_err(io("truncate", &inc.tmp_msg))?;
                }
                file
            }
            None => {
                let (file, path) = self.write_file(&inc.tmp_msg, &inc.buf, false)?;
                inc.tmp_msg = path;
                file
            }
        };
        let (env_file, env_src) =
            self.write_file(&self.tmp_env(inc.mid), env.to_text().as_bytes(), true)?;
        inc.tmp_env = Some(env_src.clone());
        // fdatasync both (the data and what is needed to read it back, such as the size; the
        // names are made durable by the directory fsync after the renames), at the same time
        // on a helper thread: two flushes cost the latency of one.
        let (body_sync, env_sync) = self.flusher.sync_both(body, env_file);
        body_sync.map_err(io("fsync", &inc.tmp_msg))?;
        env_sync.map_err(io("fsync", &env_src))?;

        // The body goes first: an envelope in queue/ always has its body beside it.
        let msg = self.message_path(inc.mid);
        fs::rename(&inc.tmp_msg, &msg).map_err(io("rename", &msg))?;
        let envp = self.envelope_path(inc.mid);
        fs::rename(&env_src, &envp).map_err(io("rename", &envp))?;
        self.sync_queue_dir()
    }

    /// Writes `data` (not yet synced) into a recycled file from `free/` when there is one,
    /// else into a new file at `fresh`; returns the open file and its path. On error the
    /// file is removed. When the disk is full, empties the pool and tries once more.
    fn write_file(
        &self,
        fresh: &Path,
        data: &[u8],
        envelope: bool,
    ) -> Result<(File, PathBuf), SpoolError> {
        match self.write_file_once(fresh, data, envelope) {
            Err(e) if e.is_out_of_space() && self.pool.drain() > 0 => {
                self.write_file_once(fresh, data, envelope)
            }
            r => r,
        }
    }

    fn write_file_once(
        &self,
        fresh: &Path,
        data: &[u8],
        envelope: bool,
    ) -> Result<(File, PathBuf), SpoolError> {
        let mut recycled = None;
        while let Some((p, e)) = self.pool.take(envelope) {
            match OpenOptions::new().write(true).open(&p) {
                Ok(f) => {
                    recycled = Some((f, p, e.len));
                    break;
                }
                Err(_) => {
                    let _ = fs::remove_file(&p);
                }
            }
        }
        let (mut f, path, old_len) = match recycled {
            Some(r) => r,
            None => (
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(FILE_MODE)
                    .open(fresh)
                    .map_err(io("create", fresh))?,
                fresh.to_path_buf(),
                0,
            ),
        };
        let result = (|| {
            // A recycled file may be longer than the new content: cut it (truncating costs
            // more than asking, so only when it is).
            if old_len > data.len() as u64 {
                f.set_len(data.len() as u64)
                    .map_err(io("truncate", &path))?;
            }
            f.write_all(data).map_err(io("write", &path))
        })();
        match result {
            Ok(()) => Ok((f, path)),
            Err(e) => {
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Path of a message's delivery state.
    pub(crate) fn state_path(&self, mid: u64) -> PathBuf {
        self.queue_dir().join(format!("{mid}.dlv"))
    }

    /// Removes a delivered (or deleted) message: envelope first, so a crash never leaves
    /// an envelope without its body.
    pub fn remove_message(&self, mid: u64) {
        self.unlink_message(mid);
        let _ = self.sync_queue_dir();
    }

    /// Removes a message's files like [`Spool::remove_message`] but leaves the directory
    /// fsync to the caller, who batches it with [`Spool::sync_queue_dir`]: until then a
    /// crash may bring the message back, and it is delivered again (at least once).
    pub fn unlink_message(&self, mid: u64) {
        self.unlink_message_files(mid, true);
    }

    /// [`Spool::unlink_message`], skipping the delivery state file when the caller knows
    /// none was ever written.
    pub(crate) fn unlink_message_files(&self, mid: u64, state: bool) {
        self.pool.recycle(&self.envelope_path(mid), true);
        self.pool.recycle(&self.message_path(mid), false);
        if state {
            let _ = fs::remove_file(self.state_path(mid));
        }
    }

    /// Fsyncs `queue/`, sharing the fsync with concurrent commits (blocking).
    /// Files recycled before the call are reusable once it succeeded.
    pub fn sync_queue_dir(&self) -> Result<(), SpoolError> {
        let covered = self.pool.covered();
        let result = self.queue_sync.sync();
        self.pool.synced(covered, result.is_ok());
        result.map_err(io("fsync directory", &self.queue_dir()))
    }

    /// Deletes bodies and states whose envelope is gone (a crash mid-commit or mid-removal).
    pub(crate) fn remove_orphans(&self) {
        let Ok(entries) = fs::read_dir(self.queue_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((mid, ext)) = name.split_once('.') else {
                continue;
            };
            let Ok(mid) = mid.parse::<u64>() else {
                continue;
            };
            if ext != "env" && !self.envelope_path(mid).exists() {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Drops a message that will not be committed.
    pub fn abort(&self, inc: Incoming) {
        if inc.file.is_some() {
            let _ = fs::remove_file(&inc.tmp_msg);
        }
    }

    /// Message ids with an envelope in `queue/`, oldest first.
    pub fn queued_mids(&self) -> Vec<u64> {
        let mut v: Vec<u64> = fs::read_dir(self.queue_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".env")?.parse().ok()
            })
            .collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::incoming::SPILL_AT;
    use super::*;

    fn env(mid: u64) -> Envelope {
        Envelope {
            mid,
            icid: 1,
            listener: "inbound".into(),
            sender_group: "ALL".into(),
            policy: "ACCEPTED".into(),
            peer_ip: "192.0.2.1".parse().unwrap(),
            helo: "client.example".into(),
            from: "a@b.example".into(),
            rcpts: vec!["c@example.com".into()],
            received_unix: 1_700_000_000,
            tls: None,
            body_8bitmime: false,
        }
    }

    #[test]
    fn a_full_filesystem_or_quota_is_out_of_space() {
        let err = |n| SpoolError::Io {
            op: "write",
            path: PathBuf::from("/s/tmp/1.msg"),
            source: std::io::Error::from_raw_os_error(n),
        };
        assert!(err(libc::ENOSPC).is_out_of_space());
        assert!(err(libc::EDQUOT).is_out_of_space());
        assert!(!err(libc::EACCES).is_out_of_space());
        assert!(!err(libc::EIO).is_out_of_space());
    }

    #[test]
    fn small_and_large_messages_commit() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        for size in [10usize, SPILL_AT + 10, 3 * SPILL_AT] {
            let mid = spool.next_mid().unwrap();
            let mut inc = spool.begin(mid);
            let body = vec![b'x'; size];
            for chunk in body.chunks(1000) {
                inc.write(chunk).unwrap();
            }
            let in_memory = spool.commit(inc, &env(mid)).unwrap();
            assert_eq!(fs::read(spool.message_path(mid)).unwrap(), body);
            // The relay gets the body back only when it never left memory.
            if size <= SPILL_AT {
                assert_eq!(in_memory.as_deref(), Some(&body[..]));
            } else {
                assert_eq!(in_memory, None);
            }
            let e =
                Envelope::parse(&fs::read_to_string(spool.envelope_path(mid)).unwrap()).unwrap();
            assert_eq!(e, env(mid));
        }
        assert_eq!(spool.queued_mids().len(), 3);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn files_of_finished_messages_are_recycled_and_cut_to_size() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let free = || fs::read_dir(dir.path().join("free")).unwrap().count();
        let first = spool.next_mid().unwrap();
        let mut inc = spool.begin(first);
        inc.write(&vec![b'a'; 5000]).unwrap();
        spool.commit(inc, &env(first)).unwrap();
        spool.remove_message(first);
        assert!(!spool.envelope_path(first).exists() && !spool.message_path(first).exists());
        assert_eq!(free(), 2);
        // The next message reuses both files; the shorter body must not keep the old tail.
        let mid = spool.next_mid().unwrap();
        let mut inc = spool.begin(mid);
        inc.write(b"short\r\n").unwrap();
        spool.commit(inc, &env(mid)).unwrap();
        assert_eq!(free(), 0);
        assert_eq!(fs::read(spool.message_path(mid)).unwrap(), b"short\r\n");
        let e = Envelope::parse(&fs::read_to_string(spool.envelope_path(mid)).unwrap()).unwrap();
        assert_eq!(e, env(mid));
        assert_eq!(spool.queued_mids(), vec![mid]);
        // A restart empties free/ (its files hold nothing of value).
        spool.unlink_message(mid);
        drop(spool);
        let _spool = Spool::open(dir.path()).unwrap();
        assert_eq!(free(), 0);
    }

    #[test]
    fn failed_commit_leaves_nothing_in_queue() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mid = spool.next_mid().unwrap();
        let mut inc = spool.begin(mid);
        inc.write(b"hello\r\n").unwrap();
        // Make the rename target unusable: a directory where the envelope should go.
        fs::create_dir_all(spool.envelope_path(mid)).unwrap();
        fs::write(spool.envelope_path(mid).join("x"), b"").unwrap();
        assert!(spool.commit(inc, &env(mid)).is_err());
        assert!(!spool.message_path(mid).exists());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
