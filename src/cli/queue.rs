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
            let list = control::render_list(&control::entries(&spool), now);
            let footer = format!(" message(s) in queue {}\n", queue.display());
            print!("{}", list.replace(" message(s) in queue\n", &footer));
            Ok(ExitCode::SUCCESS)
        }
        QueueCmd::Show { mid, config } => {
            let Some(spool) = spool_of(&config)? else {
                return Ok(ExitCode::from(1));
            };
            match control::entries(&spool)
                .into_iter()
                .find(|e| e.env.mid == mid)
            {
                Some(e) => {
                    print!("{}", control::render_show(&e));
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!(
                        "mxgate: MID {mid} is not in the queue {}",
                        spool.join("queue").display()
                    );
                    Ok(ExitCode::from(1))
                }
            }
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
