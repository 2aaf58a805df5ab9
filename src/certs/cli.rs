//! `mxgate certs ...`: the commands. Refusals print one line and exit 1.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::create::{KeyKind, Subject};
use super::install::Outcome;
use super::usage::{load_config, resolve_certs_dir, ConfigView};
use super::{inspect, install, pkcs12, refuse, CertError, CertsDir, Result};

/// Where the configuration and the certificates are.
#[derive(Args, Debug, Clone)]
pub struct Dirs {
    /// Configuration directory (holds mxgate.yaml, listeners/, policies/, certs/).
    #[arg(long, env = "MXGATE_CONFIG_DIR", default_value = ".")]
    pub config_dir: PathBuf,
    /// Certificates directory (default: certs_dir of mxgate.yaml, i.e. <config-dir>/certs).
    #[arg(long, env = "MXGATE_CERTS_DIR")]
    pub certs_dir: Option<PathBuf>,
}

/// Subject of a new certificate or request.
#[derive(Args, Debug, Clone)]
pub struct SubjectArgs {
    /// Common name: the host name clients connect to (listener host name, MX record).
    #[arg(long)]
    pub cn: String,
    /// Another host name, *.wildcard or IP address for the subjectAltName (repeatable or
    /// comma-separated); the CN is always included.
    #[arg(long = "san", value_delimiter = ',')]
    pub sans: Vec<String>,
    /// Organization (O).
    #[arg(long)]
    pub org: Option<String>,
    /// Organizational unit (OU).
    #[arg(long)]
    pub org_unit: Option<String>,
    /// Country, two letters (C).
    #[arg(long)]
    pub country: Option<String>,
    /// State or province (ST).
    #[arg(long)]
    pub state: Option<String>,
    /// Locality / city (L).
    #[arg(long)]
    pub locality: Option<String>,
}

impl SubjectArgs {
    fn subject(&self) -> Subject {
        Subject {
            cn: self.cn.clone(),
            sans: self.sans.clone(),
            org: self.org.clone(),
            org_unit: self.org_unit.clone(),
            country: self.country.clone(),
            state: self.state.clone(),
            locality: self.locality.clone(),
        }
    }
}

/// Certificate management, like ESA `certconfig`.
#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Create a key and a self-signed certificate (NAME.key, NAME.crt): TLS, not verifiable.
    NewSelfSigned {
        /// Certificate name (listeners say `certificate: NAME`).
        name: String,
        /// Subject of the new certificate or request.
        #[command(flatten)]
        subject: SubjectArgs,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Key type.
        #[arg(long, value_enum, default_value_t = KeyKind::EcdsaP256)]
        key: KeyKind,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
        /// Where the configuration and the certificates are.
        #[command(flatten)]
        dirs: Dirs,
    },
    /// Create a key (NAME.key, 0600) and a certificate signing request (NAME.csr) for a CA.
    Csr {
        /// Certificate name.
        name: String,
        /// Subject of the new certificate or request.
        #[command(flatten)]
        subject: SubjectArgs,
        /// Key type.
        #[arg(long, value_enum, default_value_t = KeyKind::EcdsaP256)]
        key: KeyKind,
        /// Make the request for the existing NAME.key (renewal with the same key).
        #[arg(long)]
        reuse_key: bool,
        /// Replace existing files (including the key).
        #[arg(long)]
        force: bool,
        /// Where the configuration and the certificates are.
        #[command(flatten)]
        dirs: Dirs,
    },
    /// Install the CA-signed certificate for NAME.key, with its intermediates, as NAME.crt.
    Install {
        /// Certificate name (the one given to `csr`).
        name: String,
        /// The signed certificate (PEM or DER; a full chain file is fine too).
        #[arg(long)]
        cert: PathBuf,
        /// Intermediate (and root) certificates, PEM, any order (repeatable).
        #[arg(long)]
        chain: Vec<PathBuf>,
        /// Private key file, when the key was not made by `csr` (copied to NAME.key, 0600).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Replace an existing NAME.crt.
        #[arg(long)]
        force: bool,
        /// Where the configuration and the certificates are.
        #[command(flatten)]
        dirs: Dirs,
    },
    /// Import a certificate, its chain and key from a PKCS#12 (.p12/.pfx) file.
    ImportP12 {
        /// Certificate name to create.
        name: String,
        /// The PKCS#12 file.
        file: PathBuf,
        /// File whose first line is the password (`-`: standard input). Default: ask.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
        /// Where the configuration and the certificates are.
        #[command(flatten)]
        dirs: Dirs,
    },
    /// Export NAME's certificate chain and key to a password-protected PKCS#12 file (backup).
    ExportP12 {
        /// Certificate name.
        name: String,
        /// The file to write (mode 0600).
        file: PathBuf,
        /// File whose first line is the password (`-`: standard input). Default: ask.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// 3DES + SHA-1 MAC for old importers (default: AES-256-CBC, PBKDF2, SHA-256 MAC).
        #[arg(long)]
        legacy: bool,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
        /// Where the configuration and the certificates are.
        #[command(flatten)]
        dirs: Dirs,
    },
    /// List every certificate: names, expiry, key, which listeners and deliveries use it.
    List {
        /// Where the configuration and the certificates are.
        #[command(flatten)]
        dirs: Dirs,
    },
    /// Show a certificate (NAME in certs_dir, or a file): names, validity, chain problems,
    /// key match, users, host-name coverage and the DANE TLSA 3 1 1 record.
    Inspect {
        /// Certificate name or file.
        target: String,
        /// Where the configuration and the certificates are.
        #[command(flatten)]
        dirs: Dirs,
    },
}

