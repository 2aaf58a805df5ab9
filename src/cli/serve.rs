//! `mxgate serve`: start the server, then reload on SIGHUP, `mxgate reload` or a changed
//! certificate file, reopen the mail log on SIGUSR1, stop on SIGTERM/SIGINT.

use super::*;

pub(super) async fn serve(args: ConfigArgs, cfg: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let running = mxgate::app::start(&cfg).await?;
    for (name, addr) in &running.bound {
        // Tests and scripts read this line to learn ports bound as :0.
        eprintln!("mxgate: listener {name} listening on {addr}");
    }
    if let Some(addr) = running.metrics_addr {
        eprintln!("mxgate: metrics listening on http://{addr}/metrics");
    }
    let pid_file = cfg.global.spool_dir.join("mxgate.pid");
    if let Err(e) = write_private(&pid_file, &format!("{}\n", std::process::id())) {
        tracing::warn!(
            "cannot write {}: {e} (`mxgate reload` will not find this server)",
            pid_file.display()
        );
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    // Certificate files are watched so a renewed certificate is used without a signal.
    let mut watched = CertWatch::new(mxgate::app::Running::certificate_files(&cfg));
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    let mut grace = cfg.global.shutdown_grace;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                reopen(&running);
                if let Some(new) = reload(&args, &running) {
                    grace = new.global.shutdown_grace;
                    watched = CertWatch::new(mxgate::app::Running::certificate_files(&new));
                }
            }
            _ = usr1.recv() => reopen(&running),
            _ = tick.tick() => {
                if watched.changed() {
                    running.mail_log.log(&mxgate::mail_log::Event::Note {
                        level: mxgate::mail_log::Level::Info,
                        text: "certificate file changed: reloading".into(),
                    });
                    if let Some(new) = reload(&args, &running) {
                        watched = CertWatch::new(mxgate::app::Running::certificate_files(&new));
                    }
                }
            }
        }
    }
    eprintln!("mxgate: shutting down (grace {grace:?})");
    running.shutdown(grace).await;
    let _ = std::fs::remove_file(&pid_file);
    Ok(())
}

/// Writes a file readable by this user only, like everything in the spool.
pub(super) fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mxgate::spool::FILE_MODE)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Modification times of certificate files, to notice renewals.
pub(super) struct CertWatch {
    files: Vec<(PathBuf, Option<std::time::SystemTime>)>,
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
pub(super) fn reload(args: &ConfigArgs, running: &mxgate::app::Running) -> Option<Config> {
    use mxgate::mail_log::{Event, Level};
    let result = match args.load() {
        Ok(Ok(cfg)) => running.apply(&cfg).map(|_| cfg).map_err(|e| e.to_string()),
        Ok(Err(errors)) => Err(errors),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(cfg) => {
            metrics::counter!(mxgate::metrics::CONFIG_RELOADS, "result" => "success").increment(1);
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
            metrics::counter!(mxgate::metrics::CONFIG_RELOADS, "result" => "failure").increment(1);
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

pub(super) fn reopen(running: &mxgate::app::Running) {
    match running.mail_log.reopen() {
        Ok(()) => tracing::info!("mail log reopened"),
        Err(e) => tracing::error!("{e}"),
    }
}
