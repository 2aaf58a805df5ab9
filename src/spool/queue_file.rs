//! The queue file: one file per message, `queue/MID.mail`, holding its envelope and its body.
//!
//! ```text
//! mxgate-queue 1 body-at 0000000231\n    first line, fixed length: format version, body offset
//! mxgate-envelope 1\n ... end\n           the envelope (text form of `spool/envelope.rs`)
//! \n\n...                                 padding up to the body offset (spilled bodies only)
//! Received: ...                           the body exactly as received, to the end of the file
//! ```
//!
//! A file in `queue/` is complete by construction: it is written and fdatasynced in `tmp/`
//! (or `free/`) and then renamed in, so the envelope's `end` line and the body's last byte
//! are there whenever the name is. Queues written by versions before this format (a body
//! `MID.msg` beside an envelope `MID.env`) are read as they are: see [`super::legacy`].

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::envelope::Envelope;

use super::envelope::EnvelopeError;
use super::legacy;

/// Extension of a queue file.
pub(crate) const EXT: &str = "mail";
/// Start of the first line; the body offset follows as [`OFFSET_DIGITS`] decimal digits.
const MAGIC: &[u8] = b"mxgate-queue 1 body-at ";
/// Digits of the body offset: fixed, so the header's length does not depend on its value.
const OFFSET_DIGITS: usize = 10;
/// Length of the first line.
pub(super) const FIRST_LINE: usize = MAGIC.len() + OFFSET_DIGITS + 1;
/// Room left in front of a body that spills to disk before its envelope is known; an
/// envelope that does not fit (thousands of recipients) is written to a new file instead.
pub(super) const RESERVED: u64 = 8 * 1024;
/// A header longer than this is not ours (the envelope of 10 000 long recipients fits).
const MAX_HEADER: u64 = 4 << 20;

/// Path of message `mid`'s queue file in `queue_dir`.
pub(crate) fn path(queue_dir: &Path, mid: u64) -> PathBuf {
    queue_dir.join(format!("{mid}.{EXT}"))
}

/// The header of a queue file for `env`: first line and envelope, padded with newlines to
/// `pad_to` bytes when given (and at least that long). The body follows it.
pub(super) fn header(env: &Envelope, pad_to: Option<u64>) -> Vec<u8> {
    let text = env.to_text();
    let len = FIRST_LINE + text.len();
    let offset = pad_to.map_or(len, |p| len.max(p as usize));
    let mut h = Vec::with_capacity(offset);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(format!("{offset:0width$}\n", width = OFFSET_DIGITS).as_bytes());
    h.extend_from_slice(text.as_bytes());
    h.resize(offset, b'\n');
    h
}

/// The body offset from a queue file's first line.
fn body_offset(first: &[u8]) -> Option<u64> {
    let digits = first.strip_prefix(MAGIC)?.strip_suffix(b"\n")?;
    if digits.len() != OFFSET_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Reads the first line of an open queue file: the body offset. A file that ends at or
/// before it was cut (every body starts with our `Received:`): never an empty message.
fn read_offset(f: &File) -> io::Result<u64> {
    let mut first = [0u8; FIRST_LINE];
    f.read_exact_at(&mut first, 0)?;
    let offset = body_offset(&first)
        .filter(|&o| (FIRST_LINE as u64..=MAX_HEADER).contains(&o))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an mxgate queue file"))?;
    if f.metadata()?.len() <= offset {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "queue file truncated: it ends before its body",
        ));
    }
    Ok(offset)
}

/// A queued message as read back from `queue/`: its envelope and where its body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// The envelope.
    pub env: Envelope,
    /// Body size in bytes.
    pub size: u64,
}

/// Why a queued message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Not in the queue (never committed, or removed meanwhile).
    #[error("not queued")]
    Missing,
    /// The file could not be read.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The envelope does not parse.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}

