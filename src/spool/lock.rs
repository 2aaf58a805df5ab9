//! One server per spool: an exclusive `flock` on `mxgate.lock`, which holds the pid of the
//! server holding it. The kernel drops the lock when that process ends, however it ends.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::{io, SpoolError, FILE_MODE};

/// Name of the lock file in the spool directory.
pub(crate) const LOCK_FILE: &str = "mxgate.lock";

/// Takes the spool's lock for this process (held until the returned file is closed), or
/// says which process holds it.
pub fn lock(root: &Path) -> Result<File, SpoolError> {
    let path = root.join(LOCK_FILE);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(&path)
        .map_err(io("open lock file", &path))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::WouldBlock {
            return Err(io("lock", &path)(e));
        }
        let mut text = String::new();
        let _ = f.read_to_string(&mut text);
        return Err(SpoolError::Locked {
            root: root.to_path_buf(),
            holder: match text.trim().parse::<u32>() {
                Ok(pid) => format!("mxgate pid {pid}"),
                Err(_) => "another mxgate".into(),
            },
        });
    }
    let pid = format!("{}\n", std::process::id());
    f.set_len(0)
        .and_then(|()| f.rewind())
        .and_then(|()| f.write_all(pid.as_bytes()))
        .map_err(io("write lock file", &path))?;
    Ok(f)
}

/// The pid of the server holding the spool's lock, or `None` when no server holds it (a pid
/// file left by a crash, or a pid reused by another process, is never signalled).
pub fn holder(root: &Path) -> Result<Option<u32>, SpoolError> {
    let path = root.join(LOCK_FILE);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("open lock file", &path)(e)),
    };
    // SAFETY: flock on a descriptor this function owns; a shared lock we get is dropped with it.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        return Ok(None);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() != std::io::ErrorKind::WouldBlock {
        return Err(io("lock", &path)(e));
    }
    let mut text = String::new();
    f.read_to_string(&mut text)
        .map_err(io("read lock file", &path))?;
    Ok(text.trim().parse().ok())
}
