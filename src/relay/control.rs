//! The running server's control socket (`spool/control.sock`): one line in, the answer out,
//! dispatched by verb — the queue's here (`retry`, `delete`, `bounce`), recipient
//! validation's in [`crate::validate::control`] — and read-only views of the spool for
//! `mxgate queue list|show`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::envelope::Envelope;
use crate::relay::queue::{Command, QueueHandle};
use crate::relay::state::{DeliveryState, Final};
use crate::spool::{queue_file, ReadError};
use crate::validate::control::{self as recipients, LiveRecipients};

/// The control socket's path inside a spool directory.
pub(crate) fn socket_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join("control.sock")
}

/// What the control socket steers.
#[derive(Clone)]
pub struct ControlTargets {
    /// The queue manager.
    pub queue: QueueHandle,
    /// Recipient validation of the current configuration (the server swaps it on reload).
    pub recipients: Arc<ArcSwap<LiveRecipients>>,
}

/// Serves the control verbs on a bound socket until aborted.
pub async fn serve(listener: UnixListener, targets: ControlTargets) {
    if let Ok(addr) = listener.local_addr() {
        if let Some(path) = addr.as_pathname() {
            use std::os::unix::fs::PermissionsExt;
            // Only the gateway's own user may steer the queue.
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let targets = targets.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut r = BufReader::new(r);
            if r.read_line(&mut line).await.is_err() {
                return;
            }
            let answer = execute(&targets, line.trim()).await;
            let _ = w.write_all(answer.as_bytes()).await;
        });
    }
}

/// Answers one line: the first word is the verb.
async fn execute(targets: &ControlTargets, line: &str) -> String {
    let (verb, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    if recipients::is_verb(verb) {
        // The configuration of the moment; a reload during the lookup does not change it.
        let live = targets.recipients.load_full();
        return recipients::execute(&live, verb, rest).await;
    }
    queue_verb(&targets.queue, verb, rest).await
}

/// `retry all|MID`, `delete MID`, `bounce MID`.
async fn queue_verb(handle: &QueueHandle, verb: &str, rest: &str) -> String {
    let arg = rest.split_whitespace().next().unwrap_or("");
    let mid = arg.parse::<u64>().ok();
    match (verb, arg, mid) {
        ("retry", "all", _) | ("retry", _, Some(_)) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            handle.send(Command::Retry(mid, tx));
            match (mid, rx.await) {
                (None, Ok((n, 0))) => format!("ok {n} message(s) scheduled for delivery now\n"),
                (None, Ok((n, busy))) => format!(
                    "ok {n} message(s) scheduled for delivery now, {busy} being delivered right now\n"
                ),
                (Some(m), Ok((1, _))) => format!("ok MID {m} scheduled for delivery now\n"),
                (Some(m), Ok((_, 1))) => format!("ok MID {m} is being delivered right now\n"),
                (Some(m), Ok(_)) => format!("error MID {m} is not queued\n"),
                (_, Err(_)) => "error the queue manager is not running\n".into(),
            }
        }
        ("delete", _, Some(m)) | ("bounce", _, Some(m)) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let cmd = if verb == "delete" {
                Command::Delete(m, tx)
            } else {
                Command::Bounce(m, tx)
            };
            handle.send(cmd);
            match rx.await {
                Ok(true) => format!("ok MID {m} {verb}d\n"),
                _ => format!("error MID {m} is not queued or is being delivered right now\n"),
            }
        }
        _ => format!(
            "error usage: retry all|MID, delete MID, bounce MID, {}\n",
            recipients::USAGE
        ),
    }
}

/// Sends one control command to a running server; `Err` when none is listening.
pub fn request(spool_dir: &Path, line: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let path = socket_path(spool_dir);
    let mut s = std::os::unix::net::UnixStream::connect(&path)
        .map_err(|e| format!("no running mxgate at {} ({e})", path.display()))?;
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// One queued message as `mxgate queue list` shows it.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    /// The MID in its file's name (the envelope's, unless the file was renamed by hand).
    pub file_mid: u64,
    /// The envelope.
    pub env: Envelope,
    /// Delivery progress.
    pub state: DeliveryState,
    /// Body size in bytes.
    pub size: u64,
}

/// A file in `queue/` that could not be read as a message: the server leaves it alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    /// The MID in its name.
    pub mid: u64,
    /// The file, relative to the spool (`queue/7.mail`).
    pub file: String,
    /// Why it could not be read.
    pub reason: String,
}

/// What `queue/` holds: the messages, and the files that could not be read.
#[derive(Debug, Clone, Default)]
pub struct QueueScan {
    /// Readable messages, oldest first.
    pub entries: Vec<QueueEntry>,
    /// Unreadable files, oldest first.
    pub damaged: Vec<Damaged>,
}

/// Reads every queued message (oldest first); unreadable files are left out: see [`scan`].
pub fn entries(spool_dir: &Path) -> Vec<QueueEntry> {
    scan(spool_dir).entries
}

