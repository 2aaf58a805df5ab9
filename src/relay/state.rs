//! Per-message delivery state beside the queue file (`queue/MID.dlv`): which recipients are
//! final, how many attempts, when to try next. Replaced atomically (rename) after every
//! attempt, without an fsync: it only ever records what already happened, so a crash that
//! loses it (or leaves it empty) sends again what it recorded, never loses a recipient
//! (docs/spool.md, "What a crash does").

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::spool::Spool;

/// The final outcome of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Final {
    /// Accepted downstream with a 2xx.
    Delivered,
    /// Permanently failed; a DSN was (or will not be, for the null sender) generated.
    Bounced,
}

/// Delivery progress of a queued message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryState {
    /// Delivery attempts made so far (connections that reached the message).
    pub attempts: u32,
    /// Next attempt, seconds since the epoch (0 = now).
    pub next_try: u64,
    /// Recipients with a final outcome, by RID.
    pub finals: BTreeMap<u32, Final>,
    /// Last temporary error, for `queue list`.
    pub last_error: Option<String>,
}

impl DeliveryState {
    /// Serialises to text.
    pub(crate) fn to_text(&self) -> String {
        let mut s = format!("attempts {}\nnext_try {}\n", self.attempts, self.next_try);
        for (rid, f) in &self.finals {
            let w = match f {
                Final::Delivered => "delivered",
                Final::Bounced => "bounced",
            };
            s.push_str(&format!("rid {rid} {w}\n"));
        }
        if let Some(e) = &self.last_error {
            s.push_str(&format!("last_error {}\n", e.replace(['\r', '\n'], " ")));
        }
        s.push_str("end\n");
        s
    }

    /// Parses the text form; a file without its `end` line is treated as absent.
    pub fn parse(text: &str) -> Option<Self> {
        let mut st = DeliveryState::default();
        let mut complete = false;
        for line in text.lines() {
            if line == "end" {
                complete = true;
                break;
            }
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            match k {
                "attempts" => st.attempts = v.parse().ok()?,
                "next_try" => st.next_try = v.parse().ok()?,
                "rid" => {
                    let (rid, w) = v.split_once(' ')?;
                    let f = match w {
                        "delivered" => Final::Delivered,
                        "bounced" => Final::Bounced,
                        _ => return None,
                    };
                    st.finals.insert(rid.parse().ok()?, f);
                }
                "last_error" => st.last_error = Some(v.to_string()),
                _ => {}
            }
        }
        complete.then_some(st)
    }

    /// Loads the state file; absent or damaged means "nothing done yet" (at-least-once).
    pub fn load(path: &Path) -> Self {
        fs::read_to_string(path)
            .ok()
            .and_then(|t| Self::parse(&t))
            .unwrap_or_default()
    }

    /// Replaces the state: tmp file, rename, no fsync (see the module doc: a lost or empty
    /// state repeats deliveries, never loses one). On failure the tmp file is removed and the
    /// previous state (if any) stays. Blocking: the queue manager calls it on the blocking pool.
    pub(crate) fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("dlv.tmp");
        let result = (|| {
            // Private like the rest of the spool.
            let mut f = std::os::unix::fs::OpenOptionsExt::mode(
                File::options().write(true).create(true).truncate(true),
                crate::spool::FILE_MODE,
            )
            .open(&tmp)?;
            f.write_all(self.to_text().as_bytes())?;
            fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// [`DeliveryState::save`] as message `mid`'s state in `spool`; when the disk is full,
    /// empties the spool's free-file pool and tries once more.
    pub(crate) fn save_in(&self, spool: &Spool, mid: u64) -> std::io::Result<()> {
        let path = spool.state_path(mid);
        match self.save(&path) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) && spool.reclaim_space() =>
            {
                self.save(&path)
            }
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut st = DeliveryState {
            attempts: 3,
            next_try: 1234,
            last_error: Some("451 4.3.0 try later\r\nx".into()),
            ..Default::default()
        };
        st.finals.insert(0, Final::Delivered);
        st.finals.insert(2, Final::Bounced);
        let t = st.to_text();
        let back = DeliveryState::parse(&t).unwrap();
        assert_eq!(back.finals, st.finals);
        assert_eq!(back.last_error.as_deref(), Some("451 4.3.0 try later  x"));
        assert!(DeliveryState::parse(&t[..t.len() - 4]).is_none());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.dlv");
        assert_eq!(DeliveryState::load(&p), DeliveryState::default());
        st.save(&p).unwrap();
        assert_eq!(DeliveryState::load(&p).attempts, 3);
    }
}
