//! The DNS self-check (`mxgate dns check DOMAIN`, docs/mta-sts.md): what senders find in DNS
//! for a domain, against what mxgate serves. The `_mta-sts` TXT id against the served policy,
//! the MX hosts against its `mx:` patterns and against the listeners' certificates, the
//! `_25._tcp` TLSA records against the served keys (and a staged next key), and the
//! `_smtp._tls` TXT record; then the records to publish.
//!
//! `facts` reads what mxgate serves (configuration and certificate files), `lookup` asks
//! DNS; `checks`, `tlsa` and `txt` decide, as pure functions over both. The DANE and
//! MTA-STS gauges of the running server reuse the same functions (`src/app/dane.rs`).

pub(crate) mod checks;
pub(crate) mod facts;
pub(crate) mod lookup;
pub(crate) mod tlsa;
pub(crate) mod txt;
pub(crate) mod webpki;

use std::path::PathBuf;

use crate::certs::cert::Cert;
use crate::config::model::Config;
use crate::mta_sts::Policy;

/// Errors before any check could run.
#[derive(Debug, thiserror::Error)]
pub enum DnsCheckError {
    /// The resolver could not be built from `dns:`.
    #[error("{0}")]
    Resolver(String),
    /// The argument is not a domain name.
    #[error("{0:?} is not a domain name")]
    Domain(String),
}

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// As it should be (including "not used", e.g. no TLSA record: no DANE).
    Ok,
    /// Senders would see something wrong; the finding says how to fix it.
    Problem,
}

/// One check's line: what was checked, what was found, and the fix for a problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Ok or problem.
    pub status: Status,
    /// What was checked (`_mta-sts.example.com TXT`, `TLSA _25._tcp.mx.example.com`).
    pub subject: String,
    /// What was found.
    pub text: String,
    /// The fix, for a problem.
    pub fix: Option<String>,
}

impl Finding {
    pub(crate) fn ok(subject: impl Into<String>, text: impl Into<String>) -> Finding {
        Finding {
            status: Status::Ok,
            subject: subject.into(),
            text: text.into(),
            fix: None,
        }
    }

    pub(crate) fn problem(
        subject: impl Into<String>,
        text: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            status: Status::Problem,
            subject: subject.into(),
            text: text.into(),
            fix: Some(fix.into()),
        }
    }

    /// `ok       SUBJECT: TEXT` or `problem  SUBJECT: TEXT; fix: FIX`.
    pub fn line(&self) -> String {
        match (&self.status, &self.fix) {
            (Status::Problem, Some(fix)) => {
                format!("problem  {}: {}; fix: {fix}", self.subject, self.text)
            }
            (Status::Problem, None) => format!("problem  {}: {}", self.subject, self.text),
            (Status::Ok, _) => format!("ok       {}: {}", self.subject, self.text),
        }
    }
}

/// The outcome of checking one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The domain checked.
    pub domain: String,
    /// One finding per check, in the order they ran.
    pub findings: Vec<Finding>,
    /// The records to publish, in zone-file syntax.
    pub records: Vec<String>,
}

impl Report {
    /// How many findings are problems.
    pub fn problems(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.status == Status::Problem)
            .count()
    }

    /// The findings, the records to publish and a summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            out.push_str(&f.line());
            out.push('\n');
        }
        out.push_str(&format!("\nrecords to publish for {}:\n", self.domain));
        for r in &self.records {
            out.push_str(&format!("  {r}\n"));
        }
        let n = self.findings.len();
        match self.problems() {
            0 => out.push_str(&format!("\n{n} checks: all ok\n")),
            p => out.push_str(&format!(
                "\n{n} checks: {p} problem{}\n",
                if p == 1 { "" } else { "s" }
            )),
        }
        out
    }
}

/// A certificate a listener serves, read from its files.
#[derive(Debug, Clone)]
pub(crate) struct ServedCert {
    /// Listener name.
    pub(crate) listener: String,
    /// Its `hostname`, lower case.
    pub(crate) hostname: String,
    /// A public listener (an MX for senders).
    pub(crate) public: bool,
    /// The certificate file.
    pub(crate) path: PathBuf,
    /// The chain (leaf first, never empty: `facts` refuses an empty file), or why it could not be read.
    pub(crate) chain: Result<Vec<Cert>, String>,
}

/// A certificate staged to be served next (`--next-cert`).
#[derive(Debug, Clone)]
pub(crate) struct NextCert {
    /// The file given.
    pub(crate) path: PathBuf,
    /// The chain (leaf first, never empty: `facts` refuses an empty file), or why it could not be read.
    pub(crate) chain: Result<Vec<Cert>, String>,
}

/// What mxgate serves, as far as one domain's DNS is concerned.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    /// The domain (lower case, no trailing dot).
    pub(crate) domain: String,
    /// The MTA-STS policy served for it, if any.
    pub(crate) policy: Option<Policy>,
    /// Every listener's certificate.
    pub(crate) listeners: Vec<ServedCert>,
    /// Certificates staged to replace the served ones.
    pub(crate) next: Vec<NextCert>,
    /// The `rua=` of mxgate's own TLS-RPT intake (`policies/tlsrpt.yaml`), if configured.
    pub(crate) tlsrpt_rua: Option<String>,
    /// The MTA-STS endpoint's certificate, when it serves a policy for the domain.
    pub(crate) policy_cert: Option<webpki::PolicyCert>,
}

/// Checks `domain` against `config` with the configured resolvers; `next_certs` are staged
/// certificates whose TLSA records must already be published.
pub async fn check_domain(
    config: &Config,
    domain: &str,
    next_certs: &[PathBuf],
) -> Result<Report, DnsCheckError> {
    let name = facts::normalise(domain);
    if !crate::dns::name::is_host_name(&name) || !name.contains('.') {
        return Err(DnsCheckError::Domain(domain.to_string()));
    }
    let resolver = crate::dns::ReverseResolver::new(&config.global.dns)
        .map_err(|e| DnsCheckError::Resolver(e.to_string()))?;
    let facts = facts::gather(config, domain, next_certs);
    let hosts = facts::public_hosts(&facts.listeners);
    let found = lookup::lookups(&resolver, &facts.domain, &hosts).await;
    Ok(checks::run(&facts, &found))
}
