//! `mxgate recipients ...`: recipient validation seen from outside. `check` asks the running
//! server over its control socket (live cache, probe pools, breakers) and, when none runs,
//! answers from the configuration and the cache file; `cache list|flush` need the server.

use super::*;
use mxgate::relay::control;
use mxgate::validate::control::check::check_offline;
use mxgate::validate::control::{CacheFilter, CheckRequest};

/// Prints a control-socket answer: `ok` then a report, `ok TEXT`, or `error TEXT`.
fn print_answer(answer: &str) -> ExitCode {
    if let Some(report) = answer.strip_prefix("ok\n") {
        print!("{report}");
        ExitCode::SUCCESS
    } else if answer.starts_with("ok ") {
        print!("{answer}");
        ExitCode::SUCCESS
    } else {
        let text = answer.strip_prefix("error ").unwrap_or(answer);
        eprintln!("mxgate: {}", text.trim_end());
        ExitCode::from(1)
    }
}

/// The spool of `c`: `--spool-dir` alone needs no configuration (as for `queue`).
fn spool_of(c: &ConfigArgs) -> anyhow::Result<Option<PathBuf>> {
    if let Some(s) = &c.spool_dir {
        return Ok(Some(s.clone()));
    }
    Ok(c.load_or_report()?.map(|cfg| cfg.global.spool_dir))
}

/// Sends `line` to the running server; its absence is an error.
fn ask(c: &ConfigArgs, line: &str) -> anyhow::Result<ExitCode> {
    let Some(spool) = spool_of(c)? else {
        return Ok(ExitCode::from(1));
    };
    Ok(match control::request(&spool, line) {
        Ok(answer) => print_answer(&answer),
        Err(e) => {
            eprintln!("mxgate: {e}: the recipient validation cache lives in the running server");
            ExitCode::from(1)
        }
    })
}

pub(super) fn recipients_command(cmd: RecipientsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        RecipientsCmd::Check {
            address,
            listener,
            no_cache,
            config,
        } => {
            // Checked here: the control line is split at spaces.
            if address.is_empty() || address.contains(char::is_whitespace) {
                anyhow::bail!("{address:?} is not an address RCPT TO accepts");
            }
            let Some(cfg) = config.load_or_report()? else {
                return Ok(ExitCode::from(1));
            };
            let req = CheckRequest {
                address,
                listener,
                no_cache,
            };
            match control::request(&cfg.global.spool_dir, &req.to_line()) {
                Ok(answer) => Ok(print_answer(&answer)),
                Err(no_server) => {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("starting tokio runtime")?;
                    Ok(match rt.block_on(check_offline(&cfg, &req, &no_server)) {
                        Ok(report) => {
                            print!("{report}");
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("mxgate: {e}");
                            ExitCode::from(1)
                        }
                    })
                }
            }
        }
        RecipientsCmd::Cache {
            command:
                CacheCmd::List {
                    valid,
                    invalid,
                    address,
                    config,
                },
        } => {
            let filter = CacheFilter {
                valid: match (valid, invalid) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
                address,
            };
            ask(&config, &filter.to_line("cache-list"))
        }
        RecipientsCmd::Cache {
            command: CacheCmd::Flush { address, config },
        } => {
            let filter = CacheFilter {
                valid: None,
                address,
            };
            ask(&config, &filter.to_line("cache-flush"))
        }
    }
}
