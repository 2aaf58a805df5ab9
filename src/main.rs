//! The `mxgate` command: serve, check the configuration, trace a host through the HAT.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use mxgate::config::model::{Config, MailLogTarget};
use mxgate::config::{load, Overrides};
use mxgate::policy::flow::{Limit, MailFlowPolicy};
use mxgate::policy::hat::{dnslist_entry, Criterion, DnsListZone, Peer, ReverseDns};

/// Inbound SMTP gateway with HAT sender groups, mail-flow policies and TLS enforcement.
#[derive(Parser, Debug)]
#[command(name = "mxgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the gateway.
    Serve(ConfigArgs),
    /// Load and validate every configuration file; print all errors as file:line:column.
    Check(ConfigArgs),
    /// Host access table tools.
    Hat {
        #[command(subcommand)]
        command: HatCmd,
    },
    /// Destination controls (outbound limits and TLS), like ESA `destconfig`.
    Destinations {
        #[command(subcommand)]
        command: DestinationsCmd,
    },
    /// SMTP routes (where accepted mail is relayed).
    Routes {
        #[command(subcommand)]
        command: RoutesCmd,
    },
    /// Tell the running server to reload configuration and certificates (SIGHUP via its pid file).
    Reload(ConfigArgs),
    /// The mail queue, like `mailq` / `postqueue`: works while the server runs.
    Queue {
        #[command(subcommand)]
        command: QueueCmd,
    },
    /// Certificates (the `certs/` directory), like ESA `certconfig`.
    Certs {
        #[command(subcommand)]
        command: mxgate::certs::cli::CertsCmd,
    },
}

