//! Accepted reports on disk: `SPOOL/tlsrpt/<sha256(key)>.json`, one file per report, the
//! JSON as received (decompressed). The key ([`dedup_key`]) is the report-id *and* a digest
//! of the report's content: report-ids are predictable (Google's are a date and the domain),
//! so a stranger who sent a fake report under a real one's id first must not make the real
//! one a "duplicate". The name is a digest because a report-id is the reporter's free text. Each file is written to a tmp file, fsynced, then hard-linked to its
//! name — the link fails if the name exists, so two copies of one report arriving at once
//! store one file — and the directory fsynced. Files 0600 in a 0700 directory: reports name
//! the sending MTAs' addresses.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::report::Report;

/// Reading or writing the report store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error on `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// What storing a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A new file.
    New,
    /// A report with this report-id was already stored; nothing was written.
    Duplicate,
}

/// A stored report read back.
#[derive(Debug, Clone)]
pub struct StoredReport {
    /// The report.
    pub report: Report,
    /// Its file.
    pub path: PathBuf,
    /// When it was stored (the file's modification time, Unix seconds).
    pub stored_at: i64,
}

/// The report directory, `SPOOL/tlsrpt`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// Tmp names unique within the process (the pid makes them unique across processes).
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// The store under a spool directory (created on first write).
    pub fn new(spool_dir: &Path) -> Store {
        Store {
            dir: spool_dir.join("tlsrpt"),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file the report of `key` ([`dedup_key`]) is stored in.
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.dir
            .join(format!("{}.json", sha256_hex(key.as_bytes())))
    }

    /// Whether the report of `key` is stored.
    pub fn contains(&self, key: &str) -> bool {
        self.path_of(key).exists()
    }

    /// Stores `json` (the validated report's bytes) under `key` ([`dedup_key`]) durably,
    /// unless it is stored already.
    pub fn put(&self, key: &str, json: &[u8]) -> Result<Stored, StoreError> {
        let io_err = |p: &Path| {
            let p = p.to_owned();
            move |source| StoreError::Io { path: p, source }
        };
        let path = self.path_of(key);
        if path.exists() {
            return Ok(Stored::Duplicate);
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io_err(&self.dir))?;
        let tmp = self.dir.join(format!(
            ".tmp.{}.{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(json)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            // A half-written file (a full disk) must not keep the space the spool needs.
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&tmp)(e));
        }
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Stored::Duplicate),
            Err(e) => return Err(io_err(&path)(e)),
        }
        // The new name is durable only once the directory is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(Stored::New)
    }

    /// The stored reports with this report-id (usually one; more when reports with the same
    /// id but other content arrived).
    pub fn get(&self, report_id: &str) -> Result<Vec<StoredReport>, StoreError> {
        let (all, _) = self.list()?;
        Ok(all
            .into_iter()
            .filter(|r| r.report.report_id == report_id)
            .collect())
    }

    /// Removes the oldest stored reports (by the time they were stored) until at most
    /// `max_reports` files of at most `max_bytes` together remain; returns how many went.
    /// Anyone can send reports, so without this a flood of valid ones would fill the spool.
    pub fn prune(&self, max_reports: usize, max_bytes: u64) -> Result<usize, StoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        let now = std::time::SystemTime::now();
        let entries: Vec<_> = entries.flatten().collect();
        // Tmp files a crash left behind (a live write takes milliseconds).
        for e in &entries {
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default().as_secs() > 600);
            if e.file_name().to_string_lossy().starts_with(".tmp.") && stale {
                let _ = fs::remove_file(e.path());
            }
        }
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .iter()
            .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some("json"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        // Newest first: what is kept is a prefix.
        files.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.2.cmp(&a.2)));
        let mut bytes = 0u64;
        let mut removed = 0;
        for (i, (_, len, path)) in files.iter().enumerate() {
            bytes += len;
            if i >= max_reports || bytes > max_bytes {
                match fs::remove_file(path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(StoreError::Io {
                            path: path.clone(),
                            source,
                        })
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Every stored report, oldest range first; files that no longer parse are skipped and
    /// their paths returned beside.
    pub fn list(&self) -> Result<(Vec<StoredReport>, Vec<PathBuf>), StoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        let mut reports = Vec::new();
        let mut bad = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match read(&path) {
                Ok(Some(r)) => reports.push(r),
                _ => bad.push(path),
            }
        }
        reports.sort_by(|a, b| {
            (a.report.date_range.start, &a.report.report_id)
                .cmp(&(b.report.date_range.start, &b.report.report_id))
        });
        bad.sort();
        Ok((reports, bad))
    }
}

