//! Queues written before the one-file format: a body `queue/MID.msg` beside an envelope
//! `queue/MID.env` (the envelope renamed in last, so an envelope always has its body).
//!
//! They are read as they are, not converted: converting means copying every body behind a
//! header, which needs free space a full spool does not have, and a copy is one more thing
//! a crash could interrupt. Reading them in place can neither lose nor duplicate a message.
//! New messages are written in the new format; the old files leave the queue as their
//! messages are delivered, deleted or bounced.

use std::fs::{self, File};
use std::path::Path;

use crate::envelope::Envelope;

use super::queue_file::{QueuedMessage, ReadError};

/// Extension of an envelope file.
pub(super) const ENVELOPE_EXT: &str = "env";
/// Extension of a body file.
pub(super) const BODY_EXT: &str = "msg";

/// Reads message `mid` from its two files in `queue_dir`.
pub(super) fn read(queue_dir: &Path, mid: u64) -> Result<QueuedMessage, ReadError> {
    let text = match fs::read_to_string(queue_dir.join(format!("{mid}.{ENVELOPE_EXT}"))) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadError::Missing),
        Err(e) => return Err(e.into()),
    };
    let env = Envelope::parse(&text)?;
    let size = fs::metadata(queue_dir.join(format!("{mid}.{BODY_EXT}")))?.len();
    Ok(QueuedMessage { env, size })
}

/// Opens the body file beside the queue file `path` (`N.mail` → `N.msg`), if there is one.
pub(super) fn open_body(path: &Path) -> Option<File> {
    File::open(path.with_extension(BODY_EXT)).ok()
}

/// Removes message `mid`'s files from `queue_dir`: the envelope first, so a crash never
/// leaves an envelope without its body (a body alone is removed at start-up).
pub(super) fn remove(queue_dir: &Path, mid: u64) {
    let _ = fs::remove_file(queue_dir.join(format!("{mid}.{ENVELOPE_EXT}")));
    let _ = fs::remove_file(queue_dir.join(format!("{mid}.{BODY_EXT}")));
}

#[cfg(test)]
mod tests {
    use super::super::queue_file;
    use super::*;

    /// The exact files the previous version wrote (tests/fixtures/spool_v1) read as before.
    #[test]
    fn a_queue_in_the_old_format_reads_as_it_is() {
        let q = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool_v1/queue");
        assert_eq!(queue_file::list(&q), [1, 2, 3]);
        let m = queue_file::read(&q, 3).unwrap();
        assert_eq!(m.env.from, "bob@sender.example");
        assert_eq!(m.env.rcpts, ["dave@example.com", "erin@sub.example.com"]);
        assert!(m.env.body_8bitmime);
        assert_eq!(m.size, fs::metadata(q.join("3.msg")).unwrap().len());
        let head = queue_file::read_body_head(&queue_file::path(&q, 1), 9).unwrap();
        assert_eq!(head, b"Received:");
        assert!(matches!(queue_file::read(&q, 4), Err(ReadError::Missing)));
    }
}
