//! What can go wrong in the spool.

use std::path::{Path, PathBuf};

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
    /// Another server runs on this spool.
    #[error(
        "{root} is in use by {holder}: stop it first, or give each server its own spool directory"
    )]
    Locked {
        /// The spool directory.
        root: PathBuf,
        /// Who holds it (`mxgate pid N`).
        holder: String,
    },
    /// The spool's commit thread is gone (it panicked): nothing can be committed.
    #[error("the spool's commit thread stopped")]
    Stopped,
}

impl SpoolError {
    /// True when the filesystem is full or a quota is exhausted (ENOSPC, EDQUOT).
    pub(crate) fn is_out_of_space(&self) -> bool {
        matches!(self, SpoolError::Io { source, .. } if out_of_space(source))
    }
}

/// ENOSPC or EDQUOT.
pub(super) fn out_of_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Maps an I/O error of `op` on `path` to a [`SpoolError`].
pub(super) fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}
