//! `mxgate serve`: start the server with the loaded configuration and announce its
//! listeners; the app then runs it, reloading and stopping on signals ([`mxgate::app::reload`]).

use super::*;

/// Starts the server, prints where it listens, and runs it until it is stopped; the exit
/// status says whether a drain left mail in the spool.
pub(super) async fn serve(args: ConfigArgs, cfg: Config) -> anyhow::Result<ExitCode> {
    let running = mxgate::app::start(&cfg).await?;
    for (name, addr) in &running.bound {
        // Tests and scripts read this line to learn ports bound as :0.
        eprintln!("mxgate: listener {name} listening on {addr}");
    }
    for addr in &running.mta_sts_bound {
        eprintln!("mxgate: mta-sts listening on {addr}");
    }
    if let Some(addr) = running.metrics_addr {
        eprintln!("mxgate: metrics listening on http://{addr}/metrics");
    }
    let load = move || match args.load() {
        Ok(result) => result,
        Err(e) => Err(e.to_string()),
    };
    use mxgate::app::reload::Stopped;
    Ok(match mxgate::app::reload::run(running, &cfg, load).await? {
        Stopped::Signal | Stopped::Drained { left: 0 } => ExitCode::SUCCESS,
        Stopped::Drained { .. } => ExitCode::from(mxgate::app::drain::EXIT_MAIL_LEFT),
    })
}