/// Reads message `mid` from `queue_dir`: its queue file, or the two files of the format
/// before it.
pub fn read(queue_dir: &Path, mid: u64) -> Result<QueuedMessage, ReadError> {
    let f = match File::open(path(queue_dir, mid)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return legacy::read(queue_dir, mid),
        Err(e) => return Err(e.into()),
    };
    let offset = read_offset(&f)?;
    let mut text = vec![0u8; offset as usize - FIRST_LINE];
    f.read_exact_at(&mut text, FIRST_LINE as u64)?;
    let env = Envelope::parse(&String::from_utf8_lossy(&text))?;
    let size = f.metadata()?.len().saturating_sub(offset);
    Ok(QueuedMessage { env, size })
}

/// Opens the body of the message whose queue file is `path`, positioned at its first byte
/// (blocking). A message queued in the format before this one has its body in `MID.msg`;
/// a path not ending in `.mail` is a plain body file, read from its start.
pub fn open_body(path: &Path) -> io::Result<File> {
    if path.extension().is_none_or(|e| e != EXT) {
        return File::open(path);
    }
    let mut f = match File::open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(f) = legacy::open_body(path) {
                return Ok(f);
            }
            return Err(e);
        }
        r => r?,
    };
    let offset = read_offset(&f)?;
    f.seek(SeekFrom::Start(offset))?;
    Ok(f)
}

/// Reads up to `max` bytes of the body of the message whose queue file is `path`.
pub(crate) fn read_body_head(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    open_body(path)?.take(max).read_to_end(&mut head)?;
    Ok(head)
}

/// Message ids queued in `queue_dir` (either format), oldest first.
pub fn list(queue_dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(queue_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (mid, ext) = name.split_once('.')?;
            (ext == EXT || ext == legacy::ENVELOPE_EXT)
                .then(|| mid.parse().ok())
                .flatten()
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Envelope {
        Envelope {
            mid: 7,
            icid: 1,
            listener: "inbound".into(),
            sender_group: "ALL".into(),
            policy: "ACCEPTED".into(),
            peer_ip: "192.0.2.1".parse().unwrap(),
            helo: "client.example".into(),
            from: "a@b.example".into(),
            rcpts: vec!["c@example.com".into(), "d@example.com".into()],
            received_unix: 1_700_000_000,
            tls: None,
            body_8bitmime: true,
        }
    }

    #[test]
    fn header_then_body_read_back_with_and_without_padding() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"Subject: x\r\n\r\nhello\r\n";
        for pad in [None, Some(RESERVED)] {
            let h = header(&env(), pad);
            assert!(h.starts_with(b"mxgate-queue 1 body-at 00000"), "{h:?}");
            assert_eq!(h.len() as u64, pad.unwrap_or(h.len() as u64));
            std::fs::write(path(dir.path(), 7), [&h[..], body].concat()).unwrap();
            let q = read(dir.path(), 7).unwrap();
            assert_eq!(q.env, env());
            assert_eq!(q.size, body.len() as u64);
            let mut b = Vec::new();
            open_body(&path(dir.path(), 7))
                .unwrap()
                .read_to_end(&mut b)
                .unwrap();
            assert_eq!(b, body);
        }
        assert_eq!(list(dir.path()), [7]);
    }

    #[test]
    fn a_file_that_is_not_a_queue_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path(), 1), b"mxgate-queue 1 body-at 99999999999\n").unwrap();
        assert!(matches!(read(dir.path(), 1), Err(ReadError::Io(_))));
        assert!(open_body(&path(dir.path(), 1)).is_err());
        assert!(matches!(read(dir.path(), 2), Err(ReadError::Missing)));
        // Not a queue file by name: a plain body, read from its start.
        let plain = dir.path().join("1.eml");
        std::fs::write(&plain, b"mxgate-queue 1 body-at 0000000040\n").unwrap();
        let mut b = Vec::new();
        open_body(&plain).unwrap().read_to_end(&mut b).unwrap();
        assert_eq!(b, b"mxgate-queue 1 body-at 0000000040\n");
    }
}
