//! MTA-STS policy hosting (RFC 8461 §3.2): the policy files of the configured domains,
//! served over HTTPS at `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` by a listener of
//! their own. [`policy`] builds the text and its id (pure), [`http`] answers one request
//! (pure), [`server`] is the accept loop (tokio-rustls and hyper).

pub mod http;
pub mod policy;
pub(crate) mod server;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use policy::{policy_id, txt_record, Mode, Policy};

/// `policies/mta_sts.yaml` as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtaStsSettings {
    /// Addresses the HTTPS endpoint binds (a change needs a restart).
    pub listen: Vec<SocketAddr>,
    /// Certificate chain and key files; `None` = the generated demo certificate.
    pub certificate: Option<(PathBuf, PathBuf)>,
    /// Each domain (lower case, configuration order) with its policy.
    pub domains: Vec<(String, Policy)>,
}

impl MtaStsSettings {
    /// The host name a domain's policy is fetched from (RFC 8461 §3.3).
    pub fn policy_host(domain: &str) -> String {
        format!("mta-sts.{domain}")
    }

    /// The policy host names, in configuration order (the demo certificate's names).
    pub fn policy_hosts(&self) -> Vec<String> {
        self.domains
            .iter()
            .map(|(d, _)| Self::policy_host(d))
            .collect()
    }
}
