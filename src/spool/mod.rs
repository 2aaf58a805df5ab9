//! Durable spool: write one file per message (envelope and body, [`queue_file`]), fdatasync,
//! rename into `queue/`, fsync the directory (shared by concurrent commits), then 250.
//!
//! Files of finished messages are recycled rather than deleted: they are renamed into
//! `free/` and later overwritten (and truncated) for new messages. Creating and deleting
//! a file per message was the largest CPU cost of the accept path (inode allocation,
//! especially on ext4 without a journal, which scans recently freed inodes); reusing
//! them costs a rename. `free/` holds nothing of value and is emptied at start-up.

mod commit;
mod committer;
pub(crate) mod envelope;
mod error;
pub(crate) mod ids;
mod incoming;
mod legacy;
pub mod lock;
mod pool;
pub mod queue_file;

use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use commit::Writer;
use committer::Committer;
use error::io;
pub use error::SpoolError;
use ids::IdAllocator;
pub use incoming::Incoming;
use pool::Pool;
pub use queue_file::{QueuedMessage, ReadError};

/// Mode of the spool's directories: only the server's user may enter them.
const DIR_MODE: u32 = 0o700;
/// Mode of the spool's files: only the server's user may read them.
pub(crate) const FILE_MODE: u32 = 0o600;

/// The spool directory with its id counters.
#[derive(Debug)]
pub struct Spool {
    /// The commit thread; first, so that it has stopped before the lock is let go.
    committer: Committer,
    root: PathBuf,
    /// The exclusive lock on the spool, held while this is open.
    _lock: File,
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
        separate_duplicates(&qdir);
        let queue_dir = File::open(&qdir).map_err(io("open directory", &qdir))?;
        let pool = Arc::new(Pool::new(root.join("free")));
        let writer = Writer {
            tmp_dir: root.join("tmp"),
            queue_dir: qdir.clone(),
            pool: pool.clone(),
        };
        let committer =
            Committer::start(writer, queue_dir).map_err(io("start the commit thread", &qdir))?;
        Ok(Spool {
            committer,
            root: root.to_path_buf(),
            _lock: lock,
            pool,
            mids: IdAllocator::open_above(&root.join("mid.counter"), highest_queued_mid(&qdir))
                .map_err(io("open id counter", &root.join("mid.counter")))?,
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
            tmp: self
                .root
                .join("tmp")
                .join(format!("{mid}.{}", queue_file::EXT)),
            tmp_copy: None,
            buf: Vec::new(),
            file: None,
            spilled: false,
            bytes: 0,
            on_disk: 0,
            reused_len: 0,
            pool: self.pool.clone(),
        }
    }

    /// Path of a queued message's file (envelope and body, see [`queue_file`]).
    pub fn message_path(&self, mid: u64) -> PathBuf {
        queue_file::path(&self.queue_dir(), mid)
    }

    /// Reads queued message `mid` back (blocking), in either format.
    pub fn read_queued(&self, mid: u64) -> Result<QueuedMessage, ReadError> {
        queue_file::read(&self.queue_dir(), mid)
    }

    /// Path of a message's delivery state.
    pub(crate) fn state_path(&self, mid: u64) -> PathBuf {
        self.queue_dir().join(format!("{mid}.dlv"))
    }

    /// Removes a delivered (or deleted) message and makes that durable.
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
    /// none was ever written. The message file goes first: a state file without it is
    /// removed at start-up.
    pub(crate) fn unlink_message_files(&self, mid: u64, state: bool) {
        if !self.pool.recycle(&self.message_path(mid)) {
            // Queued by a version before the one-file format.
            legacy::remove(&self.queue_dir(), mid);
        }
        if state {
            let _ = fs::remove_file(self.state_path(mid));
        }
    }

