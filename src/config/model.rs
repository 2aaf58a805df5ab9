//! Validated configuration: what the rest of mxgate runs on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::outbound::{DestinationControls, RouteTable};
use crate::metrics::sender_org::SenderOrgs;
use crate::policy::flow::MailFlowPolicy;
use crate::policy::hat::HostAccessTable;
use crate::policy::rat::RecipientAccessTable;

/// Public (MX, RAT applies) or private (relay for internal hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Internet-facing: recipients checked against the RAT.
    Public,
    /// Internal: hosts the HAT relays for may send anywhere.
    Private,
}

impl ListenerKind {
    /// Name used in config and output.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Public => "public",
            ListenerKind::Private => "private",
        }
    }
}

/// SMTP timeouts of a listener (RFC 5321 §4.5.3.2 defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Waiting for the next command (default 5 min).
    pub command: Duration,
    /// Waiting for the next chunk of DATA (default 3 min).
    pub data: Duration,
    /// TLS handshake after STARTTLS (default 30 s).
    pub tls_handshake: Duration,
    /// Whole session (default 30 min).
    pub session: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            command: Duration::from_secs(300),
            data: Duration::from_secs(180),
            tls_handshake: Duration::from_secs(30),
            session: Duration::from_secs(1800),
        }
    }
}

/// PROXY protocol settings of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// Networks (load balancers) whose PROXY header is trusted.
    pub trusted: Vec<IpNet>,
    /// How long to wait for the header.
    pub timeout: Duration,
}

/// One listener.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Listener name (`Data 1`, `inbound`, ...), used in logs and metrics.
    pub name: String,
    /// Public or private.
    pub kind: ListenerKind,
    /// Addresses to bind.
    pub bind: Vec<SocketAddr>,
    /// Host name in the banner and EHLO reply.
    pub hostname: String,
    /// Certificate chain PEM; `None` = the generated demo certificate.
    pub certificate: Option<PathBuf>,
    /// Private key PEM matching `certificate`.
    pub key: Option<PathBuf>,
    /// Trust anchors (PEM) for client certificates under `tls_verify_client`; `None` = webpki roots.
    pub client_ca_file: Option<PathBuf>,
    /// The HAT.
    pub hat: Arc<HostAccessTable>,
    /// The RAT (public listeners).
    pub rat: Option<Arc<RecipientAccessTable>>,
    /// Maximum concurrent connections on this listener.
    pub max_connections: usize,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Longest accepted command line, CRLF included (RFC 5321: 512).
    pub max_command_line: usize,
    /// Bad commands tolerated before the session is closed with 421.
    pub max_bad_commands: u32,
    /// PROXY protocol, when the listener sits behind a load balancer.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// The `sender_org` label's suffix table (`metrics.sender_orgs` of `mxgate.yaml`, the
    /// same for every listener).
    pub sender_orgs: Arc<SenderOrgs>,
}

/// Where the mail log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailLogTarget {
    /// Standard output.
    Stdout,
    /// A file, reopened on SIGHUP/SIGUSR1.
    File(PathBuf),
}

/// Mail-log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailLogFormat {
    /// ESA text lines.
    Text,
    /// One JSON object per line with the same fields.
    Json,
}

/// DNS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Resolvers to ask; empty = the system's (`/etc/resolv.conf`).
    pub resolvers: Vec<SocketAddr>,
    /// Timeout for one connection's lookups together.
    pub timeout: Duration,
    /// Hosts file answering before the servers (`dns.hosts_file`); `None` = no hosts file.
    pub hosts_file: Option<PathBuf>,
    /// How often the DANE and MTA-STS gauges are refreshed from DNS; zero = never.
    pub self_check_interval: Duration,
}

/// Settings from the global file (`mxgate.yaml`).
#[derive(Debug, Clone)]
pub struct Global {
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Mail log destination.
    pub mail_log: MailLogTarget,
    /// Mail log format.
    pub mail_log_format: MailLogFormat,
    /// DNS.
    pub dns: DnsSettings,
    /// Certificates directory (demo certificate is written here).
    pub certs_dir: PathBuf,
    /// How long SIGTERM waits for sessions before 421 and close.
    pub shutdown_grace: Duration,
    /// Prometheus endpoint (`None` = disabled).
    pub metrics_listen: Option<SocketAddr>,
    /// `/ready` answers 503 while the spool's filesystem has less free space than this (bytes).
    pub ready_min_free_space: u64,
    /// Delivery to the internal server.
    pub delivery: DeliverySettings,
    /// IPv6 clients in one network of this prefix length share the per-IP limits.
    pub per_ip_ipv6_prefix: u8,
    /// The `sender_org` metrics label's suffix table: the shipped one with
    /// `metrics.sender_orgs` applied.
    pub sender_orgs: Arc<SenderOrgs>,
    /// Counters shared with other gateways (`shared_state:`); `None` = everything local.
    pub shared_state: Option<Arc<crate::shared_state::settings::SharedStateSettings>>,
}

/// `delivery:` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    /// Simultaneous delivery connections in total.
    pub concurrency: usize,
    /// First retry delay; doubles per attempt.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Queue lifetime before a bounce.
    pub max_queue_lifetime: Duration,
    /// EHLO/DSN host name; `None` = the first listener's.
    pub hostname: Option<String>,
}

/// The whole loaded configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory it was loaded from.
    pub dir: PathBuf,
    /// Global settings.
    pub global: Global,
    /// Listeners in file-name order.
    pub listeners: Vec<Listener>,
    /// Every HAT by name.
    pub hats: BTreeMap<String, Arc<HostAccessTable>>,
    /// Every mail-flow policy by name (inheritance resolved).
    pub policies: BTreeMap<String, Arc<MailFlowPolicy>>,
    /// Every RAT by name.
    pub rats: BTreeMap<String, Arc<RecipientAccessTable>>,
    /// SMTP routes (`policies/routes.yaml`; empty when the file is absent).
    pub routes: Arc<RouteTable>,
    /// Destination controls (`policies/destinations.yaml`; built-in defaults when absent).
    pub destinations: Arc<DestinationControls>,
    /// Recipient validation settings (`policies/validation.yaml`).
    pub validation: Arc<crate::validate::settings::ValidationSettings>,
    /// The MTA-STS policy endpoint (`policies/mta_sts.yaml`; `None` when the file is absent).
    pub mta_sts: Option<Arc<crate::mta_sts::MtaStsSettings>>,
    /// The TLS-RPT intake (`policies/tlsrpt.yaml`; `None` when the file is absent).
    pub tlsrpt: Option<Arc<crate::tlsrpt::settings::TlsRptSettings>>,
    /// Warnings found while loading (`192.0.2.1/24`), sorted by file and position.
    pub warnings: Vec<super::ConfigError>,
}
