//! The queue file: one file per message, `queue/MID.mail`, holding its envelope and its body.
//!
//! ```text
//! mxgate-queue 2 body-at 0000000231 length 00000000000000004096\n
//!                                        first line, fixed length: format version, body
//!                                        offset, body length
//! mxgate-envelope 1\n ... end\n           the envelope (text form of `spool/envelope.rs`)
//! \n\n...                                 padding up to the body offset (spilled bodies only)
//! Received: ...                           the body exactly as received, to the end of the file
//! ```
//!
//! A file in `queue/` is complete by construction: it is written and fdatasynced in `tmp/`
//! (or `free/`) and then renamed in, so the envelope's `end` line and the body's last byte
//! are there whenever the name is. A file cut all the same (restored from a bad copy, a
//! filesystem that lost blocks) is refused when its body is shorter or longer than the
//! first line says, and kept for the administrator, never sent short. Files of version 1
//! (`mxgate-queue 1 body-at N`, no length) still load. Queues written by versions before
//! this format (a body
//! `MID.msg` beside an envelope `MID.env`) are read as they are: see [`super::legacy`].

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::envelope::Envelope;

use super::envelope::EnvelopeError;
use super::legacy;

/// Extension of a queue file.
pub const EXT: &str = "mail";
/// Start of the first line; the body offset follows as [`OFFSET_DIGITS`] decimal digits.
const MAGIC: &[u8] = b"mxgate-queue 2 body-at ";
/// Between the body offset and the body length.
const LENGTH_KEY: &[u8] = b" length ";
/// The first line of version 1 files: no body length.
const MAGIC_V1: &[u8] = b"mxgate-queue 1 body-at ";
/// Digits of the body offset: fixed, so the header's length does not depend on its value.
const OFFSET_DIGITS: usize = 10;
/// Digits of the body length.
const LENGTH_DIGITS: usize = 20;
/// Length of the first line.
pub(super) const FIRST_LINE: usize =
    MAGIC.len() + OFFSET_DIGITS + LENGTH_KEY.len() + LENGTH_DIGITS + 1;
/// Length of the first line of a version 1 file.
const FIRST_LINE_V1: usize = MAGIC_V1.len() + OFFSET_DIGITS + 1;
/// Room left in front of a body that spills to disk before its envelope is known; an
/// envelope that does not fit (thousands of recipients) is written to a new file instead.
pub(super) const RESERVED: u64 = 8 * 1024;
/// A header longer than this is not ours (the envelope of 10 000 long recipients fits).
const MAX_HEADER: u64 = 4 << 20;

/// Path of message `mid`'s queue file in `queue_dir`.
pub(crate) fn path(queue_dir: &Path, mid: u64) -> PathBuf {
    queue_dir.join(format!("{mid}.{EXT}"))
}

/// The header of a queue file for `env` and a body of `body_len` bytes: first line and
/// envelope, padded with newlines to `pad_to` bytes when given (and at least that long). The
/// body follows it.
pub(super) fn header(env: &Envelope, body_len: u64, pad_to: Option<u64>) -> Vec<u8> {
    let text = env.to_text();
    let len = FIRST_LINE + text.len();
    let offset = pad_to.map_or(len, |p| len.max(p as usize));
    let mut h = Vec::with_capacity(offset);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(format!("{offset:0width$}", width = OFFSET_DIGITS).as_bytes());
    h.extend_from_slice(LENGTH_KEY);
    h.extend_from_slice(format!("{body_len:0width$}\n", width = LENGTH_DIGITS).as_bytes());
    h.extend_from_slice(text.as_bytes());
    h.resize(offset, b'\n');
    h
}

/// A fixed-width decimal number.
fn number(digits: &[u8], width: usize) -> Option<u64> {
    if digits.len() != width || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// What a queue file's first line says: where the body starts, its length (not in version
/// 1 files) and where the envelope starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FirstLine {
    offset: u64,
    body_len: Option<u64>,
    envelope_at: usize,
}