/// Reads every file of `queue/`: the messages and, not hidden, the files that are damaged.
pub fn scan(spool_dir: &Path) -> QueueScan {
    let q = spool_dir.join("queue");
    let mut out = QueueScan::default();
    for mid in queue_file::list(&q) {
        match queue_file::read(&q, mid) {
            Ok(m) => out.entries.push(QueueEntry {
                file_mid: mid,
                env: m.env,
                state: DeliveryState::load(&q.join(format!("{mid}.dlv"))),
                size: m.size,
            }),
            // Gone meanwhile (delivered while we looked).
            Err(ReadError::Missing) => {}
            Err(e) => {
                let name = queue_file::path(&q, mid);
                let name = if name.exists() {
                    format!("{mid}.{}", queue_file::EXT)
                } else {
                    format!("{mid}.env")
                };
                out.damaged.push(Damaged {
                    mid,
                    file: format!("queue/{name}"),
                    reason: e.to_string(),
                });
            }
        }
    }
    out
}

/// The line `queue list` and `queue show` print for a damaged file.
pub fn render_damaged(d: &Damaged) -> String {
    format!("{:<10} damaged: {} ({})\n", d.mid, d.reason, d.file)
}

/// The note for a file whose name and envelope name different MIDs (copied or renamed by
/// hand): the server goes by the envelope.
fn misnamed(e: &QueueEntry) -> Option<String> {
    (e.file_mid != e.env.mid).then(|| {
        format!(
            "file queue/{}.{} holds MID {}: its name and its envelope disagree",
            e.file_mid,
            queue_file::EXT,
            e.env.mid
        )
    })
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The `mxgate queue list` table (like `mailq`), then a line for each damaged file.
pub fn render_list(scan: &QueueScan, now: u64) -> String {
    let entries = &scan.entries;
    let mut s = format!(
        "{:<10} {:>6} {:>8} {:>8} {:>9}  {:<30} {}\n",
        "MID", "AGE", "SIZE", "ATTEMPTS", "NEXT TRY", "SENDER", "RECIPIENTS (pending) / LAST ERROR"
    );
    for e in entries {
        let pending: Vec<&str> = e
            .env
            .rcpts
            .iter()
            .enumerate()
            .filter(|(i, _)| !e.state.finals.contains_key(&(*i as u32)))
            .map(|(_, r)| r.as_str())
            .collect();
        let next = match e.state.next_try {
            0 => "now".to_string(),
            t if t <= now => "now".to_string(),
            u64::MAX => "running".to_string(),
            t => format!("in {}", age(t - now)),
        };
        let from = if e.env.from.is_empty() {
            "<>".to_string()
        } else {
            e.env.from.clone()
        };
        s.push_str(&format!(
            "{:<10} {:>6} {:>8} {:>8} {:>9}  {:<30} {}\n",
            e.env.mid,
            age(now.saturating_sub(e.env.received_unix)),
            e.size,
            e.state.attempts,
            next,
            from,
            pending.join(", ")
        ));
        if let Some(err) = &e.state.last_error {
            s.push_str(&format!("{:>47}  last error: {err}\n", ""));
        }
        if let Some(note) = misnamed(e) {
            s.push_str(&format!("{:>47}  {note}\n", ""));
        }
    }
    for d in &scan.damaged {
        s.push_str(&render_damaged(d));
    }
    s.push_str(&format!("-- {} message(s) in queue", entries.len()));
    if !scan.damaged.is_empty() {
        s.push_str(&format!(
            ", {} damaged file(s) left alone (see above)",
            scan.damaged.len()
        ));
    }
    s.push('\n');
    s
}

/// A Unix time as RFC 3339 in local time (`2026-11-22T15:04:25+01:00`), as people read it.
fn local_time(t: u64) -> String {
    i64::try_from(t)
        .ok()
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|d| {
            d.with_timezone(&chrono::Local)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .unwrap_or_else(|| t.to_string())
}

/// The `mxgate queue show MID` text.
pub fn render_show(e: &QueueEntry) -> String {
    let received = format!("\nreceived {}\n", e.env.received_unix);
    let mut s = e.env.to_text().replace("\nend\n", "\n").replacen(
        &received,
        &format!("\nreceived {}\n", local_time(e.env.received_unix)),
        1,
    );
    let next_try = match e.state.next_try {
        0 => "now".to_string(),
        u64::MAX => "being delivered now".to_string(),
        t => local_time(t),
    };
    s.push_str(&format!(
        "size {}\nattempts {}\nnext_try {next_try}\n",
        e.size, e.state.attempts
    ));
    for (rid, r) in e.env.rcpts.iter().enumerate() {
        let st = match e.state.finals.get(&(rid as u32)) {
            Some(Final::Delivered) => "delivered",
            Some(Final::Bounced) => "bounced",
            None => "pending",
        };
        s.push_str(&format!("RID {rid} {r} {st}\n"));
    }
    if let Some(err) = &e.state.last_error {
        s.push_str(&format!("last_error {err}\n"));
    }
    if let Some(note) = misnamed(e) {
        s.push_str(&format!("note {note}\n"));
    }
    s
}
