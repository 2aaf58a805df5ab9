//! The shared writer: one write call per burst of lines, reopened after rotation.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

use super::event::Event;
use super::render::{render_into, timestamp};
use crate::config::model::{MailLogFormat, MailLogTarget};

/// Errors opening the mail log.
#[derive(Debug, thiserror::Error)]
pub enum MailLogError {
    /// The log file could not be opened.
    #[error("cannot open mail log {path}: {source}")]
    Open {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

enum Sink {
    Stdout,
    File(PathBuf, File),
}

/// The mail-log writer, shared by every connection.
pub struct MailLog {
    format: MailLogFormat,
    sink: Mutex<Sink>,
    /// The timestamp text of the current second (formatting local time costs more than
    /// the rest of a line): (seconds since the epoch, text).
    clock: Mutex<(u64, String)>,
}

impl std::fmt::Debug for MailLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailLog")
            .field("format", &self.format)
            .finish()
    }
}

fn open_append(path: &PathBuf) -> Result<File, MailLogError> {
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| MailLogError::Open {
            path: path.clone(),
            source,
        })
}

impl MailLog {
    /// Opens the log at its configured target.
    pub fn open(target: &MailLogTarget, format: MailLogFormat) -> Result<Self, MailLogError> {
        let sink = match target {
            MailLogTarget::Stdout => Sink::Stdout,
            MailLogTarget::File(p) => Sink::File(p.clone(), open_append(p)?),
        };
        Ok(MailLog {
            format,
            sink: Mutex::new(sink),
            clock: Mutex::new((0, String::new())),
        })
    }

    /// Writes one event as one line (one write call, so lines never interleave).
    pub fn log(&self, event: &Event) {
        self.log_many(std::slice::from_ref(event));
    }

    /// Writes events as consecutive lines with one write call: the lines of one burst of a
    /// session stay together and cost one system call.
    pub(crate) fn log_many(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let mut text = String::with_capacity(events.len() * 96);
        {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
            if clock.0 != secs || clock.1.is_empty() {
                *clock = (secs, timestamp());
            }
            for e in events {
                render_into(e, self.format, &clock.1, &mut text);
            }
        }
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let result = match &mut *sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|_| out.flush())
            }
            Sink::File(_, f) => f.write_all(text.as_bytes()),
        };
        if let Err(e) = result {
            tracing::error!("mail log write failed: {e}");
        }
    }

    /// Reopens the file (after logrotate moved it); a no-op for stdout.
    pub(crate) fn reopen(&self) -> Result<(), MailLogError> {
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        if let Sink::File(path, file) = &mut *sink {
            *file = open_append(path)?;
        }
        Ok(())
    }
}
