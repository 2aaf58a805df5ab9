//! The `mxgate` command: serve, check the configuration, trace a host through the HAT, manage
//! the queue and certificates. The commands are in `cli/`.

// Here rather than in Cargo.toml's [lints]: there it would also reach tests/support.
#![warn(unreachable_pub)]

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MXGATE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // journald and `docker logs` would show colour codes as text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mxgate: {e:#}");
            ExitCode::from(2)
        }
    }
}
