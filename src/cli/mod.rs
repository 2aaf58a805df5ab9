//! The `mxgate` command line: arguments, and one module per command family.
//! `serve` (the server, reload and certificate watching), `hat` (`hat trace`), `tables`
//! (`routes list`, `destinations list`), `queue` (the queue commands over the control socket),
//! `recipients` (`recipients check`, `recipients cache list|flush`), `tlsrpt` (`tlsrpt list|show`,
//! the stored TLS-RPT reports), `dns` (`dns check DOMAIN`, the DNS self-check), `drain` (rolling
//! updates); `certs` lives in the library (`mxgate::certs::cli`).

mod dns;
mod drain;
mod hat;
mod queue;
mod recipients;
mod serve;
mod tables;
mod tlsrpt;

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
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the gateway.
    Serve(ConfigArgs),
    /// Load and validate every configuration file; print all errors as file:line:column.
    Check {
        /// Print only the configuration's hash (as `mxgate_config_info{hash}` exports it).
        #[arg(long)]
        print_hash: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
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
    /// Drain the running server for a rolling update: it refuses new connections (421 4.3.2),
    /// answers 503 on /ready, delivers its queue and exits. Waits for it; exits 0 when the queue
    /// was emptied, 1 when the deadline passed with mail still queued (it stays in the spool),
    /// 2 on errors.
    Drain {
        /// How long the server may take: sessions finishing and deliveries (e.g. 120s, 5m).
        #[arg(long, default_value = "120s", value_parser = drain::deadline_arg)]
        deadline: std::time::Duration,
        #[command(flatten)]
        config: ConfigArgs,
    },
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
    /// Recipient validation: check an address, inspect and flush the verdict cache.
    Recipients {
        #[command(subcommand)]
        command: RecipientsCmd,
    },
    /// TLS-RPT (RFC 8460) reports senders sent about their TLS sessions to us, as stored.
    Tlsrpt {
        #[command(subcommand)]
        command: TlsrptCmd,
    },
    /// What senders find in DNS for a domain, checked against what mxgate serves.
    Dns {
        #[command(subcommand)]
        command: DnsCmd,
    },
}

#[derive(Subcommand, Debug)]
enum DnsCmd {
    /// Look up DOMAIN's `_mta-sts` and `_smtp._tls` TXT, MX and `_25._tcp` TLSA records with the
    /// configured resolvers (or --dns-resolver); one ok/problem line per check with its fix,
    /// then the records to publish. Exits 1 when a problem was found.
    Check {
        /// The mail domain (e.g. example.com).
        domain: String,
        /// A certificate (PEM chain) to be served next: its TLSA record must already be
        /// published at every MX host it names (repeatable).
        #[arg(long, value_name = "FILE")]
        next_cert: Vec<PathBuf>,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand, Debug)]
enum TlsrptCmd {
    /// List stored reports: reporter, report-id, date range, policy domains, session counts.
    List(ConfigArgs),
    /// Show one report: its summary per policy and each failure detail.
    Show {
        /// The report's report-id.
        report_id: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand, Debug)]
enum RecipientsCmd {
    /// What the running configuration answers for ADDRESS, and why: RAT entry, method,
    /// breaker, cached or asked now, and the reply a client gets.
    Check {
        /// Recipient address (`<>` optional; `postmaster` alone is `<postmaster>`).
        address: String,
        /// Listener whose RAT to use (default: the first listener with a RAT).
        #[arg(long)]
        listener: Option<String>,
        /// Ask the internal server or directory even when the cache has an answer (without
        /// a running server: probe from this command).
        #[arg(long)]
        no_cache: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// The running server's verdict cache.
    Cache {
        #[command(subcommand)]
        command: CacheCmd,
    },
}

#[derive(Subcommand, Debug)]
enum CacheCmd {
    /// List cached answers: method, verdict, stored and expiry times (UTC), address.
    List {
        /// Valid answers only.
        #[arg(long, conflicts_with = "invalid")]
        valid: bool,
        /// Invalid answers only.
        #[arg(long)]
        invalid: bool,
        /// One address, or `@DOMAIN` for every address at a domain.
        address: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Forget cached answers (all of them without ADDRESS); says how many were removed.
    Flush {
        /// One address, or `@DOMAIN` for every address at a domain.
        address: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
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

pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Certs { command } => Ok(mxgate::certs::cli::run(command)),
        Cmd::Check {
            print_hash,
            config: args,
        } => match args.load()? {
            Ok(cfg) => {
                for w in &cfg.warnings {
                    if print_hash {
                        eprintln!("{}", w.render());
                    } else {
                        println!("{}", w.render());
                    }
                }
                // What `serve` would refuse at start-up, though the YAML is fine.
                let files = mxgate::app::check_tls_files(&cfg);
                if !files.is_empty() {
                    println!("{}", files.join("\n"));
                    return Ok(ExitCode::from(1));
                }
                if print_hash {
                    println!("{}", mxgate::config::hash::config_hash(&cfg));
                    return Ok(ExitCode::SUCCESS);
                }
                println!(
                    "{}: configuration OK ({} listeners, {} sender group tables, {} policies, {} RATs)",
                    args.config_dir.display(),
                    cfg.listeners.len(),
                    cfg.hats.len(),
                    cfg.policies.len(),
                    cfg.rats.len()
                );
                // The optional files: say what they turned on, so a file left commented out
                // is seen to be off.
                if let Some(m) = &cfg.mta_sts {
                    let domains: Vec<&str> = m.domains.iter().map(|(d, _)| d.as_str()).collect();
                    println!("MTA-STS: policies for {}", domains.join(", "));
                }
                if let Some(t) = &cfg.tlsrpt {
                    let mut to: Vec<String> = t.addresses.clone();
                    if let Some(p) = &t.https_path {
                        to.push(format!("HTTPS POST {p}"));
                    }
                    println!("TLS-RPT: reports to {}", to.join(", "));
                }
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
                hat::trace(&cfg, ip, hostname, ptr, &listed, listener.as_deref())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Destinations {
            command: DestinationsCmd::List(args),
        } => {
            let Some(cfg) = args.load_or_report()? else {
                return Ok(ExitCode::from(1));
            };
            print!("{}", tables::destinations_list(&cfg));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Routes {
            command: RoutesCmd::List(args),
        } => {
            let Some(cfg) = args.load_or_report()? else {
                return Ok(ExitCode::from(1));
            };
            print!("{}", tables::routes_list(&cfg));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Queue { command } => queue::queue_command(command),
        Cmd::Recipients { command } => recipients::recipients_command(command),
        Cmd::Tlsrpt { command } => tlsrpt::tlsrpt_command(command),
        Cmd::Dns { command } => dns::dns_command(command),
        Cmd::Drain { deadline, config } => drain::drain(&config, deadline),
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
            rt.block_on(serve::serve(args, cfg))
        }
    }
}