    /// Deletes what a crash mid-removal (or, in the old format, mid-commit) left behind: a
    /// delivery state without its message, an old-format body without its envelope, a
    /// state being written.
    pub(crate) fn remove_orphans(&self) {
        let q = self.queue_dir();
        let Ok(entries) = fs::read_dir(&q) else {
            return;
        };
        let has = |mid: u64, ext: &str| q.join(format!("{mid}.{ext}")).exists();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((mid, ext)) = name.split_once('.') else {
                continue;
            };
            let Ok(mid) = mid.parse::<u64>() else {
                continue;
            };
            let keep = match ext {
                queue_file::EXT | legacy::ENVELOPE_EXT => true,
                legacy::BODY_EXT => has(mid, legacy::ENVELOPE_EXT),
                "dlv" => has(mid, queue_file::EXT) || has(mid, legacy::ENVELOPE_EXT),
                _ => false,
            };
            if !keep {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Drops a message that will not be committed.
    pub fn abort(&self, inc: Incoming) {
        if inc.file.is_some() {
            let _ = fs::remove_file(&inc.tmp);
        }
    }

    /// Message ids in `queue/` (either format), oldest first.
    pub fn queued_mids(&self) -> Vec<u64> {
        queue_file::list(&self.queue_dir())
    }
}

/// `f` with mode [`FILE_MODE`], refused unless a regular file: a file recycled from `free/`
/// keeps the mode and kind it was left with otherwise.
pub(super) fn private_file(f: File) -> std::io::Result<File> {
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Gives each message queued in both formats under one MID (see [`legacy::separate`]) a
/// MID of its own above every queued one, before the queue is read; says so on stderr.
fn separate_duplicates(queue_dir: &Path) {
    let both: Vec<u64> = queue_file::list(queue_dir)
        .into_iter()
        .filter(|&mid| {
            queue_file::path(queue_dir, mid).exists()
                && queue_dir
                    .join(format!("{mid}.{}", legacy::ENVELOPE_EXT))
                    .exists()
        })
        .collect();
    for mid in both {
        let new_mid = highest_queued_mid(queue_dir) + 1;
        match legacy::separate(queue_dir, mid, new_mid) {
            Ok(()) => tracing::warn!(
                "spool: MID {mid} was queued in both formats ({mid}.mail and {mid}.env/{mid}.msg): \
                 the old-format message is now MID {new_mid}; the delivery state {mid}.dlv was \
                 dropped (it could belong to either), so both are delivered to every recipient"
            ),
            Err(e) => tracing::error!(
                "spool: MID {mid} is queued in both formats and the old-format one could not \
                 be given MID {new_mid}: {e}; {mid}.mail is delivered, {mid}.env/{mid}.msg stay"
            ),
        }
    }
}

/// The highest MID with a file in `queue/` (any format: `N.mail`, `N.env`, `N.msg`, `N.dlv`),
/// 0 when none.
fn highest_queued_mid(queue_dir: &Path) -> u64 {
    fs::read_dir(queue_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name();
                    let name = name.to_str()?;
                    name.split_once('.')?.0.parse::<u64>().ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::incoming::SPILL_AT;
    use super::*;
    use crate::envelope::Envelope;

    /// A one-recipient envelope with message id `mid` (also for the commit thread's tests).
    pub(crate) fn env(mid: u64) -> Envelope {
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

    /// The body as read back through [`queue_file::open_body`].
    fn body_of(spool: &Spool, mid: u64) -> Vec<u8> {
        use std::io::Read;
        let mut b = Vec::new();
        queue_file::open_body(&spool.message_path(mid))
            .unwrap()
            .read_to_end(&mut b)
            .unwrap();
        b
    }

    #[test]
    fn small_and_large_messages_commit_as_one_file() {
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
            assert_eq!(body_of(&spool, mid), body);
            // The relay gets the body back only when it never left memory.
            if size <= SPILL_AT {
                assert_eq!(in_memory.as_deref(), Some(&body[..]));
            } else {
                assert_eq!(in_memory, None);
            }
            let q = spool.read_queued(mid).unwrap();
            assert_eq!((q.env, q.size), (env(mid), size as u64));
            // The file: the header line, the envelope as text, the body as received.
            let file = fs::read(spool.message_path(mid)).unwrap();
            assert!(file.starts_with(b"mxgate-queue 2 body-at "));
            assert!(file.ends_with(&body));
        }
        let names: Vec<_> = fs::read_dir(spool.queue_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "one file per message: {names:?}");
        assert_eq!(spool.queued_mids().len(), 3);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    /// An envelope too large for the room in front of a spilled body: the body is copied
    /// behind it into a new file, and nothing stays in tmp/.
    #[test]
    fn a_spilled_body_with_a_huge_envelope_is_copied_behind_it() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mid = spool.next_mid().unwrap();
        let mut e = env(mid);
        e.rcpts = (0..500)
            .map(|i| format!("recipient-{i:04}@example.com"))
            .collect();
        let mut inc = spool.begin(mid);
        let body: Vec<u8> = (0..3 * SPILL_AT).map(|i| (i % 251) as u8).collect();
        inc.write(&body).unwrap();
        assert_eq!(spool.commit(inc, &e).unwrap(), None);
        assert_eq!(body_of(&spool, mid), body);
        assert_eq!(spool.read_queued(mid).unwrap().env, e);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn files_of_finished_messages_are_recycled_and_cut_to_size() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let free = || fs::read_dir(dir.path().join("free")).unwrap().count();
        let first = spool.next_mid().unwrap();
        let mut inc = spool.begin(first);
        inc.write(&vec![b'a'; 3 * SPILL_AT]).unwrap();
        spool.commit(inc, &env(first)).unwrap();
        spool.remove_message(first);
        assert!(!spool.message_path(first).exists());
        assert_eq!(free(), 1);
        // The next message reuses the file; the shorter one must not keep the old tail.
        let mid = spool.next_mid().unwrap();
        let mut inc = spool.begin(mid);
        inc.write(b"short\r\n").unwrap();
        spool.commit(inc, &env(mid)).unwrap();
        assert_eq!(free(), 0);
        assert_eq!(body_of(&spool, mid), b"short\r\n");
        assert_eq!(spool.read_queued(mid).unwrap().env, env(mid));
        assert_eq!(spool.queued_mids(), vec![mid]);
        // A spilled body reuses it too, after the room for its header.
        spool.remove_message(mid);
        let mid = spool.next_mid().unwrap();
        let mut inc = spool.begin(mid);
        inc.write(&vec![b'b'; SPILL_AT + 1]).unwrap();
        spool.commit(inc, &env(mid)).unwrap();
        assert_eq!(free(), 0);
        assert_eq!(body_of(&spool, mid), vec![b'b'; SPILL_AT + 1]);
        // A restart empties free/ (its files hold nothing of value).
        spool.unlink_message(mid);
        drop(spool);
        let _spool = Spool::open(dir.path()).unwrap();
        assert_eq!(free(), 0);
    }

    /// The outsider's findings: a lost `mid.counter` must not hand out a queued message's
    /// MID (its commit would replace that message); a recycled file is written 0600 only
    /// when it is a regular file, never through a symlink; a cut file is no empty message.
    #[test]
    fn a_lost_counter_a_symlink_in_queue_and_a_cut_file_lose_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut mids = Vec::new();
        for _ in 0..2 {
            let mid = spool.next_mid().unwrap();
            let mut inc = spool.begin(mid);
            inc.write(b"kept\r\n").unwrap();
            spool.commit(inc, &env(mid)).unwrap();
            mids.push(mid);
        }
        drop(spool);
        fs::remove_file(dir.path().join("mid.counter")).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mid = spool.next_mid().unwrap();
        assert!(mid > mids[1], "{mid} reuses a queued MID");
        assert_eq!(body_of(&spool, mids[0]), b"kept\r\n");

        // A symlink and a 0644 file in the queue: recycled as neither.
        let outside = dir.path().join("outside.mail");
        fs::write(&outside, b"not ours").unwrap();
        let link = spool.queue_dir().join("900.mail");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        spool.remove_message(900);
        let loose = spool.message_path(mids[0]);
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o644)).unwrap();
        spool.remove_message(mids[0]);
        let mut inc = spool.begin(mid);
        inc.write(b"new\r\n").unwrap();
        spool.commit(inc, &env(mid)).unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"not ours");
        let mode = fs::metadata(spool.message_path(mid))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // Cut before its body: an error, not an empty message.
        let f = fs::OpenOptions::new()
            .write(true)
            .open(spool.message_path(mids[1]))
            .unwrap();
        f.set_len(40).unwrap();
        assert!(queue_file::open_body(&spool.message_path(mids[1])).is_err());
    }

