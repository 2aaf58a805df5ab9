//! `mxgate drain`: asks the running server to drain (the deadline in the spool's
//! `mxgate.drain`, then SIGUSR2 to the spool lock's holder, as `mxgate reload` finds it), and
//! waits for it to exit, printing how many messages are still queued.

use std::time::{Duration, Instant};

use super::*;
use mxgate::app::drain;

/// How long after the deadline the server may take to stop (closing sessions, the last
/// deliveries' answers) before this command gives up waiting.
const EXIT_MARGIN: Duration = Duration::from_secs(30);
/// How often the command prints progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Exit status: the deadline passed with mail still queued.
const MAIL_LEFT: u8 = 1;
/// Exit status: no server, or it could not be told or did not stop.
const ERROR: u8 = 2;

/// `--deadline`.
pub(super) fn deadline_arg(s: &str) -> Result<Duration, String> {
    drain::parse_deadline(s)
}

pub(super) fn drain(args: &ConfigArgs, deadline: Duration) -> anyhow::Result<ExitCode> {
    let Some(cfg) = args.load_or_report()? else {
        return Ok(ExitCode::from(ERROR));
    };
    let spool = &cfg.global.spool_dir;
    let pid = match mxgate::spool::lock::holder(spool)? {
        Some(pid) => pid,
        None => anyhow::bail!(
            "no running mxgate on spool {} (its lock is not held)",
            spool.display()
        ),
    };
    drain::write_request(spool, deadline)
        .with_context(|| format!("writing {}", spool.join(drain::DRAIN_FILE).display()))?;
    // SAFETY: kill(2) with the pid of the lock's holder and a standard signal.
    if unsafe { libc::kill(pid as i32, libc::SIGUSR2) } != 0 {
        anyhow::bail!(
            "cannot signal mxgate pid {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    println!(
        "drain signalled to mxgate pid {pid} (deadline {}s)",
        deadline.as_secs()
    );
    let queue = spool.join("queue");
    let request = spool.join(drain::DRAIN_FILE);
    let written = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut asked = written(&request);
    let mut deadline = deadline;
    let mut started = Instant::now();
    let mut next_report = started;
    while mxgate::spool::lock::holder(spool)?.is_some() {
        // Another `mxgate drain` set a new deadline (counted from its signal): follow it, or
        // this command would give up on a server that drains as it was told.
        let now_asked = written(&request);
        if now_asked.is_some() && now_asked != asked {
            asked = now_asked;
            if let Some(newer) = std::fs::read_to_string(&request)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
            {
                deadline = Duration::from_secs(newer).min(drain::MAX_DEADLINE);
                started = Instant::now();
                println!(
                    "another mxgate drain set a new deadline: {}s",
                    deadline.as_secs()
                );
            }
        }
        if started.elapsed() > deadline + EXIT_MARGIN {
            anyhow::bail!(
                "mxgate pid {pid} still runs {}s after the drain deadline",
                EXIT_MARGIN.as_secs()
            );
        }
        if Instant::now() >= next_report {
            next_report += PROGRESS_EVERY;
            println!(
                "draining: {} messages queued, {}s left",
                mxgate::spool::queue_file::list(&queue).len(),
                deadline.saturating_sub(started.elapsed()).as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let left = mxgate::spool::queue_file::list(&queue).len();
    if left == 0 {
        println!("mxgate pid {pid} drained: queue empty, server exited");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "mxgate pid {pid} exited with {left} messages still queued in {} (delivered after the next start)",
            queue.display()
        );
        Ok(ExitCode::from(MAIL_LEFT))
    }
}
