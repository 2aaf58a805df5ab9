//! The running server after start-up: reload on SIGHUP, `mxgate reload` or a changed
//! certificate file, reopen the mail log on SIGUSR1, drain on SIGUSR2 (`mxgate drain`, see
//! [`super::drain`]), stop on SIGTERM/SIGINT; the pid file that lets `mxgate reload` find
//! the server.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};

use super::{AppError, Running};
use crate::config::model::Config;
use crate::mail_log::{Event, Level};

/// How often certificate files are checked for a renewal.
const CERT_POLL: Duration = Duration::from_secs(2);

/// How the server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM or SIGINT: sessions got the grace period, the queue stays as it is.
    Signal,
    /// After a drain; `left` messages stay in the spool (0: everything was delivered).
    Drained {
        /// Messages still queued.
        left: usize,
    },
}

/// Serves until SIGTERM or SIGINT, then shuts down within the grace period of the
/// configuration in force; or, on SIGUSR2, drains and then shuts down. `load` reads the
/// configuration again (with the command line's overrides) on each reload; its `Err` holds
/// every error found, one a line.
pub async fn run(
    running: Running,
    config: &Config,
    load: impl Fn() -> Result<Config, String>,
) -> Result<Stopped, AppError> {
    let pid_file = config.global.spool_dir.join("mxgate.pid");
    if let Err(e) = write_private(&pid_file, &format!("{}\n", std::process::id())) {
        tracing::warn!(
            "cannot write {}: {e} (`mxgate reload` will not find this server)",
            pid_file.display()
        );
    }
    let mut term = signal(SignalKind::terminate()).map_err(AppError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AppError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(AppError::Signals)?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(AppError::Signals)?;
    let mut usr2 = signal(SignalKind::user_defined2()).map_err(AppError::Signals)?;
    // Certificate files are watched so a renewed certificate is used without a signal.
    let mut watched = CertWatch::new(Running::certificate_files(config));
    let mut tick = tokio::time::interval(CERT_POLL);
    let mut grace = config.global.shutdown_grace;
    let drain = loop {
        tokio::select! {
            _ = term.recv() => break None,
            _ = int.recv() => break None,
            _ = usr2.recv() => break Some(super::drain::read_request(&config.global.spool_dir)),
            _ = hup.recv() => {
                reopen(&running);
                if let Some(new) = reload(&load, &running) {
                    grace = new.global.shutdown_grace;
                    watched = CertWatch::new(Running::certificate_files(&new));
                }
            }
            _ = usr1.recv() => reopen(&running),
            _ = tick.tick() => {
                if watched.changed() {
                    running.mail_log.log(&Event::Note {
                        level: Level::Info,
                        text: "certificate file changed: reloading".into(),
                    });
                    if let Some(new) = reload(&load, &running) {
                        watched = CertWatch::new(Running::certificate_files(&new));
                    }
                }
            }
        }
    };
    let Some(deadline) = drain else {
        // Tests and scripts wait for this line on stderr.
        eprintln!("mxgate: shutting down (grace {grace:?})");
        running.shutdown(grace).await;
        let _ = std::fs::remove_file(&pid_file);
        return Ok(Stopped::Signal);
    };
    eprintln!("mxgate: draining (deadline {deadline:?})");
    let mut until = tokio::time::Instant::now() + deadline;
    running.begin_drain(deadline);
    loop {
        tokio::select! {
            _ = running.drain_wait(until, grace) => break,
            // A second `mxgate drain` sets a new deadline, counted from now.
            _ = usr2.recv() => {
                let deadline = super::drain::read_request(&config.global.spool_dir);
                until = tokio::time::Instant::now() + deadline;
                running.drain_deadline_changed(deadline);
            }
            // A stop signal during a drain ends it: what is queued stays.
            _ = term.recv() => {
                running.drain_cut_short("SIGTERM");
                break;
            }
            _ = int.recv() => {
                running.drain_cut_short("SIGINT");
                break;
            }
        }
    }
    let spool = running.spool.clone();
    // Whatever time is left lets deliveries under way finish; sessions are closed by now.
    running
        .shutdown(until.saturating_duration_since(tokio::time::Instant::now()))
        .await;
    let left = super::drain::queued(&spool);
    let _ = std::fs::remove_file(spool.root().join(super::drain::DRAIN_FILE));
    let _ = std::fs::remove_file(&pid_file);
    eprintln!("mxgate: drained, {left} messages left in the spool");
    Ok(Stopped::Drained { left })
}

/// Writes a file readable by this user only, like everything in the spool.
pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::spool::FILE_MODE)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Modification times of certificate files, to notice renewals.
struct CertWatch {
    files: Vec<(PathBuf, Option<SystemTime>)>,
}

impl CertWatch {
    fn new(paths: Vec<PathBuf>) -> Self {
        let files = paths.into_iter().map(|p| {
            let m = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (p, m)
        });
        CertWatch {
            files: files.collect(),
        }
    }

    fn changed(&mut self) -> bool {
        let mut changed = false;
        for (p, seen) in &mut self.files {
            let now = std::fs::metadata(&*p).and_then(|m| m.modified()).ok();
            if now != *seen {
                *seen = now;
                changed = true;
            }
        }
        changed
    }
}

/// Reloads configuration and certificates; on any error the running configuration stays.
fn reload(load: &impl Fn() -> Result<Config, String>, running: &Running) -> Option<Config> {
    let result = match load() {
        Ok(cfg) => running.apply(&cfg).map(|_| cfg).map_err(|e| e.to_string()),
        Err(errors) => Err(errors),
    };
    match result {
        Ok(cfg) => {
            ::metrics::counter!(crate::metrics::CONFIG_RELOADS, "result" => "success").increment(1);
            for w in &cfg.warnings {
                running.mail_log.log(&Event::Note {
                    level: Level::Warning,
                    text: format!("reload: {}", w.render()),
                });
            }
            running.mail_log.log(&Event::Note {
                level: Level::Info,
                text:
                    "configuration reloaded: new connections use it, open ones finish under the old"
                        .into(),
            });
            Some(cfg)
        }
        Err(errors) => {
            ::metrics::counter!(crate::metrics::CONFIG_RELOADS, "result" => "failure").increment(1);
            for line in errors.lines().filter(|l| !l.trim().is_empty()) {
                tracing::error!("reload: {line}");
                running.mail_log.log(&Event::Note {
                    level: Level::Warning,
                    text: format!("reload refused, old configuration kept: {line}"),
                });
            }
            None
        }
    }
}

/// Reopens the mail log (after rotation).
fn reopen(running: &Running) {
    match running.mail_log.reopen() {
        Ok(()) => tracing::info!("mail log reopened"),
        Err(e) => tracing::error!("{e}"),
    }
}
