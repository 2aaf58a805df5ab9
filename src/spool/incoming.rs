//! A message being received, before it is committed to the queue.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::error::{io, out_of_space, SpoolError};
use super::pool::Pool;
use super::queue_file::RESERVED;
use super::FILE_MODE;

/// Bodies up to this size are kept in memory until commit (one write, no extra syscalls);
/// larger ones spill to the temp file as they arrive, so memory stays bounded.
pub(super) const SPILL_AT: usize = 64 * 1024;

/// A message being received: buffered in memory, spilled to `tmp/` when large (after
/// [`RESERVED`] bytes left for the header, which is written at commit).
#[derive(Debug)]
pub struct Incoming {
    pub(super) mid: u64,
    /// Where the queue file is written: `tmp/MID.mail`, or a recycled file in `free/`.
    pub(super) tmp: PathBuf,
    /// A second file the commit wrote because the header did not fit in front of a spilled
    /// body (removed if the commit fails).
    pub(super) tmp_copy: Option<PathBuf>,
    pub(super) buf: Vec<u8>,
    pub(super) file: Option<File>,
    /// The body went to `tmp/` rather than staying in `buf`.
    pub(super) spilled: bool,
    pub(super) bytes: u64,
    /// Body bytes written to `file` (after [`RESERVED`]).
    pub(super) on_disk: u64,
    /// Length of the recycled file the body spilled into: longer content is cut at commit.
    pub(super) reused_len: u64,
    pub(super) pool: Arc<Pool>,
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

    /// True when `n` more bytes stay in memory: [`Incoming::write`] then does no I/O.
    pub(crate) fn stays_in_memory(&self, n: usize) -> bool {
        self.file.is_none() && self.buf.len() + n <= SPILL_AT
    }

    /// Appends body bytes; spills to disk beyond the in-memory threshold (into a recycled
    /// file when there is one).
    pub fn write(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        self.bytes += data.len() as u64;
        if self.file.is_none() && self.buf.len() + data.len() <= SPILL_AT {
            self.buf.extend_from_slice(data);
            return Ok(());
        }
        if self.file.is_none() {
            self.file = Some(self.spill_file()?);
        }
        if !self.buf.is_empty() {
            let buf = std::mem::take(&mut self.buf);
            self.append(&buf)?;
        }
        self.append(data)
    }

    /// Opens the file the body spills into (a recycled one, else a new one in `tmp/`),
    /// positioned after the room for the header.
    fn spill_file(&mut self) -> Result<File, SpoolError> {
        let mut file = match self.pool.take_open() {
            Some((f, p, len)) => {
                self.tmp = p;
                self.reused_len = len;
                f
            }
            None => OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&self.tmp)
                .map_err(io("create", &self.tmp))?,
        };
        file.seek(SeekFrom::Start(RESERVED))
            .map_err(io("seek", &self.tmp))?;
        Ok(file)
    }

    /// Writes at the end of the spilled body; when the disk is full, empties the pool of
    /// recycled files and tries once more.
    pub(super) fn append(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        let mut result = file.write_all(data);
        if matches!(&result, Err(e) if out_of_space(e)) && self.pool.drain() > 0 {
            result = file
                .seek(SeekFrom::Start(RESERVED + self.on_disk))
                .and_then(|_| file.write_all(data));
        }
        result.map_err(io("write", &self.tmp))?;
        self.on_disk += data.len() as u64;
        Ok(())
    }
}
