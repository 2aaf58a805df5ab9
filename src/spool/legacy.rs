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

/// A message queued in both formats under one MID (`N.mail` beside `N.env`/`N.msg`: only
/// queues copied together by hand): the old-format one gets a MID of its own, `new_mid`,
/// and the delivery state `N.dlv` is dropped, since nothing says which of the two it
/// belongs to. Both are then delivered to all their recipients: some may get a message
/// twice, none loses one. Order: the state goes first, then the body is linked and the
/// rewritten envelope renamed in under the new MID, then the old names go (a crash in
/// between leaves at worst one more copy of the old message, never less).
pub(super) fn separate(queue_dir: &Path, mid: u64, new_mid: u64) -> std::io::Result<()> {
    use std::io::Write;
    let old_env = queue_dir.join(format!("{mid}.{ENVELOPE_EXT}"));
    let old_body = queue_dir.join(format!("{mid}.{BODY_EXT}"));
    let mut env = Envelope::parse(&fs::read_to_string(&old_env)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    let _ = fs::remove_file(queue_dir.join(format!("{mid}.dlv")));
    let new_body = queue_dir.join(format!("{new_mid}.{BODY_EXT}"));
    fs::hard_link(&old_body, &new_body)?;
    env.mid = new_mid;
    let tmp = queue_dir.join(format!("{new_mid}.{ENVELOPE_EXT}.tmp"));
    let mut f = std::os::unix::fs::OpenOptionsExt::mode(
        fs::File::options().write(true).create_new(true),
        super::FILE_MODE,
    )
    .open(&tmp)?;
    f.write_all(env.to_text().as_bytes())?;
    f.sync_data()?;
    fs::rename(&tmp, queue_dir.join(format!("{new_mid}.{ENVELOPE_EXT}")))?;
    remove(queue_dir, mid);
    File::open(queue_dir)?.sync_all()
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