/// Lower-case hex SHA-256.
/// Lower-case hex SHA-256 of `data` (file names, shared-store keys).
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The de-duplication key of a report: its report-id and a digest of its content with the
/// JSON's own layout (spacing, member order) taken out, so the same report mailed and POSTed
/// (RFC 8460 asks reporters to use every `rua=`) is one report.
pub fn dedup_key(report: &Report, json: &[u8]) -> String {
    let canonical = serde_json::from_slice::<serde_json::Value>(json)
        .ok()
        .and_then(|v| serde_json::to_vec(&v).ok())
        .unwrap_or_else(|| json.to_vec());
    format!("{}\0{}", report.report_id, sha256_hex(&canonical))
}

/// One file read and parsed; `Ok(None)` when it is not a valid report.
fn read(path: &Path) -> Result<Option<StoredReport>, StoreError> {
    let io_err = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let bytes = fs::read(path).map_err(io_err)?;
    let stored_at = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(Report::from_json_unchecked_time(&bytes)
        .ok()
        .map(|report| StoredReport {
            report,
            path: path.to_owned(),
            stored_at,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::report::RFC_EXAMPLE;
    use std::os::unix::fs::PermissionsExt;

    const ID: &str = "5065427c-23d3-47ca-b6e0-946ea0e8c4be";

    #[test]
    fn a_report_is_stored_once_private_and_read_back() {
        let spool = tempfile::tempdir().unwrap();
        let s = Store::new(spool.path());
        assert!(s.get(ID).unwrap().is_empty());
        assert_eq!(s.list().unwrap().0.len(), 0);
        assert_eq!(s.put(ID, RFC_EXAMPLE.as_bytes()).unwrap(), Stored::New);
        assert_eq!(
            s.put(ID, RFC_EXAMPLE.as_bytes()).unwrap(),
            Stored::Duplicate
        );
        let path = s.path_of(ID);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(path.parent().unwrap(), spool.path().join("tlsrpt"));
        assert!(
            name.len() == 69
                && name.ends_with(".json")
                && name[..64].bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
        assert_eq!(fs::read(&path).unwrap(), RFC_EXAMPLE.as_bytes());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(s.dir()), 0o700);
        // One file, no tmp file left.
        let names: Vec<_> = fs::read_dir(s.dir()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let got = s.get(ID).unwrap().remove(0);
        assert_eq!(got.report.report_id, ID);
        assert!(got.stored_at > 0);
        let (all, bad) = s.list().unwrap();
        assert_eq!((all.len(), bad.len()), (1, 0));
    }

    #[test]
    fn pruning_keeps_the_newest_within_both_caps() {
        let spool = tempfile::tempdir().unwrap();
        let s = Store::new(spool.path());
        let base = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
        for i in 0..5u64 {
            let id = format!("r{i}");
            s.put(&id, &vec![b'x'; 1000]).unwrap();
            let f = File::options().write(true).open(s.path_of(&id)).unwrap();
            f.set_modified(base + std::time::Duration::from_secs(i))
                .unwrap();
        }
        assert_eq!(s.prune(3, u64::MAX).unwrap(), 2);
        assert!(!s.contains("r0") && !s.contains("r1") && s.contains("r2"));
        // 2,500 bytes hold two 1,000-byte reports.
        assert_eq!(s.prune(10, 2_500).unwrap(), 1);
        assert!(!s.contains("r2") && s.contains("r3") && s.contains("r4"));
        assert_eq!(s.prune(10, u64::MAX).unwrap(), 0);
    }

    #[test]
    fn a_failed_write_leaves_nothing_and_concurrent_copies_store_one() {
        let spool = tempfile::tempdir().unwrap();
        let s = Store::new(spool.path());
        fs::create_dir_all(s.dir()).unwrap();
        // The next tmp names are taken (a stale file, a symlink planted by someone else):
        let seq = TMP_SEQ.load(Ordering::Relaxed);
        for i in seq..seq + 8 {
            std::os::unix::fs::symlink(
                "/dev/full",
                s.dir().join(format!(".tmp.{}.{i}", std::process::id())),
            )
            .unwrap();
        }
        // create_new refuses them, never writing through a symlink; nothing is stored.
        let err = s.put(ID, RFC_EXAMPLE.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("exists"), "{err}");
        assert!(!s.path_of(ID).exists());
        for e in fs::read_dir(s.dir()).unwrap().flatten() {
            fs::remove_file(e.path()).unwrap();
        }
        // Eight threads storing the same report: one New, seven Duplicate, one file.
        let results: Vec<Stored> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..8)
                .map(|_| sc.spawn(|| s.put(ID, RFC_EXAMPLE.as_bytes()).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|r| **r == Stored::New).count(), 1);
        assert_eq!(fs::read_dir(s.dir()).unwrap().count(), 1);
        // A damaged file is listed apart, not fatal.
        fs::write(s.dir().join("junk.json"), b"{").unwrap();
        let (all, bad) = s.list().unwrap();
        assert_eq!((all.len(), bad.len()), (1, 1));
    }
}
