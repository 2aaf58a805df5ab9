//! Durable spool: stream to `tmp/`, fsync, rename into `queue/`, fsync the directory, then 250.

pub mod envelope;
pub mod ids;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub use envelope::Envelope;
use ids::IdAllocator;

/// Bodies up to this size are kept in memory until commit (one write, no extra syscalls);
/// larger ones spill to the temp file as they arrive, so memory stays bounded.
const SPILL_AT: usize = 64 * 1024;

/// Spool failures; all of them are temporary from the client's point of view (452 4.3.1).
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// I/O error (disk full, permissions, ...).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

impl SpoolError {
    /// True for errors worth retrying (all spool errors are).
    pub fn is_temporary(&self) -> bool {
        true
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The spool directory with its id counters.
#[derive(Debug)]
pub struct Spool {
    root: PathBuf,
    mids: IdAllocator,
    icids: IdAllocator,
    dcids: IdAllocator,
}

/// A message being received: buffered in memory, spilled to `tmp/` when large.
#[derive(Debug)]
pub struct Incoming {
    mid: u64,
    tmp_msg: PathBuf,
    buf: Vec<u8>,
    file: Option<File>,
    bytes: u64,
}

impl Incoming {
    /// Message id.
    pub fn mid(&self) -> u64 {
        self.mid
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends body bytes; spills to disk beyond the in-memory threshold.
    pub fn write(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        self.bytes += data.len() as u64;
        if self.file.is_none() && self.buf.len() + data.len() <= SPILL_AT {
            self.buf.extend_from_slice(data);
            return Ok(());
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&self.tmp_msg)
                    .map_err(io("create", &self.tmp_msg))?,
            ),
        };
        if !self.buf.is_empty() {
            file.write_all(&self.buf)
                .map_err(io("write", &self.tmp_msg))?;
            self.buf.clear();
        }
        file.write_all(data).map_err(io("write", &self.tmp_msg))
    }
}

impl Spool {
    /// Opens the spool, creating `tmp/` and `queue/`; clears leftovers in `tmp/` (never acknowledged).
    pub fn open(root: &Path) -> Result<Self, SpoolError> {
        for d in ["tmp", "queue"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io("create directory", &p))?;
        }
        let tmp = root.join("tmp");
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let open = |name: &str| {
            let p = root.join(name);
            IdAllocator::open(&p).map_err(io("open id counter", &root.join(name)))
        };
        Ok(Spool {
            root: root.to_path_buf(),
            mids: open("mid.counter")?,
            icids: open("icid.counter")?,
            dcids: open("dcid.counter")?,
        })
    }

    /// Spool root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The queue directory.
    pub fn queue_dir(&self) -> PathBuf {
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
            buf: Vec::new(),
            file: None,
            bytes: 0,
        }
    }

    /// Path of a queued message body.
    pub fn message_path(&self, mid: u64) -> PathBuf {
        self.queue_dir().join(format!("{mid}.msg"))
    }

    /// Path of a queued envelope.
    pub fn envelope_path(&self, mid: u64) -> PathBuf {
        self.queue_dir().join(format!("{mid}.env"))
    }

    /// Makes the message durable: fsync body and envelope, rename into `queue/`, fsync the directory.
    /// Blocking: call from a blocking thread. On error nothing is left in `queue/`.
    pub fn commit(&self, mut inc: Incoming, env: &Envelope) -> Result<(), SpoolError> {
        let result = self.commit_inner(&mut inc, env);
        if result.is_err() {
            let _ = fs::remove_file(&inc.tmp_msg);
            let _ = fs::remove_file(self.tmp_env(inc.mid));
            let _ = fs::remove_file(self.message_path(inc.mid));
        }
        result
    }

    fn tmp_env(&self, mid: u64) -> PathBuf {
        self.root.join("tmp").join(format!("{mid}.env"))
    }

    fn commit_inner(&self, inc: &mut Incoming, env: &Envelope) -> Result<(), SpoolError> {
        let mut file = match inc.file.take() {
            Some(f) => f,
            None => OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&inc.tmp_msg)
                .map_err(io("create", &inc.tmp_msg))?,
        };
        if !inc.buf.is_empty() {
            file.write_all(&inc.buf)
                .map_err(io("write", &inc.tmp_msg))?;
        }
        file.sync_all().map_err(io("fsync", &inc.tmp_msg))?;
        drop(file);

        let tmp_env = self.tmp_env(inc.mid);
        let mut f = File::create(&tmp_env).map_err(io("create", &tmp_env))?;
        f.write_all(env.to_text().as_bytes())
            .map_err(io("write", &tmp_env))?;
        f.sync_all().map_err(io("fsync", &tmp_env))?;
        drop(f);

        // The body goes first: an envelope in queue/ always has its body beside it.
        let msg = self.message_path(inc.mid);
        fs::rename(&inc.tmp_msg, &msg).map_err(io("rename", &msg))?;
        let envp = self.envelope_path(inc.mid);
        fs::rename(&tmp_env, &envp).map_err(io("rename", &envp))?;
        let qdir = self.queue_dir();
        File::open(&qdir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory", &qdir))?;
        Ok(())
    }

    /// Path of a message's delivery state.
    pub fn state_path(&self, mid: u64) -> PathBuf {
        self.queue_dir().join(format!("{mid}.dlv"))
    }

    /// Removes a delivered (or deleted) message: envelope first, so a crash never leaves
    /// an envelope without its body.
    pub fn remove_message(&self, mid: u64) {
        let _ = fs::remove_file(self.envelope_path(mid));
        let _ = fs::remove_file(self.message_path(mid));
        let _ = fs::remove_file(self.state_path(mid));
        let _ = File::open(self.queue_dir()).and_then(|d| d.sync_all());
    }

    /// Deletes bodies and states whose envelope is gone (a crash mid-commit or mid-removal).
    pub fn remove_orphans(&self) {
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
        }
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
            spool.commit(inc, &env(mid)).unwrap();
            assert_eq!(fs::read(spool.message_path(mid)).unwrap(), body);
            let e =
                Envelope::parse(&fs::read_to_string(spool.envelope_path(mid)).unwrap()).unwrap();
            assert_eq!(e, env(mid));
        }
        assert_eq!(spool.queued_mids().len(), 3);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
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
