//! The cache file (`SPOOL/validation/recipients.cache`), so a restart does not re-probe every
//! address. Text, one entry a line, five fields separated by TAB (SMTP addresses cannot
//! contain TAB or LF): `V` (valid) or `I` (invalid), stored and expires (unix seconds), method
//! id, address. The first line is [`HEADER`]; docs/recipient-validation.md has an example.
//!
//! Written whole: a tmp file beside it, fsync, rename, fsync the directory, so a crash leaves
//! the old file or the new one. Reading skips (and counts) malformed, expired and
//! unknown-method lines: a damaged cache only costs probes.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::cache::{CacheKey, Entry, VerdictCache};

/// First line of the file.
pub const HEADER: &str = "# mxgate recipient validation cache v1";

/// Reading or writing the cache file failed.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
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

/// What loading found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoadReport {
    /// Entries put into the cache.
    pub loaded: usize,
    /// Lines already expired.
    pub expired: usize,
    /// Lines that are not entries (the Warning names the count).
    pub malformed: usize,
    /// Entries of a method the configuration no longer has.
    pub unknown_method: usize,
}

/// One line's entry, or `None` when the line is malformed.
fn parse_line(line: &str) -> Option<(CacheKey, Entry)> {
    let mut f = line.splitn(4, '\t');
    let valid = match f.next()? {
        "V" => true,
        "I" => false,
        _ => return None,
    };
    let stored: u64 = f.next()?.parse().ok()?;
    let expires: u64 = f.next()?.parse().ok()?;
    let key = CacheKey::from_text(f.next()?)?;
    (stored <= expires).then_some((
        key,
        Entry {
            valid,
            stored,
            expires,
            last_hit: stored,
        },
    ))
}

/// Loads `path` into `cache` at `now`; a missing file is an empty cache. `is_known` says
/// whether a method id is still configured.
pub fn load(
    cache: &VerdictCache,
    path: &Path,
    now: u64,
    is_known: impl Fn(&str) -> bool,
) -> Result<LoadReport, PersistError> {
    let text = match fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LoadReport::default()),
        Err(source) => {
            return Err(PersistError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let mut report = LoadReport::default();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            None => report.malformed += 1,
            Some((_, e)) if e.expires <= now => report.expired += 1,
            Some((k, _)) if !is_known(k.method()) => report.unknown_method += 1,
            Some((k, mut e)) => {
                // The file is not trusted further than the settings: an entry never outlives
                // its TTL (after a lowered `invalid_ttl`, a wrong clock, or a hand edit).
                let s = cache.settings();
                let ttl = if e.valid { s.valid_ttl } else { s.invalid_ttl };
                e.stored = e.stored.min(now);
                e.expires = e.expires.min(e.stored.saturating_add(ttl));
                if e.expires <= now {
                    report.expired += 1;
                    continue;
                }
                cache.insert_entry(k, e, now);
                report.loaded += 1;
            }
        }
    }
    Ok(report)
}