/// Parses the start of a queue file (at least its first line, when the file has one).
fn first_line(head: &[u8]) -> Option<FirstLine> {
    if let Some(rest) = head.strip_prefix(MAGIC) {
        let rest = rest.get(..FIRST_LINE - MAGIC.len())?.strip_suffix(b"\n")?;
        let (offset, rest) = rest.split_at_checked(OFFSET_DIGITS)?;
        let len = rest.strip_prefix(LENGTH_KEY)?;
        return Some(FirstLine {
            offset: number(offset, OFFSET_DIGITS)?,
            body_len: Some(number(len, LENGTH_DIGITS)?),
            envelope_at: FIRST_LINE,
        });
    }
    let rest = head.strip_prefix(MAGIC_V1)?;
    let offset = rest.get(..OFFSET_DIGITS + 1)?.strip_suffix(b"\n")?;
    Some(FirstLine {
        offset: number(offset, OFFSET_DIGITS)?,
        body_len: None,
        envelope_at: FIRST_LINE_V1,
    })
}

fn damaged(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Reads the first line of an open queue file and checks the file's length against it:
/// where the envelope and the body start, and the body's length. A file that ends at or
/// before its body was cut (every body starts with our `Received:`): never an empty
/// message; one whose body is not as long as the first line says is damaged, never sent.
fn read_first_line(f: &File) -> io::Result<(FirstLine, u64)> {
    let mut head = [0u8; FIRST_LINE];
    let mut got = 0;
    while got < FIRST_LINE {
        match f.read_at(&mut head[got..], got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    let first = first_line(&head[..got])
        .filter(|l| (l.envelope_at as u64..=MAX_HEADER).contains(&l.offset))
        .ok_or_else(|| damaged("not an mxgate queue file".into()))?;
    let file_len = f.metadata()?.len();
    if file_len <= first.offset {
        return Err(damaged(
            "queue file truncated: it ends before its body".into(),
        ));
    }
    let body = file_len - first.offset;
    match first.body_len {
        Some(want) if body < want => Err(damaged(format!(
            "queue file truncated: body of {body} bytes, {want} were queued"
        ))),
        Some(want) if body > want => Err(damaged(format!(
            "queue file damaged: body of {body} bytes, {want} were queued"
        ))),
        _ => Ok((first, body)),
    }
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
    let (first, size) = read_first_line(&f)?;
    let mut text = vec![0u8; first.offset as usize - first.envelope_at];
    f.read_exact_at(&mut text, first.envelope_at as u64)?;
    let env = Envelope::parse(&String::from_utf8_lossy(&text))?;
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
    let (first, _) = read_first_line(&f)?;
    f.seek(SeekFrom::Start(first.offset))?;
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
            let h = header(&env(), body.len() as u64, pad);
            assert!(h.starts_with(b"mxgate-queue 2 body-at 00000"), "{h:?}");
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

    /// The first line carries the body length: a file cut inside its body (or grown) is
    /// refused, not delivered short; a version 1 file (no length) still loads.
    #[test]
    fn a_body_shorter_than_its_header_says_is_refused_and_old_files_load() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"Received: from x\r\nSubject: x\r\n\r\nhello, a body of some length\r\n";
        let whole = [&header(&env(), body.len() as u64, None)[..], body].concat();
        let p = path(dir.path(), 7);
        std::fs::write(&p, &whole).unwrap();
        assert_eq!(read(dir.path(), 7).unwrap().size, body.len() as u64);
        let first = String::from_utf8_lossy(&whole[..FIRST_LINE]).into_owned();
        assert!(
            first.ends_with(&format!(" length {:020}\n", body.len())),
            "{first:?}"
        );
        // Cut 10 bytes before the end of the body.
        std::fs::write(&p, &whole[..whole.len() - 10]).unwrap();
        let err = read(dir.path(), 7).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "queue file truncated: body of {} bytes, {} were queued",
                body.len() - 10,
                body.len()
            )
        );
        assert!(open_body(&p).is_err());
        assert!(read_body_head(&p, 100).is_err());
        // Longer than queued: damaged as well.
        std::fs::write(&p, [&whole[..], b"junk"].concat()).unwrap();
        assert!(read(dir.path(), 7)
            .unwrap_err()
            .to_string()
            .starts_with("queue file damaged: body of"));
        // Version 1: the first line without a length, the body to the end of the file.
        let text = env().to_text();
        let offset = FIRST_LINE_V1 + text.len();
        let v1 = format!("mxgate-queue 1 body-at {offset:010}\n{text}");
        std::fs::write(&p, [v1.as_bytes(), body].concat()).unwrap();
        let q = read(dir.path(), 7).unwrap();
        assert_eq!((q.env, q.size), (env(), body.len() as u64));
        let mut b = Vec::new();
        open_body(&p).unwrap().read_to_end(&mut b).unwrap();
        assert_eq!(b, body);
    }
}
