//! Readiness (`/ready`): start-up complete, not draining (`mxgate drain`), the spool's
//! filesystem has room, and no spool write failed for lack of space a moment ago.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Free space `/ready` requires on the spool's filesystem: room for a few messages of the
/// size the shipped policies allow (50 MiB), so traffic is moved away before sessions get
/// `452 Insufficient system storage`.
pub const SPOOL_MIN_FREE_BYTES: u64 = 256 << 20;
/// Free inodes `/ready` requires on the spool's filesystem (each message takes two files).
pub(crate) const SPOOL_MIN_FREE_INODES: u64 = 1024;
/// How long a spool write that failed for lack of space keeps `/ready` at 503, unless a
/// message is queued meanwhile. Bounded because a pod without traffic cannot prove that
/// writing works again: after this, free space alone decides.
pub(crate) const OUT_OF_SPACE_HOLD: Duration = Duration::from_secs(60);

/// When a spool write last failed with ENOSPC or EDQUOT; cleared by a queued message. One
/// process serves one spool, and the failure is only seen as a mail-log event, hence global.
static OUT_OF_SPACE_AT: Mutex<Option<Instant>> = Mutex::new(None);

/// Readiness: set by the app once listeners are bound and the spool is open; after that,
/// each `/ready` also checks the spool's filesystem (`spool_unready`).
#[derive(Debug, Default)]
pub struct Readiness {
    started: AtomicBool,
    /// `mxgate drain` began: 503 at once and for good, so the load balancer moves away.
    draining: AtomicBool,
    /// The spool directory and the free bytes it must keep.
    spool: Mutex<Option<(PathBuf, u64)>>,
    /// Frees space held only for reuse, before space is called short.
    reclaim: Reclaim,
}

/// Frees space that is only kept for reuse (the spool's recycled files); true when it did.
#[derive(Default)]
struct Reclaim(Mutex<Option<Box<dyn Fn() -> bool + Send + Sync>>>);

impl std::fmt::Debug for Reclaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reclaim")
    }
}

impl Readiness {
    /// Marks start-up complete or not.
    pub fn set(&self, ready: bool) {
        self.started.store(ready, Ordering::SeqCst);
    }

    /// Marks the gateway as draining: `/ready` answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Checks the filesystem of `dir` on every `/ready`, requiring `min_free_bytes`.
    pub fn watch_spool(&self, dir: PathBuf, min_free_bytes: u64) {
        if let Ok(mut s) = self.spool.lock() {
            *s = Some((dir, min_free_bytes));
        }
    }

    /// Before `/ready` says space is short, `reclaim` may free space kept only for reuse
    /// (returning true when it did), so that such space never makes the gateway unready.
    pub(crate) fn on_low_space(&self, reclaim: impl Fn() -> bool + Send + Sync + 'static) {
        if let Ok(mut r) = self.reclaim.0.lock() {
            *r = Some(Box::new(reclaim));
        }
    }

    /// `Ok` when ready, else the reason `/ready` gives with its 503.
    pub fn check(&self) -> Result<(), String> {
        if !self.started.load(Ordering::SeqCst) {
            return Err("starting".into());
        }
        if self.draining.load(Ordering::SeqCst) {
            return Err("draining".into());
        }
        let Some((dir, min_free)) = self.spool.lock().ok().and_then(|s| s.clone()) else {
            return Ok(());
        };
        let read = || free_space(&dir).map_err(|e| format!("{}: {e}", dir.display()));
        let mut free = read();
        let failed_ago = OUT_OF_SPACE_AT
            .lock()
            .ok()
            .and_then(|t| t.map(|t| t.elapsed()));
        if spool_unready(&free, min_free, failed_ago).is_some() {
            let reclaimed = self
                .reclaim
                .0
                .lock()
                .ok()
                .is_some_and(|r| r.as_ref().is_some_and(|f| f()));
            if reclaimed {
                free = read();
            }
        }
        match spool_unready(&free, min_free, failed_ago) {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }
}

/// Free space of a filesystem as an unprivileged writer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeSpace {
    /// Bytes available.
    pub bytes: u64,
    /// Inodes available; `None` when the filesystem does not count them (e.g. btrfs).
    pub inodes: Option<u64>,
}

/// `statvfs(2)` of the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> std::io::Result<FreeSpace> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statvfs only writes into the zeroed struct, and `path` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The field widths differ between platforms; u64 holds them all.
    #[allow(clippy::unnecessary_cast)]
    let (bavail, frsize, files, favail) = (
        st.f_bavail as u64,
        st.f_frsize as u64,
        st.f_files as u64,
        st.f_favail as u64,
    );
    Ok(FreeSpace {
        bytes: bavail.saturating_mul(frsize),
        inodes: (files > 0).then_some(favail),
    })
}