/// Runs a `certs` command; prints the result, warnings on stderr, and one line on refusal.
pub fn run(cmd: CertsCmd) -> ExitCode {
    match execute(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mxgate certs: {e}");
            ExitCode::from(1)
        }
    }
}

struct Env {
    certs: CertsDir,
    view: ConfigView,
}

fn env(dirs: &Dirs, with_config: bool) -> Env {
    let view = if with_config {
        load_config(&dirs.config_dir, dirs.certs_dir.as_deref())
    } else {
        ConfigView {
            cfg: None,
            warning: None,
        }
    };
    let dir = resolve_certs_dir(&dirs.config_dir, dirs.certs_dir.as_deref(), &view);
    Env {
        certs: CertsDir { dir },
        view,
    }
}

fn report(o: Outcome) {
    for w in &o.warnings {
        eprintln!("{w}");
    }
    print!("{}", o.summary);
}

fn execute(cmd: CertsCmd) -> Result<()> {
    match cmd {
        CertsCmd::NewSelfSigned {
            name,
            subject,
            days,
            key,
            force,
            dirs,
        } => {
            let e = env(&dirs, false);
            let out = super::create::new_self_signed(
                &e.certs,
                &name,
                &subject.subject(),
                days,
                key,
                force,
            )?;
            print!("{out}");
        }
        CertsCmd::Csr {
            name,
            subject,
            key,
            reuse_key,
            force,
            dirs,
        } => {
            let e = env(&dirs, false);
            let out =
                super::create::csr(&e.certs, &name, &subject.subject(), key, reuse_key, force)?;
            print!("{out}");
        }
        CertsCmd::Install {
            name,
            cert,
            chain,
            key,
            force,
            dirs,
        } => {
            let e = env(&dirs, true);
            report(install::install(
                &e.certs,
                &name,
                &cert,
                &chain,
                key.as_deref(),
                force,
                &e.view,
            )?);
        }
        CertsCmd::ImportP12 {
            name,
            file,
            password_file,
            force,
            dirs,
        } => {
            let e = env(&dirs, true);
            let pw = password(password_file.as_deref(), false)?;
            report(pkcs12::import(&e.certs, &name, &file, &pw, force, &e.view)?);
        }
        CertsCmd::ExportP12 {
            name,
            file,
            password_file,
            legacy,
            force,
            dirs,
        } => {
            let e = env(&dirs, false);
            if !force && file.exists() {
                return refuse(format!(
                    "{} already exists: use --force to replace it",
                    file.display()
                ));
            }
            let pw = password(password_file.as_deref(), true)?;
            print!(
                "{}",
                pkcs12::export(&e.certs, &name, &file, &pw, legacy, force)?
            );
        }
        CertsCmd::List { dirs } => {
            let e = env(&dirs, true);
            if let Some(w) = &e.view.warning {
                eprintln!("{w}");
            }
            print!("{}", inspect::list(&e.certs, &e.view)?);
        }
        CertsCmd::Inspect { target, dirs } => {
            let e = env(&dirs, true);
            print!("{}", inspect::inspect(&e.certs, &target, &e.view)?);
        }
    }
    Ok(())
}

/// The password: first line of a file, of standard input (`-`), or typed at a terminal
/// without echo (twice when `confirm`).
fn password(file: Option<&Path>, confirm: bool) -> Result<String> {
    let first_line = |text: &str| text.lines().next().unwrap_or("").to_string();
    match file {
        Some(p) if p == Path::new("-") => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .or_else(|e| refuse(format!("reading the password from stdin: {e}")))?;
            Ok(first_line(&line))
        }
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .or_else(|e| refuse(format!("--password-file {}: {e}", p.display())))?;
            Ok(first_line(&text))
        }
        None if std::io::stdin().is_terminal() => {
            let pw = prompt("PKCS#12 password: ")?;
            if confirm && prompt("again: ")? != pw {
                return refuse("the passwords differ");
            }
            Ok(pw)
        }
        None => refuse("no password: give --password-file FILE (or `-` for standard input)"),
    }
}

/// Reads one line from the terminal with echo off.
fn prompt(label: &str) -> Result<String> {
    eprint!("{label}");
    let _ = std::io::stderr().flush();
    // SAFETY: termios is plain data; tcgetattr fills it for fd 0, which is a terminal here.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    let have_tty = unsafe { libc::tcgetattr(0, &mut saved) } == 0;
    if have_tty {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: a valid termios for fd 0.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let r = std::io::stdin().lock().read_line(&mut line);
    if have_tty {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
    }
    eprintln!();
    r.map_err(|e| CertError(format!("reading the password: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
