//! Committing a message: its queue file (header and body) written, flushed with one
//! `fdatasync`, renamed into `queue/` with one rename, then the `queue/` directory fsync
//! shared by every commit under way (group commit).

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::envelope::Envelope;

use super::error::{io, SpoolError};
use super::incoming::Incoming;
use super::queue_file::{self, RESERVED};
use super::{Spool, FILE_MODE};

impl Spool {
    /// Makes the message durable: its queue file is fdatasynced, renamed into `queue/`, and
    /// the directory fsynced. The directory fsync is a group commit: one fsync covers every
    /// commit whose rename completed before it started, and this returns only after such
    /// an fsync succeeded. Blocking: call from a blocking thread. On error nothing is left
    /// in `queue/`.
    ///
    /// Returns the body when it was held in memory (not spilled), so the relay can send it
    /// without reading it back from disk.
    pub fn commit(&self, mut inc: Incoming, env: &Envelope) -> Result<Option<Vec<u8>>, SpoolError> {
        if let Err(e) = self.commit_inner(&mut inc, env) {
            let _ = fs::remove_file(self.message_path(inc.mid));
            let _ = fs::remove_file(&inc.tmp);
            if let Some(p) = &inc.tmp_copy {
                let _ = fs::remove_file(p);
            }
            return Err(e);
        }
        Ok((!inc.spilled).then(|| std::mem::take(&mut inc.buf)))
    }

    fn commit_inner(&self, inc: &mut Incoming, env: &Envelope) -> Result<(), SpoolError> {
        let (file, src) = match inc.file.take() {
            // Spilled: the body is in its file already, after the room for the header.
            Some(file) => {
                inc.spilled = true;
                inc.file = Some(file);
                if !inc.buf.is_empty() {
                    let buf = std::mem::take(&mut inc.buf);
                    inc.append(&buf)?;
                }
                let file = inc.file.take().expect("just put back");
                self.finish_spilled(inc, file, env)?
            }
            None => {
                let header = queue_file::header(env, inc.buf.len() as u64, None);
                let (file, path) = self.write_file(&inc.tmp, &[&header, &inc.buf])?;
                inc.tmp = path.clone();
                (file, path)
            }
        };
        // The data and what is needed to read it back (the size); the name is made durable
        // by the directory fsync after the rename.
        file.sync_data().map_err(io("fsync", &src))?;
        let dst = self.message_path(inc.mid);
        fs::rename(&src, &dst).map_err(io("rename", &dst))?;
        self.sync_queue_dir()
    }

    /// Puts the header in front of a spilled body: into the room left for it, or, when it
    /// is larger (thousands of recipients), into a new file the body is copied behind.
    fn finish_spilled(
        &self,
        inc: &mut Incoming,
        file: File,
        env: &Envelope,
    ) -> Result<(File, PathBuf), SpoolError> {
        let header = queue_file::header(env, inc.on_disk, Some(RESERVED));
        if header.len() as u64 == RESERVED {
            let mut result = file.write_all_at(&header, 0);
            if matches!(&result, Err(e) if super::error::out_of_space(e)) && self.pool.drain() > 0 {
                result = file.write_all_at(&header, 0);
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
        let copy = self.root.join("tmp").join(format!("{}.copy", inc.mid));
        let (mut out, path) =
            self.write_file(&copy, &[&queue_file::header(env, inc.on_disk, None)])?;
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
