//! The two intakes of reports — mail to a report address and HTTPS POST — over one store.
//! Each returns the [`Outcome`] its caller turns into a reply (SMTP or HTTP); counting and
//! storing happen in [`ingest`], pruning to the configured caps after each new report.

use std::path::Path;
use std::sync::Arc;

use super::ingest::{ingest_shared, refused, Outcome};
use super::mail::report_part;
use super::settings::TlsRptSettings;
use super::shared::SharedReports;
use super::store::Store;

/// Largest report mail kept in memory for its report: a 1 MiB gzip body, base64-encoded, in
/// its MIME message. A larger one is [`Outcome::TooLarge`] without being parsed.
pub const MAX_REPORT_MAIL: usize = 2 << 20;

/// The intake of one configuration.
#[derive(Debug)]
pub struct Intake {
    settings: Arc<TlsRptSettings>,
    store: Store,
    spool_dir: std::path::PathBuf,
    /// `ready_min_free_space`: below it, reports are refused for now (the spool's room is
    /// for mail).
    min_free: u64,
    /// Report claims shared with other gateways (`shared_state:`).
    shared: Option<SharedReports>,
}

impl Intake {
    /// The intake of `settings`, storing under `spool_dir` while it has `min_free` bytes
    /// free.
    pub fn new(settings: Arc<TlsRptSettings>, spool_dir: &Path, min_free: u64) -> Intake {
        Intake {
            settings,
            store: Store::new(spool_dir),
            spool_dir: spool_dir.to_path_buf(),
            min_free,
            shared: None,
        }
    }

    /// This intake storing a report only when it claimed it in `shared` first (another
    /// gateway's copy is a duplicate).
    pub fn with_shared(mut self, shared: Option<SharedReports>) -> Intake {
        self.shared = shared;
        self
    }

    /// The settings.
    pub fn settings(&self) -> &TlsRptSettings {
        &self.settings
    }

    /// The settings, shared.
    pub fn settings_arc(&self) -> Arc<TlsRptSettings> {
        self.settings.clone()
    }

    /// A report mail (headers and body as received; `None` when it passed
    /// [`MAX_REPORT_MAIL`]) received at `now` (Unix seconds).
    pub fn mail(&self, message: Option<&[u8]>, now: i64) -> Outcome {
        let Some(message) = message else {
            return refused(Outcome::TooLarge);
        };
        match report_part(message) {
            Ok(part) => self.body(&part.body, &part.content_type, now),
            Err(e) => refused(Outcome::Malformed(e.to_string())),
        }
    }

    /// A report body POSTed with `content_type`.
    pub fn post(&self, body: &[u8], content_type: &str, now: i64) -> Outcome {
        self.body(body, content_type, now)
    }

    fn body(&self, body: &[u8], content_type: &str, now: i64) -> Outcome {
        if let Ok(free) = crate::metrics::free_space(&self.spool_dir) {
            if free.bytes < self.min_free {
                return refused(Outcome::StoreFailed(format!(
                    "the spool has {} bytes free, below ready_min_free_space",
                    free.bytes
                )));
            }
        }
        let outcome = ingest_shared(
            body,
            content_type,
            &self.store,
            self.shared.as_ref(),
            &self.settings.domains,
            now,
        );
        if let Outcome::Accepted { .. } = outcome {
            if let Err(e) = self
                .store
                .prune(self.settings.max_reports, self.settings.max_store_bytes)
            {
                tracing::warn!("tlsrpt: pruning the report store: {e}");
            }
        }
        outcome
    }
}