/// Why the spool cannot take mail, or `None` when it can. `free` is its filesystem's free
/// space (or why that could not be read); `out_of_space_ago` is how long ago a spool write
/// last failed for lack of space, if no message has been queued since.
pub(crate) fn spool_unready(
    free: &Result<FreeSpace, String>,
    min_free_bytes: u64,
    out_of_space_ago: Option<Duration>,
) -> Option<String> {
    // Whole MiB where that says enough, KiB below one MiB (a small threshold read "0 MiB").
    let mib = |b: u64| {
        if b >= 1 << 20 {
            format!("{} MiB", b >> 20)
        } else {
            format!("{} KiB", b >> 10)
        }
    };
    match free {
        Err(e) => return Some(format!("spool filesystem unreadable: {e}")),
        Ok(f) if f.bytes < min_free_bytes => {
            return Some(format!(
                "spool filesystem has {} free, needs {}",
                mib(f.bytes),
                mib(min_free_bytes)
            ))
        }
        Ok(FreeSpace {
            inodes: Some(n), ..
        }) if *n < SPOOL_MIN_FREE_INODES => {
            return Some(format!(
                "spool filesystem has {n} free inodes, needs {SPOOL_MIN_FREE_INODES}"
            ))
        }
        Ok(_) => {}
    }
    match out_of_space_ago {
        Some(ago) if ago < OUT_OF_SPACE_HOLD => Some(format!(
            "a spool write failed for lack of space {} s ago",
            ago.as_secs()
        )),
        _ => None,
    }
}

/// A spool write failed; `out_of_space` when the filesystem or a quota was full, which
/// makes `/ready` answer 503 for a while ([`OUT_OF_SPACE_HOLD`]).
pub(crate) fn spool_write_failed(out_of_space: bool) {
    if out_of_space {
        set_out_of_space(true);
    }
}

/// Records (`true`) or clears (`false`) a spool write that failed for lack of space.
pub(super) fn set_out_of_space(failed: bool) {
    if let Ok(mut t) = OUT_OF_SPACE_AT.lock() {
        *t = failed.then(Instant::now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{observe_inbound, InboundLabels};

    const GIB: u64 = 1 << 30;

    fn free(bytes: u64, inodes: Option<u64>) -> Result<FreeSpace, String> {
        Ok(FreeSpace { bytes, inodes })
    }

    #[test]
    fn spool_readiness_decision() {
        let min = SPOOL_MIN_FREE_BYTES;
        assert_eq!(spool_unready(&free(GIB, Some(100_000)), min, None), None);
        assert_eq!(spool_unready(&free(min, None), min, None), None);
        assert_eq!(
            spool_unready(&free(min - 1, Some(100_000)), min, None).as_deref(),
            Some("spool filesystem has 255 MiB free, needs 256 MiB")
        );
        // Below one MiB the figures are in KiB (not "0 MiB free, needs 0 MiB").
        assert_eq!(
            spool_unready(&free(300 << 10, None), 512 << 10, None).as_deref(),
            Some("spool filesystem has 300 KiB free, needs 512 KiB")
        );
        assert_eq!(
            spool_unready(&free(GIB, Some(10)), min, None).as_deref(),
            Some("spool filesystem has 10 free inodes, needs 1024")
        );
        assert_eq!(
            spool_unready(
                &Err("/x: No such file or directory (os error 2)".into()),
                min,
                None
            )
            .as_deref(),
            Some("spool filesystem unreadable: /x: No such file or directory (os error 2)")
        );
        // A failed write holds 503 for a while even with space free (a quota, a burst), then
        // free space alone decides again.
        let ago = Some(Duration::from_secs(12));
        assert_eq!(
            spool_unready(&free(GIB, None), min, ago).as_deref(),
            Some("a spool write failed for lack of space 12 s ago")
        );
        assert_eq!(
            spool_unready(&free(GIB, None), min, Some(OUT_OF_SPACE_HOLD)),
            None
        );
    }

    #[test]
    fn readiness_follows_start_up_space_and_failed_writes() {
        let dir = tempfile::tempdir().unwrap();
        let r = Readiness::default();
        assert_eq!(r.check(), Err("starting".into()));
        r.set(true);
        assert_eq!(r.check(), Ok(()), "no spool watched");
        r.watch_spool(dir.path().to_path_buf(), 0);
        assert_eq!(r.check(), Ok(()));
        let f = free_space(dir.path()).unwrap();
        assert!(f.bytes > 0);
        r.watch_spool(dir.path().to_path_buf(), u64::MAX);
        assert!(r.check().unwrap_err().starts_with("spool filesystem has "));
        r.watch_spool(dir.path().join("gone"), 0);
        assert!(r
            .check()
            .unwrap_err()
            .starts_with("spool filesystem unreadable: "));

        // The mail-log events of a session drive the failed-write hold.
        r.watch_spool(dir.path().to_path_buf(), 0);
        let labels = InboundLabels {
            listener: "l".into(),
            sender_group: "ALL".into(),
            policy: "ACCEPTED".into(),
            sender_org: "other".into(),
        };
        // Another failure does not count; a full filesystem does.
        spool_write_failed(false);
        assert_eq!(r.check(), Ok(()));
        spool_write_failed(true);
        assert!(r
            .check()
            .unwrap_err()
            .starts_with("a spool write failed for lack of space"));
        observe_inbound(&crate::mail_log::Event::Queued { mid: 2 }, &labels);
        assert_eq!(r.check(), Ok(()));
    }
}