#[derive(Subcommand, Debug)]
enum QueueCmd {
    /// List queued messages: id, age, size, attempts, next try, sender, pending recipients.
    List(ConfigArgs),
    /// Show one message's envelope and per-recipient state.
    Show {
        /// Message id.
        mid: u64,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Deliver now (the running server retries at once).
    Retry {
        /// Message id; omit with --all.
        mid: Option<u64>,
        /// Every queued message.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Remove a message without delivering it.
    Delete {
        /// Message id.
        mid: u64,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Bounce every pending recipient of a message now (a DSN goes to the sender).
    Bounce {
        /// Message id.
        mid: u64,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand, Debug)]
enum DestinationsCmd {
    /// Print every destination entry and the default, like `destconfig list`.
    List(ConfigArgs),
}

#[derive(Subcommand, Debug)]
enum RoutesCmd {
    /// Print every SMTP route with its hosts, the default route ALL last.
    List(ConfigArgs),
}

#[derive(Subcommand, Debug)]
enum HatCmd {
    /// Show which sender group and mail-flow policy a client gets (no socket, no DNS).
    Trace {
        /// Client IP address.
        ip: IpAddr,
        /// Treat this as the client's verified reverse-DNS name (with `--ptr mismatch`: its
        /// PTR name, not confirmed).
        #[arg(long)]
        hostname: Option<String>,
        /// Simulate a reverse-DNS state instead: no PTR, a PTR not confirmed by its forward
        /// lookup, or a temporary failure (the `ptr_*` criteria).
        #[arg(long, value_enum, value_name = "STATE")]
        ptr: Option<PtrState>,
        /// Pretend the client is listed on this block-list zone (answer 127.0.0.2, or the
        /// codes given as ZONE=CODE,CODE); repeatable.
        #[arg(long, value_name = "ZONE[=CODE,...]", value_parser = listed_arg)]
        listed: Vec<DnsListZone>,
        /// Listener whose HAT to use (default: the first listener).
        #[arg(long)]
        listener: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// A reverse-DNS state `hat trace --ptr` simulates.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum PtrState {
    /// No PTR record (`ptr_missing`).
    Missing,
    /// A PTR whose names do not resolve back to the client (`ptr_mismatch`).
    Mismatch,
    /// The lookup failed temporarily or timed out (`ptr_tempfail`).
    Tempfail,
}

/// `--listed` takes the zone syntax of a `dnslist:` criterion, so it is checked the same way.
fn listed_arg(s: &str) -> Result<DnsListZone, String> {
    match Criterion::parse(&format!("dnslist:{s}"))? {
        Criterion::DnsList(z) => Ok(z),
        _ => Err(format!("{s:?} is not a block-list zone")),
    }
}

#[derive(Args, Debug, Clone)]
struct ConfigArgs {
    /// Configuration directory (holds mxgate.yaml, listeners/, policies/, certs/).
    #[arg(long, env = "MXGATE_CONFIG_DIR", default_value = ".")]
    config_dir: PathBuf,
    /// Spool directory (overrides mxgate.yaml).
    #[arg(long, env = "MXGATE_SPOOL_DIR")]
    spool_dir: Option<PathBuf>,
    /// Mail log file, or `-` for stdout (overrides mxgate.yaml).
    #[arg(long, env = "MXGATE_MAIL_LOG")]
    mail_log: Option<String>,
    /// Certificates directory (overrides mxgate.yaml).
    #[arg(long, env = "MXGATE_CERTS_DIR")]
    certs_dir: Option<PathBuf>,
    /// Listener bind address override, `NAME=ADDR` (repeatable; comma-separated in the env var).
    #[arg(long = "bind", env = "MXGATE_BIND", value_delimiter = ',')]
    binds: Vec<String>,
    /// Metrics endpoint `IP:PORT`, or `off` (overrides mxgate.yaml).
    #[arg(long, env = "MXGATE_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// DNS resolver `IP[:PORT]` (repeatable; comma-separated in the env var).
    #[arg(
        long = "dns-resolver",
        env = "MXGATE_DNS_RESOLVERS",
        value_delimiter = ','
    )]
    dns_resolvers: Vec<String>,
}

impl ConfigArgs {
    fn overrides(&self) -> anyhow::Result<Overrides> {
        let mut o = Overrides {
            spool_dir: self.spool_dir.clone(),
            certs_dir: self.certs_dir.clone(),
            mail_log: self.mail_log.as_ref().map(|m| {
                if m == "-" {
                    MailLogTarget::Stdout
                } else {
                    MailLogTarget::File(PathBuf::from(m))
                }
            }),
            ..Overrides::default()
        };
        for b in &self.binds {
            let (name, addr) = b
                .split_once('=')
                .with_context(|| format!("--bind {b:?}: expected NAME=ADDR"))?;
            let addr: SocketAddr = addr
                .parse()
                .with_context(|| format!("--bind {b:?}: bad address"))?;
            match o.binds.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => v.push(addr),
                None => o.binds.push((name.to_string(), vec![addr])),
            }
        }
        if let Some(m) = &self.metrics_listen {
            o.metrics_listen =
                Some(if m == "off" {
                    None
                } else {
                    Some(m.parse().with_context(|| {
                        format!("--metrics-listen {m:?}: expected IP:PORT or off")
                    })?)
                });
        }
        if !self.dns_resolvers.is_empty() {
            let mut v = Vec::new();
            for r in &self.dns_resolvers {
                let sa = r
                    .parse::<SocketAddr>()
                    .or_else(|_| r.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .with_context(|| format!("--dns-resolver {r:?}: expected IP or IP:PORT"))?;
                v.push(sa);
            }
            o.dns_resolvers = Some(v);
        }
        Ok(o)
    }

    /// Loads the config, printing every error to stderr; `None` when it has errors.
    fn load_or_report(&self) -> anyhow::Result<Option<Config>> {
        Ok(match self.load()? {
            Ok(c) => {
                for w in &c.warnings {
                    eprintln!("mxgate: {}", w.render());
                }
                Some(c)
            }
            Err(errors) => {
                eprintln!("{}", errors.trim_end());
                None
            }
        })
    }

    fn load(&self) -> anyhow::Result<Result<Config, String>> {
        let o = self.overrides()?;
        Ok(load(&self.config_dir, &o).map_err(|e| e.to_string()))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MXGATE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // journald and `docker logs` would show colour codes as text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mxgate: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Certs { command } => Ok(mxgate::certs::cli::run(command)),
        Cmd::Check(args) => match args.load()? {
            Ok(cfg) => {
                for w in &cfg.warnings {
                    println!("{}", w.render());
                }
                // What `serve` would refuse at start-up, though the YAML is fine.
                let files = mxgate::app::check_tls_files(&cfg);
                if !files.is_empty() {
                    println!("{}", files.join("\n"));
                    return Ok(ExitCode::from(1));
                }
                println!(
                    "{}: configuration OK ({} listeners, {} sender group tables, {} policies, {} RATs)",
                    args.config_dir.display(),
                    cfg.listeners.len(),
                    cfg.hats.len(),
                    cfg.policies.len(),
                    cfg.rats.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                print!("{errors}");
                if !errors.ends_with('\n') {
                    println!();
                }
                Ok(ExitCode::from(1))
            }
        },
        Cmd::Hat {
            command:
                HatCmd::Trace {
                    ip,
                    hostname,
                    ptr,
                    listed,
                    listener,
                    config,
                },
        } => {
            let Some(cfg) = config.load_or_report()? else {
                return Ok(ExitCode::from(1));
            };
            print!(
                "{}",
                trace(&cfg, ip, hostname, ptr, &listed, listener.as_deref())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Destinations {
            command: DestinationsCmd::List(args),
        } => {
            let Some(cfg) = args.load_or_report()? else {
                return Ok(ExitCode::from(1));
            };
            print!("{}", destinations_list(&cfg));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Routes {
            command: RoutesCmd::List(args),
        } => {
            let Some(cfg) = args.load_or_report()? else {
                return Ok(ExitCode::from(1));
            };
            print!("{}", routes_list(&cfg));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Queue { command } => queue_command(command),
        Cmd::Reload(args) => {
            let Some(cfg) = args.load_or_report()? else {
                return Ok(ExitCode::from(1));
            };
            // The spool lock, not the pid file, says whether a server runs: a pid file left by
            // a crash may name a pid the system has since given to another process.
            let spool = &cfg.global.spool_dir;
            let pid = match mxgate::spool::lock::holder(spool)? {
                Some(pid) => pid as i32,
                None => anyhow::bail!(
                    "no running mxgate on spool {} (its lock is not held)",
                    spool.display()
                ),
            };
            // SAFETY: kill(2) with the pid of the lock's holder and a standard signal.
            if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
                anyhow::bail!(
                    "cannot signal mxgate pid {pid}: {}",
                    std::io::Error::last_os_error()
                );
            }
            println!("configuration valid; reload signalled to mxgate pid {pid}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Serve(args) => {
            let Some(cfg) = args.load_or_report()? else {
                return Ok(ExitCode::from(1));
            };
            let rt = tokio::runtime::Runtime::new().context("starting tokio runtime")?;
            rt.block_on(serve(args, cfg))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(args: ConfigArgs, cfg: Config) -> anyhow::Result<()> {
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
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
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
struct CertWatch {
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
fn reload(args: &ConfigArgs, running: &mxgate::app::Running) -> Option<Config> {
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

fn reopen(running: &mxgate::app::Running) {
    match running.mail_log.reopen() {
        Ok(()) => tracing::info!("mail log reopened"),
        Err(e) => tracing::error!("{e}"),
    }
}

fn trace(
    cfg: &Config,
    ip: IpAddr,
    hostname: Option<String>,
    ptr: Option<PtrState>,
    listed: &[DnsListZone],
    listener: Option<&str>,
) -> anyhow::Result<String> {
    use std::fmt::Write;
    // As the listener does: an IPv4-mapped address is the IPv4 client it stands for.
    let ip = ip.to_canonical();
    let l = match listener {
        Some(name) => cfg
            .listeners
            .iter()
            .find(|l| l.name == name)
            .with_context(|| format!("no listener named {name:?}"))?,
        None => cfg.listeners.first().context("no listeners configured")?,
    };
    let name = hostname.map(|h| h.trim_end_matches('.').to_ascii_lowercase());
    let rdns = match (ptr, name) {
        (Some(PtrState::Missing | PtrState::Tempfail), Some(_)) => anyhow::bail!(
            "--hostname gives a reverse-DNS name: it goes with --ptr mismatch, not with --ptr missing or --ptr tempfail"
        ),
        (Some(PtrState::Missing), None) => ReverseDns::Missing,
        (Some(PtrState::Tempfail), None) => ReverseDns::TempFail,
        (Some(PtrState::Mismatch), n) => ReverseDns::Mismatch(n.unwrap_or_default()),
        (None, Some(n)) => ReverseDns::Verified(n),
        (None, None) => ReverseDns::NotChecked,
    };
    // The answers a real lookup would have recorded: 127.0.0.2 is the answer lists give for
    // their test entries (RFC 5782 §5), and counts under every criterion without codes.
    let answers: Vec<(&str, Vec<std::net::Ipv4Addr>)> = listed
        .iter()
        .map(|z| {
            let codes = if z.codes.is_empty() {
                vec![std::net::Ipv4Addr::new(127, 0, 0, 2)]
            } else {
                z.codes.clone()
            };
            (z.zone.as_str(), codes)
        })
        .collect();
    let c = l.hat.classify(&Peer {
        ip,
        rdns: rdns.clone(),
        dnslists_listed: answers
            .iter()
            .flat_map(|(zone, codes)| codes.iter().map(|a| dnslist_entry(zone, *a)))
            .collect(),
    });
    let mut s = String::new();
    let _ = writeln!(
        s,
        "listener      {} ({}, HAT {})",
        l.name,
        l.kind.as_str(),
        l.hat.name
    );
    let _ = writeln!(s, "client        {ip}");
    let _ = writeln!(
        s,
        "reverse dns   {}",
        match &rdns {
            ReverseDns::Verified(n) => format!("{n} (treated as verified)"),
            ReverseDns::Missing => "no PTR record (simulated)".into(),
            ReverseDns::TempFail => "temporary failure (simulated)".into(),
            ReverseDns::Mismatch(n) if n.is_empty() =>
                "a PTR name not confirmed by its A/AAAA records (simulated)".into(),
            ReverseDns::Mismatch(n) =>
                format!("{n} (PTR name not confirmed by its A/AAAA records, simulated)"),
            ReverseDns::NotChecked =>
                "not looked up (use --hostname NAME or --ptr STATE to match host/suffix and ptr_* entries)".into(),
        }
    );
    let zones = l.hat.dnslist_zones();
    for (zone, codes) in &answers {
        let codes: Vec<String> = codes.iter().map(ToString::to_string).collect();
        let unused = if zones.contains(zone) {
            String::new()
        } else {
            format!(
                "; HAT {} names no such dnslist, so it changes nothing",
                l.hat.name
            )
        };
        let _ = writeln!(
            s,
            "dns lists     {zone} answers {} (simulated{unused})",
            codes.join(",")
        );
    }
    if answers.is_empty() && !zones.is_empty() {
        let _ = writeln!(
            s,
            "dns lists     not looked up (use --listed ZONE to simulate a listing on {})",
            zones.join(", ")
        );
    }
    for g in &c.continued {
        let _ = writeln!(s, "continue      {g} matched but its policy says continue");
    }
    let listed_zones: Vec<&str> = answers.iter().map(|(z, _)| *z).collect();
    let skipped = mxgate::policy::hat_trace::unevaluated(
        &l.hat,
        &c.group,
        rdns != ReverseDns::NotChecked,
        &listed_zones,
    );
    if !skipped.rdns.is_empty() {
        let _ = writeln!(
            s,
            "not evaluated {}: no reverse DNS given (use --hostname or --ptr)",
            skipped.rdns.join(", ")
        );
    }
    if !skipped.dnslists.is_empty() {
        let _ = writeln!(
            s,
            "not evaluated {}: block lists not asked (use --listed ZONE)",
            skipped.dnslists.join(", ")
        );
    }
    let _ = writeln!(s, "sender group  {}", c.group);
    let _ = writeln!(s, "matched       {}", c.matched);
    let _ = writeln!(
        s,
        "log line      ICID n {} SG {} match {} SBRS None",
        c.policy.action.log_word(),
        c.group,
        c.matched
    );
    describe_policy(&mut s, &c.policy, &l.hostname);
    Ok(s)
}

fn describe_policy(s: &mut String, p: &MailFlowPolicy, hostname: &str) {
    use std::fmt::Write;
    let lim = |l: &Limit| match l.max {
        Some(m) => format!("{m}  (exceeded: {})", l.reply),
        None => "unlimited".into(),
    };
    let _ = writeln!(s, "policy        ${}", p.name);
    let _ = writeln!(
        s,
        "  action                            {}",
        p.action.as_str()
    );
    let _ = writeln!(s, "  tls                               {}", p.tls.as_str());
    let _ = writeln!(
        s,
        "  max_message_size                  {}",
        lim(&p.max_message_size)
    );
    let _ = writeln!(
        s,
        "  max_messages_per_connection       {}",
        lim(&p.max_messages_per_connection)
    );
    let _ = writeln!(
        s,
        "  max_recipients_per_message        {}",
        lim(&p.max_recipients_per_message)
    );
    let _ = writeln!(
        s,
        "  max_concurrent_connections_per_ip {}",
        lim(&p.max_concurrent_connections_per_ip)
    );
    let _ = writeln!(
        s,
        "  max_recipients_per_hour           {}",
        lim(&p.max_recipients_per_hour)
    );
    let host = p.override_hostname.as_deref().unwrap_or(hostname);
    let _ = writeln!(
        s,
        "  banner                            {}",
        p.banner.render("$RemoteIP", host, "$Group")
    );
    let _ = writeln!(
        s,
        "  reject_banner                     {}",
        p.reject_banner.render("$RemoteIP", host, "$Group")
    );
    if let Some(h) = &p.override_hostname {
        let _ = writeln!(s, "  override_hostname                 {h}");
    }
    if !p.tls_mandatory_senders.is_empty() {
        let _ = writeln!(
            s,
            "  tls_mandatory_senders             {}",
            p.tls_mandatory_senders.join(", ")
        );
    }
}

/// Renders a text table: header lines (each with one cell per column), a `===` rule, rows.
fn render_table(header: &[&[&str]], rows: &[Vec<String>]) -> String {
    let cols = header.first().map_or(0, |h| h.len());
    let mut width = vec![0usize; cols];
    let cells = header
        .iter()
        .map(|h| h.iter().map(|c| c.chars().count()).collect::<Vec<_>>())
        .chain(
            rows.iter()
                .map(|r| r.iter().map(|c| c.chars().count()).collect()),
        );
    for line in cells {
        for (w, n) in width.iter_mut().zip(line) {
            *w = (*w).max(n);
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(&format!("{c:<w$}"));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    for h in header {
        line(h.iter().map(|c| c.to_string()).collect());
    }
    line(width.iter().map(|w| "=".repeat(*w)).collect());
    for r in rows {
        line(r.clone());
    }
    out
}

/// A duration the way the YAML writes it (`1h`, `30m`, `45s`, `250ms`).
fn short_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if d.subsec_nanos() != 0 {
        format!("{}ms", d.as_millis())
    } else if s != 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s != 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// `mxgate destinations list`: the destination controls as a table, default row last.
fn destinations_list(cfg: &Config) -> String {
    use mxgate::config::outbound::DestinationControl;
    use std::fmt::Write;
    let d = &cfg.destinations;
    let roots = |c: &DestinationControl| {
        let path = c
            .ca_file
            .as_ref()
            .map(|p| p.strip_prefix(&cfg.dir).unwrap_or(p).display().to_string());
        match (c.tls.verifies(), path) {
            (true, Some(p)) => p,
            (true, None) => "webpki".to_string(),
            (false, Some(p)) => format!("{p} (unused)"),
            (false, None) => "-".to_string(),
        }
    };
    let row = |label: String, c: &DestinationControl| {
        vec![
            label,
            c.max_concurrent_connections.to_string(),
            c.max_messages_per_connection.to_string(),
            c.max_recipients_per_message.to_string(),
            c.tls.as_str().to_string(),
            roots(c),
        ]
    };
    let mut rows: Vec<Vec<String>> = d
        .entries
        .iter()
        .map(|c| row(c.domain.to_string(), c))
        .collect();
    rows.push(row("Default".to_string(), &d.default));
    let mut s = render_table(
        &[
            &[
                "",
                "Rate Limiting /",
                "Messages per",
                "Recipients per",
                "",
                "Trust",
            ],
            &[
                "Domain",
                "Concurrency",
                "Connection",
                "Message",
                "TLS",
                "Roots",
            ],
        ],
        &rows,
    );
    let _ = writeln!(
        s,
        "\nAlert on required TLS failure: {}, interval {}, mail to {}",
        if d.alert.enabled { "on" } else { "off" },
        short_duration(d.alert.interval),
        d.alert.mail_to.as_deref().unwrap_or("(none)")
    );
    let _ = writeln!(
        s,
        "Client certificate: {}",
        d.client_certificate.as_deref().unwrap_or("(none)")
    );
    s
}

/// `mxgate routes list`: every route and its hosts (by priority), `ALL` last.
fn routes_list(cfg: &Config) -> String {
    let routes = &cfg.routes.routes;
    if routes.is_empty() {
        return "No SMTP routes configured (policies/routes.yaml): accepted mail has nowhere to go.\n"
            .to_string();
    }
    let mut rows = Vec::new();
    for r in routes {
        for (i, h) in r.hosts.iter().enumerate() {
            let first = i == 0;
            rows.push(vec![
                if first {
                    r.domain.to_string()
                } else {
                    String::new()
                },
                h.host.clone(),
                h.port.to_string(),
                h.priority.to_string(),
                match (first, r.mx_lookup) {
                    (false, _) => String::new(),
                    (true, true) => "yes".to_string(),
                    (true, false) => "no".to_string(),
                },
            ]);
        }
    }
    render_table(
        &[&["Domain", "Host", "Port", "Priority", "MX Lookup"]],
        &rows,
    )
}

fn queue_command(cmd: QueueCmd) -> anyhow::Result<ExitCode> {
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