    /// The same MID in both formats (queues copied together by hand): the old-format
    /// message gets a MID of its own at start-up, and the state both would have shared is
    /// dropped (repeats, never a recipient skipped for the other message's sake).
    #[test]
    fn a_mid_queued_in_both_formats_is_separated_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mid = spool.next_mid().unwrap();
        assert_eq!(mid, 1);
        let mut inc = spool.begin(mid);
        inc.write(b"new format\r\n").unwrap();
        spool.commit(inc, &env(mid)).unwrap();
        drop(spool);
        let q = dir.path().join("queue");
        let old = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool_v1/queue");
        for f in ["1.env", "1.msg"] {
            fs::copy(old.join(f), q.join(f)).unwrap();
        }
        // Says rid 0 is delivered: true of one of the two messages at most.
        fs::write(
            q.join("1.dlv"),
            "attempts 1\nnext_try 0\nrid 0 delivered\nend\n",
        )
        .unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut names: Vec<_> = fs::read_dir(&q)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["1.mail", "2.env", "2.msg"]);
        assert_eq!(spool.read_queued(1).unwrap().env, env(1));
        let moved = spool.read_queued(2).unwrap();
        assert_eq!(moved.env.mid, 2);
        assert_eq!(moved.env.from, "alice@sender.example");
        assert_eq!(
            fs::read(q.join("2.msg")).unwrap(),
            fs::read(old.join("1.msg")).unwrap()
        );
        assert!(spool.next_mid().unwrap() > 2);
        assert_eq!(spool.queued_mids(), [1, 2]);
    }

    #[test]
    fn failed_commit_leaves_nothing_in_queue() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mid = spool.next_mid().unwrap();
        let mut inc = spool.begin(mid);
        inc.write(b"hello\r\n").unwrap();
        // Make the rename target unusable: a directory where the file should go.
        fs::create_dir_all(spool.message_path(mid)).unwrap();
        fs::write(spool.message_path(mid).join("x"), b"").unwrap();
        assert!(spool.commit(inc, &env(mid)).is_err());
        assert!(!spool.message_path(mid).is_file());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    /// Orphans of a crash are removed at start-up; complete messages of both formats stay.
    #[test]
    fn orphans_go_and_messages_of_both_formats_stay() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let q = spool.queue_dir();
        for name in [
            "1.mail",
            "1.dlv",
            "2.env",
            "2.msg",
            "2.dlv",
            "3.msg",
            "4.dlv",
            "5.dlv.tmp",
        ] {
            fs::write(q.join(name), b"x").unwrap();
        }
        spool.remove_orphans();
        let mut left: Vec<_> = fs::read_dir(&q)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["1.dlv", "1.mail", "2.dlv", "2.env", "2.msg"]);
        assert_eq!(spool.queued_mids(), [1, 2]);
        // Removing the old-format message removes its two files and its state.
        spool.remove_message(2);
        assert_eq!(spool.queued_mids(), [1]);
        assert_eq!(fs::read_dir(&q).unwrap().count(), 2);
    }
}
