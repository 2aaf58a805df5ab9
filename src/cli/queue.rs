//! `mxgate queue ...`: the queue commands, over the running server's control socket.

use super::*;

pub(super) fn queue_command(cmd: QueueCmd) -> anyhow::Result<ExitCode> {
    use mxgate::relay::control;
    let spool_of = |c: &ConfigArgs| -> anyhow::Result<Option<PathBuf>> {
        // The spool is all the queue commands need: with --spool-dir, no configuration.
        if let Some(s) = &c.spool_dir {
            return Ok(Some(s.clone()));
        }
        Ok(c.load_or_report()?.map(|cfg| cfg.global.spool_dir))
    };
    let ask = |c: &ConfigArgs, line: String| -> anyhow::Result<ExitCode> {
        let Some(spool) = spool_of(c)? else {
            return Ok(ExitCode::from(1));
        };
        match control::request(&spool, &line) {
            Ok(answer) => {
                print!("{answer}");
                Ok(if answer.starts_with("ok") {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            }
            Err(e) => {
                eprintln!("mxgate: {e}");
                Ok(ExitCode::from(1))
            }
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match cmd {
        QueueCmd::List(c) => {
            let Some(spool) = spool_of(&c)? else {
                return Ok(ExitCode::from(1));
            };
            let queue = spool.join("queue");
            if !queue.is_dir() {
                eprintln!(
                    "mxgate: no queue in {}: give the server's --spool-dir or --config-dir",
                    queue.display()
                );
                return Ok(ExitCode::from(1));
            }
            let list = control::render_list(&control::scan(&spool), now);
            let footer = format!(" message(s) in queue {}", queue.display());
            print!("{}", list.replacen(" message(s) in queue", &footer, 1));
            Ok(ExitCode::SUCCESS)
        }
        QueueCmd::Show { mid, config } => {
            let Some(spool) = spool_of(&config)? else {
                return Ok(ExitCode::from(1));
            };
            // The message whose envelope has this MID, whatever its file is called.
            let scan = control::scan(&spool);
            if let Some(e) = scan.entries.iter().find(|e| e.env.mid == mid) {
                print!("{}", control::render_show(e));
                return Ok(ExitCode::SUCCESS);
            }
            let queue = spool.join("queue");
            if let Some(d) = scan.damaged.iter().find(|d| d.mid == mid) {
                print!("{}", control::render_damaged(d));
                eprintln!(
                    "mxgate: MID {mid}'s file in {} cannot be read; the server leaves it alone",
                    queue.display()
                );
            } else if let Some(e) = scan.entries.iter().find(|e| e.file_mid == mid) {
                eprintln!(
                    "mxgate: MID {mid} is not in the queue {}: file {mid}.{} holds MID {} (its name and its envelope disagree); see `queue show {}`",
                    queue.display(),
                    mxgate::spool::queue_file::EXT,
                    e.env.mid,
                    e.env.mid
                );
            } else {
                eprintln!("mxgate: MID {mid} is not in the queue {}", queue.display());
            }
            Ok(ExitCode::from(1))
        }
        QueueCmd::Retry { mid, all, config } => match (mid, all) {
            (Some(m), false) => ask(&config, format!("retry {m}")),
            (None, true) => ask(&config, "retry all".into()),
            _ => anyhow::bail!("queue retry: give a MID or --all"),
        },
        QueueCmd::Delete { mid, config } => ask(&config, format!("delete {mid}")),
        QueueCmd::Bounce { mid, config } => ask(&config, format!("bounce {mid}")),
    }
}