/// Creates `dir` (mode 0700) if it is missing.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes every unexpired entry of `cache` to `path` durably; returns how many.
pub fn save(cache: &VerdictCache, path: &Path, now: u64) -> Result<usize, PersistError> {
    let io_err = |p: &Path| {
        let p = p.to_owned();
        move |source| PersistError::Io { path: p, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    create_private_dir(dir).map_err(io_err(dir))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let entries = cache.entries(now);
    let write = || -> io::Result<()> {
        // The file lists which addresses exist: readable by the server's user only, as the
        // rest of the spool.
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?
        };
        let mut w = BufWriter::new(file);
        writeln!(w, "{HEADER}")?;
        for (k, e) in &entries {
            let kind = if e.valid { 'V' } else { 'I' };
            writeln!(w, "{kind}\t{}\t{}\t{}", e.stored, e.expires, k.as_str())?;
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()
    };
    if let Err(e) = write() {
        // A half-written file (a full disk) must not keep the space the spool needs.
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    fs::rename(&tmp, path).map_err(io_err(path))?;
    // The rename is durable only once the directory is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::cache::CacheSettings;
    use crate::validate::verdict::Verdict;

    #[test]
    fn loaded_entries_never_outlive_their_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recipients.cache");
        // Forever, and stored in the future: both clamped to the invalid TTL (1 h).
        fs::write(
            &path,
            format!(
                "{HEADER}\nI\t1000\t18446744073709551615\tcallahead:example.com\tceo@example.com\n\
                 I\t99999\t99999999\tcallahead:example.com\tcfo@example.com\n"
            ),
        )
        .unwrap();
        let c = VerdictCache::new(CacheSettings::default());
        let r = load(&c, &path, 2000, |_| true).unwrap();
        assert_eq!(r.loaded, 2);
        let e: Vec<(String, u64)> = c
            .entries(2000)
            .iter()
            .map(|(k, e)| (k.address().to_string(), e.expires))
            .collect();
        assert!(
            e.contains(&("ceo@example.com".into(), 1000 + 3600)),
            "{e:?}"
        );
        assert!(
            e.contains(&("cfo@example.com".into(), 2000 + 3600)),
            "{e:?}"
        );
        // Past its TTL at load: expired.
        let c = VerdictCache::new(CacheSettings::default());
        let r = load(&c, &path, 1000 + 3600, |_| true).unwrap();
        assert_eq!((r.loaded, r.expired), (1, 1));
    }

    #[test]
    fn a_failed_save_leaves_no_tmp_file_and_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("validation/recipients.cache");
        let c = VerdictCache::new(CacheSettings::default());
        c.insert(c.key("ldap:corp", "a@example.com"), Verdict::Valid, 1000);
        save(&c, &path, 1000).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // A full disk: the tmp file is /dev/full (ENOSPC on write); it is removed after.
        let tmp = dir.path().join("validation/recipients.cache.tmp");
        std::os::unix::fs::symlink("/dev/full", &tmp).unwrap();
        let err = save(&c, &path, 1000).unwrap_err().to_string();
        assert!(err.contains("No space left"), "{err}");
        assert!(fs::symlink_metadata(&tmp).is_err(), "the tmp file is left");
        assert_eq!(mode(&path), 0o600, "the previous file is kept");
    }

    #[test]
    fn save_then_load_keeps_entries_and_their_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("validation/recipients.cache");
        let c = VerdictCache::new(CacheSettings::default());
        c.insert(
            c.key("callahead:example.com", "alice@example.com"),
            Verdict::Valid,
            1000,
        );
        c.insert(
            c.key("ldap:corp", "nobody@example.com"),
            Verdict::Invalid,
            1005,
        );
        assert_eq!(save(&c, &path, 1010).unwrap(), 2);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!(
                "{HEADER}\n\
                 V\t1000\t605800\tcallahead:example.com\talice@example.com\n\
                 I\t1005\t4605\tldap:corp\tnobody@example.com\n"
            )
        );
        assert!(!dir.path().join("validation/recipients.cache.tmp").exists());
        let d = VerdictCache::new(CacheSettings::default());
        let r = load(&d, &path, 2000, |_| true).unwrap();
        assert_eq!(r.loaded, 2);
        let h = d
            .get(&d.key("ldap:corp", "nobody@example.com"), 2000)
            .unwrap();
        assert_eq!(
            (h.verdict, h.stored, h.expires),
            (Verdict::Invalid, 1005, 4605)
        );
    }

    #[test]
    fn malformed_expired_and_unknown_lines_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recipients.cache");
        fs::write(
            &path,
            "# mxgate recipient validation cache v1\n\
             V\t100\t9000\tcallahead:example.com\ta@example.com\n\
             X\t100\t9000\tcallahead:example.com\tb@example.com\n\
             V\tnot-a-number\t9000\tcallahead:example.com\tc@example.com\n\
             V\t100\t9000\tno-address-part\n\
             V\t100\t9000\tcallahead:example.com\td@exa\tmple.com\n\
             V\t9000\t100\tcallahead:example.com\te@example.com\n\
             I\t100\t200\tcallahead:example.com\tf@example.com\n\
             V\t100\t9000\tldap:gone\tg@example.com\n\
             \n",
        )
        .unwrap();
        let c = VerdictCache::new(CacheSettings::default());
        let r = load(&c, &path, 500, |m| m != "ldap:gone").unwrap();
        assert_eq!(
            r,
            LoadReport {
                loaded: 1,
                expired: 1,
                malformed: 5,
                unknown_method: 1
            }
        );
        assert_eq!(c.entries(500).len(), 1);
    }

    #[test]
    fn a_missing_file_is_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        let c = VerdictCache::new(CacheSettings::default());
        let r = load(&c, &dir.path().join("none"), 1, |_| true).unwrap();
        assert_eq!(r, LoadReport::default());
    }
}
