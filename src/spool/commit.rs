//! What one commit writes, on the commit thread ([`super::committer`]): the message's queue
//! file (header and body) in `tmp/` or over a recycled file, ready for its `fdatasync` and
//! its rename into `queue/`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{io, SpoolError};
use super::incoming::Incoming;
use super::pool::Pool;
use super::queue_file::{self, RESERVED};
use super::FILE_MODE;

/// Writes queue files; owned by the commit thread.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    /// `tmp/`.
    pub(super) tmp_dir: PathBuf,
    /// `queue/`.
    pub(super) queue_dir: PathBuf,
    /// Recycled files in `free/`.
    pub(super) pool: Arc<Pool>,
}

impl Writer {
    /// Writes `inc`'s queue file with `header` in front of its body (not yet synced);
    /// returns the open file and its path. `header` is padded to [`RESERVED`] when the body
    /// spilled and the envelope fits in front of it.
    pub(super) fn write(
        &self,
        inc: &mut Incoming,
        header: &[u8],
    ) -> Result<(File, PathBuf), SpoolError> {
        match inc.file.take() {
            // Spilled: the body is in its file already, after the room for the header.
            Some(file) => {
                inc.spilled = true;
                inc.file = Some(file);
                if !inc.buf.is_empty() {
                    let buf = std::mem::take(&mut inc.buf);
                    inc.append(&buf)?;
                }
                let file = inc.file.take().expect("just put back");
                self.finish_spilled(inc, file, header)
            }
            None => {
                let (file, path) = self.write_file(&inc.tmp, &[header, &inc.buf])?;
                inc.tmp = path.clone();
                Ok((file, path))
            }
        }
    }

    /// Puts the header in front of a spilled body: into the room left for it, or, when it
    /// is larger (thousands of recipients), into a new file the body is copied behind.
    fn finish_spilled(
        &self,
        inc: &mut Incoming,
        file: File,
        header: &[u8],
    ) -> Result<(File, PathBuf), SpoolError> {
        if header.len() as u64 == RESERVED {
            let mut result = file.write_all_at(header, 0);
            if matches!(&result, Err(e) if super::error::out_of_space(e)) && self.pool.drain() > 0 {
                result = file.write_all_at(header, 0);
            }
            result.map_err(io("write", &inc.tmp))?;
            // A recycled file may be longer than this message: cut it.
            let len = RESERVED + inc.on_disk;
            if inc.reused_len > len {
                file.set_len(len).map_err(io("truncate", &inc.tmp))?;
            }
            return Ok((file, inc.tmp.clone()));
        }
        drop(file);
        // Longer than the room: not padded, the body goes right behind it.
        let copy = self.tmp_dir.join(format!("{}.copy", inc.mid));
        let (mut out, path) = self.write_file(&copy, &[header])?;
        inc.tmp_copy = Some(path.clone());
        let copied = (|| {
            let mut body = File::open(&inc.tmp)?;
            body.seek(SeekFrom::Start(RESERVED))?;
            // copy_file_range underneath: the body does not pass through memory.
            io::copy(&mut body.take(inc.on_disk), &mut out)
        })();
        match copied {
            Ok(n) if n == inc.on_disk => {}
            Ok(_) => {
                let e = io::Error::new(io::ErrorKind::UnexpectedEof, "spilled body shrank");
                return Err(io("copy", &inc.tmp)(e));
            }
            Err(e) => return Err(io("copy", &inc.tmp)(e)),
        }
        let _ = fs::remove_file(&inc.tmp);
        Ok((out, path))
    }

    /// Writes `parts` (not yet synced) into a recycled file from `free/` when there is one,
    /// else into a new file at `fresh`; returns the open file and its path. On error the
    /// file is removed. When the disk is full, empties the pool and tries once more.
    fn write_file(&self, fresh: &Path, parts: &[&[u8]]) -> Result<(File, PathBuf), SpoolError> {
        match self.write_file_once(fresh, parts) {
            Err(e) if e.is_out_of_space() && self.pool.drain() > 0 => {
                self.write_file_once(fresh, parts)
            }
            r => r,
        }
    }

    fn write_file_once(
        &self,
        fresh: &Path,
        parts: &[&[u8]],
    ) -> Result<(File, PathBuf), SpoolError> {
        let (mut f, path, old_len) = match self.pool.take_open() {
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
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let result = (|| {
            // A recycled file may be longer than the new content: cut it (truncating costs
            // more than asking, so only when it is).
            if old_len > len as u64 {
                f.set_len(len as u64).map_err(io("truncate", &path))?;
            }
            write_all_parts(&mut f, parts).map_err(io("write", &path))
        })();
        match result {
            Ok(()) => Ok((f, path)),
            Err(e) => {
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Removes what a failed commit of `inc` left: its file in `queue/` (when the failure
    /// came after the rename) and its files in `tmp/` or `free/`.
    pub(super) fn clean_up(&self, inc: &Incoming) {
        let _ = fs::remove_file(queue_file::path(&self.queue_dir, inc.mid));
        let _ = fs::remove_file(&inc.tmp);
        if let Some(p) = &inc.tmp_copy {
            let _ = fs::remove_file(p);
        }
    }
}

/// The header of `inc`'s queue file: padded to the room in front of a spilled body (or, when
/// longer than that room, not padded: [`Writer::write`] then copies the body behind it).
pub(super) fn header_for(inc: &Incoming, env: &crate::envelope::Envelope) -> Vec<u8> {
    // A spilled body gets what is still buffered appended before the header is written.
    let body_len = match inc.file {
        Some(_) => inc.on_disk + inc.buf.len() as u64,
        None => inc.buf.len() as u64,
    };
    queue_file::header(env, body_len, inc.file.is_some().then_some(RESERVED))
}

/// Writes every part in order, in as few `writev` calls as the kernel allows (one, as a rule).
fn write_all_parts(f: &mut File, parts: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match f.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
