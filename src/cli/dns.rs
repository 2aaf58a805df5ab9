//! `mxgate dns check DOMAIN`: the DNS self-check ([`mxgate::dnscheck`]) printed, one line per
//! check, then the records to publish; exit status 1 when a problem was found.

use super::*;

pub(super) fn dns_command(cmd: DnsCmd) -> anyhow::Result<ExitCode> {
    let DnsCmd::Check {
        domain,
        next_cert,
        config,
    } = cmd;
    let Some(cfg) = config.load_or_report()? else {
        return Ok(ExitCode::from(1));
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio runtime")?;
    let report = rt.block_on(mxgate::dnscheck::check_domain(&cfg, &domain, &next_cert))?;
    print!("{}", report.render());
    Ok(if report.problems() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
